//! Connection protections, for HTTP/1.1 and HTTP/2 alike: a connection must
//! deliver its first request within the header timeout (a client that
//! connects and says nothing, or only pings, is closed), and one with no
//! request in flight (from its head to the end of its response body) for the
//! idle timeout is closed too, whatever bytes it sends meanwhile (HTTP/2
//! PINGs do not keep a connection); an HTTP/1.1 keep-alive connection has the
//! header timeout to deliver its next request. All are measured here, above
//! the protocols, because hyper's own header timeout starts only once it has
//! read enough bytes to tell HTTP/1.1 from HTTP/2, HTTP/2 has none, and
//! hyper's arms a timer for every request head.

use crate::Refused;
use crate::app::AppGuard;
use dormouse_telemetry::TargetMetrics;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a connection's watchdog looks at: requests in flight and when the
/// last one ended, in milliseconds since the connection was accepted.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    /// The header timeout and the idle timeout.
    timeouts: (Duration, Duration),
    /// When a request last started or ended (ms since accept).
    last_ms: AtomicU64,
    /// When the latest deadline of a request in flight passes (ms since accept).
    busy_until_ms: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Whether the connection speaks HTTP/1: between requests it has the
    /// header timeout, not the idle timeout, to start its next one.
    http1: AtomicBool,
    /// Set by the drain: every response from now on says the connection
    /// closes after it (HTTP/1: `Connection: close`).
    closing: AtomicBool,
    /// The deadline the watchdog sleeps to (ms since accept).
    sleeping_until_ms: AtomicU64,
    /// Wakes the watchdog when a request's end brings its deadline sooner
    /// than it sleeps to. A deadline that moves later needs no wake-up: the
    /// watchdog looks again when it wakes.
    changed: tokio::sync::Notify,
}

/// How long past its wall-clock limit a request may still count as in
/// flight. By then it was answered or cut off; if its response is still
/// unsent, the client is not reading it (an HTTP/2 window held at zero),
/// and the connection is closed.
const STUCK_GRACE: Duration = Duration::from_secs(1);

/// How long a connection closed by its watchdog has to send its goodbye
/// (an HTTP/2 GOAWAY) before it is dropped, whatever its client does.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long the drain keeps an idle HTTP/1.1 keep-alive connection open for
/// a request its client may already have sent on it (answered with
/// `Connection: close`), instead of closing it under that request. About
/// the longest round trip between continents.
pub const LAST_CALL: Duration = Duration::from_millis(250);

/// A request in flight on a connection, from its head until its response
/// body ended or was dropped (the client went away, a HEAD response).
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// Whether its response should close the connection after it (the
    /// drain says so).
    pub fn closing(&self) -> bool {
        self.0.closing()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.wake_if_sooner();
    }
}

impl Activity {
    /// A connection accepted now, closed by [`idle`] when it has no request
    /// within `header_timeout` of its accept, or none in flight for
    /// `idle_timeout`.
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            timeouts: (header_timeout, idle_timeout),
            last_ms: AtomicU64::new(0),
            busy_until_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            http1: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            sleeping_until_ms: AtomicU64::new(u64::MAX),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// When the connection was accepted.
    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// Whether this connection's client may be sending an HTTP/1 request
    /// right now that the server has not yet read: it has carried HTTP/1
    /// requests (the next may follow a response that kept it open), or none
    /// yet (a client's pooled connection, opened ahead of its request).
    pub fn may_be_sending_http1(&self) -> bool {
        self.http1.load(Ordering::Relaxed) || self.requests.load(Ordering::Acquire) == 0
    }

