//! End-to-end tests: the real `dormouse` binary, real guest components from
//! `guests/wasm`, real HTTP over loopback. One test binary keeps link time down.

mod files;
mod js;
mod kv;
mod outbound;
mod services;
mod support;
mod up;
mod variables;
mod wasi3;
