//! A component's variables for guests: Spin's `fermyon:spin/variables@2.0.0`
//! and `wasi:config/store@0.2.0-draft-2024-09-27` here; wasmtime-wasi-config
//! serves `wasi:config/store@0.2.0-rc.1` from the same values (see `caps.rs`).

use crate::bindings::fermyon::spin::variables as spin2;
use crate::bindings::wasi::config::store as config_draft;
use crate::caps::CapsView;

impl spin2::Host for CapsView<'_> {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, spin2::Error>> {
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Ok(Err(spin2::Error::InvalidName(format!(
                "`{name}`: variable names are lowercase letters, digits and `_`, starting with a letter"
            ))));
        }
        Ok(match self.caps.variables.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(spin2::Error::Undefined(format!("component `{}` has no variable `{name}`", self.caps.id))),
        })
    }
}

impl config_draft::Host for CapsView<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config_draft::Error>> {
        Ok(Ok(self.caps.variables.get(&key).cloned()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config_draft::Error>> {
        Ok(Ok(self.caps.variables.iter().map(|(name, value)| (name.clone(), value.clone())).collect()))
    }
}
