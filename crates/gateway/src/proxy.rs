//! The hop from the gateway to a service instance, as an HTTP intermediary
//! should make it (RFC 9110 §7.6): a lease on a ready (or woken) instance;
//! the request rewritten for the hop (HTTP/1.1 whatever the client spoke,
//! hop-by-hop headers removed, `X-Forwarded-*` and `Forwarded` set) and
//! forwarded over a pooled loopback connection; the response streamed back
//! with the lease held until its body ends. The same body limit and
//! wall-clock limit as a component's apply.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use dormouse_supervisor::{Lease, ServiceHandle};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::limits::{self, CheckedResponse};
use crate::{Failure, Gateway, ResponseBody, rescue};
use dormouse_supervisor::WakeError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies of every origin (a client connection, a component's own
/// request) go to services boxed: one allocation per request, beside a hop
/// over a socket.
type BackendBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub type BackendClient = Client<HttpConnector, BackendBody>;

/// The clients of the hop: `pooled` keeps idle connections for reuse;
/// `fresh` keeps none, so that every request it sends goes on a new
/// connection (a resend must not meet another pooled connection the app
/// closed).
pub struct Backends {
    /// A pool for each I/O thread: a connection to a service is driven by
    /// the thread whose client connections use it.
    pooled: thread_local::ThreadLocal<BackendClient>,
    fresh: BackendClient,
    connector: HttpConnector,
}

impl Backends {
    pub fn new() -> Backends {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let fresh = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector.clone());
        Backends { pooled: thread_local::ThreadLocal::new(), fresh, connector }
    }

    /// This thread's pool.
    pub fn pooled(&self) -> &BackendClient {
        self.pooled.get_or(|| Client::builder(TokioExecutor::new()).build(self.connector.clone()))
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1,
/// plus the obsolete `Proxy-Connection` and the proxy credentials, which are
/// for the proxy itself): removed in both directions, with every header the
/// `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Forwarding headers other proxies set, which a client could send to claim
/// an address, port or path it does not have: removed, not forwarded.
const UNTRUSTED_FORWARDING: [HeaderName; 4] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
];

/// Forwards `request` to an instance of `service` and returns its response,
/// or the one error response that says why there is none.
pub(crate) async fn forward<B>(
    gateway: &Gateway,
    service: &Arc<ServiceHandle>,
    mut request: Request<B>,
    asked: &crate::Asked<'_>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<dormouse_wasm_host::WasiHttpError>,
{
    let id = service.config().id.as_str();
    // One wall-clock limit, from arrival to the end of the response body, as
    // for a component: waking counts, since the client waits through it.
    let limit = gateway.host.config().wall_limit;
    let deadline = tokio::time::Instant::now() + limit;
    let lease = match tokio::time::timeout_at(deadline, service.acquire()).await {
        Ok(Ok(lease)) => {
            asked.span.record("start", lease.start.as_str());
            lease
        }
        Ok(Err(error)) => return rescue(Failure::Wake(&error)),
        // Held past the wall-clock limit by a full quota: that is the reason.
        Err(_) => match service.quota_blocked() {
            Some(exceeded) => {
                return rescue(Failure::Wake(&WakeError::Quota { service: id.to_owned(), exceeded }));
            }
            None => return rescue(Failure::ServiceTimeout { service: id, limit }),
        },
    };

    let client_upgrade = (request.version() == Version::HTTP_11 && request.headers().contains_key(header::UPGRADE))
        .then(|| hyper::upgrade::on(&mut request));
    let (mut head, body) = request.into_parts();
    prepare_head(&mut head, lease.addr, asked.client, asked.scheme, client_upgrade.is_some());
    let max_body = gateway.config.max_body_bytes;
    let (body, fault) = limits::limit_body(Request::new(body), max_body);
    let body = body.into_body();
    // A request with no body can be sent again if it is idempotent (RFC 9110
    // §9.2.2): when the hop fails (most often a pooled connection the app
    // closed just as it was reused, which surfaces as a reset, a broken pipe
    // or an incomplete message), it is sent once more on a fresh connection,
    // so that race never reaches the client.
    let replay = (is_idempotent(&head.method) && body.is_end_stream()).then(|| Replay::of(&head));
    let body = body.map_err(|error| BoxError::from(format!("{error:?}"))).boxed_unsync();
    let sent = async {
        match gateway.backends.pooled().request(Request::from_parts(head, body)).await {
            Err(error) if replay.is_some() => {
                tracing::debug!(service = id, "hop failed, sending again: {error}");
                gateway.backends.fresh.request(replay.expect("checked in the guard").request()).await
            }
            result => result,
        }
    };
    let response = match tokio::time::timeout_at(deadline, sent).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            return match (fault.rejection(max_body), service.stopping()) {
                (Some(rejection), _) => rescue(Failure::Limit(rejection)),
                // The instance went because its app is stopping (removed,
                // replaced, shut down), not because it broke.
                (None, Some(stopping)) => rescue(Failure::Wake(&stopping)),
                (None, None) => rescue(Failure::Hop { service: id, error: &error }),
            };
        }
        Err(_) => return rescue(Failure::ServiceTimeout { service: id, limit }),
    };

    if let Some(client_upgrade) = client_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        return upgrade(gateway, service, response, client_upgrade, lease);
    }
    let (mut parts, body) = response.into_parts();
    // A proxy answers in its own HTTP version, not the app's (RFC 9110
    // §6.2): an HTTP/1.0 app (Python's http.server) must not make the
    // client's keep-alive connection an HTTP/1.0 one.
    parts.version = Version::HTTP_11;
    remove_hop_by_hop(&mut parts.headers);
    // Only a 101 switches protocols; an `Upgrade` elsewhere is the app's
    // offer for its own hop.
    parts.headers.remove(header::UPGRADE);
    let body = LeasedBody { body, deadline: Box::pin(tokio::time::sleep_until(deadline)), limit, _lease: lease };
    Response::from_parts(parts, ResponseBody::Left(http_body_util::Either::Right(CheckedResponse::new(body, fault))))
}

