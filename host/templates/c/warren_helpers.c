// See warren_helpers.h. Nothing is freed: an instance lives for one message
// (or, with instances = "reuse", the allocator reuses what it can).
#include "warren_helpers.h"

#include <stdio.h>
#include <string.h>

json_value *warren_json_body(const handler_message_t *msg, char *why, size_t why_len) {
    return json_parse(msg->body.ptr, msg->body.len, why, why_len);
}

bool warren_publish_json(handler_string_t exchange, handler_string_t routing_key,
                         const json_value *value, handler_option_string_t correlation_id,
                         char *why, size_t why_len) {
    json_buf body = {0};
    json_write(&body, value);
    warren_handler_host_outbound_t out = {
        .exchange = exchange,
        .routing_key = routing_key,
        .body = {(uint8_t *)body.ptr, body.len},
        .content_type = {true, {(uint8_t *)"application/json", 16}},
        .correlation_id = correlation_id,
    };
    warren_handler_host_publish_error_t err;
    if (warren_handler_host_publish(&out, &err)) return true;
    // Both cases carry the host's explanation.
    handler_string_t *text = err.tag == WARREN_HANDLER_TYPES_PUBLISH_ERROR_NOT_ALLOWED
                                 ? &err.val.not_allowed
                                 : &err.val.limit_exceeded;
    snprintf(why, why_len, "%.*s", (int)text->len, (const char *)text->ptr);
    return false;
}

const warren_handler_types_field_value_t *warren_header(const handler_message_t *msg,
                                                        const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < msg->headers.entries.len; i++) {
        const warren_handler_types_header_t *h = &msg->headers.entries.ptr[i];
        if (h->name.len == n && memcmp(h->name.ptr, name, n) == 0) return &h->value;
    }
    return NULL;
}

bool warren_header_text(const handler_message_t *msg, const char *name, handler_string_t *out) {
    const warren_handler_types_field_value_t *v = warren_header(msg, name);
    if (!v || v->tag != WARREN_HANDLER_TYPES_FIELD_VALUE_TEXT) return false;
    *out = v->val.text;
    return true;
}

bool warren_header_int(const handler_message_t *msg, const char *name, int64_t *out) {
    const warren_handler_types_field_value_t *v = warren_header(msg, name);
    if (!v) return false;
    switch (v->tag) {
    case WARREN_HANDLER_TYPES_FIELD_VALUE_I8: *out = v->val.i8; return true;
    case WARREN_HANDLER_TYPES_FIELD_VALUE_U8: *out = v->val.u8; return true;
    case WARREN_HANDLER_TYPES_FIELD_VALUE_I16: *out = v->val.i16; return true;
    case WARREN_HANDLER_TYPES_FIELD_VALUE_U16: *out = v->val.u16; return true;
    case WARREN_HANDLER_TYPES_FIELD_VALUE_I32: *out = v->val.i32; return true;
    case WARREN_HANDLER_TYPES_FIELD_VALUE_U32: *out = v->val.u32; return true;
    case WARREN_HANDLER_TYPES_FIELD_VALUE_I64: *out = v->val.i64; return true;
    case WARREN_HANDLER_TYPES_FIELD_VALUE_TIMESTAMP:
        if (v->val.timestamp > INT64_MAX) return false;
        *out = (int64_t)v->val.timestamp;
        return true;
    default: return false;
    }
}

bool warren_header_float(const handler_message_t *msg, const char *name, double *out) {
    const warren_handler_types_field_value_t *v = warren_header(msg, name);
    if (!v) return false;
    if (v->tag == WARREN_HANDLER_TYPES_FIELD_VALUE_F32) *out = v->val.f32;
    else if (v->tag == WARREN_HANDLER_TYPES_FIELD_VALUE_F64) *out = v->val.f64;
    else return false;
    return true;
}

bool warren_header_bool(const handler_message_t *msg, const char *name, bool *out) {
    const warren_handler_types_field_value_t *v = warren_header(msg, name);
    if (!v || v->tag != WARREN_HANDLER_TYPES_FIELD_VALUE_BOOLEAN) return false;
    *out = v->val.boolean;
    return true;
}

handler_string_t warren_config(const char *key, const char *fallback) {
    handler_string_t k, value;
    handler_string_set(&k, key);
    if (warren_handler_host_config(&k, &value)) return value;
    handler_string_set(&value, fallback);
    return value;
}

void warren_ack(handler_outcome_t *ret) { ret->tag = WARREN_HANDLER_TYPES_OUTCOME_ACK; }

void warren_retry(handler_outcome_t *ret, int64_t after_ms, const char *reason) {
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_RETRY;
    ret->val.retry.delay_ms.is_some = after_ms >= 0;
    ret->val.retry.delay_ms.val = after_ms >= 0 ? (uint64_t)after_ms : 0;
    // The bindings free the reason: it must be malloc'd (dup).
    handler_string_dup(&ret->val.retry.reason, reason);
}

void warren_reject(handler_outcome_t *ret, const char *reason) {
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_REJECT;
    handler_string_dup(&ret->val.reject, reason);
}
