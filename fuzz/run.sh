#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20) on its seed corpus and prints, per
# target, the executions and whether it found anything. A finding stops the script with
# the target's name; libFuzzer leaves the input in fuzz/artifacts/<target>/.
#   bash fuzz/run.sh [SECONDS] [TARGET...]
# FUZZ_SEED=N fixes libFuzzer's seed (CI: the same search each run, up to the time limit).
# FUZZ_MODE=dev (CI) builds without optimisation, quick to build, slower to run; the default
# is an optimised build (16 codegen units rather than cargo-fuzz's 1, which took over ten
# minutes for this crate on 2 cores).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(mllp_decoder hl7_reader hl7_differential ack routes_config fhir_ingest)
bash seeds.sh
# Stable Rust: no sanitizer (-s none; the code forbids unsafe), coverage instrumentation only.
if [ "${FUZZ_MODE:-}" = dev ]; then flags=(-s none --dev); else flags=(-s none --codegen-units 16); fi
cargo fuzz build "${flags[@]}"
seed=()
[ -z "${FUZZ_SEED:-}" ] || seed=(-seed="$FUZZ_SEED")
for t in "${targets[@]}"; do
    log=$(mktemp)
    if ! cargo fuzz run "${flags[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
        -print_final_stats=1 "${seed[@]}" >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $t FOUND A FAILURE (input in fuzz/artifacts/$t/)"
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
    echo "fuzz: $t: $runs executions in ${secs}s, coverage $cov, no failure"
    rm -f "$log"
done
