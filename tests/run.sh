#!/usr/bin/env bash
# The test command: services up, guests built, then every test of the
# workspace against the real RabbitMQ and Redis on loopback.
#   bash tests/run.sh [nextest filters...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash .ci/setup.sh
echo "[tests] building guests (Rust, Python, JavaScript, C, Go)"
bash guests/build-all.sh
echo "[tests] building warren"
cargo build --workspace --bins
echo "[tests] running"
cargo nextest run --workspace --no-fail-fast "$@"
