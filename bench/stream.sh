#!/usr/bin/env bash
# Benchmark (a) of issue 13, side by side in one run: null tasks/s on 2 workers for
#   - `mw run` in stream mode (one long-lived `null-stream` per slot), journaled and not;
#   - Python's multiprocessing.Pool(2).map over a null function (automatic chunking), and
#     the same with chunksize=1 (one call per message);
#   - `xargs -P 2` running the process-per-task `null-task` (fewer tasks: it is ~100x slower).
# Every figure is the median of RUNS runs of the whole command (start-up included); the
# journaled-vs-Pool.map ratio of each round is listed too.
# NTASKS may be a comma-separated list (e.g. 2000,10000,100000,1000000): each size gets its
# own table, its runners interleaved round by round. `chunksize=1` runs only up to 10^5 tasks
# (it is ~20x slower than automatic chunking).
# Measures the release build in ${CARGO_TARGET_DIR:-target}/release; installs nothing.
# Usage: bench/stream.sh [NTASKS=200000] [RUNS=5] [XARGS_TASKS=5000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
RUNS=${2:-5}
NX=${3:-5000}
T=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p mw-cli -p mw-examples
R=$(cd "$T/release" && pwd)
PY=$(command -v python3)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat > "$W/pool.py" <<'PY'
import multiprocessing, sys
def null(x):
    return x
if __name__ == "__main__":
    n, chunk = int(sys.argv[1]), sys.argv[2]
    with multiprocessing.Pool(2) as pool:
        out = pool.map(null, range(n)) if chunk == "auto" else pool.map(null, range(n), chunksize=1)
    assert len(out) == n
PY
calc() { awk "BEGIN { print $* }"; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); calc "$e - $s"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); build: $R"
echo "median of $RUNS runs; $("$PY" --version); xargs: $NX tasks"
for n in ${N//,/ }; do
    cat > "$W/stream.toml" <<TOML
name = "null-stream"
workers = 2
[program]
path = "$R/null-stream"
mode = "stream"
[inputs.sweep]
i = { start = 0, end = $n }
TOML
    declare -A S=()
    names=(mw_stream_journaled mw_stream_nojournal pool_auto)
    [ "$n" -le 100000 ] && names+=(pool_chunk1)
    names+=(xargs)
    for k in "${names[@]}"; do S[$k]=""; done
    for r in $(seq "$RUNS"); do
        rm -rf "$W/jobs"
        S[mw_stream_journaled]+="$(secs "$R/mw" run "$W/stream.toml" -q --jobs-dir "$W/jobs")"$'\n'
        S[mw_stream_nojournal]+="$(secs "$R/mw" run "$W/stream.toml" -q --no-journal)"$'\n'
        S[pool_auto]+="$(secs "$PY" "$W/pool.py" "$n" auto)"$'\n'
        [ -n "${S[pool_chunk1]+x}" ] && S[pool_chunk1]+="$(secs "$PY" "$W/pool.py" "$n" 1)"$'\n'
        S[xargs]+="$(secs sh -c "seq $NX | xargs -P 2 -n1 $R/null-task")"$'\n'
    done
    pool=$(printf '%s' "${S[pool_auto]}" | median)
    echo
    echo "$n null tasks (load now $(cut -d' ' -f1 /proc/loadavg))"
    printf '%-36s %9s %9s %12s %14s\n' "runner" "tasks" "seconds" "tasks/s" "vs Pool(2).map"
    for k in "${names[@]}"; do
        b=$(printf '%s' "${S[$k]}" | median)
        t=$n; [ "$k" = xargs ] && t=$NX
        printf '%-36s %9d %9.3f %12.0f %13.2fx\n' "$k" "$t" "$b" "$(calc "$t / $b")" "$(calc "($t / $b) / ($n / $pool)")"
    done
    # Round by round (each mw run against the Pool.map run of the same round): the spread
    # that the medians hide.
    ratios=$(paste <(printf '%s' "${S[pool_auto]}") <(printf '%s' "${S[mw_stream_journaled]}") |
        awk '{ printf "%.2f\n", $1 / $2 }' | sort -g | tr '\n' ' ')
    echo "journaled vs Pool(2).map, each round, sorted: $ratios"
    unset S
done
