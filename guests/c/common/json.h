// A small JSON parser and writer for C handlers: RFC 8259 syntax, strict
// UTF-8, numbers kept as their literal text (so integers of any size pass
// through unchanged), duplicate keys resolved last-wins in place of the first,
// nesting limited to JSON_MAX_DEPTH. No frees: a handler runs in a fresh
// instance per message, and its whole memory goes away after it.
#ifndef WARREN_JSON_H
#define WARREN_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 128

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_kind;

// A run of bytes: a string's UTF-8 (it may hold NUL) or a number's literal.
typedef struct {
    char *ptr;
    size_t len;
} json_text;

typedef struct json_value json_value;
typedef struct json_member json_member;

struct json_value {
    json_kind kind;
    bool boolean;        // JSON_BOOL
    json_text text;      // JSON_NUMBER, JSON_STRING
    json_value **items;  // JSON_ARRAY
    json_member *members; // JSON_OBJECT
    size_t len, cap;     // JSON_ARRAY, JSON_OBJECT
};

struct json_member {
    json_text key;
    json_value *value;
};

// A growable byte buffer.
typedef struct {
    char *ptr;
    size_t len, cap;
} json_buf;

// Parses `len` bytes. On error returns NULL and writes a message like
// "expected `,` or `}` at byte 17" into `err`.
json_value *json_parse(const uint8_t *bytes, size_t len, char *err, size_t err_len);

// New values.
json_value *json_new_string(const char *ptr, size_t len);
json_value *json_new_number(const char *literal);

// Sets `key` in an object: replaces the value of a member of that name, or
// appends a member.
void json_object_set(json_value *object, const char *key, size_t key_len, json_value *value);

// Appends the compact JSON text of `value` to `out`.
void json_write(json_buf *out, const json_value *value);

void json_buf_append(json_buf *b, const char *bytes, size_t len);

#endif
