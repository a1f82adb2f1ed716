//! Spin's request contract: the `spin-*` headers a component reads to learn
//! how it was reached (names and values as Spin's HTTP trigger sets them).

use std::net::SocketAddr;

use dormouse_manifest::RouteMatch;
use http::uri::Scheme;
use http::{HeaderMap, HeaderName, HeaderValue, Request, header};

use crate::RouteEntry;

const FULL_URL: HeaderName = HeaderName::from_static("spin-full-url");
const PATH_INFO: HeaderName = HeaderName::from_static("spin-path-info");
const MATCHED_ROUTE: HeaderName = HeaderName::from_static("spin-matched-route");
const RAW_COMPONENT_ROUTE: HeaderName = HeaderName::from_static("spin-raw-component-route");
const COMPONENT_ROUTE: HeaderName = HeaderName::from_static("spin-component-route");
const BASE_PATH: HeaderName = HeaderName::from_static("spin-base-path");
const CLIENT_ADDR: HeaderName = HeaderName::from_static("spin-client-addr");
const PATH_MATCH_PREFIX: &str = "spin-path-match-";

/// The headers to set on a request routed to `route` (`None`: a component
/// reached directly, not through one of its routes) that arrived by
/// `scheme`.
pub fn request_headers<B>(
    request: &Request<B>,
    route: Option<(&RouteEntry, &RouteMatch<'_>)>,
    client: SocketAddr,
    local: Option<SocketAddr>,
    scheme: &Scheme,
) -> Vec<(HeaderName, HeaderValue)> {
    let host = match request.headers().get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => host.to_owned(),
        None => request
            .uri()
            .authority()
            .map_or_else(|| local.map_or("localhost".to_owned(), |a| a.to_string()), |a| a.to_string()),
    };
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let full_url = format!("{scheme}://{host}{path_and_query}");

    let mut headers = Vec::with_capacity(8 + route.map_or(0, |(_, matched)| matched.captures.len()));
    let mut push = |name: HeaderName, value: &str| {
        // Every value here comes from a valid request line, header or route;
        // one that still cannot be a header value is left out, not guessed at.
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.push((name, value));
        }
    };
    push(FULL_URL, &full_url);
    push(BASE_PATH, "/");
    push(CLIENT_ADDR, &client.to_string());
    push(header::HOST, &host);
    let Some((entry, matched)) = route else {
        push(PATH_INFO, request.uri().path());
        return headers;
    };
    push(PATH_INFO, matched.path_info);
    push(MATCHED_ROUTE, &entry.matched_route);
    push(RAW_COMPONENT_ROUTE, entry.pattern.raw());
    push(COMPONENT_ROUTE, &entry.component_route);
    for (name, value) in &matched.captures {
        if let Ok(name) = HeaderName::from_bytes(format!("{PATH_MATCH_PREFIX}{}", name.to_ascii_lowercase()).as_bytes())
        {
            push(name, value);
        }
    }
    headers
}

/// Replaces any `spin-*` header the client sent with the gateway's own, so a
/// component can trust them.
pub fn apply(map: &mut HeaderMap, headers: Vec<(HeaderName, HeaderValue)>) {
    let spoofed: Vec<HeaderName> = map.keys().filter(|name| name.as_str().starts_with("spin-")).cloned().collect();
    for name in spoofed {
        map.remove(name);
    }
    for (name, value) in headers {
        map.insert(name, value);
    }
}
