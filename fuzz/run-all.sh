#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 60) from the committed seeds and prints
# one line per target: executions, and whether it crashed. Run from the repository root:
#   bash fuzz/run-all.sh 60
# Needs `cargo install cargo-fuzz`; uses the stable toolchain through RUSTC_BOOTSTRAP.
set -u
secs="${1:-60}"
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/logs
status=0
for target in $(cargo fuzz list); do
    mkdir -p "fuzz/corpus/$target"
    log="fuzz/logs/$target.log"
    # New inputs go to corpus/<target> (gitignored); seeds/<target> is read only.
    cargo fuzz run -a "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    if [ "$rc" -eq 0 ]; then result="no crash"; else result="FAILED (exit $rc, see $log)"; status=1; fi
    echo "$target: ${secs}s, ${execs:-?} executions, $result"
done
exit "$status"
