#!/usr/bin/python3
"""Runs seqboat on every case generate.py wrote and checks the refusal.

usage: check.py SEQBOAT CORPUS_DIR GOOD_MODEL_DIR [CASE...]

For each case: the exit status is the one expected (65 for bad data, 2 for
bad usage); standard error is exactly one line naming the file and the
fault, standard output is empty; the run takes under a second and under
64 MiB of resident memory. JSONL prompt files are different: the batch goes
on, so each bad line must get an error record naming the fault and every
other line a normal record, with `complete`'s documented exit status.

Under a sanitizer or valgrind (SB_SANITIZER set) time and memory are not
limited: the instrumentation costs both.
"""
import json
import os
import resource
import subprocess
import sys
import time

TIME_LIMIT = 1.0
RSS_LIMIT_KB = 64 * 1024
KILL_AFTER = 120


def run(argv):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=KILL_AFTER)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    # communicate() has reaped the child; its rusage is only in the
    # children's total, so measure the growth of the maximum instead.
    wall = time.monotonic() - t0
    return p.returncode, out, err, wall


def max_rss_kb(argv):
    """The peak resident set of one run (a fresh process, so the maximum is
    this run's alone)."""
    code = ("import os,sys,resource\n"
            "pid=os.fork()\n"
            "if pid==0:\n"
            "  fd=os.open(os.devnull,os.O_RDWR)\n"
            "  [os.dup2(fd,i) for i in (0,1,2)]\n"
            "  os.execv(sys.argv[1],sys.argv[1:])\n"
            "_,_,ru=os.wait4(pid,0)\n"
            "print(ru.ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", code] + argv, capture_output=True, text=True)
    return int(r.stdout.strip() or 0)


def names_any(text, words):
    t = text.lower()
    return any(w.lower() in t for w in words)


def check_jsonl(c, path, code, out, err):
    problems = []
    if code not in c["status"]:
        problems.append("exit status %d, expected %s" % (code, c["status"]))
    lines = open(path, "rb").read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    nonblank = [i + 1 for i, l in enumerate(lines) if l.strip(b" \t\r")]
    try:
        recs = [json.loads(l) for l in out.decode().splitlines()]
    except (ValueError, UnicodeDecodeError) as e:
        return ["stdout is not JSONL records: %s" % e]
    if len(recs) != len(nonblank):
        return problems + ["%d records for %d non-blank lines" % (len(recs), len(nonblank))]
    for lineno, r in zip(nonblank, recs):
        bad = lineno in c["bad_lines"]
        if bad:
            if r.get("finish_reason") != "error" or not names_any(r.get("error", ""), c["words"]):
                problems.append("line %d: expected an error record naming one of %s, got %s"
                                % (lineno, c["words"], json.dumps(r)[:300]))
        elif r.get("finish_reason") not in ("stop", "length") or "error" in r:
            problems.append("line %d: expected a completion, got %s" % (lineno, json.dumps(r)[:300]))
    if err.count(b"\n") > 1:
        problems.append("more than one line on stderr: %r" % err[:500])
    return problems


def check_refusal(c, code, out, err):
    problems = []
    if code not in c["status"]:
        problems.append("exit status %d, expected %s" % (code, c["status"]))
    if out:
        problems.append("stdout is not empty: %r" % out[:200])
    text = err.decode("utf-8", "replace")
    if c["status"] == [2] and "\nusage:" in text:
        # A usage error may be followed by the command's usage text.
        text = text[:text.index("\nusage:") + 1]
    if not text.endswith("\n") or text.count("\n") != 1:
        problems.append("stderr is not exactly one line: %r" % text[:500])
    if len(text) > 2048:
        problems.append("the error line is %d bytes long" % len(text))
    if c["file"] not in text:
        problems.append("the error does not name %s: %r" % (c["file"], text[:300]))
    if not names_any(text, c["words"]):
        problems.append("the error does not name the fault (one of %s): %r" % (c["words"], text[:300]))
    return problems


def main():
    if len(sys.argv) < 4:
        sys.exit("usage: check.py SEQBOAT CORPUS_DIR GOOD_MODEL_DIR [CASE...]")
    seqboat, corpus, good = sys.argv[1:4]
    only = set(sys.argv[4:])
    limited = not os.environ.get("SB_SANITIZER")
    cases = json.load(open(os.path.join(corpus, "manifest.json")))
    failed = 0
    for c in cases:
        if only and c["name"] not in only:
            continue
        d = os.path.join(corpus, c.get("dir", c["name"]))
        argv = [seqboat] + [a.replace("{dir}", d).replace("{good}", good) for a in c["argv"]]
        code, out, err, wall = run(argv)
        if code < 0:
            problems = ["killed by signal %d: %r" % (-code, err[-2000:])]
        elif c.get("jsonl"):
            problems = check_jsonl(c, os.path.join(d, "prompts.jsonl"), code, out, err)
        else:
            problems = check_refusal(c, code, out, err)
        if limited:
            if wall > TIME_LIMIT:
                problems.append("took %.2f s (limit %.1f s)" % (wall, TIME_LIMIT))
            rss = max_rss_kb(argv)
            if rss > RSS_LIMIT_KB:
                problems.append("peak RSS %d KiB (limit %d KiB)" % (rss, RSS_LIMIT_KB))
        if problems:
            failed += 1
            print("FAIL %s: %s" % (c["name"], "; ".join(problems)))
            print("     stderr: %s" % err.decode("utf-8", "replace").strip()[:300])
        else:
            print("ok   %s: %s" % (c["name"], err.decode("utf-8", "replace").strip()[:160]))
    n = len(only) if only else len(cases)
    print("%d of %d malformed cases handled correctly" % (n - failed, n))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
