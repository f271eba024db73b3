#!/usr/bin/env bash
# Builds the Python handlers into guests/build/<name>_python.wasm with
# componentize-py, installing it (pinned) into guests/python/.venv if missing.
# Usage: bash guests/python/build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit="$(cd "$here/../../wit" && pwd)"
wit_http="$(cd "$here/../wit-http" && pwd)"
out="$(cd "$here/.." && pwd)/build"
version=0.25.1

venv="$here/.venv"
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $version" ]; then
    echo "installing componentize-py $version into guests/python/.venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$version"
fi

mkdir -p "$out"
# Every folder with an app.py is a handler. One that calls HTTP (imports
# `outgoing_handler`) is built against guests/wit-http's `handler-http`
# world, the handler world plus `wasi:http/outgoing-handler` (componentize-py
# generates bindings only for what the world it is given imports).
for app in "$here"/*/app.py; do
    dir="$(dirname "$app")"
    name="$(basename "$dir")"
    world=(--wit-path "$wit" --world handler)
    if grep -q 'outgoing_handler' "$app"; then
        world=(--wit-path "$wit" --wit-path "$wit_http" --world warren:handler-http/handler-http@0.2.0)
    fi
    "$venv/bin/componentize-py" "${world[@]}" \
        componentize -p "$dir" app -o "$out/${name}_python.wasm" >/dev/null
    echo "built guests/build/${name}_python.wasm ($(stat -c %s "$out/${name}_python.wasm") bytes)"
done
