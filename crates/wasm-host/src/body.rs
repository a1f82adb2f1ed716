//! The response body handed to the gateway: the guest's stream, which ends in
//! an error (so the connection is aborted) when the guest failed before it
//! finished, rather than looking complete to the client.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How a guest's run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("request took longer than {0:?}")]
    Timeout(Duration),
    #[error("guest used more than its {0:?} CPU budget")]
    CpuLimit(Duration),
    #[error("guest trapped: {0:#}")]
    Trap(anyhow::Error),
    #[error("guest task ended without reporting an outcome")]
    Lost,
}

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pub struct GuardedBody {
    inner: Inner,
    inner_done: bool,
    /// How the guest's run ended, or will; taken once the inner body ended.
    outcome: Option<Outcome>,
}

/// The guest's own stream: a 0.2 outgoing body, or the frames a 0.3 guest's
/// event loop sends.
pub(crate) enum Inner {
    Wasi2(HyperOutgoingBody),
    Wasi3 { frames: crate::p3::Frames, done: bool },
}

impl From<HyperOutgoingBody> for Inner {
    fn from(body: HyperOutgoingBody) -> Self {
        Inner::Wasi2(body)
    }
}

impl From<crate::p3::Frames> for Inner {
    fn from(frames: crate::p3::Frames) -> Self {
        Inner::Wasi3 { frames, done: false }
    }
}

impl Body for Inner {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Inner::Wasi2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Inner::Wasi3 { frames, done } => {
                let frame = ready!(frames.poll_recv(cx));
                *done = frame.is_none();
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Wasi2(body) => body.is_end_stream(),
            Inner::Wasi3 { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inner::Wasi2(body) => body.size_hint(),
            Inner::Wasi3 { .. } => SizeHint::default(),
        }
    }
}

/// A guest's result: known already, or to come from the task it runs in.
pub(crate) enum Outcome {
    Ready(Result<(), GuestError>),
    Pending(oneshot::Receiver<Result<(), GuestError>>),
}

impl GuardedBody {
    pub(crate) fn new(inner: impl Into<Inner>, outcome: Outcome) -> Self {
        GuardedBody { inner: inner.into(), inner_done: false, outcome: Some(outcome) }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if !this.inner_done {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(frame) => return Poll::Ready(Some(frame)),
                None => this.inner_done = true,
            }
        }
        // A guest that traps mid-body drops its stream, which ends it as if it
        // were complete: only the task's outcome tells the two apart.
        let result = match this.outcome.as_mut() {
            None => return Poll::Ready(None),
            Some(Outcome::Pending(receiver)) => ready!(Pin::new(receiver).poll(cx)).unwrap_or(Err(GuestError::Lost)),
            Some(Outcome::Ready(_)) => match this.outcome.take() {
                Some(Outcome::Ready(result)) => result,
                _ => unreachable!("matched above"),
            },
        };
        this.outcome = None;
        match result {
            Ok(()) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner_done && self.outcome.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
