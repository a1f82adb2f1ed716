//! dormouse's metrics: counters and histograms kept per app and per
//! component or service, and their Prometheus exposition (the OpenMetrics
//! text format, written by `prometheus-client`).
//!
//! The parts that do the work count into handles they were given when their
//! app was launched ([`TargetMetrics`], [`KvMetrics`]): an atomic add or a
//! histogram observation, no lookup by name on a request's path. The handles
//! of an app live in [`Metrics`] under the app's *name*, not its version, so
//! a redeploy keeps counting where the old version left off (Prometheus sees
//! no reset), and [`Metrics::forget`] drops them when the app is removed.
//! Gauges (instances by state, queue depth, active memory) are not kept:
//! the embedder reads them from the running apps at scrape time and hands
//! them over as [`Gauges`].
//!
//! Invariants: no label takes its value from a request. Label values are app
//! names, component and service ids (from deployed manifests), key-value
//! store labels, response status codes and this crate's fixed enums, so the
//! number of series is bounded by what is deployed.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The status a request whose client left before its response head is
/// counted with: nginx's 499 "client closed request" (not registered with
/// IANA, but the one operators know).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the request-duration buckets, in seconds: 100 µs (a
/// component's answer) to 30 s (the default wall-clock limit).
const REQUEST_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

/// Upper bounds of the wake-duration buckets, in seconds: a thaw takes about
/// a millisecond, a cold start tens to thousands, the ready timeout 30 s.
const WAKE_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every app's metrics, by app name.
#[derive(Debug, Default)]
pub struct Metrics {
    apps: RwLock<BTreeMap<String, Arc<AppMetrics>>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::default()
    }

    /// The metrics of the app `name`, made on first use. Every version of
    /// an app gets the same ones.
    pub fn app(&self, name: &str) -> Arc<AppMetrics> {
        if let Some(app) = self.apps.read().expect("not poisoned").get(name) {
            return app.clone();
        }
        let mut apps = self.apps.write().expect("not poisoned");
        apps.entry(name.to_owned())
            .or_insert_with(|| Arc::new(AppMetrics { name: name.to_owned(), ..AppMetrics::default() }))
            .clone()
    }

    /// Stops exposing the app `name` (removed): its series go from the next
    /// scrape on. Handles still held keep counting into nothing.
    pub fn forget(&self, name: &str) {
        self.apps.write().expect("not poisoned").remove(name);
    }

    /// The exposition: every counter and histogram, and `gauges`, in the
    /// OpenMetrics text format ([`CONTENT_TYPE`]), which Prometheus reads.
    pub fn encode(self: &Arc<Self>, gauges: Gauges) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition { metrics: self.clone(), gauges }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

