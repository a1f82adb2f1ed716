// Helpers shared by the guest fixtures: respond, write a body, read a body,
// format numbers. No libc stdio: it would import wasi_snapshot_preview1.
#ifndef DORMOUSE_GUEST_H
#define DORMOUSE_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

typedef wasi_http_types_own_response_outparam_t outparam_t;
typedef exports_wasi_http_incoming_handler_own_incoming_request_t request_t;

// A response under way: its body and the stream that writes it.
typedef struct {
  wasi_http_types_own_outgoing_body_t body;
  wasi_io_streams_own_output_stream_t stream;
} response_t;

static void set_header(wasi_http_types_own_fields_t fields, const char *name, const char *value) {
  proxy_string_t key;
  proxy_string_set(&key, name);
  wasi_http_types_field_value_t field = {(uint8_t *)value, strlen(value)};
  wasi_http_types_header_error_t err;
  wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(fields), &key, &field, &err);
}

// Sends the status line and headers; the body follows with `write_body`.
static response_t respond(outparam_t out, uint16_t status, const char *content_type) {
  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  if (content_type) set_header(headers, "content-type", content_type);
  wasi_http_types_own_outgoing_response_t response = wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_method_outgoing_response_set_status_code(wasi_http_types_borrow_outgoing_response(response), status);
  response_t r;
  wasi_http_types_method_outgoing_response_body(wasi_http_types_borrow_outgoing_response(response), &r.body);
  wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(r.body), &r.stream);
  wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false};
  result.val.ok = response;
  wasi_http_types_static_response_outparam_set(out, &result);
  return r;
}

static void write_body(response_t *r, const void *data, size_t len) {
  const uint8_t *bytes = data;
  while (len > 0) {
    // blocking-write-and-flush takes at most 4096 bytes a call.
    size_t n = len < 4096 ? len : 4096;
    proxy_list_u8_t chunk = {(uint8_t *)bytes, n};
    wasi_io_streams_stream_error_t err;
    if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(wasi_io_streams_borrow_output_stream(r->stream), &chunk, &err)) {
      return;
    }
    bytes += n;
    len -= n;
  }
}

static void write_str(response_t *r, const char *text) { write_body(r, text, strlen(text)); }

static void finish(response_t *r) {
  wasi_io_streams_output_stream_drop_own(r->stream);
  wasi_http_types_error_code_t err;
  wasi_http_types_static_outgoing_body_finish(r->body, NULL, &err);
}

// Decimal text of `value` in `buf` (at least 21 bytes); returns `buf`.
static char *format_u64(uint64_t value, char *buf) {
  char digits[21];
  int n = 0;
  do {
    digits[n++] = (char)('0' + value % 10);
    value /= 10;
  } while (value);
  for (int i = 0; i < n; i++) buf[i] = digits[n - 1 - i];
  buf[n] = 0;
  return buf;
}

// The request's path and query as a NUL-terminated string (caller frees).
static char *request_path(request_t request) {
  proxy_string_t path;
  if (!wasi_http_types_method_incoming_request_path_with_query(wasi_http_types_borrow_incoming_request(request), &path)) {
    return strdup("");
  }
  char *text = malloc(path.len + 1);
  memcpy(text, path.ptr, path.len);
  text[path.len] = 0;
  proxy_string_free(&path);
  return text;
}

// The number after `name=` in the query string, or `fallback`.
static uint64_t query_number(const char *path, const char *name, uint64_t fallback) {
  const char *query = strchr(path, '?');
  size_t name_len = strlen(name);
  for (const char *at = query; at; at = strchr(at + 1, '&')) {
    if (strncmp(at + 1, name, name_len) == 0 && at[1 + name_len] == '=') {
      uint64_t value = 0;
      for (const char *d = at + 2 + name_len; *d >= '0' && *d <= '9'; d++) value = value * 10 + (uint64_t)(*d - '0');
      return value;
    }
  }
  return fallback;
}

static void sleep_ms(uint64_t ms) {
  if (ms == 0) return;
  wasi_io_poll_own_pollable_t pollable = wasi_clocks_monotonic_clock_subscribe_duration(ms * 1000000);
  wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(pollable));
  wasi_io_poll_pollable_drop_own(pollable);
}

