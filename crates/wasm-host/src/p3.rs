//! `wasi:http` 0.3 components (`wasi:http/service@0.3.0`): `handle` is an
//! `async func`, bodies are streams, and the guest runs inside the store's
//! event loop (`Store::run_concurrent`), which must keep running while the
//! response body streams out. So the whole exchange happens in that loop, and
//! body frames reach the client through a channel.

use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt as _;
use tokio::sync::{mpsc, oneshot};
use wasmtime::Store;
use wasmtime::component::Component;
use wasmtime_wasi_http::p3::Request;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use crate::Runtime;
use crate::body::BodyError;
use crate::ctx::RequestCtx;

/// Response body frames as the store's event loop produces them.
pub(crate) type Frames = mpsc::Receiver<Result<Frame<Bytes>, BodyError>>;

/// A WASI 0.3 component, linked and checked for the `wasi:http/handler` export.
pub(crate) fn service_pre(
    runtime: &Runtime,
    id: &str,
    source: &Path,
    component: &Component,
) -> anyhow::Result<ServicePre<RequestCtx>> {
    ServicePre::new(runtime.instantiate_pre(id, source, component)?).map_err(anyhow::Error::from).with_context(|| {
        format!(
            "component `{id}` (`{}`) is not a wasi:http component: it must export `wasi:http/handler@0.3.0` \
             (or `wasi:http/incoming-handler@0.2.x`)",
            source.display()
        )
    })
}

/// Instantiates the component in `store`, hands it the request, sends the
/// response head on `head` and then streams the body, until the guest is done
/// or the client is gone.
pub(crate) async fn run<B>(
    pre: ServicePre<RequestCtx>,
    mut store: Store<RequestCtx>,
    request: hyper::Request<B>,
    head: oneshot::Sender<Result<hyper::Response<Frames>, ErrorCode>>,
) -> wasmtime::Result<()>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let service = pre.instantiate_async(&mut store).await?;
    // What the guest reports about how the host read the request body (only
    // errors) has nobody to go to here.
    let (request, _request_errors) = Request::from_http(store.data_mut().hooks(), absolute(request));
    store
        .run_concurrent(async move |accessor| {
            let response = match service.handle(accessor, request).await? {
                Ok(response) => response,
                Err(code) => {
                    let _ = head.send(Err(code));
                    return Ok(());
                }
            };
            let response = accessor.with(|store| response.into_http(store, async { Ok(()) }))?;
            let (parts, mut body) = response.into_parts();
            let (frames, frames_rx) = mpsc::channel(1);
            if head.send(Ok(hyper::Response::from_parts(parts, frames_rx))).is_err() {
                return Ok(());
            }
            while let Some(frame) = body.frame().await {
                let failed = frame.is_err();
                let frame = frame.map_err(|error| BodyError::from(error.to_string()));
                // A closed channel: the client went away, and so does the guest.
                if frames.send(frame).await.is_err() || failed {
                    break;
                }
            }
            Ok(())
        })
        .await?
}

/// The request's URI with the scheme and authority a guest expects
/// (`get-scheme`, `get-authority`), as the 0.2 host gives them: plain HTTP,
/// and the `Host` header.
fn absolute<B>(mut request: hyper::Request<B>) -> hyper::Request<B> {
    if request.uri().scheme().is_some() {
        return request;
    }
    let authority = request.headers().get(http::header::HOST).and_then(|host| host.to_str().ok()).map(str::to_owned);
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    if parts.authority.is_none() {
        parts.authority = authority.and_then(|authority| authority.parse().ok());
    }
    if parts.authority.is_some() {
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}
