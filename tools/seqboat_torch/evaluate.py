"""Bits per byte of token streams, read whole, and each layer's activation rate.

    evaluate.py MODEL --data DIR [--split valid --split test]
                [--act-bias X ...] [--device cuda] [--json OUT]

MODEL is a train.py checkpoint (best.pt, last.pt) or a seqboat model
directory. DIR holds SPLIT.npy token streams and stats.json (from
tools/data/prepare_sotu.py) whose SPLIT.bytes is the split's UTF-8 size.

Each split is read as one sequence from its first token, the way
`seqboat perplexity` reads a file through one state: the EMA is exact over
the whole stream (FFT) and attention covers each activated token's window,
so nothing is lost to window restarts. Every target except <s> is scored;
bits per byte = total NLL in bits / bytes. The forward is float32 and
computes the full masked attention, so memory grows with the square of the
stream's length (a 30k-token stream needs about 20 GB): run long splits on a
GPU.

--act-bias shifts every router, pr1 = softmax([u0 + act_bias, u1] / tau)[1]
(docs/computation.md section 2): positive values activate fewer tokens.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqboat_torch import checkpoint as ckmod  # noqa: E402
from seqboat_torch.model import SeqBoatLM, from_model_dir  # noqa: E402


def load_model(path):
    """(model, bos_id) from a model directory or a train.py checkpoint."""
    if os.path.isdir(path):
        model, cfg = from_model_dir(path)
        return model, cfg["tokenizer"]["bos_id"]
    ck = ckmod.safe_load(path)
    tok = ck.get("tokenizer") or {}
    model = SeqBoatLM(ck["arch"], padding_idx=tok.get("pad_id"))
    model.load_state_dict(ck["model"])
    return model, tok.get("bos_id")


@torch.no_grad()
def score_stream(model, tokens, bos_id, act_bias, device):
    """Returns {'bits', 'scored', 'act': [rate per layer]} for one stream."""
    x = torch.from_numpy(np.asarray(tokens[:-1], dtype=np.int64)).to(device).unsqueeze(0)
    y = torch.from_numpy(np.asarray(tokens[1:], dtype=np.int64)).to(device).unsqueeze(0)
    logits, extra = model(x, act_bias=act_bias, return_router=True)
    nll = F.cross_entropy(logits[0].float(), y[0], reduction="none").double()
    keep = y[0] != bos_id if bos_id is not None and bos_id >= 0 else torch.ones_like(y[0], dtype=torch.bool)
    return {"bits": float(nll[keep].sum()) / math.log(2), "scored": int(keep.sum()),
            "act": [float(a.float().mean()) for a in extra["act"]]}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="train.py checkpoint or model directory")
    ap.add_argument("--data", required=True, help="directory with SPLIT.npy and stats.json")
    ap.add_argument("--split", action="append", help="split name (repeatable; default valid, test)")
    ap.add_argument("--act-bias", type=float, action="append",
                    help="router bias (repeatable; default 0)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-tokens", type=int, default=0,
                    help="score only the first N tokens of each split (smoke tests)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)

    with open(os.path.join(a.data, "stats.json")) as f:
        stats = json.load(f)
    device = torch.device(a.device)
    model, bos_id = load_model(a.model)
    model.to(device).float().eval()
    results = {"model": a.model, "parameters": sum(p.numel() for p in model.parameters()),
               "splits": {}}
    for split in a.split or ["valid", "test"]:
        tokens = np.load(os.path.join(a.data, split + ".npy"))
        nbytes = stats[split]["bytes"]
        if a.max_tokens:
            tokens = tokens[:a.max_tokens]
            nbytes = None
        for bias in a.act_bias or [0.0]:
            r = score_stream(model, tokens, bos_id, bias, device)
            r.update({"split": split, "act_bias": bias, "tokens": int(len(tokens)),
                      "bytes": nbytes, "bits_per_token": r["bits"] / max(r["scored"], 1)})
            if nbytes:
                r["bpb"] = r["bits"] / nbytes
            results["splits"].setdefault(split, []).append(r)
            print("%s act_bias %+g: %s bits/token %.4f, act %s" % (
                split, bias, "bpb %.4f," % r["bpb"] if "bpb" in r else "",
                r["bits_per_token"], " ".join("%.3f" % v for v in r["act"])), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
