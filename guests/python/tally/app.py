"""The tally handler, in Python: the key-value store from componentize-py.
The same handler exists in JavaScript (guests/js/tally) and C
(guests/c/tally); tests/tests/kv_polyglot.rs runs all three.

The body names a counter. The handler adds 1 to it (`kv.increment`), reads
the key `last` (the counter the previous message named, or nothing), sets
`last` to this counter, and publishes `<counter>=<value> last=<previous>` to
`out_routing_key`. The writes are committed only when the handler acks,
with the message's dedup done-marker: a duplicate counts nothing.

A key-value call that fails raises `Err` whose `value` is a `KvError_*`
(`LimitExceeded`, `InvalidKey`, `NotACounter`, `Unavailable`), each with a
text; the handler retries on it.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, kv
from wit_world.imports.types import (
    Headers,
    Message,
    Outbound,
    Outcome,
    Outcome_Ack,
    Outcome_Retry,
    Retry,
)


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> Outcome:
        counter = msg.body.decode("utf-8", errors="replace")
        try:
            n = kv.increment(counter, 1)
            last = kv.get("last")
            kv.set("last", counter.encode("utf-8"), None)
        except Err as e:
            return Outcome_Retry(Retry(delay_ms=None, reason="key-value store: " + str(e.value)))
        previous = "nil" if last is None else last.decode("utf-8", errors="replace")
        routing_key = host.config("out_routing_key")
        out = Outbound(
            exchange="",
            routing_key=msg.routing_key + ".out" if routing_key is None else routing_key,
            body=f"{counter}={n} last={previous}".encode("utf-8"),
            content_type=None,
            content_encoding=None,
            correlation_id=msg.message_id,
            type=None,
            headers=Headers(entries=[], nested=[]),
        )
        try:
            host.publish(out)
        except Err as e:
            return Outcome_Retry(Retry(delay_ms=None, reason="cannot publish: " + e.value.value))
        return Outcome_Ack()
