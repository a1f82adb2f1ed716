//! The HTTP front of dormouse: accepts connections, enforces request limits,
//! routes each request to its component, sets Spin's request headers, turns
//! every failure into one response (see [`rescue`]), and drains on shutdown.
//!
//! Invariants: a request either gets a response from its guest or exactly one
//! error response from `rescue`; the gateway itself runs no guest code and
//! holds no per-request state after the response body ends.

mod admin;
mod app;
mod conn;
mod limits;
mod outbound;
mod proxy;
mod router;
mod spin;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dormouse_supervisor::WakeError;
use dormouse_wasm_host::{ComponentPre, GuardedBody, GuestError, HandleError, Host, WasiBody, WasiHttpError};
use http::uri::Scheme;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, field};

pub use admin::{Admin, serve_admin};
pub use app::{App, AppParts, AppTable, Unrouted, app_name};
pub use conn::AcceptErrors;
pub use dormouse_telemetry::Metrics;
pub use limits::Rejection;
pub use outbound::{Destination, OutboundConfig};
pub use router::{RouteEntry, Router, Slot, normalize_path};
pub use tls::{PLAIN_HTTP_REFUSAL, RELOAD_INTERVAL, Tls, TlsError};

/// The path Spin's health check answers on.
pub const HEALTH_PATH: &str = "/.well-known/spin/health";

/// The path that reports the services' states as JSON, on `dormouse up`
/// (one app, a developer's own) only, to `GET`s from loopback: a daemon's
/// tenants get theirs from the control API.
pub const SERVICES_PATH: &str = "/.well-known/dormouse/services";

/// The most I/O threads a gateway starts (`GatewayConfig::io_threads`).
pub const MAX_IO_THREADS: usize = 256;

/// Request limits and timeouts of the front. Defaults are DESIGN.md's. They
/// hold for requests to components and to services alike; the wall-clock
/// limit of a request is the host's (`HostConfig::wall_limit`).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Time a client has to send a complete request head, and a new
    /// connection its first request. Default 10 s; past it the connection is
    /// closed.
    pub header_read_timeout: Duration,
    /// How long a connection may have no request in flight (from its head
    /// to the end of its response body) before it is closed, HTTP/1.1
    /// keep-alive and HTTP/2 alike. Default 60 s; each open connection costs
    /// a file descriptor and ~10 KiB.
    pub idle_timeout: Duration,
    /// Connections open at once; past it new ones wait in the listen backlog.
    /// Default 10,000; keep it below the process's file descriptor limit.
    pub max_connections: usize,
    /// Longest path and query. Default 8 KiB; longer gets 414.
    pub max_url_bytes: usize,
    /// Largest header section (names, values, and 4 bytes a line). Default
    /// 32 KiB; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body. Default 10 MiB; larger gets 413.
    pub max_body_bytes: u64,
    /// How long shutdown waits for in-flight requests. Default 30 s.
    pub drain_timeout: Duration,
    /// Components' outbound HTTP.
    pub outbound: OutboundConfig,
    /// Serve HTTPS (HTTP/2 or HTTP/1.1, by ALPN) with this certificate,
    /// reloaded when its files change (see [`RELOAD_INTERVAL`]). Default
    /// `None`: plain HTTP/1.1 and h2c. A TLS connection costs a handshake's
    /// CPU and rustls's record buffers more than a plain one.
    pub tls: Option<Tls>,
    /// Where requests, instances, wakes and key-value operations are
    /// counted. `None` (the default): nothing is counted, and a request pays
    /// nothing for metrics.
    pub metrics: Option<Arc<Metrics>>,
    /// Threads that accept and serve connections, each with a
    /// single-threaded runtime of its own: a connection's I/O, its hop to a
    /// service and a guest's first stretch (up to the guest's first wait)
    /// stay on one thread, with no hand-off between threads. A guest that
    /// waits (for I/O, or past a 10 ms tick of CPU) goes on on one of the
    /// host's guest runtimes, so that it holds up no other connection. Default: one
    /// per CPU this process may use (`std::thread::available_parallelism`),
    /// at most [`MAX_IO_THREADS`]; at least 1. Each costs a thread and 4
    /// file descriptors, and at most a quarter of the process's file
    /// descriptor limit goes to them.
    pub io_threads: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_url_bytes: 8 << 10,
            max_header_bytes: 32 << 10,
            max_body_bytes: 10 << 20,
            drain_timeout: Duration::from_secs(30),
            outbound: OutboundConfig::default(),
            tls: None,
            metrics: None,
            io_threads: std::thread::available_parallelism().map_or(1, usize::from).min(MAX_IO_THREADS),
        }
    }
}

