// loop (WASI 0.3): spins forever without answering; only the CPU deadline
// stops it.
#include "guest.h"

service_callback_code_t exports_wasi_http_handler_handle(exports_wasi_http_handler_own_request_t request) {
  (void)request;
  volatile uint64_t spins = 0;
  for (;;) spins++;
}
