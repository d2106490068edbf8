# serve-lib.sh - sourced by the scripts that drive `seqboat serve` (after
# e2e-lib.sh): start a server on a free port, wait for it, stop it.
#
#   serve_start NAME ARGS...   starts `seqboat serve --port 0 ARGS...` with
#                              its log in $TMP/NAME.log; sets SERVE_PID and
#                              SERVE_URL (the port the kernel chose, read
#                              from the log) and waits for /health (up to
#                              SERVE_WAIT seconds, default 60)
#   serve_stop [SIGNAL]        signals the server (TERM) and waits; sets
#                              SERVE_RC to its exit status
#   free_port                  prints a free TCP port of 127.0.0.1

serve_start() {
	local name=$1
	shift
	SERVE_LOG=$TMP/$name.log
	"$SEQBOAT" serve --port 0 "$@" 2> "$SERVE_LOG" &
	SERVE_PID=$!
	SERVE_URL=
	local i
	for i in $(seq 1 $((${SERVE_WAIT:-60} * 10))); do
		if [ -z "$SERVE_URL" ]; then
			local port
			port=$(sed -n 's/.*listening on http:\/\/[^ ]*:\([0-9]*\) .*/\1/p' "$SERVE_LOG" 2> /dev/null | head -1)
			[ -n "$port" ] && SERVE_URL=http://127.0.0.1:$port
		fi
		if [ -n "$SERVE_URL" ] && [ "${SERVE_NOWAIT:-}" ] ; then
			return 0
		fi
		if [ -n "$SERVE_URL" ] && curl -sf -o /dev/null "$SERVE_URL/health"; then
			return 0
		fi
		kill -0 "$SERVE_PID" 2> /dev/null || break
		sleep 0.1
	done
	fail "$name: the server did not come up: $(tail -3 "$SERVE_LOG")"
	return 1
}

serve_stop() {
	[ -n "${SERVE_PID:-}" ] || return 0
	kill -"${1:-TERM}" "$SERVE_PID" 2> /dev/null
	wait "$SERVE_PID"
	SERVE_RC=$?
	SERVE_PID=
}

free_port() {
	$PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# post PATH JSON [curl args...]: the body on stdout, "HTTP <status>" kept in
# $TMP/status.
post() {
	local path=$1 body=$2
	shift 2
	curl -s -o "$TMP/body" -w '%{http_code}' -H 'Content-Type: application/json' \
		--data-binary "$body" "$@" "$SERVE_URL$path" > "$TMP/status"
	cat "$TMP/body"
}

status() {
	cat "$TMP/status"
}
