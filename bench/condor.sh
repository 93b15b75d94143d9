#!/bin/sh
# HTCondor path benchmarks against the pool double (tests/src/condor_double.rs, a TEST DOUBLE):
#  1. master-side time for `mw run` to prepare (program + 10,000 task bundles, submit file,
#     item file) and submit 10,000 tasks in ONE condor_submit call; the double records the jobs
#     but runs none (MW_CONDOR_DOUBLE_NO_RUN=1). PyMW's Condor interface needed ~1 s per task.
#  2. the job event log follower's parsing rate (events/s) on a generated 1,000,000-event log.
# Usage: bench/condor.sh [TASKS] (default 10000). Needs a release build (done here).
set -eu
cd "$(dirname "$0")/.."
N=${1:-10000}
cargo build --release -q -p mw-cli -p mw-tests -p mw-examples -p mw-worker-runtime --bins
BIN=$PWD/target/release
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# The pool double's commands are built as mw-test-condor_* (never under the real names):
# link them under the real names for this run only.
mkdir "$T/condor-bin"
for t in condor_submit condor_q condor_rm condor_history; do ln -s "$BIN/mw-test-$t" "$T/condor-bin/$t"; done

# ---- 1. prepare + submit N tasks
cat > "$T/job.toml" <<JOB
name = "bench"
interface = "condor"
[program]
path = "$BIN/null-task"
[inputs.sweep]
i = { start = 0, end = $N }
[condor]
batch_window_secs = 0.5
JOB
cd "$T"
start=$(date +%s.%N)
PATH="$T/condor-bin:$PATH" MW_CONDOR_DOUBLE_STATE="$T/state" MW_CONDOR_DOUBLE_NO_RUN=1 \
  MW_WORKER="$BIN/mw-worker" MW_JOBS_DIR="$T/jobs" "$BIN/mw" run -q job.toml > /dev/null 2>&1 &
MW=$!
# Wait for the batch's cluster marker (written right after condor_submit returns).
while ! ls "$T"/jobs/bench-1/staging/condor/batch-*/*.cluster > /dev/null 2>&1; do
  kill -0 $MW 2>/dev/null || { echo "mw exited early" >&2; exit 1; }
  sleep 0.05
done
marker=$(ls "$T"/jobs/bench-1/staging/condor/batch-*/*.cluster | head -1)
done_at=$(stat -c %.Y "$marker" 2>/dev/null || stat -c %Y "$marker")
kill $MW 2>/dev/null || true
wait $MW 2>/dev/null || true
clusters=$(ls "$T"/jobs/bench-1/staging/condor/batch-*/*.cluster | wc -l)
items=$(cat "$T"/jobs/bench-1/staging/condor/batch-*/*.items | wc -l)
python3 - "$start" "$done_at" "$N" "$clusters" "$items" <<'PY'
import sys
start, end, n, clusters, items = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
secs = end - start
print(f"condor submit: {n} tasks ({items} queue items) in {clusters} condor_submit call(s): "
      f"{secs:.2f} s from `mw run` start (incl. the 0.5 s batch window) = {1000*secs/n:.2f} ms/task; "
      f"PyMW ~1 s/task would need ~{n} s ({n/secs:.0f}x slower)")
PY
cd - > /dev/null

# ---- 2. log follower parsing rate
python3 - "$T/big.log" <<'PY'
import sys
recs = [
 "000 ({c:03d}.{p:03d}.000) 2026-11-24 10:00:00 Job submitted from host: <127.0.0.1:9618?addrs=127.0.0.1-9618>\n    mw task {p}\n...\n",
 "001 ({c:03d}.{p:03d}.000) 2026-11-24 10:00:01 Job executing on host: <127.0.0.1:9618?addrs=127.0.0.1-9618>\n...\n",
 "006 ({c:03d}.{p:03d}.000) 2026-11-24 10:00:02 Image size of job updated: 1024\n\t1  -  MemoryUsage of job (MB)\n\t512  -  ResidentSetSize of job (KB)\n...\n",
 "005 ({c:03d}.{p:03d}.000) 2026-11-24 10:00:03 Job terminated.\n\t(1) Normal termination (return value 0)\n\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Remote Usage\n\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage\n\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n\t0  -  Total Bytes Sent By Job\n\t0  -  Total Bytes Received By Job\n...\n",
]
with open(sys.argv[1], "w") as f:
    for i in range(250000):
        for r in recs:
            f.write(r.format(c=1 + i // 10000, p=i % 10000))
PY
MW_BENCH_LOG="$T/big.log" cargo test --release -q -p mw-tests --test condor_e2e -- --ignored --nocapture bench_log_follower 2>&1 | grep "log follower"
