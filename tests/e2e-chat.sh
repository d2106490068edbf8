#!/bin/bash
# e2e-chat.sh - drives `seqboat chat` on the converted fixture model: over a
# pipe (one reply per line, /undo, /regen, /save and /load, /stats) and on
# a pseudo-terminal (Ctrl-C stops a reply, Ctrl-C on an empty line exits
# 130, Ctrl-D exits 0).
set -u

. "$(dirname "$0")/e2e-lib.sh"
trap 'rm -rf "$TMP"' EXIT


# End of sequence (</s>, which is also the newline) and <unk> are banned so
# that every reply is a line of words of the same length.
chat=(chat -m "$MODEL" --temp 1.5 -n 12 --logit-bias 2=-inf --logit-bias 3=-inf)

# Over a pipe: one reply line per user line, the same for the same seed.
printf 'w4 w5 w6\nw7\nw8 w9\nw10 w11 w12\n\n' > "$TMP/five.txt"
"$SEQBOAT" "${chat[@]}" --seed 4 < "$TMP/five.txt" > "$TMP/five.out" 2> "$TMP/five.err" ||
	fail "chat over a pipe failed: $(cat "$TMP/five.err")"
[ "$(wc -l < "$TMP/five.out")" = 5 ] || fail "expected 5 reply lines, got $(wc -l < "$TMP/five.out")"
$PY - "$TMP/five.out" <<'EOF' || fail "replies are not 12 words each"
import sys
for line in open(sys.argv[1]):
    words = line.split()
    assert len(words) == 12 and all(w.startswith("w") for w in words), line
EOF
"$SEQBOAT" "${chat[@]}" --seed 4 < "$TMP/five.txt" > "$TMP/five2.out" 2> /dev/null
cmp -s "$TMP/five.out" "$TMP/five2.out" || fail "the same seed gave other replies"
"$SEQBOAT" "${chat[@]}" --seed 5 < "$TMP/five.txt" > "$TMP/five3.out" 2> /dev/null
cmp -s "$TMP/five.out" "$TMP/five3.out" && fail "another seed gave the same replies"

# /undo restores the state before the last turn: the same turn again gets
# the same reply. /regen gives another reply to the same turn.
printf 'w4 w5\nw20 w21\n/undo\nw20 w21\n/regen\n' |
	"$SEQBOAT" "${chat[@]}" --seed 8 > "$TMP/undo.out" 2> "$TMP/undo.err"
mapfile -t u < "$TMP/undo.out"
[ "${#u[@]}" = 4 ] || fail "/undo run: expected 4 replies, got ${#u[@]}"
[ "${u[1]}" = "${u[2]}" ] || fail "after /undo the same turn got another reply: '${u[1]}' vs '${u[2]}'"
[ "${u[2]}" != "${u[3]}" ] || fail "/regen gave the same reply"
grep -q "undone" "$TMP/undo.err" || fail "/undo was not acknowledged on stderr"
# /undo after /undo of everything says so and goes on.
printf 'w4\n/undo\n/undo\nw4\n' | "$SEQBOAT" "${chat[@]}" --seed 8 > "$TMP/undo2.out" 2> "$TMP/undo2.err"
mapfile -t u2 < "$TMP/undo2.out"
[ "${#u2[@]}" = 2 ] && [ "${u2[0]}" = "${u2[1]}" ] || fail "undoing to the start did not restore the first reply"
grep -q "nothing to undo" "$TMP/undo2.err" || fail "a second /undo was not refused"

# /save then /load continues identically (the saved seed is used), and the
# saved state has the same size after one turn and after three.
printf 'w4 w5\n/save %s\nw6 w7\nw8\n/save %s\nw9 w10\nw11\n' "$TMP/one.chat" "$TMP/three.chat" |
	"$SEQBOAT" "${chat[@]}" --seed 21 > "$TMP/save.out" 2> "$TMP/save.err" ||
	fail "the /save session failed: $(cat "$TMP/save.err")"
printf '/load %s\nw9 w10\nw11\n' "$TMP/three.chat" |
	"$SEQBOAT" "${chat[@]}" --seed 99 > "$TMP/load.out" 2> "$TMP/load.err" ||
	fail "the /load session failed: $(cat "$TMP/load.err")"
