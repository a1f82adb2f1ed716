// Helpers for dormouse's wasi:http 0.3 test guests (one request per instance,
// so the state is global).
//
// `handle` is lifted with a callback: a guest builds its whole answer, calls
// `respond`, and returns what it returns; the host then calls
// `exports_wasi_http_handler_handle_callback` (defined here) with each event
// the guest waits for, while the body streams out.
#ifndef DORMOUSE_GUEST_P3_H
#define DORMOUSE_GUEST_P3_H

#include <stdlib.h>
#include <string.h>

#include "service.h"

// Called, when set, each time the host has taken part of the body.
static void (*on_body_taken)(void);

static struct {
  const char *body;
  size_t length;
  size_t written;
  wasi_http_types_stream_u8_writer_t writer;
  wasi_http_types_future_result_option_own_trailers_error_code_writer_t trailers;
  service_waitable_set_t waiting;
} reply;

// Ends the body: no trailers, no error.
static service_callback_code_t end_body(void) {
  wasi_http_types_stream_u8_drop_writable(reply.writer);
  wasi_http_types_result_option_own_trailers_error_code_t no_trailers = {0};
  service_waitable_status_t status =
      wasi_http_types_future_result_option_own_trailers_error_code_write(reply.trailers, &no_trailers);
  if (status == SERVICE_WAITABLE_STATUS_BLOCKED) {
    service_waitable_join(reply.trailers, reply.waiting);
    return SERVICE_CALLBACK_CODE_WAIT(reply.waiting);
  }
  wasi_http_types_future_result_option_own_trailers_error_code_drop_writable(reply.trailers);
  service_waitable_set_drop(reply.waiting);
  return SERVICE_CALLBACK_CODE_EXIT;
}

// Writes what is left of the body, waiting whenever the reader is behind.
static service_callback_code_t write_body(void) {
  while (reply.written < reply.length) {
    service_waitable_status_t status =
        wasi_http_types_stream_u8_write(reply.writer, (const uint8_t *)reply.body + reply.written, reply.length - reply.written);
    if (status == SERVICE_WAITABLE_STATUS_BLOCKED) {
      service_waitable_join(reply.writer, reply.waiting);
      return SERVICE_CALLBACK_CODE_WAIT(reply.waiting);
    }
    reply.written += SERVICE_WAITABLE_COUNT(status);
    if (SERVICE_WAITABLE_STATE(status) != SERVICE_WAITABLE_COMPLETED) break;  // the reader went away
  }
  return end_body();
}

// Returns a response with `status` and the text `body` (which must outlive
// the request) as the result of `handle`, then starts writing the body.
static service_callback_code_t respond(uint16_t status, const char *body) {
  reply.body = body;
  reply.length = strlen(body);
  reply.written = 0;
  reply.waiting = service_waitable_set_new();
  wasi_http_types_stream_u8_t contents = wasi_http_types_stream_u8_new(&reply.writer);
  wasi_http_types_future_result_option_own_trailers_error_code_t trailers =
      wasi_http_types_future_result_option_own_trailers_error_code_new(&reply.trailers);
  wasi_http_types_tuple2_own_response_future_result_void_error_code_t created;
  wasi_http_types_static_response_new(wasi_http_types_constructor_fields(), &contents, trailers, &created);
  // Whether the host took the whole response: not needed here.
  wasi_http_types_future_result_void_error_code_drop_readable(created.f1);
  wasi_http_types_method_response_set_status_code(wasi_http_types_borrow_response(created.f0), status);
  exports_wasi_http_handler_result_own_response_error_code_t result = {.is_err = false, .val.ok = created.f0};
  exports_wasi_http_handler_handle_return(result);
  return write_body();
}

service_callback_code_t exports_wasi_http_handler_handle_callback(service_event_t *event) {
  switch (event->event) {
    case SERVICE_EVENT_STREAM_WRITE:
      service_waitable_join(reply.writer, 0);
      reply.written += SERVICE_WAITABLE_COUNT(event->code);
      if (on_body_taken) on_body_taken();
      if (SERVICE_WAITABLE_STATE(event->code) != SERVICE_WAITABLE_COMPLETED) return end_body();
      return write_body();
    case SERVICE_EVENT_FUTURE_WRITE:
      service_waitable_join(reply.trailers, 0);
      wasi_http_types_future_result_option_own_trailers_error_code_drop_writable(reply.trailers);
      service_waitable_set_drop(reply.waiting);
      return SERVICE_CALLBACK_CODE_EXIT;
    default:
      return SERVICE_CALLBACK_CODE_WAIT(reply.waiting);
  }
}

// Waits for the stream or future `waitable` (a read or write that returned
// BLOCKED), blocking the handler, and returns the event's code.
static uint32_t wait_for(uint32_t waitable) {
  service_waitable_set_t set = service_waitable_set_new();
  service_waitable_join(waitable, set);
  service_event_t event;
  service_waitable_set_wait(set, &event);
  service_waitable_join(waitable, 0);
  service_waitable_set_drop(set);
  return event.code;
}

// The first value of request header `name`, NUL-terminated (malloc'd), or NULL.
static char *request_header(wasi_http_types_own_request_t request, const char *name) {
  wasi_http_types_own_headers_t headers =
      wasi_http_types_method_request_get_headers(wasi_http_types_borrow_request(request));
  wasi_http_types_field_name_t field;
  service_string_set(&field, name);
  wasi_http_types_list_field_value_t values;
  wasi_http_types_method_fields_get(wasi_http_types_borrow_fields(headers), &field, &values);
  char *value = NULL;
  if (values.len > 0) {
    value = malloc(values.ptr[0].len + 1);
    memcpy(value, values.ptr[0].ptr, values.ptr[0].len);
    value[values.ptr[0].len] = 0;
  }
  wasi_http_types_list_field_value_free(&values);
  wasi_http_types_fields_drop_own(headers);
  return value;
}

#endif
