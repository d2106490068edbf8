#!/bin/bash
# Control characters in model output never reach the terminal raw: chat
# (always) and complete (text on a terminal) print ESC as \x1b. A byte-form
# fairseq dictionary on a fixture model, and a logit bias that forces the
# ESC byte, make the model emit it.
set -euo pipefail
bin=${SB_SEQBOAT:?}
src=${SB_FIXTURE_MODELS:?}/rotary-softmax
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$src" "$tmp/m"
# 68 symbols "0".."67": detected as the byte form; byte 27 (ESC) is id 31.
for i in $(seq 0 67); do echo "$i 1"; done > "$tmp/m/dict.txt"

fail() { echo "FAIL: $*" >&2; exit 1; }

out=$(printf 'hello\n' | "$bin" chat -m "$tmp/m" -n 3 --temp 0 --logit-bias 31=100 2>"$tmp/err")
case "$out" in
*$'\x1b'*) fail "chat printed a raw ESC byte" ;;
esac
[[ "$out" == *'\x1b\x1b\x1b'* ]] || fail "chat output '$out' lacks the escaped ESC bytes"

# complete writing text to a terminal escapes too (script gives it a pty).
if command -v script >/dev/null; then
	script -qec "$bin complete -m $tmp/m -n 2 --temp 0 --logit-bias 31=100 -p 5" "$tmp/tty" >/dev/null 2>&1 </dev/null || true
	grep -q 'x1b' "$tmp/tty" || fail "complete on a terminal did not escape ESC: $(cat -v "$tmp/tty")"
	if grep -q $'\x1b\x1b' "$tmp/tty"; then fail "complete on a terminal printed raw ESC bytes"; fi
fi
# JSONL records carry the raw text (JSON-escaped by jansson), not \x escapes.
rec=$("$bin" complete -m "$tmp/m" -n 2 --temp 0 --logit-bias 31=100 -p 5 --format jsonl)
[[ "${rec,,}" == *'\u001b\u001b'* ]] || fail "JSONL record '$rec' lacks the two ESC characters"
echo "escape: ok"
