#!/bin/bash
# e2e-hostile.sh - hostile input, round two (issue 16): output targets that
# are not regular files, --resume on files that are not seqboat's output,
# unbounded reads, and the messages of these refusals. Each refusal must be
# one line on stderr with the documented exit status, and leave what was
# there untouched.
set -u

. "$(dirname "$0")/e2e-lib.sh"
trap 'rm -rf "$TMP"' EXIT

# expect NAME STATUS WORD CMD...: CMD exits STATUS and says one line on
# stderr that names WORD.
expect() {
	local name=$1 want=$2 word=$3
	shift 3
	"$@" > "$TMP/out" 2> "$TMP/err" < /dev/null
	local got=$?
	[ "$got" = "$want" ] || fail "$name: exit $got, expected $want ($(head -c 300 "$TMP/err"))"
	[ "$(wc -l < "$TMP/err")" = 1 ] || fail "$name: expected one line on stderr, got: $(head -c 600 "$TMP/err")"
	grep -qi -- "$word" "$TMP/err" || fail "$name: the message does not name '$word': $(cat "$TMP/err")"
}

# ------------------------------------------------ output targets (item 3)
mkdir "$TMP/t"
mkfifo "$TMP/t/fifo"
mkdir "$TMP/t/dir"
echo keep > "$TMP/t/real"
chmod 640 "$TMP/t/real"
ln -s real "$TMP/t/link"
ln -s fifo "$TMP/t/link-to-fifo"
ln -s missing "$TMP/t/dangling"
logits=(logits -m "$MODEL" --ids "4 5 6")
for target in fifo dir link-to-fifo dangling; do
	expect "logits -o $target" 74 "$TMP/t/$target" "$SEQBOAT" "${logits[@]}" -o "$TMP/t/$target"
done
expect "logits -o /dev/null" 74 "device" "$SEQBOAT" "${logits[@]}" -o /dev/null
[ -p "$TMP/t/fifo" ] || fail "the FIFO was replaced"
[ -d "$TMP/t/dir" ] || fail "the directory was replaced"
[ -L "$TMP/t/dangling" ] || fail "the dangling link was replaced"
[ -c /dev/null ] || fail "/dev/null was replaced"
# Through a link to a regular file: the file is replaced, the link stays,
# the mode is kept.
"$SEQBOAT" "${logits[@]}" -o "$TMP/t/link" 2> "$TMP/err" || fail "logits -o a link to a file: $(cat "$TMP/err")"
[ -L "$TMP/t/link" ] || fail "logits -o through a link replaced the link"
[ "$(head -c 8 "$TMP/t/real" | wc -c)" = 8 ] && ! grep -q keep "$TMP/t/real" || fail "the link's file was not written"
[ "$(stat -c %a "$TMP/t/real")" = 640 ] || fail "the replaced file lost its mode: $(stat -c %a "$TMP/t/real")"
[ "$(ls -A "$TMP/t" | wc -l)" = 6 ] || fail "temporary files left: $(ls -A "$TMP/t")"

for target in fifo dir; do
	expect "activations -o $target" 74 "$TMP/t/$target" \
		"$SEQBOAT" activations -m "$MODEL" -p "w4 w5" -o "$TMP/t/$target"
done

# chat /save: refused, the conversation goes on, no "saved".
printf 'w4 w5\n/save %s\n/save %s\n/save %s\nw6\n' "$TMP/t/fifo" "$TMP/t/dir" /dev/null |
	"$SEQBOAT" chat -m "$MODEL" --temp 0 -n 3 > "$TMP/chat.out" 2> "$TMP/chat.err" ||
	fail "chat with refused /save targets exited $?"
grep -q "saved" "$TMP/chat.err" && fail "chat said saved for a non-regular target: $(cat "$TMP/chat.err")"
[ "$(grep -c "not replacing it" "$TMP/chat.err")" = 3 ] || fail "chat /save refusals: $(cat "$TMP/chat.err")"
[ "$(wc -l < "$TMP/chat.out")" = 2 ] || fail "chat did not go on after the refused /save"
[ -p "$TMP/t/fifo" ] && [ -d "$TMP/t/dir" ] || fail "chat /save replaced a FIFO or a directory"
printf 'w4\n/save %s\n' "$TMP/t/link" | "$SEQBOAT" chat -m "$MODEL" --temp 0 -n 2 > /dev/null 2> "$TMP/chat.err"
grep -q "saved" "$TMP/chat.err" && [ -L "$TMP/t/link" ] && [ "$(head -c 6 "$TMP/t/real")" = SBCHAT ] ||
	fail "chat /save through a link: $(cat "$TMP/chat.err")"

