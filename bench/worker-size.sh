#!/usr/bin/env bash
# Size of the static mw-worker (what every Condor job and BOINC host downloads) under
# release-profile choices, each a clean build in its own target directory under
# ${CARGO_TARGET_DIR:-target}/sizes/ (so it never disturbs the normal builds).
# Measures the x86_64 glibc static build (`cargo static-worker`'s command) and the musl one;
# installs nothing (the musl target must be installed: rustup target add x86_64-unknown-linux-musl).
# Usage: bench/worker-size.sh [variant...]; variants: base strip strip-abort strip-abort-lto
#        strip-abort-lto-cu1 strip-abort-lto-cu1-s strip-abort-lto-cu1-z
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/sizes
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(base strip strip-abort strip-abort-lto strip-abort-lto-cu1 strip-abort-lto-cu1-s strip-abort-lto-cu1-z)
printf '%-24s %14s %14s\n' "variant" "glibc static" "musl"
for v in "${variants[@]}"; do
    env=()
    case "$v" in *strip*) env+=(CARGO_PROFILE_RELEASE_STRIP=symbols) ;; esac
    case "$v" in *abort*) env+=(CARGO_PROFILE_RELEASE_PANIC=abort) ;; esac
    case "$v" in *lto*) env+=(CARGO_PROFILE_RELEASE_LTO=fat) ;; esac
    case "$v" in *cu1*) env+=(CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1) ;; esac
    case "$v" in *-s) env+=(CARGO_PROFILE_RELEASE_OPT_LEVEL=s) ;; *-z) env+=(CARGO_PROFILE_RELEASE_OPT_LEVEL=z) ;; esac
    env "${env[@]}" cargo rustc -q --release -p mw-worker-runtime --bin mw-worker --target-dir "$T/$v-glibc" \
        -- -C target-feature=+crt-static -C relocation-model=static
    env "${env[@]}" cargo build -q --release -p mw-worker-runtime --bin mw-worker \
        --target x86_64-unknown-linux-musl --target-dir "$T/$v-musl"
    g=$(stat -c %s "$T/$v-glibc/release/mw-worker")
    m=$(stat -c %s "$T/$v-musl/x86_64-unknown-linux-musl/release/mw-worker")
    printf '%-24s %14s %14s\n' "$v" "$g" "$m"
done
