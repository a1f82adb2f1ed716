// hog: grows its memory 1 MiB at a time, touching every page, until growth
// fails; answers `grew to N MiB` with the final size, or traps if the query
// holds `trap=1`.
#include "guest.h"

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  char *path = request_path(request);
  bool trap = query_number(path, "trap", 0) != 0;
  free(path);
  wasi_http_types_incoming_request_drop_own(request);

  const size_t pages_per_step = 16;  // 1 MiB in 64 KiB pages
  for (;;) {
    size_t first = __builtin_wasm_memory_grow(0, pages_per_step);
    if (first == (size_t)-1) break;
    volatile uint8_t *base = (volatile uint8_t *)(first * 65536);
    for (size_t page = 0; page < pages_per_step; page++) base[page * 65536] = 1;
  }
  if (trap) __builtin_trap();

  char number[21];
  uint64_t mib = (uint64_t)__builtin_wasm_memory_size(0) * 65536 / (1024 * 1024);
  response_t r = respond(out, 200, "text/plain");
  write_str(&r, "grew to ");
  write_str(&r, format_u64(mib, number));
  write_str(&r, " MiB\n");
  finish(&r);
}
