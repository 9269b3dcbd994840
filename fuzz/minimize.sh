#!/usr/bin/env bash
# Rebuilds fuzz/minimized/<target>: the fewest inputs of fuzz/corpus/<target> (what runs found)
# and of the current fuzz/minimized/<target> that reach every code edge the committed seeds and
# regressions do not. Edges only (no hit counters, no comparison features), so the set stays
# small enough to commit and to replay under `cargo test`. Run after `make fuzz`:
#
#   fuzz/minimize.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"

ALL_TARGETS=(config_load metadata_pairs sts_response form_encode header_checks cache_entry)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then TOOLCHAIN=(+nightly); else TOOLCHAIN=(+stable); export RUSTC_BOOTSTRAP=1; fi
cargo "${TOOLCHAIN[@]}" fuzz build
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"

for t in "${TARGETS[@]}"; do
    work=$(mktemp -d)
    # Start from the committed inputs, so only what they miss is added.
    cp "seeds/$t"/* "$work/"
    [ -d "regressions/$t" ] && cp "regressions/$t"/* "$work/"
    committed=$(ls "$work")
    sources=()
    [ -d "corpus/$t" ] && sources+=("corpus/$t")
    [ -d "minimized/$t" ] && sources+=("minimized/$t")
    "$bin/$t" -merge=1 -use_counters=0 -use_cmp=0 -use_value_profile=0 "$work" "${sources[@]}" \
        >/dev/null 2>&1
    (cd "$work" && rm -f $committed)
    rm -rf "minimized/$t"
    mkdir -p "minimized/$t"
    mv "$work"/* "minimized/$t/" 2>/dev/null || true
    rmdir "$work"
    echo "$t: $(ls "minimized/$t" | wc -l) inputs, $(du -s --apparent-size --block-size=1 "minimized/$t" | cut -f1) bytes"
done
