// The {{name}} handler: takes a JSON object, adds `handled_by` (and the
// `tenant` header, when the message has one) and `seen` (how many messages
// of that tenant it has handled, counted in the key-value store), and
// publishes it as JSON to the configured destination; a body that is not a
// JSON object is rejected.
//
// Config keys (the `[handler.config]` table of the host's config file, and
// of handler.toml for `warren test`): `handled_by` (default "{{name}}"),
// `out_exchange` (default "", the default exchange) and `out_routing_key`
// (default: the input routing key + ".out").
//
// handler.h is generated from wit/handler.wit by `bash build.sh` (in
// .build/bindings/). Strings are (ptr, len) pairs, not NUL-terminated.

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "handler.h"
#include "json.h"
#include "warren_helpers.h"

void exports_handler_handle(handler_message_t *msg, handler_outcome_t *ret) {
    char line[64];
    snprintf(line, sizeof line, "got %zu bytes", msg->body.len);
    handler_string_t text;
    handler_string_set(&text, line);
    warren_handler_host_log(WARREN_HANDLER_TYPES_LEVEL_INFO, &text);

    char why[256], reason[512];
    json_value *obj = warren_json_body(msg, why, sizeof why);
    if (!obj || obj->kind != JSON_OBJECT) {
        // Never try again: the message goes to the dead-letter queue.
        snprintf(reason, sizeof reason, "body is not a JSON object: %s", obj ? "it is another JSON value" : why);
        warren_reject(ret, reason);
        return;
    }
    handler_string_t by = warren_config("handled_by", "{{name}}");
    json_object_set(obj, "handled_by", 10, json_new_string((const char *)by.ptr, by.len));
    handler_string_t tenant;
    bool has_tenant = warren_header_text(msg, "tenant", &tenant);
    if (has_tenant) {
        json_object_set(obj, "tenant", 6, json_new_string((const char *)tenant.ptr, tenant.len));
    }

    // The key-value store: one counter per tenant. The write is committed
    // with the message's done-marker, and only on ack, so a redelivered or
    // duplicate message counts once.
    json_buf count_key = {0};
    json_buf_append(&count_key, "count:", 6);
    if (has_tenant) {
        json_buf_append(&count_key, (const char *)tenant.ptr, tenant.len);
    } else {
        json_buf_append(&count_key, "-", 1);
    }
    handler_string_t kv_key = {(uint8_t *)count_key.ptr, count_key.len};
    int64_t seen;
    warren_handler_kv_kv_error_t err;
    if (!warren_handler_kv_increment(&kv_key, 1, &seen, &err)) {
        const handler_string_t *text = &err.val.limit_exceeded; // every case holds a string
        snprintf(reason, sizeof reason, "key-value store: %.*s", (int)text->len, (const char *)text->ptr);
        warren_retry(ret, -1, reason);
        return;
    }
    char seen_text[24];
    snprintf(seen_text, sizeof seen_text, "%" PRId64, seen);
    json_object_set(obj, "seen", 4, json_new_number(seen_text));

    // The default routing key: the input's + ".out".
    json_buf key = {0};
    json_buf_append(&key, (const char *)msg->routing_key.ptr, msg->routing_key.len);
    json_buf_append(&key, ".out", 5); // with the NUL, for warren_config's fallback
    // Buffered: sent only if we ack. To try the message again later instead,
    // warren_retry(ret, 5000, "why") (or -1 for the handler's backoff).
    if (!warren_publish_json(warren_config("out_exchange", ""), warren_config("out_routing_key", key.ptr),
                             obj, msg->correlation_id, why, sizeof why)) {
        snprintf(reason, sizeof reason, "cannot publish: %s", why);
        warren_reject(ret, reason);
        return;
    }
    warren_ack(ret);
}
