// kv (WASI 0.3): Spin's `spin:key-value@3.0.0` and `spin:variables@3.0.0`,
// whose functions are `async func`s, called synchronously from the async
// handler. `x-store: LABEL` picks the store (default: `default`).
//   GET    /kv/KEY      the value, or 404
//   PUT    /kv/KEY      `x-value: VALUE` becomes the value
//   DELETE /kv/KEY
//   GET    /kv          every key (from the get-keys stream), one per line,
//                       sorted
//   GET    /var/NAME    the variable's value, or 404 `undefined` / 400
//                       `invalid-name`
// A failed store call answers 500 with `error: KIND[: detail]`.
#include "guest.h"

typedef spin_key_value_key_value_error_t kv_error_t;

static char text[4096];

// Copies `n` bytes of `data` (and a newline, if `newline`) to the end of `text`.
static void append(const void *data, size_t n, bool newline) {
  size_t used = strlen(text);
  if (used + n + 2 > sizeof text) n = sizeof text - used - 2;
  memcpy(text + used, data, n);
  if (newline) text[used + n++] = '\n';
  text[used + n] = 0;
}

static service_callback_code_t kv_failed(kv_error_t *error) {
  static const char *kinds[] = {"store-table-full", "no-such-store", "access-denied", "other"};
  strcpy(text, "error: ");
  append(kinds[error->tag], strlen(kinds[error->tag]), false);
  if (error->tag == SPIN_KEY_VALUE_KEY_VALUE_ERROR_OTHER) {
    append(": ", 2, false);
    append(error->val.other.ptr, error->val.other.len, false);
  }
  append("", 0, true);
  return respond(error->tag == SPIN_KEY_VALUE_KEY_VALUE_ERROR_ACCESS_DENIED ? 403 : 500, text);
}

static int compare(const void *a, const void *b) {
  const service_string_t *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int order = memcmp(x->ptr, y->ptr, n);
  return order != 0 ? order : (x->len > y->len) - (x->len < y->len);
}

static service_callback_code_t list_keys(spin_key_value_key_value_borrow_store_t store) {
  spin_key_value_key_value_tuple2_stream_string_future_result_void_error_t listing;
  spin_key_value_key_value_method_store_get_keys(store, &listing);
  static service_string_t keys[256];
  size_t count = 0;
  for (;;) {
    service_waitable_status_t status =
        spin_key_value_key_value_stream_string_read(listing.f0, keys + count, sizeof keys / sizeof keys[0] - count);
    if (status == SERVICE_WAITABLE_STATUS_BLOCKED) status = wait_for(listing.f0);
    count += SERVICE_WAITABLE_COUNT(status);
    if (SERVICE_WAITABLE_STATE(status) != SERVICE_WAITABLE_COMPLETED || count == sizeof keys / sizeof keys[0]) break;
  }
  spin_key_value_key_value_stream_string_drop_readable(listing.f0);
  spin_key_value_key_value_result_void_error_t outcome;
  service_waitable_status_t status = spin_key_value_key_value_future_result_void_error_read(listing.f1, &outcome);
  if (status == SERVICE_WAITABLE_STATUS_BLOCKED) wait_for(listing.f1);
  spin_key_value_key_value_future_result_void_error_drop_readable(listing.f1);
  if (outcome.is_err) return kv_failed(&outcome.val.err);
  qsort(keys, count, sizeof keys[0], compare);
  text[0] = 0;
  for (size_t i = 0; i < count; i++) append(keys[i].ptr, keys[i].len, true);
  return respond(200, text);
}

static service_callback_code_t variable(const char *name) {
  service_string_t wanted, value;
  service_string_dup(&wanted, name);
  spin_variables_variables_error_t error;
  text[0] = 0;
  if (spin_variables_variables_get(&wanted, &value, &error)) {
    append(value.ptr, value.len, true);
    return respond(200, text);
  }
  bool invalid = error.tag == SPIN_VARIABLES_VARIABLES_ERROR_INVALID_NAME;
  append(invalid ? "invalid-name: " : "undefined: ", invalid ? 14 : 11, false);
  append(error.val.undefined.ptr, error.val.undefined.len, true);  // every case holds a string
  return respond(invalid ? 400 : 404, text);
}

service_callback_code_t exports_wasi_http_handler_handle(exports_wasi_http_handler_own_request_t request) {
  wasi_http_types_method_t method;
  wasi_http_types_method_request_get_method(wasi_http_types_borrow_request(request), &method);
  service_string_t target;
  static char path[1024];
  path[0] = 0;
  if (wasi_http_types_method_request_get_path_with_query(wasi_http_types_borrow_request(request), &target)) {
    size_t n = target.len < sizeof path - 1 ? target.len : sizeof path - 1;
    memcpy(path, target.ptr, n);
    path[n] = 0;
  }
  char *label = request_header(request, "x-store");
  char *value = request_header(request, "x-value");
  wasi_http_types_request_drop_own(request);

  if (strncmp(path, "/var/", 5) == 0) return variable(path + 5);
  if (strncmp(path, "/kv", 3) != 0) return respond(404, "");

  service_string_t name;
  service_string_dup(&name, label ? label : "default");
  spin_key_value_key_value_own_store_t store;
  kv_error_t error;
  if (!spin_key_value_key_value_static_store_open(&name, &store, &error)) return kv_failed(&error);
  spin_key_value_key_value_borrow_store_t open = spin_key_value_key_value_borrow_store(store);

  if (path[3] == 0) return list_keys(open);
  service_string_t key;
  service_string_dup(&key, path + 4);
  switch (method.tag) {
    case WASI_HTTP_TYPES_METHOD_GET: {
      service_option_list_u8_t found;
      if (!spin_key_value_key_value_method_store_get(open, &key, &found, &error)) return kv_failed(&error);
      if (!found.is_some) return respond(404, "");
      text[0] = 0;
      append(found.val.ptr, found.val.len, false);
      return respond(200, text);
    }
    case WASI_HTTP_TYPES_METHOD_PUT: {
      service_list_u8_t bytes = {(uint8_t *)(value ? value : ""), value ? strlen(value) : 0};
      if (!spin_key_value_key_value_method_store_set(open, &key, &bytes, &error)) return kv_failed(&error);
      return respond(200, "ok\n");
    }
    case WASI_HTTP_TYPES_METHOD_DELETE:
      if (!spin_key_value_key_value_method_store_delete(open, &key, &error)) return kv_failed(&error);
      return respond(200, "deleted\n");
    default:
      return respond(405, "");
  }
}
