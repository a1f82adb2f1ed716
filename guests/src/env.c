// env: answers with the environment it was given, one NAME=VALUE per line, in
// the order the host lists it.
#include "guest.h"

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  wasi_http_types_incoming_request_drop_own(request);
  proxy_list_tuple2_string_string_t environment;
  wasi_cli_environment_get_environment(&environment);
  response_t r = respond(out, 200, "text/plain");
  for (size_t i = 0; i < environment.len; i++) {
    write_body(&r, environment.ptr[i].f0.ptr, environment.ptr[i].f0.len);
    write_str(&r, "=");
    write_body(&r, environment.ptr[i].f1.ptr, environment.ptr[i].f1.len);
    write_str(&r, "\n");
  }
  proxy_list_tuple2_string_string_free(&environment);
  finish(&r);
}
