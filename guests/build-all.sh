#!/usr/bin/env bash
# Builds every example and test handler, in every language, into
# guests/build/: Rust (<crate>.wasm), Python (<name>_python.wasm), JavaScript
# (<name>_js.wasm), C (<name>_c.wasm) and Go (<name>_go.wasm). Each language's build script
# installs its own pinned toolchain when it is missing.
# Usage: bash guests/build-all.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

for lang in rust python js c go; do
    started=$SECONDS
    echo "[guests] $lang: bash guests/$lang/build.sh"
    bash "$here/$lang/build.sh" | sed "s/^/[guests] $lang: /"
    echo "[guests] $lang: done in $((SECONDS - started)) s"
done