/// An upgraded connection (WebSocket and the like) is activity for as long as
/// it is open: the lease goes with the byte copy, which the shutdown drain
/// waits for like any request in flight.
fn upgrade(
    gateway: &Gateway,
    service: &Arc<ServiceHandle>,
    mut response: Response<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    lease: Lease,
) -> Response<ResponseBody> {
    let backend_upgrade = hyper::upgrade::on(&mut response);
    let service_id = service.config().id.clone();
    gateway.upgrades.spawn(async move {
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

/// Rewrites a client's request head for the hop: origin-form URI to the
/// instance, HTTP/1.1 (services speak it whatever the client spoke), a
/// `Host` (an HTTP/2 client gives `:authority` instead), no hop-by-hop
/// headers, and the forwarding headers.
///
/// `X-Forwarded-Proto` and `Forwarded`'s `proto` are the client's `scheme`
/// (https over TLS), whatever the hop speaks.
///
/// `X-Forwarded-*` and `Forwarded` are replaced, never appended to:
/// dormouse is the edge, and a client could otherwise claim any address
/// (as Traefik does for untrusted sources).
fn prepare_head(
    head: &mut http::request::Parts,
    instance: SocketAddr,
    client: SocketAddr,
    scheme: &Scheme,
    upgrading: bool,
) {
    let authority = head.uri.authority().map(|authority| authority.as_str().to_owned());
    let path_and_query = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    head.uri = format!("http://{instance}{path_and_query}").parse().expect("an address and a valid path make a URI");
    head.version = Version::HTTP_11;
    let headers = &mut head.headers;
    if !headers.contains_key(header::HOST)
        && let Some(value) = authority.as_deref().and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(header::HOST, value);
    }
    let upgrade = upgrading.then(|| headers.get(header::UPGRADE).cloned()).flatten();
    remove_hop_by_hop(headers);
    headers.remove(header::UPGRADE);
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }

    for name in &UNTRUSTED_FORWARDING {
        headers.remove(name);
    }
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).map(str::to_owned);
    let ip = client.ip().to_string();
    headers.insert(X_FORWARDED_FOR, HeaderValue::from_str(&ip).expect("an IP address is a valid header value"));
    let proto = if *scheme == Scheme::HTTPS { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    // RFC 7239: an IPv6 address is quoted and bracketed; a host with
    // characters outside a token is quoted.
    let node = if client.is_ipv6() { format!("\"[{ip}]\"") } else { ip };
    let mut forwarded = format!("for={node};proto={proto}");
    headers.remove(X_FORWARDED_HOST);
    if let Some(host) = host {
        forwarded.push_str(&format!(";host=\"{}\"", host.replace(['"', '\\'], "")));
        if let Ok(value) = HeaderValue::from_str(&host) {
            headers.insert(X_FORWARDED_HOST, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
}

/// Removes the hop-by-hop headers and every header `Connection` names, but
/// `Host`, which no hop may drop (a client naming it must not strip it).
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| name != header::HOST)
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// What it takes to send a body-less request a second time.
struct Replay {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
}

impl Replay {
    fn of(head: &http::request::Parts) -> Replay {
        Replay { method: head.method.clone(), uri: head.uri.clone(), headers: head.headers.clone() }
    }

    fn request(self) -> Request<BackendBody> {
        let mut request = Request::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        request
    }
}

/// A backend's response body with the lease that keeps its instance awake
/// (and counted as busy) until the body has been sent or dropped, cut off
/// with an error at the request's wall-clock deadline.
pub struct LeasedBody {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    _lease: Lease,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(Some(Err(format!("the service did not finish its response within {:?}", self.limit).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
