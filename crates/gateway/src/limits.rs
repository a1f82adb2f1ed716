//! Request limits: URL length, header section size and body size, and the
//! requests RFC 9112 says a server must refuse. They hold for components and
//! services alike: a service never sees a request a component would not.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use dormouse_wasm_host::WasiHttpError;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::{GatewayConfig, ResponseBody, plain};

/// A request refused before it reaches a component or service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UrlTooLong(usize),
    HeadersTooLarge(usize),
    BodyTooLarge(u64),
    /// Malformed framing or a body that broke off: the client's fault, 400.
    BadRequest(&'static str),
    /// A transfer coding other than `chunked` (RFC 9112 §6.1): 501.
    TransferCodingNotImplemented,
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
            Rejection::BadRequest(why) => plain(StatusCode::BAD_REQUEST, &format!("bad request: {why}\n")),
            Rejection::TransferCodingNotImplemented => {
                plain(StatusCode::NOT_IMPLEMENTED, "the only transfer coding supported is `chunked`\n")
            }
        }
    }
}

/// Checks what can be checked before the body: URL, headers, declared
/// length, and the rule of RFC 9112 that hyper leaves to the server (§3.2:
/// exactly one `Host` in HTTP/1.1). hyper itself refuses malformed framing
/// and, for a request with both `Transfer-Encoding` and `Content-Length`,
/// reads the body by the former and drops the latter (§6.1), so a service
/// never sees the two disagree.
pub fn check_head<B>(request: &Request<B>, config: &GatewayConfig) -> Result<(), Rejection> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(Rejection::BadRequest("more than one Host header")),
        (None, _) if request.version() == http::Version::HTTP_11 => {
            return Err(Rejection::BadRequest("an HTTP/1.1 request must have a Host header"));
        }
        // Empty (a target without an authority) or `host[:port]`.
        (Some(host), None) if !host.is_empty() && !is_authority(host.as_bytes()) => {
            return Err(Rejection::BadRequest("the Host header is not a valid host[:port]"));
        }
        _ => {}
    }
    // hyper reads `chunked` itself; any other coding would reach the app
    // still encoded, with nothing left to say so.
    if request
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|coding| !coding.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(Rejection::TransferCodingNotImplemented);
    }
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

/// Whether `value` is `host[:port]` as RFC 9110 §7.2 has it: no user info,
/// no path, no spaces.
fn is_authority(value: &[u8]) -> bool {
    !value.contains(&b'@')
        && std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.parse::<http::uri::Authority>().ok())
            .is_some_and(|authority| !authority.host().is_empty())
}

/// What went wrong with a request body, if anything, as the body saw it:
/// the gateway answers 413 for a body past its limit and 400 for one that
/// broke off or was malformed, whatever the component or service made of it.
#[derive(Debug, Clone, Default)]
pub struct BodyFault(Arc<AtomicU8>);

const TOO_LARGE: u8 = 1;
const MALFORMED: u8 = 2;

impl BodyFault {
    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Acquire) == TOO_LARGE
    }

    /// The rejection the client gets for this fault, if there is one.
    pub fn rejection(&self, limit: u64) -> Option<Rejection> {
        match self.0.load(Ordering::Acquire) {
            TOO_LARGE => Some(Rejection::BodyTooLarge(limit)),
            MALFORMED => Some(Rejection::BadRequest("the request body was malformed or cut off")),
            _ => None,
        }
    }

    fn set(&self, fault: u8) {
        let _ = self.0.compare_exchange(0, fault, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// After a body went over its limit, how much more of it the gateway reads
/// and discards, and for how long, so that the client (still sending) reads the
/// 413 instead of a connection reset. nginx calls this a lingering close.
const DRAIN_BYTES: u64 = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Wraps the request body so that it fails once more than `limit` bytes came.
pub fn limit_body<B>(request: Request<B>, limit: u64) -> (Request<LimitedBody<B>>, BodyFault)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    let fault = BodyFault::default();
    let flag = fault.clone();
    (request.map(|inner| LimitedBody { inner: Some(inner), remaining: limit, limit, fault: flag }), fault)
}

pub struct LimitedBody<B: Body<Data = Bytes> + Send + Unpin + 'static> {
    /// Always `Some` until dropped.
    inner: Option<B>,
    remaining: u64,
    limit: u64,
    fault: BodyFault,
}