/// One app's metrics: per target (component or service) and per key-value
/// store.
#[derive(Debug, Default)]
pub struct AppMetrics {
    name: String,
    targets: RwLock<BTreeMap<String, Arc<TargetMetrics>>>,
    stores: RwLock<BTreeMap<(String, &'static str), Arc<KvMetrics>>>,
}

impl AppMetrics {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The metrics of the component or service `id` (`""`: requests of the
    /// app that no route took). An id that was another kind before (a
    /// component become a service) starts over.
    pub fn target(&self, id: &str, kind: TargetKind) -> Arc<TargetMetrics> {
        if let Some(target) = self.targets.read().expect("not poisoned").get(id).filter(|target| target.kind == kind) {
            return target.clone();
        }
        let mut targets = self.targets.write().expect("not poisoned");
        let target = targets.entry(id.to_owned()).or_insert_with(|| Arc::new(TargetMetrics::new(kind)));
        if target.kind != kind {
            *target = Arc::new(TargetMetrics::new(kind));
        }
        target.clone()
    }

    /// Keeps the targets `keep` says to and the app's unrouted requests;
    /// the others' series go (a redeploy that dropped a component).
    pub fn retain_targets(&self, keep: impl Fn(&str) -> bool) {
        self.targets.write().expect("not poisoned").retain(|id, _| id.is_empty() || keep(id));
    }

    /// The metrics of the key-value store `label`, kept by `backend`
    /// (`sqlite` or `redis`).
    pub fn store(&self, label: &str, backend: &'static str) -> Arc<KvMetrics> {
        let key = (label.to_owned(), backend);
        if let Some(store) = self.stores.read().expect("not poisoned").get(&key) {
            return store.clone();
        }
        self.stores.write().expect("not poisoned").entry(key).or_default().clone()
    }
}

/// What a target is, which decides the series it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Component,
    Service,
    /// Requests no route took (`target=""`).
    Unrouted,
}

/// Declares a fixed set of label values: the enum, its count and its names.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The label values, in the order of [`Self::ALL`].
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

label_values! {
    /// Why a request was refused rather than handled (`reason` of
    /// `dormouse_rejections_total`).
    Rejection {
        /// Every instance busy and the wait queue (or a service's wake
        /// buffer) full: 503.
        QueueFull => "queue_full",
        /// A platform quota full until the request's deadline: 503.
        Quota => "quota",
        /// The body was larger than `--max-body`: 413.
        BodyLimit => "body_limit",
        /// The URL was longer than `--max-url`: 414.
        UrlLimit => "url_limit",
        /// The header section was larger than `--max-headers`: 431.
        HeaderLimit => "header_limit",
        /// A request RFC 9112 says to refuse, or a body broken off: 400 (501
        /// for an unknown transfer coding).
        BadRequest => "bad_request",
        /// A service did not become ready within its ready timeout: 504.
        WakeTimeout => "wake_timeout",
        /// A service is failing to start (in back-off): 503.
        ServiceFailing => "service_failing",
        /// dormouse or the app was stopping before the request was answered
        /// (a drain cut short by its timeout, an app removed or replaced
        /// while the request was held): 503.
        Stopping => "stopping",
    }
}

label_values! {
    /// How a guest's handling of a request ended (`outcome` of
    /// `dormouse_guest_outcomes_total`).
    GuestOutcome {
        Ok => "ok",
        Trap => "trap",
        /// Past its CPU budget (`--cpu-limit`).
        CpuLimit => "cpu_limit",
        /// Past the wall-clock limit (`--timeout`).
        Timeout => "timeout",
        /// Trapped after a `memory.grow` past `--memory-limit` was refused.
        MemoryLimit => "memory_limit",
        /// Stopped before it returned, as nobody could read its answer any
        /// more (its client left, a `HEAD` needed no body).
        Cancelled => "cancelled",
        /// Stopped after answering with a `wasi:http` error code instead of
        /// a response (the client got 500).
        ErrorCode => "error_code",
    }
}

label_values! {
    /// What woke a service instance (`cause` of `dormouse_wakes_total`).
    Wake {
        /// A new process, from stopped (or never started) to listening.
        ColdStart => "cold_start",
        /// A paused instance thawed.
        Thaw => "thaw",
    }
}

label_values! {
    /// What became of a component's outbound HTTP request.
    Outbound {
        Allowed => "allowed",
        /// Refused by `allowed_outbound_hosts`.
        Denied => "denied",
    }
}

label_values! {
    /// A key-value operation (`operation` of `dormouse_kv_operations_total`).
    KvOperation {
        Get => "get",
        Set => "set",
        Delete => "delete",
        Exists => "exists",
        ListKeys => "list_keys",
        GetMany => "get_many",
        SetMany => "set_many",
        DeleteMany => "delete_many",
        Increment => "increment",
        CompareAndSwap => "compare_and_swap",
    }
}

/// A counter: one atomic, no allocation of its own (an app keeps a few
/// dozen per target, a daemon thousands of targets).
#[derive(Debug, Default)]
struct Count(AtomicU64);

impl Count {
    fn inc(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn encode(&self, encoder: prometheus_client::encoding::MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.get()).encode(encoder)
    }
}

/// The metrics of one component or service of an app.
#[derive(Debug)]
pub struct TargetMetrics {
    kind: TargetKind,
    /// Requests by status code. A few codes per target: a scan of a short
    /// vector is cheaper than hashing.
    statuses: RwLock<Vec<(u16, Count)>>,
    duration: Histogram,
    rejections: Vec<Count>,
    instantiations: Count,
    outcomes: Vec<Count>,
    outbound: Vec<Count>,
    wakes: Vec<Count>,
    wake_durations: Vec<Histogram>,
}

impl TargetMetrics {
    fn new(kind: TargetKind) -> TargetMetrics {
        let counters = |n: usize| (0..n).map(|_| Count::default()).collect();
        TargetMetrics {
            kind,
            statuses: RwLock::default(),
            duration: Histogram::new(REQUEST_BUCKETS),
            rejections: counters(Rejection::ALL.len()),
            instantiations: Count::default(),
            outcomes: counters(GuestOutcome::ALL.len()),
            outbound: counters(Outbound::ALL.len()),
            wakes: counters(Wake::ALL.len()),
            // Only services wake.
            wake_durations: match kind {
                TargetKind::Service => Wake::ALL.iter().map(|_| Histogram::new(WAKE_BUCKETS)).collect(),
                _ => Vec::new(),
            },
        }
    }

