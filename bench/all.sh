#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, one after the other, on this machine. Not run by CI.
#   bench/all.sh 2>&1 | tee bench/last-run.txt
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --workspace
echo "=== local cores (bench/local.sh)"; bench/local.sh 2000 5
echo "=== 10^6 tasks in one journaled job (bench/million.sh)"; bench/million.sh 1000000
echo "=== the commands and reduce step over 10^6 tasks (bench/commands.sh)"; bench/commands.sh 1000000
echo "=== MPI (bench/mpi.sh)"; bench/mpi.sh 2000 3
echo "=== HTCondor (bench/condor.sh)"; bench/condor.sh 10000
echo "=== BOINC (bench/boinc.sh)"; cargo build --release -q --workspace; bench/boinc.sh 10000
echo "=== stream mode by task count (bench/stream.sh)"; bench/stream.sh 2000,10000,20000,100000,1000000 5 500
echo "=== the journal's own floor vs Pool.map (bench/journal-floor.sh)"; bench/journal-floor.sh 10000,20000,100000,1000000 5
echo "=== mw-worker size (bench/worker-size.sh)"; bench/worker-size.sh
# The real-pool benchmarks need a running pool (`.ci/condor-pool start`, as root):
#   bench/condor-real.sh; bench/condor-pack.sh 100 10000 5
