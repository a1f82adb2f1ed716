// log: writes a line to stdout and one to stderr (the second in two
// writes, and a third without a newline), then answers `logged`.
#include "guest.h"

static void emit(wasi_io_streams_own_output_stream_t stream, const char *text) {
  proxy_list_u8_t bytes = {(uint8_t *)text, strlen(text)};
  wasi_io_streams_stream_error_t err;
  wasi_io_streams_method_output_stream_blocking_write_and_flush(wasi_io_streams_borrow_output_stream(stream), &bytes, &err);
}

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  wasi_http_types_incoming_request_drop_own(request);
  wasi_cli_stdout_own_output_stream_t stdout_stream = wasi_cli_stdout_get_stdout();
  emit(stdout_stream, "handled a request\n");
  wasi_io_streams_output_stream_drop_own(stdout_stream);
  wasi_cli_stderr_own_output_stream_t stderr_stream = wasi_cli_stderr_get_stderr();
  emit(stderr_stream, "a warning in ");
  emit(stderr_stream, "two writes\nand an unfinished line");
  wasi_io_streams_output_stream_drop_own(stderr_stream);
  response_t r = respond(out, 200, "text/plain");
  write_str(&r, "logged\n");
  finish(&r);
}
