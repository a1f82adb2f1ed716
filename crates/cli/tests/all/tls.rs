//! HTTPS (`--tls-cert`, `--tls-key`) with certificates made in the test:
//! HTTP/2 by ALPN, a replaced certificate served to new connections while
//! established ones go on, plain HTTP refused with a reason, and a bad pair
//! refused at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::{App, PATIENCE, Reply, Server, raw};

/// Longest a test waits for a replaced certificate to be served: the files
/// are checked every second.
const RELOAD_PATIENCE: Duration = Duration::from_secs(10);

/// A certificate authority the test's clients trust, and the certificates it
/// issues for `localhost` and 127.0.0.1.
struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Authority {
    fn new() -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "dormouse test authority");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        Authority { issuer }
    }

    /// A certificate for a new key, both written as PEM (over whatever the
    /// files held); returns the certificate.
    fn issue(&self, cert: &Path, key: &Path) -> CertificateDer<'static> {
        let signing_key = rcgen::KeyPair::generate().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certificate = rcgen::CertificateParams::new(names).unwrap().signed_by(&signing_key, &self.issuer).unwrap();
        std::fs::write(cert, certificate.pem()).unwrap();
        std::fs::write(key, signing_key.serialize_pem()).unwrap();
        certificate.der().clone()
    }

    /// A TLS client that trusts this authority and offers `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// The certificate and key files of a test, in their own directory.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        Files { _dir: dir, cert, key }
    }

    /// `--tls-cert` and `--tls-key` with these files.
    fn args(&self) -> [&str; 4] {
        ["--tls-cert", self.cert.to_str().unwrap(), "--tls-key", self.key.to_str().unwrap()]
    }
}

/// A TLS connection to `addr`, checked against the authority, as `localhost`.
async fn connect(connector: &tokio_rustls::TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp)).await.expect("a handshake in time").unwrap()
}

/// The certificate the server presented on `stream`.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("a server certificate")[0].clone().into_owned()
}

/// An HTTP/2 connection over `stream`, which must have negotiated `h2`.
async fn http2(stream: TlsStream<TcpStream>) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 negotiated by ALPN");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

async fn reply(response: hyper::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect()).await.expect("a body in time").unwrap().to_bytes();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// A GET over an HTTP/2 connection, answered over HTTP/2.
async fn get_h2(sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>, url: &str) -> Reply {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request)).await.expect("an answer in time");
    let response = response.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    reply(response).await
}

#[tokio::test]
async fn https_negotiates_http2_and_a_replaced_certificate_reaches_new_connections_only() {
    let authority = Authority::new();
    let files = Files::new();
    let first = authority.issue(&files.cert, &files.key);
    let app = App::new(&[("/hello", "hello"), ("/echo/...", "echo")]);
    let server = app.start(&files.args());
    let port = server.addr.port();
    let stdout = server.wait_for_stdout("hello: https://");
    assert!(stdout.contains(&format!("Serving https://{}", server.addr)), "{stdout}");
    let connector = authority.client(&[b"h2", b"http/1.1"]);

    let stream = connect(&connector, server.addr).await;
    assert_eq!(presented(&stream), first);
    let mut before = http2(stream).await;
    let hello = format!("https://localhost:{port}/hello");
    let reply = get_h2(&mut before, &hello).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "Hello from dormouse!\n"));
    // The component is told how the request came: over HTTPS.
    let reply = get_h2(&mut before, &format!("https://localhost:{port}/echo/x")).await;
    assert_eq!(reply.echoed("spin-full-url"), Some(format!("https://localhost:{port}/echo/x")));

    let second = authority.issue(&files.cert, &files.key);
    let started = Instant::now();
    loop {
        let stream = connect(&connector, server.addr).await;
        if presented(&stream) == second {
            let mut after = http2(stream).await;
            assert_eq!(get_h2(&mut after, &hello).await.status, StatusCode::OK);
            break;
        }
        assert!(started.elapsed() < RELOAD_PATIENCE, "the replaced certificate was not served in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.wait_for_log("TLS certificate reloaded");
    // The connection made with the first certificate was left alone.
    let reply = get_h2(&mut before, &hello).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "Hello from dormouse!\n"));

    // A broken replacement is logged, and the last good certificate stays.
    // (Counted first: a reload tick in the middle of the renewal above may
    // have logged the same complaint about a half-written key.)
    let complaint = "TLS certificate not reloaded, still serving the previous one: no private key in";
    let complaints = server.stderr().matches(complaint).count();
    std::fs::write(&files.key, "not a key").unwrap();
    let started = Instant::now();
    while server.stderr().matches(complaint).count() == complaints {
        assert!(started.elapsed() < RELOAD_PATIENCE, "the broken key was never complained about");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(presented(&connect(&connector, server.addr).await), second);
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_400_that_says_to_use_https() {
    let authority = Authority::new();
    let files = Files::new();
    authority.issue(&files.cert, &files.key);
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&files.args());

    let answer = raw(server.addr, b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nthis port speaks HTTPS: use https:// to reach it\n"), "{answer}");

    // A client that offers only HTTP/1.1 gets it.
    let stream = connect(&authority.client(&[b"http/1.1"]), server.addr).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/hello").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request)).await.unwrap().unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(reply(response).await.status, StatusCode::OK);
}

#[test]
fn a_missing_or_mismatched_key_is_refused_at_start() {
    let authority = Authority::new();
    let (files, other) = (Files::new(), Files::new());
    authority.issue(&files.cert, &files.key);
    authority.issue(&other.cert, &other.key);
    let app = App::new(&[("/hello", "hello")]);
    let cert = files.cert.to_str().unwrap();

    let missing = files.cert.with_file_name("missing.pem");
    let stderr = app.fails_to_start(&["--tls-cert", cert, "--tls-key", missing.to_str().unwrap()]);
    assert!(stderr.contains(&format!("private key file `{}` does not exist", missing.display())), "{stderr}");

    let stderr = app.fails_to_start(&["--tls-cert", cert, "--tls-key", other.key.to_str().unwrap()]);
    let expected = format!("the private key in `{}` does not match the certificate in `{}`", other.key.display(), cert);
    assert!(stderr.contains(&expected), "{stderr}");

    // A directory where the key should be: unreadable (running as root,
    // file modes would not stop the read).
    let directory = files.key.parent().unwrap();
    let stderr = app.fails_to_start(&["--tls-cert", cert, "--tls-key", directory.to_str().unwrap()]);
    assert!(stderr.contains(&format!("cannot read private key file `{}`", directory.display())), "{stderr}");

    let stderr = app.fails_to_start(&["--tls-cert", cert]);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

#[tokio::test]
async fn the_daemon_serves_https_with_the_same_flags() {
    let authority = Authority::new();
    let files = Files::new();
    authority.issue(&files.cert, &files.key);
    let state = tempfile::tempdir().unwrap();
    let server = Server::daemon(state.path(), &files.args());
    server.wait_for_stdout("Serving apps at https://<app>.localhost:");

    let mut sender = http2(connect(&authority.client(&[b"h2"]), server.addr).await).await;
    let port = server.addr.port();
    let reply = get_h2(&mut sender, &format!("https://localhost:{port}/.well-known/spin/health")).await;
    assert_eq!(reply.status, StatusCode::OK);
}
