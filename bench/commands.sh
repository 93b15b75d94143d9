#!/usr/bin/env bash
# Memory at scale of the steps around a big job: NTASKS stream-mode null tasks from a sweep
# in one journaled `mw run` with a reduce program (`wc -l`), then `mw status JOB` and
# `mw results JOB` over the finished job; wall time and peak RSS (/usr/bin/time -f %M) of
# each, and the journal's size.
# Usage: bench/commands.sh [NTASKS=1000000] [MW=<target>/release/mw] [NULL_STREAM=<beside MW>]
# Measures the release build in ${CARGO_TARGET_DIR:-target}/release (built here unless MW is
# given: pass an older build's mw to compare); installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
NTASKS=${1:-1000000}
R=${CARGO_TARGET_DIR:-$PWD/target}/release
if [ -z "${2:-}" ]; then cargo build --release -q -p mw-cli -p mw-examples; fi
MW=${2:-$R/mw}
NS=${3:-$(dirname "$MW")/null-stream}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
A=$(awk "BEGIN { a = int(sqrt($NTASKS)); print (a * a == $NTASKS) ? a : 1 }")
B=$((NTASKS / A))
cat > "$W/big.toml" <<TOML
name = "big"
workers = 2
[program]
path = "$NS"
mode = "stream"
[inputs.sweep]
a = { start = 0, end = $A }
b = { start = 0, end = $B }
[reduce]
command = ["wc", "-l"]
TOML
echo "build: $MW; machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -f "mw run with a reduce program: %e s, peak %M KB" \
    "$MW" run "$W/big.toml" -q --jobs-dir "$W/jobs" > "$W/reduce.out"
echo "reduce printed: $(cat "$W/reduce.out")"
/usr/bin/time -f "mw status JOB: %e s, peak %M KB" "$MW" status big-1 --jobs-dir "$W/jobs" > /dev/null
/usr/bin/time -f "mw results JOB: %e s, peak %M KB" "$MW" results big-1 --jobs-dir "$W/jobs" > /dev/null
echo "journal: $(du -ch "$W"/jobs/big-1/journal.sqlite* | tail -1 | cut -f1)"
