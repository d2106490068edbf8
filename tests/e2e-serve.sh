#!/bin/bash
# e2e-serve.sh - drives `seqboat serve` with curl on the converted fixture
# model: /health while loading, the routes, greedy output equal to
# `seqboat complete --temp 0`, streaming, the state cache across turns and
# across restarts (foreign and corrupt files ignored), every error status
# (400, 401, 404, 405, 413, 503 + Retry-After, 504), a client that hangs
# up, and SIGTERM draining a request in flight then exiting 0.
set -u

. "$(dirname "$0")/e2e-lib.sh"
. "$(dirname "$0")/serve-lib.sh"
trap 'serve_stop KILL; rm -rf "$TMP"' EXIT

jqf() { jq -r "$@" < "$TMP/body"; }
# Under valgrind everything is some 20 times slower: longer waits, shorter
# generations where only their being in flight matters.
slow=1
[ "${SB_SANITIZER:-}" = valgrind ] && slow=20

# ---- Bad flags and a memory limit too small: one line, exit 2.
usage_error() { # expected-text args...
	local want=$1
	shift
	"$SEQBOAT" serve -m "$MODEL" --port 0 "$@" > "$TMP/u.out" 2> "$TMP/u.err"
	local rc=$?
	[ "$rc" = 2 ] || fail "serve $*: expected exit 2, got $rc: $(cat "$TMP/u.err")"
	grep -q -- "$want" "$TMP/u.err" || fail "serve $*: no '$want' in: $(cat "$TMP/u.err")"
	[ -s "$TMP/u.out" ] && fail "serve $*: wrote to stdout"
}
usage_error "unknown option" --bogus
usage_error "--port" --port 70000
usage_error "--parallel" --parallel 0
usage_error "--cache-bytes" --cache-bytes lots
usage_error "--timeout" --timeout -1
usage_error "hold up to 44 states" --mem 1M
usage_error "more than --mem leaves" --mem 2M --cache-bytes 1M

# ---- /health says 503 while the model loads, then 200.
SERVE_NOWAIT=1 serve_start loading -m "$MODEL" -t 1 --load-delay 1.5
code=$(curl -s -o "$TMP/body" -w '%{http_code}' "$SERVE_URL/health")
[ "$code" = 503 ] || fail "/health while loading: expected 503, got $code"
grep -q loading "$TMP/body" || fail "/health while loading: $(cat "$TMP/body")"
post /v1/completions '{"prompt": "w4"}' -D "$TMP/headers" > /dev/null
[ "$(status)" = 503 ] || fail "a completion while loading: expected 503, got $(status)"
grep -qi '^retry-after:' "$TMP/headers" || fail "503 while loading has no Retry-After"
for i in $(seq 1 $((100 * slow))); do
	curl -sf -o /dev/null "$SERVE_URL/health" && break
	sleep 0.1
done
curl -sf -o /dev/null "$SERVE_URL/health" || fail "/health never became 200"
serve_stop
[ "$SERVE_RC" = 0 ] || fail "SIGTERM of an idle server: exit $SERVE_RC"

serve_start main -m "$MODEL" -t 1 --parallel 2 --queue 2 --max-body 4096
# ---- /v1/models names the model.
curl -s "$SERVE_URL/v1/models" > "$TMP/body"
[ "$(jqf '.data[0].id')" = rotary-softmax ] || fail "/v1/models: $(cat "$TMP/body")"

# ---- Greedy output over HTTP equals `seqboat complete --temp 0`.
for p in "w4 w17 w9 w30" "w5" "w12 w13 w14 w15 w16 w17 w18 w19 w20"; do
	want=$("$SEQBOAT" complete -m "$MODEL" -p "$p" -n 24 --temp 0 --format jsonl | jq -r .completion)
	body=$(jq -cn --arg p "$p" '{model: "rotary-softmax", prompt: $p, max_tokens: 24, temperature: 0}')
	got=$(post /v1/completions "$body" | jq -r '.choices[0].text')
	[ "$(status)" = 200 ] || fail "greedy completion: HTTP $(status): $(cat "$TMP/body")"
	[ -n "$want" ] && [ "$got" = "$want" ] || fail "greedy '$p': HTTP gave '$got', complete gave '$want'"
	jq -e '.usage.completion_tokens > 0 and .usage.prompt_tokens > 0 and
	       .usage.total_tokens == .usage.prompt_tokens + .usage.completion_tokens and
	       .choices[0].finish_reason != null and .object == "text_completion"' "$TMP/body" > /dev/null ||
		fail "completion response fields: $(cat "$TMP/body")"
