// The {{name}} handler: takes a JSON object, adds `handled_by` (and the
// `tenant` header, when the message has one), `tenant_info` (what an HTTP
// service says about the tenant, when `lookup_url` is configured) and
// `seen` (how many messages of that tenant it has handled, counted in the
// key-value store), and publishes it as JSON to the configured destination;
// a body that is not a JSON object is rejected, a failed lookup is retried.
//
// Config keys (the `[handler.config]` table of the host's config file, and
// of handler.toml for `warren test`): `handled_by` (default "{{name}}"),
// `lookup_url` (default: none, no lookup; the handler's `[http]` grant must
// allow it), `out_exchange` (default "", the default exchange) and
// `out_routing_key` (default: the input routing key + ".out").
//
// `handle` is async so that it can await `fetch`: componentize-js runs the
// event loop until its promise settles.
//
// Types: types/ (generated from wit/handler.wit by `bash build.sh`).

import { log } from "warren:handler/host@0.2.0";
import { increment } from "warren:handler/kv@0.2.0";
import {
  NotJson, PublishRefused, ack, config, getJson, headerString, jsonBody, publishJson, reject, retry,
} from "./warren.js";

/**
 * @param {import('warren:handler/types@0.2.0').Message} msg
 * @returns {Promise<import('warren:handler/types@0.2.0').Outcome>}
 */
export async function handle(msg) {
  log("info", `got ${msg.body.length} bytes`);
  let obj;
  try {
    obj = jsonBody(msg);
  } catch (e) {
    if (!(e instanceof NotJson)) throw e;
    // Never try again: the message goes to the dead-letter queue.
    return reject(`body is not a JSON object: ${e.message}`);
  }
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    return reject(`body is not a JSON object: it is ${Array.isArray(obj) ? "an array" : typeof obj}`);
  }
  obj.handled_by = config("handled_by", "{{name}}");
  const tenant = headerString(msg, "tenant");
  if (tenant !== undefined) obj.tenant = tenant;
  // Outbound HTTP, when configured: ask the tenant service about the tenant.
  // If it fails, try the whole message again later.
  const lookupUrl = config("lookup_url");
  if (lookupUrl && tenant !== undefined) {
    const url = `${lookupUrl.replace(/\/+$/, "")}/tenants/${encodeURIComponent(tenant)}`;
    try {
      obj.tenant_info = await getJson(url);
    } catch (e) {
      return retry(`tenant lookup ${url}: ${e.message}`);
    }
  }
  // The key-value store: one counter per tenant. The write is committed with
  // the message's done-marker, and only on ack, so a redelivered or duplicate
  // message counts once. Counters are BigInts (s64).
  try {
    obj.seen = Number(increment(`count:${tenant ?? "-"}`, 1n));
  } catch (e) {
    const why = e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e);
    return retry(`key-value store: ${why}`);
  }
  // Buffered: sent only if we return ack(). To try the message again later
  // instead, return retry("why", 5000).
  try {
    publishJson(config("out_routing_key", msg.routingKey + ".out"), obj, {
      exchange: config("out_exchange"),
      correlationId: msg.correlationId,
    });
  } catch (e) {
    if (!(e instanceof PublishRefused)) throw e;
    return reject(`cannot publish: ${e.message}`);
  }
  return ack();
}
