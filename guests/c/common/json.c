// See json.h.
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *s;
    size_t len, pos;
    int depth;
    char *err;
    size_t err_len;
} parser;

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) abort();
    return p;
}

void json_buf_append(json_buf *b, const char *bytes, size_t len) {
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2 + 16;
        b->ptr = xrealloc(b->ptr, b->cap);
    }
    memcpy(b->ptr + b->len, bytes, len);
    b->len += len;
}

static void buf_byte(json_buf *b, char c) { json_buf_append(b, &c, 1); }

static json_value *fail(parser *p, const char *what) {
    if (p->pos >= p->len)
        snprintf(p->err, p->err_len, "%s at the end of the input (byte %zu)", what, p->pos);
    else
        snprintf(p->err, p->err_len, "%s at byte %zu", what, p->pos);
    return NULL;
}

static json_value *new_value(json_kind kind) {
    json_value *v = calloc(1, sizeof *v);
    if (!v) abort();
    v->kind = kind;
    return v;
}

json_value *json_new_string(const char *ptr, size_t len) {
    json_value *v = new_value(JSON_STRING);
    v->text.ptr = xrealloc(NULL, len + 1);
    memcpy(v->text.ptr, ptr, len);
    v->text.len = len;
    return v;
}

json_value *json_new_number(const char *literal) {
    json_value *v = json_new_string(literal, strlen(literal));
    v->kind = JSON_NUMBER;
    return v;
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        uint8_t c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static bool literal(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return false;
    p->pos += n;
    return true;
}

static bool is_digit(parser *p) { return p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9'; }

static json_value *parse_number(parser *p) {
    size_t start = p->pos;
    if (p->s[p->pos] == '-') p->pos++;
    if (!is_digit(p)) return fail(p, "expected a digit");
    if (p->s[p->pos] == '0') p->pos++;
    else while (is_digit(p)) p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (!is_digit(p)) return fail(p, "expected a digit after the decimal point");
        while (is_digit(p)) p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (!is_digit(p)) return fail(p, "expected a digit in the exponent");
        while (is_digit(p)) p->pos++;
    }
    json_value *v = json_new_string((const char *)p->s + start, p->pos - start);
    v->kind = JSON_NUMBER;
    return v;
}

static int hex4(parser *p) {
    if (p->len - p->pos < 4) return -1;
    int n = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p->s[p->pos + i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        n = n * 16 + d;
    }
    p->pos += 4;
    return n;
}

static void put_utf8(json_buf *b, uint32_t c) {
    char u[4];
    if (c < 0x80) { buf_byte(b, (char)c); return; }
    if (c < 0x800) { u[0] = 0xC0 | c >> 6; u[1] = 0x80 | (c & 0x3F); json_buf_append(b, u, 2); return; }
    if (c < 0x10000) { u[0] = 0xE0 | c >> 12; u[1] = 0x80 | (c >> 6 & 0x3F); u[2] = 0x80 | (c & 0x3F); json_buf_append(b, u, 3); return; }
    u[0] = 0xF0 | c >> 18; u[1] = 0x80 | (c >> 12 & 0x3F); u[2] = 0x80 | (c >> 6 & 0x3F); u[3] = 0x80 | (c & 0x3F);
    json_buf_append(b, u, 4);
}

// The length of the well-formed UTF-8 sequence at `s` (1-4), or 0.
static size_t utf8_len(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    else if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 0;
    if (n < need + 1 || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i <= need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return need + 1;
}

// Parses the string whose opening quote is at p->pos into `out`.
static bool parse_string(parser *p, json_buf *out) {
    p->pos++;
    for (;;) {
        if (p->pos >= p->len) return fail(p, "unterminated string"), false;
        uint8_t c = p->s[p->pos];
        if (c == '"') { p->pos++; return true; }
        if (c < 0x20) return fail(p, "control character in a string"), false;
        if (c != '\\') {
            size_t n = utf8_len(p->s + p->pos, p->len - p->pos);
            if (!n) return fail(p, "invalid UTF-8"), false;
            json_buf_append(out, (const char *)p->s + p->pos, n);
            p->pos += n;
            continue;
        }
        p->pos++;
        if (p->pos >= p->len) return fail(p, "unterminated string"), false;
        const char *simple = strchr("\"\\/bfnrt", p->s[p->pos]);
        if (simple && p->s[p->pos]) {
            buf_byte(out, "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"]);
            p->pos++;
            continue;
        }
        if (p->s[p->pos] != 'u') return fail(p, "invalid escape"), false;
        p->pos++;
        int u = hex4(p);
        if (u < 0) return fail(p, "invalid \\u escape"), false;
        if (u >= 0xDC00 && u <= 0xDFFF) return fail(p, "lone surrogate in a \\u escape"), false;
        if (u >= 0xD800 && u <= 0xDBFF) {
            if (!literal(p, "\\u")) return fail(p, "lone surrogate in a \\u escape"), false;
            int low = hex4(p);
            if (low < 0xDC00 || low > 0xDFFF) return fail(p, "lone surrogate in a \\u escape"), false;
            u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00);
        }
        put_utf8(out, (uint32_t)u);
    }
}

