// The {{name}} handler: publishes each message's body, with its properties,
// to the configured destination and acks; rejects an empty body.
//
// Config keys (the `[handler.config]` table of the host's config file):
// `out_exchange` (default "", the default exchange) and `out_routing_key`
// (default: the input routing key + ".out").
//
// handler.h is generated from wit/handler.wit by `bash build.sh` (in
// .build/bindings/). Strings are (ptr, len) pairs, not NUL-terminated.
// Memory need not be freed: an instance lives for one message.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"

// The config value of `key`, or `fallback` if it is not set.
static handler_string_t config(const char *key, handler_string_t fallback) {
    handler_string_t k, value;
    handler_string_set(&k, key);
    return warren_handler_host_config(&k, &value) ? value : fallback;
}

void exports_handler_handle(handler_message_t *msg, handler_outcome_t *ret) {
    if (msg->body.len == 0) {
        // Never try again: the message goes to the dead-letter queue. The
        // reason is freed by the bindings, so it must be malloc'd (dup).
        ret->tag = WARREN_HANDLER_TYPES_OUTCOME_REJECT;
        handler_string_dup(&ret->val.reject, "empty body");
        return;
    }
    char line[64];
    snprintf(line, sizeof line, "got %zu bytes", msg->body.len);
    handler_string_t text;
    handler_string_set(&text, line);
    warren_handler_host_log(WARREN_HANDLER_TYPES_LEVEL_INFO, &text);

    size_t key_len = msg->routing_key.len + 4;
    uint8_t *default_key = malloc(key_len);
    memcpy(default_key, msg->routing_key.ptr, msg->routing_key.len);
    memcpy(default_key + msg->routing_key.len, ".out", 4);
    warren_handler_host_outbound_t out = {
        .exchange = config("out_exchange", (handler_string_t){NULL, 0}),
        .routing_key = config("out_routing_key", (handler_string_t){default_key, key_len}),
        .body = msg->body,
        .content_type = msg->content_type,
        .content_encoding = msg->content_encoding,
        .correlation_id = msg->correlation_id,
        .type = msg->type,
    };
    // Buffered: sent only if we return ack. To try the message again later
    // instead, set ret->tag = WARREN_HANDLER_TYPES_OUTCOME_RETRY and
    // ret->val.retry (delay_ms, reason).
    warren_handler_host_publish_error_t err;
    if (!warren_handler_host_publish(&out, &err)) {
        handler_string_t *why = &err.val.not_allowed; // both cases carry a string
        char reason[512];
        snprintf(reason, sizeof reason, "cannot publish: %.*s", (int)why->len, (const char *)why->ptr);
        ret->tag = WARREN_HANDLER_TYPES_OUTCOME_REJECT;
        handler_string_dup(&ret->val.reject, reason);
        return;
    }
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_ACK;
}
