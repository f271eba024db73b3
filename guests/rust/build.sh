#!/usr/bin/env bash
# Builds the Rust example and test handlers into guests/build/*.wasm.
# Usage: bash guests/rust/build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(cd "$here/.." && pwd)/build"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cd "$here"
cargo build --release --target wasm32-wasip2
target_dir="${CARGO_TARGET_DIR:-$here/target}"
mkdir -p "$out"
# Every workspace member is a cdylib named after its crate.
for manifest in */Cargo.toml; do
    crate="$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1 | tr - _)"
    cp "$target_dir/wasm32-wasip2/release/$crate.wasm" "$out/$crate.wasm"
    echo "built guests/build/$crate.wasm ($(stat -c %s "$out/$crate.wasm") bytes)"
done
