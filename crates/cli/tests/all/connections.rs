//! Connection protections, HTTP/1.1 and HTTP/2 alike, the header limits as
//! documented, and the requests RFC 9112 says to refuse.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::support::{App, PATIENCE, get, get_with, raw};

/// Seconds until the server closes `stream`, which sends `first` and then
/// nothing; `None` if it stays open for 10 s.
fn closed_after(addr: std::net::SocketAddr, first: &[u8]) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    stream.write_all(first).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Some(started.elapsed().as_secs_f64()),
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed().as_secs_f64());
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn silent_and_idle_connections_are_closed() {
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&["--header-timeout", "1s", "--idle-timeout", "10s"]);
    // Not a byte, over HTTP/1.1 or HTTP/2 (the h2c preface, then nothing).
    let silent = closed_after(server.addr, b"").expect("a silent connection stayed open");
    assert!((0.9..5.0).contains(&silent), "closed after {silent} s");
    let preface =
        closed_after(server.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").expect("an idle h2 connection stayed open");
    assert!((0.9..5.0).contains(&preface), "closed after {preface} s");
    // An HTTP/1.1 keep-alive connection has the header timeout, not the idle
    // timeout, to start its next request, and to finish its head.
    let idle =
        closed_after(server.addr, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").expect("an idle connection stayed open");
    assert!((0.9..5.0).contains(&idle), "closed after {idle} s");
    let partial = closed_after(server.addr, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHo")
        .expect("a connection with half a head stayed open");
    assert!((0.9..5.0).contains(&partial), "closed after {partial} s");
}

/// The types of the HTTP/2 frames the server sends on a connection that
/// sends the h2c preface and an empty SETTINGS frame, then nothing, until
/// the server closes it. A frame is a 9-byte header (24-bit length, type,
/// flags, stream) and its payload (RFC 9113 §4.1).
fn h2_frames_until_closed(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    let mut types = Vec::new();
    let mut header = [0u8; 9];
    while stream.read_exact(&mut header).is_ok() {
        types.push(header[3]);
        let length = u64::from(u32::from_be_bytes([0, header[0], header[1], header[2]]));
        std::io::copy(&mut (&mut stream).take(length), &mut std::io::sink()).unwrap();
    }
    types
}

#[test]
fn an_http2_connection_closed_by_a_timeout_gets_a_goaway_first() {
    const GOAWAY: u8 = 0x7;
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&["--header-timeout", "1s"]);
    let started = Instant::now();
    let types = h2_frames_until_closed(server.addr);
    let closed = started.elapsed().as_secs_f64();
    assert!((0.9..5.0).contains(&closed), "closed after {closed} s");
    // hyper's graceful close sends a GOAWAY and a PING, and would send a
    // last GOAWAY once the PING came back; this client never answers it.
    assert!(types.contains(&GOAWAY), "frames received (by type): {types:?}");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    use bytes::Bytes;
    use http_body_util::Empty;
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&["--header-timeout", "1s", "--idle-timeout", "2s"]);
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // A client that PINGs twice a second does not keep an idle connection.
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(500))
        .keep_alive_while_idle(true)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(server.url("/hello")).body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), StatusCode::OK);
    let idle_from = Instant::now();
    // Kept open past the header timeout (a request was served), closed at the
    // idle timeout.
    tokio::time::timeout(PATIENCE, connection).await.expect("an idle h2 connection stayed open").unwrap().ok();
    let idle = idle_from.elapsed().as_secs_f64();
    assert!((1.9..6.0).contains(&idle), "closed after {idle} s");
}

#[tokio::test]
async fn past_the_connection_cap_clients_wait_their_turn() {
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&["--max-connections", "1", "--header-timeout", "1s"]);
    let _silent = std::net::TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let reply = get(&server.url("/hello")).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Served once the silent connection was closed at its header timeout.
    assert!(started.elapsed() > Duration::from_millis(500), "served after {:?}", started.elapsed());
}

