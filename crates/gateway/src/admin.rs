//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is
//! alive) and `/readyz` (the gateway accepts connections, which it does once
//! the apps are launched), for a scraper, a load balancer or a Kubernetes
//! probe.
//!
//! Invariants: it is never the public listener, and nothing it serves
//! touches an app: a scrape reads counters and instance states, it never
//! wakes a service or keeps one awake, and its requests are not counted as
//! app traffic.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dormouse_telemetry::{Gauges, Metrics};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::conn::AcceptErrors;
use crate::{App, Gateway};

/// Admin connections open at once; past it they wait in the backlog. A
/// scraper and a few probes need a handful.
const MAX_CONNECTIONS: usize = 64;

/// How long an admin connection may take to send its request head (a probe
/// or a scraper sends it at once), and at most how long it stays open. One
/// request per connection: a client that pipelines and never reads holds
/// its place no longer.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// How long an exposition is served again to the next scrapes: scrapers
/// side by side share one encoding, so scraping as hard as one can costs
/// the apps at most four encodings a second (each a few milliseconds with
/// hundreds of apps), and a scrape is at most this stale.
pub const EXPOSITION_REUSE: Duration = Duration::from_millis(250);

/// What the admin listener serves.
#[derive(Clone)]
pub struct Admin {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    /// The last exposition and when it was made; held while one is made.
    last: Arc<tokio::sync::Mutex<Option<(Instant, Bytes)>>>,
}

impl Admin {
    pub fn new(gateway: Arc<Gateway>, metrics: Arc<Metrics>) -> Admin {
        Admin { gateway, metrics, last: Arc::default() }
    }

    /// The exposition: the last one if it is fresh enough, else a new one,
    /// encoded off the async workers (a daemon with many apps takes
    /// milliseconds).
    async fn exposition(&self) -> Bytes {
        let mut last = self.last.lock().await;
        if let Some((made, text)) = &*last
            && made.elapsed() < EXPOSITION_REUSE
        {
            return text.clone();
        }
        let admin = self.clone();
        let text = tokio::task::spawn_blocking(move || Bytes::from(admin.metrics.encode(admin.gauges())))
            .await
            .expect("encoding does not panic");
        *last = Some((Instant::now(), text.clone()));
        text
    }

    /// Every gauge, read from the apps as they are now: those in the table,
    /// and old versions still draining (their instances count, their
    /// `standby` and `failing` flags do not: the current version's say it).
    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges::default();
        let table = self.gateway.apps();
        for app in table.apps() {
            gauges.apps += 1;
            count(&mut gauges, app, true);
        }
        for app in self.gateway.retired_apps() {
            // A deploy between reading the table and this: the version it
            // replaced is counted already.
            if !table.apps().any(|current| Arc::ptr_eq(current, &app)) {
                count(&mut gauges, &app, false);
            }
        }
        gauges
    }

    async fn respond(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here\n");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.exposition().await);
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(dormouse_telemetry::CONTENT_TYPE));
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            // Apps are launched before the gateway accepts (a daemon
            // restores every recorded app first), so accepting means ready;
            // a draining gateway is not.
            "/readyz" if self.gateway.accepting() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the gateway is not accepting connections\n"),
            _ => text(StatusCode::NOT_FOUND, "the admin listener serves /metrics, /healthz and /readyz\n"),
        }
    }
}

/// Adds `app`'s instances to `gauges`; `current`: it is the version in the
/// table, whose targets are the ones that say `standby` or `failing`.
fn count(gauges: &mut Gauges, app: &App, current: bool) {
    let name = app.name();
    for component in app.components() {
        let live = component.live_instances();
        gauges.instances(name, component.id(), "running", live as i64);
        if current {
            gauges.current(name, component.id(), false);
        }
        gauges.queue_depth(name, component.id(), component.waiting() as i64);
        gauges.active_instances += live as u64;
        gauges.active_memory_bytes += (live * component.memory_limit()) as u64;
    }
    for service in app.supervisor().services() {
        let id = &service.config().id;
        let census = service.census();
        // What the quotas count as active: every instance not paused.
        let active = census.starting + census.running + census.stopping;
        gauges.instances(name, id, "starting", census.starting as i64);
        gauges.instances(name, id, "running", census.running as i64);
        gauges.instances(name, id, "paused", census.paused as i64);
        gauges.instances(name, id, "stopping", census.stopping as i64);
        if current {
            gauges.current(name, id, census.failing);
        }
        gauges.queue_depth(name, id, census.waiting as i64);
        gauges.active_instances += active as u64;
        gauges.active_memory_bytes += active as u64 * service.config().memory;
    }
}

/// Serves the admin endpoints on `listener` (HTTP/1.1) until `shutdown`
/// resolves.
pub async fn serve_admin(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).keep_alive(false);
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => place.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_errors.record(&error);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let admin = admin.clone();
        let service = hyper::service::service_fn(move |request| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.respond(request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _place = place;
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
