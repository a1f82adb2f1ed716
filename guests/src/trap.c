// trap: traps before it answers.
#include "guest.h"

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  (void)request;
  (void)out;
  __builtin_trap();
}
