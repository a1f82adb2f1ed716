// loop: spins forever without answering; only the CPU deadline stops it.
#include "guest.h"

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  (void)request;
  (void)out;
  volatile uint64_t spins = 0;
  for (;;) spins++;
}
