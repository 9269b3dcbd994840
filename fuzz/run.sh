#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each and prints executions and coverage per target.
# `make fuzz` calls this; docs/fuzzing.md explains the targets.
#
#   fuzz/run.sh [TARGET...]        all targets when none is named
#   FUZZ_SECONDS=30                time per target
#
# Installs what it needs (cargo-fuzz, pinned) unless already there. Uses the nightly toolchain
# when one is installed, else the stable one with RUSTC_BOOTSTRAP=1 (cargo fuzz passes -Z flags).
# Inputs: fuzz/seeds/<target> and fuzz/regressions/<target> (committed, read only) and
# fuzz/corpus/<target> (git-ignored, grows from run to run). A failing input is saved under
# fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ once the bug is fixed.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(config_load metadata_pairs sts_response form_encode header_checks cache_entry)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    TOOLCHAIN=(+nightly)
    toolchain_name=nightly
else
    TOOLCHAIN=()
    export RUSTC_BOOTSTRAP=1
    toolchain_name="$(rustc --version | cut -d' ' -f1-2) with RUSTC_BOOTSTRAP=1"
fi

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi

echo "== building the fuzz targets ($toolchain_name, libFuzzer, AddressSanitizer)"
cargo "${TOOLCHAIN[@]}" fuzz build

mkdir -p logs
summary=()
failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    dirs=("corpus/$t" "seeds/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    args=(-max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1)
    [ -f "dicts/$t.dict" ] && args+=(-dict="dicts/$t.dict")
    echo "== $t: ${FUZZ_SECONDS}s"
    status=ok
    if ! cargo "${TOOLCHAIN[@]}" fuzz run "$t" "${dirs[@]}" -- "${args[@]}" >"logs/$t.log" 2>&1; then
        status=FAILED
        failed+=("$t")
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "logs/$t.log" | head -5 || true
    fi
    # libFuzzer's own numbers: edges (cov) and features (ft) after the seeds, then at the end.
    inited=$(grep -E '^#[0-9]+[[:space:]]+INITED' "logs/$t.log" | tail -1 || true)
    done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse)' "logs/$t.log" | tail -1 || true)
    field() { sed -nE "s|.*[[:space:]]$1: ?([0-9/]+).*|\\1|p" <<<"$2"; }
    execs=$(sed -nE 's/^stat::number_of_executed_units: ([0-9]+)/\1/p' "logs/$t.log" | tail -1)
    [ -n "$execs" ] || execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$done_line")
    summary+=("$(printf '%-15s %-7s %12s %8s %14s %14s %9s' "$t" "$status" "${execs:-?}" \
        "$(field exec/s "$done_line")" \
        "$(field cov "$inited") -> $(field cov "$done_line")" \
        "$(field ft "$inited") -> $(field ft "$done_line")" \
        "$(field corp "$done_line" | cut -d/ -f1)")")
done

echo
echo "== fuzzing summary (${FUZZ_SECONDS}s per target; logs in fuzz/logs/)"
printf '%-15s %-7s %12s %8s %14s %14s %9s\n' target result execs exec/s "cov (seeds->)" "ft (seeds->)" corpus
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failing targets: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
