//! What a component was granted, built once at load time and shared by every
//! request's store: environment, variables, key-value stores, read-only
//! directories, and the outbound HTTP handler. Also the store view the
//! key-value and variables bindings are implemented on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use crate::ctx::RequestCtx;

/// A directory the guest may read, at a path of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (absolute, e.g. `/` or `/static`).
    pub guest: String,
}

/// Everything one component may use beyond computing.
pub struct ComponentCaps {
    pub id: Arc<str>,
    pub environment: Vec<(String, String)>,
    pub variables: BTreeMap<String, String>,
    /// The same values, in the form wasmtime-wasi-config serves.
    pub config: WasiConfigVariables,
    /// Granted key-value stores by label.
    pub key_value: Vec<(String, dormouse_kv::Store)>,
    pub preopens: Vec<Preopen>,
    /// The app's outbound policy (see `ComponentSpec::outbound`); empty
    /// means every outbound request is denied.
    pub outbound: crate::OutboundSlot,
    /// Where its output lines go; `None`: dormouse's own stdout and stderr.
    pub output: Option<Arc<dyn crate::GuestOutput>>,
}

/// The part of a request's store data the capability bindings use.
pub struct CapsView<'a> {
    pub table: &'a mut ResourceTable,
    pub caps: &'a ComponentCaps,
}

/// The capability bindings' view of the store data.
pub(crate) struct Caps;

impl HasData for Caps {
    type Data<'a> = CapsView<'a>;
}

/// Adds key-value and variables, every version, to `linker`; with `wasi3`,
/// Spin's 3.0.0 interfaces too (which need the engine's concurrency support).
pub fn add_to_linker(linker: &mut Linker<RequestCtx>, wasi3: bool) -> wasmtime::Result<()> {
    crate::bindings::Capabilities::add_to_linker::<RequestCtx, Caps>(linker, RequestCtx::caps_view)?;
    wasmtime_wasi_config::add_to_linker(linker, |ctx: &mut RequestCtx| WasiConfig::from(&ctx.caps().config))?;
    if wasi3 {
        crate::bindings::wasi3::CapabilitiesWasi3::add_to_linker::<RequestCtx, Caps>(linker, RequestCtx::caps_view)?;
    }
    Ok(())
}
