#!/bin/sh
# The tests run seqboat through this script ($SB_SEQBOAT points here): the
# binary itself, or, under the 'valgrindcli' test setup (SB_VALGRIND set),
# the binary under valgrind. exec keeps the process the one the tests
# signal. A memory error or leak exits 99, which no seqboat path uses; only
# definite and indirect leaks are reported (a process killed by a signal,
# as by SIGPIPE under `| head`, leaves its threads' stacks "possibly lost").
bin=${SB_SEQBOAT_REAL:?SB_SEQBOAT_REAL is not set}
if [ -n "${SB_VALGRIND:-}" ]; then
	exec valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
		--errors-for-leak-kinds=definite,indirect --quiet "$bin" "$@"
fi
exec "$bin" "$@"
