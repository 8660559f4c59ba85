#!/usr/bin/env bash
# CI: every fuzz target for a short bounded time, starting from the committed seed
# corpus (fuzz/corpus/<target>/); fails on the first crash, with the input saved
# under fuzz/artifacts/<target>/ and the command to reproduce it printed.
#
#   fuzz/run-ci.sh                  # every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=300 fuzz/run-ci.sh proto_frame
#
# Uses nightly with AddressSanitizer when a nightly toolchain is installed, else
# stable without a sanitizer (`-s none`); both with debug assertions and overflow
# checks. The committed corpus is only read: new inputs go to a scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
seconds="${FUZZ_SECONDS:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
    build_flags=(-a)
else
    echo "no nightly toolchain: fuzzing on stable without AddressSanitizer"
    fuzz=(cargo fuzz)
    build_flags=(-a -s none)
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <("${fuzz[@]}" list)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

echo "=== building ${targets[*]}"
"${fuzz[@]}" build "${build_flags[@]}"

for target in "${targets[@]}"; do
    seeds="fuzz/corpus/$target"
    if [ ! -d "$seeds" ]; then
        echo "no seed corpus at $seeds" >&2
        exit 1
    fi
    mkdir -p "$scratch/$target"
    echo "=== $target: ${seconds}s from $(find "$seeds" -type f | wc -l) seeds"
    # -timeout: one input running this long is a bug (a hang), not slowness.
    if ! "${fuzz[@]}" run "${build_flags[@]}" "$target" "$scratch/$target" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        tail -n 60 "$scratch/$target.log" >&2
        echo "fuzz target $target failed: the input is under fuzz/artifacts/$target/;" \
            "reproduce with: ${fuzz[*]} run ${build_flags[*]} $target fuzz/artifacts/$target/<file>" >&2
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$scratch/$target.log" || tail -n 3 "$scratch/$target.log"
done
echo "=== fuzzing: no crash in ${targets[*]}"