static json_value *parse_value(parser *p);

static json_value *parse_array(parser *p) {
    json_value *v = new_value(JSON_ARRAY);
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') { p->pos++; return v; }
    for (;;) {
        json_value *item = parse_value(p);
        if (!item) return NULL;
        if (v->len == v->cap) {
            v->cap = v->cap * 2 + 4;
            v->items = xrealloc(v->items, v->cap * sizeof *v->items);
        }
        v->items[v->len++] = item;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->len && p->s[p->pos] == ']') { p->pos++; return v; }
        return fail(p, "expected `,` or `]`");
    }
}

static json_value *parse_object(parser *p) {
    json_value *v = new_value(JSON_OBJECT);
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') { p->pos++; return v; }
    for (;;) {
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != '"') return fail(p, "expected a key string");
        json_buf key = {0};
        if (!parse_string(p, &key)) return NULL;
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ':') return fail(p, "expected `:`");
        p->pos++;
        json_value *item = parse_value(p);
        if (!item) return NULL;
        json_object_set(v, key.ptr, key.len, item);
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->len && p->s[p->pos] == '}') { p->pos++; return v; }
        return fail(p, "expected `,` or `}`");
    }
}

static json_value *parse_value(parser *p) {
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, "expected a value");
    uint8_t c = p->s[p->pos];
    if (c == '{' || c == '[') {
        if (++p->depth > JSON_MAX_DEPTH) return fail(p, "nesting too deep");
        json_value *v = c == '{' ? parse_object(p) : parse_array(p);
        p->depth--;
        return v;
    }
    if (c == '"') {
        json_buf s = {0};
        if (!parse_string(p, &s)) return NULL;
        json_value *v = new_value(JSON_STRING);
        v->text = (json_text){s.ptr, s.len};
        return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p);
    json_value *v = new_value(JSON_NULL);
    if (literal(p, "null")) return v;
    v->kind = JSON_BOOL;
    if (literal(p, "true")) { v->boolean = true; return v; }
    if (literal(p, "false")) return v;
    return fail(p, "expected a value");
}

json_value *json_parse(const uint8_t *bytes, size_t len, char *err, size_t err_len) {
    parser p = {bytes, len, 0, 0, err, err_len};
    json_value *v = parse_value(&p);
    if (!v) return NULL;
    skip_ws(&p);
    if (p.pos < p.len) return fail(&p, "trailing characters");
    return v;
}

void json_object_set(json_value *object, const char *key, size_t key_len, json_value *value) {
    for (size_t i = 0; i < object->len; i++) {
        json_member *m = &object->members[i];
        if (m->key.len == key_len && memcmp(m->key.ptr, key, key_len) == 0) {
            m->value = value;
            return;
        }
    }
    if (object->len == object->cap) {
        object->cap = object->cap * 2 + 4;
        object->members = xrealloc(object->members, object->cap * sizeof *object->members);
    }
    char *copy = xrealloc(NULL, key_len + 1);
    memcpy(copy, key, key_len);
    object->members[object->len++] = (json_member){{copy, key_len}, value};
}

static void write_string(json_buf *out, const json_text *s) {
    static const char hex[] = "0123456789abcdef";
    buf_byte(out, '"');
    for (size_t i = 0; i < s->len; i++) {
        uint8_t c = (uint8_t)s->ptr[i];
        const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r"
                        : c == '\t' ? "\\t" : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
        if (esc) json_buf_append(out, esc, 2);
        else if (c < 0x20) {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            json_buf_append(out, u, 6);
        } else buf_byte(out, (char)c);
    }
    buf_byte(out, '"');
}

void json_write(json_buf *out, const json_value *v) {
    switch (v->kind) {
    case JSON_NULL: json_buf_append(out, "null", 4); break;
    case JSON_BOOL: v->boolean ? json_buf_append(out, "true", 4) : json_buf_append(out, "false", 5); break;
    case JSON_NUMBER: json_buf_append(out, v->text.ptr, v->text.len); break;
    case JSON_STRING: write_string(out, &v->text); break;
    case JSON_ARRAY:
        buf_byte(out, '[');
        for (size_t i = 0; i < v->len; i++) {
            if (i) buf_byte(out, ',');
            json_write(out, v->items[i]);
        }
        buf_byte(out, ']');
        break;
    case JSON_OBJECT:
        buf_byte(out, '{');
        for (size_t i = 0; i < v->len; i++) {
            if (i) buf_byte(out, ',');
            write_string(out, &v->members[i].key);
            buf_byte(out, ':');
            json_write(out, v->members[i].value);
        }
        buf_byte(out, '}');
        break;
    }
}
