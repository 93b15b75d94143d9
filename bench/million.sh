#!/usr/bin/env bash
# Benchmark 6(b): 10^6 null tasks from a sweep in one journaled `mw run` on 2 slots: wall
# time, the master's peak RSS (/usr/bin/time -v, "Maximum resident set size"), the journal's
# size; then the same sweep through `mw submit` (peak RSS of the submitting process; the
# detached master is cancelled as soon as it runs tasks).
# Usage: bench/million.sh [NTASKS=1000000] [MW=<target>/release/mw]
# Measures the release build in ${CARGO_TARGET_DIR:-target}/release (built here unless MW is
# given); installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
NTASKS=${1:-1000000}
R=${CARGO_TARGET_DIR:-$PWD/target}/release
if [ -z "${2:-}" ]; then cargo build --release -q -p mw-cli -p mw-examples; fi
MW=${2:-$R/mw}
NULL=$R/null-task
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# A two-dimensional sweep (a x b = NTASKS when NTASKS is a square, else 1 x NTASKS).
A=$(awk "BEGIN { a = int(sqrt($NTASKS)); print (a * a == $NTASKS) ? a : 1 }")
B=$((NTASKS / A))
cat > "$W/null.toml" <<TOML
name = "million"
workers = 2
[program]
path = "$NULL"
[inputs.sweep]
a = { start = 0, end = $A }
b = { start = 0, end = $B }
TOML
echo "build: $MW ($(stat -c %y "$MW" | cut -d. -f1)); machine: $(nproc) cores, $(uname -r)"
echo "$NTASKS null tasks (sweep $A x $B), journaled mw run on 2 slots"
/usr/bin/time -v -o "$W/run.time" "$MW" run "$W/null.toml" -q --jobs-dir "$W/jobs" -o "$W/results.jsonl"
wall=$(grep 'Elapsed (wall clock)' "$W/run.time" | awk '{ print $NF }')
rss=$(grep 'Maximum resident set size' "$W/run.time" | awk '{ print $NF }')
lines=$(wc -l < "$W/results.jsonl")
jsize=$(du -cb "$W"/jobs/million-1/journal.sqlite* | tail -1 | cut -f1)
printf 'mw run:    wall %s, master peak RSS %.1f MiB (%.0f bytes/task), journal %.1f MiB, %s result lines\n' \
    "$wall" "$(awk "BEGIN { print $rss / 1024 }")" "$(awk "BEGIN { print $rss * 1024 / $NTASKS }")" \
    "$(awk "BEGIN { print $jsize / 1048576 }")" "$lines"
/usr/bin/time -v -o "$W/submit.time" "$MW" submit "$W/null.toml" --jobs-dir "$W/jobs2" > "$W/submit.out"
id=$(cut -f1 "$W/submit.out")
# Cancel once the detached master runs tasks (so its whole start-up runs; a cancel during the
# start-up is applied too, before anything is dispatched).
for _ in $(seq 600); do
    running=$("$MW" status --jobs-dir "$W/jobs2" 2>/dev/null | awk -v id="$id" '$1 == id { print $(NF-3) }')
    [ "${running:-0}" -gt 0 ] && break
    sleep 0.1
done
"$MW" cancel "$id" --jobs-dir "$W/jobs2" >/dev/null 2>&1 || true
"$MW" wait "$id" --jobs-dir "$W/jobs2" >/dev/null 2>&1 || true
swall=$(grep 'Elapsed (wall clock)' "$W/submit.time" | awk '{ print $NF }')
srss=$(grep 'Maximum resident set size' "$W/submit.time" | awk '{ print $NF }')
printf 'mw submit: wall %s, peak RSS %.1f MiB\n' "$swall" "$(awk "BEGIN { print $srss / 1024 }")"
