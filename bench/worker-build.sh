#!/usr/bin/env bash
# Build time and size of the four release mw-workers CI builds (.ci/test: `cargo
# static-worker`, `cargo musl-worker`, `cargo arm-worker`, `cargo windows-worker`) under a
# choice of link-time optimisation, each variant from clean target directories under
# ${CARGO_TARGET_DIR:-target}/lto/ (the normal builds are not touched). Reports wall and CPU
# seconds (user + system) per worker and in total, and each worker's size.
# Installs nothing (needs the targets and cross linkers of .ci/setup).
# Usage: bench/worker-build.sh [variant...]; variants: fat-cu1 thin thin-cu1 off
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/lto
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(fat-cu1 thin off)
echo "rustc: $(rustc --version); machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-9s %-8s %9s %9s %11s\n' variant worker "wall s" "cpu s" "bytes"
for v in "${variants[@]}"; do
    env=(CARGO_PROFILE_RELEASE_STRIP=symbols)
    case "$v" in
        fat-cu1) env+=(CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1) ;;
        thin-cu1) env+=(CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1) ;;
        thin) env+=(CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16) ;;
        off) env+=(CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16) ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
    rm -rf "$T/$v"; mkdir -p "$T/$v"
    total_wall=0 total_cpu=0
    for w in static musl arm windows; do
        case "$w" in
            static) cmd=(cargo rustc -q --release -p mw-worker-runtime --bin mw-worker --target-dir "$T/$v/static"
                         -- -C target-feature=+crt-static -C relocation-model=static)
                    out="$T/$v/static/release/mw-worker" ;;
            musl) cmd=(cargo build -q --release -p mw-worker-runtime --bin mw-worker --target x86_64-unknown-linux-musl --target-dir "$T/$v/musl")
                  out="$T/$v/musl/x86_64-unknown-linux-musl/release/mw-worker" ;;
            arm) cmd=(cargo build -q --release -p mw-worker-runtime --bin mw-worker --target aarch64-unknown-linux-musl --target-dir "$T/$v/arm")
                 out="$T/$v/arm/aarch64-unknown-linux-musl/release/mw-worker" ;;
            windows) cmd=(cargo build -q --release -p mw-worker-runtime --bin mw-worker --target x86_64-pc-windows-gnu --target-dir "$T/$v/windows")
                     out="$T/$v/windows/x86_64-pc-windows-gnu/release/mw-worker.exe" ;;
        esac
        /usr/bin/time -f "%e %U %S" -o "$T/$v/time" env "${env[@]}" "${cmd[@]}"
        read -r wall user sys < "$T/$v/time"
        cpu=$(awk "BEGIN { print $user + $sys }")
        total_wall=$(awk "BEGIN { print $total_wall + $wall }")
        total_cpu=$(awk "BEGIN { print $total_cpu + $cpu }")
        printf '%-9s %-8s %9.1f %9.1f %11s\n' "$v" "$w" "$wall" "$cpu" "$(stat -c %s "$out")"
    done
    printf '%-9s %-8s %9.1f %9.1f\n' "$v" "total" "$total_wall" "$total_cpu"
done
