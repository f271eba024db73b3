#!/usr/bin/env bash
# Builds the handler (app.py) into {{name}}.wasm with componentize-py,
# installing it (pinned) into .venv if missing.
# Usage: bash build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
version=0.25.1
if [ "$(.venv/bin/componentize-py --version 2>/dev/null)" != "componentize-py $version" ]; then
    echo "installing componentize-py $version into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "componentize-py==$version"
fi
# The handler world plus wasi:http/outgoing-handler (wit/http/): componentize-py
# generates bindings only for what the world it is given imports.
.venv/bin/componentize-py --wit-path wit --wit-path wit/http --world warren:handler-http/handler-http@0.2.0 \
    componentize app -o {{name}}.wasm >/dev/null
echo "built {{name}}.wasm ($(stat -c %s {{name}}.wasm) bytes)"
