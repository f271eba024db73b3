// The enrich handler, in JavaScript. The same handler exists in Rust, Python
// and C, and all four behave alike to the byte; tests/tests/polyglot.rs holds
// them to it.
//
// It parses the body as a JSON object, adds the config field `field` (default
// `enriched`) set to the config string `value` (default empty) and `attempt`
// set to the delivery attempt, publishes the object as JSON and acks. A body
// that is not a JSON object is rejected (dead-lettered) with a reason that
// starts with `body is not a JSON object: `.
//
// Config keys: `field`, `value`, `out_exchange` (default ""),
// `out_routing_key` (default: the input routing key + ".out").
//
// Types: ../types/ (generated from wit/handler.wit by `npm run types`).

import { config, publish } from "warren:handler/host@0.2.0";

const NOT_AN_OBJECT = "body is not a JSON object: ";

// Strict UTF-8: a bad byte is an error, and a byte-order mark stays in the
// text (where JSON.parse refuses it, as the other languages do).
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

// JSON.stringify writes a lone surrogate (which JSON.parse lets through) as a
// \udXXX escape; the other languages refuse such a body, and so do we.
const LONE_SURROGATE = /\\u[dD][89a-fA-F][0-9a-fA-F]{2}/;

// What a JSON value that is not an object is, as the reject reason says it.
function kind(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return { boolean: "a boolean", number: "a number", string: "a string" }[typeof value];
}

/**
 * @param {import('warren:handler/types@0.2.0').Message} msg
 * @returns {import('warren:handler/types@0.2.0').Outcome}
 */
export function handle(msg) {
  let object;
  try {
    object = JSON.parse(utf8.decode(msg.body));
  } catch (e) {
    return { tag: "reject", val: NOT_AN_OBJECT + e.message };
  }
  if (typeof object !== "object" || object === null || Array.isArray(object)) {
    return { tag: "reject", val: NOT_AN_OBJECT + "it is " + kind(object) };
  }

  object[config("field") ?? "enriched"] = config("value") ?? "";
  object.attempt = msg.attempt;
  const text = JSON.stringify(object);
  if (LONE_SURROGATE.test(text)) {
    return { tag: "reject", val: NOT_AN_OBJECT + "a string holds a lone surrogate" };
  }

  try {
    publish({
      exchange: config("out_exchange") ?? "",
      routingKey: config("out_routing_key") ?? msg.routingKey + ".out",
      body: encoder.encode(text),
      contentType: "application/json",
      correlationId: msg.correlationId,
      headers: { entries: [], nested: [] },
    });
  } catch (e) {
    // e.payload is the publish-error: { tag: "not-allowed" | "limit-exceeded",
    // val: the host's explanation }.
    return { tag: "reject", val: "cannot publish: " + (e.payload?.val ?? String(e)) };
  }
  return { tag: "ack" };
}

// Runs once when the component is built: componentize-js snapshots the
// initialised engine, so whatever the engine does lazily the first time
// (compiling `handle` and these built-ins' paths, the regular expression)
// is done here, in the snapshot, instead of in every fresh instance's
// first call. It calls no import and keeps no state the handler reads.
{
  const warm = JSON.parse(utf8.decode(encoder.encode('{"id":"warm-up","n":1}')));
  warm.attempt = 1;
  LONE_SURROGATE.test(JSON.stringify(warm));
  kind(null);
  try {
    JSON.parse("not json");
  } catch (e) {
    String(e.message);
  }
}
