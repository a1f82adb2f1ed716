//! The control API's client, which the CLI's platform commands are: one
//! HTTP/1.1 request per connection, over the daemon's Unix socket or TCP
//! with a bearer token.

use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;

/// Where the control API is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, with the token the daemon printed (and stored in its
    /// state directory).
    Tcp {
        address: String,
        token: Option<String>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp { address, .. } => write!(f, "http://{address}"),
        }
    }
}

/// A client of one daemon's control API.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client { endpoint }
    }

    /// Sends one request; a status of 400 and above becomes an error with
    /// the API's message.
    pub async fn send(&self, method: Method, path: &str, body: Option<(&'static str, Bytes)>) -> anyhow::Result<Bytes> {
        let (status, body) = self.raw(method, path, body).await?;
        if status.is_client_error() || status.is_server_error() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|error| error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            anyhow::bail!("{message} ({status})");
        }
        Ok(body)
    }

    /// Sends one request and returns the status and body, whatever they are.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, "dormouse");
        if let Endpoint::Tcp { token: Some(token), .. } = &self.endpoint {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let (content_type, bytes) = body.unwrap_or(("application/json", Bytes::new()));
        let request = request.header(header::CONTENT_TYPE, content_type).body(Full::new(bytes))?;
        let unreachable =
            || format!("cannot reach the dormouse control API at {} (is `dormouse daemon` running?)", self.endpoint);
        let response = match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.with_context(unreachable)?;
                exchange(TokioIo::new(stream), request).await.with_context(unreachable)?
            }
            Endpoint::Tcp { address, .. } => {
                let stream = tokio::net::TcpStream::connect(address).await.with_context(unreachable)?;
                exchange(TokioIo::new(stream), request).await.with_context(unreachable)?
            }
        };
        Ok(response)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.send(Method::GET, path, None).await?;
        serde_json::from_slice(&body)
            .with_context(|| format!("the daemon's answer to `{path}` is not what this CLI expects"))
    }
}

/// One request and its whole response over `io`.
async fn exchange<I>(io: I, request: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)>
where
    I: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
