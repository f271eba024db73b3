// The orders handler, in JavaScript: outbound HTTP (`fetch`) and the
// key-value store in one small handler. The same handler exists in Rust,
// Python and C (guests/rust/orders, guests/python/orders, guests/c/orders);
// tests/tests/orders.rs runs each against a price service it starts.
//
// The body is an order, {"order_id": "o-1", "customer": "alice", "sku":
// "A-1", "qty": 2}. The handler asks <price_url>/price/<sku> for the price
// ({"sku": "A-1", "price_cents": 250}), adds qty * price_cents to the
// counter total:<customer> and publishes the order with price_cents,
// amount_cents and customer_total_cents added.
//
// - The price service unreachable, or answering anything but 2xx with a
//   price: retry, with a reason naming the URL.
// - A body that is not an order: reject (dead-letter).
// - The counter is written only when the handler acks, together with the
//   message's dedup marker: an order delivered twice counts once.
//
// Config: price_url (the [handler.http] allow list must grant it),
// out_exchange (default ""), out_routing_key (default: the input routing
// key + ".out").
//
// `handle` is async: componentize-js runs the event loop until its promise
// settles, and `fetch` goes out through wasi:http (guests/js/build.sh
// enables it for a handler whose source calls fetch).

import { config, publish } from "warren:handler/host@0.2.0";
import { increment } from "warren:handler/kv@0.2.0";

const SKU = /^[A-Za-z0-9._-]+$/;
const utf8 = new TextDecoder("utf-8", { fatal: true });

class NotAnOrder extends Error {}

function parse(body) {
  let order;
  try {
    order = JSON.parse(utf8.decode(body));
  } catch (e) {
    throw new NotAnOrder(e.message);
  }
  if (typeof order !== "object" || order === null || Array.isArray(order)) {
    throw new NotAnOrder("the body is not a JSON object");
  }
  for (const key of ["order_id", "customer", "sku"]) {
    if (typeof order[key] !== "string" || order[key] === "") {
      throw new NotAnOrder(`${key} must be a non-empty string`);
    }
  }
  if (!SKU.test(order.sku)) {
    throw new NotAnOrder("sku may hold only letters, digits, '-', '_' and '.'");
  }
  if (!Number.isSafeInteger(order.qty) || order.qty <= 0) {
    throw new NotAnOrder("qty must be a positive integer");
  }
  return order;
}

// GET <price_url>/price/<sku> and its price_cents; throws the retry reason.
async function price(sku) {
  const base = config("price_url");
  if (base === undefined) throw new Error("the config has no price_url");
  const url = `${base.replace(/\/+$/, "")}/price/${sku}`;
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`price service ${url}: ${e.message}`);
  }
  if (!response.ok) {
    throw new Error(`price service answered ${response.status} for ${url}`);
  }
  const cents = await response.json().then((p) => p?.price_cents, () => undefined);
  if (!Number.isSafeInteger(cents) || cents < 0) {
    throw new Error(`price service answered no price_cents for ${url}`);
  }
  return cents;
}

const reject = (reason) => ({ tag: "reject", val: reason });
const retry = (reason) => ({ tag: "retry", val: { delayMs: undefined, reason } });

/**
 * @param {import('warren:handler/types@0.2.0').Message} msg
 * @returns {Promise<import('warren:handler/types@0.2.0').Outcome>}
 */
export async function handle(msg) {
  let order;
  try {
    order = parse(msg.body);
  } catch (e) {
    return reject(`not an order: ${e.message}`);
  }
  let cents;
  try {
    cents = await price(order.sku);
  } catch (e) {
    return retry(e.message);
  }
  const amount = order.qty * cents;
  if (!Number.isSafeInteger(amount)) return reject("not an order: qty * price_cents overflows");
  let total;
  try {
    // What the message sees includes its own increment; the store applies
    // it only if this returns ack. s64 values are BigInts.
    total = increment(`total:${order.customer}`, BigInt(amount));
  } catch (e) {
    const why = e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e);
    return retry(`key-value store: ${why}`);
  }

  order.price_cents = cents;
  order.amount_cents = amount;
  order.customer_total_cents = Number(total);
  try {
    publish({
      exchange: config("out_exchange") ?? "",
      routingKey: config("out_routing_key") ?? msg.routingKey + ".out",
      body: new TextEncoder().encode(JSON.stringify(order)),
      contentType: "application/json",
      correlationId: msg.correlationId,
      headers: { entries: [], nested: [] },
    });
  } catch (e) {
    return reject("cannot publish: " + (e.payload?.val ?? String(e)));
  }
  return { tag: "ack" };
}
