//! End-to-end tests: the real `dormouse` binary, real guest components from
//! `guests/wasm`, real HTTP over loopback. One test binary keeps link time down.

mod connections;
mod containment;
mod daemon;
mod files;
mod hop;
mod js;
mod kv;
mod metrics;
mod outbound;
mod prometheus;
mod services;
mod startup;
mod support;
mod tls;
mod up;
mod variables;
mod wasi3;
