"""The {{name}} handler: publishes each message's body, with its properties,
to the configured destination and acks; rejects an empty body.

Config keys (the `[handler.config]` table of the host's config file):
`out_exchange` (default "", the default exchange) and `out_routing_key`
(default: the input routing key + ".out").
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    Headers,
    Level,
    Message,
    Outbound,
    Outcome,
    Outcome_Ack,
    Outcome_Reject,
)


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> Outcome:
        if not msg.body:
            # Never try again: the message goes to the dead-letter queue.
            return Outcome_Reject("empty body")
        host.log(Level.INFO, f"got {len(msg.body)} bytes")
        exchange = host.config("out_exchange")
        routing_key = host.config("out_routing_key")
        out = Outbound(
            exchange="" if exchange is None else exchange,
            routing_key=msg.routing_key + ".out" if routing_key is None else routing_key,
            body=msg.body,
            content_type=msg.content_type,
            content_encoding=msg.content_encoding,
            correlation_id=msg.correlation_id,
            type=msg.type,
            headers=Headers(entries=[], nested=[]),
        )
        # Buffered: sent only if we return Outcome_Ack. To try the message
        # again later instead, return Outcome_Retry(Retry(delay_ms, reason)).
        try:
            host.publish(out)
        except Err as e:
            # e.value is a PublishError_NotAllowed or _LimitExceeded; both
            # carry the host's explanation in .value.
            return Outcome_Reject(f"cannot publish: {e.value.value}")
        return Outcome_Ack()
