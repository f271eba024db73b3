#!/usr/bin/env bash
# The demo: RabbitMQ and Redis up (installed when missing), the echo guest
# built, `warren run` on examples/demo.toml, a few hundred orders published
# (some twice), what came out and what dedup skipped, then a clean stop.
#   bash examples/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash .ci/setup.sh
echo "[demo] building the echo guest"
bash guests/rust/build.sh
echo "[demo] building warren and the demo client"
cargo build -p warren -p warren-examples
bin="${CARGO_TARGET_DIR:-target}/debug"

log="$(mktemp -t warren-demo.XXXXXX.log)"
echo "[demo] starting: warren run --config examples/demo.toml (log: $log)"
"$bin/warren" check guests/build/echo.wasm
RUST_LOG=info "$bin/warren" run --config examples/demo.toml 2>"$log" &
warren_pid=$!
trap 'kill "$warren_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q "consuming" "$log" && break
    kill -0 "$warren_pid" 2>/dev/null || { cat "$log"; echo "[demo] warren exited" >&2; exit 1; }
    sleep 0.1
done
grep -q "consuming" "$log" || { cat "$log"; echo "[demo] warren did not start consuming" >&2; exit 1; }

"$bin/demo" 300 50

echo "[demo] stopping warren (SIGTERM)"
kill -TERM "$warren_pid"
wait "$warren_pid" && status=0 || status=$?
trap - EXIT
echo "[demo] warren exited with status $status; its log:"
sed -e 's/^/  /' "$log" | grep -v "DEBUG" | tail -n 12
exit "$status"
