//! End-to-end tests: the real `dormouse` binary, real guest components from
//! `guests/wasm`, real HTTP over loopback. One test binary keeps link time down.

mod kv;
mod services;
mod support;
mod up;
