//! Outbound HTTP from guests (`wasi:http/outgoing-handler`). The host decides
//! nothing itself: every request goes to the [`OutboundHttp`] the embedder
//! installed for the app (`crate::ComponentSpec::outbound`), which applies the component's
//! allow-list, answers requests to the app itself in-process, and sends the
//! rest over the network. With none installed, every request is denied.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime_wasi_http::{RequestOptions, WasiBody};

use crate::WasiHttpError;

/// How many in-process hops a request has made: an app's component calling
/// the app itself, which calls it again, and so on. Carried as a request
/// extension: the host reads it from each incoming request and puts one more
/// on every request the guest sends, so the embedder can stop a loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hops(pub u32);

/// Completes when the connection behind a response is done with; errors on it
/// are logged, never surfaced to the guest (as in wasmtime-wasi-http).
pub type IoFuture = Box<dyn Future<Output = Result<(), WasiHttpError>> + Send>;

/// What an outbound request resolves to.
pub type OutgoingFuture =
    Pin<Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), WasiHttpError>> + Send>>;

/// Sends, answers or refuses a guest's outgoing request.
pub trait OutboundHttp: Send + Sync + 'static {
    /// `component` is the id of the component that sent the request. A refusal
    /// is `Err(WasiHttpError::HttpRequestDenied)`, which the guest sees as the
    /// `HTTP-request-denied` error code.
    fn send(
        &self,
        component: &Arc<str>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> OutgoingFuture;
}
