//! The hop from the gateway to a service instance: a lease on a ready (or
//! woken) instance, the request forwarded over a pooled loopback connection,
//! the response streamed back with the lease held until its body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use dormouse_supervisor::{Lease, ServiceHandle, WakeError};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{ResponseBody, plain};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies of every origin (a client connection, a component's own
/// request) go to services boxed: one allocation per request, beside a hop
/// over a socket.
type BackendBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub type BackendClient = Client<HttpConnector, BackendBody>;

pub fn client() -> BackendClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

pub async fn forward<B>(
    client: &BackendClient,
    service: &Arc<ServiceHandle>,
    mut request: Request<B>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let lease = match service.acquire().await {
        Ok(lease) => lease,
        Err(error) => return wake_failed(&error),
    };
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let uri = format!("http://{}{path_and_query}", lease.addr);
    *request.uri_mut() = match uri.parse() {
        Ok(uri) => uri,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "invalid request URI\n"),
    };
    let client_upgrade = request.headers().contains_key(header::UPGRADE).then(|| hyper::upgrade::on(&mut request));
    let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
    match client.request(request).await {
        Ok(mut response) if response.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some() => {
            // An upgraded connection (WebSocket and the like) is activity for
            // as long as it is open: the lease goes with the byte copy.
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let client_upgrade = client_upgrade.expect("checked in the guard");
            let service_id = service.config().id.clone();
            tokio::spawn(async move {
                let (client, backend) = tokio::join!(client_upgrade, backend_upgrade);
                match (client, backend) {
                    (Ok(client), Ok(backend)) => {
                        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                    }
                    (client, backend) => {
                        tracing::warn!(service = %service_id, "upgrade failed: client {:?}, backend {:?}", client.err(), backend.err());
                    }
                }
                drop(lease);
            });
            let (parts, _) = response.into_parts();
            Response::from_parts(parts, ResponseBody::Right(http_body_util::Full::new(Bytes::new())))
        }
        Ok(response) => {
            response.map(|body| ResponseBody::Left(http_body_util::Either::Right(LeasedBody { body, _lease: lease })))
        }
        Err(error) => {
            // The instance broke the connection (it crashed, or is stopping):
            // this request fails, the next one wakes a fresh instance.
            tracing::warn!(service = %service.config().id, "proxy hop failed: {error}");
            plain(StatusCode::BAD_GATEWAY, &format!("service `{}` failed to answer\n", service.config().id))
        }
    }
}

/// Every way a wake can fail, as the one response that says why.
fn wake_failed(error: &WakeError) -> Response<ResponseBody> {
    tracing::warn!("{error}");
    let (status, retry_after) = match error {
        WakeError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, None),
        WakeError::Failing { retry_after, .. } => (StatusCode::SERVICE_UNAVAILABLE, Some(retry_after.as_secs().max(1))),
        WakeError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
    };
    let mut response = plain(status, &format!("{error}\n"));
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A backend's response body with the lease that keeps its instance awake
/// (and counted as busy) until the body has been sent or dropped.
pub struct LeasedBody {
    body: Incoming,
    _lease: Lease,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