#[test]
fn requests_rfc_9112_refuses_are_refused() {
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&[]);
    for (request, why) in [
        (&b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n"[..], "Host header"),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", "more than one Host"),
    ] {
        let answer = raw(server.addr, request);
        assert!(answer.starts_with("HTTP/1.1 400") && answer.contains(why), "{why}: {answer}");
    }
    let answer = raw(server.addr, b"GET /hello HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("not a valid host"), "{answer}");
    // A coding hyper does not decode would reach the app still encoded.
    let answer = raw(
        server.addr,
        b"POST /hello HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    // HTTP/1.0 needs no Host.
    let answer = raw(server.addr, b"GET /hello HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn header_limits_are_the_documented_ones_over_http1_and_http2() {
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&[]);
    // Many short lines, far under 32 KiB: hyper's 100-line cap is not ours.
    let mut request = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
    for i in 0..300 {
        request.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let answer = raw(server.addr, &request);
    assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..answer.len().min(200)]);

    let big = "v".repeat(200);
    let names: Vec<String> = (0..200).map(|i| format!("x-{i:03}")).collect();
    let within: Vec<(&str, &str)> = names[..100].iter().map(|name| (name.as_str(), big.as_str())).collect();
    let beyond: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), big.as_str())).collect();
    let url = server.url("/hello");
    for http2 in [false, true] {
        let status = |headers| send_headers(&url, http2, headers);
        assert_eq!(status(&within).await, StatusCode::OK, "~21 KiB of headers, http2={http2}");
        assert_eq!(status(&beyond).await, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "~41 KiB, http2={http2}");
    }
}

async fn send_headers(url: &str, http2: bool, headers: &[(&str, &str)]) -> StatusCode {
    if http2 { h2_get(url, headers).await } else { get_with(url, headers).await.status }
}

async fn h2_get(url: &str, headers: &[(&str, &str)]) -> StatusCode {
    use bytes::Bytes;
    use http_body_util::Full;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut request = hyper::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    tokio::time::timeout(PATIENCE, client.request(request)).await.unwrap().unwrap().status()
}

#[test]
fn flag_values_that_make_no_sense_are_refused_at_start() {
    let app = App::new(&[("/hello", "hello")]);
    for flags in [
        ["--timeout", "0s"],
        ["--header-timeout", "0s"],
        ["--idle-timeout", "0ms"],
        ["--cpu-limit", "0s"],
        ["--max-connections", "0"],
        ["--max-instances", "0"],
        ["--max-headers", "0B"],
    ] {
        let stderr = app.fails_to_start(&flags);
        assert!(stderr.contains(flags[0]), "{flags:?}: {stderr}");
    }
}

/// An HTTP/1.1 connection to `server`, its requests sent with the sender.
async fn http1_connection(
    server: &crate::support::Server,
) -> (
    hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(connection))
}

/// `GET /hello` on `sender` just after the drain has begun: answered, with
/// `Connection: close`, not closed under it.
async fn hello_as_the_drain_begins(
    server: &crate::support::Server,
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
) {
    use http_body_util::BodyExt as _;
    server.signal("TERM");
    server.wait_for_log("shutting down");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = tokio::time::timeout(PATIENCE, sender.send_request(hello()))
        .await
        .unwrap()
        .expect("answered, not closed under the request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    response.into_body().collect().await.unwrap();
}

fn hello() -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    hyper::Request::get("/hello").header("host", "localhost").body(Default::default()).unwrap()
}

#[tokio::test]
async fn a_keep_alive_request_sent_as_the_drain_begins_is_answered_and_told_to_close() {
    use http_body_util::BodyExt as _;
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&[]);
    let (mut sender, connection) = http1_connection(&server).await;
    let first = sender.send_request(hello()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(!first.headers().contains_key("connection"), "kept alive: {:?}", first.headers());
    first.into_body().collect().await.unwrap();
    // The drain reaches the idle connection just as its client, having had
    // a response that kept it open, sends the next request on it.
    hello_as_the_drain_begins(&server, &mut sender).await;
    tokio::time::timeout(PATIENCE, connection).await.expect("closed after that response").unwrap().unwrap();
    assert!(server.wait().success());
}

#[tokio::test]
async fn a_first_request_on_a_connection_opened_before_the_drain_is_answered() {
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&[]);
    // A client's pooled connection, opened ahead of the request it carries.
    let (mut sender, _connection) = http1_connection(&server).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    hello_as_the_drain_begins(&server, &mut sender).await;
    assert!(server.wait().success());
}

#[test]
fn an_http2_client_that_never_answers_the_close_does_not_hold_the_drain() {
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&[]);
    // The h2c preface and SETTINGS, then silence: the client never reads
    // again, so it never acknowledges the PING of hyper's graceful close.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    server.signal("TERM");
    let status = server.wait();
    let took = started.elapsed();
    assert!(status.success(), "nothing was in flight: a clean exit, not a cut drain: {status:?}");
    // Not the header timeout (10 s) nor the drain timeout (30 s).
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(stream);
}