# quantize -o something that exists, even a dangling link: refused.
expect "quantize -o a dangling link" 2 "exists" "$SEQBOAT" quantize -m "$MODEL" --type f16 -o "$TMP/t/dangling"
[ -L "$TMP/t/dangling" ] || fail "quantize replaced a dangling link"

# Empty file names (item 9): a message naming the flag, not "seqboat: : ...".
expect "complete -o ''" 2 "-o" "$SEQBOAT" complete -m "$MODEL" -p w4 -n 1 -o ""
expect "logits -o ''" 2 "empty" "$SEQBOAT" "${logits[@]}" -o ""
grep -q "seqboat: :" "$TMP/err" && fail "logits -o '': $(cat "$TMP/err")"

# ------------------------------------------- --resume recognition (item 2)
complete=(complete -m "$MODEL" --temp 0 -n 2 --no-timings)
printf '{"id": 1, "prompt": "w4"}\n{"id": 2, "prompt": "w5"}\n' > "$TMP/in.jsonl"
head -c 4096 /dev/urandom | tr -d '\n' > "$TMP/binary"
cp "$TMP/binary" "$TMP/binary.orig"
expect "--resume on a binary file" 65 "left as it is" "$SEQBOAT" "${complete[@]}" -f "$TMP/in.jsonl" -o "$TMP/binary" --resume
cmp -s "$TMP/binary" "$TMP/binary.orig" || fail "--resume changed a binary file it refused"
printf 'dear diary,\nnothing today.\nthe last line' > "$TMP/text"
cp "$TMP/text" "$TMP/text.orig"
expect "--resume on a text file" 65 "line 1" "$SEQBOAT" "${complete[@]}" -f "$TMP/in.jsonl" -o "$TMP/text" --resume
cmp -s "$TMP/text" "$TMP/text.orig" || fail "--resume changed a text file it refused"
# Records, then a line that is not one, then a torn tail: untouched.
"$SEQBOAT" "${complete[@]}" -f "$TMP/in.jsonl" -o "$TMP/rec" 2> /dev/null || fail "complete -o failed"
head -n 1 "$TMP/rec" > "$TMP/mixed"
printf 'not a record\n{"id": 2, "compl' >> "$TMP/mixed"
cp "$TMP/mixed" "$TMP/mixed.orig"
expect "--resume with a foreign line" 65 "line 2" "$SEQBOAT" "${complete[@]}" -f "$TMP/in.jsonl" -o "$TMP/mixed" --resume
cmp -s "$TMP/mixed" "$TMP/mixed.orig" || fail "--resume changed a file with a foreign line"
# A torn record after whole ones is repaired, and the run completes it.
head -n 1 "$TMP/rec" > "$TMP/torn"
printf '{"id":2,"compl' >> "$TMP/torn"
"$SEQBOAT" "${complete[@]}" -f "$TMP/in.jsonl" -o "$TMP/torn" --resume 2> "$TMP/err" ||
	fail "--resume of a torn record: $(cat "$TMP/err")"
cmp -s "$TMP/torn" "$TMP/rec" || fail "--resume of a torn record did not give the full output"
grep -q "torn" "$TMP/err" || fail "the torn line's removal was not reported"
expect "--resume on a FIFO" 2 "regular file" "$SEQBOAT" "${complete[@]}" -f "$TMP/in.jsonl" -o "$TMP/t/fifo" --resume

# ------------------------------------------------ --resume matching (item 8)
# 100k items all done: the run only matches ids (hashed), so it ends in
# seconds; comparing every record with every id took minutes.
$PY - "$TMP/many.jsonl" "$TMP/many.out" <<'PYEOF'
import json, sys
n = 100000
with open(sys.argv[1], "w") as f, open(sys.argv[2], "w") as g:
    for i in range(n):
        f.write(json.dumps({"id": "item-%d" % i, "prompt": "w4"}) + "\n")
        g.write(json.dumps({"id": "item-%d" % i, "completion": "", "finish_reason": "length"},
                           separators=(",", ":")) + "\n")