    /// A request answered with `status`, `elapsed` from its arrival to the
    /// end of its response body; `rejection` if dormouse refused it. A
    /// status code IANA has not registered counts as its class (`5xx`): an
    /// app, or a client through it, cannot make series without bound.
    pub fn request(&self, status: u16, elapsed: Duration, rejection: Option<Rejection>) {
        let registered = status == CLIENT_CLOSED_REQUEST
            || http::StatusCode::from_u16(status).ok().and_then(|code| code.canonical_reason()).is_some();
        let status = if registered { status } else { status / 100 };
        let counted = {
            let statuses = self.statuses.read().expect("not poisoned");
            statuses.iter().find(|(code, _)| *code == status).map(|(_, counter)| counter.inc()).is_some()
        };
        if !counted {
            let mut statuses = self.statuses.write().expect("not poisoned");
            match statuses.iter().find(|(code, _)| *code == status) {
                Some((_, counter)) => counter.inc(),
                None => {
                    let counter = Count::default();
                    counter.inc();
                    statuses.push((status, counter));
                    statuses.sort_unstable_by_key(|(code, _)| *code);
                    0
                }
            };
        }
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(rejection) = rejection {
            self.rejections[rejection as usize].inc();
        }
    }

    /// A component instance made for a request.
    pub fn instantiated(&self) {
        self.instantiations.inc();
    }

    pub fn guest_outcome(&self, outcome: GuestOutcome) {
        self.outcomes[outcome as usize].inc();
    }

    pub fn outbound(&self, outcome: Outbound) {
        self.outbound[outcome as usize].inc();
    }

    /// A service instance woken by `cause`, which took `elapsed` (a cold
    /// start: spawn to listening; a thaw: the thaw itself).
    pub fn wake(&self, cause: Wake, elapsed: Duration) {
        self.wakes[cause as usize].inc();
        if let Some(histogram) = self.wake_durations.get(cause as usize) {
            histogram.observe(elapsed.as_secs_f64());
        }
    }
}

/// The operations on one key-value store of an app, and their errors.
#[derive(Debug)]
pub struct KvMetrics {
    operations: Vec<Count>,
    errors: Vec<Count>,
}

impl Default for KvMetrics {
    fn default() -> Self {
        let counters = || KvOperation::ALL.iter().map(|_| Count::default()).collect();
        KvMetrics { operations: counters(), errors: counters() }
    }
}

impl KvMetrics {
    /// One `operation`, which failed unless `ok`.
    pub fn record(&self, operation: KvOperation, ok: bool) {
        self.operations[operation as usize].inc();
        if !ok {
            self.errors[operation as usize].inc();
        }
    }
}

/// Values read from the running apps at scrape time. Entries for the same
/// labels add up: an app's old version draining beside its new one counts
/// once.
#[derive(Debug, Default)]
pub struct Gauges {
    instances: BTreeMap<(String, String, &'static str), i64>,
    /// Targets of the versions in the table, and whether each is failing:
    /// `standby` and `failing` are derived from them once every version's
    /// instances are in.
    current: BTreeMap<(String, String), bool>,
    queue_depth: BTreeMap<(String, String), i64>,
    /// Memory held by active instances, in bytes.
    pub active_memory_bytes: u64,
    /// Component instances handling a request and service instances
    /// starting, running or stopping (what the active-instances quota
    /// counts).
    pub active_instances: u64,
    /// Apps deployed.
    pub apps: u64,
}

/// The states of instances `dormouse_instances` counts; besides them,
/// `standby` and `failing` say a target has no instance at all.
pub const INSTANCE_STATES: [&str; 4] = ["starting", "running", "paused", "stopping"];

impl Gauges {
    /// `count` instances of `app`'s `target` in `state` (one of
    /// [`INSTANCE_STATES`]), of any version.
    pub fn instances(&mut self, app: &str, target: &str, state: &'static str, count: i64) {
        debug_assert!(INSTANCE_STATES.contains(&state), "unknown instance state `{state}`");
        *self.instances.entry((app.to_owned(), target.to_owned(), state)).or_default() += count;
    }

