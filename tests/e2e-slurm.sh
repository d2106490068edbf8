#!/bin/bash
# e2e-slurm.sh - batch completion as a Slurm array job, on a real Slurm:
# munged, slurmctld and slurmd (Debian's slurm-wlm and munge) configured by
# this script for one node on localhost, in a scratch directory, started
# and stopped by it. scripts/slurm-complete runs an array of 4 tasks over
# 400 prompts; one task is cancelled mid-way (scancel) and submitted again;
# `seqboat merge` of the shards must equal a single-process run byte for
# byte. Skipped (status 77) only where Slurm is not installed or its
# daemons cannot start here, saying why.
set -u
. "$(dirname "$0")/e2e-lib.sh"
BUNDLED=${SB_SRCDIR:?}/models/sotu-small
SCRIPT=$SB_SRCDIR/scripts/slurm-complete
PIDS=()

skip() {
	echo "SKIP: $*"
	exit 77
}

cleanup() {
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	sleep 0.5
	for p in "${PIDS[@]}"; do
		kill -9 "$p" 2>/dev/null
	done
	rm -rf "$TMP"
}
trap cleanup EXIT

for t in munged slurmctld slurmd sbatch squeue scancel sinfo; do
	command -v "$t" >/dev/null || skip "$t is not installed (Debian: slurmctld slurmd slurm-client munge)"
done
[ "$(id -u)" -eq 0 ] || skip "the test cluster runs its daemons as root and this is uid $(id -u)"

# --- the prompts and the single-process run the array must reproduce ---
# 400 JSONL items, one malformed line (an error record), ids given.
$PY - "$TMP/in.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(400):
        if i == 137:
            f.write('{"id": "p137", "prompt": broken\n')
            continue
        if i % 50 == 7:
            f.write("\n")  # blank lines are not items and do not count
        f.write(json.dumps({"id": "p%03d" % i, "prompt": "Item %d. The state of our Union" % i,
                            "max_tokens": 6 + i % 5}) + "\n")
PY
OPTS=(-m "$BUNDLED" --no-timings --seed 11 -t 1 --temp 0.7)
"$SEQBOAT" complete -f "$TMP/in.jsonl" "${OPTS[@]}" -o "$TMP/single.jsonl" 2>"$TMP/single.err"
rc=$?
[ $rc -eq 65 ] || fail "single run: exit $rc, expected 65 (one malformed line): $(head -3 "$TMP/single.err")"
[ "$(wc -l <"$TMP/single.jsonl")" -eq 400 ] || fail "single run: $(wc -l <"$TMP/single.jsonl") records, expected 400"

# --- a one-node cluster ---
C=$TMP/cluster
mkdir -p "$C/state" "$C/spool" "$C/log" "$C/munge"
chmod 700 "$C/munge"
head -c 1024 /dev/urandom >"$C/munge/munge.key"
chmod 400 "$C/munge/munge.key"
munged -f --socket="$C/munge/sock" --key-file="$C/munge/munge.key" \
	--log-file="$C/munge/log" --pid-file="$C/munge/pid" --seed-file="$C/munge/seed" ||
	skip "munged does not start here: $(tail -1 "$C/munge/log" 2>/dev/null)"
PIDS+=("$(cat "$C/munge/pid")")

free_port() {
	$PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
cat >"$C/slurm.conf" <<EOF
ClusterName=seqboat-e2e
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$C/munge/sock
StateSaveLocation=$C/state
SlurmdSpoolDir=$C/spool
SlurmctldPidFile=$C/slurmctld.pid
SlurmdPidFile=$C/slurmd.pid
SlurmctldLogFile=$C/log/slurmctld.log
SlurmdLogFile=$C/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
KillWait=2
NodeName=localhost CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=e2e Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$C/slurm.conf
slurmctld -f "$SLURM_CONF" || skip "slurmctld does not start here: $(tail -1 "$C/log/slurmctld.log" 2>/dev/null)"
for _ in $(seq 50); do [ -s "$C/slurmctld.pid" ] && break; sleep 0.1; done
PIDS+=("$(cat "$C/slurmctld.pid" 2>/dev/null)")
slurmd -f "$SLURM_CONF" -N localhost || skip "slurmd does not start here: $(tail -1 "$C/log/slurmd.log" 2>/dev/null)"
for _ in $(seq 50); do [ -s "$C/slurmd.pid" ] && break; sleep 0.1; done
PIDS+=("$(cat "$C/slurmd.pid" 2>/dev/null)")
up=""
for _ in $(seq 150); do
	state=$(sinfo -h -o %t 2>/dev/null)
	case "$state" in idle*|mix*|alloc*) up=1; break ;; esac
	sleep 0.2
