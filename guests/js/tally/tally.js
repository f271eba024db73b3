// The tally handler, in JavaScript: the key-value store from
// componentize-js. The same handler exists in Python (guests/python/tally)
// and C (guests/c/tally); tests/tests/kv_polyglot.rs runs all three.
//
// The body names a counter. The handler adds 1 to it (`increment`), reads
// the key `last` (the counter the previous message named, or nothing), sets
// `last` to this counter, and publishes `<counter>=<value> last=<previous>`
// to `out_routing_key`. The writes are committed only when the handler acks,
// with the message's dedup done-marker: a duplicate counts nothing.
//
// A key-value call that fails throws; the error's `payload` is the WIT
// `kv-error` ({ tag: "not-a-counter", val: "..." } and so on). s64 values
// are BigInts.

import { config, publish } from "warren:handler/host@0.2.0";
import { get, increment, set } from "warren:handler/kv@0.2.0";

const text = new TextDecoder();
const bytes = new TextEncoder();

/**
 * @param {import('warren:handler/types@0.2.0').Message} msg
 * @returns {import('warren:handler/types@0.2.0').Outcome}
 */
export function handle(msg) {
  const counter = text.decode(msg.body);
  let n, last;
  try {
    n = increment(counter, 1n);
    last = get("last");
    set("last", bytes.encode(counter), undefined);
  } catch (e) {
    const why = e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e);
    return { tag: "retry", val: { delayMs: undefined, reason: `key-value store: ${why}` } };
  }
  const previous = last === undefined ? "nil" : text.decode(last);
  publish({
    exchange: "",
    routingKey: config("out_routing_key") ?? msg.routingKey + ".out",
    body: bytes.encode(`${counter}=${n} last=${previous}`),
    contentType: undefined,
    contentEncoding: undefined,
    correlationId: msg.messageId,
    type: undefined,
    headers: { entries: [], nested: [] },
  });
  return { tag: "ack" };
}
