//! Per-request store data: the WASI and wasi:http contexts, the resource
//! table, the memory limiter of one instance, and the component's grants.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::caps::{CapsView, ComponentCaps};
use crate::outbound::Hops;
use crate::output::GuestStream;

pub struct RequestCtx {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    pub limits: MemoryCap,
}

/// The instance's memory limit (wasmtime's `StoreLimits`), which can say
/// whether it refused a `memory.grow`.
pub struct MemoryCap {
    limits: StoreLimits,
    flags: Option<Arc<GuestFlags>>,
}

/// What happened to a guest that decides how its end is counted.
#[derive(Debug, Default)]
pub struct GuestFlags {
    /// A `memory.grow` past the limit was refused.
    pub memory_refused: AtomicBool,
    /// It answered with an error code and was stopped for it.
    pub error_code: AtomicBool,
}

impl MemoryCap {
    /// The guest's flags, kept from now on.
    pub fn watch(&mut self) -> Arc<GuestFlags> {
        self.flags.get_or_insert_with(Arc::default).clone()
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed && let Some(flags) = &self.flags {
            flags.memory_refused.store(true, Ordering::Relaxed);
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl RequestCtx {
    /// `hops`: how many in-process hops the request being handled has made.
    pub fn new(caps: &Arc<ComponentCaps>, memory_limit: usize, hops: Hops) -> Self {
        // Deny by default: no socket addresses, no name lookups, and only the
        // directories the component was granted, read-only. Guest output goes
        // to the app's log where it has one, else to dormouse's own.
        let mut wasi = WasiCtx::builder();
        wasi.envs(&caps.environment);
        match &caps.output {
            Some(output) => {
                let stream = |stream| GuestStream { output: output.clone(), component: caps.id.clone(), stream };
                wasi.stdout(stream("stdout")).stderr(stream("stderr"));
            }
            None => {
                wasi.inherit_stdout().inherit_stderr();
            }
        }
        for preopen in &caps.preopens {
            // Staged at load time; a directory that vanished since is left out
            // (the guest sees no such file) rather than failing the request.
            if let Err(error) = wasi.preopened_dir(&preopen.host, &preopen.guest, FsPerms::ReadOnly) {
                tracing::warn!(component = %caps.id, "cannot open `{}`: {error}", preopen.host.display());
            }
        }
        RequestCtx {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks { caps: caps.clone(), hops },
            // `memory.grow` past the cap returns -1 to the guest rather than
            // trapping: the guest decides what running out of memory means.
            limits: MemoryCap { limits: StoreLimitsBuilder::new().memory_size(memory_limit).build(), flags: None },
        }
    }

    pub fn caps(&self) -> &ComponentCaps {
        &self.hooks.caps
    }

    /// What decides the fate of the guest's outgoing requests.
    pub fn hooks(&mut self) -> &mut dyn WasiHttpHooks {
        &mut self.hooks
    }

    pub fn caps_view(&mut self) -> CapsView<'_> {
        CapsView { table: &mut self.table, caps: &self.hooks.caps }
    }
}

pub fn http_view(ctx: &mut RequestCtx) -> WasiHttpCtxView<'_> {
    WasiHttpCtxView { ctx: &mut ctx.http, table: &mut ctx.table, hooks: &mut ctx.hooks }
}

impl WasiView for RequestCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        http_view(self)
    }
}

/// Hands each outgoing request to the embedder's handler; with none
/// installed, the guest gets `HTTP-request-denied` and nothing is opened.
struct OutboundHooks {
    caps: Arc<ComponentCaps>,
    /// Of the request being handled; its outgoing requests carry one more.
    hops: Hops,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        request.extensions_mut().insert(Hops(self.hops.0 + 1));
        match self.caps.outbound.get() {
            Some(outbound) => Box::new(outbound.send(&self.caps.id, request, options)),
            None => {
                tracing::debug!(uri = %request.uri(), "outbound HTTP request denied: no outbound handler");
                Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
            }
        }
    }
}
