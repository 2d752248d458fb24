#!/bin/bash
# fuzz/run.sh [SECONDS] [TARGET...]: builds the fuzz targets with libFuzzer's coverage
# instrumentation and runs each for SECONDS (default 15), seeded from fuzz/corpus/TARGET.
# New inputs go to a scratch corpus, so the kept corpus only changes on purpose. A crash,
# a failed assertion or a timeout fails the run and leaves the input in fuzz/artifacts/.
#
# `cargo fuzz run TARGET` works as well on a nightly toolchain; this script needs only the
# stable one (the coverage passes are stable codegen options).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-15}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dollar reference ostree_ref tar_path manifest container_name)

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# With an explicit target the flags reach only the fuzzed code, not build scripts.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --bins --quiet --target "$host"
bin=target/$host/release

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p artifacts
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "$scratch/$t"
    echo "fuzz: $t for ${secs}s"
    "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 \
        -artifact_prefix="artifacts/$t-" -print_final_stats=0 \
        "$scratch/$t" "corpus/$t" 2>"$scratch/$t.log" || {
        tail -30 "$scratch/$t.log" >&2
        echo "fuzz: $t found a problem; the input is in fuzz/artifacts/" >&2
        exit 1
    }
    grep -E "^(#[0-9]+ *DONE|Done [0-9]+ runs)" "$scratch/$t.log" | tail -1 || true
done
