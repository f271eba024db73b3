#!/usr/bin/env bash
# Builds the handler (handler.js) into {{name}}.wasm with componentize-js,
# installing the pinned tools (package-lock.json) with `npm ci` if missing,
# and writes the TypeScript declarations of the world into types/.
# Usage: bash build.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
if [ ! -x node_modules/.bin/componentize-js ]; then
    echo "installing componentize-js and jco (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
fi
npx --no-install jco guest-types wit -n handler -o types -q
# componentize-js's `http` feature backs `fetch` (through
# wasi:http/outgoing-handler, which the host links and allows per the
# handler's [http] grant); `fetch-event` (serving HTTP, an export) stays off:
# a handler exports `handle` only.
npx --no-install componentize-js handler.js --wit wit --world-name handler \
    --disable fetch-event -o {{name}}.wasm >/dev/null
echo "built {{name}}.wasm ($(stat -c %s {{name}}.wasm) bytes)"
