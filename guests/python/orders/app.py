"""The orders handler, in Python: outbound HTTP and the key-value store in
one small handler. The same handler exists in Rust, JavaScript and C
(guests/rust/orders, guests/js/orders, guests/c/orders);
tests/tests/orders.rs runs each against a price service it starts.

The body is an order, `{"order_id": "o-1", "customer": "alice", "sku":
"A-1", "qty": 2}`. The handler asks `<price_url>/price/<sku>` for the price
(`{"sku": "A-1", "price_cents": 250}`), adds `qty * price_cents` to the
counter `total:<customer>` and publishes the order with `price_cents`,
`amount_cents` and `customer_total_cents` added.

- The price service unreachable, or answering anything but 2xx with a
  price: retry, with a reason naming the URL.
- A body that is not an order: reject (dead-letter).
- The counter is written only when the handler acks, together with the
  message's dedup marker: an order delivered twice counts once.

Config: `price_url` (the `[handler.http] allow` list must grant it),
`out_exchange` (default ""), `out_routing_key` (default: the input routing
key + ".out").

Built against the world `handler-http` (guests/wit-http): the handler
world plus `wasi:http/outgoing-handler`, which `http_get` below calls.
"""

import json
import re
from urllib.parse import urlsplit

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, kv, outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.warren_handler_types import (
    Headers,
    Message,
    Outbound,
    Outcome,
    Outcome_Ack,
    Outcome_Reject,
    Outcome_Retry,
    Retry,
)
from wit_world.imports.wasi_http_types import Fields, OutgoingRequest, Scheme_Http, Scheme_Https

SKU = re.compile(r"[A-Za-z0-9._-]+")


class NotAnOrder(ValueError):
    pass


class PriceError(Exception):
    pass


def http_get(url: str) -> tuple[int, bytes]:
    """GET `url`: the status and the whole body. A request the host refuses
    or that fails raises `Err` whose value is an `ErrorCode_*`. The `with`
    blocks drop each resource before the one it came from, as WASI asks."""
    parts = urlsplit(url)
    request = OutgoingRequest(Fields())
    request.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query(parts.path + (f"?{parts.query}" if parts.query else ""))
    with outgoing_handler.handle(request, None) as future:
        with future.subscribe() as ready:
            ready.block()
        result = future.get().value  # ready now, and asked once: always Ok
        if isinstance(result, Err):
            raise result
        with result.value as response, response.consume() as body, body.stream() as stream:
            data = bytearray()
            while True:
                try:
                    data += stream.blocking_read(64 * 1024)
                except Err as e:
                    if isinstance(e.value, StreamError_Closed):
                        return response.status(), bytes(data)
                    raise


def parse(body: bytes) -> dict:
    try:
        order = json.loads(body)
    except ValueError as e:  # UnicodeDecodeError is a ValueError
        raise NotAnOrder(str(e)) from None
    if not isinstance(order, dict):
        raise NotAnOrder("the body is not a JSON object")
    for key in ("order_id", "customer", "sku"):
        if not isinstance(order.get(key), str) or not order[key]:
            raise NotAnOrder(f"{key} must be a non-empty string")
    if not SKU.fullmatch(order["sku"]):
        raise NotAnOrder("sku may hold only letters, digits, '-', '_' and '.'")
    qty = order.get("qty")
    if type(qty) is not int or qty <= 0:
        raise NotAnOrder("qty must be a positive integer")
    return order


def price(sku: str) -> int:
    """`GET <price_url>/price/<sku>` and its `price_cents`."""
    base = host.config("price_url")
    if base is None:
        raise PriceError("the config has no price_url")
    url = f"{base.rstrip('/')}/price/{sku}"
    try:
        status, body = http_get(url)
    except Err as e:
        raise PriceError(f"price service {url}: {type(e.value).__name__.removeprefix('ErrorCode_')}") from None
    if not 200 <= status < 300:
        raise PriceError(f"price service answered {status} for {url}")
    try:
        cents = json.loads(body)["price_cents"]
    except (ValueError, TypeError, KeyError):
        cents = None
    if type(cents) is not int or cents < 0:
        raise PriceError(f"price service answered no price_cents for {url}")
    return cents


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> Outcome:
        try:
            order = parse(msg.body)
        except NotAnOrder as e:
            return Outcome_Reject(f"not an order: {e}")
        try:
            cents = price(order["sku"])
        except PriceError as e:
            return Outcome_Retry(Retry(delay_ms=None, reason=str(e)))
        amount = order["qty"] * cents
        try:
            # What the message sees includes its own increment; the store
            # applies it only if this returns Ack.
            total = kv.increment(f"total:{order['customer']}", amount)
        except Err as e:
            return Outcome_Retry(Retry(delay_ms=None, reason=f"key-value store: {e.value}"))

        order.update(price_cents=cents, amount_cents=amount, customer_total_cents=total)
        exchange = host.config("out_exchange")
        routing_key = host.config("out_routing_key")
        out = Outbound(
            exchange="" if exchange is None else exchange,
            routing_key=msg.routing_key + ".out" if routing_key is None else routing_key,
            body=json.dumps(order, separators=(",", ":")).encode("utf-8"),
            content_type="application/json",
            content_encoding=None,
            correlation_id=msg.correlation_id,
            type=None,
            headers=Headers(entries=[], nested=[]),
        )
        try:
            host.publish(out)
        except Err as e:
            return Outcome_Reject(f"cannot publish: {e.value.value}")
        return Outcome_Ack()
