// fetch (WASI 0.3): GETs the URL in the `x-fetch-url` header with
// `wasi:http/client.send` and answers 200 with the upstream status, or 502
// with `error: <code>` when the request failed (`HTTP-request-denied` by
// name, other codes by number).
#include "guest.h"

static char answer[64];

// Writes `n` in decimal at `out`; returns the end.
static char *decimal(char *out, unsigned n) {
  char digits[10];
  int count = 0;
  do digits[count++] = (char)('0' + n % 10); while ((n /= 10) != 0);
  while (count > 0) *out++ = digits[--count];
  return out;
}

service_callback_code_t exports_wasi_http_handler_handle(exports_wasi_http_handler_own_request_t incoming) {
  char *url = request_header(incoming, "x-fetch-url");
  wasi_http_types_request_drop_own(incoming);
  if (url == NULL) return respond(400, "x-fetch-url is missing\n");

  // http://AUTHORITY/PATH
  const char *rest = strncmp(url, "http://", 7) == 0 ? url + 7 : url;
  const char *slash = strchr(rest, '/');
  service_string_t authority, path;
  service_string_dup_n(&authority, rest, slash ? (size_t)(slash - rest) : strlen(rest));
  service_string_dup(&path, slash ? slash : "/");

  wasi_http_types_future_result_option_own_trailers_error_code_writer_t trailers_writer;
  wasi_http_types_future_result_option_own_trailers_error_code_t trailers =
      wasi_http_types_future_result_option_own_trailers_error_code_new(&trailers_writer);
  wasi_http_types_tuple2_own_request_future_result_void_error_code_t created;
  wasi_http_types_static_request_new(wasi_http_types_constructor_fields(), NULL, trailers, NULL, &created);
  wasi_http_types_future_result_void_error_code_drop_readable(created.f1);
  // No body and no trailers; the host takes the value when it ends the body.
  wasi_http_types_result_option_own_trailers_error_code_t no_trailers = {0};
  service_waitable_status_t trailers_written =
      wasi_http_types_future_result_option_own_trailers_error_code_write(trailers_writer, &no_trailers);
  wasi_http_types_borrow_request_t request = wasi_http_types_borrow_request(created.f0);
  wasi_http_types_scheme_t scheme = {.tag = WASI_HTTP_TYPES_SCHEME_HTTP};
  wasi_http_types_method_request_set_scheme(request, &scheme);
  wasi_http_types_method_request_set_authority(request, &authority);
  wasi_http_types_method_request_set_path_with_query(request, &path);

  wasi_http_types_own_response_t response;
  wasi_http_types_error_code_t error;
  bool sent = wasi_http_client_send(created.f0, &response, &error);
  // Taken by now, or the request is gone: either ends the write.
  if (trailers_written == SERVICE_WAITABLE_STATUS_BLOCKED) wait_for(trailers_writer);
  wasi_http_types_future_result_option_own_trailers_error_code_drop_writable(trailers_writer);
  char *end;
  if (sent) {
    end = decimal(answer, wasi_http_types_method_response_get_status_code(wasi_http_types_borrow_response(response)));
    wasi_http_types_response_drop_own(response);
    *end++ = '\n';
    *end = 0;
    return respond(200, answer);
  }
  strcpy(answer, "error: ");
  end = answer + strlen(answer);
  if (error.tag == WASI_HTTP_TYPES_ERROR_CODE_HTTP_REQUEST_DENIED) {
    strcpy(end, "HTTP-request-denied");
    end += strlen(end);
  } else {
    end = decimal(end, error.tag);
  }
  *end++ = '\n';
  *end = 0;
  return respond(502, answer);
}
