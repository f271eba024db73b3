"""The {{name}} handler: takes a JSON object, adds `handled_by` (and the
`tenant` header, when the message has one), and publishes it as JSON to the
configured destination; a body that is not a JSON object is rejected.

Config keys (the `[handler.config]` table of the host's config file, and of
handler.toml for `warren test`): `handled_by` (default "{{name}}"),
`out_exchange` (default "", the default exchange) and `out_routing_key`
(default: the input routing key + ".out").
"""

import wit_world
from wit_world.imports import host
from wit_world.imports.types import Level, Message, Outcome

from warren_helpers import (NotJson, PublishRefused, ack, config, header_str, json_body,
                            publish_json, reject)


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> Outcome:
        host.log(Level.INFO, f"got {len(msg.body)} bytes")
        try:
            obj = json_body(msg)
        except NotJson as e:
            # Never try again: the message goes to the dead-letter queue.
            return reject(f"body is not a JSON object: {e}")
        if not isinstance(obj, dict):
            return reject("body is not a JSON object: it is " + type(obj).__name__)
        obj["handled_by"] = config("handled_by", "{{name}}")
        tenant = header_str(msg, "tenant")
        if tenant is not None:
            obj["tenant"] = tenant
        # Buffered: sent only if we return ack(). To try the message again
        # later instead, return retry("why", after_ms=5000).
        try:
            publish_json(config("out_routing_key", msg.routing_key + ".out"), obj,
                         exchange=config("out_exchange"), correlation_id=msg.correlation_id)
        except PublishRefused as e:
            return reject(f"cannot publish: {e}")
        return ack()
