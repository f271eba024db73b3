#!/usr/bin/env bash
# Builds the JavaScript handlers into guests/build/<name>_js.wasm with
# componentize-js, installing the pinned tools (package-lock.json) with
# `npm ci` if missing, and regenerates the TypeScript declarations in types/.
# Usage: bash guests/js/build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(cd "$here/.." && pwd)/build"
cd "$here"

if ! node -e 'process.exit(require("./node_modules/@bytecodealliance/componentize-js/package.json").version === "0.23.0" ? 0 : 1)' 2>/dev/null; then
    echo "installing componentize-js and jco (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
fi
npx --no-install jco guest-types ../../wit -n handler -o types -q
echo "generated guests/js/types/ (TypeScript declarations of the handler world, jco guest-types)"

mkdir -p "$out"
# Every folder with a <folder>.js is a handler. The host links WASI p2 without
# wasi:http, so the http features are left out.
for src in */*.js; do
    name="$(dirname "$src")"
    [ "$src" = "$name/$name.js" ] || continue
    npx --no-install componentize-js "$src" --wit ../../wit --world-name handler \
        --disable http fetch-event -o "$out/${name}_js.wasm" >/dev/null
    echo "built guests/build/${name}_js.wasm ($(stat -c %s "$out/${name}_js.wasm") bytes)"
done
