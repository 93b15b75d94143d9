#!/bin/bash
# HTCondor benchmarks against the REAL personal pool of `.ci/condor-pool start` (HTCondor
# 23.9 daemons, one partitionable slot of 2 cpus on this machine), in one run:
#  1. `condor_submit -terse` of one cluster of 10,000 mw tasks (`queue … from` the item file
#     mw writes; submitted on hold with `-append hold=true`, then removed, so nothing runs);
#  2. null tasks per second end to end (`mw run`, from start to the last result) for 200 and
#     2,000 tasks on the pool, next to the same job on local cores (multicore).
# Usage (as root, pool started): bench/condor-real.sh [SUBMIT_TASKS] [SMALL] [LARGE]
# (defaults 10000 200 2000; LARGE=0 skips the large run). mw runs as the ordinary user
# mwcondor (the schedd refuses root's jobs); every file lives under /tmp (shared with the
# pool's chroot). The worker shipped with every job is the static release mw-worker.
set -euo pipefail
cd "$(dirname "$0")/.."
N_SUBMIT=${1:-10000}
SMALL=${2:-200}
LARGE=${3:-2000}
CB=${MW_CONDOR_BIN:-/usr/local/mw-condor/bin}
[ "$(id -u)" = 0 ] || { echo "run as root (mw itself runs as mwcondor)" >&2; exit 1; }
[ -x "$CB/condor_q" ] || { echo "no pool: run .ci/condor-pool start" >&2; exit 1; }
# MW_BENCH_PROFILE=debug uses the debug build (with a stripped copy of its mw-worker).
if [ "${MW_BENCH_PROFILE:-release}" = debug ]; then
  cargo build -q -p mw -p mw-examples -p mw-worker-runtime --bins
  BIN=$PWD/target/debug
  WORKER=$BIN/mw-worker
else
  cargo build --release -q -p mw -p mw-examples --bins
  cargo static-worker -q
  BIN=$PWD/target/release
  WORKER=$PWD/target/static/release/mw-worker
fi
T=$(mktemp -d /tmp/mw-bench-condor.XXXXXX)
trap 'rm -rf "$T"' EXIT
cp "$WORKER" "$T/mw-worker"
strip "$T/mw-worker" 2>/dev/null || true
echo "worker shipped with every job: $(stat -c %s "$T/mw-worker") bytes; binaries from $BIN"
cp "$BIN/null-task" "$T/null-task"
chown -R mwcondor: "$T"
as_user() { (cd "$T" && setpriv --reuid=mwcondor --regid="$(id -g mwcondor)" --clear-groups \
  env -i PATH="$CB:/usr/bin:/bin" HOME="$T" MW_JOBS_DIR="$T/jobs" MW_WORKER="$T/mw-worker" "$@"); }
now() { date +%s.%N; }
job() { # job NAME TASKS
  cat > "$T/$1.toml" <<JOB
name = "$1"
interface = "condor"
[program]
path = "$T/null-task"
[inputs.sweep]
i = { start = 0, end = $2 }
[condor]
batch_window_secs = 0.5
request_memory = 64
request_disk = 64
JOB
  chown mwcondor: "$T/$1.toml"
}

# ---- 1. condor_submit of N_SUBMIT tasks (on hold, then removed)
job submit "$N_SUBMIT"
as_user "$BIN/mw-condor" submit-file --work-dir "$T/sub" "$T/submit.toml" > "$T/submit.sub"
as_user "$BIN/mw-condor" submit-file --items --work-dir "$T/sub" "$T/submit.toml" > "$T/items"
items_path=$(tail -1 "$T/submit.sub" | awk '{print $NF}')
mkdir -p "$(dirname "$items_path")"
mv "$T/items" "$items_path"
# the task bundles the item file names must exist for condor_submit's checks
awk '{print $2}' "$items_path" | xargs -r touch
prog=$(grep '^transfer_input_files' "$T/submit.sub" | sed 's/.*= *//; s/,.*//')
touch "$prog"
chown -R mwcondor: "$T"
t0=$(now)
out=$(as_user condor_submit -terse -append 'hold = true' "$T/submit.sub")
t1=$(now)
cluster=${out%%.*}
"$CB/condor_rm" "$cluster" > /dev/null 2>&1 || true
python3 -c "import sys; n=int(sys.argv[3]); s=float(sys.argv[2])-float(sys.argv[1]); print(f'condor_submit -terse of {n} tasks (one cluster, queue ... from an item file): {s:.2f} s = {1000*s/n:.2f} ms/task [{sys.argv[4]}]')" "$t0" "$t1" "$N_SUBMIT" "$out"

# ---- 2. null tasks end to end, pool vs local cores
run_one() { # run_one NAME TASKS INTERFACE
  job "$1" "$2"
  local a b
  a=$(now)
  as_user "$BIN/mw" run -q --interface "$3" "$T/$1.toml" > "$T/$1.out" 2> "$T/$1.err" \
    || { tail -5 "$T/$1.err" >&2; echo "mw run $1 failed" >&2; exit 1; }
  b=$(now)
  local got
  got=$(grep -c '^{' "$T/$1.out" || true)
  python3 -c "import sys; n=int(sys.argv[3]); s=float(sys.argv[2])-float(sys.argv[1]); print(f'{sys.argv[4]:>9}: {n} null tasks in {s:.1f} s = {n/s:.1f} tasks/s ({sys.argv[5]} results)')" "$a" "$b" "$2" "$3" "$got"
}
for n in $SMALL $LARGE; do
  [ "$n" -gt 0 ] || continue
  run_one "pool$n" "$n" condor
  run_one "local$n" "$n" multicore
done