    /// `app`'s `target` is in the version the table routes to; `failing`:
    /// its starts are in back-off. With no instance of any version it is
    /// `failing`, else `standby`.
    pub fn current(&mut self, app: &str, target: &str, failing: bool) {
        self.current.insert((app.to_owned(), target.to_owned()), failing);
    }

    /// `count` requests of `app`'s `target` waiting for an instance.
    pub fn queue_depth(&mut self, app: &str, target: &str, count: i64) {
        *self.queue_depth.entry((app.to_owned(), target.to_owned())).or_default() += count;
    }
}

/// A counter family with one label of fixed values beside `app` and
/// `target`: a series per target and value, once counted.
struct PerTarget {
    name: &'static str,
    key: &'static str,
    values: &'static [&'static str],
}

impl PerTarget {
    fn encode<'t>(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        help: &str,
        targets: impl Iterator<Item = &'t (&'t str, String, Arc<TargetMetrics>)>,
        counters: impl Fn(&TargetMetrics) -> &[Count],
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(self.name, help, None, MetricType::Counter)?;
        for (app, target, metrics) in targets {
            for (value, counter) in self.values.iter().zip(counters(metrics)) {
                if counter.get() > 0 {
                    let labels = [("app", *app), ("target", target.as_str()), (self.key, value)];
                    counter.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// One scrape's worth: the kept metrics and the gauges read for it.
#[derive(Debug)]
struct Exposition {
    metrics: Arc<Metrics>,
    gauges: Gauges,
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let apps = self.metrics.apps.read().expect("not poisoned");
        let targets: Vec<(&str, String, Arc<TargetMetrics>)> = apps
            .values()
            .flat_map(|app| {
                let targets = app.targets.read().expect("not poisoned");
                targets.iter().map(|(id, target)| (app.name.as_str(), id.clone(), target.clone())).collect::<Vec<_>>()
            })
            .collect();

        let mut family = encoder.encode_descriptor(
            "http_requests",
            "Requests answered, by app, component or service (target), and response status code.",
            None,
            MetricType::Counter,
        )?;
        for (app, target, metrics) in &targets {
            for (status, counter) in metrics.statuses.read().expect("not poisoned").iter() {
                // A class is kept as its digit (see `TargetMetrics::request`).
                let status = if *status < 10 { format!("{status}xx") } else { status.to_string() };
                let labels = [("app", *app), ("target", target.as_str()), ("status", status.as_str())];
                counter.encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "http_request_duration",
            "Time from a request's arrival to the end of its response body.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (app, target, metrics) in &targets {
            if !metrics.statuses.read().expect("not poisoned").is_empty() {
                metrics.duration.encode(family.encode_family(&[("app", *app), ("target", target.as_str())])?)?;
            }
        }
        let each = |kind: TargetKind| targets.iter().filter(move |(_, _, t)| t.kind == kind);
        let rejections = PerTarget { name: "dormouse_rejections", key: "reason", values: Rejection::NAMES };
        rejections.encode(
            &mut encoder,
            "Requests dormouse refused instead of handling, by reason.",
            targets.iter(),
            |t| &t.rejections,
        )?;
        let mut family = encoder.encode_descriptor(
            "dormouse_instantiations",
            "Component instances made, one per request admitted.",
            None,
            MetricType::Counter,
        )?;
        for (app, target, metrics) in each(TargetKind::Component) {
            metrics.instantiations.encode(family.encode_family(&[("app", *app), ("target", target.as_str())])?)?;
        }
        let outcomes = PerTarget { name: "dormouse_guest_outcomes", key: "outcome", values: GuestOutcome::NAMES };
        outcomes.encode(
            &mut encoder,
            "How component instances ended: ok, trap, cpu_limit, timeout, memory_limit, cancelled or error_code.",
            each(TargetKind::Component),
            |t| &t.outcomes,
        )?;
        let outbound = PerTarget { name: "dormouse_outbound_requests", key: "outcome", values: Outbound::NAMES };
        outbound.encode(
            &mut encoder,
            "Outbound HTTP requests of components, allowed or denied by allowed_outbound_hosts.",
            each(TargetKind::Component),
            |t| &t.outbound,
        )?;
        let wakes = PerTarget { name: "dormouse_wakes", key: "cause", values: Wake::NAMES };
        wakes.encode(
            &mut encoder,
            "Service instances woken: cold_start (a new process) or thaw (a paused one).",
            each(TargetKind::Service),
            |t| &t.wakes,
        )?;
        let mut family = encoder.encode_descriptor(
            "dormouse_wake_duration",
            "How long waking took: a cold start from spawn to listening, a thaw the thaw itself.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (app, target, metrics) in each(TargetKind::Service) {
            for ((cause, histogram), counter) in Wake::ALL.iter().zip(&metrics.wake_durations).zip(&metrics.wakes) {
                if counter.get() > 0 {
                    let labels = [("app", *app), ("target", target.as_str()), ("cause", cause.as_str())];
                    histogram.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut operations = encoder.encode_descriptor(
            "dormouse_kv_operations",
            "Key-value operations of components, by store, backend and operation.",
            None,
            MetricType::Counter,
        )?;
        let stores: Vec<(&str, (String, &'static str), Arc<KvMetrics>)> = apps
            .values()
            .flat_map(|app| {
                let stores = app.stores.read().expect("not poisoned");
                stores.iter().map(|(key, store)| (app.name.as_str(), key.clone(), store.clone())).collect::<Vec<_>>()
            })
            .collect();
        for (app, (label, backend), store) in &stores {
            for (operation, counter) in KvOperation::ALL.iter().zip(&store.operations) {
                if counter.get() > 0 {
                    let labels =
                        [("app", *app), ("store", label), ("backend", backend), ("operation", operation.as_str())];
                    counter.encode(operations.encode_family(&labels)?)?;
                }
            }
        }
        let mut errors = encoder.encode_descriptor(
            "dormouse_kv_errors",
            "Key-value operations that failed, by store, backend and operation.",
            None,
            MetricType::Counter,
        )?;
        for (app, (label, backend), store) in &stores {
            for ((operation, counter), done) in KvOperation::ALL.iter().zip(&store.errors).zip(&store.operations) {
                if done.get() > 0 {
                    let labels =
                        [("app", *app), ("store", label), ("backend", backend), ("operation", operation.as_str())];
                    counter.encode(errors.encode_family(&labels)?)?;
                }
            }
        }
        drop(apps);

        let gauges = &self.gauges;
        let mut family = encoder.encode_descriptor(
            "dormouse_instances",
            "Instances by state. Components: running (handling a request) or standby (none alive). Services: \
             starting, running, paused, stopping, failing (no instance, start in back-off) or standby (no instance).",
            None,
            MetricType::Gauge,
        )?;
        let mut instances = gauges.instances.clone();
        for ((app, target), failing) in &gauges.current {
            let none = INSTANCE_STATES
                .iter()
                .all(|state| instances.get(&(app.clone(), target.clone(), *state)).is_none_or(|count| *count == 0));
            instances.insert((app.clone(), target.clone(), "standby"), i64::from(none && !failing));
            instances.insert((app.clone(), target.clone(), "failing"), i64::from(none && *failing));
        }
        for ((app, target, state), count) in &instances {
            let labels = [("app", app.as_str()), ("target", target.as_str()), ("state", state)];
            ConstGauge::new(*count).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "dormouse_queue_depth",
            "Requests waiting for an instance: a component's place in the wait queue, a service's wake buffer.",
            None,
            MetricType::Gauge,
        )?;
        for ((app, target), count) in &gauges.queue_depth {
            ConstGauge::new(*count)
                .encode(family.encode_family(&[("app", app.as_str()), ("target", target.as_str())])?)?;
        }
        let gauge = |encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, unit: Option<&Unit>, value: u64| {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
        };
        gauge(
            &mut encoder,
            "dormouse_active_memory",
            "Memory held by active instances: each live component instance's memory limit, each running service \
             instance's memory size.",
            Some(&Unit::Bytes),
            gauges.active_memory_bytes,
        )?;
        gauge(
            &mut encoder,
            "dormouse_active_instances",
            "Component instances handling a request and service instances starting, running or stopping.",
            None,
            gauges.active_instances,
        )?;
        gauge(&mut encoder, "dormouse_apps", "Apps deployed.", None, gauges.apps)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_requests_as_keda_queries_them() {
        let metrics = Metrics::new();
        let app = metrics.app("webhook-handler");
        let hello = app.target("hello", TargetKind::Component);
        hello.request(200, Duration::from_micros(150), None);
        hello.request(200, Duration::from_micros(150), None);
        hello.request(503, Duration::from_micros(50), Some(Rejection::QueueFull));
        hello.instantiated();
        let text = metrics.encode(Gauges::default());
        assert!(
            text.contains("http_requests_total{app=\"webhook-handler\",target=\"hello\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("http_requests_total{app=\"webhook-handler\",target=\"hello\",status=\"503\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "dormouse_rejections_total{app=\"webhook-handler\",target=\"hello\",reason=\"queue_full\"} 1\n"
            )
        );
        assert!(
            text.contains("http_request_duration_seconds_count{app=\"webhook-handler\",target=\"hello\"} 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_forgotten_app_leaves_the_exposition_and_versions_share_their_counters() {
        let metrics = Metrics::new();
        metrics.app("a").target("web", TargetKind::Service).request(200, Duration::ZERO, None);
        // A new version of `a` gets the same counters.
        metrics.app("a").target("web", TargetKind::Service).request(200, Duration::ZERO, None);
        assert!(metrics.encode(Gauges::default()).contains("target=\"web\",status=\"200\"} 2\n"));
        metrics.forget("a");
        assert!(!metrics.encode(Gauges::default()).contains("app=\"a\""));
    }

    #[test]
    fn gauges_of_two_versions_add_up() {
        let metrics = Metrics::new();
        let mut gauges = Gauges::default();
        gauges.instances("a", "web", "running", 1);
        gauges.instances("a", "web", "running", 2);
        gauges.queue_depth("a", "web", 4);
        let text = metrics.encode(gauges);
        assert!(text.contains("dormouse_instances{app=\"a\",target=\"web\",state=\"running\"} 3\n"), "{text}");
        assert!(text.contains("dormouse_queue_depth{app=\"a\",target=\"web\"} 4\n"), "{text}");
    }

    #[test]
    fn unregistered_status_codes_count_as_their_class() {
        let metrics = Metrics::new();
        let web = metrics.app("a").target("web", TargetKind::Service);
        for status in [200, 299, 298, 599, 404] {
            web.request(status, Duration::ZERO, None);
        }
        let text = metrics.encode(Gauges::default());
        assert!(text.contains("status=\"2xx\"} 2\n"), "{text}");
        assert!(text.contains("status=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("status=\"404\"} 1\n"), "{text}");
        assert!(!text.contains("299"), "{text}");
    }
}
