// The enrich handler, in C. The same handler exists in Rust, Python and
// JavaScript, and all four behave alike to the byte; tests/tests/polyglot.rs
// holds them to it.
//
// It parses the body as a JSON object, adds the config field `field` (default
// `enriched`) set to the config string `value` (default empty) and `attempt`
// set to the delivery attempt, publishes the object as JSON and acks. A body
// that is not a JSON object is rejected (dead-lettered) with a reason that
// starts with `body is not a JSON object: `.
//
// Config keys: `field`, `value`, `out_exchange` (default ""),
// `out_routing_key` (default: the input routing key + ".out").
//
// handler.h is generated from wit/handler.wit by `bash guests/c/build.sh`.
// Memory is never freed: the instance lives for one message only.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"
#include "json.h"

#define NOT_AN_OBJECT "body is not a JSON object: "

typedef warren_handler_types_outcome_t outcome_t;

// Sets `ret` to reject with `reason` (copied: the bindings free it).
static void reject(outcome_t *ret, const char *reason) {
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_REJECT;
    handler_string_dup(&ret->val.reject, reason);
}

// The config value of `key`, or `fallback` if it is not set.
static handler_string_t config(const char *key, handler_string_t fallback) {
    handler_string_t k, value;
    handler_string_set(&k, key);
    return warren_handler_host_config(&k, &value) ? value : fallback;
}

static handler_option_string_t some(handler_string_t s) { return (handler_option_string_t){true, s}; }

// What a JSON value that is not an object is, as the reject reason says it.
static const char *kind(const json_value *v) {
    switch (v->kind) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "a boolean";
    case JSON_NUMBER: return "a number";
    case JSON_STRING: return "a string";
    case JSON_ARRAY: return "an array";
    default: return "an object";
    }
}

void exports_handler_handle(handler_message_t *msg, handler_outcome_t *ret) {
    char why[256];
    json_value *object = json_parse(msg->body.ptr, msg->body.len, why, sizeof why);
    if (!object || object->kind != JSON_OBJECT) {
        char reason[sizeof why + 64];
        snprintf(reason, sizeof reason, NOT_AN_OBJECT "%s%s", object ? "it is " : "", object ? kind(object) : why);
        reject(ret, reason);
        return;
    }

    handler_string_t field = config("field", (handler_string_t){(uint8_t *)"enriched", 8});
    handler_string_t value = config("value", (handler_string_t){NULL, 0});
    json_object_set(object, (const char *)field.ptr, field.len, json_new_string((const char *)value.ptr, value.len));
    char attempt[16];
    snprintf(attempt, sizeof attempt, "%u", (unsigned)msg->attempt);
    json_object_set(object, "attempt", 7, json_new_number(attempt));
    json_buf body = {0};
    json_write(&body, object);

    // The default routing key: the input's + ".out".
    json_buf routing = {0};
    json_buf_append(&routing, (const char *)msg->routing_key.ptr, msg->routing_key.len);
    json_buf_append(&routing, ".out", 4);

    warren_handler_host_outbound_t out = {
        .exchange = config("out_exchange", (handler_string_t){NULL, 0}),
        .routing_key = config("out_routing_key", (handler_string_t){(uint8_t *)routing.ptr, routing.len}),
        .body = {(uint8_t *)body.ptr, body.len},
        .content_type = some((handler_string_t){(uint8_t *)"application/json", 16}),
        .correlation_id = msg->correlation_id,
    };
    warren_handler_host_publish_error_t err;
    if (!warren_handler_host_publish(&out, &err)) {
        handler_string_t *text = err.tag == WARREN_HANDLER_TYPES_PUBLISH_ERROR_NOT_ALLOWED ? &err.val.not_allowed : &err.val.limit_exceeded;
        char reason[1024];
        snprintf(reason, sizeof reason, "cannot publish: %.*s", (int)text->len, (const char *)text->ptr);
        reject(ret, reason);
        return;
    }
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_ACK;
}
