#!/bin/bash
# e2e-tokenize.sh - `seqboat tokenize` on a converted fixture model: ids
# checked against dict.txt itself, round trips, exit statuses and one-line
# errors.
set -u
S=${SB_SEQBOAT:?}
M=${SB_FIXTURE_MODELS:?}/rotary-softmax
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() { # description, expected, actual
	if [ "$2" != "$3" ]; then
		echo "FAIL: $1: expected '$2', got '$3'"
		fail=1
	fi
}

# The id of a symbol: 3 + its line in dict.txt (ids 0..3 are implicit).
id_of() { awk -v s="$1" '{ sub(/ [^ ]*$/, ""); if ($0 == s) { print NR + 3; exit } }' "$M/dict.txt"; }
a=$(sed -n 1p "$M/dict.txt" | cut -d' ' -f1)
b=$(sed -n 5p "$M/dict.txt" | cut -d' ' -f1)
ia=$(id_of "$a"); ib=$(id_of "$b")

out=$("$S" tokenize -m "$M" "$a $b nosuchword")
check "encode with bos" "2 $ia $ib 3" "$out"
out=$("$S" tokenize -m "$M" --no-bos "$a")
check "encode without bos" "$ia" "$out"
out=$(printf '%s\n%s\n' "$a" "$b" | "$S" tokenize -m "$M" --no-bos)
check "encode stdin lines" "$ia 2 $ib 2" "$out"
printf '%s %s' "$b" "$a" > "$tmp/in.txt"
out=$("$S" tokenize -m "$M" -f "$tmp/in.txt")
check "encode file" "2 $ib $ia" "$out"
out=$("$S" tokenize -m "$M" --pieces "$a")
check "pieces" "$(printf '2\t</s>\n%s\t%s' "$ia" "$a")" "$out"

out=$("$S" tokenize -m "$M" --decode "2 $ia $ib 2 $ia")
check "decode" "$(printf '%s %s\n%s' "$a" "$b" "$a")" "$out"
out=$(echo "2,$ib" | "$S" tokenize -m "$M" --decode)
check "decode stdin" "$b" "$out"
out=$("$S" tokenize -m "$M" "$a $b" | "$S" tokenize -m "$M" --decode)
check "round trip" "$a $b" "$out"

out=$("$S" tokenize --help); rc=$?
check "help status" 0 "$rc"
case "$out" in usage:*) ;; *) echo "FAIL: --help does not print usage on stdout"; fail=1;; esac

expect_error() { # description, status, stderr substring, command...
	local what=$1 status=$2 needle=$3
	shift 3
	"$@" > "$tmp/out" 2> "$tmp/err"
	local rc=$?
	check "$what: status" "$status" "$rc"
	check "$what: stderr lines" 1 "$(wc -l < "$tmp/err")"
	check "$what: stdout" "" "$(cat "$tmp/out")"
	grep -q -- "$needle" "$tmp/err" || { echo "FAIL: $what: stderr lacks '$needle': $(cat "$tmp/err")"; fail=1; }
}
printf 'ok \xc3\x28' > "$tmp/bad.txt"
expect_error "invalid UTF-8" 65 "offset 3" "$S" tokenize -m "$M" -f "$tmp/bad.txt"
expect_error "id out of range" 65 "out of range" "$S" tokenize -m "$M" --decode "4 100000"
expect_error "ids not numbers" 2 "expected token ids" "$S" tokenize -m "$M" --decode "4 x"
expect_error "bad byte mode" 2 "--byte-symbols" "$S" tokenize -m "$M" --byte-symbols maybe x
expect_error "forced bytes" 65 "dict.txt:1" "$S" tokenize -m "$M" --byte-symbols on x
expect_error "missing file" 74 "$tmp/none" "$S" tokenize -m "$M" -f "$tmp/none"
expect_error "two texts" 2 "one TEXT" "$S" tokenize -m "$M" a b

exit $fail
