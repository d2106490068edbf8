#!/bin/bash
# e2e-serve-openai.sh - `seqboat serve` driven by the official openai npm
# package (tests/serve-openai/check.mjs), a client nobody here wrote. Its
# node_modules come from `npm ci` (tests/serve-openai/setup, which CI runs);
# without them the test is skipped (exit 77).
set -u

. "$(dirname "$0")/e2e-lib.sh"
. "$(dirname "$0")/serve-lib.sh"
trap 'serve_stop KILL; rm -rf "$TMP"' EXIT

dir=$SB_SRCDIR/tests/serve-openai
if [ ! -f "$dir/node_modules/openai/package.json" ] || ! command -v node > /dev/null; then
	echo "skipped: run tests/serve-openai/setup to install node and the openai package" >&2
	exit 77
fi

prompt="w4 w17 w9 w30"
greedy=$("$SEQBOAT" complete -m "$MODEL" -p "$prompt" -n 16 --temp 0 --format jsonl | jq -r .completion)
serve_start openai -m "$MODEL" -t 1 --api-key test-key-1
node "$dir/check.mjs" "$SERVE_URL/v1" test-key-1 rotary-softmax "$prompt" "$greedy" ||
	fail "the openai client checks failed"
serve_stop
[ "$SERVE_RC" = 0 ] || fail "serve exited $SERVE_RC"
finish e2e-serve-openai
