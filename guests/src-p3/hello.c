// hello (WASI 0.3): answers every request with a fixed greeting, through the
// wasi:http@0.3.0 handler, where `handle` is an `async func` and the body is a
// stream the guest writes after returning the response.
//
// The export is lifted with a callback: `handle` returns a code (exit, or
// wait on a set of waitables), and the host calls `handle_callback` with the
// event it waited for. One request per instance, so the state is global.
#include "service.h"

static const char GREETING[] = "Hello from a WASI 0.3 component!\n";

static struct {
  wasi_http_types_stream_u8_writer_t body;
  wasi_http_types_future_result_option_own_trailers_error_code_writer_t trailers;
  service_waitable_set_t waiting;
  size_t written;
} state;

// Ends the body: no trailers, no error.
static service_callback_code_t end_body(void) {
  wasi_http_types_stream_u8_drop_writable(state.body);
  wasi_http_types_result_option_own_trailers_error_code_t no_trailers = {0};
  service_waitable_status_t status =
      wasi_http_types_future_result_option_own_trailers_error_code_write(state.trailers, &no_trailers);
  if (status == SERVICE_WAITABLE_STATUS_BLOCKED) {
    service_waitable_join(state.trailers, state.waiting);
    return SERVICE_CALLBACK_CODE_WAIT(state.waiting);
  }
  wasi_http_types_future_result_option_own_trailers_error_code_drop_writable(state.trailers);
  service_waitable_set_drop(state.waiting);
  return SERVICE_CALLBACK_CODE_EXIT;
}

// Writes what is left of the greeting, waiting whenever the reader is behind.
static service_callback_code_t write_body(void) {
  while (state.written < sizeof GREETING - 1) {
    service_waitable_status_t status = wasi_http_types_stream_u8_write(
        state.body, (const uint8_t *)GREETING + state.written, sizeof GREETING - 1 - state.written);
    if (status == SERVICE_WAITABLE_STATUS_BLOCKED) {
      service_waitable_join(state.body, state.waiting);
      return SERVICE_CALLBACK_CODE_WAIT(state.waiting);
    }
    state.written += SERVICE_WAITABLE_COUNT(status);
    if (SERVICE_WAITABLE_STATE(status) != SERVICE_WAITABLE_COMPLETED) break;  // the reader went away
  }
  return end_body();
}

service_callback_code_t exports_wasi_http_handler_handle(exports_wasi_http_handler_own_request_t request) {
  wasi_http_types_request_drop_own(request);
  state.waiting = service_waitable_set_new();
  state.written = 0;
  wasi_http_types_stream_u8_t body = wasi_http_types_stream_u8_new(&state.body);
  wasi_http_types_future_result_option_own_trailers_error_code_t trailers =
      wasi_http_types_future_result_option_own_trailers_error_code_new(&state.trailers);
  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  wasi_http_types_tuple2_own_response_future_result_void_error_code_t created;
  wasi_http_types_static_response_new(headers, &body, trailers, &created);
  // The future says whether the host took the whole response; not needed here.
  wasi_http_types_future_result_void_error_code_drop_readable(created.f1);
  exports_wasi_http_handler_result_own_response_error_code_t result = {.is_err = false, .val.ok = created.f0};
  exports_wasi_http_handler_handle_return(result);
  return write_body();
}

service_callback_code_t exports_wasi_http_handler_handle_callback(service_event_t *event) {
  switch (event->event) {
    case SERVICE_EVENT_STREAM_WRITE:
      service_waitable_join(state.body, 0);
      state.written += SERVICE_WAITABLE_COUNT(event->code);
      if (SERVICE_WAITABLE_STATE(event->code) != SERVICE_WAITABLE_COMPLETED) return end_body();
      return write_body();
    case SERVICE_EVENT_FUTURE_WRITE:
      service_waitable_join(state.trailers, 0);
      wasi_http_types_future_result_option_own_trailers_error_code_drop_writable(state.trailers);
      service_waitable_set_drop(state.waiting);
      return SERVICE_CALLBACK_CODE_EXIT;
    default:
      return SERVICE_CALLBACK_CODE_WAIT(state.waiting);
  }
}
