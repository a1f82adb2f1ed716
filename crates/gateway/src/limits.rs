//! Request limits: URL length, header section size and body size.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use dormouse_wasm_host::WasiHttpError;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::{GatewayConfig, ResponseBody, plain};

/// A request refused before it reaches a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UrlTooLong(usize),
    HeadersTooLarge(usize),
    BodyTooLarge(u64),
}

impl Rejection {
    pub fn response(self) -> Response<ResponseBody> {
        match self {
            Rejection::UrlTooLong(limit) => {
                plain(StatusCode::URI_TOO_LONG, &format!("the URL is longer than {limit} bytes\n"))
            }
            Rejection::HeadersTooLarge(limit) => plain(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!("the request headers are larger than {limit} bytes\n"),
            ),
            Rejection::BodyTooLarge(limit) => {
                plain(StatusCode::PAYLOAD_TOO_LARGE, &format!("the request body is larger than {limit} bytes\n"))
            }
        }
    }
}

/// Checks what can be checked before the body: URL, headers, declared length.
pub fn check_head<B>(request: &Request<B>, config: &GatewayConfig) -> Result<(), Rejection> {
    let url_len = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if url_len > config.max_url_bytes {
        return Err(Rejection::UrlTooLong(config.max_url_bytes));
    }
    // As on the wire: `name: value\r\n`.
    let header_bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if header_bytes > config.max_header_bytes {
        return Err(Rejection::HeadersTooLarge(config.max_header_bytes));
    }
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > config.max_body_bytes) {
        return Err(Rejection::BodyTooLarge(config.max_body_bytes));
    }
    Ok(())
}

/// Set once a body went past its limit, so the gateway can answer 413 for
/// whatever the guest made of the cut-off body.
#[derive(Debug, Clone, Default)]
pub struct LimitTripped(Arc<AtomicBool>);

impl LimitTripped {
    pub fn tripped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// After a body went over its limit, how much more of it the gateway reads
/// and discards, and for how long, so that the client (still sending) reads the
/// 413 instead of a connection reset. nginx calls this a lingering close.
const DRAIN_BYTES: u64 = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Wraps the request body so that it fails once more than `limit` bytes came.
pub fn limit_body<B>(request: Request<B>, limit: u64) -> (Request<LimitedBody<B>>, LimitTripped)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    let tripped = LimitTripped::default();
    let flag = tripped.clone();
    (request.map(|inner| LimitedBody { inner: Some(inner), remaining: limit, limit, tripped: flag }), tripped)
}

pub struct LimitedBody<B: Body<Data = Bytes> + Send + Unpin + 'static> {
    /// Always `Some` until dropped.
    inner: Option<B>,
    remaining: u64,
    limit: u64,
    tripped: LimitTripped,
}

impl<B: Body<Data = Bytes> + Send + Unpin + 'static> Drop for LimitedBody<B> {
    fn drop(&mut self) {
        let Some(mut rest) = self.inner.take().filter(|body| self.tripped.tripped() && !body.is_end_stream()) else {
            return;
        };
        tokio::spawn(async move {
            let drain = async {
                let mut drained = 0u64;
                while let Some(Ok(frame)) = rest.frame().await {
                    drained += frame.data_ref().map_or(0, |data| data.len() as u64);
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<WasiHttpError>,
{
    type Data = Bytes;
    type Error = WasiHttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let inner = this.inner.as_mut().expect("present until dropped");
        let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > this.remaining {
                this.tripped.0.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(WasiHttpError::HttpRequestBodySize(Some(this.limit)))));
            }
            this.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(SizeHint::default, Body::size_hint)
    }
}

/// A guest's response body that fails at its end when the request body was
/// cut off at the limit after the guest had already answered: what the guest
/// sent was made from a truncated request, and must not look complete.
pub struct CheckedResponse<B> {
    inner: B,
    request_limit: LimitTripped,
}

impl<B> CheckedResponse<B> {
    pub fn new(inner: B, request_limit: LimitTripped) -> Self {
        CheckedResponse { inner, request_limit }
    }
}

impl<B> Body for CheckedResponse<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(frame) => Poll::Ready(Some(frame.map_err(Into::into))),
            None if self.request_limit.tripped() => {
                Poll::Ready(Some(Err("the request body went over its size limit after the response began".into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && !self.request_limit.tripped()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
