// Helpers for warren handlers in JavaScript: JSON in and out in one call,
// typed header access, a JSON GET with fetch, and the outcomes. Plain
// JavaScript over the world's imports; copy it into any handler.
//
//   const obj = jsonBody(msg);                 // throws NotJson
//   const tenant = headerString(msg, "tenant"); // undefined if absent or not text
//   const info = await getJson("https://api.example.com/x"); // throws, saying why
//   publishJson(routingKey, obj, { correlationId: msg.correlationId });
//   return ack() | retry("db busy", 5000) | reject("bad input");

import { config as hostConfig, publish as hostPublish } from "warren:handler/host@0.2.0";

// Strict UTF-8: a bad byte is an error, and a byte-order mark stays in the
// text (where JSON.parse refuses it).
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

/** The body is not JSON (or not UTF-8); `message` says why. */
export class NotJson extends Error {}

/** The host refused a publish; `message` is its explanation. */
export class PublishRefused extends Error {}

/** The body parsed as JSON. */
export function jsonBody(msg) {
  try {
    return JSON.parse(utf8.decode(msg.body));
  } catch (e) {
    throw new NotJson(e.message);
  }
}

/**
 * Buffers `value` as a JSON message (content type application/json), sent
 * when the handler acks. Throws PublishRefused.
 */
export function publishJson(routingKey, value, { exchange = "", correlationId } = {}) {
  publish({
    exchange,
    routingKey,
    body: encoder.encode(JSON.stringify(value)),
    contentType: "application/json",
    correlationId,
    headers: { entries: [], nested: [] },
  });
}

/** The host's publish, throwing PublishRefused with its explanation. */
export function publish(out) {
  try {
    hostPublish(out);
  } catch (e) {
    throw new PublishRefused(e.payload?.val ?? String(e));
  }
}

/**
 * GET `url` with `fetch` and the answer parsed as JSON. The host sends it
 * only if the handler's [http] grant allows the URL. Throws an Error whose
 * message says why not: the request failed (a refused or unreachable
 * destination), the status was not 2xx ("status 404"), or the answer is not
 * JSON.
 */
export async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`status ${response.status}`);
  try {
    return await response.json();
  } catch (e) {
    throw new Error(`the answer is not JSON: ${e.message}`);
  }
}

/** The top-level header `name` as its field-value ({ tag, val }). */
export function header(msg, name) {
  return msg.headers.entries.find((h) => h.name === name)?.value;
}

/** A text header; undefined if absent or of another type. */
export function headerString(msg, name) {
  const v = header(msg, name);
  return v?.tag === "text" ? v.val : undefined;
}

const INTS = new Set(["i8", "u8", "i16", "u16", "i32", "u32", "i64", "timestamp"]);

/** An integer header of any width, as a Number (BigInt past 2^53); undefined otherwise. */
export function headerInt(msg, name) {
  const v = header(msg, name);
  if (!v || !INTS.has(v.tag)) return undefined;
  const n = v.val;
  return typeof n === "bigint" && n <= BigInt(Number.MAX_SAFE_INTEGER) && n >= -BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(n)
    : n;
}

/** A float header; undefined otherwise. */
export function headerFloat(msg, name) {
  const v = header(msg, name);
  return v?.tag === "f32" || v?.tag === "f64" ? v.val : undefined;
}

/** A boolean header; undefined otherwise. */
export function headerBool(msg, name) {
  const v = header(msg, name);
  return v?.tag === "boolean" ? v.val : undefined;
}

/** The handler's [handler.config] value, or `fallback`. */
export function config(key, fallback = "") {
  return hostConfig(key) ?? fallback;
}

/** Done: buffered publishes go out, then the message is acked. */
export function ack() {
  return { tag: "ack" };
}

/** Again later: after `afterMs` milliseconds, or the handler's backoff if omitted. */
export function retry(reason, afterMs) {
  return { tag: "retry", val: { delayMs: afterMs === undefined ? undefined : BigInt(afterMs), reason } };
}

/** Never again: dead-letter the message with `reason`. */
export function reject(reason) {
  return { tag: "reject", val: reason };
}
