#!/bin/bash
# e2e-install.sh - `meson install` with DESTDIR into a temporary directory:
# exactly the expected files (binary, bundled model, seqboat(1), bash
# completion), the build and source trees left as they were; then a copy of
# the installation, moved elsewhere, runs with the source and build trees
# hidden (an empty tmpfs mounted over them in a private mount namespace) and
# finds its own bundled model.
set -u
SRC=${SB_SRCDIR:?SB_SRCDIR is not set}
BUILD=${SB_BUILDDIR:?SB_BUILDDIR is not set}
REAL=${SB_SEQBOAT_REAL:?SB_SEQBOAT_REAL is not set}
PY=/usr/bin/python3
TMP=$(mktemp -d "${TMPDIR:-/tmp}/seqboat-install.XXXXXX") || exit 1
trap 'rm -rf -- "$TMP"' EXIT
fails=0
fail() {
	echo "FAIL: $*" >&2
	fails=$((fails + 1))
}

# What the install must leave alone: the source model and the built files.
snapshot() {
	(cd "$SRC" && sha256sum models/sotu-small/*) || echo "no source model"
	sha256sum "$REAL" "$BUILD/seqboat.1" 2>&1
}
snapshot > "$TMP/before"

# The configured layout, from meson itself.
read -r prefix bindir datadir mandir < <("$PY" - "$BUILD" <<'PY'
import json, subprocess, sys
opts = {o["name"]: o["value"] for o in json.loads(subprocess.check_output(
    ["meson", "introspect", "--buildoptions", sys.argv[1]]))}
print(opts["prefix"], opts["bindir"], opts["datadir"], opts["mandir"])
PY
)
[ -n "${mandir:-}" ] || { echo "cannot read the build's options" >&2; exit 1; }

dest=$TMP/dest
meson install -C "$BUILD" --no-rebuild --quiet --destdir "$dest" > "$TMP/install.log" 2>&1 ||
	{ cat "$TMP/install.log" >&2; fail "meson install failed"; }

# Exactly these files, and the model byte-identical to the source's.
expect=$(
	{
		echo "$bindir/seqboat"
		for f in "$SRC"/models/sotu-small/*; do echo "$datadir/seqboat/models/sotu-small/${f##*/}"; done
		echo "$mandir/man1/seqboat.1"
		echo "$datadir/bash-completion/completions/seqboat"
	} | sed "s|^|$prefix/|" | sort)
got=$(cd "$dest" && find . -type f | sed 's|^\.||' | sort)
[ "$got" = "$expect" ] || fail "installed files: expected
$expect
got
$got"
for f in "$SRC"/models/sotu-small/*; do
	cmp -s "$f" "$dest$prefix/$datadir/seqboat/models/sotu-small/${f##*/}" ||
		fail "installed ${f##*/} differs from the source's"
done

# The man page: every command's section, the installed model's path, and
# nothing of the build tree.
man=$dest$prefix/$mandir/man1/seqboat.1
for c in $("$REAL" --help | awk '/^commands:/ { f = 1; next } f && /^  [a-z]/ { print $1 } f && /^$/ { exit }'); do
	grep -q "^\.SS \"$c\"" "$man" || fail "seqboat.1 has no section for '$c'"
done
grep -q '^\.SH COMMANDS' "$man" || fail "seqboat.1 has no COMMANDS section"
grep -qF "$prefix/$datadir/seqboat/models/sotu-small" "$man" || fail "seqboat.1 does not name the installed model"
! grep -qF "$SRC" "$man" || fail "seqboat.1 names the source tree $SRC"

# A copy of the installation somewhere else (a moved prefix).
moved=$TMP/moved
cp -a "$dest$prefix" "$moved"
S=$moved/$bindir/seqboat

