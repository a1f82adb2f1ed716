// vars: reads the component's variables through one of three interfaces.
// `API` is `spin` (fermyon:spin/variables@2.0.0), `config` (wasi:config/store
// @0.2.0-draft-2024-09-27, Spin's) or `config-rc` (@0.2.0-rc.1, wasmtime's).
//   GET /API/NAME   the value; 404 when undefined; 500 `error: KIND: detail`
//   GET /API        every variable as NAME=VALUE lines (config, config-rc)
#include "guest.h"

static void error_response(outparam_t out, uint16_t status, const char *kind, proxy_string_t *detail) {
  response_t r = respond(out, status, "text/plain");
  write_str(&r, "error: ");
  write_str(&r, kind);
  if (detail) {
    write_str(&r, ": ");
    write_body(&r, detail->ptr, detail->len);
    proxy_string_free(detail);
  }
  write_str(&r, "\n");
  finish(&r);
}

static void value_response(outparam_t out, proxy_string_t *value) {
  response_t r = respond(out, 200, "text/plain");
  write_body(&r, value->ptr, value->len);
  finish(&r);
  proxy_string_free(value);
}

static void list_response(outparam_t out, proxy_list_tuple2_string_string_t *all) {
  response_t r = respond(out, 200, "text/plain");
  for (size_t i = 0; i < all->len; i++) {
    write_body(&r, all->ptr[i].f0.ptr, all->ptr[i].f0.len);
    write_str(&r, "=");
    write_body(&r, all->ptr[i].f1.ptr, all->ptr[i].f1.len);
    write_str(&r, "\n");
  }
  finish(&r);
  proxy_list_tuple2_string_string_free(all);
}

static void spin_get(outparam_t out, const char *name_text) {
  proxy_string_t name, value;
  proxy_string_set(&name, name_text);
  fermyon_spin_variables_error_t e;
  if (fermyon_spin_variables_get(&name, &value, &e)) {
    value_response(out, &value);
    return;
  }
  switch (e.tag) {
    case FERMYON_SPIN_VARIABLES_ERROR_INVALID_NAME: error_response(out, 400, "invalid-name", &e.val.invalid_name); break;
    case FERMYON_SPIN_VARIABLES_ERROR_UNDEFINED: error_response(out, 404, "undefined", &e.val.undefined); break;
    case FERMYON_SPIN_VARIABLES_ERROR_PROVIDER: error_response(out, 500, "provider", &e.val.provider); break;
    default: error_response(out, 500, "other", &e.val.other); break;
  }
}

static void config_get(outparam_t out, const char *name_text) {
  proxy_string_t name;
  proxy_string_set(&name, name_text);
  proxy_option_string_t value;
  wasi_config_0_2_0_draft_2024_09_27_store_error_t e;
  if (!wasi_config_0_2_0_draft_2024_09_27_store_get(&name, &value, &e)) {
    error_response(out, 500, e.tag == WASI_CONFIG_0_2_0_DRAFT_2024_09_27_STORE_ERROR_IO ? "io" : "upstream", &e.val.io);
  } else if (value.is_some) {
    value_response(out, &value.val);
  } else {
    error_response(out, 404, "undefined", NULL);
  }
}

static void config_rc_get(outparam_t out, const char *name_text) {
  proxy_string_t name;
  proxy_string_set(&name, name_text);
  proxy_option_string_t value;
  wasi_config_0_2_0_rc_1_store_error_t e;
  if (!wasi_config_0_2_0_rc_1_store_get(&name, &value, &e)) {
    error_response(out, 500, e.tag == WASI_CONFIG_0_2_0_RC_1_STORE_ERROR_IO ? "io" : "upstream", &e.val.io);
  } else if (value.is_some) {
    value_response(out, &value.val);
  } else {
    error_response(out, 404, "undefined", NULL);
  }
}

void exports_wasi_http_incoming_handler_handle(request_t request, outparam_t out) {
  char *path = request_path(request);
  char *api = path_segment(path, 0);
  char *name = path_segment(path, 1);
  wasi_http_types_incoming_request_drop_own(request);

  if (api && strcmp(api, "spin") == 0 && name) {
    spin_get(out, name);
  } else if (api && strcmp(api, "config") == 0) {
    if (name) {
      config_get(out, name);
    } else {
      proxy_list_tuple2_string_string_t all;
      wasi_config_0_2_0_draft_2024_09_27_store_error_t e;
      if (wasi_config_0_2_0_draft_2024_09_27_store_get_all(&all, &e)) list_response(out, &all);
      else error_response(out, 500, "upstream", &e.val.upstream);
    }
  } else if (api && strcmp(api, "config-rc") == 0) {
    if (name) {
      config_rc_get(out, name);
    } else {
      proxy_list_tuple2_string_string_t all;
      wasi_config_0_2_0_rc_1_store_error_t e;
      if (wasi_config_0_2_0_rc_1_store_get_all(&all, &e)) list_response(out, &all);
      else error_response(out, 500, "upstream", &e.val.upstream);
    }
  } else {
    respond_text(out, 400, "usage: /spin/NAME, /config[/NAME], /config-rc[/NAME]");
  }
}
