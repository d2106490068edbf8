#!/bin/bash
# e2e-cli.sh - the command line as a llama.cpp user meets it: help for
# every command, thread counts that cannot slow a run down silently,
# the weight type's one name, progress and Ctrl-C in perplexity, and
# tokenize on a terminal.
set -u
. "$(dirname "$0")/e2e-lib.sh"
trap 'rm -rf "$TMP"' EXIT

CMDS="info tokenize quantize logits complete chat bench perplexity activations"

# --- help: every command lists -h; `seqboat help CMD` is CMD --help
for c in $CMDS; do
	"$SEQBOAT" "$c" --help >"$TMP/long" 2>"$TMP/err" || fail "$c --help exits $?"
	"$SEQBOAT" "$c" -h >"$TMP/short" 2>>"$TMP/err" || fail "$c -h exits $?"
	"$SEQBOAT" help "$c" >"$TMP/help" 2>>"$TMP/err" || fail "help $c exits $?"
	cmp -s "$TMP/long" "$TMP/short" || fail "$c: -h differs from --help"
	cmp -s "$TMP/long" "$TMP/help" || fail "help $c differs from $c --help"
	grep -q -- '-h, --help' "$TMP/long" || fail "$c --help does not list -h, --help"
	grep -q '^usage: seqboat '"$c" "$TMP/long" || fail "$c --help does not start with its usage"
	[ -s "$TMP/err" ] && fail "$c help wrote to stderr: $(cat "$TMP/err")"
done
"$SEQBOAT" help >"$TMP/out" || fail "help alone exits $?"
grep -q "seqboat help <command>" "$TMP/out" || fail "help does not say 'seqboat help <command>'"
"$SEQBOAT" help nonesuch >"$TMP/out" 2>"$TMP/err"
[ $? -eq 2 ] || fail "help nonesuch: expected exit 2"
[ -s "$TMP/out" ] && fail "help nonesuch wrote to stdout"
grep -q "unknown command 'nonesuch'" "$TMP/err" || fail "help nonesuch: $(cat "$TMP/err")"
# defaults are stated
"$SEQBOAT" perplexity --help | grep -q -- '--act-bias X .*(default 0)' || fail "perplexity --help: no --act-bias default"
"$SEQBOAT" complete --help | grep -q 'default and 0: all cores' || fail "complete --help: no -t default"

# --- threads: 0 is all cores, more than the cores is lowered with a warning
cores=$($PY -c 'import os; print(len(os.sched_getaffinity(0)))')
ids="1 5 9 13 17 21 25 29"
"$SEQBOAT" perplexity -m "$MODEL" --ids "$ids" --json >"$TMP/ref" 2>"$TMP/err" || fail "perplexity exits $?"
for t in 0 1 999 $((cores + 1)); do
	"$SEQBOAT" perplexity -m "$MODEL" --ids "$ids" --json -t $t >"$TMP/out" 2>"$TMP/err" \
		|| fail "perplexity -t $t exits $?"
	$PY -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); assert abs(a["nll_sum"]-b["nll_sum"])<1e-6*abs(a["nll_sum"])' \
		"$TMP/ref" "$TMP/out" || fail "perplexity -t $t scores differently"
	if [ $t -gt "$cores" ]; then
		grep -q "^seqboat: warning: --threads $t: this process may run on $cores core.*; using $cores" "$TMP/err" \
			|| fail "-t $t: no warning ($(cat "$TMP/err"))"
	elif [ -s "$TMP/err" ]; then
		fail "-t $t warned: $(cat "$TMP/err")"
	fi
done
# through complete's flag parsing (shared with chat) too
"$SEQBOAT" complete -m "$MODEL" -t 999 -n 2 --seed 1 -p "a b" >"$TMP/out" 2>"$TMP/err" || fail "complete -t 999 exits $?"
grep -q "warning: --threads 999" "$TMP/err" || fail "complete -t 999 did not warn"
for c in "perplexity --ids 1,2" "logits --ids 1,2 -o $TMP/l.st" "complete -p x -n 1"; do
	"$SEQBOAT" $c -m "$MODEL" -t -1 >"$TMP/out" 2>"$TMP/err"
	[ $? -eq 2 ] || fail "$c -t -1: expected exit 2"
	[ "$(wc -l <"$TMP/err")" -eq 1 ] || fail "$c -t -1: expected one error line: $(cat "$TMP/err")"
done

# --- one name for the 8-bit type: quantize --type q8, info says q8
"$SEQBOAT" quantize -m "$MODEL" -o "$TMP/q8" --type q8 2>"$TMP/err" || fail "quantize q8 exits $?"
"$SEQBOAT" info -m "$TMP/q8" | grep -q '^weights file .*, q8$' || fail "info does not call q8 weights q8"
"$SEQBOAT" info -m "$TMP/q8" --json | $PY -c 'import json,sys; assert json.load(sys.stdin)["dtype"]=="q8"' \
	|| fail "info --json dtype of a q8 model is not q8"
"$SEQBOAT" bench -m "$TMP/q8" -p 8 -n 0 -r 1 -t 1 -o jsonl | $PY -c 'import json,sys; o=json.loads(sys.stdin.readline()); assert o["type_weights"]=="q8" and o["model_type"].endswith(" q8"), o' \
	|| fail "bench does not call q8 weights q8"
