// The {{name}} handler: publishes each message's body, with its properties,
// to the configured destination and acks; rejects an empty body.
//
// Config keys (the `[handler.config]` table of the host's config file):
// `out_exchange` (default "", the default exchange) and `out_routing_key`
// (default: the input routing key + ".out").
//
// Types: types/ (generated from wit/handler.wit by `bash build.sh`).

import { config, log, publish } from "warren:handler/host@0.2.0";

/**
 * @param {import('warren:handler/types@0.2.0').Message} msg
 * @returns {import('warren:handler/types@0.2.0').Outcome}
 */
export function handle(msg) {
  if (msg.body.length === 0) {
    // Never try again: the message goes to the dead-letter queue.
    return { tag: "reject", val: "empty body" };
  }
  log("info", `got ${msg.body.length} bytes`);
  // Buffered: sent only if we return ack. To try the message again later
  // instead, return { tag: "retry", val: { delayMs: 5000n, reason } }.
  try {
    publish({
      exchange: config("out_exchange") ?? "",
      routingKey: config("out_routing_key") ?? msg.routingKey + ".out",
      body: msg.body,
      contentType: msg.contentType,
      contentEncoding: msg.contentEncoding,
      correlationId: msg.correlationId,
      type: msg.type,
      headers: { entries: [], nested: [] },
    });
  } catch (e) {
    // e.payload is the publish-error: { tag, val: the host's explanation }.
    return { tag: "reject", val: `cannot publish: ${e.payload?.val ?? e}` };
  }
  return { tag: "ack" };
}
