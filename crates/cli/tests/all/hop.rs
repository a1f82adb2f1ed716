//! The hop to a service as an HTTP intermediary (RFC 9110 §7.6), and the
//! limits a service request shares with a component's.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;

use crate::services::python_app;
use crate::support::{App, PATIENCE, call, get, guest, raw};

#[tokio::test]
async fn http2_clients_reach_http1_services() {
    let app = python_app("serve", "");
    let server = app.start(&[]);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = hyper::Request::get(server.url("/headers")).body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(PATIENCE, client.request(request)).await.unwrap().unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("GET /headers HTTP/1.1\n"), "{body}");
    assert!(body.contains(&format!("host: {}\n", server.addr)), "the authority became the Host: {body}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let app = python_app("serve", "");
    let server = app.start(&[]);
    let answer = raw(
        server.addr,
        b"GET /headers HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, x-internal, host\r\nX-Internal: 1\r\n\
          X-Real-IP: 6.6.6.6\r\nX-Forwarded-Port: 6666\r\n\
          Keep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\n\
          X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Kept: yes\r\n\r\n",
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    for gone in ["connection:", "x-internal:", "keep-alive:", "proxy-authorization:", "te:", "6.6.6.6", "6666"] {
        assert!(!body.contains(gone), "`{gone}` reached the service: {body}");
    }
    for set in [
        "host: shop.example",
        "x-kept: yes",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example",
        "forwarded: for=127.0.0.1;proto=http;host=\"shop.example\"",
    ] {
        assert!(body.contains(set), "`{set}` missing: {body}");
    }
}

#[tokio::test]
async fn dot_segments_are_resolved_before_routing_and_forwarded_as_routed() {
    let script = crate::services::python_app("serve", "");
    let manifest = std::fs::read_to_string(script.path().join("spin.toml")).unwrap();
    let manifest = format!(
        "{manifest}\n[[trigger.http]]\nroute = \"/hello\"\ncomponent = \"hello\"\n[component.hello]\nsource = \"{}\"\n",
        guest("hello").display()
    );
    let app = App::from_manifest(&manifest);
    let server = app.start(&[]);
    // Out of the service's wildcard, into the component's exact route.
    let answer = raw(server.addr, b"GET /svc/../hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("Hello from dormouse!\n"), "{answer}");
    let answer = raw(server.addr, b"GET /a/%2e%2e/./headers?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(answer.contains("\r\n\r\nGET /headers?q=1 HTTP/1.1\n"), "{answer}");
}

#[tokio::test]
async fn a_keep_alive_connection_closed_by_the_app_is_sent_again() {
    // The app closes every connection when it is reused, unanswered: each
    // GET after the first meets a pooled connection the app just closed.
    let app = python_app("one-per-connection", "");
    let server = app.start(&[]);
    // Two requests at once leave two pooled connections, each answered once:
    // the resend must not take the second after the first was closed.
    let slow = server.url("/slow");
    let (first, second) = tokio::join!(get(&slow), get(&slow));
    assert_eq!((first.status, second.status), (StatusCode::OK, StatusCode::OK));
    for _ in 0..5 {
        let reply = get(&server.url("/again")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    // A request with a body is not idempotent to resend blindly: it may fail,
    // but it must never be sent twice.
    let reply = call("POST", &server.url("/post"), "x").await;
    assert!(reply.status == StatusCode::OK || reply.status == StatusCode::BAD_GATEWAY, "{}", reply.body);
}

#[tokio::test]
async fn connections_the_app_closes_after_each_answer_never_surface_as_502() {
    // The close races with the proxy reusing the connection: without a
    // resend, about one request in a hundred met a closed connection.
    let app = python_app("close-after-answer", "");
    let server = app.start(&[]);
    for i in 0..1000 {
        let reply = get(&server.url(&format!("/n/{i}"))).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.body);
    }
}

#[tokio::test]
async fn the_body_limit_holds_for_services_chunked_or_not() {
    let app = python_app("serve", "");
    let server = app.start(&["--max-body", "1KiB"]);
    let reply = call("POST", &server.url("/post"), vec![b'a'; 512]).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "received 512\n"));

    let mut chunked =
        b"POST /post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'a'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(server.addr, &chunked);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let declared = call("POST", &server.url("/post"), vec![b'a'; 2048]).await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_body_with_content_length_and_chunked_framing_is_read_as_chunked() {
    // RFC 9112 §6.1: Transfer-Encoding wins, and the Content-Length that
    // disagrees never reaches the service (no request smuggling).
    let app = python_app("serve", "");
    let server = app.start(&[]);
    let answer = raw(
        server.addr,
        b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("received 5\n"), "{answer}");
}

#[tokio::test]
async fn a_malformed_body_is_the_clients_fault_not_the_services() {
    let app = python_app("serve", "");
    let server = app.start(&[]);
    let answer = raw(
        server.addr,
        b"POST /post HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nnot-a-size\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test]
async fn the_timeout_bounds_a_service_request_as_a_components() {
    let app = python_app("serve", "");
    let server = app.start(&["--timeout", "1s"]);
    let started = Instant::now();
    let reply = get(&server.url("/hang")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    assert!(reply.body.contains("did not answer within 1s"), "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}
