// kv: exercises the key-value interfaces. `API` is `draft`
// (wasi:keyvalue@0.2.0-draft), `draft2` (wasi:keyvalue@0.2.0-draft2) or
// `spin` (fermyon:spin/key-value@2.0.0); `?store=LABEL` picks the store
// (default: `default`).
//   GET    /API/KEY            the value, or 404
//   GET    /API/KEY?exists=1   `true` or `false`
//   PUT    /API/KEY            the body becomes the value
//   DELETE /API/KEY
//   GET    /API                every key, one per line
//   POST   /API/KEY?incr=N     adds N, answers the new value (draft, draft2)
//   POST   /API/KEY            compare-and-swap (draft2): reads the value,
//                              waits `?pause_ms=N` (default 0), then swaps
//                              in the body; `swapped`, or 409 `conflict`
//   GET    /API?many=a,b       get-many: `a=VALUE` or `a` (absent) per line
//   PUT    /API?many=1         set-many from body lines `KEY=VALUE`
//   DELETE /API?many=a,b       delete-many
//   GET    /none/...           answers 200 without opening a store (a
//                              baseline for benchmarks)
// A failed call answers 500 with `error: KIND[: detail]` (listings, whose
// head is sent first, end their body with it instead).
#include "guest.h"

typedef wasi_keyvalue_0_2_0_draft_store_error_t draft_error_t;
typedef wasi_keyvalue_0_2_0_draft2_store_error_t draft2_error_t;
typedef fermyon_spin_key_value_error_t spin_error_t;

enum api { DRAFT, DRAFT2, SPIN };

// Every call's error, as text.
static char error_text[512];

static bool fail_with(const char *kind, proxy_string_t *detail) {
  size_t n = strlen(kind);
  memcpy(error_text, kind, n);
  if (detail) {
    const char *sep = ": ";
    memcpy(error_text + n, sep, 2);
    size_t len = detail->len < sizeof error_text - n - 3 ? detail->len : sizeof error_text - n - 3;
    memcpy(error_text + n + 2, detail->ptr, len);
    n += 2 + len;
    proxy_string_free(detail);
  }
  error_text[n] = 0;
  return false;
}

static bool draft_failed(draft_error_t *e) {
  switch (e->tag) {
    case WASI_KEYVALUE_0_2_0_DRAFT_STORE_ERROR_NO_SUCH_STORE: return fail_with("no-such-store", NULL);
    case WASI_KEYVALUE_0_2_0_DRAFT_STORE_ERROR_ACCESS_DENIED: return fail_with("access-denied", NULL);
    default: return fail_with("other", &e->val.other);
  }
}

static bool draft2_failed(draft2_error_t *e) {
  switch (e->tag) {
    case WASI_KEYVALUE_0_2_0_DRAFT2_STORE_ERROR_NO_SUCH_STORE: return fail_with("no-such-store", NULL);
    case WASI_KEYVALUE_0_2_0_DRAFT2_STORE_ERROR_ACCESS_DENIED: return fail_with("access-denied", NULL);
    default: return fail_with("other", &e->val.other);
  }
}

static bool spin_failed(spin_error_t *e) {
  switch (e->tag) {
    case FERMYON_SPIN_KEY_VALUE_ERROR_STORE_TABLE_FULL: return fail_with("store-table-full", NULL);
    case FERMYON_SPIN_KEY_VALUE_ERROR_NO_SUCH_STORE: return fail_with("no-such-store", NULL);
    case FERMYON_SPIN_KEY_VALUE_ERROR_ACCESS_DENIED: return fail_with("access-denied", NULL);
    default: return fail_with("other", &e->val.other);
  }
}

// An open store of whichever interface.
typedef struct {
  enum api api;
  int32_t handle;
} store_t;

static bool open_store(enum api api, const char *label, store_t *store) {
  proxy_string_t name;
  proxy_string_set(&name, label);
  store->api = api;
  if (api == DRAFT) {
    wasi_keyvalue_0_2_0_draft_store_own_bucket_t bucket;
    draft_error_t e;
    if (!wasi_keyvalue_0_2_0_draft_store_open(&name, &bucket, &e)) return draft_failed(&e);
    store->handle = bucket.__handle;
  } else if (api == DRAFT2) {
    wasi_keyvalue_0_2_0_draft2_store_own_bucket_t bucket;
    draft2_error_t e;
    if (!wasi_keyvalue_0_2_0_draft2_store_open(&name, &bucket, &e)) return draft2_failed(&e);
    store->handle = bucket.__handle;
  } else {
    fermyon_spin_key_value_own_store_t own;
    spin_error_t e;
    if (!fermyon_spin_key_value_static_store_open(&name, &own, &e)) return spin_failed(&e);
    store->handle = own.__handle;
  }
  return true;
}