done

# ---- Streaming: the deltas add up to the non-streaming text; [DONE] ends it.
body='{"prompt": "w4 w17 w9 w30", "max_tokens": 24, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}'
curl -sN -H 'Content-Type: application/json' -d "$body" "$SERVE_URL/v1/completions" > "$TMP/sse"
want=$("$SEQBOAT" complete -m "$MODEL" -p "w4 w17 w9 w30" -n 24 --temp 0 --format jsonl | jq -r .completion)
$PY - "$TMP/sse" "$want" <<'EOF' || fail "completion stream: $(head -c 600 "$TMP/sse")"
import json, sys
raw = open(sys.argv[1]).read()
events = [e for e in raw.split("\n\n") if e]
assert all(e.startswith("data: ") for e in events), events
assert events[-1] == "data: [DONE]", events[-1]
chunks = [json.loads(e[6:]) for e in events[:-1]]
text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
assert text == sys.argv[2], (text, sys.argv[2])
fins = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
assert fins[-1] == "length" and all(f is None for f in fins[:-1]), fins
assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 24, chunks[-1]
EOF

# ---- Chat: turn 2 starts from turn 1's state. Its cached tokens are
# exactly turn 1's prompt + completion, with the reply sent back as text.
m1='[{"role": "system", "content": "w4 w5"}, {"role": "user", "content": "w6 w7 w8"}]'
post /v1/chat/completions "{\"messages\": $m1, \"max_tokens\": 10, \"seed\": 3, \"logit_bias\": {\"2\": -100}}" > /dev/null
[ "$(status)" = 200 ] || fail "chat turn 1: HTTP $(status): $(cat "$TMP/body")"
cp "$TMP/body" "$TMP/turn1"
reply=$(jq -c '.choices[0].message' "$TMP/turn1")
total1=$(jq '.usage.total_tokens' "$TMP/turn1")
[ "$(jq -r '.choices[0].message.role' "$TMP/turn1")" = assistant ] || fail "chat reply role: $reply"
m2=$(jq -cn --argjson m "$m1" --argjson r "$reply" '$m + [$r, {role: "user", content: "w9 w10"}]')
post /v1/chat/completions "{\"messages\": $m2, \"max_tokens\": 10, \"seed\": 3, \"logit_bias\": {\"2\": -100}, \"frequency_penalty\": 0.8, \"presence_penalty\": 0.5}" > /dev/null
cached=$(jqf '.usage.prompt_tokens_details.cached_tokens')
[ "$cached" = "$total1" ] || fail "chat turn 2: cached_tokens $cached, expected turn 1's $total1 tokens: $(cat "$TMP/body")"
cp "$TMP/body" "$TMP/turn2"
# Turn 3 extends turn 2 (the longest cached prefix, not turn 1's).
reply2=$(jq -c '.choices[0].message' "$TMP/turn2")
total2=$(jq '.usage.total_tokens' "$TMP/turn2")
m3=$(jq -cn --argjson m "$m2" --argjson r "$reply2" '$m + [$r, {role: "user", content: "w11"}]')
post /v1/chat/completions "{\"messages\": $m3, \"max_tokens\": 4, \"seed\": 3}" > /dev/null
[ "$(jqf '.usage.prompt_tokens_details.cached_tokens')" = "$total2" ] ||
	fail "chat turn 3: expected $total2 cached tokens: $(cat "$TMP/body")"
# The same conversation streamed gives the same reply with the same seed.
post /v1/chat/completions "{\"messages\": $m1, \"max_tokens\": 10, \"seed\": 3, \"logit_bias\": {\"2\": -100}, \"stream\": true}" > /dev/null
$PY - "$TMP/body" "$(jq -r '.choices[0].message.content' "$TMP/turn1")" <<'EOF' || fail "chat stream: $(head -c 400 "$TMP/body")"
import json, sys
events = [e for e in open(sys.argv[1]).read().split("\n\n") if e]
assert events[-1] == "data: [DONE]"
chunks = [json.loads(e[6:]) for e in events[:-1]]
assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
assert all(c["object"] == "chat.completion.chunk" for c in chunks)
text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
assert text == sys.argv[2], (text, sys.argv[2])
assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
EOF

