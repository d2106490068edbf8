#!/bin/bash
# resume.sh - how long `seqboat complete --resume` takes to match the
# records of an output file to its input's ids (issue 16: matching every
# record against every id took more than 300 s for 200k items). Prints the
# wall time for N items (default 1000000), all of them already done, so
# that the run only reads, matches and exits. A figure, not a test.
#
# usage: tests/bench/resume.sh SEQBOAT MODEL_DIR [N]
set -eu
S=$1
M=$2
N=${3:-1000000}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
/usr/bin/python3 - "$T" "$N" <<'PYEOF'
import sys
d, n = sys.argv[1], int(sys.argv[2])
with open(d + "/in.jsonl", "w") as f, open(d + "/out.jsonl", "w") as g:
    for i in range(n):
        f.write('{"id": "item-%d", "prompt": "w4"}\n' % i)
        g.write('{"id":"item-%d","completion":"","finish_reason":"length"}\n' % i)
PYEOF
t0=$(date +%s.%N)
"$S" complete -m "$M" -f "$T/in.jsonl" -o "$T/out.jsonl" --resume --temp 0 -n 1 2> "$T/err"
t1=$(date +%s.%N)
echo "resume of $N done items: $(echo "$t1 - $t0" | bc) s, peak RSS $(/usr/bin/time -f %M "$S" complete -m "$M" -f "$T/in.jsonl" -o "$T/out.jsonl" --resume --temp 0 -n 1 2>&1 >/dev/null | tail -1) KB"
