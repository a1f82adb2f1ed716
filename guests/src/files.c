// files: a static file server over wasi:filesystem, as naive as many are: it
// percent-decodes the path and opens it below the directory preopened at `/`,
// trusting the host to keep it there.
//   GET /files/PATH   the file; `error: CODE` with 404 (no-entry), 403
//                     (access, not-permitted) or 500 (any other code)
//   PUT /files/PATH   tries to create the file: shows writes are refused
#include "guest.h"

static const char *fs_errors[] = {
    "access", "would-block", "already", "bad-descriptor", "busy", "deadlock", "quota", "exist", "file-too-large",
    "illegal-byte-sequence", "in-progress", "interrupted", "invalid", "io", "is-directory", "loop", "too-many-links",
    "message-size", "name-too-long", "no-device", "no-entry", "no-lock", "insufficient-memory", "insufficient-space",
    "not-directory", "not-empty", "not-recoverable", "unsupported", "no-tty", "no-such-device", "overflow",
    "not-permitted", "pipe", "read-only", "invalid-seek", "text-file-busy", "cross-device",
};

static void fs_error(outparam_t out, wasi_filesystem_types_error_code_t code) {
  const char *name = code < sizeof fs_errors / sizeof fs_errors[0] ? fs_errors[code] : "unknown";
  uint16_t status = 500;
  if (code == WASI_FILESYSTEM_TYPES_ERROR_CODE_NO_ENTRY) status = 404;
  if (code == WASI_FILESYSTEM_TYPES_ERROR_CODE_ACCESS || code == WASI_FILESYSTEM_TYPES_ERROR_CODE_NOT_PERMITTED ||
      code == WASI_FILESYSTEM_TYPES_ERROR_CODE_READ_ONLY) {
    status = 403;
  }
  char text[64] = "error: ";
  strcat(text, name);
  respond_text(out, status, text);
}

static int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX in place.
static void percent_decode(char *text) {
  char *to = text;
  for (char *at = text; *at; at++) {
    if (at[0] == '%' && hex(at[1]) >= 0 && hex(at[2]) >= 0) {
      *to++ = (char)(hex(at[1]) * 16 + hex(at[2]));
      at += 2;
    } else {
      *to++ = *at;
    }
  }
  *to = 0;
}

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  uint8_t method = request_method(request);
  char *path = request_path(request);
  wasi_http_types_incoming_request_drop_own(request);
  const char *prefix = "/files/";
  if (strncmp(path, prefix, strlen(prefix)) != 0) {
    respond_text(out, 400, "usage: GET /files/PATH");
    return;
  }
  char *name = path + strlen(prefix);
  name[strcspn(name, "?")] = 0;
  percent_decode(name);

  wasi_filesystem_preopens_list_tuple2_own_descriptor_string_t preopens;
  wasi_filesystem_preopens_get_directories(&preopens);
  wasi_filesystem_types_own_descriptor_t *root = NULL;
  for (size_t i = 0; i < preopens.len; i++) {
    if (preopens.ptr[i].f1.len == 1 && preopens.ptr[i].f1.ptr[0] == '/') root = &preopens.ptr[i].f0;
  }
  if (!root) {
    respond_text(out, 404, "error: nothing is mounted");
    return;
  }

  proxy_string_t file_name;
  proxy_string_set(&file_name, name);
  bool write = method == WASI_HTTP_TYPES_METHOD_PUT;
  wasi_filesystem_types_own_descriptor_t file;
  wasi_filesystem_types_error_code_t code;
  if (!wasi_filesystem_types_method_descriptor_open_at(
          wasi_filesystem_types_borrow_descriptor(*root), WASI_FILESYSTEM_TYPES_PATH_FLAGS_SYMLINK_FOLLOW, &file_name,
          write ? WASI_FILESYSTEM_TYPES_OPEN_FLAGS_CREATE : 0,
          write ? WASI_FILESYSTEM_TYPES_DESCRIPTOR_FLAGS_WRITE : WASI_FILESYSTEM_TYPES_DESCRIPTOR_FLAGS_READ, &file,
          &code)) {
    fs_error(out, code);
    return;
  }
  if (write) {
    respond_text(out, 201, "created");
    return;
  }
  blob_t content = {calloc(1, 1), 0};
  for (uint64_t offset = 0;;) {
    proxy_tuple2_list_u8_bool_t chunk;
    if (!wasi_filesystem_types_method_descriptor_read(wasi_filesystem_types_borrow_descriptor(file), 65536, offset,
                                                      &chunk, &code)) {
      fs_error(out, code);
      return;
    }
    blob_push(&content, chunk.f0.ptr, chunk.f0.len);
    offset += chunk.f0.len;
    bool end = chunk.f1 || chunk.f0.len == 0;
    proxy_list_u8_free(&chunk.f0);
    if (end) break;
  }
  response_t r = respond(out, 200, "application/octet-stream");
  write_body(&r, content.data, content.len);
  finish(&r);
}
