//! `native-proxy ADDR BACKEND [per-core]`: the least a hyper reverse proxy
//! does: every request forwarded as it came to BACKEND over HTTP/1.1
//! through `hyper_util`'s pooled client, and the response streamed back,
//! with no routing, header rewriting, limits or metrics. It is the floor the
//! hop benchmark measures dormouse's hop against: what the libraries
//! dormouse's hop is built on cost on the same machine.
//!
//! By default it runs on one multi-threaded tokio runtime (as dormouse
//! does). With `per-core`, it runs one single-threaded runtime per CPU, each
//! with its own `SO_REUSEPORT` listener and its own pool: the kernel spreads
//! connections over the threads, and a connection, its backend connection
//! and their tasks never leave their thread.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address: SocketAddr =
        args.next().unwrap_or_else(|| "127.0.0.1:3002".to_owned()).parse().map_err(std::io::Error::other)?;
    let backend: SocketAddr = match args.next().map(|backend| backend.parse()) {
        Some(Ok(backend)) => backend,
        _ => {
            eprintln!("usage: native-proxy ADDR BACKEND [per-core] (ADDR and BACKEND IP addresses with ports)");
            std::process::exit(2);
        }
    };
    if args.next().as_deref() != Some("per-core") {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let listener = runtime.block_on(async { tokio::net::TcpListener::bind(address).await })?;
        println!("Serving http://{}", listener.local_addr()?);
        return runtime.block_on(serve(listener, backend));
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async move { serve(bind_shared(address)?, backend).await })
            })
        })
        .collect();
    println!("Serving http://{address} on {cores} threads");
    for thread in threads {
        thread.join().expect("a serving thread panicked")?;
    }
    Ok(())
}

/// A listener on `address` that others may share (`SO_REUSEPORT`), in the
/// current runtime.
fn bind_shared(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// Forwards every request of every connection `listener` accepts to `backend`.
async fn serve(listener: tokio::net::TcpListener, backend: SocketAddr) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let pool: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pool = pool.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let pool = pool.clone();
                async move {
                    let target = request.uri().path_and_query().map_or("/", |target| target.as_str());
                    *request.uri_mut() = format!("http://{backend}{target}").parse().expect("an address and a path");
                    let response = match pool.request(request).await {
                        Ok(response) => response.map(|body| body.map_err(Error::from).boxed_unsync()),
                        Err(error) => {
                            let body = http_body_util::Full::new(Bytes::from(error.to_string()));
                            let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
                            *response.status_mut() = StatusCode::BAD_GATEWAY;
                            response
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