// A byte buffer the guest owns.
typedef struct {
  uint8_t *data;
  size_t len;
} blob_t;

static void blob_push(blob_t *b, const void *data, size_t len) {
  b->data = realloc(b->data, b->len + len + 1);
  memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = 0;  // always NUL-terminated, for text
}

// The whole request body (empty if there is none or it cannot be read).
static blob_t request_body(request_t request) {
  blob_t all = {calloc(1, 1), 0};
  wasi_http_types_own_incoming_body_t body;
  if (!wasi_http_types_method_incoming_request_consume(wasi_http_types_borrow_incoming_request(request), &body)) {
    return all;
  }
  wasi_io_streams_own_input_stream_t stream;
  wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &stream);
  for (;;) {
    proxy_list_u8_t chunk;
    wasi_io_streams_stream_error_t err;
    if (!wasi_io_streams_method_input_stream_blocking_read(wasi_io_streams_borrow_input_stream(stream), 65536, &chunk, &err)) {
      break;
    }
    blob_push(&all, chunk.ptr, chunk.len);
    proxy_list_u8_free(&chunk);
  }
  wasi_io_streams_input_stream_drop_own(stream);
  wasi_http_types_incoming_body_drop_own(body);
  return all;
}

// The request method as a tag (WASI_HTTP_TYPES_METHOD_GET, ...).
static uint8_t request_method(request_t request) {
  wasi_http_types_method_t method;
  wasi_http_types_method_incoming_request_method(wasi_http_types_borrow_incoming_request(request), &method);
  uint8_t tag = method.tag;
  wasi_http_types_method_free(&method);
  return tag;
}

// The first value of header `name` as a NUL-terminated string (caller
// frees), or NULL.
static char *request_header(request_t request, const char *name) {
  wasi_http_types_own_headers_t headers =
      wasi_http_types_method_incoming_request_headers(wasi_http_types_borrow_incoming_request(request));
  proxy_string_t key;
  proxy_string_set(&key, name);
  wasi_http_types_list_field_value_t values;
  wasi_http_types_method_fields_get(wasi_http_types_borrow_fields(headers), &key, &values);
  char *text = NULL;
  if (values.len > 0) {
    text = malloc(values.ptr[0].len + 1);
    memcpy(text, values.ptr[0].ptr, values.ptr[0].len);
    text[values.ptr[0].len] = 0;
  }
  wasi_http_types_list_field_value_free(&values);
  wasi_http_types_fields_drop_own(headers);
  return text;
}

// Segment `index` (from 0) of the path, without the query, as a new string,
// or NULL when there are fewer segments.
static char *path_segment(const char *path, int index) {
  const char *at = path;
  for (int i = 0;; i++) {
    while (*at == '/') at++;
    if (*at == 0 || *at == '?') return NULL;
    const char *end = at;
    while (*end && *end != '/' && *end != '?') end++;
    if (i == index) {
      char *segment = malloc((size_t)(end - at) + 1);
      memcpy(segment, at, (size_t)(end - at));
      segment[end - at] = 0;
      return segment;
    }
    at = end;
  }
}

// The text after `name=` in the query, up to the next `&`, as a new string,
// or NULL.
static char *query_text(const char *path, const char *name) {
  const char *query = strchr(path, '?');
  size_t name_len = strlen(name);
  for (const char *at = query; at; at = strchr(at + 1, '&')) {
    if (strncmp(at + 1, name, name_len) == 0 && at[1 + name_len] == '=') {
      const char *start = at + 2 + name_len;
      size_t len = strcspn(start, "&");
      char *text = malloc(len + 1);
      memcpy(text, start, len);
      text[len] = 0;
      return text;
    }
  }
  return NULL;
}

// A NUL-terminated copy of a string the host returned (the original is freed).
static char *take_string(proxy_string_t *s) {
  char *text = malloc(s->len + 1);
  memcpy(text, s->ptr, s->len);
  text[s->len] = 0;
  proxy_string_free(s);
  return text;
}

// Answers with `status` and a one-line text body.
static void respond_text(outparam_t out, uint16_t status, const char *text) {
  response_t r = respond(out, status, "text/plain");
  write_str(&r, text);
  write_str(&r, "\n");
  finish(&r);
}

#endif
