"""Line 3 of the bench: the seed article's design, made correct.

Five consumer threads, each with its own pika connection and channel (the
seed shared one channel between threads) and its own Redis connection. Each
message is deduplicated on its AMQP message_id (the seed took a fresh random
UUID, so nothing was ever a duplicate), with the claim/done protocol of
DESIGN.md reduced to its two round trips:

1. claim: SET key <owner> NX PX <lease>; if the key says "done", ack without
   handling (a duplicate); if another owner holds it, requeue;
2. handle the message (here: nothing, like a handler that only acks);
3. compare-and-set the key to "done" for the dedup window (a Lua script, one
   round trip), never deleting it (the seed deleted its lock, so a later
   duplicate ran again);
4. basic.ack.

It speaks the bench's line protocol (bench/src/child.rs): `ready`, then waits
for `go`; `drained` after the first N messages; `expect L` makes it print the
publish-to-completion latencies of the L timed messages and exit.

Usage: seed_consumer.py AMQP_URL QUEUE REDIS_URL KEY_PREFIX DRAIN
       [THREADS] [PREFETCH]
"""

import os
import sys
import threading
import time

import pika
import redis

LEASE_MS = 30_000
WINDOW_S = 600  # the bench deletes its keys; the window only bounds a leak

COMPLETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
return 1
"""


def stamp(body: bytes) -> int:
    """The publish time (µs since the epoch) the bench put in the body."""
    at = body.find(b'"t":')
    if at < 0:
        return 0
    end = at + 4
    while end < len(body) and 48 <= body[end] <= 57:
        end += 1
    return int(body[at + 4:end] or b"0")


class State:
    def __init__(self, drain: int) -> None:
        self.lock = threading.Lock()
        self.handled = 0
        self.drain = drain
        self.samples: list[int] = []


def handle(body: bytes) -> None:
    """The handler: nothing, like a handler that only acks."""


def worker(url, queue, redis_url, prefix, prefetch, state, ready, go):
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=prefetch)
        r = redis.Redis.from_url(redis_url)
        r.ping()
        complete = r.register_script(COMPLETE)
        owner = os.urandom(8).hex()
    except Exception:
        ready.abort()
        raise

    def on_message(ch, method, props, body):
        key = prefix + (props.message_id or "")
        if r.set(key, owner, nx=True, px=LEASE_MS):
            handle(body)
            complete(keys=[key], args=[owner, WINDOW_S])
            ch.basic_ack(method.delivery_tag)
        elif r.get(key) == b"done":
            ch.basic_ack(method.delivery_tag)
        else:
            ch.basic_nack(method.delivery_tag, requeue=True)
            return
        t = stamp(body)
        with state.lock:
            state.handled += 1
            if state.handled == state.drain:
                print("drained", flush=True)
            if t:
                state.samples.append(time.time_ns() // 1000 - t)

    ready.wait()
    go.wait()
    ch.basic_consume(queue, on_message, auto_ack=False)
    ch.start_consuming()


def main() -> None:
    url, queue, redis_url, prefix, drain = sys.argv[1:6]
    threads = int(sys.argv[6]) if len(sys.argv) > 6 else 5
    prefetch = int(sys.argv[7]) if len(sys.argv) > 7 else 100
    state = State(int(drain))
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    for _ in range(threads):
        threading.Thread(
            target=worker,
            args=(url, queue, redis_url, prefix, prefetch, state, ready, go),
            daemon=True,
        ).start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        sys.exit("seed consumer: a worker could not connect")
    print("ready", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if line == "go":
            go.set()
        elif line.startswith("expect "):
            want = int(line.split()[1])
            while True:
                with state.lock:
                    if len(state.samples) >= want:
                        samples = list(state.samples)
                        break
                time.sleep(0.01)
            print("latencies " + ",".join(map(str, samples)), flush=True)
            os._exit(0)
    os._exit(1)


if __name__ == "__main__":
    main()
