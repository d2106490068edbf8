#!/usr/bin/python3
"""Batching on the CPU: `seqboat complete` of N prompts x M tokens at each
--batch, interleaved over several repetitions, with the wall time and the
CPU time (user + system of the run) of each, the median ratio to batch 1,
and whether every batch size wrote the same records. Prints figures; asserts
nothing (docs/benchmarks.md, "Batching on the CPU").

usage: tests/bench/batch-cpu.py [--seqboat BIN] [-m DIR] [--prompts 64]
       [-n 64] [--batch 1,64] [-t 2] [-r 3]
"""
import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the state of our union is strong and we will work together for america people "
         "nation congress economy jobs freedom world peace future children health").split()


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqboat", default=os.path.join(ROOT, "build", "seqboat"))
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("-n", "--tokens", type=int, default=64)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    a = ap.parse_args()
    batches = [int(b) for b in a.batch.split(",")]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "prompts.jsonl")
        with open(prompts, "w") as f:
            for i in range(a.prompts):
                words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
                f.write(json.dumps({"id": i, "prompt": " ".join(words).capitalize()}) + "\n")
        wall = {b: [] for b in batches}
        cpu = {b: [] for b in batches}
        records = {}
        for rep in range(a.repetitions):
            for b in batches:
                out = os.path.join(tmp, "out-%d.jsonl" % b)
                if os.path.exists(out):
                    os.unlink(out)
                cmd = [a.seqboat, "complete", "-f", prompts, "-n", str(a.tokens), "--temp", "0",
                       "--seed", "1", "--batch", str(b), "-t", str(a.threads), "--no-timings",
                       "-o", out]
                if a.model:
                    cmd[2:2] = ["-m", a.model]
                c0, t0 = child_cpu(), time.monotonic()
                r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
                t1, c1 = time.monotonic(), child_cpu()
                if r.returncode != 0:
                    sys.exit("seqboat failed: " + r.stderr.strip())
                wall[b].append(t1 - t0)
                cpu[b].append(c1 - c0)
                with open(out, "rb") as f:
                    records.setdefault(b, f.read())
                print("rep %d batch %3d: wall %7.2f s  cpu %7.2f s  (load %s)" % (
                    rep + 1, b, t1 - t0, c1 - c0, open("/proc/loadavg").read().split()[0]),
                    flush=True)
        base = batches[0]
        print()
        print("| batch | wall s (median) | cpu s (median) | wall vs batch %d | cpu vs batch %d |"
              % (base, base))
        print("| ---: | ---: | ---: | ---: | ---: |")
        for b in batches:
            mw, mc = statistics.median(wall[b]), statistics.median(cpu[b])
            print("| %d | %.2f | %.2f | %.2fx | %.2fx |" % (
                b, mw, mc, statistics.median(wall[base]) / mw, statistics.median(cpu[base]) / mc))
        same = all(records[b] == records[base] for b in batches)
        print("\nrecords identical at every batch size: %s" % ("yes" if same else "NO"))


if __name__ == "__main__":
    main()
