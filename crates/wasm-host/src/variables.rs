//! A component's variables for guests: Spin's `fermyon:spin/variables@2.0.0`,
//! `spin:variables@3.0.0` (WASI 0.3 components) and
//! `wasi:config/store@0.2.0-draft-2024-09-27` here; wasmtime-wasi-config
//! serves `wasi:config/store@0.2.0-rc.1` from the same values (see `caps.rs`).

use wasmtime::component::Accessor;

use crate::bindings::fermyon::spin::variables as spin2;
use crate::bindings::wasi::config::store as config_draft;
use crate::bindings::wasi3::spin::variables::variables as spin3;
use crate::caps::{Caps, CapsView, ComponentCaps};
use crate::ctx::RequestCtx;

/// Why Spin's `get` found no value (the same in 2.0.0 and 3.0.0).
enum Missing {
    InvalidName(String),
    Undefined(String),
}

/// Spin's lookup: a valid name the component declared, or why not.
fn lookup(caps: &ComponentCaps, name: &str) -> Result<String, Missing> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(Missing::InvalidName(format!(
            "`{name}`: variable names are lowercase letters, digits and `_`, starting with a letter"
        )));
    }
    match caps.variables.get(name) {
        Some(value) => Ok(value.clone()),
        None => Err(Missing::Undefined(format!("component `{}` has no variable `{name}`", caps.id))),
    }
}

impl spin2::Host for CapsView<'_> {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, spin2::Error>> {
        Ok(lookup(self.caps, &name).map_err(|missing| match missing {
            Missing::InvalidName(text) => spin2::Error::InvalidName(text),
            Missing::Undefined(text) => spin2::Error::Undefined(text),
        }))
    }
}

impl spin3::HostWithStore<RequestCtx> for Caps {
    async fn get(
        accessor: &Accessor<RequestCtx, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, spin3::Error>> {
        Ok(accessor.with(|mut access| lookup(access.get().caps, &name)).map_err(|missing| match missing {
            Missing::InvalidName(text) => spin3::Error::InvalidName(text),
            Missing::Undefined(text) => spin3::Error::Undefined(text),
        }))
    }
}

impl spin3::Host for CapsView<'_> {}

impl config_draft::Host for CapsView<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config_draft::Error>> {
        Ok(Ok(self.caps.variables.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config_draft::Error>> {
        Ok(Ok(self.caps.variables.iter().map(|(name, value)| (name.clone(), value.clone())).collect()))
    }
}
