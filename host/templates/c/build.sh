#!/usr/bin/env bash
# Builds the handler (handler.c, with warren_helpers.c and json.c) into {{name}}.wasm: clang compiles it with
# the wit-bindgen C bindings for wasm32-wasi against wasi-libc, and the
# componentize tool (componentize/, Rust) makes the core module a component
# with the WASI preview-1 adapter. Installs the pinned Debian 12 packages if
# clang-14 is missing (other systems: any clang with wasm32-wasi and a
# wasi-libc sysroot will do; adjust CC and the flags below).
# Usage: bash build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

packages=(clang-14=1:14.0.6-12 lld-14=1:14.0.6-12 libclang-rt-14-dev-wasm32=1:14.0.6-12
          wasi-libc=0.0~git20220510.9886d3d-2)
if ! command -v clang-14 >/dev/null || ! command -v wasm-ld-14 >/dev/null \
        || ! dpkg -s wasi-libc >/dev/null 2>&1; then
    echo "installing ${packages[*]}"
    sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

cargo build --quiet --release --manifest-path componentize/Cargo.toml
tool="${CARGO_TARGET_DIR:-$here/componentize/target}/release/componentize"
mkdir -p .build
# The handler world plus wasi:http/outgoing-handler (wit/http/).
"$tool" bindings wit .build/bindings wit/http handler-http
clang-14 --target=wasm32-wasi -mexec-model=reactor -O2 -std=c11 -Wall -Wextra \
    -fuse-ld=lld -Wl,--strip-all -I .build/bindings \
    handler.c warren_helpers.c json.c .build/bindings/handler_http.c .build/bindings/handler_http_component_type.o \
    -o .build/{{name}}.core.wasm
"$tool" component .build/{{name}}.core.wasm {{name}}.wasm
echo "built {{name}}.wasm ($(stat -c %s {{name}}.wasm) bytes)"