impl GatewayConfig {
    /// How clients reach the gateway, for the URLs shown to them: `https`
    /// with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

pub type ResponseBody =
    Either<Either<limits::CheckedResponse<GuardedBody>, limits::CheckedResponse<proxy::LeasedBody>>, Full<Bytes>>;

/// HTTP/1.1 header lines allowed per byte of the header limit: one per 32
/// bytes (1,024 lines at the 32 KiB default). hyper's own cap is 100 lines,
/// far below the byte limit; a larger cap costs hyper a larger (uninitialised)
/// index array per request.
const HEADER_BYTES_PER_LINE: usize = 32;

/// What the connections of one `serve` share.
struct Serving {
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    /// Every connection's task, from its accept (so that the drain waits
    /// for a handshake in progress too).
    open: TaskTracker,
    /// The drain's start, a child of which each connection watches: its
    /// own, so that the connections' many wake-ups never share one lock.
    draining: tokio_util::sync::CancellationToken,
    /// The drain timeout passed: requests still without a response are
    /// answered 503 before dormouse exits.
    cut_short: tokio_util::sync::CancellationToken,
}

/// A connection just accepted: its client, the address it reached, and what
/// its watchdog measures from the accept on.
struct Accepted {
    client: SocketAddr,
    local: Option<SocketAddr>,
    activity: Arc<conn::Activity>,
}

/// How a request arrived: from whom, to which address, over which scheme
/// (https over TLS, for the URL the app is told of), and the span it is
/// logged in.
pub(crate) struct Asked<'a> {
    pub client: SocketAddr,
    pub local: Option<SocketAddr>,
    pub scheme: &'a Scheme,
    pub span: &'a tracing::Span,
    /// Where the request is counted, set once it is known (metrics kept):
    /// its component's or service's metrics, or its app's for requests no
    /// route took. Its response counts there, or 499 if its client leaves
    /// first.
    pub counted: OnceLock<Arc<dormouse_telemetry::TargetMetrics>>,
}

impl Asked<'_> {
    fn count_under(&self, target: Option<&Arc<dormouse_telemetry::TargetMetrics>>) {
        if let Some(target) = target {
            let _ = self.counted.set(target.clone());
        }
    }
}

/// The HTTP front: one listener's connections, limits and routing across a
/// table of apps.
pub struct Gateway {
    /// Read on every request without a lock; replaced whole on a deploy.
    apps: arc_swap::ArcSwap<AppTable>,
    /// Serialises table updates (deploys and removals), never requests.
    updating: std::sync::Mutex<()>,
    backends: proxy::Backends,
    host: Host,
    config: GatewayConfig,
    /// Upgraded connections to services (WebSocket and the like), which the
    /// shutdown drain waits for like requests in flight.
    upgrades: TaskTracker,
    /// The address the gateway serves on, once it does: in-process requests
    /// report it as their client address.
    local_addr: std::sync::OnceLock<SocketAddr>,
    /// Set while the accept loop runs: what `/readyz` reports.
    accepting: std::sync::atomic::AtomicBool,
    /// Apps taken out of the table (replaced or removed), while they live:
    /// their draining requests and instances still count in the gauges.
    retired: std::sync::Mutex<Vec<std::sync::Weak<App>>>,
}

