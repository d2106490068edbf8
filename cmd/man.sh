#!/bin/sh
# Writes seqboat(1) from the binary's own help texts, so the page cannot
# drift from --help: help2man turns `seqboat --help` into the page, and a
# COMMANDS section holds every command's `seqboat COMMAND --help` as
# printed. MODELS_DIR is where the installed binary finds its bundled model;
# the page names it instead of the build tree's.
#
# usage: cmd/man.sh SEQBOAT OUTPUT MODEL_DIR
set -eu
bin=$1 out=$2 model=$3

inc=$(mktemp "${TMPDIR:-/tmp}/seqboat-man.XXXXXX")
trap 'rm -f "$inc"' EXIT INT TERM

# roff for verbatim text: backslashes escaped, hyphens as minus signs (they
# are options), no line may start a request.
roff_verbatim() {
	sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
}

commands=$(SEQBOAT_MODEL=$model "$bin" --help |
	awk '/^commands:/ { f = 1; next } f && /^  [a-z]/ { print $1 } f && /^$/ { exit }')
[ -n "$commands" ] || { echo "man.sh: '$bin --help' lists no commands" >&2; exit 1; }

{
	printf '[COMMANDS]\n'
	for c in $commands; do
		printf '.SS "%s"\n.nf\n' "$c"
		SEQBOAT_MODEL=$model "$bin" "$c" --help | roff_verbatim
		printf '.fi\n'
	done
	printf '[ENVIRONMENT]\n.TP\n.B SEQBOAT_MODEL\n'
	printf 'The model directory used when a command is given no \\fB\\-m\\fR.\n'
	printf 'Without it, the bundled model in \\fI%s\\fR.\n' "$model"
	printf '[EXIT STATUS]\n0 on success, 2 for a usage error, 65 for bad input data,\n'
	printf '74 for an I/O error, 130 when interrupted.\n'
} > "$inc"

SEQBOAT_MODEL=$model help2man --no-info --no-discard-stderr \
	--name="run SeqBoat language models with a constant-size state" \
	--section=1 --include="$inc" --output="$out" "$bin"
