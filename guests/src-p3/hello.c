// hello (WASI 0.3): answers every request with a fixed greeting, through the
// wasi:http@0.3.0 handler, where `handle` is an `async func` and the body is a
// stream the guest writes after returning the response.
#include "guest.h"

service_callback_code_t exports_wasi_http_handler_handle(exports_wasi_http_handler_own_request_t request) {
  wasi_http_types_request_drop_own(request);
  return respond(200, "Hello from a WASI 0.3 component!\n");
}