static void close_store(store_t *store) {
  if (store->api == DRAFT) {
    wasi_keyvalue_0_2_0_draft_store_bucket_drop_own((wasi_keyvalue_0_2_0_draft_store_own_bucket_t){store->handle});
  } else if (store->api == DRAFT2) {
    wasi_keyvalue_0_2_0_draft2_store_bucket_drop_own((wasi_keyvalue_0_2_0_draft2_store_own_bucket_t){store->handle});
  } else {
    fermyon_spin_key_value_store_drop_own((fermyon_spin_key_value_own_store_t){store->handle});
  }
}

#define DRAFT_BUCKET(s) ((wasi_keyvalue_0_2_0_draft_store_borrow_bucket_t){(s)->handle})
#define DRAFT2_BUCKET(s) ((wasi_keyvalue_0_2_0_draft2_store_borrow_bucket_t){(s)->handle})
#define SPIN_STORE(s) ((fermyon_spin_key_value_borrow_store_t){(s)->handle})

static bool kv_get(store_t *s, const char *key_text, proxy_option_list_u8_t *value) {
  proxy_string_t key;
  proxy_string_set(&key, key_text);
  if (s->api == DRAFT) {
    draft_error_t e;
    return wasi_keyvalue_0_2_0_draft_store_method_bucket_get(DRAFT_BUCKET(s), &key, value, &e) || draft_failed(&e);
  } else if (s->api == DRAFT2) {
    draft2_error_t e;
    return wasi_keyvalue_0_2_0_draft2_store_method_bucket_get(DRAFT2_BUCKET(s), &key, value, &e) || draft2_failed(&e);
  }
  spin_error_t e;
  return fermyon_spin_key_value_method_store_get(SPIN_STORE(s), &key, value, &e) || spin_failed(&e);
}

static bool kv_set(store_t *s, const char *key_text, blob_t *body) {
  proxy_string_t key;
  proxy_string_set(&key, key_text);
  proxy_list_u8_t value = {body->data, body->len};
  if (s->api == DRAFT) {
    draft_error_t e;
    return wasi_keyvalue_0_2_0_draft_store_method_bucket_set(DRAFT_BUCKET(s), &key, &value, &e) || draft_failed(&e);
  } else if (s->api == DRAFT2) {
    draft2_error_t e;
    return wasi_keyvalue_0_2_0_draft2_store_method_bucket_set(DRAFT2_BUCKET(s), &key, &value, &e) || draft2_failed(&e);
  }
  spin_error_t e;
  return fermyon_spin_key_value_method_store_set(SPIN_STORE(s), &key, &value, &e) || spin_failed(&e);
}

static bool kv_delete(store_t *s, const char *key_text) {
  proxy_string_t key;
  proxy_string_set(&key, key_text);
  if (s->api == DRAFT) {
    draft_error_t e;
    return wasi_keyvalue_0_2_0_draft_store_method_bucket_delete(DRAFT_BUCKET(s), &key, &e) || draft_failed(&e);
  } else if (s->api == DRAFT2) {
    draft2_error_t e;
    return wasi_keyvalue_0_2_0_draft2_store_method_bucket_delete(DRAFT2_BUCKET(s), &key, &e) || draft2_failed(&e);
  }
  spin_error_t e;
  return fermyon_spin_key_value_method_store_delete(SPIN_STORE(s), &key, &e) || spin_failed(&e);
}

static bool kv_exists(store_t *s, const char *key_text, bool *exists) {
  proxy_string_t key;
  proxy_string_set(&key, key_text);
  if (s->api == DRAFT) {
    draft_error_t e;
    return wasi_keyvalue_0_2_0_draft_store_method_bucket_exists(DRAFT_BUCKET(s), &key, exists, &e) || draft_failed(&e);
  } else if (s->api == DRAFT2) {
    draft2_error_t e;
    return wasi_keyvalue_0_2_0_draft2_store_method_bucket_exists(DRAFT2_BUCKET(s), &key, exists, &e) ||
           draft2_failed(&e);
  }
  spin_error_t e;
  return fermyon_spin_key_value_method_store_exists(SPIN_STORE(s), &key, exists, &e) || spin_failed(&e);
}