# ---- A long system prompt is kept on its own: a new conversation that
# opens with it starts after it (conversation A reads it, B does not).
sys40=$(for i in $(seq 1 40); do printf 'w%d ' $((i % 60 + 4)); done)
ma="[{\"role\": \"system\", \"content\": \"$sys40\"}, {\"role\": \"user\", \"content\": \"w6 w7\"}]"
mb="[{\"role\": \"system\", \"content\": \"$sys40\"}, {\"role\": \"user\", \"content\": \"w8 w9 w10\"}]"
post /v1/chat/completions "{\"messages\": $ma, \"max_tokens\": 6, \"seed\": 5}" > /dev/null
[ "$(jqf '.usage.prompt_tokens_details.cached_tokens')" = 0 ] ||
	fail "conversation A reused a system prompt nobody sent before: $(cat "$TMP/body")"
post /v1/chat/completions "{\"messages\": $mb, \"max_tokens\": 6, \"seed\": 5}" > /dev/null
cp "$TMP/body" "$TMP/convb"
jq -e '.usage.prompt_tokens_details.cached_tokens >= 41 and
       .usage.prompt_tokens_details.cached_tokens < .usage.prompt_tokens' "$TMP/convb" > /dev/null ||
	fail "conversation B did not start after the shared system prompt: $(cat "$TMP/convb")"

# ---- logprobs: one entry per completion token, top_logprobs alternatives.
post /v1/chat/completions "{\"messages\": $m1, \"max_tokens\": 5, \"logprobs\": true, \"top_logprobs\": 3, \"logit_bias\": {\"2\": -100}}" > /dev/null
jq -e '(.choices[0].logprobs.content | length) == .usage.completion_tokens and
       all(.choices[0].logprobs.content[]; (.top_logprobs | length) == 3 and .logprob <= 0 and
           .top_logprobs[0].logprob >= .top_logprobs[1].logprob)' "$TMP/body" > /dev/null ||
	fail "chat logprobs: $(head -c 600 "$TMP/body")"
post /v1/completions '{"prompt": "w4 w5", "max_tokens": 4, "logprobs": 2, "temperature": 0}' > /dev/null
jq -e '(.choices[0].logprobs.tokens | length) == 4 and (.choices[0].logprobs.token_logprobs | length) == 4 and
       (.choices[0].logprobs.tokens | join("")) == .choices[0].text' "$TMP/body" > /dev/null ||
	fail "completion logprobs: $(head -c 600 "$TMP/body")"

# ---- /tokenize and /detokenize round trip.
post /tokenize '{"content": "w4 w5 w6"}' > /dev/null
[ "$(jqf -c .tokens)" = "[4,5,6]" ] || fail "/tokenize: $(cat "$TMP/body")"
post /detokenize '{"tokens": [4, 5, 6]}' > /dev/null
[ "$(jqf .content)" = "w4 w5 w6" ] || fail "/detokenize: $(cat "$TMP/body")"

# ---- Bad requests: 400 with OpenAI's error object naming the field.
bad() { # expected-param body [path]
	post "${3:-/v1/completions}" "$2" > /dev/null
	[ "$(status)" = 400 ] || { fail "expected 400 for $2, got $(status): $(cat "$TMP/body")"; return; }
	jq -e --arg p "$1" '.error.type == "invalid_request_error" and (.error.message | length > 0) and
	                    ($p == "" or .error.param == $p)' "$TMP/body" > /dev/null ||
		fail "error object for $2: $(cat "$TMP/body")"
}
bad "" '{"prompt": "w4",'
bad "" '[1, 2]'
bad "" '{"prompt": "w4", "prompt": "w5"}'
bad prompt '{"prompt": 7}'
bad prompt '{"prompt": [1, 99999]}'
bad max_tokens '{"prompt": "w4", "max_tokens": -3}'
bad max_tokens '{"prompt": "w4", "max_tokens": "ten"}'
bad temperature '{"prompt": "w4", "temperature": "hot"}'
bad temperature '{"prompt": "w4", "temperature": 9}'
bad top_p '{"prompt": "w4", "top_p": 0}'
bad model '{"prompt": "w4", "model": "gpt-5"}'
bad n '{"prompt": "w4", "n": 2}'
bad stop '{"prompt": "w4", "stop": [""]}'
bad stop '{"prompt": "w4", "stop": 5}'
bad logit_bias '{"prompt": "w4", "logit_bias": {"100000": 1}}'
bad logit_bias '{"prompt": "w4", "logit_bias": {"4": 500}}'
bad stream '{"prompt": "w4", "stream": "yes"}'
bad seed '{"prompt": "w4", "seed": 1.5}'
bad messages '{"prompt": "w4"}' /v1/chat/completions
bad messages '{"messages": []}' /v1/chat/completions
bad messages '{"messages": [{"role": "wizard", "content": "w4"}]}' /v1/chat/completions
bad messages '{"messages": [{"role": "user", "content": "w4"}, {"role": "assistant", "content": "w5"}]}' /v1/chat/completions
bad messages '{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}' /v1/chat/completions
bad tools '{"messages": [{"role": "user", "content": "w4"}], "tools": [{"type": "function"}]}' /v1/chat/completions
bad content '{"content": 5}' /tokenize
bad tokens '{"tokens": [-1]}' /detokenize

