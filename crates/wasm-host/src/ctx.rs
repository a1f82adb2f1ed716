//! Per-request store data: the WASI and wasi:http contexts, the resource
//! table and the memory limiter of one instance.

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

pub struct RequestCtx {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    pub limits: StoreLimits,
}

impl RequestCtx {
    pub fn new(environment: &[(String, String)], memory_limit: usize) -> Self {
        // Deny by default: no preopened directories, no socket addresses, no
        // name lookups. Guest output goes to dormouse's own stdout and stderr.
        let wasi = WasiCtx::builder().envs(environment).inherit_stdout().inherit_stderr().build();
        RequestCtx {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks,
            // `memory.grow` past the cap returns -1 to the guest rather than
            // trapping: the guest decides what running out of memory means.
            limits: StoreLimitsBuilder::new().memory_size(memory_limit).build(),
        }
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

/// Outbound HTTP policy. Every request is denied until the manifest's
/// `allowed_outbound_hosts` is enforced; the guest gets `HTTP-request-denied`
/// and no connection is opened.
struct OutboundHooks;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        tracing::debug!(uri = %request.uri(), "outbound HTTP request denied");
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}
