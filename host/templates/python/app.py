"""The {{name}} handler: takes a JSON object, adds `handled_by` (and the
`tenant` header, when the message has one), `tenant_info` (what an HTTP
service says about the tenant, when `lookup_url` is configured) and `seen`
(how many messages of that tenant it has handled, counted in the key-value
store), and publishes it as JSON to the configured destination; a body that
is not a JSON object is rejected, a failed lookup is retried.

Config keys (the `[handler.config]` table of the host's config file, and of
handler.toml for `warren test`): `handled_by` (default "{{name}}"),
`lookup_url` (default: none, no lookup; the handler's `[http]` grant must
allow it), `out_exchange` (default "", the default exchange) and
`out_routing_key` (default: the input routing key + ".out").
"""

from urllib.parse import quote

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, kv
from wit_world.imports.warren_handler_types import Level, Message, Outcome

from warren_helpers import (HttpError, NotJson, PublishRefused, ack, config, get_json, header_str,
                            json_body, publish_json, reject, retry)


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
        # Outbound HTTP, when configured: ask the tenant service about the
        # tenant. If it fails, try the whole message again later.
        lookup_url = config("lookup_url")
        if lookup_url and tenant is not None:
            url = f"{lookup_url.rstrip('/')}/tenants/{quote(tenant, safe='')}"
            try:
                obj["tenant_info"] = get_json(url)
            except HttpError as e:
                return retry(f"tenant lookup {url}: {e}")
        # The key-value store: one counter per tenant. The write is committed
        # with the message's done-marker, and only on ack, so a redelivered or
        # duplicate message counts once.
        try:
            obj["seen"] = kv.increment("count:" + (tenant or "-"), 1)
        except Err as e:
            return retry(f"key-value store: {e.value}")
        # Buffered: sent only if we return ack(). To try the message again
        # later instead, return retry("why", after_ms=5000).
        try:
            publish_json(config("out_routing_key", msg.routing_key + ".out"), obj,
                         exchange=config("out_exchange"), correlation_id=msg.correlation_id)
        except PublishRefused as e:
            return reject(f"cannot publish: {e}")
        return ack()