impl Gateway {
    /// A gateway over `apps` (see [`AppTable::single`] and
    /// [`AppTable::for_domain`]) whose components run on `host`.
    pub fn new(host: Host, config: GatewayConfig, apps: AppTable) -> Arc<Gateway> {
        Arc::new(Gateway {
            apps: arc_swap::ArcSwap::from_pointee(apps),
            updating: std::sync::Mutex::new(()),
            backends: proxy::Backends::new(),
            host,
            config,
            upgrades: TaskTracker::new(),
            local_addr: Default::default(),
            accepting: Default::default(),
            retired: Default::default(),
        })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The current table.
    pub fn apps(&self) -> Arc<AppTable> {
        self.apps.load_full()
    }

    /// Changes the table: `change` gets the current one and returns the new
    /// one and what it gives back (the app replaced or removed). Requests
    /// already routed keep the app they were routed to.
    pub fn update<T>(&self, change: impl FnOnce(&AppTable) -> (AppTable, T)) -> T {
        let _one_at_a_time = self.updating.lock().expect("not poisoned");
        let (table, out) = change(&self.apps.load());
        self.apps.store(Arc::new(table));
        out
    }

    /// Notes an app taken out of the table, which lives on while it drains.
    fn retiring(&self, app: Option<Arc<App>>) -> Option<Arc<App>> {
        if let Some(app) = &app {
            let mut retired = self.retired.lock().expect("not poisoned");
            retired.retain(|app| app.strong_count() > 0);
            retired.push(Arc::downgrade(app));
        }
        app
    }

    /// Apps out of the table that are still alive: old versions draining
    /// their requests and stopping their instances.
    pub fn retired_apps(&self) -> Vec<Arc<App>> {
        self.retired.lock().expect("not poisoned").iter().filter_map(std::sync::Weak::upgrade).collect()
    }

    /// Routes to `app` from now on, replacing the app of its name; returns
    /// that app, to be retired.
    pub fn insert(&self, app: Arc<App>) -> Option<Arc<App>> {
        self.prune_metrics(&app);
        let old = self.update(|table| table.with(app));
        self.retiring(old)
    }

    /// After a version of the app `name` failed to deploy: drops the series
    /// its launch made, all of them if no version runs.
    pub fn abandon_metrics(&self, name: &str) {
        if let Some(metrics) = &self.config.metrics {
            match self.apps().get(name) {
                Some(running) => self.prune_metrics(running),
                None => metrics.forget(name),
            }
        }
    }

    /// Drops the series of `app`'s name whose component or service `app`
    /// does not have (an older version's, a failed deploy's).
    pub fn prune_metrics(&self, app: &App) {
        if let Some(metrics) = &self.config.metrics {
            let has =
                |id: &str| app.components().iter().any(|c| c.id() == id) || app.supervisor().service(id).is_some();
            metrics.app(app.name()).retain_targets(has);
        }
    }

    /// Stops routing to the app `name`; returns it, to be retired. Its
    /// metrics go from the exposition.
    pub fn remove(&self, name: &str) -> Option<Arc<App>> {
        let removed = self.retiring(self.update(|table| table.without(name)));
        if let Some(metrics) = &self.config.metrics {
            metrics.forget(name);
        }
        removed
    }

    /// Whether the gateway is accepting connections (its listener is bound
    /// and it is not shutting down).
    pub fn accepting(&self) -> bool {
        self.accepting.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Accepts connections from `listener` until `shutdown` resolves, each
    /// served on the one of `GatewayConfig::io_threads` threads of its own
    /// with the fewest, then stops accepting and waits up to the drain timeout for in-flight
    /// requests, guests and upgraded connections. Past that timeout, every
    /// request still without a response head is answered 503 (with
    /// `Retry-After`), given up to [`conn::CLOSE_GRACE`] to be written.
    /// Returns whether everything drained in time. With
    /// [`GatewayConfig::tls`], every connection is HTTPS, and the
    /// certificate files are watched while this runs.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) -> bool {
        let local_addr = listener.local_addr().ok();
        if let Some(addr) = local_addr {
            let _ = self.local_addr.set(addr);
        }
        let config = &self.config;
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // The connection's watchdog (`conn::Activity`) gives a request
            // head the header timeout, without a timer for every head.
            .header_read_timeout(None)
            .max_headers((config.max_header_bytes / HEADER_BYTES_PER_LINE).max(100))
            // Room for the URL and header limits below, so that those answer
            // 414 and 431 with a reason; hyper answers 431 past this.
            .max_buf_size((config.max_url_bytes + config.max_header_bytes + 1024).max(8192));
        // HPACK counts 32 bytes more per field than the wire does: twice the
        // limit lets `limits::check_head` measure it as for HTTP/1.1 and
        // answer 431 with a reason.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX));
        let serving = Arc::new(Serving {
            builder,
            open: TaskTracker::new(),
            draining: tokio_util::sync::CancellationToken::new(),
            cut_short: tokio_util::sync::CancellationToken::new(),
        });
        // When this returns, the I/O threads' runtimes go.
        let finished = tokio_util::sync::CancellationToken::new();
        let _finished = finished.clone().drop_guard();
        let io_threads = Arc::new(conn::IoThreads::start(config.io_threads, &finished));
        let _reload = config.tls.clone().map(|tls| tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tls.watch())));
        // The accept loop runs on an I/O thread too: here, it would wait
        // behind busy guests for the runtime to look at its socket.
        let listener = match listener.into_std() {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!("cannot serve: {error}");
                return false;
            }
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let acceptor = {
            let (gateway, serving, io_threads, stop) =
                (self.clone(), serving.clone(), io_threads.clone(), stop.clone());
            async move { gateway.accept(listener, &serving, &io_threads, stop).await }
        };
        let mut accepting = tokio_util::task::AbortOnDropHandle::new(match io_threads.acceptor() {
            Some(runtime) => runtime.spawn(acceptor),
            None => tokio::spawn(acceptor),
        });
        self.accepting.store(true, std::sync::atomic::Ordering::Release);
        tokio::pin!(shutdown);
        let failed = tokio::select! {
            () = &mut shutdown => false,
            ended = &mut accepting => {
                tracing::error!("stopped accepting connections: {}", match ended {
                    Ok(()) => "the listener failed".to_owned(),
                    Err(error) => error.to_string(),
                });
                true
            }
        };
        self.accepting.store(false, std::sync::atomic::Ordering::Release);
        stop.cancel();
        if !failed {
            // It closes the listener as it ends.
            let _ = accepting.await;
        }
        serving.draining.cancel();
        serving.open.close();
        let drain = async {
            serving.open.wait().await;
            let tasks = self.host.tasks();
            tasks.close();
            self.upgrades.close();
            tokio::join!(tasks.wait(), self.upgrades.wait());
        };
        let drained = tokio::time::timeout(self.config.drain_timeout, drain).await.is_ok();
        if !drained {
            serving.cut_short.cancel();
            // A moment to write those answers; a response body still
            // streaming is cut.
            let _ = tokio::time::timeout(conn::CLOSE_GRACE, serving.open.wait()).await;
        }
        drained && !failed
    }

    /// Accepts connections until `stop`, each served on the I/O thread with
    /// the fewest; runs on an I/O thread itself.
    async fn accept(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        serving: &Arc<Serving>,
        io_threads: &conn::IoThreads,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => return tracing::error!("cannot accept connections: {error}"),
        };
        let connections = Arc::new(tokio::sync::Semaphore::new(self.config.max_connections));
        let mut accept_errors = conn::AcceptErrors::default();
        let header_timeout = self.config.header_read_timeout;

        loop {
            // A place first: at the cap, connections wait in the backlog.
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = stop.cancelled() => break,
            };
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: keep serving
                        // the connections we have, try again shortly.
                        accept_errors.record(&error);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            // Responses are written in one go by hyper; Nagle would only delay
            // the last segment of each.
            let _ = stream.set_nodelay(true);
            // The I/O thread with the fewest connections serves it: the
            // socket leaves this runtime for that one's.
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%client, "connection dropped: {error}");
                    continue;
                }
            };
            let (runtime, placed) = io_threads.least_loaded();
            let activity = conn::Activity::new(header_timeout, self.config.idle_timeout);
            let accepted = Accepted { client, local: self.local_addr.get().copied(), activity };
            let (drain, cut) = (serving.draining.child_token(), serving.cut_short.child_token());
            let (gateway, shared) = (self.clone(), serving.clone());
            let connection = async move {
                let _place = (permit, placed);
                let stream = match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(error) => return tracing::debug!(%client, "connection dropped: {error}"),
                };
                let builder = &shared.builder;
                let Some(tls) = &gateway.config.tls else {
                    let io = TokioIo::new(stream);
                    return gateway.serve_connection(io, Scheme::HTTP, builder, drain, cut, accepted).await;
                };
                // The handshake, in the connection's own task (a slow client
                // holds no one else up), within the time a connection has
                // for its first request, which it counts against.
                let deadline = accepted.activity.accepted() + header_timeout;
                let handshake = tokio::time::timeout_at(deadline, tls.accept(stream)).await;
                match handshake {
                    Ok(Ok(stream)) => {
                        let io = TokioIo::new(stream);
                        gateway.serve_connection(io, Scheme::HTTPS, builder, drain, cut, accepted).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%client, "TLS connection refused: {error}"),
                    Err(_) => tracing::debug!(%client, "TLS connection closed: no handshake within {header_timeout:?}"),
                }
            };
            match runtime {
                Some(runtime) => drop(serving.open.spawn_on(connection, runtime)),
                None => drop(serving.open.spawn(connection)),
            }
        }
    }

    /// Serves one connection, plain or past its TLS handshake, with hyper
    /// (HTTP/1.1 or HTTP/2, by its first bytes) until it ends, its watchdog
    /// closes it or the drain (`drain` cancelled) does. Either closes it
    /// gracefully: HTTP/2 gets a GOAWAY first (RFC 9113 §6.8), HTTP/1.1
    /// `Connection: close` on a response still to be sent.
    async fn serve_connection<I>(
        self: Arc<Self>,
        io: I,
        scheme: Scheme,
        builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
        drain: tokio_util::sync::CancellationToken,
        cut: tokio_util::sync::CancellationToken,
        accepted: Accepted,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let Accepted { client, local, activity } = accepted;
        let wall_limit = self.host.config().wall_limit;
        let requests = activity.clone();
        let metrics_on = self.config.metrics.is_some();
        let cut = Arc::new(cut);
        let service = hyper::service::service_fn(move |request| {
            let cut = cut.clone();
            let in_flight = requests.request(request.version(), wall_limit);
            let gateway = self.clone();
            let scheme = scheme.clone();
            // One span per request, at debug level: off by default, so that
            // a request pays nothing for it (`RUST_LOG=
            // dormouse_gateway=debug` logs a line per request).
            let span = tracing::debug_span!(
                "request",
                app = field::Empty,
                route = field::Empty,
                target = field::Empty,
                start = field::Empty,
                status = field::Empty,
                ms = field::Empty,
            );
            let arrived = (metrics_on || !span.is_disabled()).then(std::time::Instant::now);
            let instrumented = span.clone();
            async move {
                let asked = Asked { client, local, scheme: &scheme, span: &span, counted: OnceLock::new() };
                // A client that leaves before the response head is counted
                // too, as 499 (nginx's "client closed request").
                let mut abandoned = conn::Abandoned::new(&asked.counted, arrived);
                // A drain cut short by its timeout answers every request
                // still without a response, instead of leaving its client
                // with a closed connection and no status.
                let http1 = request.version() < http::Version::HTTP_2;
                let (mut response, app) = tokio::select! {
                    biased;
                    handled = gateway.handle(request, &asked) => handled,
                    () = cut.cancelled() => (rescue(Failure::DrainCut), None),
                };
                abandoned.disarm();
                // Draining: the client is told not to send another request
                // on this connection (RFC 9112 §9.6).
                if http1 && in_flight.closing() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                if let Some(arrived) = arrived.filter(|_| !span.is_disabled()) {
                    span.record("status", response.status().as_u16());
                    span.record("ms", arrived.elapsed().as_secs_f64() * 1000.0);
                    tracing::debug!(parent: &span, "answered");
                }
                let record = asked
                    .counted
                    .get()
                    .zip(arrived)
                    .map(|(target, arrived)| conn::Record::new(target.clone(), &response, arrived));
                Ok::<_, Infallible>(response.map(|body| conn::TrackedBody::new(body, in_flight, app, record)))
            }
            .instrument(instrumented)
        });
        let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
        tokio::pin!(connection);
        let ended = |ended: Result<(), _>| {
            if let Err(error) = ended {
                tracing::debug!(%client, "connection ended: {error}");
            }
        };
        tokio::select! {
            result = connection.as_mut() => ended(result),
            () = conn::idle(&activity) => {
                tracing::debug!(%client, "connection closed: idle past its timeout");
                // Nothing in flight (or nothing that will finish): a moment
                // to send the GOAWAY, then closed whatever the client does.
                connection.as_mut().graceful_shutdown();
                if let Ok(result) = tokio::time::timeout(conn::CLOSE_GRACE, connection).await {
                    ended(result);
                }
            }
            () = drain.cancelled() => {
                // An HTTP/1.1 connection is not closed under a request its
                // client may have sent already (after a response that kept
                // it open, or on a connection opened ahead of it): for a
                // moment, one that comes is answered, and every response
                // says `Connection: close`. HTTP/2 has GOAWAY for that.
                if activity.may_be_sending_http1() {
                    activity.close_after_each_response();
                    tokio::select! {
                        result = connection.as_mut() => return ended(result),
                        () = tokio::time::sleep(conn::LAST_CALL) => {}
                    }
                }
                // Requests in flight finish, within the drain timeout and
                // under the watchdog still; with none left, the client has a
                // moment for the goodbye (HTTP/2: GOAWAY, a PING, its
                // acknowledgement), and a client that never answers is not
                // waited for.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    result = connection => ended(result),
                    () = conn::idle(&activity) => {}
                    () = conn::quiet(&activity, conn::CLOSE_GRACE) => {
                        tracing::debug!(%client, "connection closed: no answer to the drain's close");
                    }
                }
            }
        }
    }

    /// Routes a request to its app, and within the app to its component or
    /// service. The response comes with the request's mark on its app, to be
    /// held until the response body ends; where to count it is in `asked`.
    async fn handle<B>(&self, request: Request<B>, asked: &Asked<'_>) -> (Response<ResponseBody>, Option<app::AppGuard>)
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<WasiHttpError>,
    {
        let table = self.apps.load();
        let path = request.uri().path();
        if path.starts_with("/.well-known/") {
            if path == HEALTH_PATH {
                return (plain(StatusCode::OK, "OK\n"), None);
            }
            // Only to the developer's own machine: it names pids and ports.
            if path == SERVICES_PATH
                && (request.method() == http::Method::GET || request.method() == http::Method::HEAD)
                && asked.client.ip().to_canonical().is_loopback()
                && let Some(app) = table.only()
            {
                let status = serde_json::to_string(&app.supervisor().status()).expect("statuses serialise");
                let mut response = plain(StatusCode::OK, &status);
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return (response, None);
            }
        }
        // The target's own authority wins over `Host` (RFC 9112 §3.2.2:
        // absolute-form, and HTTP/2's :authority).
        let authority = match request.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => request.headers().get(header::HOST).and_then(|host| host.to_str().ok()),
        };
        let routed = table.route(authority);
        // A malformed request (no `Host`, two) is refused before it reaches
        // any app; counted as its app's, if it names one.
        if let Err(rejection) = limits::check_head(&request, &self.config) {
            asked.count_under(routed.ok().and_then(|app| app.counted_for(request.uri().path())).as_ref());
            return (rescue(Failure::Limit(rejection)), None);
        }
        let app = match routed {
            Ok(app) => app::AppGuard::new(app.clone()),
            Err(unrouted) => return (unrouted_response(unrouted), None),
        };
        drop(table);
        asked.span.record("app", app.0.name());
        let response = self.handle_in(&app.0, request, asked).await;
        (response, Some(app))
    }

    /// Handles a request within `app`, noting in `asked` where it counts.
    async fn handle_in<B>(&self, app: &App, mut request: Request<B>, asked: &Asked<'_>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<WasiHttpError>,
    {
        // Dot segments are resolved before routing, and the request goes on
        // as routed: `/app/../admin` is `/admin` for the router and the app.
        if let Some(normalized) = normalize_path(request.uri().path()) {
            let uri = match request.uri().query() {
                Some(query) => format!("{normalized}?{query}"),
                None => normalized.into_owned(),
            };
            match uri.parse() {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => {
                    asked.count_under(app.unrouted_metrics());
                    return rescue(Failure::Limit(Rejection::BadRequest("invalid request target")));
                }
            }
        }
        let path = request.uri().path();
        let Some((entry, matched)) = app.router().route(path) else {
            asked.count_under(app.unrouted_metrics());
            return empty(StatusCode::NOT_FOUND);
        };
        asked.span.record("route", entry.matched_route.as_str());
        asked.span.record("target", entry.target_id.as_str());
        let component = match entry.target {
            Slot::Component(index) => &app.components()[index],
            Slot::Service(index) => {
                let service = &app.supervisor().services()[index];
                asked.count_under(service.metrics());
                return proxy::forward(self, service, request, asked).await;
            }
        };
        let headers = spin::request_headers(&request, Some((entry, &matched)), asked.client, asked.local, asked.scheme);
        spin::apply(request.headers_mut(), headers);
        asked.span.record("start", "warm");
        asked.count_under(component.metrics());
        self.call(component, request).await
    }

    /// A request a component sent to the app itself (`target` is `None`) or
    /// to one component or service by id, answered without a socket (and
    /// so over `http`, as the component asked).
    pub(crate) async fn handle_local(
        &self,
        app: &App,
        mut request: Request<WasiBody>,
        target: Option<String>,
    ) -> Response<ResponseBody> {
        let local = self.local_addr.get().copied();
        let client = local.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let asked =
            Asked { client, local, scheme: &Scheme::HTTP, span: &tracing::Span::none(), counted: OnceLock::new() };
        if let Err(rejection) = limits::check_head(&request, &self.config) {
            return rescue(Failure::Limit(rejection));
        }
        match target {
            Some(id) => {
                let Some(component) = app.components().iter().find(|component| component.id() == id) else {
                    // dormouse's addition to service chaining: a service by id.
                    return match app.supervisor().service(&id) {
                        Some(service) => proxy::forward(self, service, request, &asked).await,
                        None => plain(StatusCode::NOT_FOUND, &format!("no component or service `{id}` in this app\n")),
                    };
                };
                // Its own route's headers when the path is on that route;
                // only the path otherwise (a private component has no route).
                let path = request.uri().path().to_owned();
                let routed = app
                    .router()
                    .entries()
                    .iter()
                    .filter(|entry| entry.target_id == id)
                    .find_map(|entry| entry.pattern.matches(&path).map(|matched| (entry, matched)));
                let routed = routed.as_ref().map(|(entry, matched)| (*entry, matched));
                let headers = spin::request_headers(&request, routed, client, local, &Scheme::HTTP);
                spin::apply(request.headers_mut(), headers);
                self.call(component, request).await
            }
            None => self.handle_in(app, request, &asked).await,
        }
    }

    /// Hands a routed request to its component and turns the outcome into
    /// the response.
    async fn call<B>(&self, component: &ComponentPre, request: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<WasiHttpError>,
    {
        let limit = self.config.max_body_bytes;
        let (request, fault) = limits::limit_body(request, limit);
        // A guest that read past the limit (or a body that broke off) before
        // it answered answered a request it never saw whole: whatever it
        // said, the client gets 413 (or 400).
        let handled = component.handle(request).await;
        if let Some(rejection) = fault.rejection(limit) {
            return rescue(Failure::Limit(rejection));
        }
        match handled {
            Ok(response) => response.map(|body| Either::Left(Either::Left(limits::CheckedResponse::new(body, fault)))),
            Err(error) => rescue(Failure::Component(component.id(), &error)),
        }
    }
}

/// Why a request got no response from its component or service.
pub enum Failure<'a> {
    /// A limit or a malformed request: the client's doing, 4xx.
    Limit(Rejection),
    Component(&'a str, &'a HandleError),
    Wake(&'a WakeError),
    /// The service broke the connection or answered nonsense.
    Hop {
        service: &'a str,
        error: &'a dyn std::fmt::Display,
    },
    /// The wall-clock limit passed before the service answered.
    ServiceTimeout {
        service: &'a str,
        limit: Duration,
    },
    /// The shutdown's drain timeout passed before the request was answered.
    DrainCut,
}

/// The one place a failed request becomes a response, and is logged: the
/// status names whose fault it is (4xx the client's, 500 the component's,
/// 502 the service's, 503 capacity with `Retry-After`, 504 time). A request
/// dormouse refused rather than handled carries why ([`Refused`]) to its
/// metrics.
pub fn rescue(failure: Failure<'_>) -> Response<ResponseBody> {
    use dormouse_telemetry::Rejection as Reason;
    let reason = match &failure {
        Failure::Limit(Rejection::UrlTooLong(_)) => Some(Reason::UrlLimit),
        Failure::Limit(Rejection::HeadersTooLarge(_)) => Some(Reason::HeaderLimit),
        Failure::Limit(Rejection::BodyTooLarge(_)) => Some(Reason::BodyLimit),
        Failure::Limit(Rejection::BadRequest(_) | Rejection::TransferCodingNotImplemented) => Some(Reason::BadRequest),
        Failure::Component(_, HandleError::Overloaded(_)) | Failure::Wake(WakeError::Overloaded { .. }) => {
            Some(Reason::QueueFull)
        }
        Failure::Component(_, HandleError::Quota(_)) | Failure::Wake(WakeError::Quota { .. }) => Some(Reason::Quota),
        Failure::Wake(WakeError::Timeout { .. }) => Some(Reason::WakeTimeout),
        Failure::Wake(WakeError::Failing { .. }) => Some(Reason::ServiceFailing),
        Failure::Wake(WakeError::Stopping { .. }) | Failure::DrainCut => Some(Reason::Stopping),
        Failure::Component(..) | Failure::Hop { .. } | Failure::ServiceTimeout { .. } => None,
    };
    let mut response = answer(failure);
    if let Some(reason) = reason {
        response.extensions_mut().insert(Refused(reason));
    }
    response
}

/// Why dormouse refused a request, on its response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refused(pub dormouse_telemetry::Rejection);

/// The response for a failure, logged.
fn answer(failure: Failure<'_>) -> Response<ResponseBody> {
    let retry = |mut response: Response<ResponseBody>, seconds: u64| {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        response
    };
    match failure {
        Failure::Limit(rejection) => {
            tracing::debug!("refused: {rejection:?}");
            rejection.response()
        }
        Failure::Component(component, error @ HandleError::Overloaded(_)) => {
            tracing::warn!(component, "{error}");
            let response =
                plain(StatusCode::SERVICE_UNAVAILABLE, "overloaded: all instances are busy, retry shortly\n");
            retry(response, 1)
        }
        Failure::Component(component, HandleError::Quota(exceeded)) => {
            tracing::warn!(component, "{exceeded}");
            retry(plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{exceeded}: retry shortly\n")), 1)
        }
        Failure::Component(component, error @ HandleError::Guest(GuestError::Timeout(limit))) => {
            tracing::warn!(component, "{error}");
            plain(StatusCode::GATEWAY_TIMEOUT, &format!("component `{component}` did not answer within {limit:?}\n"))
        }
        Failure::Component(component, error) => {
            tracing::error!(component, "{error}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("component `{component}` failed\n"))
        }
        Failure::Wake(error) => {
            tracing::warn!("{error}");
            let text = format!("{error}\n");
            match error {
                WakeError::Timeout { .. } => plain(StatusCode::GATEWAY_TIMEOUT, &text),
                WakeError::Failing { retry_after, .. } => {
                    retry(plain(StatusCode::SERVICE_UNAVAILABLE, &text), retry_after.as_secs())
                }
                WakeError::Overloaded { .. } | WakeError::Quota { .. } | WakeError::Stopping { .. } => {
                    retry(plain(StatusCode::SERVICE_UNAVAILABLE, &text), 1)
                }
            }
        }
        Failure::DrainCut => {
            tracing::warn!("refused: the drain timeout passed before this request was answered");
            let text = "dormouse is shutting down: the drain timeout passed before this request was answered\n";
            retry(plain(StatusCode::SERVICE_UNAVAILABLE, text), 1)
        }
        Failure::Hop { service, error } => {
            // The instance broke the connection (it crashed, or is stopping):
            // this request fails, the next one wakes a fresh instance.
            tracing::warn!(service, "proxy hop failed: {error}");
            plain(StatusCode::BAD_GATEWAY, &format!("service `{service}` failed to answer\n"))
        }
        Failure::ServiceTimeout { service, limit } => {
            tracing::warn!(service, "no answer within {limit:?}");
            plain(StatusCode::GATEWAY_TIMEOUT, &format!("service `{service}` did not answer within {limit:?}\n"))
        }
    }
}

/// The answer to a request whose `Host` names no app.
fn unrouted_response(unrouted: Unrouted) -> Response<ResponseBody> {
    match unrouted {
        Unrouted::NoApp(name) => plain(StatusCode::NOT_FOUND, &format!("no app `{name}` is deployed here\n")),
        Unrouted::OtherHost { domain } => plain(
            StatusCode::MISDIRECTED_REQUEST,
            &format!("this server hosts apps at <app>.{domain}: put the app's name in the Host\n"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::copy_from_slice(text.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = status;
    response
}
