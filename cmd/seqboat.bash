# bash completion for seqboat. The commands and each command's options are
# read from `seqboat --help` and `seqboat COMMAND --help` when completing,
# so they are always those of the binary being completed.

_seqboat_help() # [COMMAND]: the help text of the seqboat being completed
{
	"${COMP_WORDS[0]}" "$@" --help 2>/dev/null
}

_seqboat()
{
	local cur prev words cword
	_init_completion || return

	if [ "$cword" -eq 1 ]; then
		local cmds
		cmds=$(_seqboat_help | awk '/^commands:/ { f = 1; next }
			f && /^  [a-z]/ { print $1 } f && /^$/ { exit }')
		COMPREPLY=($(compgen -W "$cmds --help --version" -- "$cur"))
		return
	fi

	local cmd=${words[1]} help
	help=$(_seqboat_help "$cmd") || return
	# The option before the cursor takes an argument if its help line names
	# one: "-m, --model DIR", "-f, --file FILE".
	if [[ $prev == -* ]]; then
		local arg
		arg=$(printf '%s\n' "$help" | awk -v o="$prev" '/^ +-/ {
			short = ""; long = $1; i = 2
			if ($1 ~ /,$/) { short = substr($1, 1, length($1) - 1); long = $2; i = 3 }
			if ((o == short || o == long) && $i ~ /^[A-Z]/) { print $i; exit }
		}')
		case $arg in
		DIR | OUTDIR) _filedir -d; return ;;
		FILE) _filedir; return ;;
		?*) return ;; # a number or a word: nothing to offer
		esac
	fi
	if [[ $cur == -* ]]; then
		local opts
		opts=$(printf '%s\n' "$help" | grep -oE '^ +(-[A-Za-z], )?--[a-z][-a-z0-9]*' |
			tr -s ' ,' '\n' | grep -E '^-')
		COMPREPLY=($(compgen -W "$opts" -- "$cur"))
		return
	fi
	_filedir
}
complete -F _seqboat seqboat
