//! Components' outbound HTTP: each request is checked against its component's
//! `allowed_outbound_hosts`, then sent over the network, or, when addressed to
//! the app itself (`http://self.alt/...`) or to one of its components or
//! services (`http://<id>.spin.internal/...`), handed to the gateway
//! in-process, with no socket (but the service's own hop).
//!
//! Invariants: a request no entry allows fails with `HTTP-request-denied`
//! before any name lookup or connection; redirects are never followed here
//! (the guest sees the 3xx, and any request it makes next is checked again);
//! in-process hops are counted, and a chain longer than the limit fails with
//! `loop-detected` instead of exhausting the instances.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dormouse_manifest::AllowedHosts;
use dormouse_manifest::outbound::{SELF_HOST, chained_component};
use dormouse_wasm_host::{Hops, IoFuture, OutboundHttp, OutgoingFuture, RequestOptions, WasiBody, WasiHttpError};
use http_body_util::BodyExt;

use crate::{App, Gateway};

/// Timeouts and limits of outbound requests. Defaults are DESIGN.md's.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// To connect (and finish TLS) when the guest sets none. Default 5 s.
    pub connect_timeout: Duration,
    /// From sending the request to the response head, when the guest sets
    /// none. Default 30 s.
    pub first_byte_timeout: Duration,
    /// Between two chunks of the response body, when the guest sets none.
    /// Default 30 s.
    pub between_bytes_timeout: Duration,
    /// In-process hops a request may make (a component calling the app, which
    /// calls it again…). Default 10; past it, `loop-detected`.
    pub max_hops: u32,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            max_hops: 10,
        }
    }
}

impl OutboundConfig {
    /// The guest's own timeouts, with ours where it set none.
    pub fn timeouts(&self, guest: Option<RequestOptions>) -> RequestOptions {
        let guest = guest.unwrap_or_default();
        RequestOptions {
            connect_timeout: guest.connect_timeout.or(Some(self.connect_timeout)),
            first_byte_timeout: guest.first_byte_timeout.or(Some(self.first_byte_timeout)),
            between_bytes_timeout: guest.between_bytes_timeout.or(Some(self.between_bytes_timeout)),
        }
    }
}

/// Where an allowed request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The app's own router.
    App,
    /// One component (or service), by id, whatever its route (private ones
    /// included).
    Component(String),
    Network,
}

/// Decides where a request from a component with `allowed` may go, or `None`
/// if it may not go anywhere.
pub fn destination(allowed: &AllowedHosts, uri: &http::Uri) -> Option<Destination> {
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host()?;
    if host.eq_ignore_ascii_case(SELF_HOST) || host.eq_ignore_ascii_case("self") {
        return allowed.allows_app(scheme).then_some(Destination::App);
    }
    if !allowed.allows(scheme, host, uri.port_u16()) {
        return None;
    }
    Some(match chained_component(host) {
        Some(component) => Destination::Component(component.to_ascii_lowercase()),
        None => Destination::Network,
    })
}

pub(crate) struct Outbound {
    pub gateway: Weak<Gateway>,
    pub app: Weak<App>,
    pub allowed: HashMap<String, AllowedHosts>,
    pub config: OutboundConfig,
    /// Each component's metrics, where its requests are counted allowed or
    /// denied (empty when no metrics are kept).
    pub metrics: HashMap<String, Arc<dormouse_telemetry::TargetMetrics>>,
}

impl OutboundHttp for Outbound {
    fn send(
        &self,
        component: &Arc<str>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> OutgoingFuture {
        let allowed = self.allowed.get(&**component);
        let decided = allowed.and_then(|allowed| destination(allowed, request.uri()));
        if let Some(metrics) = self.metrics.get(&**component) {
            use dormouse_telemetry::Outbound;
            metrics.outbound(if decided.is_some() { Outbound::Allowed } else { Outbound::Denied });
        }
        let Some(destination) = decided else {
            tracing::warn!(
                component = %component,
                "outbound request to `{}` denied: add its scheme, host and port to `allowed_outbound_hosts`",
                origin(request.uri())
            );
            return Box::pin(async { Err(WasiHttpError::HttpRequestDenied) });
        };
        let target = match destination {
            Destination::App => None,
            Destination::Component(id) => Some(id),
            Destination::Network => {
                let options = self.config.timeouts(options);
                return Box::pin(async move {
                    let (response, io) = dormouse_wasm_host::default_send_request(request, Some(options)).await?;
                    let io: IoFuture = Box::new(io);
                    Ok((response.map(BodyExt::boxed_unsync), io))
                });
            }
        };
        let hops = request.extensions().get::<Hops>().copied().unwrap_or_default();
        let gateway = self.gateway.clone();
        let app = self.app.clone();
        let max_hops = self.config.max_hops;
        Box::pin(async move {
            if hops.0 > max_hops {
                return Err(WasiHttpError::LoopDetected);
            }
            // Gone only while shutting down.
            let gateway = gateway.upgrade().ok_or(WasiHttpError::DestinationUnavailable)?;
            let app = app.upgrade().ok_or(WasiHttpError::DestinationUnavailable)?;
            let response = gateway.handle_local(&app, request, target).await;
            let body = |body: crate::ResponseBody| {
                body.map_err(|error| WasiHttpError::InternalError(Some(error.to_string()))).boxed_unsync()
            };
            let io: IoFuture = Box::new(async { Ok(()) });
            Ok((response.map(body), io))
        })
    }
}

/// `scheme://host:port` of a URI, for messages.
fn origin(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    match uri.authority() {
        Some(authority) => format!("{scheme}://{authority}"),
        None => format!("{scheme}://"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(allowed: &[&str], uri: &str) -> Option<Destination> {
        destination(&AllowedHosts::parse(allowed).unwrap(), &uri.parse().unwrap())
    }

    #[test]
    fn our_timeouts_apply_where_the_guest_set_none() {
        let config = OutboundConfig::default();
        let none = config.timeouts(None);
        assert_eq!(none.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(none.first_byte_timeout, Some(Duration::from_secs(30)));
        assert_eq!(none.between_bytes_timeout, Some(Duration::from_secs(30)));
        let guest = RequestOptions { first_byte_timeout: Some(Duration::from_millis(300)), ..Default::default() };
        let merged = config.timeouts(Some(guest));
        assert_eq!(merged.first_byte_timeout, Some(Duration::from_millis(300)));
        assert_eq!(merged.connect_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn destinations() {
        assert_eq!(to(&[], "http://127.0.0.1:8080/"), None);
        assert_eq!(to(&["http://127.0.0.1:8080"], "http://127.0.0.1:8080/x"), Some(Destination::Network));
        assert_eq!(to(&["http://127.0.0.1:8080"], "http://127.0.0.1:8081/x"), None);
        assert_eq!(to(&["http://self"], "http://self.alt/x"), Some(Destination::App));
        assert_eq!(to(&["http://self"], "http://self/x"), Some(Destination::App));
        assert_eq!(to(&["http://self"], "https://self.alt/x"), None);
        assert_eq!(to(&["http://127.0.0.1:*"], "http://self.alt/x"), None);
        assert_eq!(
            to(&["http://api.spin.internal"], "http://api.spin.internal/v1"),
            Some(Destination::Component("api".into()))
        );
        assert_eq!(to(&["http://api.spin.internal"], "http://db.spin.internal/v1"), None);
    }
}
