//! `native-proxy ADDR BACKEND`: the least a hyper reverse proxy does, on a
//! multi-threaded tokio runtime: every request forwarded as it came to
//! BACKEND over HTTP/1.1 through `hyper_util`'s pooled client, and the
//! response streamed back, with no routing, header rewriting, limits or
//! metrics. It is the floor the hop benchmark measures dormouse's hop
//! against: what the libraries dormouse's hop is built on cost on the same
//! machine.

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

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:3002".to_owned());
    let backend: SocketAddr = match args.next().map(|backend| backend.parse()) {
        Some(Ok(backend)) => backend,
        _ => {
            eprintln!("usage: native-proxy ADDR BACKEND (BACKEND an IP address and port)");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("Serving http://{}", listener.local_addr()?);
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
