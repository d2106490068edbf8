"""PyTorch side of seqboat: the official-checkpoint reader, our own SeqBoat
language model (docs/computation.md), its exporter and trainer.

Only `checkpoint`, `config` and `safetensors_io` are needed by the
converter; `model`, `export`, `train` and `data` need torch.
"""
