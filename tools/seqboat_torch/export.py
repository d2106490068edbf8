"""Writes a seqboat model directory (docs/model-format.md) from a model.

    export.py TRAIN_CHECKPOINT -o OUTDIR [--dtype f32|f16|bf16] [--force]
              [--tokenizer FILE --tokenizer-type sentencepiece|fairseq
               --bos-id N --eos-id N --pad-id N --unk-id N]
              [--name NAME] [--license TEXT] [--source TEXT] [--chat JSON]

TRAIN_CHECKPOINT is a checkpoint written by train.py (best.pt or last.pt);
the tokenizer settings default to the ones recorded in it at training time.
The directory is assembled next to OUTDIR and renamed into place.
Exit status: 0 done, 2 usage, 65 bad input, 74 I/O.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqboat_torch import config as cfgmod  # noqa: E402
from seqboat_torch import safetensors_io  # noqa: E402

DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
TOKENIZER_FILES = {"sentencepiece": "tokenizer.model", "fairseq": "dict.txt"}


def tensors_of(model):
    """docs/computation.md section 5 tensors of a SeqBoatLM (or a state dict), float32 on
    the CPU; DistributedDataParallel/compiled wrappers are looked through."""
    sd = model if isinstance(model, dict) else _unwrap(model).state_dict()
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v.detach().float().cpu().contiguous()
    return out


def _unwrap(model):
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def build_config(arch, tokenizer, provenance=None, chat=None):
    """tokenizer: {'type', 'bos_id', 'eos_id', 'pad_id', 'unk_id'} (+
    'byte_symbols' for fairseq); its file name is the conventional one."""
    tok = {"type": tokenizer["type"], "file": TOKENIZER_FILES[tokenizer["type"]]}
    if tokenizer["type"] == "fairseq":
        tok["byte_symbols"] = tokenizer.get("byte_symbols", "auto")
    for k in ("bos_id", "eos_id", "pad_id", "unk_id"):
        tok[k] = int(tokenizer[k])
    cfg = {"format": 1}
    if provenance:
        cfg["provenance"] = {k: v for k, v in provenance.items() if v is not None}
    cfg["architecture"] = {k: arch[k] for k in cfgmod.ARCH_KEYS}
    cfg["tokenizer"] = tok
    if chat is not None:
        cfg["chat"] = dict(chat)
    return cfgmod.validate(cfg)


def export(model, arch, outdir, tokenizer, tokenizer_file, dtype="f32",
           provenance=None, chat=None, force=False):
    """Writes OUTDIR/{config.yaml, model.safetensors, tokenizer file}.
    `model` is a SeqBoatLM or a state dict with the names of docs/computation.md section 5. Refuses an
    existing non-empty OUTDIR unless force. Returns the config dict."""
    cfg = build_config(arch, tokenizer, provenance, chat)
    tensors = tensors_of(model)
    from seqboat_torch import checkpoint as ckmod
    want = ckmod.expected_shapes(arch)
    if set(tensors) != set(want):
        raise ValueError("model tensors %s do not match the architecture's %s"
                         % (sorted(set(tensors) ^ set(want)), "names"))
    for k, shape in want.items():
        if tuple(tensors[k].shape) != shape:
            raise ValueError("tensor %r has shape %s, expected %s"
                             % (k, list(tensors[k].shape), list(shape)))
    ordered = {k: tensors[k] for k in want}
    outdir = os.path.normpath(outdir)
    if os.path.lexists(outdir) and not force:
        if not os.path.isdir(outdir) or os.listdir(outdir):
            raise FileExistsError("%s: exists and is not empty" % outdir)
    parent = os.path.dirname(os.path.abspath(outdir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(cfgmod.to_yaml(cfg))
        meta = {"format": "pt"}
        if provenance and provenance.get("source"):
            meta["source"] = provenance["source"]
        safetensors_io.write(os.path.join(tmp, "model.safetensors"), ordered,
                             dtypes=DTYPES[dtype], metadata=meta)
        shutil.copyfile(tokenizer_file, os.path.join(tmp, cfg["tokenizer"]["file"]))
        old = None
        if os.path.lexists(outdir):
            old = outdir + ".old-%d" % os.getpid()
            os.rename(outdir, old)
        os.rename(tmp, outdir)
        tmp = None
        if old is not None:
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old)
            else:
                os.unlink(old)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return cfg


def load_train_checkpoint(path):
    """Reads a train.py checkpoint (plain containers and tensors only)
    through the allow-list reader used for official checkpoints."""
    from seqboat_torch import checkpoint as ckmod
    return ckmod.safe_load(path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="best.pt or last.pt written by train.py")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--tokenizer", help="tokenizer file (default: the one recorded at training)")
    ap.add_argument("--tokenizer-type", choices=sorted(TOKENIZER_FILES))
    for k in ("bos", "eos", "pad", "unk"):
        ap.add_argument("--%s-id" % k, type=int)
    ap.add_argument("--name")
    ap.add_argument("--license")
    ap.add_argument("--source")
    ap.add_argument("--chat", help="JSON object with the chat template strings")
    a = ap.parse_args(argv)
    try:
        ck = load_train_checkpoint(a.checkpoint)
    except OSError as e:
        sys.stderr.write("export: %s: %s\n" % (a.checkpoint, e.strerror or e))
        return 74
    except Exception as e:
        sys.stderr.write("export: %s: not a train.py checkpoint: %s\n" % (a.checkpoint, e))
        return 65
    if not isinstance(ck, dict) or "model" not in ck or "arch" not in ck:
        sys.stderr.write("export: %s: not a train.py checkpoint (no model/arch)\n" % a.checkpoint)
        return 65
    tok = dict(ck.get("tokenizer") or {})
    if a.tokenizer_type:
        tok["type"] = a.tokenizer_type
    for k in ("bos", "eos", "pad", "unk"):
        if getattr(a, k + "_id") is not None:
            tok[k + "_id"] = getattr(a, k + "_id")
    tok_file = a.tokenizer or tok.get("file")
    missing = [k for k in ("type", "bos_id", "eos_id", "pad_id", "unk_id") if k not in tok]
    if missing or not tok_file:
        sys.stderr.write("export: tokenizer settings missing (%s); give --tokenizer, "
                         "--tokenizer-type and the ids\n" % ", ".join(missing or ["file"]))
        return 2
    prov = {"name": a.name, "license": a.license,
            "source": a.source or ("trained by tools/seqboat_torch/train.py, step %s"
                                   % ck.get("step"))}
    chat = json.loads(a.chat) if a.chat else None
    try:
        export(ck["model"], ck["arch"], a.output, tok, tok_file, a.dtype, prov, chat, a.force)
    except FileExistsError as e:
        sys.stderr.write("export: %s (use --force)\n" % e)
        return 2
    except (ValueError, cfgmod.ConfigError) as e:
        sys.stderr.write("export: %s\n" % e)
        return 65
    except OSError as e:
        sys.stderr.write("export: %s: %s\n" % (e.filename or a.output, e.strerror or e))
        return 74
    return 0


if __name__ == "__main__":
    sys.exit(main())