# ---- 404, 405, 413.
code=$(curl -s -o "$TMP/body" -w '%{http_code}' "$SERVE_URL/v1/nothing")
[ "$code" = 404 ] && jq -e .error.message "$TMP/body" > /dev/null || fail "unknown route: $code $(cat "$TMP/body")"
code=$(curl -s -o "$TMP/body" -w '%{http_code}' "$SERVE_URL/v1/completions")
[ "$code" = 405 ] || fail "GET /v1/completions: expected 405, got $code"
big=$($PY -c 'import json; print(json.dumps({"prompt": "w4 " * 3000}))')
post /v1/completions "$big" > /dev/null
[ "$(status)" = 413 ] && jq -e '.error.code == "request_too_large"' "$TMP/body" > /dev/null ||
	fail "a body over --max-body: expected 413, got $(status) $(cat "$TMP/body")"
# Chunked upload (no Content-Length) over the limit: 413 too.
printf '%s' "$big" | curl -s -o "$TMP/body" -w '%{http_code}' -H 'Transfer-Encoding: chunked' \
	-H 'Content-Type: application/json' --data-binary @- "$SERVE_URL/v1/completions" > "$TMP/status"
[ "$(status)" = 413 ] || fail "a chunked body over --max-body: expected 413, got $(status)"
curl -sf -o /dev/null "$SERVE_URL/health" || fail "the server is not healthy after the bad requests"
serve_stop
[ "$SERVE_RC" = 0 ] || fail "main server: exit $SERVE_RC"

# ---- The cache changes nothing but speed: turn 2 read from nothing by a
# server without a cache gives the same reply (same seed; the penalties see
# the same last tokens, which come from the cached prefix otherwise).
serve_start nocache -m "$MODEL" -t 1 --cache-bytes 0
post /v1/chat/completions "{\"messages\": $m2, \"max_tokens\": 10, \"seed\": 3, \"logit_bias\": {\"2\": -100}, \"frequency_penalty\": 0.8, \"presence_penalty\": 0.5}" > /dev/null
[ "$(jqf '.usage.prompt_tokens_details.cached_tokens')" = 0 ] || fail "--cache-bytes 0 still cached: $(cat "$TMP/body")"
[ "$(jqf '.usage.prompt_tokens')" = "$(jq '.usage.prompt_tokens' "$TMP/turn2")" ] ||
	fail "turn 2 has another prompt length without the cache"
cmp -s <(jqf '.choices[0].message.content') <(jq -r '.choices[0].message.content' "$TMP/turn2") ||
	fail "turn 2 from the cached state and from nothing differ: '$(jqf '.choices[0].message.content')' vs '$(jq -r '.choices[0].message.content' "$TMP/turn2")'"
post /v1/chat/completions "{\"messages\": $mb, \"max_tokens\": 6, \"seed\": 5}" > /dev/null
cmp -s <(jqf '.choices[0].message.content') <(jq -r '.choices[0].message.content' "$TMP/convb") ||
	fail "conversation B after the cached system prompt and from nothing differ"
serve_stop

# ---- Busy: --parallel 1 --queue 0 takes one request; the next gets 503
# with Retry-After. The first one's client hangs up: its sequence is
# cancelled (the metrics count it) and the slot is free again.
serve_start busy -m "$MODEL" -t 1 --parallel 1 --queue 0
curl -sN -H 'Content-Type: application/json' -o "$TMP/long.out" \
	-d '{"prompt": "w4", "max_tokens": 100000000, "stream": true, "logit_bias": {"2": -100}}' \
	"$SERVE_URL/v1/completions" &
