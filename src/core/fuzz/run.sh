#!/bin/sh
# Runs every fuzz target for FUZZ_SECONDS (default 60) each, on nightly, and
# prints one line per target: runs, executions, corpus size, and any crash.
# A crash input lands in artifacts/<target>/; copy it into regressions/<target>/
# (replayed by `make test`, src/core/tests/fuzz_regressions.rs) with its fix.
set -u
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-jwt jwks config api_keys header_map path request revocations rls_response}"
cargo +nightly fuzz build || exit 1
summary=""
failed=""
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "== $t: ${seconds}s"
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    corpus=$(ls "corpus/$t" | wc -l)
    crash=$(sed -n 's/.*Test unit written to \(.*\)/\1/p' "$log" | tail -n 1)
    if [ "$status" -ne 0 ]; then
        failed="$failed $t"
        tail -n 40 "$log"
    fi
    line=$(printf '%-12s %5ss %12s execs %6s corpus  %s' "$t" "$seconds" "${execs:-?}" "$corpus" "${crash:-no crash}")
    echo "$line"
    summary="$summary$line\n"
done
printf '\n== fuzz summary\n%b' "$summary"
if [ -n "$failed" ]; then
    echo "crashed:$failed (inputs in src/core/fuzz/artifacts/)"
    exit 1
fi
