#!/bin/sh
# Trains several presets of scripts/build-model at once (each its own
# process, the GPUs shared out in turn), then copies the one with the lowest valid bits per byte into
# OUTDIR: its config.yaml, its f16 weights (in parts of at most 15 MiB, to
# be joined with cat), every preset's eval.json in summary.json, and all
# logs in logs.tar.gz. This is the sweep that chose the bundled model.
# usage: tools/data/sweep_sotu.sh OUTDIR MINUTES PRESET...
set -u
cd "$(dirname "$0")/../.."
out=$1; minutes=$2; shift 2
mkdir -p "$out" runs
# presets take the GPUs in turn
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "$ngpu" -gt 0 ] || ngpu=1
i=0
for p in "$@"; do
	CUDA_VISIBLE_DEVICES=$((i % ngpu)) scripts/build-model train --preset "$p" --minutes "$minutes" \
		>"runs/$p.out" 2>&1 &
	i=$((i + 1))
done
wait
for p in "$@"; do echo "== $p"; tail -12 "runs/$p.out"; done
${PYTHON:-python3} - "$out" "$@" <<'PY'
import json, os, shutil, subprocess, sys
out, presets = sys.argv[1], sys.argv[2:]
summary, best = {}, None
for p in presets:
    path = os.path.join("runs", p, "eval.json")
    if not os.path.exists(path):
        summary[p] = None
        continue
    e = json.load(open(path))
    summary[p] = e
    r0 = [r for r in e["splits"]["valid"] if r["act_bias"] == 0][0]
    bpb = r0.get("bpb", r0["bits_per_token"])
    if os.path.exists(os.path.join("runs", p, "model", "model.safetensors")) and \
            (best is None or bpb < best[1]):
        best = (p, bpb)
summary["chosen"] = best[0] if best else None
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("chosen:", best)
if best:
    d = os.path.join("runs", best[0], "model")
    shutil.copy(os.path.join(d, "config.yaml"), out)
    subprocess.run(["split", "-b", "15M", "-d", os.path.join(d, "model.safetensors"),
                    os.path.join(out, "model.safetensors.part")], check=True)
PY
tar czf "$out/logs.tar.gz" runs/*.out runs/*/phase*.log runs/*/phase*/log.jsonl runs/*/*.json 2>/dev/null
ls -la "$out"
