//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is
//! alive) and `/readyz` (the gateway accepts connections and every app is
//! loaded), for a scraper, a load balancer or a Kubernetes probe.
//!
//! Invariants: it is never the public listener, and nothing it serves
//! touches an app: a scrape reads counters and instance states, it never
//! wakes a service or keeps one awake, and its requests are not counted as
//! app traffic.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dormouse_telemetry::{Gauges, Metrics};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::Gateway;
use crate::conn::AcceptErrors;

/// Admin connections open at once; past it they wait in the backlog. A
/// scraper and a few probes need a handful.
const MAX_CONNECTIONS: usize = 64;

/// How long an admin connection may take to send its request head, and at
/// most how long it stays open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// What the admin listener serves.
#[derive(Clone)]
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
}

impl Admin {
    /// Every gauge, read from the apps as they are now.
    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges::default();
        let table = self.gateway.apps();
        for app in table.apps() {
            gauges.apps += 1;
            let name = app.name();
            for component in app.components() {
                let live = component.live_instances();
                gauges.instances(name, component.id(), "running", live as i64);
                gauges.instances(name, component.id(), "standby", i64::from(live == 0));
                gauges.queue_depth(name, component.id(), component.waiting() as i64);
                gauges.active_instances += live as u64;
                gauges.active_memory_bytes += (live * component.memory_limit()) as u64;
            }
            for service in app.supervisor().services() {
                let id = &service.config().id;
                let census = service.census();
                let active = census.starting + census.running + census.stopping;
                let none = active + census.paused == 0;
                gauges.instances(name, id, "starting", census.starting as i64);
                gauges.instances(name, id, "running", census.running as i64);
                gauges.instances(name, id, "paused", census.paused as i64);
                gauges.instances(name, id, "stopping", census.stopping as i64);
                gauges.instances(name, id, "failing", i64::from(census.failing));
                gauges.instances(name, id, "standby", i64::from(none && !census.failing));
                gauges.queue_depth(name, id, census.waiting as i64);
                gauges.active_instances += active as u64;
                gauges.active_memory_bytes += active as u64 * service.config().memory;
            }
        }
        gauges
    }

    fn respond(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here\n".into());
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.metrics.encode(self.gauges()));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(dormouse_telemetry::CONTENT_TYPE));
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            // Apps are launched before the gateway accepts (a daemon
            // restores every recorded app first), so accepting means ready;
            // a draining gateway is not.
            "/readyz" if self.gateway.accepting() => text(StatusCode::OK, "ready\n".into()),
            "/readyz" => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the gateway is not accepting connections\n".into())
            }
            _ => text(StatusCode::NOT_FOUND, "the admin listener serves /metrics, /healthz and /readyz\n".into()),
        }
    }
}

/// Serves the admin endpoints on `listener` (HTTP/1.1) until `shutdown`
/// resolves.
pub async fn serve_admin(listener: TcpListener, admin: Admin, shutdown: impl Future<Output = ()>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
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
            let response = admin.respond(&request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _place = place;
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
