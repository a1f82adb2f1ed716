// fetch: makes one outgoing GET request (wasi:http/outgoing-handler) to the
// URL in the `x-fetch-url` header and reports what came back:
//   200, body `STATUS\nlocation: L\n\nBODY` (the `location` line only for a
//   redirect) when a response came;
//   502, body `error: NAME` with the wasi:http error code otherwise.
// With `x-fetch-follow: 1`, a redirect is followed once: the request to the
// `location` is a new outgoing request, checked like the first. With
// `x-fetch-loop: 1`, the outgoing request carries the `x-fetch-*` headers on
// (so a fetch of itself fetches itself again). `x-fetch-timeout-ms: N` sets
// the request's first-byte timeout.
#include "guest.h"

static const char *error_names[] = {
    "DNS-timeout", "DNS-error", "destination-not-found", "destination-unavailable", "destination-IP-prohibited",
    "destination-IP-unroutable", "connection-refused", "connection-terminated", "connection-timeout",
    "connection-read-timeout", "connection-write-timeout", "connection-limit-reached", "TLS-protocol-error",
    "TLS-certificate-error", "TLS-alert-received", "HTTP-request-denied", "HTTP-request-length-required",
    "HTTP-request-body-size", "HTTP-request-method-invalid", "HTTP-request-URI-invalid", "HTTP-request-URI-too-long",
    "HTTP-request-header-section-size", "HTTP-request-header-size", "HTTP-request-trailer-section-size",
    "HTTP-request-trailer-size", "HTTP-response-incomplete", "HTTP-response-header-section-size",
    "HTTP-response-header-size", "HTTP-response-body-size", "HTTP-response-trailer-section-size",
    "HTTP-response-trailer-size", "HTTP-response-transfer-coding", "HTTP-response-content-coding",
    "HTTP-response-timeout", "HTTP-upgrade-failed", "HTTP-protocol-error", "loop-detected", "configuration-error",
    "internal-error",
};

static const char *error_name(wasi_http_types_error_code_t *code) {
  return code->tag < sizeof error_names / sizeof error_names[0] ? error_names[code->tag] : "unknown";
}

typedef struct {
  uint16_t status;
  char *location;  // NULL unless the response had one
  blob_t body;
  const char *error;  // set instead when no response came
} fetched_t;

static void add_header(wasi_http_types_own_fields_t fields, const char *name, const char *value) {
  if (value) set_header(fields, name, value);
}

