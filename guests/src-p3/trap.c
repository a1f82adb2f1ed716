// trap (WASI 0.3): traps before answering, or, with `x-trap: mid-body`, once
// its response head is out and the host has taken the first part of the body.
#include "guest.h"

static void trap(void) { __builtin_trap(); }

service_callback_code_t exports_wasi_http_handler_handle(exports_wasi_http_handler_own_request_t request) {
  char *when = request_header(request, "x-trap");
  wasi_http_types_request_drop_own(request);
  if (when == NULL || strcmp(when, "mid-body") != 0) __builtin_trap();
  on_body_taken = trap;
  return respond(200, "the first part of a body that never ends\n");
}