// Every key, following cursors, one per line.
static bool kv_keys(store_t *s, response_t *r) {
  if (s->api == SPIN) {
    proxy_list_string_t keys;
    spin_error_t e;
    if (!fermyon_spin_key_value_method_store_get_keys(SPIN_STORE(s), &keys, &e)) return spin_failed(&e);
    for (size_t i = 0; i < keys.len; i++) {
      write_body(r, keys.ptr[i].ptr, keys.ptr[i].len);
      write_str(r, "\n");
    }
    proxy_list_string_free(&keys);
    return true;
  }
  if (s->api == DRAFT) {
    uint64_t cursor = 0;
    bool more = false;
    do {
      wasi_keyvalue_0_2_0_draft_store_key_response_t page;
      draft_error_t e;
      if (!wasi_keyvalue_0_2_0_draft_store_method_bucket_list_keys(DRAFT_BUCKET(s), more ? &cursor : NULL, &page, &e)) {
        return draft_failed(&e);
      }
      for (size_t i = 0; i < page.keys.len; i++) {
        write_body(r, page.keys.ptr[i].ptr, page.keys.ptr[i].len);
        write_str(r, "\n");
      }
      more = page.cursor.is_some;
      cursor = page.cursor.val;
      wasi_keyvalue_0_2_0_draft_store_key_response_free(&page);
    } while (more);
    return true;
  }
  proxy_string_t cursor = {NULL, 0};
  bool more = false;
  do {
    wasi_keyvalue_0_2_0_draft2_store_key_response_t page;
    draft2_error_t e;
    bool ok = wasi_keyvalue_0_2_0_draft2_store_method_bucket_list_keys(DRAFT2_BUCKET(s), more ? &cursor : NULL, &page, &e);
    if (more) proxy_string_free(&cursor);
    if (!ok) return draft2_failed(&e);
    for (size_t i = 0; i < page.keys.len; i++) {
      write_body(r, page.keys.ptr[i].ptr, page.keys.ptr[i].len);
      write_str(r, "\n");
    }
    proxy_list_string_free(&page.keys);
    more = page.cursor.is_some;
    cursor = page.cursor.val;
  } while (more);
  return true;
}

static bool kv_increment(store_t *s, const char *key_text, uint64_t delta, char *out) {
  proxy_string_t key;
  proxy_string_set(&key, key_text);
  if (s->api == DRAFT) {
    uint64_t value;
    draft_error_t e;
    if (!wasi_keyvalue_0_2_0_draft_atomics_increment(DRAFT_BUCKET(s), &key, delta, &value, &e)) return draft_failed(&e);
    format_u64(value, out);
    return true;
  }
  if (s->api == DRAFT2) {
    int64_t value;
    draft2_error_t e;
    if (!wasi_keyvalue_0_2_0_draft2_atomics_increment(DRAFT2_BUCKET(s), &key, (int64_t)delta, &value, &e)) {
      return draft2_failed(&e);
    }
    if (value < 0) {
      *out++ = '-';
      value = -value;
    }
    format_u64((uint64_t)value, out);
    return true;
  }
  return fail_with("unsupported", NULL);
}

// Compare-and-swap: reads the value, then swaps in `body` if nobody changed it
// meanwhile. `*swapped` says whether it did.
static bool kv_cas(store_t *s, const char *key_text, blob_t *body, uint64_t pause_ms, bool *swapped) {
  if (s->api != DRAFT2) return fail_with("unsupported", NULL);
  proxy_string_t key;
  proxy_string_set(&key, key_text);
  wasi_keyvalue_0_2_0_draft2_atomics_own_cas_t cas;
  draft2_error_t e;
  if (!wasi_keyvalue_0_2_0_draft2_atomics_static_cas_new(DRAFT2_BUCKET(s), &key, &cas, &e)) return draft2_failed(&e);
  proxy_option_list_u8_t current;
  if (!wasi_keyvalue_0_2_0_draft2_atomics_method_cas_current(wasi_keyvalue_0_2_0_draft2_atomics_borrow_cas(cas), &current, &e)) {
    return draft2_failed(&e);
  }
  proxy_option_list_u8_free(&current);
  // Another request may change the value between the read and the swap:
  // `?pause_ms=N` waits here, so a test can make that happen.
  sleep_ms(pause_ms);
  proxy_list_u8_t value = {body->data, body->len};
  wasi_keyvalue_0_2_0_draft2_atomics_cas_error_t err;
  if (wasi_keyvalue_0_2_0_draft2_atomics_swap(cas, &value, &err)) {
    *swapped = true;
    return true;
  }
  if (err.tag == WASI_KEYVALUE_0_2_0_DRAFT2_ATOMICS_CAS_ERROR_CAS_FAILED) {
    wasi_keyvalue_0_2_0_draft2_atomics_cas_drop_own(err.val.cas_failed);
    *swapped = false;
    return true;
  }
  return draft2_failed(&err.val.store_error);
}