// Splits `scheme://authority/path` and sends a GET, with `loop_headers`
// (NULL-terminated name, value pairs) when given.
static fetched_t fetch(const char *url, const char **loop_headers, uint64_t timeout_ms) {
  fetched_t result = {0, NULL, {calloc(1, 1), 0}, NULL};
  const char *rest = strstr(url, "://");
  if (!rest) {
    result.error = "not an absolute URL";
    return result;
  }
  wasi_http_types_scheme_t scheme;
  if (strncmp(url, "https", 5) == 0 && url + 5 == rest) {
    scheme.tag = WASI_HTTP_TYPES_SCHEME_HTTPS;
  } else {
    scheme.tag = WASI_HTTP_TYPES_SCHEME_HTTP;
  }
  rest += 3;
  size_t authority_len = strcspn(rest, "/?");
  char *authority = strndup(rest, authority_len);
  const char *path = rest[authority_len] ? rest + authority_len : "/";

  wasi_http_types_own_fields_t fields = wasi_http_types_constructor_fields();
  for (const char **h = loop_headers; h && h[0]; h += 2) add_header(fields, h[0], h[1]);
  wasi_http_types_own_outgoing_request_t request = wasi_http_types_constructor_outgoing_request(fields);
  wasi_http_types_borrow_outgoing_request_t borrowed = wasi_http_types_borrow_outgoing_request(request);
  wasi_http_types_method_outgoing_request_set_scheme(borrowed, &scheme);
  proxy_string_t authority_string, path_string;
  proxy_string_set(&authority_string, authority);
  proxy_string_set(&path_string, path);
  wasi_http_types_method_outgoing_request_set_authority(borrowed, &authority_string);
  wasi_http_types_method_outgoing_request_set_path_with_query(borrowed, &path_string);

  wasi_http_outgoing_handler_own_future_incoming_response_t future;
  wasi_http_outgoing_handler_error_code_t code;
  wasi_http_types_own_request_options_t options;
  wasi_http_types_own_request_options_t *options_arg = NULL;
  if (timeout_ms) {
    options = wasi_http_types_constructor_request_options();
    wasi_http_types_duration_t timeout = timeout_ms * 1000000;
    wasi_http_types_method_request_options_set_first_byte_timeout(wasi_http_types_borrow_request_options(options),
                                                                   &timeout);
    options_arg = &options;
  }
  if (!wasi_http_outgoing_handler_handle(request, options_arg, &future, &code)) {
    result.error = error_name(&code);
    return result;
  }
  wasi_http_types_borrow_future_incoming_response_t pending = wasi_http_types_borrow_future_incoming_response(future);
  wasi_io_poll_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(pending);
  wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
  wasi_io_poll_pollable_drop_own(ready);
  wasi_http_types_result_result_own_incoming_response_error_code_void_t outcome;
  wasi_http_types_method_future_incoming_response_get(pending, &outcome);
  wasi_http_types_future_incoming_response_drop_own(future);
  if (outcome.is_err) {
    result.error = "response already taken";
    return result;
  }
  if (outcome.val.ok.is_err) {
    result.error = error_name(&outcome.val.ok.val.err);
    return result;
  }
  wasi_http_types_own_incoming_response_t response = outcome.val.ok.val.ok;
  wasi_http_types_borrow_incoming_response_t response_ref = wasi_http_types_borrow_incoming_response(response);
  result.status = wasi_http_types_method_incoming_response_status(response_ref);

  wasi_http_types_own_headers_t headers = wasi_http_types_method_incoming_response_headers(response_ref);
  proxy_string_t location_name;
  proxy_string_set(&location_name, "location");
  wasi_http_types_list_field_value_t values;
  wasi_http_types_method_fields_get(wasi_http_types_borrow_fields(headers), &location_name, &values);
  if (values.len > 0) result.location = strndup((const char *)values.ptr[0].ptr, values.ptr[0].len);
  wasi_http_types_list_field_value_free(&values);
  wasi_http_types_fields_drop_own(headers);

  wasi_http_types_own_incoming_body_t body;
  if (wasi_http_types_method_incoming_response_consume(response_ref, &body)) {
    wasi_io_streams_own_input_stream_t stream;
    wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &stream);
    for (;;) {
      proxy_list_u8_t chunk;
      wasi_io_streams_stream_error_t err;
      if (!wasi_io_streams_method_input_stream_blocking_read(wasi_io_streams_borrow_input_stream(stream), 65536, &chunk, &err)) {
        break;
      }
      blob_push(&result.body, chunk.ptr, chunk.len);
      proxy_list_u8_free(&chunk);
    }
    wasi_io_streams_input_stream_drop_own(stream);
    wasi_http_types_incoming_body_drop_own(body);
  }
  wasi_http_types_incoming_response_drop_own(response);
  return result;
}

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  char *url = request_header(request, "x-fetch-url");
  char *follow = request_header(request, "x-fetch-follow");
  char *loop = request_header(request, "x-fetch-loop");
  char *timeout = request_header(request, "x-fetch-timeout-ms");
  wasi_http_types_incoming_request_drop_own(request);
  uint64_t timeout_ms = 0;
  for (const char *d = timeout; d && *d >= '0' && *d <= '9'; d++) timeout_ms = timeout_ms * 10 + (uint64_t)(*d - '0');
  const char *loop_headers[] = {"x-fetch-url", url, "x-fetch-loop", loop, NULL};
  if (!url) {
    respond_text(out, 400, "usage: send the URL in an x-fetch-url header");
    return;
  }
  fetched_t fetched = fetch(url, loop ? loop_headers : NULL, timeout_ms);
  if (!fetched.error && follow && fetched.location && fetched.status >= 300 && fetched.status < 400) {
    fetched = fetch(fetched.location, NULL, timeout_ms);
  }
  if (fetched.error) {
    char text[128] = "error: ";
    strncat(text, fetched.error, sizeof text - 8);
    respond_text(out, 502, text);
    return;
  }
  response_t r = respond(out, 200, "text/plain");
  char number[21];
  write_str(&r, format_u64(fetched.status, number));
  write_str(&r, "\n");
  if (fetched.location) {
    write_str(&r, "location: ");
    write_str(&r, fetched.location);
    write_str(&r, "\n");
  }
  write_str(&r, "\n");
  write_body(&r, fetched.body.data, fetched.body.len);
  finish(&r);
}
