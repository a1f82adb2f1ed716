// echo: answers with the request's method, path, headers and body:
//   METHOD /path?query
//   name: value        (one line per header, in the order received)
//   (empty line)
//   body
// By default it sends its headers first and streams the body back as it
// reads it; with `buffer=1` in the query it reads the whole body first, and
// answers 400 if the body cannot be read.
#include "guest.h"

typedef struct {
  uint8_t *data;
  size_t len;
  bool ok;
} bytes_t;

// Reads the request body; with `echo` set, writes each chunk as it arrives.
static bytes_t read_body(request_t request, response_t *echo) {
  bytes_t all = {NULL, 0, true};
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
      // Closed is the normal end; anything else means the body was cut off
      // (for one, the host's body size limit).
      all.ok = err.tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED;
      break;
    }
    if (echo) {
      write_body(echo, chunk.ptr, chunk.len);
    } else {
      all.data = realloc(all.data, all.len + chunk.len);
      memcpy(all.data + all.len, chunk.ptr, chunk.len);
      all.len += chunk.len;
    }
    proxy_list_u8_free(&chunk);
  }
  wasi_io_streams_input_stream_drop_own(stream);
  wasi_http_types_incoming_body_drop_own(body);
  return all;
}

static const char *method_name(wasi_http_types_method_t *method, char *other) {
  static const char *names[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"};
  if (method->tag < sizeof names / sizeof names[0]) return names[method->tag];
  size_t n = method->val.other.len < 63 ? method->val.other.len : 63;
  memcpy(other, method->val.other.ptr, n);
  other[n] = 0;
  return other;
}

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  wasi_http_types_borrow_incoming_request_t borrowed = wasi_http_types_borrow_incoming_request(request);
  wasi_http_types_method_t method;
  wasi_http_types_method_incoming_request_method(borrowed, &method);
  char other[64];
  char *path = request_path(request);
  bool buffer = query_number(path, "buffer", 0) != 0;
  bytes_t buffered = {NULL, 0, true};
  if (buffer) {
    buffered = read_body(request, NULL);
    if (!buffered.ok) {
      response_t r = respond(out, 400, "text/plain");
      write_str(&r, "request body could not be read\n");
      finish(&r);
      free(path);
      wasi_http_types_incoming_request_drop_own(request);
      return;
    }
  }

  response_t r = respond(out, 200, "text/plain");
  write_str(&r, method_name(&method, other));
  write_str(&r, " ");
  write_str(&r, path);
  write_str(&r, "\n");
  free(path);

  wasi_http_types_own_headers_t headers = wasi_http_types_method_incoming_request_headers(borrowed);
  wasi_http_types_list_tuple2_field_name_field_value_t entries;
  wasi_http_types_method_fields_entries(wasi_http_types_borrow_fields(headers), &entries);
  for (size_t i = 0; i < entries.len; i++) {
    write_body(&r, entries.ptr[i].f0.ptr, entries.ptr[i].f0.len);
    write_str(&r, ": ");
    write_body(&r, entries.ptr[i].f1.ptr, entries.ptr[i].f1.len);
    write_str(&r, "\n");
  }
  wasi_http_types_list_tuple2_field_name_field_value_free(&entries);
  wasi_http_types_fields_drop_own(headers);
  write_str(&r, "\n");

  if (buffer) {
    write_body(&r, buffered.data, buffered.len);
    free(buffered.data);
  } else {
    read_body(request, &r);
  }
  wasi_http_types_incoming_request_drop_own(request);
  finish(&r);
}