long=$!
for i in $(seq 1 $((100 * slow))); do
	[ -s "$TMP/long.out" ] && break
	sleep 0.05
done
post /v1/completions '{"prompt": "w4", "max_tokens": 2}' -D "$TMP/headers" > /dev/null
[ "$(status)" = 503 ] && jq -e '.error.code == "server_busy"' "$TMP/body" > /dev/null ||
	fail "a request beyond --parallel + --queue: expected 503, got $(status) $(cat "$TMP/body")"
grep -qi '^retry-after: *[0-9]' "$TMP/headers" || fail "503 busy has no Retry-After"
kill "$long"
wait "$long" 2> /dev/null
ok=
for i in $(seq 1 50); do
	post /v1/completions '{"prompt": "w4", "max_tokens": 2}' > /dev/null
	[ "$(status)" = 200 ] && { ok=1; break; }
	sleep 0.1
done
[ -n "$ok" ] || fail "the slot was not freed after the client hung up (HTTP $(status))"
# A client waiting for a whole (non-streamed) reply hangs up too: it is
# seen on its socket before any byte is written.
curl -s -o /dev/null --max-time 1 -H 'Content-Type: application/json' \
	-d '{"prompt": "w4", "max_tokens": 100000000, "logit_bias": {"2": -100}}' "$SERVE_URL/v1/completions"
ok=
for i in $(seq 1 50); do
	post /v1/completions '{"prompt": "w4", "max_tokens": 2}' > /dev/null
	[ "$(status)" = 200 ] && { ok=1; break; }
	sleep 0.1
done
[ -n "$ok" ] || fail "the slot was not freed after a non-streaming client hung up (HTTP $(status))"
curl -s "$SERVE_URL/metrics" > "$TMP/metrics"
grep -q '^seqboat_requests_cancelled_total [2-9]' "$TMP/metrics" ||
	fail "the hung-up requests were not both cancelled: $(grep cancelled "$TMP/metrics")"
[ "$(grep -c 'completions: client gone' "$SERVE_LOG")" = 2 ] ||
	fail "the log does not show two requests ended by their clients: $(grep completions "$SERVE_LOG")"
grep -q '^seqboat_rejected_total [1-9]' "$TMP/metrics" || fail "metrics: no rejected request counted"
for m in requests_total completion_tokens_total tokens_per_second queue_depth slots_busy \
	cache_hits_total cache_bytes; do
	grep -q "^seqboat_$m" "$TMP/metrics" || fail "metrics: no seqboat_$m"
done
serve_stop

# ---- --timeout: a request that takes longer gets 504.
serve_start timeout -m "$MODEL" -t 1 --timeout 0.5
post /v1/completions '{"prompt": "w4", "max_tokens": 100000000, "logit_bias": {"2": -100}}' > /dev/null
[ "$(status)" = 504 ] && jq -e '.error.type == "timeout_error"' "$TMP/body" > /dev/null ||
	fail "a request past --timeout: expected 504, got $(status) $(cat "$TMP/body")"
serve_stop

# ---- --api-key: 401 without it or with another, 200 with it; /health open.
serve_start key -m "$MODEL" -t 1 --api-key sekrit-42
post /v1/completions '{"prompt": "w4", "max_tokens": 2}' -D "$TMP/headers" > /dev/null
[ "$(status)" = 401 ] && jq -e '.error.code == "invalid_api_key"' "$TMP/body" > /dev/null ||
	fail "no key: expected 401, got $(status) $(cat "$TMP/body")"
grep -qi '^www-authenticate: Bearer' "$TMP/headers" || fail "401 has no WWW-Authenticate"
post /v1/completions '{"prompt": "w4", "max_tokens": 2}' -H 'Authorization: Bearer sekrit-43' > /dev/null
[ "$(status)" = 401 ] || fail "wrong key: expected 401, got $(status)"
post /v1/completions '{"prompt": "w4", "max_tokens": 2}' -H 'Authorization: Bearer sekrit-4' > /dev/null
[ "$(status)" = 401 ] || fail "a prefix of the key: expected 401, got $(status)"
post /v1/completions '{"prompt": "w4", "max_tokens": 2}' -H 'Authorization: Bearer sekrit-42' > /dev/null
[ "$(status)" = 200 ] || fail "right key: expected 200, got $(status) $(cat "$TMP/body")"
curl -sf -o /dev/null "$SERVE_URL/health" || fail "/health needs no key"
serve_stop

