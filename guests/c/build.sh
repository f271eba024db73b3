#!/usr/bin/env bash
# Builds the C handlers into guests/build/<name>_c.wasm: clang compiles each
# handler folder (with the shared common/json.c and the generated bindings) for
# wasm32-wasi against wasi-libc, and the componentize tool (componentize/)
# turns the core module into a component with the WASI preview-1 adapter.
# Installs the pinned Debian packages if clang-14 is missing.
# Usage: bash guests/c/build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit="$(cd "$here/../../wit" && pwd)"
wit_http="$(cd "$here/../wit-http" && pwd)"
out="$(cd "$here/.." && pwd)/build"
work="$here/.build"

# Debian 12's clang, lld and wasi-libc, pinned.
packages=(clang-14=1:14.0.6-12 lld-14=1:14.0.6-12 libclang-rt-14-dev-wasm32=1:14.0.6-12
          wasi-libc=0.0~git20220510.9886d3d-2)
if ! command -v clang-14 >/dev/null || ! command -v wasm-ld-14 >/dev/null \
        || ! dpkg -s wasi-libc >/dev/null 2>&1; then
    echo "installing ${packages[*]}"
    sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# The componentize tool: wit-bindgen's C generator and wit-component.
cargo build --quiet --release --manifest-path "$here/componentize/Cargo.toml"
tool="${CARGO_TARGET_DIR:-$here/componentize/target}/release/componentize"
mkdir -p "$work" "$out"
"$tool" bindings "$wit" "$work/bindings"
echo "generated guests/c/.build/bindings/ (wit-bindgen 0.46 C bindings of the handler world)"
# The handler world plus wasi:http/outgoing-handler (guests/wit-http), for a
# handler that calls HTTP: it includes handler_http.h instead of handler.h.
"$tool" bindings "$wit" "$work/bindings-http" "$wit_http" handler-http
echo "generated guests/c/.build/bindings-http/ (the same, of the handler-http world)"

# Every folder with a <folder>.c is a handler.
for src in "$here"/*/*.c; do
    name="$(basename "$(dirname "$src")")"
    [ "$src" = "$here/$name/$name.c" ] || continue
    bindings=("$work/bindings" "$work/bindings/handler.c" "$work/bindings/handler_component_type.o")
    if grep -q '#include "handler_http.h"' "$src"; then
        bindings=("$work/bindings-http" "$work/bindings-http/handler_http.c"
                  "$work/bindings-http/handler_http_component_type.o")
    fi
    # A reactor: no main, the host calls the exported `handle`.
    clang-14 --target=wasm32-wasi -mexec-model=reactor -O2 -std=c11 -Wall -Wextra -Werror \
        -fuse-ld=lld -Wl,--strip-all \
        -I "${bindings[0]}" -I "$here/common" \
        "$src" "$here/common/json.c" "${bindings[1]}" "${bindings[2]}" \
        -o "$work/$name.core.wasm"
    "$tool" component "$work/$name.core.wasm" "$out/${name}_c.wasm"
    echo "built guests/build/${name}_c.wasm ($(stat -c %s "$out/${name}_c.wasm") bytes)"
done
