#!/bin/bash
# e2e-faults.sh - seqboat under faults, on the converted fixture model:
#   - `complete -o` killed with SIGKILL at 20 random points, resumed after
#     each, ends with every id once and the bytes of an uninterrupted run;
#   - a full disk (a small tmpfs; skipped when mount is not allowed) gives
#     one clear error line, exit 74, and a file that --resume completes;
#   - SIGINT during chat generation ends it within 200 ms;
#   - `seqboat ... | head -1` ends quietly (no message, no crash);
#   - 100,000 tokens of chat (500 turns) grow RSS by at most 1 MiB.
# Under a sanitizer (SB_SANITIZER set) time and memory limits are not
# checked: the instrumentation costs both.
set -u

. "$(dirname "$0")/e2e-lib.sh"
MNT=""
cleanup() {
	[ -n "$MNT" ] && umount "$MNT" 2> /dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT


# Records a JSONL file must hold: every id of the input exactly once.
check_ids() { # file, n_items
	$PY - "$1" "$2" <<'EOF'
import json, sys
ids = [json.loads(l)["id"] for l in open(sys.argv[1])]
want = ["item%d" % i for i in range(1, int(sys.argv[2]) + 1)]
assert sorted(ids) == sorted(want), "ids %s" % ids
EOF
}

# ---------------------------------------------------------- SIGKILL x 20
N=40
for i in $(seq 1 $N); do echo "{\"id\": \"item$i\", \"prompt\": \"w$((i % 60 + 4)) w$((i * 7 % 60 + 4))\"}"; done > "$TMP/in.jsonl"
args=(complete -m "$MODEL" -f "$TMP/in.jsonl" -n 1000 --temp 1 --seed 3 --logit-bias 2=-inf --no-timings -t 1 --batch 1)
t0=$(date +%s.%N)
"$SEQBOAT" "${args[@]}" -o "$TMP/full.out" || fail "uninterrupted run failed"
t1=$(date +%s.%N)
check_ids "$TMP/full.out" $N || fail "the uninterrupted run lost or repeated ids"
# Each resumed run is killed after a random time up to a twelfth of the
# uninterrupted run's, so that all twenty kills land while work remains
# and at different points of it. One item at a time (--batch 1) writes a
# record as each finishes: kills land before, between and during writes.
full=$($PY -c "print(max(0.05, ($t1 - $t0)))")
landed=0
counts=""
for k in $(seq 1 20); do
	delay=$($PY -c "import random; print(random.uniform(0.01, $full / 12))")
	"$SEQBOAT" "${args[@]}" -o "$TMP/killed.out" --resume 2>> "$TMP/kill.err" &
	pid=$!
	sleep "$delay"
	kill -KILL "$pid" 2> /dev/null && landed=$((landed + 1))
	wait "$pid" 2> /dev/null
	counts+=" $([ -f "$TMP/killed.out" ] && wc -l < "$TMP/killed.out" || echo 0)"
done
"$SEQBOAT" "${args[@]}" -o "$TMP/killed.out" --resume 2>> "$TMP/kill.err" || fail "the last resume failed"
cmp -s "$TMP/full.out" "$TMP/killed.out" || fail "20 kills and resumes: output differs from the uninterrupted run"
check_ids "$TMP/killed.out" $N || fail "20 kills and resumes: ids lost or repeated"
[ "$landed" -ge 15 ] || fail "only $landed of 20 kills landed while seqboat ran"
echo "SIGKILL: $landed of 20 kills landed mid-run (records after each:$counts); resumed output identical"

# ------------------------------------------------------------- full disk
mkdir -p "$TMP/mnt"
if mount -t tmpfs -o size=32k tmpfs "$TMP/mnt" 2> /dev/null; then
	MNT="$TMP/mnt"
	"$SEQBOAT" "${args[@]}" -o "$MNT/out.jsonl" > /dev/null 2> "$TMP/full.err"
	rc=$?
	[ "$rc" = 74 ] || fail "full disk: exit status $rc, expected 74"
	[ "$(wc -l < "$TMP/full.err")" = 1 ] || fail "full disk: expected one error line: $(cat "$TMP/full.err")"
	grep -q "out.jsonl" "$TMP/full.err" && grep -qi "no space" "$TMP/full.err" ||
		fail "full disk: the error does not name the file and the fault: $(cat "$TMP/full.err")"
	written=$(wc -l < "$MNT/out.jsonl")
	[ "$written" -gt 0 ] && [ "$written" -lt $N ] || fail "full disk: $written records before the disk filled"
	# Room again: the file is resumed to the uninterrupted bytes.
	mount -o remount,size=4m "$MNT" || fail "cannot grow the tmpfs"
	"$SEQBOAT" "${args[@]}" -o "$MNT/out.jsonl" --resume 2> "$TMP/resume.err" ||
		fail "full disk: resume failed: $(cat "$TMP/resume.err")"
	cmp -s "$TMP/full.out" "$MNT/out.jsonl" || fail "full disk: resumed output differs from the uninterrupted run"
	echo "full disk: $(cat "$TMP/full.err") ($written records kept, resumed)"
	umount "$MNT" && MNT=""
else
	echo "SKIP full disk: cannot mount a tmpfs here (needs root)"
fi

# ------------------------------------------------ SIGINT during chat, pipes
SEQBOAT="$SEQBOAT" MODEL="$MODEL" TMP="$TMP" $PY - <<'EOF' || fail "chat and pipe checks"
import os, re, signal, subprocess, sys, time

seqboat, model = os.environ["SEQBOAT"], os.environ["MODEL"]
slow = bool(os.environ.get("SB_SANITIZER"))
ok = True

def bad(msg):
    global ok
    ok = False
    print("FAIL: " + msg, file=sys.stderr)

# SIGINT while a reply is being generated (end of sequence banned, no token
# limit: the reply never ends by itself) ends it within 200 ms.
# The median of three runs, so that one scheduling delay on a busy machine
# does not decide it; none may take a second.
limit = 1.0 if slow else 0.2
# valgrind's leak check runs after the program ends and counts in the time.
hard = 5.0 if os.environ.get("SB_SANITIZER") == "valgrind" else 1.0
times = []
for attempt in range(3):
    p = subprocess.Popen([seqboat, "chat", "-m", model, "-n", "-1", "--logit-bias", "2=-inf",
                          "--seed", str(attempt), "-t", "1"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(b"w4 w5 w6\n")
    p.stdin.flush()
    os.read(p.stdout.fileno(), 1)          # generation is under way
    time.sleep(0.05)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        bad("chat did not stop within 10 s of SIGINT")
        break
    dt = time.monotonic() - t0
    p.stdin.close()
    p.stdout.read()
    err = p.stderr.read().decode("utf-8", "replace")
    times.append(dt)
    if dt > hard:
        bad("chat stopped %.0f ms after SIGINT" % (dt * 1e3))
    if p.returncode not in (0, 130):
        bad("chat after SIGINT: exit status %d: %s" % (p.returncode, err))
    print("SIGINT: chat ended %.1f ms after the signal (status %d)" % (dt * 1e3, p.returncode))
if len(times) == 3 and sorted(times)[1] > limit:
    bad("chat stopped a median %.0f ms after SIGINT (limit %.0f ms)" % (sorted(times)[1] * 1e3, limit * 1e3))

# A closed pipe ends a command quietly: no message and no crash (dying of
# SIGPIPE, as cat or grep do, is quiet too).
many = "".join("w%d w%d\n" % (i % 60 + 4, i % 50 + 4) for i in range(300))
cmds = {
    "complete": ([seqboat, "complete", "-m", model, "-n", "20", "-t", "1", "--no-timings"], many),
    "tokenize": ([seqboat, "tokenize", "-m", model, "--pieces"], many * 20),
    "chat": ([seqboat, "chat", "-m", model, "-n", "30", "--logit-bias", "2=-inf", "-t", "1"], many),
}
errf = os.path.join(os.environ["TMP"], "pipe.err")
for name, (argv, text) in cmds.items():
    sh = subprocess.run(["bash", "-c", 'f=$1; shift; "$@" 2> "$f" | head -1 > /dev/null; echo ${PIPESTATUS[0]}',
                         "sh", errf] + argv, input=text.encode(), capture_output=True)
    err = open(errf, "rb").read().decode("utf-8", "replace")
    status = int(sh.stdout.decode().strip().splitlines()[-1])
    if status not in (0, 141):
        bad("%s | head -1: exit status %d (0, or 141 for SIGPIPE, expected): %s" % (name, status, err[:500]))
    if err.strip():
        bad("%s | head -1: printed %r" % (name, err[:500]))
    print("pipe: %s | head -1 ended with status %d, quietly" % (name, status))

# 100,000 tokens of chat in 500 turns of 200 generated tokens: resident
# memory grows by at most 1 MiB. The baseline is taken after 70 turns, when
# the ring of 64 per-turn snapshots (for /undo) is full.
def rss_kb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

# Every control id is banned, so each token is one word of the reply.
p = subprocess.Popen([seqboat, "chat", "-m", model, "-n", "200", "--logit-bias", "0=-inf",
                      "--logit-bias", "1=-inf", "--logit-bias", "2=-inf",
                      "--logit-bias", "3=-inf", "-t", "1", "--seed", "1"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
def turn(i):
    p.stdin.write(b"w%d w%d\n" % (i % 60 + 4, i % 30 + 4))
    p.stdin.flush()
    reply = p.stdout.readline()
    if len(reply.split()) != 200:
        raise SystemExit("FAIL: turn %d: expected a reply of 200 words, got %r" % (i, reply[:200]))
warm = 70
for i in range(warm):
    turn(i)
base = rss_kb(p.pid)
t0 = time.monotonic()
for i in range(warm, warm + 500):
    turn(i)
end = rss_kb(p.pid)
secs = time.monotonic() - t0
p.stdin.write(b"/stats\n")
p.stdin.close()
out = p.stdout.read().decode()
p.wait()
m = re.search(r"tokens in the state: (\d+)", out)
if not m or int(m.group(1)) < 100000 + warm * 200:
    bad("chat /stats does not show the 100,000 tokens: %r" % out[:300])
growth = end - base
print("memory: RSS %d KiB after %d turns, %d KiB after 500 more (100,000 tokens, %.1f s): %+d KiB"
      % (base, warm, end, secs, growth))
if not slow and growth > 1024:
    bad("500 turns of chat grew RSS by %d KiB (limit 1024 KiB)" % growth)
if p.returncode != 0:
    bad("chat exit status %d" % p.returncode)
sys.exit(0 if ok else 1)
EOF

finish e2e-faults