    /// Every response from now on closes the connection after it.
    pub fn close_after_each_response(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Whether a response should close the connection after it.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A request of `version` begins that must be over within `limit` (its
    /// wall clock).
    pub fn request(self: &Arc<Self>, version: http::Version, limit: Duration) -> InFlight {
        if version < http::Version::HTTP_2 {
            self.http1.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.touch();
        let until = self.accepted.elapsed().saturating_add(limit).as_millis() as u64;
        self.busy_until_ms.fetch_max(until, Ordering::Relaxed);
        self.wake_if_sooner();
        InFlight(self.clone())
    }

    /// Wakes the watchdog if the connection's deadline is now sooner than
    /// the one it sleeps to: a request that starts with its limit (plus the
    /// grace) ending before the header or idle deadline the watchdog sleeps
    /// to, or one that ends with the idle timeout ending before the busy
    /// deadline. Under steady traffic the watchdog sleeps to a busy
    /// deadline, which later requests only move later, so it is seldom
    /// woken: waking it for every request would wake the connection's own
    /// task twice a request, and tokio hands a task woken while it runs to
    /// another worker thread.
    fn wake_if_sooner(&self) {
        let deadline_ms = self.deadline().saturating_duration_since(self.accepted).as_millis() as u64;
        if deadline_ms < self.sleeping_until_ms.load(Ordering::SeqCst) {
            self.changed.notify_one();
        }
    }

    fn touch(&self) {
        let now = self.accepted.elapsed().as_millis() as u64;
        // Only ever forward; a relaxed max is enough for a coarse clock.
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// When the connection should be closed if nothing changes. Before its
    /// first request a connection has `header_timeout` from its accept;
    /// after, `idle_timeout` from the end of its last request (an HTTP/1
    /// connection, which sends one request at a time, the shorter of the
    /// two: the time to deliver its next request's head); while
    /// requests are in flight, until the latest of their deadlines (plus
    /// [`STUCK_GRACE`]).
    pub fn deadline(&self) -> Instant {
        let (header_timeout, idle_timeout) = self.timeouts;
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return self.accepted + Duration::from_millis(self.busy_until_ms.load(Ordering::Relaxed)) + STUCK_GRACE;
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            return self.accepted + header_timeout;
        }
        let between = if self.http1.load(Ordering::Relaxed) { idle_timeout.min(header_timeout) } else { idle_timeout };
        self.accepted + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + between
    }
}

/// Waits until the connection is past its limit (see
/// [`Activity::deadline`]). Wakes at the deadline it last saw (and sleeps
/// on if that moved later) and when a request's end brings it sooner, never
/// on a tick.
pub async fn idle(activity: &Activity) {
    loop {
        let changed = activity.changed.notified();
        // Awake: an end from here on wakes it again (a stored permit), so
        // that none is missed between reading the deadline and sleeping.
        activity.sleeping_until_ms.store(u64::MAX, Ordering::SeqCst);
        let deadline = activity.deadline();
        if deadline <= Instant::now() {
            return;
        }
        let deadline_ms = deadline.saturating_duration_since(activity.accepted).as_millis() as u64;
        activity.sleeping_until_ms.store(deadline_ms, Ordering::SeqCst);
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = changed => {}
        }
    }
}

/// Waits until the connection has had no request in flight for a whole
/// `grace` (looked at every `grace`): for a connection being closed
/// gracefully, whose client may never answer the close (hyper's HTTP/2
/// graceful close waits for a PING's acknowledgement).
pub async fn quiet(activity: &Activity, grace: Duration) {
    loop {
        tokio::time::sleep(grace).await;
        if activity.in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
    }
}

/// A response body that keeps its request counted as in flight until it
/// ends or is dropped.
pub struct TrackedBody<B> {
    inner: B,
    /// The connection's mark and the app's, given back at the body's end,
    /// when the request is also counted.
    in_flight: Option<(InFlight, Option<AppGuard>, Option<Record>)>,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, in_flight: InFlight, app: Option<AppGuard>, record: Option<Record>) -> Self {
        TrackedBody { inner, in_flight: Some((in_flight, app, record)) }
    }
}

/// A request to count in its target's metrics when its response body ends
/// (or is dropped: the client hung up): its status, why dormouse refused
/// it if it did, and how long it took from its arrival.
pub struct Record {
    target: Arc<TargetMetrics>,
    status: u16,
    refused: Option<dormouse_telemetry::Rejection>,
    arrived: std::time::Instant,
}

impl Record {
    pub fn new<B>(target: Arc<TargetMetrics>, response: &http::Response<B>, arrived: std::time::Instant) -> Record {
        let refused = response.extensions().get::<Refused>().map(|refused| refused.0);
        Record { target, status: response.status().as_u16(), refused, arrived }
    }
}

/// A request not yet answered: if it is dropped armed (its client left
/// before the response head), it is counted where it was to be (once
/// known) as 499, nginx's "client closed request".
pub struct Abandoned<'a> {
    counted: &'a std::sync::OnceLock<Arc<TargetMetrics>>,
    arrived: Option<std::time::Instant>,
}

