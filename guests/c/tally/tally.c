// The tally handler, in C: the key-value store from wit-bindgen's C
// bindings. The same handler exists in Python (guests/python/tally) and
// JavaScript (guests/js/tally); tests/tests/kv_polyglot.rs runs all three.
//
// The body names a counter. The handler adds 1 to it
// (`warren_handler_kv_increment`), reads the key `last` (the counter the
// previous message named, or nothing), sets `last` to this counter, and
// publishes `<counter>=<value> last=<previous>` to `out_routing_key`. The
// writes are committed only when the handler acks, with the message's dedup
// done-marker: a duplicate counts nothing.
//
// Every key-value call returns false on error and fills a
// `warren_handler_kv_kv_error_t` (tag and text); the handler retries then.

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "handler.h"

typedef warren_handler_types_outcome_t outcome_t;

// Sets `ret` to retry with the handler's backoff, saying why.
static void retry(outcome_t *ret, const char *what, const warren_handler_kv_kv_error_t *err) {
    const handler_string_t *text = &err->val.limit_exceeded; // every case holds a string
    char reason[512];
    snprintf(reason, sizeof reason, "key-value store: %s: %.*s", what, (int)text->len, (const char *)text->ptr);
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_RETRY;
    ret->val.retry.delay_ms.is_some = false;
    handler_string_dup(&ret->val.retry.reason, reason);
}

void exports_handler_handle(handler_message_t *msg, handler_outcome_t *ret) {
    handler_string_t counter = {msg->body.ptr, msg->body.len};
    handler_string_t last_key;
    handler_string_set(&last_key, "last");
    warren_handler_kv_kv_error_t err;

    int64_t n;
    if (!warren_handler_kv_increment(&counter, 1, &n, &err)) {
        retry(ret, "increment", &err);
        return;
    }
    handler_option_list_u8_t last;
    if (!warren_handler_kv_get(&last_key, &last, &err)) {
        retry(ret, "get", &err);
        return;
    }
    handler_list_u8_t value = {msg->body.ptr, msg->body.len};
    if (!warren_handler_kv_set(&last_key, &value, NULL, &err)) {
        retry(ret, "set", &err);
        return;
    }

    char body[1024];
    int len = snprintf(body, sizeof body, "%.*s=%" PRId64 " last=%.*s", (int)counter.len, (const char *)counter.ptr, n,
                       last.is_some ? (int)last.val.len : 3, last.is_some ? (const char *)last.val.ptr : "nil");
    if (len < 0 || len >= (int)sizeof body) len = sizeof body - 1;

    char routing[300];
    snprintf(routing, sizeof routing, "%.*s.out", (int)msg->routing_key.len, (const char *)msg->routing_key.ptr);
    handler_string_t k, routing_key;
    handler_string_set(&k, "out_routing_key");
    if (!warren_handler_host_config(&k, &routing_key)) handler_string_set(&routing_key, routing);

    warren_handler_host_outbound_t out = {
        .routing_key = routing_key,
        .body = {(uint8_t *)body, (size_t)len},
        .correlation_id = msg->message_id,
    };
    warren_handler_host_publish_error_t perr;
    if (!warren_handler_host_publish(&out, &perr)) {
        ret->tag = WARREN_HANDLER_TYPES_OUTCOME_REJECT;
        handler_string_dup(&ret->val.reject, "cannot publish");
        return;
    }
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_ACK;
}
