#!/bin/bash
# serve-load.sh - a bounded load benchmark of `seqboat serve` with wrk, on
# 127.0.0.1 only: the bundled model, completions of 16 tokens, at 1, 8 and
# 32 connections for a few seconds each. Prints requests/s, generated
# tokens/s (from the server's own counter) and the non-2xx answers (503s
# when more connections than --parallel + --queue wait). A benchmark, not a
# test: it prints figures and asserts nothing.
#
# usage: tests/bench/serve-load.sh [SECONDS per run, default 3] [serve options...]
set -eu
cd "$(dirname "$0")/../.."
secs=${1:-3}
shift || true
command -v wrk > /dev/null || { echo "serve-load: wrk is missing (scripts/setup --test-tools)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill $pid 2> /dev/null; wait 2> /dev/null; rm -rf "$tmp"' EXIT

build/seqboat serve --port 0 --parallel 8 --queue 64 "$@" 2> "$tmp/log" &
pid=$!
url=
for i in $(seq 1 300); do
	port=$(sed -n 's/.*listening on http:\/\/[^ ]*:\([0-9]*\) .*/\1/p' "$tmp/log" | head -1)
	[ -n "$port" ] && curl -sf -o /dev/null "http://127.0.0.1:$port/health" && { url=http://127.0.0.1:$port; break; }
	sleep 0.1
done
[ -n "$url" ] || { echo "serve-load: the server did not start: $(cat "$tmp/log")" >&2; exit 1; }

cat > "$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"prompt": "The state of our Union is", "max_tokens": 16, "temperature": 0.8, "logit_bias": {"2": -100}}'
LUA
tokens() { curl -s "$url/metrics" | sed -n 's/^seqboat_completion_tokens_total //p'; }

echo "seqboat serve under wrk: $(nproc) cores, $(build/seqboat serve --help > /dev/null; grep -o "model '[^']*'" "$tmp/log"), 16 tokens per request, $secs s per run"
printf '%-12s %12s %12s %12s %14s\n' connections requests/s tokens/s non-2xx "latency p50"
for c in 1 8 32; do
	t0=$(tokens)
	wrk -t1 -c"$c" -d"${secs}s" --timeout 30s --latency -s "$tmp/post.lua" "$url/v1/completions" > "$tmp/wrk$c"
	t1=$(tokens)
	rps=$(sed -n 's/^Requests\/sec: *//p' "$tmp/wrk$c")
	non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *//p' "$tmp/wrk$c")
	p50=$(awk '$1 == "50%" { print $2 }' "$tmp/wrk$c")
	tps=$(awk -v a="$t0" -v b="$t1" -v s="$secs" 'BEGIN { printf "%.0f", (b - a) / s }')
	printf '%-12s %12s %12s %12s %14s\n' "$c" "$rps" "$tps" "${non2xx:-0}" "$p50"
done