// Splits `a,b,c` into a list of keys (pointing into `text`, which is modified).
static proxy_list_string_t split_keys(char *text) {
  proxy_list_string_t keys = {malloc(sizeof(proxy_string_t) * (strlen(text) + 1)), 0};
  for (char *at = text; *at;) {
    char *end = at + strcspn(at, ",");
    keys.ptr[keys.len++] = (proxy_string_t){(uint8_t *)at, (size_t)(end - at)};
    at = *end ? end + 1 : end;
  }
  return keys;
}

static void write_pair(response_t *r, proxy_string_t *key, proxy_option_list_u8_t *value) {
  write_body(r, key->ptr, key->len);
  if (value->is_some) {
    write_str(r, "=");
    write_body(r, value->val.ptr, value->val.len);
  }
  write_str(r, "\n");
}

static bool kv_get_many(store_t *s, char *names, response_t *r) {
  proxy_list_string_t keys = split_keys(names);
  bool ok = true;
  if (s->api == DRAFT) {
    proxy_list_option_tuple2_string_list_u8_t values;
    draft_error_t e;
    if (wasi_keyvalue_0_2_0_draft_batch_get_many(DRAFT_BUCKET(s), &keys, &values, &e)) {
      for (size_t i = 0; i < values.len; i++) {
        proxy_option_list_u8_t value = {values.ptr[i].is_some, values.ptr[i].val.f1};
        write_pair(r, &keys.ptr[i], &value);
      }
      proxy_list_option_tuple2_string_list_u8_free(&values);
    } else {
      ok = draft_failed(&e);
    }
  } else if (s->api == DRAFT2) {
    proxy_list_tuple2_string_option_list_u8_t values;
    draft2_error_t e;
    if (wasi_keyvalue_0_2_0_draft2_batch_get_many(DRAFT2_BUCKET(s), &keys, &values, &e)) {
      for (size_t i = 0; i < values.len; i++) write_pair(r, &values.ptr[i].f0, &values.ptr[i].f1);
      proxy_list_tuple2_string_option_list_u8_free(&values);
    } else {
      ok = draft2_failed(&e);
    }
  } else {
    ok = fail_with("unsupported", NULL);
  }
  free(keys.ptr);
  return ok;
}

static bool kv_set_many(store_t *s, blob_t *body) {
  // Lines of `KEY=VALUE`.
  proxy_list_tuple2_string_list_u8_t pairs = {malloc(sizeof *pairs.ptr * (body->len + 1)), 0};
  for (char *line = (char *)body->data; *line;) {
    char *end = line + strcspn(line, "\n");
    char *eq = memchr(line, '=', (size_t)(end - line));
    if (eq) {
      pairs.ptr[pairs.len].f0 = (proxy_string_t){(uint8_t *)line, (size_t)(eq - line)};
      pairs.ptr[pairs.len].f1 = (proxy_list_u8_t){(uint8_t *)eq + 1, (size_t)(end - eq - 1)};
      pairs.len++;
    }
    line = *end ? end + 1 : end;
  }
  bool ok;
  if (s->api == DRAFT) {
    draft_error_t e;
    ok = wasi_keyvalue_0_2_0_draft_batch_set_many(DRAFT_BUCKET(s), &pairs, &e) || draft_failed(&e);
  } else if (s->api == DRAFT2) {
    draft2_error_t e;
    ok = wasi_keyvalue_0_2_0_draft2_batch_set_many(DRAFT2_BUCKET(s), &pairs, &e) || draft2_failed(&e);
  } else {
    ok = fail_with("unsupported", NULL);
  }
  free(pairs.ptr);
  return ok;
}

