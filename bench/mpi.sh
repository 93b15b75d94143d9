#!/usr/bin/env bash
# Null-task throughput: the MPI interface (mpirun -n 3 = master + 2 worker ranks) vs the
# multicore interface (2 slots) on the same machine, same program, same task count.
# Each task is one fork/exec of `cat` echoing its JSON input, so this measures mw's
# per-task overhead (bundles, scratch dirs, process start), not computation.
#
#   bench/mpi.sh [NTASKS=2000] [RUNS=3]
#
# Needs Open MPI + libclang (see reference/mpi.md) and builds in release mode with the
# `mpi` feature. Prints one line per run and interface: `<interface> run=<k> tasks/s=<X>`.
# Also runs `mw run examples/null/job.toml` both ways when the mw CLI has MPI support.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

NTASKS="${1:-2000}"
RUNS="${2:-3}"
case "$NTASKS$RUNS" in *[!0-9]*) echo "NTASKS and RUNS must be whole numbers" >&2; exit 2 ;; esac

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export HWLOC_COMPONENTS=-gl # see mw_tests::ompi_env: hwloc's X probe can hang on mpirun's port

cargo build --release -q -p mw-cli --features mw-cli/mpi -p mw-examples -p mw-tests --features mw-tests/mpi
DRIVER=target/release/mw-mpi-driver

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
printf '#!/bin/sh\ncat\n' > "$WORK/null.sh"
chmod +x "$WORK/null.sh"

rate() { sed -n 's/.*"tasks_per_s":\([0-9.]*\).*/\1/p' | tail -1; }

echo "# null-task throughput, $NTASKS tasks, $(nproc) cores, $(mpirun --version | head -1)"
for run in $(seq 1 "$RUNS"); do
    mc=$(timeout 600 "$DRIVER" "$WORK/null.sh" "$NTASKS" --quiet --multicore 2 | rate)
    echo "multicore(2 slots)       run=$run tasks/s=$mc"
    mp=$(timeout 600 mpirun -n 3 "$DRIVER" "$WORK/null.sh" "$NTASKS" --quiet | rate)
    echo "mpi(-n 3, 2 worker ranks) run=$run tasks/s=$mp"
done

# The same comparison through the CLI and a job file (includes journal and start-up costs);
# run in the scratch dir so its mw-jobs/ directory is thrown away.
if [ -f examples/null/job.toml ]; then
    echo "# mw run examples/null/job.toml (wall seconds incl. start-up)"
    for run in $(seq 1 "$RUNS"); do
        s=$(date +%s.%N)
        (cd "$WORK" && timeout 600 "$ROOT/target/release/mw" run "$ROOT/examples/null/job.toml" --interface multicore > /dev/null)
        e=$(date +%s.%N)
        echo "mw run multicore run=$run secs=$(awk "BEGIN { print $e - $s }")"
        s=$(date +%s.%N)
        (cd "$WORK" && timeout 600 mpirun -n 3 "$ROOT/target/release/mw" run "$ROOT/examples/null/job.toml" --interface mpi > /dev/null)
        e=$(date +%s.%N)
        echo "mw run mpi -n 3  run=$run secs=$(awk "BEGIN { print $e - $s }")"
    done
fi

# Stream mode (issue 13, benchmark d): null tasks through one long-lived `null-stream` per
# worker, MPI ranks taking batches, vs multicore slots; same job file, journal off.
SN="${STREAM_TASKS:-100000}"
cat > "$WORK/stream.toml" <<TOML
name = "null-stream"
workers = 2
[program]
path = "$ROOT/target/release/null-stream"
mode = "stream"
[inputs.sweep]
i = { start = 0, end = $SN }
TOML
echo "# stream mode, $SN null tasks (wall seconds incl. start-up; tasks/s)"
for run in $(seq 1 "$RUNS"); do
    s=$(date +%s.%N)
    (cd "$WORK" && timeout 600 "$ROOT/target/release/mw" run "$WORK/stream.toml" --interface multicore -q --no-journal > /dev/null)
    e=$(date +%s.%N)
    echo "stream multicore(2) run=$run secs=$(awk "BEGIN { print $e - $s }") tasks/s=$(awk "BEGIN { printf \"%.0f\", $SN / ($e - $s) }")"
    s=$(date +%s.%N)
    (cd "$WORK" && timeout 600 mpirun -n 3 "$ROOT/target/release/mw" run "$WORK/stream.toml" --interface mpi -q --no-journal > /dev/null)
    e=$(date +%s.%N)
    echo "stream mpi -n 3     run=$run secs=$(awk "BEGIN { print $e - $s }") tasks/s=$(awk "BEGIN { printf \"%.0f\", $SN / ($e - $s) }")"
done

# Monte Carlo pi speedup over MPI: 1 worker rank (-n 2) vs 2 worker ranks (-n 3), 10^9
# points in 16 tasks (10x the example job, so that mpirun's start-up does not dominate).
sed -e 's/points = \[6250000\]/points = [62500000]/' -e "s#\.\./\.\./target/release#$ROOT/target/release#g" \
    examples/monte_pi/job.toml > "$WORK/pi_big.toml"
echo "# Monte Carlo pi over MPI, 10^9 points in 16 tasks (wall seconds, best of $RUNS)"
best1=""; best2=""
for run in $(seq 1 "$RUNS"); do
    for n in 2 3; do
        s=$(date +%s.%N)
        (cd "$WORK" && timeout 600 mpirun -n "$n" "$ROOT/target/release/mw" run "$WORK/pi_big.toml" --interface mpi -q --no-journal > /dev/null)
        e=$(date +%s.%N)
        t=$(awk "BEGIN { print $e - $s }")
        echo "mpi -n $n run=$run secs=$t"
        if [ "$n" = 2 ]; then best1=$(printf '%s\n%s\n' "$best1" "$t" | grep . | sort -g | head -1)
        else best2=$(printf '%s\n%s\n' "$best2" "$t" | grep . | sort -g | head -1); fi
    done
done
echo "speedup 1 -> 2 worker ranks: $(awk "BEGIN { printf \"%.2f\", $best1 / $best2 }")x"
