#!/usr/bin/env bash
# Why journaled stream mode cannot reach 1.5x multiprocessing.Pool(2).map at 10^5 tasks and
# more (issue 13): side by side in one run, for each task count,
#   - Pool(2).map over a null function (automatic chunking), start-up included;
#   - SQLite alone writing mw's per-task rows: the journal's `tasks` table (its schema read
#     from a journal `mw run` just made), one INSERT per task (as a sweep's chunk records
#     it) and one UPDATE per task (the row of a task done), each set in one transaction
#     with one prepared statement, through rusqlite as mw does (`master/examples/
#     journal-floor.rs`). No program runs, nothing is printed, nothing else of mw runs.
# If the floor is above Pool.map's time / 1.5, no runner that stores a row per task can
# meet the ratio, however fast everything else is.
# Measures the release build in ${CARGO_TARGET_DIR:-target}/release; installs nothing.
# Usage: bench/journal-floor.sh [NTASKS=10000,100000] [RUNS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000,100000}
RUNS=${2:-5}
T=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p mw-cli -p mw-examples
cargo build --release -q -p mw --example journal-floor
R=$(cd "$T/release" && pwd)
PY=$(command -v python3)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat > "$W/one.toml" <<TOML
name = "one"
[program]
path = "$R/null-task"
[inputs]
list = [0]
TOML
"$R/mw" run "$W/one.toml" -q --jobs-dir "$W/jobs" >/dev/null
J=$(ls -d "$W"/jobs/one-*)/journal.sqlite
cat > "$W/pool.py" <<'PY'
import multiprocessing, sys
def null(x):
    return x
if __name__ == "__main__":
    n = int(sys.argv[1])
    with multiprocessing.Pool(2) as pool:
        out = pool.map(null, range(n))
    assert len(out) == n
PY
calc() { awk "BEGIN { print $* }"; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); calc "$e - $s"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); build: $R"
echo "median of $RUNS runs; $("$PY" --version); SQLite as rusqlite bundles it"
for n in ${N//,/ }; do
    pool="" floor="" ins="" upd=""
    for _ in $(seq "$RUNS"); do
        pool+="$(secs "$PY" "$W/pool.py" "$n")"$'\n'
        read -r all i u < <("$R/examples/journal-floor" "$J" "$n" "$W/floor.sqlite")
        floor+="$all"$'\n' ins+="$i"$'\n' upd+="$u"$'\n'
    done
    p=$(printf '%s' "$pool" | median)
    f=$(printf '%s' "$floor" | median)
    echo
    echo "$n tasks (load now $(cut -d' ' -f1 /proc/loadavg))"
    printf '%-44s %9.3f s\n' "Pool(2).map, whole run" "$p"
    printf '%-44s %9.3f s\n' "  the time 1.5x its rate leaves" "$(calc "$p / 1.5")"
    printf '%-44s %9.3f s  (%.2f us/task)\n' "SQLite alone: mw's rows for every task" "$f" "$(calc "$f * 1000000 / $n")"
    printf '%-44s %9.3f s\n' "  of which the INSERTs" "$(printf '%s' "$ins" | median)"
    printf '%-44s %9.3f s\n' "  of which the UPDATEs" "$(printf '%s' "$upd" | median)"
    printf '%-44s %9.2fx\n' "floor vs the time 1.5x leaves" "$(calc "$f / ($p / 1.5)")"
done
