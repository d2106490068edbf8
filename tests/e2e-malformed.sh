#!/bin/bash
# e2e-malformed.sh - hostile input: generates the malformed corpus
# (tests/malformed/generate.py: bad safetensors, config.yaml, tokenizer
# files, JSONL prompt files, bad flags) from the converted fixture model
# and checks that seqboat refuses each one cleanly (tests/malformed/check.py).
set -u
SEQBOAT=${SB_SEQBOAT:?SB_SEQBOAT is not set}
SRC=${SB_SRCDIR:?SB_SRCDIR is not set}
MODEL=${SB_BUILDDIR:?SB_BUILDDIR is not set}/tests/models/rotary-softmax
PY=/usr/bin/python3
[ -f "$MODEL/config.yaml" ] || { echo "no fixture model at $MODEL" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" "$SRC/tests/malformed/generate.py" "$MODEL" "$TMP/corpus" || exit 1
"$PY" "$SRC/tests/malformed/check.py" "$SEQBOAT" "$TMP/corpus" "$MODEL"
