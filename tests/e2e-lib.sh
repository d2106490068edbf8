# e2e-lib.sh - sourced by the end-to-end scripts: the binary, the converted
# fixture model, a scratch directory and failure counting.
SEQBOAT=${SB_SEQBOAT:?SB_SEQBOAT is not set}
MODEL=${SB_BUILDDIR:?SB_BUILDDIR is not set}/tests/models/rotary-softmax
PY=/usr/bin/python3
TMP=$(mktemp -d)
fails=0

fail() {
	echo "FAIL: $*" >&2
	fails=$((fails + 1))
}

[ -f "$MODEL/config.yaml" ] || { echo "no fixture model at $MODEL" >&2; exit 1; }

# The end of a script: a non-zero status if any check failed.
finish() {
	if [ "$fails" -ne 0 ]; then
		echo "$fails check(s) failed" >&2
		exit 1
	fi
	echo "$1: all checks passed"
}
