#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each and prints executions and coverage per target.
# `make fuzz` calls this; docs/fuzzing.md explains the targets.
#
#   fuzz/run.sh [TARGET...]        all targets when none is named
#   FUZZ_SECONDS=30                time per target
#   FUZZ_COVERAGE=1                then replay each corpus with source coverage and print the line
#                                  and region coverage of src/ (0: skip; needs llvm-cov of
#                                  rustc's LLVM version, installed from Debian's llvm-N if absent)
#
# Installs what it needs (cargo-fuzz, pinned) unless already there. Uses the nightly toolchain
# when one is installed, else the stable one with RUSTC_BOOTSTRAP=1 (cargo fuzz passes -Z flags);
# FUZZ_TOOLCHAIN=<toolchain> chooses.
# Inputs: fuzz/seeds/<target>, fuzz/regressions/<target> and fuzz/minimized/<target> (committed,
# read only; fuzz/minimize.sh refreshes the last) and fuzz/corpus/<target> (git-ignored, grows
# from run to run). A failing input is saved under
# fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ once the bug is fixed.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(config_load metadata_pairs sts_response form_encode header_checks cache_entry typed_metadata providers_summary mcp_answers)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

toolchain=${FUZZ_TOOLCHAIN:-}
if [ -z "$toolchain" ]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain=nightly; else toolchain=stable; fi
fi
TOOLCHAIN=(+"$toolchain")
toolchain_name="$toolchain ($(rustc +"$toolchain" --version | cut -d' ' -f2))"
if [[ "$toolchain" != nightly* ]]; then
    export RUSTC_BOOTSTRAP=1
    toolchain_name+=" with RUSTC_BOOTSTRAP=1"
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
    [ -d "minimized/$t" ] && dirs+=("minimized/$t")
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
printf '%-15s %-7s %12s %8s %14s %14s %9s\n' target result execs exec/s "cov start->end" "ft start->end" corpus
printf '%s\n' "${summary[@]}"
echo "(cov: edges, ft: features, both as libFuzzer counts them over all instrumented code, serde_json"
echo " and sha2 included; start: after loading the committed inputs and corpus/ of earlier runs)"

if [ "${FUZZ_COVERAGE:-1}" = 1 ]; then
    echo
    echo "== source coverage of src/ reached by the corpora (cargo fuzz coverage, llvm-cov)"
    llvm_major=$(rustc "${TOOLCHAIN[@]}" -vV | sed -nE 's/^LLVM version: ([0-9]+).*/\1/p')
    llvm="/usr/lib/llvm-$llvm_major/bin"
    if [ ! -x "$llvm/llvm-cov" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "== installing llvm-$llvm_major (llvm-profdata and llvm-cov for rustc's LLVM)"
        { apt-get update -qq && apt-get install -y -qq "llvm-$llvm_major"; } >/dev/null 2>&1 || true
    fi
    if [ ! -x "$llvm/llvm-cov" ]; then
        echo "skipped: no llvm-cov for LLVM $llvm_major (install llvm-$llvm_major, or set FUZZ_COVERAGE=0)"
    else
        bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/coverage/$(rustc -vV | sed -n 's/^host: //p')/release"
        objects=()
        for t in "${TARGETS[@]}"; do
            dirs=("corpus/$t" "seeds/$t")
            [ -d "regressions/$t" ] && dirs+=("regressions/$t")
            [ -d "minimized/$t" ] && dirs+=("minimized/$t")
            cargo "${TOOLCHAIN[@]}" fuzz coverage --llvm-path "$llvm" "$t" "${dirs[@]}" \
                >"logs/$t.coverage.log" 2>&1 || { echo "$t: coverage run failed, see fuzz/logs/$t.coverage.log"; continue; }
            objects+=(-object "$bin_dir/$t")
        done
        if [ ${#objects[@]} -gt 0 ]; then
            profiles=()
            for t in "${TARGETS[@]}"; do
                [ -f "coverage/$t/coverage.profdata" ] && profiles+=("coverage/$t/coverage.profdata")
            done
            "$llvm/llvm-profdata" merge -sparse "${profiles[@]}" -o coverage/all.profdata
            # Lines and regions of the modules under test, all targets together.
            "$llvm/llvm-cov" report "${objects[@]:1}" -instr-profile=coverage/all.profdata \
                -ignore-filename-regex='(/\.cargo/|/\.rustup/|/rustc/|/fuzz/|src/(error|flights|stats|strategy)\.rs)' \
                | grep -v '^---' | awk '{print $1, $8, $9, $10, $2, $3, $4}' \
                | sed '1s/.*/file lines missed cover regions missed cover/' | column -t
            echo "(all targets together; per-line detail: $llvm/llvm-cov show <binary> -instr-profile=fuzz/coverage/all.profdata)"
        fi
    fi
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "failing targets: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