PYEOF
cp "$TMP/many.out" "$TMP/many.orig"
"$SEQBOAT" "${complete[@]}" -f "$TMP/many.jsonl" -o "$TMP/many.out" --resume 2> "$TMP/err" ||
	fail "--resume of 100k done items: $(tail -c 300 "$TMP/err")"
cmp -s "$TMP/many.out" "$TMP/many.orig" || fail "--resume of done items changed the output"

# ------------------------------------- SentencePiece charsmaps (item 1)
# A well-formed charsmap passes the check and SentencePiece applies it
# (A -> a, B -> bb); the malformed ones are in tests/malformed.
mkdir "$TMP/spm"
SRC=${SB_SRCDIR:?}
$PY - "$SRC" "$TMP/spm" <<'PYEOF' || fail "could not write the charsmap models"
import importlib.util, os, shutil, sys
src, out = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("gen", os.path.join(src, "tests/malformed/generate.py"))
g = importlib.util.module_from_spec(spec)
spec.loader.exec_module(g)
spm = open(os.path.join(src, "tests/data/spm-tiny.model"), "rb").read()
open(os.path.join(out, "good.model"), "wb").write(
    g.spm_with_charsmap(spm, g.charsmap({ord("A"): 0, ord("B"): 2}, b"a\0bb\0")))
PYEOF
# The bundled model's directory with this tokenizer.model (its vocabulary
# is larger than spm-tiny's 400 pieces).
mkdir "$TMP/spm/model"
cp "$SRC/models/sotu-small/config.yaml" "$TMP/spm/model/"
ln -s "$SRC/models/sotu-small/model.safetensors" "$TMP/spm/model/model.safetensors"
cp "$TMP/spm/good.model" "$TMP/spm/model/tokenizer.model"
a=$("$SEQBOAT" tokenize -m "$TMP/spm/model" "a abb" 2> "$TMP/err") || fail "tokenize with a good charsmap: $(cat "$TMP/err")"
b=$("$SEQBOAT" tokenize -m "$TMP/spm/model" "A aB" 2> "$TMP/err") || fail "tokenize with a good charsmap: $(cat "$TMP/err")"
[ -n "$a" ] && [ "$a" = "$b" ] || fail "the charsmap was not applied: '$a' vs '$b'"

