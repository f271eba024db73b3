// Helpers for warren handlers in C: JSON in and out in one call (over
// json.h, a small strict parser and writer), typed header access, and the
// outcomes. Plain C over the generated bindings (handler.h); copy both
// files into any handler.
//
//   json_value *obj = warren_json_body(msg, why, sizeof why);   // NULL: not JSON
//   handler_string_t tenant;
//   if (warren_header_text(msg, "tenant", &tenant)) ...
//   warren_publish_json(exchange, routing_key, obj, msg->correlation_id, why, sizeof why);
//   warren_ack(ret); warren_retry(ret, 5000, "db busy"); warren_reject(ret, "bad input");
#ifndef WARREN_HELPERS_H
#define WARREN_HELPERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "handler.h"
#include "json.h"

// The body parsed as JSON, or NULL with the reason in `why`.
json_value *warren_json_body(const handler_message_t *msg, char *why, size_t why_len);

// Buffers `value` as compact JSON (content type application/json), sent
// when the handler acks. False, with the host's explanation in `why`, when
// the host refuses it.
bool warren_publish_json(handler_string_t exchange, handler_string_t routing_key,
                         const json_value *value, handler_option_string_t correlation_id,
                         char *why, size_t why_len);

// The top-level header `name`, or NULL.
const warren_handler_types_field_value_t *warren_header(const handler_message_t *msg,
                                                        const char *name);
// A text header (not NUL-terminated); false if absent or of another type.
bool warren_header_text(const handler_message_t *msg, const char *name, handler_string_t *out);
// An integer header of any width; false if absent, of another type or past int64.
bool warren_header_int(const handler_message_t *msg, const char *name, int64_t *out);
// A float header; false if absent or of another type.
bool warren_header_float(const handler_message_t *msg, const char *name, double *out);
// A boolean header; false if absent or of another type.
bool warren_header_bool(const handler_message_t *msg, const char *name, bool *out);

// The `[handler.config]` value of `key`, or `fallback` (a C string).
handler_string_t warren_config(const char *key, const char *fallback);

// Done: buffered publishes go out, then the message is acked.
void warren_ack(handler_outcome_t *ret);
// Again later: after `after_ms` milliseconds, or the handler's backoff when negative.
void warren_retry(handler_outcome_t *ret, int64_t after_ms, const char *reason);
// Never again: dead-letter the message with `reason`.
void warren_reject(handler_outcome_t *ret, const char *reason);

#endif