impl<'a> Abandoned<'a> {
    pub fn new(counted: &'a std::sync::OnceLock<Arc<TargetMetrics>>, arrived: Option<std::time::Instant>) -> Self {
        Abandoned { counted, arrived }
    }

    /// The request was answered: its response counts instead.
    pub fn disarm(&mut self) {
        self.arrived = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let (Some(arrived), Some(target)) = (self.arrived, self.counted.get()) {
            target.request(dormouse_telemetry::CLIENT_CLOSED_REQUEST, arrived.elapsed(), None);
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.target.request(self.status, self.arrived.elapsed(), self.refused);
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.in_flight = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Logs accept failures (out of file descriptors, mostly) at most once a
/// second, with how many were not logged: a flood must not become a flood of
/// log lines too.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    pub fn record(&mut self, error: &std::io::Error) {
        let now = Instant::now();
        if self.last_logged.is_some_and(|last| now.duration_since(last) < Duration::from_secs(1)) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!("accept failed: {error} ({} more since the last report)", self.suppressed);
        } else {
            tracing::warn!("accept failed: {error}");
        }
        self.last_logged = Some(now);
        self.suppressed = 0;
    }
}

/// File descriptors a single-threaded tokio runtime holds (its epoll, its
/// waker, its timer and signal plumbing), measured.
const FDS_PER_IO_THREAD: u64 = 4;

/// The threads that serve connections, each with a single-threaded tokio
/// runtime: a connection's I/O, its hops to services and its guests' first
/// poll stay on one thread, with no hand-off to another (see
/// `GatewayConfig::io_threads`).
pub(crate) struct IoThreads {
    threads: Vec<IoThread>,
}

struct IoThread {
    runtime: tokio::runtime::Handle,
    /// Connections it serves now.
    open: Arc<AtomicUsize>,
}

/// A connection's place on its I/O thread, given back when it ends.
pub(crate) struct Placed(Option<Arc<AtomicUsize>>);

