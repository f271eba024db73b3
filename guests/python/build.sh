#!/usr/bin/env bash
# Builds the Python handlers into guests/build/<name>_python.wasm with
# componentize-py, installing it (pinned) into guests/python/.venv if missing.
# Usage: bash guests/python/build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit="$(cd "$here/../../wit" && pwd)"
out="$(cd "$here/.." && pwd)/build"
version=0.25.1

venv="$here/.venv"
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $version" ]; then
    echo "installing componentize-py $version into guests/python/.venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$version"
fi

mkdir -p "$out"
# Every folder with an app.py is a handler.
for app in "$here"/*/app.py; do
    dir="$(dirname "$app")"
    name="$(basename "$dir")"
    "$venv/bin/componentize-py" --wit-path "$wit" --world handler \
        componentize -p "$dir" app -o "$out/${name}_python.wasm" >/dev/null
    echo "built guests/build/${name}_python.wasm ($(stat -c %s "$out/${name}_python.wasm") bytes)"
done
