// See warren_helpers.h. Nothing is freed: an instance lives for one message
// (or, with instances = "reuse", the allocator reuses what it can).
#include "warren_helpers.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

json_value *warren_json_body(const handler_http_message_t *msg, char *why, size_t why_len) {
    return json_parse(msg->body.ptr, msg->body.len, why, why_len);
}

bool warren_publish_json(handler_http_string_t exchange, handler_http_string_t routing_key,
                         const json_value *value, handler_http_option_string_t correlation_id,
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
    handler_http_string_t *text = err.tag == WARREN_HANDLER_TYPES_PUBLISH_ERROR_NOT_ALLOWED
                                 ? &err.val.not_allowed
                                 : &err.val.limit_exceeded;
    snprintf(why, why_len, "%.*s", (int)text->len, (const char *)text->ptr);
    return false;
}

// The wasi:http error-code cases, in WIT order.
static const char *const ERROR_CODES[] = {
    "DnsTimeout", "DnsError", "DestinationNotFound", "DestinationUnavailable", "DestinationIpProhibited",
    "DestinationIpUnroutable", "ConnectionRefused", "ConnectionTerminated", "ConnectionTimeout",
    "ConnectionReadTimeout", "ConnectionWriteTimeout", "ConnectionLimitReached", "TlsProtocolError",
    "TlsCertificateError", "TlsAlertReceived", "HttpRequestDenied", "HttpRequestLengthRequired",
    "HttpRequestBodySize", "HttpRequestMethodInvalid", "HttpRequestUriInvalid", "HttpRequestUriTooLong",
    "HttpRequestHeaderSectionSize", "HttpRequestHeaderSize", "HttpRequestTrailerSectionSize",
    "HttpRequestTrailerSize", "HttpResponseIncomplete", "HttpResponseHeaderSectionSize", "HttpResponseHeaderSize",
    "HttpResponseBodySize", "HttpResponseTrailerSectionSize", "HttpResponseTrailerSize",
    "HttpResponseTransferCoding", "HttpResponseContentCoding", "HttpResponseTimeout", "HttpUpgradeFailed",
    "HttpProtocolError", "LoopDetected", "ConfigurationError", "InternalError",
};

static const char *error_code(const wasi_http_types_error_code_t *code) {
    return code->tag < sizeof ERROR_CODES / sizeof *ERROR_CODES ? ERROR_CODES[code->tag] : "unknown error";
}

// Each resource is dropped before the one it came from, as WASI asks.
json_value *warren_get_json(const char *url, char *why, size_t why_len) {
    const char *sep = strstr(url, "://");
    bool https = strncmp(url, "https://", 8) == 0;
    if (!sep || (!https && strncmp(url, "http://", 7) != 0)) {
        snprintf(why, why_len, "not an HTTP URL");
        return NULL;
    }
    const char *authority = sep + 3;
    const char *path = authority + strcspn(authority, "/?");
    wasi_http_types_scheme_t scheme = {.tag = https ? WASI_HTTP_TYPES_SCHEME_HTTPS : WASI_HTTP_TYPES_SCHEME_HTTP};
    handler_http_string_t host = {(uint8_t *)authority, (size_t)(path - authority)};
    json_buf path_query = {0};
    json_buf_append(&path_query, "/", *path == '/' ? 0 : 1);
    json_buf_append(&path_query, path, strlen(path));
    handler_http_string_t pq = {(uint8_t *)path_query.ptr, path_query.len};

    wasi_http_types_own_outgoing_request_t request =
        wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
    wasi_http_types_borrow_outgoing_request_t r = wasi_http_types_borrow_outgoing_request(request);
    wasi_http_types_method_outgoing_request_set_scheme(r, &scheme);
    wasi_http_types_method_outgoing_request_set_authority(r, &host);
    wasi_http_types_method_outgoing_request_set_path_with_query(r, &pq);

    wasi_http_types_own_future_incoming_response_t future;
    wasi_http_types_error_code_t code;
    if (!wasi_http_outgoing_handler_handle(request, NULL, &future, &code)) { // a refusal: HttpRequestDenied
        snprintf(why, why_len, "%s", error_code(&code));
        return NULL;
    }
    wasi_http_types_borrow_future_incoming_response_t f = wasi_http_types_borrow_future_incoming_response(future);
    wasi_io_poll_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(f);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
    wasi_io_poll_pollable_drop_own(ready);
    wasi_http_types_result_result_own_incoming_response_error_code_void_t got;
    wasi_http_types_method_future_incoming_response_get(f, &got); // ready, and asked once: some(ok(..))
    if (got.val.ok.is_err) {
        snprintf(why, why_len, "%s", error_code(&got.val.ok.val.err));
        wasi_http_types_future_incoming_response_drop_own(future);
        return NULL;
    }

    wasi_http_types_own_incoming_response_t response = got.val.ok.val.ok;
    wasi_http_types_borrow_incoming_response_t resp = wasi_http_types_borrow_incoming_response(response);
    int status = wasi_http_types_method_incoming_response_status(resp);
    bool ok = status >= 200 && status < 300;
    json_buf body = {0};
    if (!ok) {
        snprintf(why, why_len, "status %d", status);
    } else {
        wasi_http_types_own_incoming_body_t incoming;
        wasi_http_types_method_incoming_response_consume(resp, &incoming);
        wasi_io_streams_own_input_stream_t stream;
        wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(incoming), &stream);
        for (;;) {
            handler_http_list_u8_t chunk;
            wasi_io_streams_stream_error_t err;
            if (!wasi_io_streams_method_input_stream_blocking_read(wasi_io_streams_borrow_input_stream(stream), 65536,
                                                                   &chunk, &err)) {
                if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED) {
                    wasi_io_error_error_drop_own(err.val.last_operation_failed);
                    snprintf(why, why_len, "the response body failed");
                    ok = false;
                }
                break; // or closed: the whole body is read
            }
            json_buf_append(&body, (const char *)chunk.ptr, chunk.len);
            handler_http_list_u8_free(&chunk);
        }
        wasi_io_streams_input_stream_drop_own(stream);
        wasi_http_types_incoming_body_drop_own(incoming);
    }
    wasi_http_types_incoming_response_drop_own(response);
    wasi_http_types_future_incoming_response_drop_own(future);
    if (!ok) return NULL;
    char err[200];
    json_value *value = json_parse((const uint8_t *)body.ptr, body.len, err, sizeof err);
    if (!value) snprintf(why, why_len, "the answer is not JSON: %s", err);
    return value;
}