impl Drop for Placed {
    fn drop(&mut self) {
        if let Some(open) = &self.0 {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl IoThreads {
    /// Starts `count` (1 to `MAX_IO_THREADS`, and using at most a quarter
    /// of the file descriptor limit) threads, `dormouse-io-N`,
    /// whose runtimes run until `finished` is cancelled; then the connection
    /// tasks left on them are dropped. If one cannot start (out of threads or
    /// file descriptors), that is logged and those started serve; with none,
    /// connections are served where the accept loop runs.
    pub(crate) fn start(count: usize, finished: &CancellationToken) -> IoThreads {
        let mut threads = Vec::new();
        let mut count = count.clamp(1, crate::MAX_IO_THREADS);
        // A quarter of the process's file descriptors at most, the rest for
        // connections.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        if let Some(room) = limit.map(|limit| (limit / 4 / FDS_PER_IO_THREAD).max(1) as usize)
            && count > room
        {
            tracing::warn!(
                "{count} I/O threads would use {} of the {} file descriptors this process may open: starting {room}",
                count as u64 * FDS_PER_IO_THREAD,
                limit.unwrap_or_default()
            );
            count = room;
        }
        for number in 0..count {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::warn!(
                        "cannot make I/O thread {number}'s runtime, serving on {number} of {count}: {error}"
                    );
                    break;
                }
            };
            let handle = runtime.handle().clone();
            let finished = finished.clone();
            let started = std::thread::Builder::new().name(format!("dormouse-io-{number}")).spawn(move || {
                runtime.block_on(finished.cancelled());
                // Blocking work of a connection dropped here (a SQLite
                // commit) finishes on its own; nobody waits for it.
                runtime.shutdown_background();
            });
            match started {
                Ok(_) => threads.push(IoThread { runtime: handle, open: Arc::default() }),
                Err(error) => {
                    tracing::warn!("cannot start I/O thread {number}, serving on {number} of {count}: {error}");
                    break;
                }
            }
        }
        IoThreads { threads }
    }

    /// Where the accept loop runs: the first thread's runtime (`None`: no
    /// thread started).
    pub(crate) fn acceptor(&self) -> Option<&tokio::runtime::Handle> {
        self.threads.first().map(|thread| &thread.runtime)
    }

    /// The runtime of the thread with the fewest connections (`None`: no
    /// thread started), and the new connection's place on it.
    pub(crate) fn least_loaded(&self) -> (Option<&tokio::runtime::Handle>, Placed) {
        match self.threads.iter().min_by_key(|thread| thread.open.load(Ordering::Relaxed)) {
            Some(thread) => {
                thread.open.fetch_add(1, Ordering::Relaxed);
                (Some(&thread.runtime), Placed(Some(thread.open.clone())))
            }
            None => (None, Placed(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection's watchdog, running.
    fn watch(activity: &Arc<Activity>) -> tokio::task::JoinHandle<()> {
        let activity = activity.clone();
        tokio::spawn(async move { idle(&activity).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_has_the_header_timeout_and_no_more() {
        let activity = Activity::new(Duration::from_secs(2), Duration::from_secs(60));
        let started = Instant::now();
        idle(&activity).await;
        assert_eq!(started.elapsed().as_secs(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_holds_the_connection_and_idling_after_it_closes_it() {
        let activity = Activity::new(Duration::from_secs(2), Duration::from_secs(5));
        let started = Instant::now();
        let request = activity.request(http::Version::HTTP_2, Duration::from_secs(60));
        let watchdog = watch(&activity);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!watchdog.is_finished(), "closed while a request was in flight");
        drop(request);
        watchdog.await.unwrap();
        // The idle timeout runs from the end of the request, to within a
        // header-timeout check.
        let elapsed = started.elapsed().as_secs();
        assert!((35..=37).contains(&elapsed), "closed after {elapsed} s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_connection_has_the_header_timeout_to_start_its_next_request() {
        let activity = Activity::new(Duration::from_secs(2), Duration::from_secs(60));
        let started = Instant::now();
        let request = activity.request(http::Version::HTTP_11, Duration::from_secs(60));
        let watchdog = watch(&activity);
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(request);
        watchdog.await.unwrap();
        let elapsed = started.elapsed().as_secs();
        assert!((32..=33).contains(&elapsed), "closed after {elapsed} s, not at the 60 s idle timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_stuck_past_its_limit_does_not_hold_the_connection() {
        let activity = Activity::new(Duration::from_secs(2), Duration::from_secs(60));
        let started = Instant::now();
        // The response never drains (a client that keeps its window shut).
        let _stuck = activity.request(http::Version::HTTP_11, Duration::from_secs(5));
        idle(&activity).await;
        assert_eq!(started.elapsed().as_secs(), 6, "the limit and the grace");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_request_closes_its_connection_a_second_past_its_limit_even_before_the_idle_deadline() {
        let activity = Activity::new(Duration::from_secs(10), Duration::from_secs(10));
        let watchdog = watch(&activity);
        let started = Instant::now();
        // A quick request, then a stuck one (its response never drained):
        // the watchdog sleeps to the idle deadline (11 s) when the second
        // starts, whose limit and grace end sooner (5 s).
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(activity.request(http::Version::HTTP_2, Duration::from_secs(3)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _stuck = activity.request(http::Version::HTTP_2, Duration::from_secs(3));
        watchdog.await.unwrap();
        assert_eq!(started.elapsed().as_secs(), 6, "2 s in, then the limit and the grace");
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_runs_from_the_last_request_even_when_shorter_than_the_header_timeout() {
        let activity = Activity::new(Duration::from_secs(20), Duration::from_secs(2));
        let watchdog = watch(&activity);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let request = activity.request(http::Version::HTTP_11, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(request);
        watchdog.await.unwrap();
        assert_eq!(started.elapsed().as_secs(), 6, "4 s of request, then 2 s idle");
    }
}
