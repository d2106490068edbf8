#!/bin/bash
# e2e-complete.sh - drives `seqboat complete` on the converted fixture model:
# JSONL batches with bad lines, stop strings, the shared prefix, batched
# decoding, and a run killed with SIGKILL then resumed.
set -u

. "$(dirname "$0")/e2e-lib.sh"
trap 'rm -rf "$TMP"' EXIT


# A JSONL batch with malformed lines: one record per non-blank input line,
# in order, error records for the bad lines, and the batch goes on.
cat > "$TMP/batch.jsonl" <<'EOF'
{"id": "a", "prompt": "w4 w17 w9"}
{"id": "b", "prompt": "w5 w6"
not json at all

{"id": "c", "prompt": "w8", "temp": 0, "max_tokens": 5}
[1, 2, 3]
{"id": "d"}
{"id": "e", "prompt": "w9", "tempp": 1}
{"prompt": "w10 w11", "seed": 7, "stop": ["w"]}
{"id": "f", "prompt": "w12", "top_p": 2}
{"id": "a", "prompt": "w13"}
{"id": "g", "prompt": "w14 w15", "max_tokens": 3}
EOF
"$SEQBOAT" complete -m "$MODEL" -f "$TMP/batch.jsonl" -n 8 --no-timings > "$TMP/batch.out" 2> "$TMP/batch.err"
rc=$?
[ "$rc" = 65 ] || fail "malformed batch: exit status $rc, expected 65 (some records are errors)"
$PY - "$TMP/batch.out" <<'EOF' || fail "malformed batch: records are wrong"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
# A line whose id cannot be read, or that repeats an earlier id, has an
# error record named {"line": N}: an id no line can hold.
want = [("a", "ok"), ({"line": 2}, "error"), ({"line": 3}, "error"), ("c", "ok"),
        ({"line": 6}, "error"), ("d", "error"), ("e", "error"), (9, "ok"), ("f", "error"),
        ({"line": 11}, "error"), ("g", "ok")]
assert len(recs) == len(want), f"{len(recs)} records for {len(want)} lines"
for r, (id_, kind) in zip(recs, want):
    assert r["id"] == id_, (r, id_)
    if kind == "error":
        assert r["finish_reason"] == "error" and r["error"], r
    else:
        assert r["finish_reason"] in ("stop", "length") and "error" not in r, r
        assert r["completion_tokens"] <= 8 and r["prompt_tokens"] >= 1, r
byid = {r["id"]: r for r in recs if r["finish_reason"] != "error"}
assert byid["c"]["completion_tokens"] <= 5
assert byid["g"]["completion_tokens"] <= 3
assert byid[9]["seed"] == 7
# The stop string "w" occurs in every word, so nothing can be printed.
assert byid[9]["completion"] in ("", " "), byid[9]
assert "tempp" in recs[6]["error"] and "top_p" in recs[8]["error"]
assert "duplicate" in recs[9]["error"]
EOF

# The same seed gives the same records; batched decoding changes nothing.
for i in $(seq 1 12); do echo "w$((i + 3)) w$((i * 5 % 60 + 4))"; done > "$TMP/plain.txt"
args=(complete -m "$MODEL" -f "$TMP/plain.txt" -n 40 --temp 1.2 --top-k 0 --top-p 1 --min-p 0 --seed 5 --no-timings)
"$SEQBOAT" "${args[@]}" --batch 1 > "$TMP/b1.out" || fail "batch 1 run failed"
"$SEQBOAT" "${args[@]}" --batch 1 > "$TMP/b1b.out" || fail "second batch 1 run failed"
"$SEQBOAT" "${args[@]}" --batch 5 > "$TMP/b5.out" || fail "batch 5 run failed"
cmp -s "$TMP/b1.out" "$TMP/b1b.out" || fail "same seed, different output"
cmp -s "$TMP/b1.out" "$TMP/b5.out" || fail "--batch 5 changed the output"
[ "$(wc -l < "$TMP/b1.out")" = 12 ] || fail "expected 12 records"
"$SEQBOAT" "${args[@]}" --seed 6 > "$TMP/s6.out"
cmp -s "$TMP/b1.out" "$TMP/s6.out" && fail "another seed gave the same output"

# A stop string spanning tokens ends the text where it starts.
"$SEQBOAT" complete -m "$MODEL" -p "w4 w17 w9 w30" -n 30 --temp 0 --logit-bias 2=-inf --format jsonl > "$TMP/greedy.out"
$PY - "$TMP/greedy.out" > "$TMP/stop.txt" <<'EOF'
import json, sys
c = json.loads(open(sys.argv[1]).read())["completion"]
print(c[6:13])
EOF
stop=$(cat "$TMP/stop.txt")
"$SEQBOAT" complete -m "$MODEL" -p "w4 w17 w9 w30" -n 30 --temp 0 --logit-bias 2=-inf --format jsonl --stop "$stop" > "$TMP/stopped.out"
$PY - "$TMP/greedy.out" "$TMP/stopped.out" "$stop" <<'EOF' || fail "stop string"
import json, sys
full = json.loads(open(sys.argv[1]).read())
cut = json.loads(open(sys.argv[2]).read())
stop = sys.argv[3]
assert len(stop) == 7 and " " in stop, stop
assert full["finish_reason"] == "length"
assert cut["finish_reason"] == "stop", cut
assert cut["completion"] == full["completion"][:full["completion"].find(stop)], (cut, stop)
EOF

# A shared prefix gives what the whole prompt gives.
"$SEQBOAT" complete -m "$MODEL" -p "w6 w7" -p "w8" --system "w4 w5 " -n 12 --temp 0 --no-timings > "$TMP/prefix.out"
"$SEQBOAT" complete -m "$MODEL" -p "w4 w5 w6 w7" -p "w4 w5 w8" -n 12 --temp 0 --no-timings > "$TMP/whole.out"
$PY - "$TMP/prefix.out" "$TMP/whole.out" <<'EOF' || fail "--system prefix changed the completions"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert [r["completion"] for r in a] == [r["completion"] for r in b], (a, b)
EOF

# Plain text output on request.
out=$("$SEQBOAT" complete -m "$MODEL" -p "w4 w5" -n 6 --temp 0 --format text)
want=$($PY -c 'import json,sys; print(json.loads(sys.stdin.read())["completion"])' \
	< <("$SEQBOAT" complete -m "$MODEL" -p "w4 w5" -n 6 --temp 0 --format jsonl))
[ "$out" = "$want" ] || fail "text output '$out' differs from the record's completion '$want'"

# One -p gives its text to a pipe too: exactly the record's completion and a
# newline, the prompt not repeated; --echo puts the prompt first.
"$SEQBOAT" complete -m "$MODEL" -p "w4 w5" -n 6 --temp 0 | cat > "$TMP/pipe.txt" || fail "complete -p | cat failed"
"$SEQBOAT" complete -m "$MODEL" -p "w4 w5" -n 6 --temp 0 > "$TMP/file.txt" || fail "complete -p > file failed"
"$SEQBOAT" complete -m "$MODEL" -p "w4 w5" -n 6 --temp 0 --echo | cat > "$TMP/echo.txt" || fail "complete --echo failed"
"$SEQBOAT" complete -m "$MODEL" -p "w4 w5" -n 6 --temp 0 --format jsonl > "$TMP/rec.jsonl" || fail "--format jsonl failed"
$PY - "$TMP/rec.jsonl" "$TMP/pipe.txt" "$TMP/file.txt" "$TMP/echo.txt" <<'EOF' || fail "plain text of one -p to a pipe or a file"
import json, sys
rec = json.loads(open(sys.argv[1], encoding="utf-8").read())
want = rec["completion"] + "\n"
assert rec["completion_tokens"] == 6 and rec["completion"].strip(), rec
for path in sys.argv[2:4]:
    got = open(path, encoding="utf-8").read()
    assert got == want, (path, got, want)
got = open(sys.argv[4], encoding="utf-8").read()
assert got == "w4 w5" + want, (got, want)
EOF
"$SEQBOAT" complete -m "$MODEL" -p "w4 w5" -p "w6" -n 3 --temp 0 | $PY -c '
import json, sys
recs = [json.loads(l) for l in sys.stdin]
assert [r["id"] for r in recs] == [1, 2], recs' || fail "several -p should give JSONL records"
"$SEQBOAT" complete -m "$MODEL" -p "w4" -n 3 --echo --format jsonl > /dev/null 2>&1
[ $? = 2 ] || fail "--echo with records should be a usage error"

# Text to a pipe is flushed per token: a run killed while it streams has
# delivered a byte count that is not a whole number of stdio buffers.
$PY - "$SEQBOAT" "$MODEL" <<'EOF' || fail "text to a pipe is not flushed per token"
import os, signal, subprocess, sys, time
# A flushed stream ends on a buffer boundary by chance once in 4096 runs:
# three tries.
sizes = []
for _ in range(3):
    p = subprocess.Popen([sys.argv[1], "complete", "-m", sys.argv[2], "-p", "w4 w5", "-n", "1000000",
                          "--logit-bias", "2=-inf", "-t", "1"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    first = os.read(p.stdout.fileno(), 1 << 16)
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    rest = p.stdout.read()
    p.wait()
    assert first, "no text before the kill"
    sizes.append(len(first) + len(rest))
    if sizes[-1] % 4096:
        break
else:
    raise AssertionError("%s bytes: whole numbers of 4096-byte buffers" % sizes)
EOF

# The output file must not be the input file.
cp "$TMP/plain.txt" "$TMP/same.txt"
"$SEQBOAT" complete -m "$MODEL" -f "$TMP/same.txt" -o "$TMP/same.txt" -n 2 2> /dev/null
rc=$?
[ "$rc" = 2 ] || fail "-o equal to -f: exit status $rc, expected 2"
cmp -s "$TMP/plain.txt" "$TMP/same.txt" || fail "-o equal to -f modified the input"

# Killed part-way with SIGKILL, then resumed: the same bytes as a run that
# was never interrupted. End of sequence is banned so every item is long.
for i in $(seq 1 10); do echo "{\"id\": \"item$i\", \"prompt\": \"w$((i + 3)) w$((i + 20))\"}"; done > "$TMP/long.jsonl"
long=(complete -m "$MODEL" -f "$TMP/long.jsonl" -n 40000 --temp 1 --seed 11 --logit-bias 2=-inf --no-timings -t 1)
"$SEQBOAT" "${long[@]}" -o "$TMP/full.out" || fail "uninterrupted run failed"
"$SEQBOAT" "${long[@]}" -o "$TMP/killed.out" &
pid=$!
# Kill once a whole record is there: a record of 40000 tokens reaches the
# file in several writes, and a kill between two of them (a loaded
# machine) would leave only a torn first line.
for _ in $(seq 1 12000); do
	[ -s "$TMP/killed.out" ] && [ "$(wc -l < "$TMP/killed.out")" -ge 1 ] && break
	sleep 0.01
done
kill -KILL "$pid" 2> /dev/null
wait "$pid" 2> /dev/null
n_killed=$(wc -l < "$TMP/killed.out")
if [ "$n_killed" -lt 1 ] || [ "$n_killed" -ge 10 ]; then
	fail "the kill did not land part-way ($n_killed of 10 records written)"
fi
"$SEQBOAT" "${long[@]}" -o "$TMP/killed.out" --resume || fail "resume failed"
cmp -s "$TMP/full.out" "$TMP/killed.out" || fail "resumed output differs from the uninterrupted run"

# A torn last line (a kill during a write) is repaired by --resume.
head -c "$(($(head -n 3 "$TMP/full.out" | wc -c) + 25))" "$TMP/full.out" > "$TMP/torn.out"
"$SEQBOAT" "${long[@]}" -n 40000 -o "$TMP/torn.out" --resume 2> "$TMP/torn.err" || fail "resume of a torn file failed"
cmp -s "$TMP/full.out" "$TMP/torn.out" || fail "resume after a torn line differs from the uninterrupted run"
grep -q "torn" "$TMP/torn.err" || fail "the torn line repair was not reported"

# Resuming a complete file does nothing.
cp "$TMP/full.out" "$TMP/again.out"
"$SEQBOAT" "${long[@]}" -o "$TMP/again.out" --resume || fail "resume of a finished file failed"
cmp -s "$TMP/full.out" "$TMP/again.out" || fail "resume of a finished file changed it"

# The input is streamed through a window of the items read and not yet
# written (16 per slot and 64 more): more items than that, of uneven
# lengths, give the same records in input order whatever the batch, the
# same through a pipe (copied to a temporary file for the second pass) as
# from the file, and a repeated id far from its first use is still found.
$PY -c 'import json
for i in range(300): print(json.dumps({"id": "s%d" % (i if i != 290 else 3), "prompt": "w%d" % (4 + i % 9), "max_tokens": (i * 7) % 13}))' > "$TMP/stream.jsonl"
"$SEQBOAT" complete -m "$MODEL" -f "$TMP/stream.jsonl" --seed 4 --no-timings --batch 1 > "$TMP/stream1.out" 2> /dev/null
[ $? = 65 ] || fail "streamed batch: expected exit 65 (one repeated id)"
"$SEQBOAT" complete -m "$MODEL" -f "$TMP/stream.jsonl" --seed 4 --no-timings --batch 6 > "$TMP/stream6.out" 2> /dev/null
cat "$TMP/stream.jsonl" | "$SEQBOAT" complete -m "$MODEL" --seed 4 --no-timings --batch 3 > "$TMP/streamp.out" 2> /dev/null
cmp -s "$TMP/stream1.out" "$TMP/stream6.out" || fail "streamed batch: --batch 1 and 6 differ"
cmp -s "$TMP/stream1.out" "$TMP/streamp.out" || fail "streamed batch: a pipe and the file differ"
$PY - "$TMP/stream1.out" <<'EOF' || fail "streamed batch: records out of order or the repeat not found"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
assert len(recs) == 300
for i, r in enumerate(recs):
    if i == 290:
        assert r["id"] == {"line": 291} and "first used by item 4" in r["error"], r
    else:
        assert r["id"] == "s%d" % i and r["completion_tokens"] <= (i * 7) % 13, r
EOF

finish e2e-complete
