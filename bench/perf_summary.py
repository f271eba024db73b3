"""Where warren's CPU time goes per message, from a `perf record` of a drain.

`bench/run --lines 5 --perf FILE` records warren (dwarf call graphs) while it
drains line 5's queue; this script reads FILE with `perf script` and prints
two markdown tables:

1. every sample attributed to one stage of the message's path, by the first
   rule below that matches any frame of its stack (so a futex wake done for a
   publish counts as publishing), in % of the process's CPU and in µs per
   message;
2. the top functions by self time (the leaf frame).

Stacks that the 16 KiB dwarf copy truncated still carry their leaf frames,
which the rules also match (wasmtime, lapin, redis, tokio names).

The profiler itself slows the process, so the µs column can be scaled to
the CPU per message measured without it (the table's figure for line 5):
pass it as SCALE_US.

Usage: python3 bench/perf_summary.py FILE MESSAGES [TOP [SCALE_US]]
"""

import collections
import re
import subprocess
import sys

# (stage, rule): the first rule that matches names the stage. A rule is a
# regex that some frame must match, "comm:NAME" for a thread name, or
# "blocking-thread:" for a blocking-pool thread that is not a tokio worker
# (tokio starts its workers on the blocking pool too).
RULES = [
    ("sandbox: instantiate a fresh instance",
     r"InstancePre<.*>::instantiate|allocate_instance|Instance::new|HandlerPre<"),
    ("sandbox: reset the slot after the message (pagemap scan, decommit)",
     r"pagemap|MemoryPool::deallocate|deallocate_many|decommit|madvise"),
    ("sandbox: the guest call (handle, host imports, lifting/lowering)",
     r"call_handle|Func::call|TypedFunc|call_raw|lower|lift|warren::runtime::state"),
    ("sandbox: the rest of Runtime::run (store, limits, stdio, results)",
     r"warren::runtime::|wasmtime|cranelift"),
    ("dedup: Redis claim and done-marker (client side)",
     r"redis::|warren::dedup::|combine::"),
    ("message conversion (to the guest's record, output properties, output ids)",
     r"warren::pipeline::convert|message_for_guest|outbound_properties|output_message_id|uuid::"),
    # The publisher's calls are inlined into the batch's future, so its
    # frame is often `run_and_publish` alone; the sandbox rules above have
    # already taken that frame's stacks that run a guest.
    ("outputs: publish and wait for the confirm",
     r"warren::amqp::publisher::|warren::pipeline::outputs::|publish_outputs|run_and_publish|basic_publish|PublisherConfirm"),
    ("acks: the batcher and basic.ack",
     r"ack_batcher|warren::amqp::consumer::flush|lapin::acker"),
    ("deliveries: the consumer stream",
     r"ConsumerChannel::next|lapin::consumer::|flume::async::RecvFut"),
    ("AMQP I/O thread (socket reads and writes, frame parsing)",
     "comm:lapin-io-loop"),
    ("hand-off to the blocking pool: waking a thread (spawn_blocking)",
     r"spawn_blocking|Spawner::spawn_task"),
    ("hand-off to the blocking pool: the thread parking and waking",
     "blocking-thread:"),
    # `tracing::instrument::Instrumented` is the wrapper of an instrumented
    # future (the whole of `Pipeline::run`): its frame is on every stack of
    # the batch's task, and code inlined into its poll is the pipeline's.
    ("metrics and tracing",
     r"prometheus_client|warren::metrics|tracing::(?!instrument::Instrumented)|tracing_core|tracing_subscriber"),
    ("tasks and timers (batch spawns, lease renewal, Redis call deadlines)",
     r"tokio::task::spawn|keep_renewed|tokio::time::"),
    ("the rest of the pipeline (Pipeline::run, consume_loop)",
     r"warren::pipeline|warren::server"),
    ("epoch ticker thread (wakes every 5 ms)", "comm:warren-epoch"),
    ("tokio workers: park/unpark (epoll, futex), task polling",
     r"tokio::runtime|mio::|epoll_wait"),
]


def samples(path):
    """Yields (thread name, period, [frame symbols, leaf first])."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,period,ip,sym", "--no-inline"],
        check=True, capture_output=True, text=True,
    ).stdout
    for block in out.split("\n\n"):
        lines = [l.strip() for l in block.strip().split("\n") if l.strip()]
        if not lines:
            continue
        head = lines[0].split()
        try:
            comm, period = " ".join(head[:-1]), int(head[-1])
        except ValueError:
            continue
        frames = [(l.split(None, 1) + ["?"])[1] for l in lines[1:]]
        yield comm, period, frames


def stage(comm, frames):
    for name, rule in RULES:
        if rule.startswith("comm:"):
            if comm == rule[5:]:
                return name
        elif rule == "blocking-thread:":
            if any("blocking::pool::Inner::run" in f for f in frames) and not any(
                "multi_thread::worker" in f for f in frames
            ):
                return name
        elif any(re.search(rule, f) for f in frames):
            return name
    return "other (allocator, kernel, runtime glue not matched above)"


def main():
    path, messages = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    scale = float(sys.argv[4]) if len(sys.argv) > 4 else None
    by_stage = collections.Counter()
    by_leaf = collections.Counter()
    total = 0
    for comm, period, frames in samples(path):
        total += period
        by_stage[stage(comm, frames)] += period
        leaf = frames[0] if frames else "?"
        by_leaf[re.sub(r"\+0x[0-9a-f]+$", "", leaf)] += period
    per_msg = total / 1000 / messages
    print(f"{total / 1e9:.2f} s of CPU sampled for {messages} messages: "
          f"{per_msg:.1f} µs per message under the profiler")
    if scale:
        print(f"(µs/msg below: the share of {scale:.1f} µs, measured without it)")
        per_msg = scale
    print()
    print("| stage | share | µs/msg |\n|---|---:|---:|")
    for name, p in by_stage.most_common():
        print(f"| {name} | {100 * p / total:.1f}% | {per_msg * p / total:.1f} |")
    print(f"\n| top {top} functions by self time | share |\n|---|---:|")
    for name, p in by_leaf.most_common(top):
        print(f"| `{name[:90]}` | {100 * p / total:.1f}% |")


if __name__ == "__main__":
    main()