mapfile -t s < "$TMP/save.out"
mapfile -t l < "$TMP/load.out"
[ "${#s[@]}" = 5 ] && [ "${#l[@]}" = 2 ] || fail "save/load: expected 5 and 2 replies, got ${#s[@]} and ${#l[@]}"
[ "${s[3]}" = "${l[0]}" ] && [ "${s[4]}" = "${l[1]}" ] ||
	fail "after /load the conversation went on differently: '${s[3]}' vs '${l[0]}'"
$PY - "$TMP/one.chat" "$TMP/three.chat" <<'EOF' || fail "saved conversation files"
import json, sys
parts = []
for p in sys.argv[1:]:
    data = open(p, "rb").read()
    magic, header, state = data.split(b"\n", 2)
    meta = json.loads(header)
    parts.append((meta, len(state)))
(m1, s1), (m3, s3) = parts
assert s1 == s3 > 0, (s1, s3)          # the state does not grow
assert len(m1["turns"]) == 1 and len(m3["turns"]) == 3
assert m3["turns"][0]["user"] == "w4 w5" and m3["turns"][2]["user"] == "w8"
EOF
printf '/load %s\n' "$TMP/five.txt" | "$SEQBOAT" "${chat[@]}" > /dev/null 2> "$TMP/bad.err"
grep -q "not a conversation" "$TMP/bad.err" || fail "/load of a text file was not refused"

# /stats: state bytes and one activation rate per layer (2 layers).
printf 'w4 w5\n/stats\n' | "$SEQBOAT" "${chat[@]}" --seed 1 > "$TMP/stats.out" 2> /dev/null
grep -q "^state: [0-9]* bytes" "$TMP/stats.out" || fail "/stats shows no state size"
grep -Eq "^attention activation rate per layer: [0-9.]+ [0-9.]+$" "$TMP/stats.out" ||
	fail "/stats shows no activation rate per layer"
"$SEQBOAT" chat -m "$MODEL" --bogus < /dev/null 2> /dev/null
[ $? = 2 ] || fail "an unknown option is not a usage error"

# On a terminal: Ctrl-C stops an endless reply and returns to the prompt;
# Ctrl-C with text on the line drops the line; Ctrl-C on an empty line
# exits with 130; Ctrl-D exits with 0.
$PY - "$SEQBOAT" "$MODEL" <<'EOF' || fail "terminal session"
import os, pty, select, sys, time
exe, model = sys.argv[1], sys.argv[2]

def spawn():
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(exe, [exe, "chat", "-m", model, "--seed", "1", "-n", "-1",
                       "--logit-bias", "2=-inf", "--logit-bias", "3=-inf"])
    return pid, fd

def expect(fd, buf, pred, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if pred(buf[0]):
            return True
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                d = os.read(fd, 65536)
            except OSError:
                d = b""
            if not d:
                return pred(buf[0])
            buf[0] += d
    return False

def at_prompt(fd, buf, since=0):
    # The editor switches the terminal to raw mode just after it prints the
    # prompt; keys sent within that instant would meet the cooked terminal.
    ok = expect(fd, buf, lambda b: b[since:].endswith(b"> "))
    time.sleep(0.5)
    return ok

def status(pid, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        p, st = os.waitpid(pid, os.WNOHANG)
        if p:
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"

pid, fd = spawn()
buf = [b""]
assert at_prompt(fd, buf), buf
os.write(fd, b"w4 w5\r")
# The reply never ends by itself: wait for a good part of it.
assert expect(fd, buf, lambda b: b.count(b" w") > 200), "no streamed reply"
os.write(fd, b"\x03")
n = len(buf[0])
assert at_prompt(fd, buf, n), "no prompt after Ctrl-C"
os.write(fd, b"some text")
assert expect(fd, buf, lambda b: b.endswith(b"some text"))
time.sleep(0.2)
os.write(fd, b"\x03")
n = len(buf[0])
assert at_prompt(fd, buf, n), ("Ctrl-C on a line did not re-prompt", buf[0][-300:])
os.write(fd, b"\x03")
st = status(pid)
assert st == 130, f"Ctrl-C on an empty line: status {st}"
os.close(fd)

pid, fd = spawn()
buf = [b""]
assert at_prompt(fd, buf)
os.write(fd, b"\x04")
st = status(pid)
assert st == 0, f"Ctrl-D: status {st}"
os.close(fd)
EOF

finish e2e-chat