# Runs "$@" with the source and build trees hidden under empty tmpfs mounts
# (the build tree only when it is not inside the source tree).
src_real=$(cd "$SRC" && pwd -P)
build_real=$(cd "$BUILD" && pwd -P)
how=(unshare -m)
[ "$(id -u)" -eq 0 ] || how=(unshare -rm)
hidden() {
	"${how[@]}" bash -c 'mount -t tmpfs none "$0" || exit 99
		case $1/ in "$0"/*) ;; *) mount -t tmpfs none "$1" || exit 99 ;; esac
		shift; exec "$@"' "$src_real" "$build_real" env -u SEQBOAT_MODEL "$@"
}
if hidden true; then
	hidden test -e "$src_real/models/sotu-small/config.yaml" && fail "the source model is not hidden"
	hidden test -e "$build_real/seqboat" && fail "the build tree is not hidden"
	ran_hidden=1
elif "${how[@]}" true 2>/dev/null; then
	fail "${how[*]} works here but cannot mount a tmpfs over $src_real"
	ran_hidden=0
else
	# No mount namespace here: still run the copy, but say so.
	echo "NOTE: cannot hide the source tree (no ${how[*]}); running the copy in the open" >&2
	hidden() { env -u SEQBOAT_MODEL "$@"; }
	ran_hidden=0
fi

out=$(cd / && hidden "$S" info 2>&1) || fail "installed info failed: $out"
case $out in
"model            $(cd "$moved" && pwd -P)/$datadir/seqboat/models/sotu-small "*) ;;
*) fail "installed info does not use its own model: $(printf '%s\n' "$out" | head -1)" ;;
esac

args=(complete -n 8 --temp 0 --seed 1 --format jsonl --no-timings -p "The state of our Union is")
want=$("$REAL" "${args[0]}" -m "$SRC/models/sotu-small" "${args[@]:1}" 2>"$TMP/err") ||
	fail "the build's binary failed: $(cat "$TMP/err")"
got=$(cd / && hidden "$S" "${args[@]}" 2>"$TMP/err") || fail "installed complete failed: $(cat "$TMP/err")"
[ -n "$want" ] && [ "$got" = "$want" ] || fail "installed complete: expected '$want', got '$got'"

# Without its model (and none installed at the configured place) it fails
# with one line naming where it looked.
if [ "$ran_hidden" = 1 ] && [ ! -e "$prefix/$datadir/seqboat/models/sotu-small" ]; then
	mv "$moved/$datadir/seqboat/models/sotu-small" "$TMP/away"
	out=$(cd / && hidden "$S" info 2>&1)
	rc=$?
	[ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] &&
		[[ $out == *"$prefix/$datadir/seqboat/models/sotu-small"* ]] ||
		fail "no model: expected one error line naming $prefix/$datadir/seqboat/models/sotu-small, got status $rc: $out"
	mv "$TMP/away" "$moved/$datadir/seqboat/models/sotu-small"
fi

# bash completion, as bash-completion loads it.
if [ -f /usr/share/bash-completion/bash_completion ]; then
	got=$(bash -c '. /usr/share/bash-completion/bash_completion; . "$1"
		COMP_WORDS=("$2" comp); COMP_CWORD=1; COMP_LINE="$2 comp"; COMP_POINT=${#COMP_LINE}
		_seqboat; echo "${COMPREPLY[*]}"
		COMP_WORDS=("$2" complete --max-t); COMP_CWORD=2; COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}
		_seqboat; echo "${COMPREPLY[*]}"' _ "$moved/$datadir/bash-completion/completions/seqboat" "$S")
	[ "$got" = $'complete\n--max-tokens' ] || fail "bash completion: got '$got'"
else
	echo "NOTE: bash-completion is not installed; completion not checked" >&2
fi

snapshot > "$TMP/after"
cmp -s "$TMP/before" "$TMP/after" || fail "the install changed the source model or the build: $(diff "$TMP/before" "$TMP/after")"

if [ "$fails" -ne 0 ]; then
	echo "$fails check(s) failed" >&2
	exit 1
fi
echo "install: all checks passed"
