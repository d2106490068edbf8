#!/bin/bash
# e2e-serve-haproxy.sh - scale-out: two `seqboat serve` processes behind
# haproxy (docs/serve-haproxy.cfg) on 127.0.0.1. A conversation stays on
# one backend (so every later turn hits that backend's state cache); when
# one backend is killed in the middle of a load, requests keep being
# answered by the other.
set -u

. "$(dirname "$0")/e2e-lib.sh"
. "$(dirname "$0")/serve-lib.sh"
HAPROXY_PID=
B1= B2=
cleanup() {
	[ -n "$HAPROXY_PID" ] && kill "$HAPROXY_PID" 2> /dev/null
	for p in $B1 $B2; do kill -KILL "$p" 2> /dev/null; done
	wait 2> /dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT

command -v haproxy > /dev/null || { echo "skipped: no haproxy (scripts/setup installs it)" >&2; exit 77; }

serve_start b1 -m "$MODEL" -t 1 --parallel 2 --queue 32
B1=$SERVE_PID U1=$SERVE_URL
serve_start b2 -m "$MODEL" -t 1 --parallel 2 --queue 32
B2=$SERVE_PID U2=$SERVE_URL
SERVE_PID=

port=$(free_port)
sed -e "s|@FRONTEND@|127.0.0.1:$port|" -e "s|@BACKEND1@|${U1#http://}|" \
	-e "s|@BACKEND2@|${U2#http://}|" "$SB_SRCDIR/docs/serve-haproxy.cfg" > "$TMP/haproxy.cfg"
haproxy -c -q -f "$TMP/haproxy.cfg" || fail "docs/serve-haproxy.cfg does not check"
haproxy -db -f "$TMP/haproxy.cfg" 2> "$TMP/haproxy.log" &
HAPROXY_PID=$!
SERVE_URL=http://127.0.0.1:$port
for i in $(seq 1 100); do
	curl -sf -o /dev/null "$SERVE_URL/health" && break
	sleep 0.1
done
curl -sf -o /dev/null "$SERVE_URL/health" || fail "haproxy does not answer: $(cat "$TMP/haproxy.log")"
sleep 0.6 # both backends pass their first health checks

requests_of() { # the chat requests a backend has answered
	curl -s "$1/metrics" | sed -n 's/^seqboat_requests_total{route="chat_completions"} //p'
}

# Conversations of three turns each: every later turn finds all of the
# previous turn's tokens cached, which only its own backend has.
for c in 4 9 14 19 24 29; do
	msgs="[{\"role\": \"user\", \"content\": \"w$c w$((c + 1))\"}]"
	for turn in 1 2 3; do
		post /v1/chat/completions "{\"messages\": $msgs, \"max_tokens\": 6, \"seed\": $c, \"logit_bias\": {\"2\": -100}}" > /dev/null
		[ "$(status)" = 200 ] || { fail "conversation $c turn $turn: HTTP $(status) $(cat "$TMP/body")"; break; }
		cached=$(jq '.usage.prompt_tokens_details.cached_tokens' "$TMP/body")
		if [ "$turn" -gt 1 ] && [ "$cached" != "$total" ]; then
			fail "conversation $c turn $turn: $cached cached tokens, expected $total (another backend?)"
		fi
		total=$(jq '.usage.total_tokens' "$TMP/body")
		reply=$(jq -c '.choices[0].message' "$TMP/body")
		msgs=$(jq -cn --argjson m "$msgs" --argjson r "$reply" --arg u "w$((c + turn + 1))" '$m + [$r, {role: "user", content: $u}]')
	done
done
n1=$(requests_of "$U1") n2=$(requests_of "$U2")
[ "$((n1 + n2))" = 18 ] || fail "the backends answered $n1 + $n2 chat requests, expected 18"
[ "$n1" -gt 0 ] && [ "$n2" -gt 0 ] || fail "all conversations went to one backend ($n1, $n2)"
# A conversation id header decides too: the same id, the same backend.
for turn in 1 2 3; do
	post /v1/chat/completions "{\"messages\": [{\"role\": \"user\", \"content\": \"w$turn\"}], \"max_tokens\": 2}" \
		-H 'X-Conversation-Id: c-77' > /dev/null
done
m1=$(requests_of "$U1") m2=$(requests_of "$U2")
[ "$((m1 - n1))" = 3 ] || [ "$((m2 - n2))" = 3 ] ||
	fail "one X-Conversation-Id was spread over backends ($((m1 - n1)), $((m2 - n2)))"

# Load from 4 clients; backend 1 is killed in the middle of it.
load() { # client-number: 25 requests, one status per line
	local k
	for k in $(seq 1 25); do
		curl -s -o /dev/null -w '%{http_code}\n' -H 'Content-Type: application/json' \
			-H "X-Conversation-Id: load-$1-$k" \
			-d "{\"messages\": [{\"role\": \"user\", \"content\": \"w$k\"}], \"max_tokens\": 200, \"logit_bias\": {\"2\": -100}}" \
			"$SERVE_URL/v1/chat/completions"
	done > "$TMP/load$1"
}
loaders=
for k in 1 2 3 4; do
	load $k &
	loaders="$loaders $!"
done
# The kill comes once every client has 5 answers, the middle of its 25
# whatever the machine's speed (a fixed delay met the end of a fast run).
answered() { cat "$TMP/load$1" 2> /dev/null | wc -l; }
for i in $(seq 1 3000); do
	all=1
	for k in 1 2 3 4; do [ "$(answered $k)" -ge 5 ] || all=; done
	[ -n "$all" ] && break
	sleep 0.01
done
declare -A at_kill after_kill
for k in 1 2 3 4; do at_kill[$k]=$(answered $k); done
kill -KILL "$B1"
for k in 1 2 3 4; do after_kill[$k]=$(answered $k); done
wait "$B1" 2> /dev/null
B1=
wait $loaders
cat "$TMP"/load? > "$TMP/all"
ok=$(grep -c '^200$' "$TMP/all")
bad=$(grep -vc '^200$' "$TMP/all")
echo "load through haproxy: $ok answered, $bad failed (backend 1 killed with ${at_kill[1]}, ${at_kill[2]}, ${at_kill[3]}, ${at_kill[4]} of each client's 25 answered)"
[ "$((ok + bad))" = 100 ] || fail "expected 100 results, got $((ok + bad))"
# Only the request a client had in flight on the killed backend may fail:
# at most one per client, next to the kill (the counts of answers lag the
# requests by a line or two, so its line is between the count before the
# kill and two past the count after it), and every request after it is
# answered; the load went on after the kill.
[ "$bad" -le 4 ] || fail "$bad requests failed after a backend was killed: $(sort "$TMP/all" | uniq -c)"
after=0
for k in 1 2 3 4; do
	failed_at=($(grep -vn '^200$' "$TMP/load$k" | cut -d: -f1))
	if [ ${#failed_at[@]} -gt 1 ]; then
		fail "client $k: requests ${failed_at[*]} failed, more than its one in flight"
	elif [ ${#failed_at[@]} = 1 ] && { [ "${failed_at[0]}" -le "${at_kill[$k]}" ] ||
		[ "${failed_at[0]}" -gt $((after_kill[$k] + 3)) ]; }; then
		fail "client $k: request ${failed_at[0]} failed, not the one in flight when the backend was killed (${at_kill[$k]} to ${after_kill[$k]} answered then)"
	fi
	after=$((after + 25 - after_kill[$k]))
done
[ "$after" -ge 20 ] || fail "only $after requests came after the kill: the load did not go on"
curl -sf -o /dev/null "$SERVE_URL/health" || fail "haproxy has no healthy backend left"
kill "$HAPROXY_PID"
wait "$HAPROXY_PID" 2> /dev/null
HAPROXY_PID=
kill -TERM "$B2"
wait "$B2"
rc=$?
B2=
[ "$rc" = 0 ] || fail "backend 2 exited $rc"
finish e2e-serve-haproxy
