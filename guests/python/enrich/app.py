"""The enrich handler, in Python. The same handler exists in Rust, JavaScript
and C, and all four behave alike to the byte; tests/tests/polyglot.rs holds
them to it.

It parses the body as a JSON object, adds the config field `field` (default
`enriched`) set to the config string `value` (default empty) and `attempt` set
to the delivery attempt, publishes the object as JSON and acks. A body that is
not a JSON object is rejected (dead-lettered) with a reason that starts with
`body is not a JSON object: `.

Config keys: `field`, `value`, `out_exchange` (default ""), `out_routing_key`
(default: the input routing key + ".out").
"""

import gc
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    Headers,
    Message,
    Outbound,
    Outcome,
    Outcome_Ack,
    Outcome_Reject,
)

NOT_AN_OBJECT = "body is not a JSON object: "

# What a JSON value that is not an object is, as the reject reason says it.
KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
         str: "a string", list: "an array"}


def _no_constants(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON (and the other three
    # handlers) does not.
    raise ValueError(f"invalid number {name}")


def _warm_up() -> None:
    # Runs once when the component is built: componentize-py snapshots the
    # initialised interpreter, so what Python does the first time (creating
    # the decoder and encoder, interning, allocating the first objects of
    # each type) is in the snapshot instead of in every fresh instance's
    # first call. It calls no import and keeps no state the handler reads.
    obj = json.loads(b'{"id":"warm-up","n":1}'.decode("utf-8"), parse_constant=_no_constants)
    obj["attempt"] = 1
    json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        json.loads("not json", parse_constant=_no_constants)
    except ValueError as e:
        str(e)
    Outbound(exchange="", routing_key="", body=b"", content_type="application/json",
             content_encoding=None, correlation_id=None, type=None,
             headers=Headers(entries=[], nested=[]))
    Outcome_Ack()


_warm_up()
# Everything allocated so far (the interpreter, the modules, the above) is
# in the snapshot every instance starts from. Freezing it keeps the garbage
# collector from ever walking it again: a collection in a fresh instance
# would otherwise write the GC header of every object in the snapshot, a
# copy-on-write page fault per page of the heap, on the first call.
gc.collect()
gc.freeze()


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> Outcome:
        try:
            obj = json.loads(msg.body.decode("utf-8"), parse_constant=_no_constants)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            return Outcome_Reject(NOT_AN_OBJECT + str(e))
        if not isinstance(obj, dict):
            return Outcome_Reject(NOT_AN_OBJECT + "it is " + KINDS[type(obj)])

        field = host.config("field")
        obj["enriched" if field is None else field] = host.config("value") or ""
        obj["attempt"] = msg.attempt
        try:
            # ensure_ascii=False keeps text as UTF-8, and makes a lone surrogate
            # (which json.loads lets through) fail here, as it fails to parse
            # in the other languages.
            body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError as e:
            return Outcome_Reject(NOT_AN_OBJECT + "a string holds a lone surrogate: " + str(e))

        exchange = host.config("out_exchange")
        routing_key = host.config("out_routing_key")
        out = Outbound(
            exchange="" if exchange is None else exchange,
            routing_key=msg.routing_key + ".out" if routing_key is None else routing_key,
            body=body,
            content_type="application/json",
            content_encoding=None,
            correlation_id=msg.correlation_id,
            type=None,
            headers=Headers(entries=[], nested=[]),
        )
        try:
            host.publish(out)
        except Err as e:
            # e.value is a PublishError_NotAllowed or _LimitExceeded; both
            # carry the host's explanation.
            return Outcome_Reject("cannot publish: " + e.value.value)
        return Outcome_Ack()