void warren_append_url_segment(json_buf *out, handler_http_string_t s) {
    for (size_t i = 0; i < s.len; i++) {
        uint8_t b = s.ptr[i];
        if (isalnum(b) || (b != 0 && strchr("-._~", b))) {
            json_buf_append(out, (const char *)&b, 1);
        } else {
            char hex[4];
            snprintf(hex, sizeof hex, "%%%02X", b);
            json_buf_append(out, hex, 3);
        }
    }
}

const warren_handler_types_field_value_t *warren_header(const handler_http_message_t *msg,
                                                        const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < msg->headers.entries.len; i++) {
        const warren_handler_types_header_t *h = &msg->headers.entries.ptr[i];
        if (h->name.len == n && memcmp(h->name.ptr, name, n) == 0) return &h->value;
    }
    return NULL;
}

bool warren_header_text(const handler_http_message_t *msg, const char *name, handler_http_string_t *out) {
    const warren_handler_types_field_value_t *v = warren_header(msg, name);
    if (!v || v->tag != WARREN_HANDLER_TYPES_FIELD_VALUE_TEXT) return false;
    *out = v->val.text;
    return true;
}

bool warren_header_int(const handler_http_message_t *msg, const char *name, int64_t *out) {
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

bool warren_header_float(const handler_http_message_t *msg, const char *name, double *out) {
    const warren_handler_types_field_value_t *v = warren_header(msg, name);
    if (!v) return false;
    if (v->tag == WARREN_HANDLER_TYPES_FIELD_VALUE_F32) *out = v->val.f32;
    else if (v->tag == WARREN_HANDLER_TYPES_FIELD_VALUE_F64) *out = v->val.f64;
    else return false;
    return true;
}

bool warren_header_bool(const handler_http_message_t *msg, const char *name, bool *out) {
    const warren_handler_types_field_value_t *v = warren_header(msg, name);
    if (!v || v->tag != WARREN_HANDLER_TYPES_FIELD_VALUE_BOOLEAN) return false;
    *out = v->val.boolean;
    return true;
}

handler_http_string_t warren_config(const char *key, const char *fallback) {
    handler_http_string_t k, value;
    handler_http_string_set(&k, key);
    if (warren_handler_host_config(&k, &value)) return value;
    handler_http_string_set(&value, fallback);
    return value;
}

void warren_ack(handler_http_outcome_t *ret) { ret->tag = WARREN_HANDLER_TYPES_OUTCOME_ACK; }

void warren_retry(handler_http_outcome_t *ret, int64_t after_ms, const char *reason) {
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_RETRY;
    ret->val.retry.delay_ms.is_some = after_ms >= 0;
    ret->val.retry.delay_ms.val = after_ms >= 0 ? (uint64_t)after_ms : 0;
    // The bindings free the reason: it must be malloc'd (dup).
    handler_http_string_dup(&ret->val.retry.reason, reason);
}

void warren_reject(handler_http_outcome_t *ret, const char *reason) {
    ret->tag = WARREN_HANDLER_TYPES_OUTCOME_REJECT;
    handler_http_string_dup(&ret->val.reject, reason);
}