"$SEQBOAT" info -m "$MODEL" | grep -q '^weights file .*, F32$' || fail "info of an F32 model changed"

# --- perplexity: Ctrl-C while scoring reports what was scored
# the bundled model (slower than the fixture) over 20000 ids: an argument
# of about 100 KB, below the kernel's limit for one
$PY -c 'import random; random.seed(1); print(" ".join(str(random.randrange(8000)) for _ in range(20000)))' >"$TMP/ids"
"$SEQBOAT" perplexity --ids "$(cat "$TMP/ids")" -t 1 >"$TMP/out" 2>"$TMP/err" &
pid=$!
sleep 1.5
kill -INT $pid
wait $pid
rc=$?
[ $rc -eq 130 ] || fail "perplexity after SIGINT: exit $rc, expected 130 ($(cat "$TMP/err"))"
[ -s "$TMP/out" ] && fail "perplexity after SIGINT wrote to stdout"
grep -Eq '^seqboat: perplexity: interrupted (after scoring [0-9]+ of 19999 tokens \(0 chunks complete\): perplexity so far [0-9.]+ \+/- [0-9.]+|before the first token)' "$TMP/err" \
	|| fail "perplexity after SIGINT: $(cat "$TMP/err")"
# ... and a base logits file is not left half-written
"$SEQBOAT" perplexity --ids "$(cat "$TMP/ids")" -t 1 --kl-divergence-base "$TMP/base.kld" >"$TMP/out" 2>"$TMP/err" &
pid=$!
sleep 1.5
kill -INT $pid
wait $pid
rc=$?
[ $rc -eq 130 ] || fail "perplexity --kl-divergence-base after SIGINT: exit $rc"
ls "$TMP" | grep -q 'base.kld' && fail "an interrupted --kl-divergence-base left $(ls "$TMP" | grep base.kld)"

# --- on a terminal: tokenizing shows progress and Ctrl-C names the phase;
# tokenize without input says what it expects
$PY -c 'import sys; t=open(sys.argv[1]).read(); open(sys.argv[2],"w").write(t*(3000000//len(t)+1))' \
	"$SB_SRCDIR/tests/data/sotu-test-head.txt" "$TMP/big.txt"
cat >"$TMP/tty-run.py" <<'EOF'
# tty-run.py OUT STDIN_TTY INTERRUPT_ON ARGS...: runs ARGS with stderr (and,
# if STDIN_TTY is 1, stdin) on a terminal; if INTERRUPT_ON is not empty,
# sends SIGINT once stderr shows it. Writes stderr to OUT; exits with the
# child's status (128 + signal when killed).
import os, pty, select, signal, subprocess, sys, time
out, tty_in, trigger, args = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4:]
m, s = pty.openpty()
p = subprocess.Popen(args, stdin=s if tty_in else subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=s)
os.close(s)
buf, sent, deadline = b"", False, time.time() + 120
while time.time() < deadline:
    r, _, _ = select.select([m], [], [], 0.05)
    if r:
        try:
            d = os.read(m, 4096)
        except OSError:
            d = b""
        if not d:
            break
        buf += d
    if trigger and not sent and trigger.encode() in buf:
        p.send_signal(signal.SIGINT)
        sent = True
    if p.poll() is not None and not r:
        break
rc = p.wait()
open(out, "wb").write(buf)
sys.exit(rc if rc >= 0 else 128 - rc)
EOF
$PY "$TMP/tty-run.py" "$TMP/tty" 0 "tokenizing" "$SB_SEQBOAT_REAL" perplexity -f "$TMP/big.txt"
rc=$?
[ $rc -eq 130 ] || fail "perplexity interrupted while tokenizing: exit $rc ($(cat "$TMP/tty"))"
grep -aq "perplexity: tokenizing $TMP/big.txt (2.9 MiB, " "$TMP/tty" || fail "no tokenizing progress: $(cat "$TMP/tty")"
grep -aq "perplexity: interrupted while tokenizing $TMP/big.txt (2.9 MiB, after [0-9.]* s): nothing was scored" "$TMP/tty" \
	|| fail "Ctrl-C while tokenizing: $(cat "$TMP/tty")"
$PY "$TMP/tty-run.py" "$TMP/tty" 1 "" "$SB_SEQBOAT_REAL" tokenize -m "$MODEL"
rc=$?
[ $rc -eq 2 ] || fail "tokenize with a terminal on stdin: exit $rc, expected 2"
grep -aq "tokenize: no text (give TEXT, -f FILE, or pipe it in" "$TMP/tty" || fail "tokenize on a terminal: $(cat "$TMP/tty")"
$PY "$TMP/tty-run.py" "$TMP/tty" 1 "" "$SB_SEQBOAT_REAL" tokenize --decode -m "$MODEL"
[ $? -eq 2 ] || fail "tokenize --decode with a terminal on stdin: expected exit 2"
grep -aq "tokenize: no ids" "$TMP/tty" || fail "tokenize --decode on a terminal: $(cat "$TMP/tty")"
# a pipe still works as before
[ "$(echo "a b" | "$SEQBOAT" tokenize -m "$MODEL")" = "$("$SEQBOAT" tokenize -m "$MODEL" "a b
")" ] || fail "tokenize from a pipe changed"

finish e2e-cli