# ------------------------------------------------ byte order marks (item 7)
# A UTF-8 BOM at the start of a text file is skipped everywhere: dict.txt
# (its first symbol keeps its id), config.yaml, JSONL and text prompt files.
BOM=$'\xef\xbb\xbf'
mkdir "$TMP/bom"
cp "$MODEL"/* "$TMP/bom/"
{ printf '%s' "$BOM"; cat "$MODEL/dict.txt"; } > "$TMP/bom/dict.txt"
{ printf '%s' "$BOM"; cat "$MODEL/config.yaml"; } > "$TMP/bom/config.yaml"
first=$(head -n 1 "$MODEL/dict.txt" | cut -d' ' -f1)
want=$("$SEQBOAT" tokenize -m "$MODEL" --no-bos "$first" 2>&1)
got=$("$SEQBOAT" tokenize -m "$TMP/bom" --no-bos "$first" 2>&1)
[ "$want" = 4 ] && [ "$got" = "$want" ] || fail "dict.txt with a BOM: '$first' is '$got', expected '$want' (id 4)"
printf '%s{"id": "a", "prompt": "w4 w5"}\n{"id": "b", "prompt": "w6"}\n' "$BOM" > "$TMP/bom.jsonl"
"$SEQBOAT" "${complete[@]}" -f "$TMP/bom.jsonl" > "$TMP/bom.out" 2> "$TMP/err" || fail "JSONL with a BOM: $(cat "$TMP/err")"
$PY - "$TMP/bom.out" <<'PYEOF' || fail "JSONL with a BOM was not read as JSONL: $(head -c 300 "$TMP/bom.out")"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
assert [r["id"] for r in recs] == ["a", "b"] and all(r["finish_reason"] != "error" for r in recs), recs
PYEOF
printf '%sw4 w5 w6' "$BOM" > "$TMP/bom.txt"
a=$("$SEQBOAT" tokenize -m "$MODEL" -f "$TMP/bom.txt" 2>&1)
b=$("$SEQBOAT" tokenize -m "$MODEL" "w4 w5 w6" 2>&1)
[ "$a" = "$b" ] || fail "tokenize -f with a BOM: '$a', expected '$b'"

# --------------------------------- a model truncated while mapped (item 10)
# The weights are mapped; truncating the file under a running generation
# makes the next read of a dropped page a SIGBUS: one line naming the file
# and exit 74, not a silent death.
mkdir "$TMP/bus"
cp "$MODEL"/* "$TMP/bus/"
timeout -s KILL 120 "$SEQBOAT" complete -m "$TMP/bus" -p "w4 w5" -n -1 --temp 1 --logit-bias 2=-inf -t 1 \
	> "$TMP/bus.out" 2> "$TMP/bus.err" &
pid=$!
for _ in $(seq 100); do
	[ -s "$TMP/bus.out" ] && break
	sleep 0.1
done
truncate -s 4096 "$TMP/bus/model.safetensors"
wait "$pid"
st=$?
[ "$st" = 74 ] || fail "a model truncated while in use: exit $st, expected 74 ($(tail -c 300 "$TMP/bus.err"))"
grep -q "bus/model.safetensors changed while in use" "$TMP/bus.err" ||
	fail "a model truncated while in use: $(tail -c 300 "$TMP/bus.err")"
[ "$(wc -l < "$TMP/bus.err")" = 1 ] || fail "a model truncated while in use: more than one line: $(head -c 600 "$TMP/bus.err")"

# ------------------------------------------- chat /load refusals (item 4, 9)
# A directory: one line. /dev/zero: stops at the limit (the state's size
# plus 64 MiB of header) instead of growing without end.
printf '/load %s\n/load /dev/zero\nw4\n' "$TMP/t/dir" |
	"$SEQBOAT" chat -m "$MODEL" --temp 0 -n 2 > "$TMP/load.out" 2> "$TMP/load.err" ||
	fail "chat after refused /loads exited $?"
[ "$(grep -c "t/dir" "$TMP/load.err")" = 1 ] && grep -q "directory" "$TMP/load.err" ||
	fail "/load of a directory: $(cat "$TMP/load.err")"
[ "$(grep -c "/dev/zero" "$TMP/load.err")" = 1 ] && grep -q "limit" "$TMP/load.err" ||
	fail "/load /dev/zero: $(cat "$TMP/load.err")"
[ "$(wc -l < "$TMP/load.out")" = 1 ] || fail "chat did not go on after the refused /loads"

# Whole-file reads stop at their limit on an endless file.
expect "--prefix-file /dev/zero" 65 "limit" "$SEQBOAT" complete -m "$MODEL" -p w4 -n 1 --prefix-file /dev/zero
mkdir "$TMP/zero"
cp "$MODEL"/config.yaml "$MODEL"/model.safetensors "$TMP/zero/"
ln -s /dev/zero "$TMP/zero/dict.txt"
expect "dict.txt on /dev/zero" 65 "limit" "$SEQBOAT" tokenize -m "$TMP/zero" w4

# ------------------------------------------ state memory budget (item 4)
# A legal window of 2^20 makes a 1.36 GB state: refused up front against
# --mem, naming the window, instead of allocated per slot and snapshot.
mkdir "$TMP/wide" "$TMP/mid"
cp "$MODEL"/* "$TMP/wide/"
cp "$MODEL"/* "$TMP/mid/"
sed -i 's/  window: 16$/  window: 1048576/' "$TMP/wide/config.yaml"
sed -i 's/  window: 16$/  window: 16384/' "$TMP/mid/config.yaml"
grep -q "window: 1048576" "$TMP/wide/config.yaml" || fail "could not set the window"
expect "complete, one state over --mem" 65 "window 1048576" "$SEQBOAT" complete -m "$TMP/wide" -p w4 -n 1 --mem 1G
expect "chat, one conversation over --mem" 65 "window 1048576" "$SEQBOAT" chat -m "$TMP/wide" --mem 2G
expect "--mem garbage" 2 "--mem" "$SEQBOAT" complete -m "$MODEL" -p w4 -n 1 --mem lots
# A 21 MB state: --batch 8 within 70 MB is lowered to 3 slots, and the
# records are those of the full batch.
printf 'w%d\n' 4 5 6 7 8 9 10 11 > "$TMP/eight.txt"
"$SEQBOAT" complete -m "$TMP/mid" -f "$TMP/eight.txt" --temp 0 -n 3 --no-timings --seed 1 --batch 8 --mem 70M \
	> "$TMP/eight.low" 2> "$TMP/err" || fail "complete under --mem: $(cat "$TMP/err")"
grep -q "lowered to 3" "$TMP/err" || fail "--batch was not lowered to fit --mem: $(cat "$TMP/err")"
"$SEQBOAT" complete -m "$TMP/mid" -f "$TMP/eight.txt" --temp 0 -n 3 --no-timings --seed 1 --batch 8 \
	> "$TMP/eight.full" 2> /dev/null
cmp -s "$TMP/eight.low" "$TMP/eight.full" || fail "a lowered batch gave other records"
# chat within 100 MB: two states for the conversation, two undo snapshots.
printf 'w4\nw5\nw6\n/undo\n/undo\n/undo\n' |
	"$SEQBOAT" chat -m "$TMP/mid" --temp 0 -n 2 --mem 100M > /dev/null 2> "$TMP/err" ||
	fail "chat under --mem: $(cat "$TMP/err")"
grep -q "keeps 2 turns" "$TMP/err" && [ "$(grep -c "undone" "$TMP/err")" = 2 ] &&
	grep -q "nothing to undo" "$TMP/err" || fail "chat undo under --mem: $(cat "$TMP/err")"

# complete reads its input as a stream: memory is bounded by the batch
# (the items read and not yet written), not by the number of items. 200k
# one-character prompts run to the end within --mem 20M, and the peak RSS
# stays far below the ~75 MB that holding the items took (372 bytes each).
n=200000
[ -z "${SB_SANITIZER:-}" ] || n=20000
yes a | head -n $n > "$TMP/many-a.txt"
rss=$($PY -c 'import os,sys
pid=os.fork()
if pid==0:
    o=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT|os.O_TRUNC); e=os.open(sys.argv[2],os.O_WRONLY|os.O_CREAT|os.O_TRUNC)
    os.dup2(o,1); os.dup2(e,2); os.execv(sys.argv[3],sys.argv[3:])
_,st,ru=os.wait4(pid,0)
print(ru.ru_maxrss if os.WIFEXITED(st) and os.WEXITSTATUS(st)==0 else -1)' "$TMP/many.out" "$TMP/many.err" \
	"${SB_SEQBOAT_REAL:-$SEQBOAT}" complete -m "$MODEL" -f "$TMP/many-a.txt" -n 1 --mem 20M --seed 1 --no-timings)
[ "$rss" -ge 0 ] || fail "$n prompts under --mem 20M: $(cat "$TMP/many.err")"
[ "$(wc -l < "$TMP/many.out")" = $n ] && [ "$(tail -n 1 "$TMP/many.out" | cut -d, -f1)" = "{\"id\":$n" ] ||
	fail "$n prompts: not one record each, in order"
if [ -z "${SB_SANITIZER:-}" ]; then
	[ "$rss" -lt 32768 ] || fail "200k prompts reached $rss KB (the input is held, not streamed)"
fi
# Several act_bias values make one pass each over every item: then the
# items are held, counted against --mem, and refused early when too many.
$PY -c 'import sys
for i in range(int(sys.argv[1])): print("{\"prompt\": \"a\", \"act_bias\": %d}" % (i % 2))' $n > "$TMP/many-bias.jsonl"
expect "$n prompts, two act_bias values, over --mem" 65 "memory limit" "$SEQBOAT" complete -m "$MODEL" -f "$TMP/many-bias.jsonl" -n 1 --mem 5M

finish e2e-hostile