# ---- --cache-dir: states survive a restart; another model's files and
# corrupt ones are ignored with a log line, never used.
mkdir "$TMP/cache"
serve_start dir1 -m "$MODEL" -t 1 --cache-dir "$TMP/cache"
post /v1/chat/completions "{\"messages\": $m1, \"max_tokens\": 10, \"seed\": 3, \"logit_bias\": {\"2\": -100}}" > /dev/null
cp "$TMP/body" "$TMP/d1"
# The files are written after the response: wait for the pair.
for i in $(seq 1 50); do
	[ "$(ls "$TMP/cache" | grep -c '\.tokens$')" -ge 1 ] && break
	sleep 0.1
done
serve_stop
[ "$SERVE_RC" = 0 ] || fail "dir1: exit $SERVE_RC"
ls "$TMP/cache"/*.state > /dev/null 2>&1 || fail "--cache-dir: no state file written: $(ls "$TMP/cache")"
# A corrupt copy (one flipped byte in its tokens) and a truncated state.
tf=$(ls "$TMP/cache"/*.tokens | head -1)
sf=${tf%.tokens}.state
cp "$tf" "$TMP/cache/0000000000000001-3.tokens"
$PY - "$TMP/cache/0000000000000001-3.tokens" <<'EOF'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
b[48] ^= 1
open(sys.argv[1], "wb").write(b)
EOF
cp "$tf" "$TMP/cache/0000000000000002-3.tokens"
head -c 100 "$sf" > "$TMP/cache/0000000000000002-3.state"
# Another model reading the directory ignores every file.
OTHER=${SB_BUILDDIR}/tests/models/simple-relu2-ffn
serve_start other -m "$OTHER" -t 1 --cache-dir "$TMP/cache"
grep -q "another model" "$SERVE_LOG" || fail "another model's cache files were not reported: $(cat "$SERVE_LOG")"
serve_stop
[ -f "$tf" ] || fail "another model's server removed the first model's cache file"
serve_start dir2 -m "$MODEL" -t 1 --cache-dir "$TMP/cache"
grep -q "0000000000000001-3.tokens: it is corrupt" "$SERVE_LOG" || fail "the corrupt tokens file was not reported: $(cat "$SERVE_LOG")"
grep -q "0000000000000002-3.tokens: its name does not match" "$SERVE_LOG" || fail "the misnamed tokens file was not reported: $(cat "$SERVE_LOG")"
grep -q "1 states .* read from" "$SERVE_LOG" || fail "the valid state was not read back: $(cat "$SERVE_LOG")"
reply=$(jq -c '.choices[0].message' "$TMP/d1")
total1=$(jq '.usage.total_tokens' "$TMP/d1")
m2=$(jq -cn --argjson m "$m1" --argjson r "$reply" '$m + [$r, {role: "user", content: "w9 w10"}]')
post /v1/chat/completions "{\"messages\": $m2, \"max_tokens\": 10, \"seed\": 3, \"logit_bias\": {\"2\": -100}, \"frequency_penalty\": 0.8, \"presence_penalty\": 0.5}" > /dev/null
[ "$(jqf '.usage.prompt_tokens_details.cached_tokens')" = "$total1" ] ||
	fail "after a restart: expected $total1 cached tokens: $(cat "$TMP/body")"
# And it is the same reply the first server gave.
cmp -s <(jqf '.choices[0].message.content') <(jq -r '.choices[0].message.content' "$TMP/turn2") ||
	fail "after a restart the cached state gave another reply"
serve_stop

# A truncated state file next to its valid tokens file is ignored too.
mkdir "$TMP/cache2"
cp "$tf" "$TMP/cache2/"
head -c 100 "$sf" > "$TMP/cache2/$(basename "$sf")"
serve_start dir3 -m "$MODEL" -t 1 --cache-dir "$TMP/cache2"
grep -q "ignoring .*$(basename "$sf")" "$SERVE_LOG" || fail "the truncated state was not reported: $(cat "$SERVE_LOG")"
grep -q "states .* read from" "$SERVE_LOG" && fail "a truncated state was read"
serve_stop

# ---- SIGTERM drains: the request in flight is answered in full, new
# connections are refused, the exit status is 0.
serve_start drain -m "$MODEL" -t 1
curl -s -H 'Content-Type: application/json' -o "$TMP/drained" -w '%{http_code}' \
	-d '{"prompt": "w4", "max_tokens": '$((150000 / slow))', "logit_bias": {"2": -100}, "temperature": 0}' \
	"$SERVE_URL/v1/completions" > "$TMP/drained.code" &
cpid=$!
for i in $(seq 1 $((100 * slow))); do
	grep -q '^seqboat_inflight_requests [2-9]' <(curl -s "$SERVE_URL/metrics") && break
	sleep 0.02
done
url=$SERVE_URL
kill -TERM "$SERVE_PID"
sleep 0.2
curl -s -o /dev/null --max-time 2 "$url/health" && fail "a new connection was accepted while draining"
wait "$cpid"
serve_stop
[ "$SERVE_RC" = 0 ] || fail "SIGTERM with a request in flight: exit $SERVE_RC"
[ "$(cat "$TMP/drained.code")" = 200 ] || fail "the drained request got HTTP $(cat "$TMP/drained.code")"
jq -e '.usage.completion_tokens == '$((150000 / slow))' and .choices[0].finish_reason == "length"' "$TMP/drained" > /dev/null ||
	fail "the drained request was cut: $(head -c 300 "$TMP/drained")"
grep -q "draining [1-9] request" "$SERVE_LOG" || fail "the drain was not logged: $(cat "$SERVE_LOG")"

# ---- Chat messages are laid out as `seqboat chat` lays out a conversation
# (the template chosen for the model: the bundled model ends a line with
# </s>): the same greedy reply from the same system and user text.
serve_start bundled -m "$SB_SRCDIR/models/sotu-small" -t 1
want=$(printf 'Tell me about the economy.\n' | "$SEQBOAT" chat -m "$SB_SRCDIR/models/sotu-small" \
	--system "You are the President." --temp 0 -n 12 2> /dev/null)
body='{"messages": [{"role": "system", "content": "You are the President."},
	{"role": "user", "content": "Tell me about the economy."}], "max_tokens": 12, "temperature": 0}'
got=$(post /v1/chat/completions "$body" | jq -r '.choices[0].message.content')
[ -n "$want" ] && [ "$got" = "$want" ] || fail "chat over HTTP gave '$got', seqboat chat gave '$want'"
# ... and an OpenAI batch line of complete lays out the same messages (an
# assistant reply among them) as serve does: the same greedy reply.
body='{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "We meet tonight."},
	{"role": "user", "content": "Go on."}], "max_tokens": 12, "temperature": 0}'
got=$(post /v1/chat/completions "$body" | jq -r '.choices[0].message.content')
jq -cn --argjson b "$body" '{custom_id: "c", method: "POST", url: "/v1/chat/completions", body: $b}' > "$TMP/bline.jsonl"
want=$("$SEQBOAT" complete -m "$SB_SRCDIR/models/sotu-small" -f "$TMP/bline.jsonl" --seed 1 2> /dev/null |
	jq -r '.response.body.choices[0].message.content')
[ -n "$want" ] && [ "$got" = "$want" ] || fail "chat over HTTP gave '$got', a complete batch line gave '$want'"
serve_stop
# The fixture model's word tokenizer shows where pieces are cut ("Assistant:"
# and a reply are two pieces, never one word): the same prompt tokens.
serve_start pieces -m "$MODEL" -t 1
body='{"messages": [{"role": "user", "content": "w4"}, {"role": "assistant", "content": "w5 w6"},
	{"role": "user", "content": "w7"}], "max_tokens": 2, "temperature": 0}'
got=$(post /v1/chat/completions "$body" | jq -r '.usage.prompt_tokens')
jq -cn --argjson b "$body" '{custom_id: "c", method: "POST", url: "/v1/chat/completions", body: $b}' > "$TMP/bline.jsonl"
want=$("$SEQBOAT" complete -m "$MODEL" -f "$TMP/bline.jsonl" --seed 1 2> /dev/null |
	jq -r '.response.body.usage.prompt_tokens')
[ -n "$want" ] && [ "$got" = "$want" ] || fail "prompt tokens over HTTP: $got, in a complete batch line: $want"
serve_stop

finish e2e-serve