static bool kv_delete_many(store_t *s, char *names) {
  proxy_list_string_t keys = split_keys(names);
  bool ok;
  if (s->api == DRAFT) {
    draft_error_t e;
    ok = wasi_keyvalue_0_2_0_draft_batch_delete_many(DRAFT_BUCKET(s), &keys, &e) || draft_failed(&e);
  } else if (s->api == DRAFT2) {
    draft2_error_t e;
    ok = wasi_keyvalue_0_2_0_draft2_batch_delete_many(DRAFT2_BUCKET(s), &keys, &e) || draft2_failed(&e);
  } else {
    ok = fail_with("unsupported", NULL);
  }
  free(keys.ptr);
  return ok;
}

static void fail(outparam_t out) {
  char text[600] = "error: ";
  strcat(text, error_text);
  respond_text(out, 500, text);
}

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  uint8_t method = request_method(request);
  char *path = request_path(request);
  char *api_name = path_segment(path, 0);
  char *key = path_segment(path, 1);
  char *label = query_text(path, "store");
  char *many = query_text(path, "many");
  char *incr = query_text(path, "incr");
  blob_t body = request_body(request);
  wasi_http_types_incoming_request_drop_own(request);

  if (api_name && strcmp(api_name, "none") == 0) {
    respond_text(out, 200, "no store opened");
    return;
  }
  enum api api = DRAFT;
  if (api_name && strcmp(api_name, "draft2") == 0) api = DRAFT2;
  else if (api_name && strcmp(api_name, "spin") == 0) api = SPIN;
  else if (!api_name || strcmp(api_name, "draft") != 0) {
    respond_text(out, 400, "usage: /draft|draft2|spin/KEY");
    return;
  }

  store_t store;
  if (!open_store(api, label ? label : "default", &store)) {
    fail(out);
    return;
  }
  bool ok = true;
  if (many && method == WASI_HTTP_TYPES_METHOD_GET) {
    // The head is out before the call: a failure shows in the body.
    response_t r = respond(out, 200, "text/plain");
    if (!kv_get_many(&store, many, &r)) write_str(&r, error_text);
    finish(&r);
  } else if (many && method == WASI_HTTP_TYPES_METHOD_PUT) {
    if ((ok = kv_set_many(&store, &body))) respond_text(out, 200, "stored");
  } else if (many && method == WASI_HTTP_TYPES_METHOD_DELETE) {
    if ((ok = kv_delete_many(&store, many))) respond_text(out, 200, "deleted");
  } else if (!key) {
    response_t r = respond(out, 200, "text/plain");
    if (!kv_keys(&store, &r)) write_str(&r, error_text);
    finish(&r);
  } else if (method == WASI_HTTP_TYPES_METHOD_GET && query_number(path, "exists", 0)) {
    bool exists = false;
    if ((ok = kv_exists(&store, key, &exists))) respond_text(out, 200, exists ? "true" : "false");
  } else if (method == WASI_HTTP_TYPES_METHOD_GET) {
    proxy_option_list_u8_t value;
    if ((ok = kv_get(&store, key, &value))) {
      if (value.is_some) {
        response_t r = respond(out, 200, "application/octet-stream");
        write_body(&r, value.val.ptr, value.val.len);
        finish(&r);
        proxy_option_list_u8_free(&value);
      } else {
        respond_text(out, 404, "no such key");
      }
    }
  } else if (method == WASI_HTTP_TYPES_METHOD_PUT) {
    if ((ok = kv_set(&store, key, &body))) respond_text(out, 200, "stored");
  } else if (method == WASI_HTTP_TYPES_METHOD_DELETE) {
    if ((ok = kv_delete(&store, key))) respond_text(out, 200, "deleted");
  } else if (method == WASI_HTTP_TYPES_METHOD_POST && incr) {
    char value[24];
    if ((ok = kv_increment(&store, key, query_number(path, "incr", 1), value))) respond_text(out, 200, value);
  } else if (method == WASI_HTTP_TYPES_METHOD_POST) {
    bool swapped = false;
    if ((ok = kv_cas(&store, key, &body, query_number(path, "pause_ms", 0), &swapped))) respond_text(out, swapped ? 200 : 409, swapped ? "swapped" : "conflict");
  } else {
    respond_text(out, 405, "method not allowed");
  }
  if (!ok) fail(out);
  close_store(&store);
}
