#!/usr/bin/env bash
# Master-side time to stage and create 10,000 BOINC workunits, against the create_work of
# the BOINC server TEST DOUBLE (tests/src/bin/boinc_server_double.rs) in record-only mode:
# no `serve` loop runs, so no client executes anything. Measured: `mw submit`-free path,
# i.e. `mw run` until every workunit exists (the run is then stopped; nothing completes).
# The PyMW paper reports 15 minutes to create 10^4 tasks (one create_work per task).
#
#   cargo build --release --workspace && bench/boinc.sh [N]   (MW_TARGET_DIR=target/debug to use a debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
T="${MW_TARGET_DIR:-target/release}"
for b in mw mw-worker mw-validator mw-assimilator mw-boinc-setup boinc_server_double null-task; do
    [ -x "$T/$b" ] || { echo "missing $T/$b: run cargo build --release --workspace" >&2; exit 1; }
done
W="$(mktemp -d)"
trap 'kill "${MW_PID:-0}" 2>/dev/null || true; rm -rf "$W"' EXIT
"$T/boinc_server_double" make-project "$W/proj" >/dev/null
"$T/mw-boinc-setup" --project-dir "$W/proj" --worker "$T/mw-worker" \
    --validator "$T/mw-validator" --assimilator "$T/mw-assimilator" >/dev/null 2>&1
cat > "$W/job.toml" <<TOML
name = "bench"
interface = "boinc"
[program]
path = "$PWD/$T/null-task"
[inputs.sweep]
i = { start = 0, end = $N }
[boinc]
project_dir = "$W/proj"
batch_size = 1000
TOML
start=$(date +%s.%N)
"$T/mw" run "$W/job.toml" -q --jobs-dir "$W/jobs" >/dev/null 2>&1 &
MW_PID=$!
# Wait until create_work has recorded N workunits (one JSON file each).
while [ "$(find "$W/proj/double/wus" -name '*.json' | wc -l)" -lt "$N" ]; do
    kill -0 "$MW_PID" 2>/dev/null || { echo "mw exited early" >&2; exit 1; }
    sleep 0.05
done
end=$(date +%s.%N)
kill "$MW_PID" 2>/dev/null || true
wait "$MW_PID" 2>/dev/null || true
calls=$(grep -c '"tool":"create_work"' "$W/proj/double/calls.jsonl")
secs=$(awk "BEGIN { print $end - $start }")
printf 'boinc: staged and created %d workunits in %.2f s with %d create_work --stdin calls\n' "$N" "$secs" "$calls"
printf 'boinc: PyMW paper: 15 min (900 s) for 10^4 tasks -> %.0fx faster\n' "$(awk "BEGIN { print 900 * $N / 10000 / $secs }")"
