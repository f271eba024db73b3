"""Helpers for warren handlers in Python: JSON in and out in one call,
typed header access, a JSON GET over outbound HTTP, and the outcomes. Plain
Python over the generated `wit_world` bindings (of the handler-http world,
wit/http/); copy it into any handler.

    obj = json_body(msg)                      # dict/list/...; raises NotJson
    tenant = header_str(msg, "tenant")        # None if absent or not text
    info = get_json("https://api.example.com/x")  # raises HttpError
    publish_json(routing_key, obj, correlation_id=msg.correlation_id)
    return ack() | retry("db busy", after_ms=5000) | reject("bad input")
"""

import json
from typing import Any, Optional
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world.imports import host, outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.wasi_http_types import Fields, OutgoingRequest, Scheme_Http, Scheme_Https
from wit_world.imports.warren_handler_types import (
    FieldValue,
    FieldValue_Boolean,
    FieldValue_F32,
    FieldValue_F64,
    FieldValue_I8,
    FieldValue_I16,
    FieldValue_I32,
    FieldValue_I64,
    FieldValue_Text,
    FieldValue_Timestamp,
    FieldValue_U8,
    FieldValue_U16,
    FieldValue_U32,
    Headers,
    Message,
    Outbound,
    Outcome,
    Outcome_Ack,
    Outcome_Reject,
    Outcome_Retry,
    Retry,
)


class NotJson(ValueError):
    """The body is not JSON (or not UTF-8); str() says why."""


class PublishRefused(Exception):
    """The host refused a publish; str() is its explanation."""


class HttpError(Exception):
    """An HTTP request failed or was not answered 2xx; str() says why."""


def _no_constants(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON does not.
    raise ValueError(f"invalid number {name}")


def json_body(msg: Message) -> Any:
    """The body parsed as JSON (strict: UTF-8, no NaN/Infinity)."""
    try:
        return json.loads(msg.body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise NotJson(str(e)) from None


def publish_json(routing_key: str, value: Any, exchange: str = "",
                 correlation_id: Optional[str] = None) -> None:
    """Buffers `value` as a compact JSON message (content type
    application/json), sent when the handler acks. Raises PublishRefused."""
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    publish(Outbound(exchange=exchange, routing_key=routing_key, body=body,
                     content_type="application/json", content_encoding=None,
                     correlation_id=correlation_id, type=None,
                     headers=Headers(entries=[], nested=[])))


def publish(out: Outbound) -> None:
    """host.publish, raising PublishRefused with the host's explanation."""
    try:
        host.publish(out)
    except Err as e:
        raise PublishRefused(e.value.value) from None


def get_json(url: str) -> Any:
    """GET `url` (http:// or https://) and the answer parsed as JSON. The host
    sends it only if the handler's [http] grant allows the URL. Raises
    HttpError saying why not: the request failed (the wasi:http error code,
    such as HttpRequestDenied for a URL the grant does not allow or
    ConnectionTimeout), the status was not 2xx ("status 404"), or the answer
    is not JSON. The `with` blocks drop each resource before the one it came
    from, as WASI asks."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HttpError("not an HTTP URL")
    request = OutgoingRequest(Fields())
    request.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    data = bytearray()
    try:
        with outgoing_handler.handle(request, None) as future:
            with future.subscribe() as ready:
                ready.block()
            result = future.get().value  # ready now, and asked once: always Ok
            if isinstance(result, Err):
                raise result
            with result.value as response:
                if not 200 <= response.status() < 300:
                    raise HttpError(f"status {response.status()}")
                with response.consume() as body, body.stream() as stream:
                    while True:
                        try:
                            data += stream.blocking_read(64 * 1024)
                        except Err as e:
                            if isinstance(e.value, StreamError_Closed):
                                break
                            raise
    except Err as e:
        raise HttpError(type(e.value).__name__.removeprefix("ErrorCode_")) from None
    try:
        return json.loads(data)
    except ValueError as e:
        raise HttpError(f"the answer is not JSON: {e}") from None


def header(msg: Message, name: str) -> Optional[FieldValue]:
    """The top-level header `name`, as its FieldValue."""
    for h in msg.headers.entries:
        if h.name == name:
            return h.value
    return None


def header_str(msg: Message, name: str) -> Optional[str]:
    """A text header; None if absent or of another type."""
    v = header(msg, name)
    return v.value if isinstance(v, FieldValue_Text) else None


_INTS = (FieldValue_I8, FieldValue_U8, FieldValue_I16, FieldValue_U16, FieldValue_I32,
         FieldValue_U32, FieldValue_I64, FieldValue_Timestamp)


def header_int(msg: Message, name: str) -> Optional[int]:
    """An integer header of any width; None if absent or of another type."""
    v = header(msg, name)
    return v.value if isinstance(v, _INTS) else None


def header_float(msg: Message, name: str) -> Optional[float]:
    v = header(msg, name)
    return float(v.value) if isinstance(v, (FieldValue_F32, FieldValue_F64)) else None


def header_bool(msg: Message, name: str) -> Optional[bool]:
    v = header(msg, name)
    return v.value if isinstance(v, FieldValue_Boolean) else None


def config(key: str, default: str = "") -> str:
    """The handler's [handler.config] value, or `default`."""
    value = host.config(key)
    return default if value is None else value


def ack() -> Outcome:
    """Done: buffered publishes go out, then the message is acked."""
    return Outcome_Ack()


def retry(reason: str, after_ms: Optional[int] = None) -> Outcome:
    """Again later: after `after_ms`, or the handler's backoff if None."""
    return Outcome_Retry(Retry(delay_ms=after_ms, reason=reason))


def reject(reason: str) -> Outcome:
    """Never again: dead-letter the message with `reason`."""
    return Outcome_Reject(reason)