impl<B: Body<Data = Bytes> + Send + Unpin + 'static> Drop for LimitedBody<B> {
    fn drop(&mut self) {
        let Some(mut rest) = self.inner.take().filter(|body| self.fault.too_large() && !body.is_end_stream()) else {
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
            Some(Err(error)) => {
                this.fault.set(MALFORMED);
                return Poll::Ready(Some(Err(error.into())));
            }
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > this.remaining {
                this.fault.set(TOO_LARGE);
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
    request_limit: BodyFault,
}

impl<B> CheckedResponse<B> {
    pub fn new(inner: B, request_limit: BodyFault) -> Self {
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
            None if self.request_limit.too_large() => {
                Poll::Ready(Some(Err("the request body went over its size limit after the response began".into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && !self.request_limit.too_large()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(max_url_bytes: usize, max_header_bytes: usize, max_body_bytes: u64) -> GatewayConfig {
        GatewayConfig { max_url_bytes, max_header_bytes, max_body_bytes, ..GatewayConfig::default() }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The first limit passed, in the order URL, headers, declared body,
        /// and nothing within all three.
        #[test]
        fn check_head_refuses_exactly_past_each_limit(
            url_len in 1usize..300,
            headers in prop::collection::vec(("x-[a-z]{1,10}", "[a-z]{0,40}"), 0..20),
            declared in prop::option::of(0u64..400),
            max_url in 1usize..300,
            max_headers in 1usize..800,
            max_body in 0u64..400,
        ) {
            let mut request = Request::get(format!("/{}", "a".repeat(url_len - 1))).header(header::HOST, "h");
            for (name, value) in &headers {
                request = request.header(name.as_str(), value.as_str());
            }
            if let Some(length) = declared {
                request = request.header(header::CONTENT_LENGTH, length);
            }
            let request = request.body(()).unwrap();
            let header_bytes: usize = request.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
            let expected = if url_len > max_url {
                Err(Rejection::UrlTooLong(max_url))
            } else if header_bytes > max_headers {
                Err(Rejection::HeadersTooLarge(max_headers))
            } else if declared.is_some_and(|length| length > max_body) {
                Err(Rejection::BodyTooLarge(max_body))
            } else {
                Ok(())
            };
            prop_assert_eq!(check_head(&request, &config(max_url, max_headers, max_body)), expected);
        }
    }

    #[test]
    fn framing_that_rfc_9112_refuses_is_refused() {
        let limits = GatewayConfig::default();
        let no_host = Request::get("/").body(()).unwrap();
        assert!(matches!(check_head(&no_host, &limits), Err(Rejection::BadRequest(_))));
        let mut http10 = Request::get("/").body(()).unwrap();
        *http10.version_mut() = http::Version::HTTP_10;
        assert_eq!(check_head(&http10, &limits), Ok(()));
        let twice = Request::get("/").header(header::HOST, "a").header(header::HOST, "b").body(()).unwrap();
        assert!(matches!(check_head(&twice, &limits), Err(Rejection::BadRequest(_))));
        for bad in ["x y", "a\"b;c", "user@host", "host/path", ":80"] {
            let request = Request::get("/").header(header::HOST, bad).body(()).unwrap();
            assert!(matches!(check_head(&request, &limits), Err(Rejection::BadRequest(_))), "{bad}");
        }
        for good in ["", "example.com", "example.com:8080", "127.0.0.1:3000", "[::1]:3000"] {
            let request = Request::get("/").header(header::HOST, good).body(()).unwrap();
            assert_eq!(check_head(&request, &limits), Ok(()), "{good}");
        }
        let gzip = Request::post("/").header(header::HOST, "h").header(header::TRANSFER_ENCODING, "gzip, chunked");
        assert_eq!(check_head(&gzip.body(()).unwrap(), &limits), Err(Rejection::TransferCodingNotImplemented));
    }
}