done
[ -n "$up" ] || skip "the node never became idle (sinfo: '${state:-}'): $(tail -2 "$C/log/slurmd.log" 2>/dev/null)"

# Waits until none of the job's tasks is pending or running.
wait_job() {
	for _ in $(seq 1500); do
		[ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
		sleep 0.2
	done
	fail "job $1 did not finish in 300 s"
	return 1
}

# --- the array: 4 tasks, task 2 cancelled mid-way, then submitted again ---
OUT=$TMP/shards
export SEQBOAT="$SB_SEQBOAT"
cd "$TMP" || exit 1
job=$(sbatch --parsable --array=0-3 --output="$TMP/task-%a.log" \
	"$SCRIPT" "$TMP/in.jsonl" "$OUT" "${OPTS[@]}" 2>"$TMP/sbatch.err")
[ -n "$job" ] || { fail "sbatch: $(cat "$TMP/sbatch.err")"; finish slurm; }
cancelled=""
for _ in $(seq 3000); do
	n=$(cat "$OUT/shard-2-of-4.jsonl" 2>/dev/null | wc -l)
	if [ "$n" -ge 5 ]; then
		scancel "${job}_2" && cancelled=$n
		break
	fi
	sleep 0.02
done
[ -n "$cancelled" ] || fail "task 2 never wrote 5 records to cancel it mid-way"
wait_job "$job"
n2=$(wc -l <"$OUT/shard-2-of-4.jsonl")
[ "$n2" -lt 100 ] || fail "task 2 was cancelled after $cancelled records but finished all $n2"
for k in 0 1 3; do
	nk=$(wc -l <"$OUT/shard-$k-of-4.jsonl" 2>/dev/null)
	[ "${nk:-0}" -eq 100 ] || fail "task $k: ${nk:-0} records, expected 100: $(tail -2 "$TMP/task-$k.log")"
done

# The merge refuses the incomplete set and writes nothing.
"$SEQBOAT" merge -f "$TMP/in.jsonl" -o "$TMP/merged.jsonl" "$OUT"/shard-*-of-4.jsonl 2>"$TMP/merge1.err"
rc=$?
[ $rc -eq 65 ] || fail "merge of an unfinished shard: exit $rc, expected 65"
grep -q "missing" "$TMP/merge1.err" || grep -q "no newline" "$TMP/merge1.err" ||
	fail "merge of an unfinished shard does not say what is missing: $(tail -1 "$TMP/merge1.err")"
[ ! -e "$TMP/merged.jsonl" ] || fail "a refused merge left $TMP/merged.jsonl"

# Task 2 again, by itself: it resumes its shard.
job2=$(SEQBOAT_SHARDS=4 sbatch --parsable --array=2 --output="$TMP/task-2-again.log" \
	"$SCRIPT" "$TMP/in.jsonl" "$OUT" "${OPTS[@]}" 2>"$TMP/sbatch2.err")
[ -n "$job2" ] || fail "sbatch again: $(cat "$TMP/sbatch2.err")"
[ -n "$job2" ] && wait_job "$job2"
n2=$(wc -l <"$OUT/shard-2-of-4.jsonl")
[ "$n2" -eq 100 ] || fail "task 2 after its resubmission: $n2 records, expected 100: $(tail -2 "$TMP/task-2-again.log")"

"$SEQBOAT" merge -f "$TMP/in.jsonl" -o "$TMP/merged.jsonl" "$OUT"/shard-*-of-4.jsonl 2>"$TMP/merge2.err"
rc=$?
[ $rc -eq 0 ] || fail "merge: exit $rc: $(head -3 "$TMP/merge2.err")"
cmp -s "$TMP/merged.jsonl" "$TMP/single.jsonl" ||
	fail "the merged shards differ from the single run: $(cmp "$TMP/merged.jsonl" "$TMP/single.jsonl" 2>&1)"

# --- merge's refusals, without Slurm ---
"$SEQBOAT" merge -f "$TMP/in.jsonl" "$OUT/shard-0-of-4.jsonl" "$OUT/shard-1-of-4.jsonl" \
	"$OUT/shard-3-of-4.jsonl" >"$TMP/m.out" 2>"$TMP/m.err"
rc=$?
[ $rc -eq 65 ] || fail "merge without shard 2: exit $rc, expected 65"
[ ! -s "$TMP/m.out" ] || fail "merge without shard 2 wrote to stdout"
grep -q '"p002".*missing' "$TMP/m.err" || fail "merge without shard 2 does not name p002 as missing: $(head -1 "$TMP/m.err")"
grep -q "100 problems" "$TMP/m.err" || fail "merge without shard 2 does not count 100 problems: $(tail -1 "$TMP/m.err")"
cp "$OUT/shard-0-of-4.jsonl" "$TMP/copy.jsonl"
"$SEQBOAT" merge -f "$TMP/in.jsonl" "$OUT"/shard-*-of-4.jsonl "$TMP/copy.jsonl" >"$TMP/m.out" 2>"$TMP/m.err"
rc=$?
[ $rc -eq 65 ] || fail "merge with a shard twice: exit $rc, expected 65"
grep -q "duplicated" "$TMP/m.err" || fail "merge with a shard twice does not say duplicated: $(head -1 "$TMP/m.err")"
head -n 50 "$TMP/in.jsonl" >"$TMP/short.jsonl"
"$SEQBOAT" merge -f "$TMP/short.jsonl" "$OUT"/shard-*-of-4.jsonl >"$TMP/m.out" 2>"$TMP/m.err"
rc=$?
[ $rc -eq 65 ] || fail "merge against a shorter input: exit $rc, expected 65"
grep -q "not an item of" "$TMP/m.err" || fail "merge against a shorter input does not name unknown ids: $(head -1 "$TMP/m.err")"
printf '{"id": "p000", "completion": "x"\n' >"$TMP/bad.jsonl"
"$SEQBOAT" merge -f "$TMP/in.jsonl" "$TMP/bad.jsonl" >/dev/null 2>"$TMP/m.err"
rc=$?
[ $rc -eq 65 ] || fail "merge of a file that is not records: exit $rc, expected 65"
grep -q "bad.jsonl: line 1: expected a record" "$TMP/m.err" || fail "merge of a non-record file: $(cat "$TMP/m.err")"

"$SEQBOAT" merge -f "$TMP/in.jsonl" "$OUT"/shard-*-of-4.jsonl "$OUT/shard-0-of-4.jsonl" >/dev/null 2>"$TMP/m.err"
rc=$?
[ $rc -eq 2 ] || fail "merge with a file given twice: exit $rc, expected 2"
grep -q "given twice" "$TMP/m.err" || fail "merge with a file given twice: $(cat "$TMP/m.err")"
"$SEQBOAT" merge -f "$TMP/in.jsonl" -o "$OUT/shard-1-of-4.jsonl" "$OUT"/shard-*-of-4.jsonl 2>"$TMP/m.err"
rc=$?
[ $rc -eq 2 ] || fail "merge -o over a shard: exit $rc, expected 2"
cmp -s <(sed -n '2p' "$TMP/single.jsonl") <(sed -n '1p' "$OUT/shard-1-of-4.jsonl") ||
	fail "merge -o over a shard changed the shard"

# --- --shard's own checks ---
for bad in 4/4 -1/4 1/0 1 x/2 "1/2/3"; do
	"$SEQBOAT" complete -m "$BUNDLED" --shard "$bad" -p x >/dev/null 2>"$TMP/s.err"
	rc=$?
	[ $rc -eq 2 ] || fail "--shard $bad: exit $rc, expected 2"
	[ "$(wc -l <"$TMP/s.err")" -eq 1 ] || fail "--shard $bad: not one error line: $(cat "$TMP/s.err")"
done

finish slurm
