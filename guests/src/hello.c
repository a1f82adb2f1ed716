// hello: answers every request with a fixed greeting.
#include "guest.h"

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  wasi_http_types_incoming_request_drop_own(request);
  response_t r = respond(out, 200, "text/plain");
  write_str(&r, "Hello from dormouse!\n");
  finish(&r);
}
