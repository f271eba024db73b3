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
# Every folder with a <folder>.js is a handler. componentize-js's `http`
# feature is what backs `fetch` (through wasi:http/outgoing-handler, which the
# host links and allows per `[handler.http]`); it is enabled only for a
# handler whose source calls `fetch(`, so every other module imports no
# wasi:http at all. `fetch-event` (serving HTTP, an export) is always off: a
# handler exports `handle` only.
for src in */*.js; do
    name="$(dirname "$src")"
    [ "$src" = "$name/$name.js" ] || continue
    disable=(http fetch-event)
    if grep -q 'fetch(' "$src"; then
        disable=(fetch-event)
    fi
    npx --no-install componentize-js "$src" --wit ../../wit --world-name handler \
        --disable "${disable[@]}" -o "$out/${name}_js.wasm" >/dev/null
    echo "built guests/build/${name}_js.wasm ($(stat -c %s "$out/${name}_js.wasm") bytes)"
done
