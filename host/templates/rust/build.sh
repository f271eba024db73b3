#!/usr/bin/env bash
# Builds the handler into {{name}}.wasm, a component for wasm32-wasip2.
# Usage: bash build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
crate="$(echo "{{name}}" | tr - _)"
cp "${CARGO_TARGET_DIR:-$here/target}/wasm32-wasip2/release/$crate.wasm" "$here/{{name}}.wasm"
echo "built {{name}}.wasm ($(stat -c %s "$here/{{name}}.wasm") bytes)"
