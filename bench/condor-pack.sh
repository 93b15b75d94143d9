#!/bin/bash
# Task packing on the REAL HTCondor pool of `.ci/condor-pool start` (BENCHMARKS.md, issue 13
# benchmark c): null tasks per second end to end (`mw run`, from its start to its exit with
# every result) with `[condor] tasks_per_job = 1` (one job per task) and `= 100` (packs, the
# worker running one process per task: examples' null-task), and `= 100` with a streaming
# program (`[program] mode = "stream"`: examples' null-stream, one process per pack), in one
# run, one after the other on the same pool.
# Usage (as root, pool started): bench/condor-pack.sh [TASKS_AT_1] [TASKS_AT_100] [REPEATS]
# (defaults 100, 100 x TASKS_AT_1, 1). The default gives both sides the same number of jobs
# (100 tasks in 100 jobs vs 10,000 tasks in 100 packs): each run then pays the pool's
# start-up (the first negotiation cycle, 0-6 s after `condor_submit`) once over as many
# jobs, so the ratio compares what a job costs, not where the negotiator's cycle happened to
# be (with 2,000 tasks in 20 packs that start-up is most of a packed run). mw runs as the ordinary user mwcondor (the schedd refuses root's
# jobs); every file lives under /tmp (shared with the pool's chroot).
# Build: release by default (`cargo build --release`, and the static worker that pools
# receive), in $CARGO_TARGET_DIR (default ./target); MW_BENCH_PROFILE=debug measures the
# debug build instead. Installs nothing; prints which binaries it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${1:-100}
N100=${2:-$((N1 * 100))}
REPEATS=${3:-1}
CB=${MW_CONDOR_BIN:-/usr/local/mw-condor/bin}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
[ "$(id -u)" = 0 ] || { echo "run as root (mw itself runs as mwcondor)" >&2; exit 1; }
[ -x "$CB/condor_q" ] || { echo "no pool: run .ci/condor-pool start" >&2; exit 1; }
if [ "${MW_BENCH_PROFILE:-release}" = debug ]; then
  cargo build -q -p mw-cli -p mw-examples -p mw-worker-runtime --bins
  BIN=$TARGET/debug
  WORKER=$BIN/mw-worker
else
  cargo build --release -q -p mw-cli -p mw-examples --bins
  # The static worker (what `cargo static-worker` builds), in this target directory.
  cargo rustc --release -q -p mw-worker-runtime --bin mw-worker --target-dir "$TARGET/static" \
    -- -C target-feature=+crt-static -C relocation-model=static
  BIN=$TARGET/release
  WORKER=$TARGET/static/release/mw-worker
fi
T=$(mktemp -d /tmp/mw-bench-pack.XXXXXX)
[ -n "${MW_BENCH_KEEP:-}" ] || trap 'rm -rf "$T"' EXIT
cp "$WORKER" "$T/mw-worker"
strip "$T/mw-worker" 2>/dev/null || true
cp "$BIN/null-task" "$BIN/null-stream" "$T/"
chown -R mwcondor: "$T"
echo "build: ${MW_BENCH_PROFILE:-release} of $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes'); mw $BIN/mw; worker $WORKER, shipped stripped: $(stat -c %s "$T/mw-worker") bytes"
echo "pool: $("$CB/condor_version" 2>/dev/null | head -1); $("$CB/condor_status" -af Cpus 2>/dev/null | paste -sd+ | bc 2>/dev/null || echo '?') cpus"
as_user() { (cd "$T" && setpriv --reuid=mwcondor --regid="$(id -g mwcondor)" --clear-groups \
  env -i PATH="$CB:/usr/bin:/bin" HOME="$T" MW_JOBS_DIR="$T/jobs" MW_WORKER="$T/mw-worker" "$@"); }
now() { date +%s.%N; }
job() { # job NAME TASKS TASKS_PER_JOB [stream]
  local prog="path = \"$T/null-task\""
  [ "${4:-}" = stream ] && prog="path = \"$T/null-stream\"
mode = \"stream\""
  cat > "$T/$1.toml" <<JOB
name = "$1"
interface = "condor"
[program]
$prog
[inputs.sweep]
i = { start = 0, end = $2 }
[condor]
batch_window_secs = 0.5
request_memory = 64
request_disk = 64
tasks_per_job = $3
JOB
  chown mwcondor: "$T/$1.toml"
}
run_one() { # run_one NAME TASKS TASKS_PER_JOB [stream] -> prints the rate, sets RATE
  job "$1" "$2" "$3" "${4:-}"
  local a b got
  a=$(now)
  as_user "$BIN/mw" run -q "$T/$1.toml" > "$T/$1.out" 2> "$T/$1.err" \
    || { tail -5 "$T/$1.err" >&2; echo "mw run $1 failed" >&2; exit 1; }
  b=$(now)
  got=$(grep -c '^{' "$T/$1.out" || true)
  [ "$got" = "$2" ] || { echo "$1: $got results for $2 tasks" >&2; exit 1; }
  RATE=$(python3 -c "import sys; print(int(sys.argv[3])/(float(sys.argv[2])-float(sys.argv[1])))" "$a" "$b" "$2")
  python3 -c "import sys; n=int(sys.argv[3]); s=float(sys.argv[2])-float(sys.argv[1]); j=-(-n//int(sys.argv[4])); print(f'tasks_per_job = {sys.argv[4]:>3}{sys.argv[5]}: {n} null tasks in {j} jobs, {s:.1f} s = {n/s:.1f} tasks/s')" "$a" "$b" "$2" "$3" "${4:+ (stream)}"
}
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
ALL1=""; ALL100=""; ALLS=""
for r in $(seq "$REPEATS"); do
  run_one "one$r" "$N1" 1
  R1=$RATE; ALL1="$ALL1 $RATE"
  run_one "packed$r" "$N100" 100
  R100=$RATE; ALL100="$ALL100 $RATE"
  run_one "stream$r" "$N100" 100 stream
  RS=$RATE; ALLS="$ALLS $RATE"
  python3 -c "import sys; a,b,c=map(float,sys.argv[1:]); print(f'tasks_per_job = 100 vs 1: {b/a:.1f}x the null-task rate; with a streaming program {c/a:.1f}x')" "$R1" "$R100" "$RS"
  echo "load average after repeat $r: $(cut -d' ' -f1-3 /proc/loadavg)"
done
python3 - "$ALL1" "$ALL100" "$ALLS" <<'PY'
import statistics, sys
one, packed, stream = ([float(x) for x in a.split()] for a in sys.argv[1:4])
m1, m100, ms = (statistics.median(v) for v in (one, packed, stream))
print(f"median of {len(one)}: {m1:.1f} tasks/s at 1 per job; at 100 per job {m100:.1f} tasks/s "
      f"({m100 / m1:.1f}x), streaming {ms:.1f} tasks/s ({ms / m1:.1f}x)")
print("per repeat, 100 per job vs 1:", ", ".join(f"{b / a:.1f}x" for a, b in zip(one, packed)),
      "; streaming:", ", ".join(f"{c / a:.1f}x" for a, c in zip(one, stream)))
PY
