#!/usr/bin/env bash
# Local-cores benchmarks, side by side in one run on this machine (figures go to
# BENCHMARKS.md together with this command line):
#   (a) null-task throughput: `mw run` (journaled and --no-journal) vs `xargs -P N` and
#       GNU `parallel -j N`, all running the same null program (target/release/null-task);
#   (b) Monte Carlo pi speedup from 1 to N workers (10^8 points, 16 tasks);
#   (c) 10^5 tasks submitted to a journaled master: submission time and peak RSS.
# Usage: bench/local.sh [NTASKS=2000] [RUNS=5]; every figure is the median of RUNS runs.
set -euo pipefail
cd "$(dirname "$0")/.."
NTASKS=${1:-2000}
RUNS=${2:-5}
N=$(nproc)
command -v parallel >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq parallel >/dev/null; }
cargo build --release -q -p mw-cli -p mw-examples
R=$PWD/target/release
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat > "$W/null.toml" <<TOML
name = "null"
workers = $N
[program]
path = "$R/null-task"
[inputs.sweep]
i = { start = 0, end = $NTASKS }
TOML
calc() { awk "BEGIN { print $* }"; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); calc "$e - $s"; }
# The median of the runs: steadier than the best on a shared machine.
best() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "machine: $N cores, $(uname -r); $NTASKS null tasks, median of $RUNS runs"
declare -A T
for name in mw mw_nojournal xargs parallel; do T[$name]=""; done
for r in $(seq "$RUNS"); do
    T[mw]+="$(secs "$R/mw" run "$W/null.toml" -q --jobs-dir "$W/jobs")"$'\n'
    T[mw_nojournal]+="$(secs "$R/mw" run "$W/null.toml" -q --no-journal)"$'\n'
    T[xargs]+="$(secs sh -c "seq $NTASKS | xargs -P $N -n1 $R/null-task")"$'\n'
    T[parallel]+="$(secs sh -c "seq $NTASKS | parallel -j $N $R/null-task")"$'\n'
done
xb=$(printf '%s' "${T[xargs]}" | best)
printf '%-34s %10s %12s %14s\n' "runner" "seconds" "tasks/s" "vs xargs -P $N"
for name in mw mw_nojournal xargs parallel; do
    b=$(printf '%s' "${T[$name]}" | best)
    printf '%-34s %10.3f %12.0f %13.2fx\n' "$name" "$b" "$(calc "$NTASKS / $b")" "$(calc "$xb / $b")"
done
mwj=$(printf '%s' "${T[mw]}" | best); mwn=$(printf '%s' "${T[mw_nojournal]}" | best)
printf 'journal overhead (journaled / in-memory - 1): %.1f%%\n' "$(calc "($mwj / $mwn - 1) * 100")"

echo
echo "Monte Carlo pi, 10^8 points in 16 tasks"
p1=""; pN=""
for r in $(seq "$RUNS"); do
    p1+="$(secs "$R/mw" run examples/monte_pi/job.toml -q --no-journal --workers 1)"$'\n'
    pN+="$(secs "$R/mw" run examples/monte_pi/job.toml -q --no-journal --workers "$N")"$'\n'
done
b1=$(printf '%s' "$p1" | best); bN=$(printf '%s' "$pN" | best)
printf '1 worker %.3f s, %d workers %.3f s, speedup %.2fx\n' "$b1" "$N" "$bN" "$(calc "$b1 / $bN")"

echo
echo "10^5 tasks submitted to a journaled master (library, Master::with_journal + submit_many)"
"$R/bench-submit" 100000 "$W/submit-job"
