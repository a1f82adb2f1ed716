// slow: streams `chunks` lines (default 5), sleeping `ms` milliseconds
// (default 200) before each; traps after `trap_after` lines when given.
#include "guest.h"

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  char *path = request_path(request);
  uint64_t chunks = query_number(path, "chunks", 5);
  uint64_t ms = query_number(path, "ms", 200);
  uint64_t trap_after = query_number(path, "trap_after", UINT64_MAX);
  free(path);
  wasi_http_types_incoming_request_drop_own(request);

  response_t r = respond(out, 200, "text/plain");
  char number[21];
  for (uint64_t i = 1; i <= chunks; i++) {
    if (i > trap_after) __builtin_trap();
    sleep_ms(ms);
    write_str(&r, "chunk ");
    write_str(&r, format_u64(i, number));
    write_str(&r, "\n");
  }
  finish(&r);
}
