// Helpers for warren handlers in C: JSON in and out in one call (over
// json.h, a small strict parser and writer), typed header access, a JSON GET
// over outbound HTTP, and the outcomes. Plain C over the generated bindings
// of the handler-http world (handler_http.h); copy both files into any
// handler.
//
//   json_value *obj = warren_json_body(msg, why, sizeof why);   // NULL: not JSON
//   handler_http_string_t tenant;
//   if (warren_header_text(msg, "tenant", &tenant)) ...
//   json_value *info = warren_get_json("https://api.example.com/x", why, sizeof why); // NULL: failed
//   warren_publish_json(exchange, routing_key, obj, msg->correlation_id, why, sizeof why);
//   warren_ack(ret); warren_retry(ret, 5000, "db busy"); warren_reject(ret, "bad input");
#ifndef WARREN_HELPERS_H
#define WARREN_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "handler_http.h"
#include "json.h"

// The body parsed as JSON, or NULL with the reason in `why`.
json_value *warren_json_body(const handler_http_message_t *msg, char *why, size_t why_len);

// Buffers `value` as compact JSON (content type application/json), sent
// when the handler acks. False, with the host's explanation in `why`, when
// the host refuses it.
bool warren_publish_json(handler_http_string_t exchange, handler_http_string_t routing_key,
                         const json_value *value, handler_http_option_string_t correlation_id,
                         char *why, size_t why_len);

// GET `url` (a C string, http:// or https://) and the answer parsed as
// JSON, or NULL with the reason in `why`: the request failed (the wasi:http
// error code, such as HttpRequestDenied for a URL the handler's [http]
// grant does not allow, or ConnectionTimeout), the status was not 2xx
// ("status 404"), or the answer is not JSON.
json_value *warren_get_json(const char *url, char *why, size_t why_len);

// Appends `s` to `out` as one segment of a URL's path: every byte but
// letters, digits and -._~ percent-encoded.
void warren_append_url_segment(json_buf *out, handler_http_string_t s);

// The top-level header `name`, or NULL.
const warren_handler_types_field_value_t *warren_header(const handler_http_message_t *msg,
                                                        const char *name);
// A text header (not NUL-terminated); false if absent or of another type.
bool warren_header_text(const handler_http_message_t *msg, const char *name, handler_http_string_t *out);
// An integer header of any width; false if absent, of another type or past int64.
bool warren_header_int(const handler_http_message_t *msg, const char *name, int64_t *out);
// A float header; false if absent or of another type.
bool warren_header_float(const handler_http_message_t *msg, const char *name, double *out);
// A boolean header; false if absent or of another type.
bool warren_header_bool(const handler_http_message_t *msg, const char *name, bool *out);

// The `[handler.config]` value of `key`, or `fallback` (a C string).
handler_http_string_t warren_config(const char *key, const char *fallback);

// Done: buffered publishes go out, then the message is acked.
void warren_ack(handler_http_outcome_t *ret);
// Again later: after `after_ms` milliseconds, or the handler's backoff when negative.
void warren_retry(handler_http_outcome_t *ret, int64_t after_ms, const char *reason);
// Never again: dead-letter the message with `reason`.
void warren_reject(handler_http_outcome_t *ret, const char *reason);

#endif
