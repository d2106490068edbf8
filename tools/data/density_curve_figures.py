#!/usr/bin/python3
"""Measures the density curve's models with seqboat and writes its figures file.

    tools/data/density_curve_figures.py RUNS CURVE_JSON -o FIGURES.json
        [--seqboat build/seqboat] [--data data/sotu] [--cache DIR]
        [--rounds 3] [--cpu-rounds 3] [--act-bias-sweep 4,8,16,32] [--note TEXT]
        [--update]

RUNS/NAME/model are the models tools/data/density_curve.py exported, and
CURVE_JSON its PyTorch figures (evaluate.py on valid and test, read whole).
For each model here and for the bundled model (models/sotu-small):

- `seqboat perplexity -f DATA/{valid,test}.txt --json`: the C engine's bits
  per byte and per-layer activation rates (the independent evaluation path);
  for the bundled model also at each --act-bias-sweep value (sparsity by the
  inference-time act_bias alone, no training);
- `seqboat bench -p 0 -n 128 -d 0,1024 -r 3 -o json` in --rounds rounds,
  every model once per round in turn (interleaved, so that a change in the
  machine's load falls on all models alike); each row is the mean over the
  rounds of bench's mean tokens/s, with the rounds' spread;
- the CPU time of decoding, one thread: `seqboat bench -t 1 -p 0 -d 0 -r 1
  --no-warmup` with -n 640 and -n 128, the difference of the two processes'
  user + system CPU time over 512 tokens (so loading and set-up cancel), in
  --cpu-rounds interleaved rounds; the smallest of the rounds is kept. CPU
  time counts only the time the process ran, so it depends much less on
  the machine's load than tokens/s (it still feels shared caches);
- the same CPU time for decoding text: `seqboat complete -t 1 --seed 1
  --logit-bias 2=-inf` (no end of text) of a State of the Union opening,
  -n 640 minus -n 128, and the routers' activation rates on the 640
  generated tokens (`seqboat perplexity` of prompt and completion). bench
  decodes random tokens, on which routers trained for density fire far less
  than on text, so only this figure says what a user's decode costs.

With --update the bench and CPU-time figures already in the output file are
kept and only what is missing is measured.

The perplexity outputs are kept in --cache (default RUNS/seqboat) and reused
when present. Prints progress to stderr; the figures file is written at the
end.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUNDLED = os.path.join(ROOT, "models", "sotu-small")
TODAY = {"valid": 1.5407, "test": 1.5545, "test_pytorch": 1.5531}   # the bundled model's card
# the bundled model's PyTorch figures, from its model card (evaluate.py, act_bias 0)
TODAY_PYTORCH = {
    "valid": {"bits_per_byte": 1.5389,
              "act_rate": [0.488, 0.530, 0.843, 0.892, 0.850, 0.901, 0.959, 0.874]},
    "test": {"bits_per_byte": 1.5531,
             "act_rate": [0.476, 0.532, 0.845, 0.889, 0.844, 0.891, 0.954, 0.864]},
}
KINDS = {"ctrl": "control", "ctrl-s2": "control", "l25": "layer"}


def log(msg):
    sys.stderr.write("density_curve_figures: %s\n" % msg)
    sys.stderr.flush()


def run_json(args):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if r.returncode:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr.strip()))
    return json.loads(r.stdout)


def perplexity(a, name, model, split, bias):
    path = os.path.join(a.cache, "%s-%s-%g.json" % (name, split, bias))
    if not os.path.exists(path):
        log("perplexity %s %s act_bias %g" % (name, split, bias))
        res = run_json([a.seqboat, "perplexity", "-m", model, "-f",
                        os.path.join(a.data, split + ".txt"), "--act-bias", "%g" % bias,
                        "--json"])
        with open(path, "w") as f:
            json.dump(res, f)
    with open(path) as f:
        res = json.load(f)
    return {"bits_per_byte": res["bits_per_byte"], "act_rate": res["act_rate"],
            "tokens_scored": res["tokens_scored"]}


def bench_once(a, model):
    rows = run_json([a.seqboat, "bench", "-m", model, "-p", "0", "-n", "128", "-d", "0,1024",
                     "-r", "3", "-o", "json"])
    return {"tg128@d%d" % r["n_depth"]: r for r in rows}


def cpu_seconds(a, model, n):
    """User + system CPU seconds of one single-thread bench process decoding n tokens."""
    args = [a.seqboat, "bench", "-m", model, "-p", "0", "-n", str(n), "-d", "0", "-r", "1",
            "--no-warmup", "-t", "1", "-o", "json"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode("utf-8", "replace")
    p.stderr.close()
    if p.returncode:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(args), p.returncode, err.strip()))
    return ru.ru_utime + ru.ru_stime


PROMPT = ("Mr. Speaker, Mr. Vice President, Members of Congress, distinguished guests, "
          "and fellow citizens:")


def text_decode(a, model, n):
    """(stdout, stderr, exit status) of one single-thread sampled completion of n tokens."""
    args = [a.seqboat, "complete", "-m", model, "-t", "1", "-n", str(n), "--seed", "1",
            "--logit-bias", "2=-inf", "--format", "jsonl", "--no-timings", "-p", PROMPT]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    # communicate() reaped the child: its CPU time is in RUSAGE_CHILDREN
    return out, err, p.returncode


def text_cpu_seconds(a, model, n):
    import resource
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out, err, rc = text_decode(a, model, n)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc:
        raise RuntimeError("complete: exit %d: %s" % (rc, err.decode("utf-8", "replace")))
    rec = json.loads(out.decode("utf-8"))
    if rec["completion_tokens"] != n:
        raise RuntimeError("complete: %d tokens, expected %d" % (rec["completion_tokens"], n))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, rec["completion"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs")
    ap.add_argument("curve")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--seqboat", default=os.path.join(ROOT, "build", "seqboat"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "sotu"))
    ap.add_argument("--cache")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu-rounds", type=int, default=3)
    ap.add_argument("--act-bias-sweep", default="4,8,16,32")
    ap.add_argument("--note", default="", help="the conditions of the measurement, for the file")
    ap.add_argument("--update", action="store_true",
                    help="keep the bench and CPU-time figures of an existing output file")
    a = ap.parse_args(argv)
    a.cache = a.cache or os.path.join(a.runs, "seqboat")
    os.makedirs(a.cache, exist_ok=True)
    with open(a.curve) as f:
        curve = json.load(f)

    points, models = [], {}
    for name, e in curve.items():
        if "error" in e:
            continue
        p = {"name": name, "kind": KINDS.get(name, "trained"), "flags": e["flags"],
             "phase": e["phase"], "steps": e["steps"], "pytorch": {}}
        for split, rows in e["splits"].items():
            r = [x for x in rows if x["act_bias"] == 0][0]
            p["pytorch"][split] = {"bits_per_byte": r["bpb"], "act_rate": r["act"]}
        model = os.path.join(a.runs, name, "model")
        if os.path.exists(os.path.join(model, "model.safetensors")):
            models[name] = model
        points.append(p)
    bundled = {"name": "today", "kind": "act_bias", "act_bias": 0.0, "label": "bundled",
               "pytorch": TODAY_PYTORCH}
    points.append(bundled)
    models["today"] = BUNDLED
    for b in [float(x) for x in a.act_bias_sweep.split(",") if x]:
        points.append({"name": "today+%g" % b, "kind": "act_bias", "act_bias": b,
                       "label": "act_bias %+g" % b})

    for p in points:
        model = models.get(p["name"]) or (BUNDLED if p["kind"] == "act_bias" else None)
        if model is None:
            continue
        name = "today" if p["kind"] == "act_bias" else p["name"]
        p["seqboat"] = {s: perplexity(a, name, model, s, p.get("act_bias", 0.0))
                        for s in ("valid", "test")}

    order = [n for n in models]
    old = {}
    if a.update and os.path.exists(a.output):
        with open(a.output) as f:
            old = json.load(f)
        byname = {p["name"]: p for p in old["points"]}
        for p in points:
            if "bench" in byname.get(p["name"], {}):
                p["bench"] = byname[p["name"]]["bench"]
    have = {p["name"]: p.get("bench", {}) for p in points}
    samples = {n: {} for n in order}
    started = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    for rnd in range(a.rounds if any("tg128@d0" not in have[n] for n in order) else 0):
        log("bench round %d of %d" % (rnd + 1, a.rounds))
        for n in order if rnd % 2 == 0 else list(reversed(order)):
            for test, row in bench_once(a, models[n]).items():
                samples[n].setdefault(test, []).append(row)
    finished = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    for p in points:
        if not samples.get(p["name"]):
            continue
        p["bench"] = {}
        for test, rows in samples[p["name"]].items():
            ts = [r["avg_ts"] for r in rows]
            p["bench"][test] = {"mean_ts": sum(ts) / len(ts), "min_ts": min(ts), "max_ts": max(ts),
                                "rounds": len(ts), "act_rate": rows[-1]["act_rate"],
                                "n_threads": rows[-1]["n_threads"]}
    cpu = {n: [] for n in order}
    for rnd in range(a.cpu_rounds if any("cpu_tg512_1thread" not in have[n] for n in order)
                     else 0):
        log("CPU-time round %d of %d" % (rnd + 1, a.cpu_rounds))
        for n in order if rnd % 2 == 0 else list(reversed(order)):
            hi = cpu_seconds(a, models[n], 640)
            lo = cpu_seconds(a, models[n], 128)
            cpu[n].append((hi - lo) / 512.0)
    for p in points:
        if p["name"] in cpu and cpu[p["name"]]:
            v = cpu[p["name"]]
            p.setdefault("bench", {})["cpu_tg512_1thread"] = {
                "cpu_s_per_token_min": min(v), "cpu_s_per_token_all": v,
                "tokens_per_cpu_s": 1.0 / min(v)}
    text = {n: [] for n in order}
    completions = {}
    for rnd in range(a.cpu_rounds if any("cpu_text512_1thread" not in have[n] for n in order)
                     else 0):
        log("text decode round %d of %d" % (rnd + 1, a.cpu_rounds))
        for n in order if rnd % 2 == 0 else list(reversed(order)):
            hi, completions[n] = text_cpu_seconds(a, models[n], 640)
            lo, _ = text_cpu_seconds(a, models[n], 128)
            text[n].append((hi - lo) / 512.0)
    for p in points:
        n = p["name"]
        if text.get(n):
            path = os.path.join(a.cache, "%s-generated.txt" % n)
            with open(path, "w", encoding="utf-8") as f:
                f.write(PROMPT + completions[n])
            res = run_json([a.seqboat, "perplexity", "-m", models[n], "-f", path, "--json"])
            p["bench"]["cpu_text512_1thread"] = {
                "cpu_s_per_token_min": min(text[n]), "cpu_s_per_token_all": text[n],
                "tokens_per_cpu_s": 1.0 / min(text[n]), "act_rate": res["act_rate"],
                "prompt": PROMPT}

    cond = old.get("conditions") or {
        "bench_started": started, "bench_finished": finished, "bench_rounds": a.rounds,
        "cpu_rounds": a.cpu_rounds, "machine": platform.machine(), "cpus": os.cpu_count(),
        "note": a.note, "load_average_at_end": list(os.getloadavg())}
    if any(text.values()):
        cond["text_decode_finished"] = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        cond["text_decode_load_average_at_end"] = list(os.getloadavg())
    fig = {
        "title": "sotu-small: test bits per byte against activation density",
        "bounds": {"max_mean_act_rate": 0.40,
                   "max_test_bpb_pytorch": round(TODAY["test_pytorch"] * 1.01, 4),
                   "max_test_bpb_seqboat": round(TODAY["test"] * 1.01, 4),
                   "max_file_bytes": 25 * 1000 * 1000},
        "conditions": cond,
        "points": points,
    }
    tmp = a.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(fig, f, indent=1)
        f.write("\n")
    os.replace(tmp, a.output)
    log("wrote %s" % a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
