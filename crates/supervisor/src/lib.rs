//! Services: ordinary HTTP server processes that run only while they are
//! used. A request for a service [`ServiceHandle::acquire`]s a lease on a ready
//! instance; if there is none, exactly the instances needed are started (or
//! thawed) and the request waits, bounded in count and time, until one is
//! ready. When an instance's last lease is dropped it goes to standby after the
//! cooldown: its process group is stopped or frozen.
//!
//! Instance states: starting → ready ⇄ (idle) → paused | stopping → gone;
//! a start that fails puts the service in back-off (1 s doubling to 5 min).
//!
//! Invariants: every instance is its own process group and, where the host
//! has cgroup v2, its own cgroup, and nothing it started outlives it, or
//! dormouse (a reaper process kills what is left if dormouse is killed
//! outright); every child is reaped; no two waiting requests start two
//! processes for one slot, and a fixed port never has two instances; a
//! held request is answered or refused (see [`WakeError`]) by the wake
//! deadline, and one whose client left gives its place back; this crate runs
//! no wasm and knows nothing of HTTP routing.

mod backoff;
pub mod cgroup;
mod idle;
mod instance;
pub mod logs;
pub mod scale;
pub mod spawn;
pub mod status;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::time::Instant as TokioInstant;

use dormouse_manifest::model::{Service, Standby};
use tokio::sync::Notify;

pub use backoff::Backoff;
use cgroup::Cgroups;
use instance::{Instance, Phase};
pub use scale::{Adjustment, Metric, ScaleConfig, Step, StepPolicy};
use spawn::{HelperClient, Spawn, Spawner};

/// Requests a service may hold while it wakes, per instance it may start
/// (`max`); past it 503. Bounds what one cold service can take from the
/// gateway while letting a burst fill every instance a scale-out brings.
pub const WAKE_BUFFER: usize = 100;

/// Processes the helper keeps waiting in fresh cgroups for each service, so
/// that a wake never waits for a cgroup migration: two, so that one is ready
/// while a used one is replaced, and a scale-out by one finds one too. Each
/// is an idle shell, ~1 MiB; a burst of more starts than this at once pays
/// the migration (~14 ms) for the rest.
pub const STUBS_PER_SERVICE: usize = 2;

/// How often a start waiting for another app's instance to give a fixed port
/// back looks again.
const PORT_RECHECK: Duration = Duration::from_millis(5);

/// Why a request for a service got no instance.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("service `{service}` did not become ready within {limit:?}")]
    Timeout { service: String, limit: Duration },
    #[error("service `{service}` is failing ({reason}); next start in {retry_after:?}")]
    Failing { service: String, reason: String, retry_after: Duration },
    #[error("service `{service}` already holds {held} requests while it wakes")]
    Overloaded { service: String, held: usize },
    #[error("service `{service}` cannot start an instance: {exceeded}")]
    Quota { service: String, exceeded: dormouse_quota::QuotaExceeded },
    /// Its app is stopping (dormouse shutting down, the app removed or
    /// replaced): no instance will start for the request.
    #[error("service `{service}` is stopping: {reason}")]
    Stopping { service: String, reason: String },
}

/// Whether a service's command would start: its program an executable (on
/// `PATH`, its own from `environment` or dormouse's, unless it names a path),
/// its working directory a directory. For refusing a deploy that could
/// never start, before its first request finds out.
pub fn check_command(
    program: &str,
    workdir: &std::path::Path,
    environment: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<()> {
    spawn::runnable(program, workdir, environment.get("PATH").map(String::as_str))
}

/// What the services of every app in one dormouse share: this run's cgroup
/// directory, the process helper (or in-process spawning), and the fixed
/// ports their instances hold, so that an app deployed again on the same
/// port waits for its predecessor's process instead of colliding with it.
pub struct Processes {
    cgroups: Arc<Cgroups>,
    spawner: Spawner,
    /// The platform's quotas, which every instance is admitted under while
    /// it is starting or running (not paused); `None` counts nothing.
    quotas: Option<Arc<dormouse_quota::Quotas>>,
    /// Services start from a clean environment (see `spawn::KEPT_ENVIRONMENT`).
    clean_env: bool,
    /// Fixed ports held by an instance, from its start until it is reaped.
    fixed_ports: Mutex<std::collections::HashSet<u16>>,
    /// The runtime that instances' and scalers' tasks run on: the one this
    /// was made in, which lives as long as dormouse, not the I/O thread of
    /// the request that happened to wake an instance.
    runtime: tokio::runtime::Handle,
}

impl Processes {
    /// `helper`, if given, is a command that runs [`spawn::helper_main`]
    /// with the run's cgroup directory (if any) appended as its last argument
    /// (the `dormouse` binary running itself): every service process is then
    /// its child, and nothing outlives dormouse, even one killed outright.
    /// Without it (or with `enabled` false: no app has services) dormouse
    /// spawns services itself and makes no cgroup directory.
    /// Call within a tokio runtime.
    pub fn new(
        helper: Option<std::process::Command>,
        enabled: bool,
        quotas: Option<Arc<dormouse_quota::Quotas>>,
    ) -> Arc<Processes> {
        let cgroups = Cgroups::new(enabled);
        let spawner = match helper {
            Some(command) if enabled => match HelperClient::start(command, cgroups.run_dir()) {
                Ok(helper) => Spawner::Helper(helper),
                Err(error) => {
                    tracing::warn!(
                        "cannot start the process helper: services would outlive a dormouse killed outright: {error}"
                    );
                    Spawner::Direct(cgroups.clone())
                }
            },
            _ => Spawner::Direct(cgroups.clone()),
        };
        let runtime = tokio::runtime::Handle::current();
        Arc::new(Processes { cgroups, spawner, quotas, clean_env: false, fixed_ports: Mutex::default(), runtime })
    }

    /// The same, but services start from a clean environment: only
    /// `PATH`, the locale, the time zone and `TMPDIR` of dormouse's, then
    /// their own (the daemon, whose environment is not its apps').
    pub fn with_clean_environment(
        helper: Option<std::process::Command>,
        quotas: Option<Arc<dormouse_quota::Quotas>>,
    ) -> Arc<Processes> {
        let mut processes = Arc::into_inner(Processes::new(helper, true, quotas)).expect("just made");
        processes.clean_env = true;
        Arc::new(processes)
    }

    /// Removes this run's cgroup directory: call once every supervisor has
    /// shut down.
    pub async fn shutdown(&self) {
        let cgroups = self.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || cgroups.remove()).await;
    }

    /// Kills every process of every instance in this run's cgroups now.
    pub fn kill_now(&self) {
        self.cgroups.kill_all();
    }

    fn port_held(&self, port: u16) -> bool {
        self.fixed_ports.lock().expect("not poisoned").contains(&port)
    }

    fn hold_port(&self, port: u16) {
        self.fixed_ports.lock().expect("not poisoned").insert(port);
    }

    fn release_port(&self, port: u16) {
        self.fixed_ports.lock().expect("not poisoned").remove(&port);
    }
}

/// All services of an app.
pub struct Supervisor {
    services: Vec<Arc<ServiceHandle>>,
}

impl Supervisor {
    /// The services of the app `scope` (its name: two apps may both have a
    /// service `web`), spawned through `processes`, their output appended
    /// to `log` (see `logs.rs`) or, without one, left on dormouse's own.
    /// Call within a tokio runtime.
    pub fn new(
        scope: &str,
        services: impl IntoIterator<Item = Service>,
        processes: &Arc<Processes>,
        log: Option<std::path::PathBuf>,
        metrics: Option<&dormouse_telemetry::AppMetrics>,
    ) -> Supervisor {
        let services: Vec<Arc<ServiceHandle>> = services
            .into_iter()
            .map(|config| {
                let metrics = metrics.map(|app| app.target(&config.id, dormouse_telemetry::TargetKind::Service));
                ServiceHandle::new(format!("{scope}/{}", config.id), config, processes.clone(), log.clone(), metrics)
            })
            .collect();
        if let Spawner::Helper(helper) = &processes.spawner {
            for service in &services {
                // Processes waiting in cgroups for its wakes: two, so that
                // one is ready while the other is replaced.
                let prepared = helper.prepare(service.spawn_request(0), STUBS_PER_SERVICE);
                if let Err(error) = prepared {
                    tracing::warn!(service = %service.key, "cannot prepare its processes: {error}");
                }
            }
        }
        Supervisor { services }
    }

    /// Keeps no processes ready for these services any more: for an app
    /// removed for good (a version replaced by another leaves the new
    /// version's, which may share the command, alone).
    pub fn forget_prepared(&self) {
        for service in &self.services {
            if let Spawner::Helper(helper) = &service.processes.spawner
                && let Err(error) = helper.forget(&service.key)
            {
                tracing::warn!(service = %service.key, "cannot let its ready processes go: {error}");
            }
        }
    }

    pub fn service(&self, id: &str) -> Option<&Arc<ServiceHandle>> {
        self.services.iter().find(|s| s.config.id == id)
    }

    pub fn services(&self) -> &[Arc<ServiceHandle>] {
        &self.services
    }

    /// Starts the instances every service keeps up (its minimum, or a
    /// policy's floor) that are not up yet.
    pub fn start(&self) {
        for service in &self.services {
            let mut state = service.state.lock().expect("not poisoned");
            let wanted = state.min_up();
            service.start_kept_up(&mut state, wanted);
        }
    }

    /// Stops every instance (SIGTERM, SIGKILL after the stop timeout) and
    /// waits until all are reaped.
    pub async fn shutdown(&self) {
        self.stop("dormouse shutting down").await;
    }

    /// Stops every instance for `reason` (what `instance ls` shows), starts
    /// none again, and waits until all are reaped.
    pub async fn stop(&self, reason: &str) {
        for service in &self.services {
            let mut state = service.state.lock().expect("not poisoned");
            state.stop_reason = Some(reason.to_owned());
            // Its scaler, if it waits for an event, sees the stop and ends.
            service.scale_events.notify_one();
            for instance in &mut state.instances {
                instance.stop(reason);
            }
            drop(state);
            // Requests held for it are refused now, not at their ready timeout.
            service.changed.notify_waiters();
        }
        for service in &self.services {
            loop {
                let notified = service.changed.notified();
                if service.state.lock().expect("not poisoned").instances.is_empty() {
                    break;
                }
                notified.await;
            }
        }
    }

    /// Kills every process of every instance now, without waiting: for a
    /// second interrupt, when the user will not wait for the drain.
    pub fn kill_now(&self) {
        for service in &self.services {
            service.processes.kill_now();
            let state = service.state.lock().expect("not poisoned");
            for instance in &state.instances {
                instance::kill_rest(rustix::process::Pid::from_raw(instance.pid as i32), instance.cgroup.as_ref());
            }
        }
    }
}

/// One service: its instances and the requests waiting for them.
pub struct ServiceHandle {
    config: Service,
    /// `app/service`: names its processes to the helper, unique in a run.
    key: String,
    /// Where its processes' output goes (`None`: dormouse's own).
    log: Option<std::path::PathBuf>,
    processes: Arc<Processes>,
    state: Mutex<State>,
    /// Notified (every waiter) on every state change that could let a
    /// waiting request go other than room: a start failed, a stop.
    changed: Notify,
    /// Notified once for every place a lease gives back, or a new instance
    /// offers, while requests wait:
    /// one waiter (the longest waiting, tokio's `notify_one` order) takes it.
    /// A waiter woken but gone (its client left) passes the wake-up on, so
    /// that none is lost; waking every waiter for one place would wake all
    /// of a full queue to let one go.
    room: Notify,
    /// Set while the service has step policies: leases then wake its scaler.
    has_policies: std::sync::atomic::AtomicBool,
    scale_events: Arc<Notify>,
    /// Where its wakes are counted (`None`: no metrics are kept).
    metrics: Option<Arc<dormouse_telemetry::TargetMetrics>>,
}

#[derive(Default)]
struct State {
    instances: Vec<Instance>,
    /// Requests waiting for an instance.
    waiting: usize,
    next_number: u64,
    starts: u64,
    backoff: Backoff,
    /// Set while a start failed and the back-off has not passed.
    failing: Option<(String, Instant)>,
    stops: std::collections::VecDeque<status::StopRecord>,
    scale: ScaleConfig,
    /// Instances the step policies want up, besides `scale.min`.
    floor: u32,
    /// When a policy last scaled out.
    last_scale_out: Option<Instant>,
    /// Leases given back so far, by every instance: what `rps` counts.
    completed: u64,
    /// The last second of (time, completed, CPU µs of the live instances).
    samples: std::collections::VecDeque<(Instant, u64, u64)>,
    scaler_running: bool,
    /// Why the last start or thaw was refused by a quota, until one succeeds.
    quota_blocked: Option<dormouse_quota::QuotaExceeded>,
    /// Why the app stopped ([`Supervisor::stop`]): requests for it are refused.
    stop_reason: Option<String>,
}

/// A request's place among those waiting for a service to wake, given back
/// when the request gets a lease, gives up, or is dropped (its client left):
/// a count that only went up would wedge the service at [`WAKE_BUFFER`].
struct WaitingPlace {
    /// `None` once given back.
    service: Option<Arc<ServiceHandle>>,
}

impl WaitingPlace {
    fn take(service: &Arc<ServiceHandle>, state: &mut State) -> WaitingPlace {
        state.waiting += 1;
        WaitingPlace { service: Some(service.clone()) }
    }

    /// Gives the place back under a lock the caller already holds.
    fn leave(mut self, state: &mut State) {
        state.waiting -= 1;
        self.service = None;
    }
}

impl Drop for WaitingPlace {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            service.state.lock().expect("not poisoned").waiting -= 1;
            // A waiter that left may have been the demand an instance was
            // starting for; nothing else changes for the others.
        }
    }
}

impl State {
    /// Instances that are or will be able to serve.
    fn live(&self) -> usize {
        self.instances.iter().filter(|i| i.phase != Phase::Stopping).count()
    }

    /// Instances kept up however idle: the minimum, or more while a step
    /// policy asks for more.
    fn min_up(&self) -> usize {
        self.scale.min.max(self.floor) as usize
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        // A scaler waiting for an event finds the service gone and ends.
        self.scale_events.notify_one();
    }
}

/// A request's claim on an instance: its address, held until the response is
/// over. Dropping the last lease of an instance starts its cooldown.
pub struct Lease {
    service: Arc<ServiceHandle>,
    number: u64,
    pub addr: std::net::SocketAddr,
    /// Whether the request found its instance ready or had it woken.
    pub start: Start,
}

/// How a request found its instance, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Ready and with room.
    Warm,
    /// The request waited while an instance started.
    Cold,
    /// A paused instance was thawed for it.
    Thaw,
}

impl Start {
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Warm => "warm",
            Start::Cold => "cold",
            Start::Thaw => "thaw",
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.service.state.lock().expect("not poisoned");
        let Some(instance) = state.instances.iter_mut().find(|i| i.number == self.number) else {
            return;
        };
        instance.in_flight -= 1;
        instance.served += 1;
        if instance.in_flight == 0 {
            // The last lease starts the cooldown, kept by the instance's own
            // task, which needs waking only if it sleeps with no time set.
            instance.idle_since = Some(TokioInstant::now());
            if !instance.watching {
                instance.activity.notify_one();
            }
        }
        state.completed += 1;
        self.service.scale_event();
        // Room freed on an instance matters only to requests waiting for it,
        // and only one of them can take it.
        let someone_waits = state.waiting > 0;
        drop(state);
        if someone_waits {
            self.service.room.notify_one();
        }
    }
}

impl ServiceHandle {
    fn new(
        key: String,
        config: Service,
        processes: Arc<Processes>,
        log: Option<std::path::PathBuf>,
        metrics: Option<Arc<dormouse_telemetry::TargetMetrics>>,
    ) -> Arc<ServiceHandle> {
        let scale = ScaleConfig {
            min: config.min,
            max: config.max,
            warmup: Duration::ZERO,
            cooldown: config.cooldown,
            policies: Vec::new(),
        };
        Arc::new(ServiceHandle {
            config,
            key,
            log,
            processes,
            state: Mutex::new(State { scale, ..State::default() }),
            changed: Notify::new(),
            room: Notify::new(),
            has_policies: Default::default(),
            scale_events: Arc::default(),
            metrics,
        })
    }

    /// The quota that refused this service's last start or thaw, until one
    /// succeeds.
    pub fn quota_blocked(&self) -> Option<dormouse_quota::QuotaExceeded> {
        self.state.lock().expect("not poisoned").quota_blocked.clone()
    }

    /// Where this service's requests and wakes are counted, if metrics are
    /// kept.
    pub fn metrics(&self) -> Option<&Arc<dormouse_telemetry::TargetMetrics>> {
        self.metrics.as_ref()
    }

    /// Instances that exist now, in any phase (without reading their
    /// cgroups, as [`ServiceHandle::status`] does).
    pub fn instance_count(&self) -> usize {
        self.state.lock().expect("not poisoned").instances.len()
    }

    /// The scale settings in force.
    pub fn scale(&self) -> ScaleConfig {
        self.state.lock().expect("not poisoned").scale.clone()
    }

    /// Replaces the scale settings (`scale init`, `scale add`): instances
    /// above a lower minimum go to standby when idle for the cooldown; a
    /// higher minimum is met by [`Supervisor::start`] (so that an app being
    /// launched starts nothing before it is routed to). Call within a tokio
    /// runtime.
    pub fn set_scale(self: &Arc<Self>, scale: ScaleConfig) {
        let mut state = self.state.lock().expect("not poisoned");
        let has_policies = !scale.policies.is_empty();
        state.scale = scale;
        if !has_policies {
            state.floor = 0;
        }
        self.has_policies.store(has_policies, std::sync::atomic::Ordering::Release);
        // Idle instances look again at the (maybe lower) minimum.
        for instance in &state.instances {
            instance.activity.notify_one();
        }
        if has_policies && !state.scaler_running {
            state.scaler_running = true;
            self.processes.runtime.spawn(scaler(Arc::downgrade(self), self.scale_events.clone()));
        }
    }

    /// A lease was taken or given back: the scaler samples at once.
    fn scale_event(&self) {
        if self.has_policies.load(std::sync::atomic::Ordering::Relaxed) {
            self.scale_events.notify_one();
        }
    }

    /// Samples the metrics and applies the step policies: scales out (at
    /// most once per warmup), or lets the policies' floor fall back (once
    /// the cooldown since the last scale-out has passed) when they ask for
    /// fewer instances or no step holds. Returns whether instances are up
    /// or wanted (the scaler then ticks).
    fn evaluate(self: &Arc<Self>) -> bool {
        let cgroups: Vec<std::path::PathBuf> = {
            let state = self.state.lock().expect("not poisoned");
            state.instances.iter().filter_map(|i| i.cgroup.as_ref().map(|c| c.path().to_owned())).collect()
        };
        // Read outside the lock: these are files.
        let cpu_usec: u64 = cgroups.into_iter().filter_map(|path| cgroup::Cgroup::at(path).cpu_usec()).sum();
        let now = Instant::now();
        let mut state = self.state.lock().expect("not poisoned");
        let completed = state.completed;
        state.samples.push_back((now, completed, cpu_usec));
        while state.samples.len() > 2 && now.duration_since(state.samples[1].0) >= Duration::from_secs(1) {
            state.samples.pop_front();
        }
        let live = state.live() as u32;
        let per_instance = f64::from(live.max(1));
        let in_flight: u32 = state.instances.iter().map(|i| i.in_flight).sum();
        let (then, completed_then, cpu_then) = state.samples[0];
        let seconds = now.duration_since(then).as_secs_f64();
        let rate = |now_value: u64, then_value: u64| {
            if seconds > 0.0 { now_value.saturating_sub(then_value) as f64 / seconds } else { 0.0 }
        };
        let metrics = scale::Metrics {
            // Waiting requests are load the instances have not taken yet.
            inflight: f64::from(in_flight + state.waiting as u32) / per_instance,
            rps: rate(completed, completed_then) / per_instance,
            cpu_millicores: rate(cpu_usec, cpu_then) / 1000.0 / per_instance,
        };
        let desired = state.scale.desired(&metrics, live);
        let since_out = state.last_scale_out.map(|at| now.duration_since(at));
        match desired {
            Some(desired) if desired > live => {
                if since_out.is_none_or(|since| since >= state.scale.warmup) {
                    tracing::info!(service = %self.config.id, ?metrics, "scaling out to {desired} instances");
                    state.floor = state.floor.max(desired);
                    state.last_scale_out = Some(now);
                    self.start_kept_up(&mut state, desired as usize);
                }
            }
            _ => {
                let lower = desired.unwrap_or(state.scale.min);
                if lower < state.floor && since_out.is_none_or(|since| since >= state.scale.cooldown) {
                    state.floor = lower;
                    for instance in &state.instances {
                        instance.activity.notify_one();
                    }
                }
            }
        }
        live > 0 || state.waiting > 0 || state.floor > 0
    }

    /// Why its app stopped ([`Supervisor::stop`]), as a request for it is
    /// refused: `Some` once stopping, for good.
    pub fn stopping(&self) -> Option<WakeError> {
        self.stopped(&self.state.lock().expect("not poisoned"))
    }

    fn stopped(&self, state: &State) -> Option<WakeError> {
        let reason = state.stop_reason.clone()?;
        Some(WakeError::Stopping { service: self.config.id.clone(), reason })
    }

    pub fn config(&self) -> &Service {
        &self.config
    }

    /// Stops every instance of the service now (`instance stop`): they go
    /// to standby as after a cooldown, and the next request starts one
    /// again. Returns how many were stopped.
    pub fn stop_instances(&self, reason: &str) -> usize {
        let mut state = self.state.lock().expect("not poisoned");
        let mut stopped = 0;
        for instance in state.instances.iter_mut().filter(|i| i.phase != Phase::Stopping) {
            instance.stop(reason);
            stopped += 1;
        }
        stopped
    }

    /// Starts an instance if none is alive or starting (`instance start`),
    /// or thaws a paused one. Returns whether it did anything.
    pub fn start_one(self: &Arc<Self>) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        if let Some(index) = state.instances.iter().position(|i| i.phase == Phase::Paused) {
            if !self.thaw(&mut state, index) {
                return false;
            }
            let thawed = &mut state.instances[index];
            thawed.idle_since = Some(TokioInstant::now());
            thawed.activity.notify_one();
            return true;
        }
        if state.live() > 0 || !self.may_start(&state) {
            return false;
        }
        self.start_instance(&mut state)
    }

    /// What starts an instance listening on `port`.
    fn spawn_request(&self, port: u16) -> Spawn {
        Spawn {
            log: self.log.clone(),
            clean_env: self.processes.clean_env,
            ..Instance::spawn_request(&self.key, &self.config, port)
        }
    }

    /// A lease on a ready instance, starting or thawing instances as needed.
    /// Cancel-safe: a caller that stops waiting (its client hung up) gives
    /// its place among the waiting requests back.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, WakeError> {
        // The common case, a ready instance with room, needs no waiting list.
        if let Some(lease) = self.try_lease(&mut self.state.lock().expect("not poisoned")) {
            return Ok(lease);
        }
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        let mut place: Option<WaitingPlace> = None;
        // Whether an instance was starting while this request waited.
        let mut saw_start = false;
        let mut blocked_on_port;
        let mut blocked_on_quota;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the state is read, so no change is missed.
            notified.as_mut().enable();
            room.as_mut().enable();
            // Room another app's instance gives back wakes this one too;
            // registered now for the same reason.
            let quota_watch = self.processes.quotas.as_ref().map(|quotas| quotas.watch());
            let quota_freed = quota_watch.as_ref().map(|(_, freed)| freed.notified());
            tokio::pin!(quota_freed);
            if let Some(freed) = quota_freed.as_mut().as_pin_mut() {
                freed.enable();
            }
            {
                let mut state = self.state.lock().expect("not poisoned");
                if let Some(mut lease) = self.try_lease(&mut state) {
                    if let Some(place) = place.take() {
                        place.leave(&mut state);
                    }
                    if saw_start && lease.start == Start::Warm {
                        lease.start = Start::Cold;
                    }
                    return Ok(lease);
                }
                if let Some(error) = self.stopped(&state) {
                    if let Some(place) = place.take() {
                        place.leave(&mut state);
                    }
                    return Err(error);
                }
                let starting = state.instances.iter().any(|i| i.phase == Phase::Starting);
                if let Some((reason, until)) = &state.failing
                    && !starting
                {
                    let now = Instant::now();
                    if now < *until {
                        let error = WakeError::Failing {
                            service: self.config.id.clone(),
                            reason: reason.clone(),
                            retry_after: *until - now,
                        };
                        if let Some(place) = place.take() {
                            place.leave(&mut state);
                        }
                        return Err(error);
                    }
                    state.failing = None;
                }
                if place.is_none() {
                    let limit = WAKE_BUFFER * state.scale.max.max(1) as usize;
                    if state.waiting >= limit {
                        return Err(WakeError::Overloaded { service: self.config.id.clone(), held: limit });
                    }
                    place = Some(WaitingPlace::take(self, &mut state));
                }
                // Start what the demand needs and no more: one instance holds
                // `target_concurrency` requests, starting ones included.
                let in_flight: usize = state.instances.iter().map(|i| i.in_flight as usize).sum();
                let demand = in_flight + state.waiting;
                while demand > state.live() * self.config.target_concurrency as usize
                    && state.live() < state.scale.max as usize
                    && self.may_start(&state)
                {
                    if !self.start_instance(&mut state) {
                        break;
                    }
                }
                blocked_on_port = self.blocked_on_port(&state);
                blocked_on_quota = state.quota_blocked.is_some();
                saw_start |= state.instances.iter().any(|i| i.phase == Phase::Starting);
            }
            let wake_at = if blocked_on_port { deadline.min(TokioInstant::now() + PORT_RECHECK) } else { deadline };
            let quota_freed = async {
                match quota_freed.as_mut().as_pin_mut() {
                    Some(freed) if blocked_on_quota => freed.await,
                    _ => std::future::pending().await,
                }
            };
            let woken = tokio::time::timeout_at(wake_at, async {
                tokio::select! {
                    () = notified => {}
                    () = room => {}
                    () = quota_freed => {}
                }
            });
            if woken.await.is_err() && TokioInstant::now() >= deadline {
                let mut state = self.state.lock().expect("not poisoned");
                if let Some(place) = place.take() {
                    place.leave(&mut state);
                }
                if let Some(lease) = self.try_lease(&mut state) {
                    return Ok(lease);
                }
                if let Some(exceeded) = state.quota_blocked.clone() {
                    return Err(WakeError::Quota { service: self.config.id.clone(), exceeded });
                }
                return Err(WakeError::Timeout { service: self.config.id.clone(), limit: self.config.ready_timeout });
            }
        }
    }

    /// Whether a new instance may start now: not while shutting down, and,
    /// for a fixed port, not until the previous instance is reaped, its own
    /// or another app's (two processes must never share the port).
    fn may_start(&self, state: &State) -> bool {
        state.stop_reason.is_none()
            && self.config.port.is_none_or(|port| state.instances.is_empty() && !self.processes.port_held(port))
    }

    /// Whether this service waits for another app's instance to give its
    /// fixed port back (a redeploy on the same port): nothing notifies it
    /// across apps, so the waiter looks again shortly.
    fn blocked_on_port(&self, state: &State) -> bool {
        self.config.port.is_some_and(|port| state.instances.is_empty() && self.processes.port_held(port))
    }

    /// The least loaded ready instance with room, or a paused one thawed.
    fn try_lease(self: &Arc<Self>, state: &mut State) -> Option<Lease> {
        let target = self.config.target_concurrency;
        let mut start = Start::Warm;
        let instance = match state
            .instances
            .iter_mut()
            .filter(|i| i.phase == Phase::Ready && i.in_flight < target)
            .min_by_key(|i| i.in_flight)
        {
            Some(instance) => instance,
            None => {
                let index = state.instances.iter().position(|i| i.phase == Phase::Paused)?;
                if !self.thaw(state, index) {
                    return None;
                }
                start = Start::Thaw;
                &mut state.instances[index]
            }
        };
        instance.in_flight += 1;
        instance.idle_since = None;
        self.scale_event();
        Some(Lease { service: self.clone(), number: instance.number, addr: instance.addr(), start })
    }

    /// Thaws the paused instance at `index`, once admitted under the
    /// quotas again (a paused instance is in standby and counts for
    /// nothing); false, and the quota noted, if one is full.
    fn thaw(&self, state: &mut State, index: usize) -> bool {
        if let Some(quotas) = &self.processes.quotas {
            match quotas.try_admit(self.config.memory) {
                Ok(permit) => state.instances[index].quota = Some(permit),
                Err(exceeded) => {
                    state.quota_blocked = Some(exceeded);
                    return false;
                }
            }
        }
        state.quota_blocked = None;
        let started = Instant::now();
        state.instances[index].thaw();
        if let Some(metrics) = &self.metrics {
            metrics.wake(dormouse_telemetry::Wake::Thaw, started.elapsed());
        }
        true
    }

    /// Starts instances until `wanted` are live (or none may start): ones
    /// kept up by the minimum or a policy, not started for requests, so
    /// they get no start-up grace.
    fn start_kept_up(self: &Arc<Self>, state: &mut State, wanted: usize) {
        while state.live() < wanted && self.may_start(state) {
            if !self.start_instance(state) {
                break;
            }
            if let Some(started) = state.instances.last_mut() {
                started.on_demand = false;
            }
        }
    }

    /// Adds one more instance, whose task spawns its process; false (and
    /// the service failing) if it cannot even be set up (its fixed port is
    /// taken, no port is free).
    fn start_instance(self: &Arc<Self>, state: &mut State) -> bool {
        let quota = match &self.processes.quotas {
            Some(quotas) => match quotas.try_admit(self.config.memory) {
                Ok(permit) => Some(permit),
                Err(exceeded) => {
                    // Not a failure of the service: the request waits for
                    // room, and says which quota was full if none comes.
                    state.quota_blocked = Some(exceeded);
                    return false;
                }
            },
            None => None,
        };
        state.quota_blocked = None;
        state.next_number += 1;
        state.starts += 1;
        match Instance::new(&self.key, &self.config, state.next_number) {
            Ok((mut instance, request)) => {
                let request = Spawn { log: self.log.clone(), clean_env: self.processes.clean_env, ..request };
                instance.quota = quota;
                if let Some(port) = self.config.port {
                    self.processes.hold_port(port);
                }
                let number = instance.number;
                let stop = instance.stop_signal.clone();
                let port = instance.port;
                state.instances.push(instance);
                self.processes.runtime.spawn(self.clone().run_instance(number, port, request, stop));
                true
            }
            Err(error) => {
                let reason = format!("cannot start `{}`: {error}", self.config.command[0]);
                self.fail(state, reason);
                false
            }
        }
    }

    fn fail(&self, state: &mut State, reason: String) {
        let delay = state.backoff.fail(Instant::now());
        tracing::warn!(service = %self.config.id, "{reason}; next start in {delay:?}");
        state.failing = Some((reason, Instant::now() + delay));
        self.changed.notify_waiters();
    }

    /// Owns one instance's process from spawn to reaping.
    async fn run_instance(self: Arc<Self>, number: u64, port: u16, request: Spawn, stop: Arc<Notify>) {
        let started = Instant::now();
        let program = request.program.clone();
        let (mut child, cgroup) = match self.processes.spawner.spawn(request).await {
            Ok(spawned) => spawned,
            Err(error) => {
                let mut state = self.state.lock().expect("not poisoned");
                state.instances.retain(|i| i.number != number);
                self.release_fixed_port();
                if state.stop_reason.is_none() {
                    self.fail(&mut state, format!("cannot start `{program}`: {error}"));
                }
                drop(state);
                self.changed.notify_waiters();
                return;
            }
        };
        let pid = child.id();
        if let Some(instance) =
            self.state.lock().expect("not poisoned").instances.iter_mut().find(|i| i.number == number)
        {
            instance.pid = pid;
            instance.cgroup = cgroup;
        }
        tracing::info!(service = %self.config.id, instance = number, pid, "starting");
        let ready = instance::wait_ready(port, self.config.ready_path.as_deref());
        // Stopped on request (`instance stop`, a retiring app) is not a
        // failure of the service: no back-off for it.
        let mut asked_to_stop = false;
        let mut outcome = tokio::select! {
            status = child.wait() => Err(format!("exited before it was ready ({status})")),
            ready = tokio::time::timeout(self.config.ready_timeout, ready) => {
                ready.map_err(|_| format!("not ready within {:?}", self.config.ready_timeout))
            }
            () = stop.notified() => {
                asked_to_stop = true;
                Err(self.stop_reason(number))
            }
        };
        // Whatever answered must be this instance's own listener: another
        // process may hold a fixed port, or take a picked one first.
        if outcome.is_ok() {
            let pids = self.instance_pids(number, Some(pid));
            if !instance::owns_listener(port, &pids) {
                outcome = Err(format!("port {port} is held by a process this instance did not start"));
            }
        }
        match outcome {
            Ok(()) => {
                let boot = started.elapsed();
                tracing::info!(service = %self.config.id, instance = number, "ready in {boot:.1?}");
                if let Some(metrics) = &self.metrics {
                    metrics.wake(dormouse_telemetry::Wake::ColdStart, boot);
                }
                let mut state = self.state.lock().expect("not poisoned");
                state.backoff.succeed(Instant::now());
                state.failing = None;
                if let Some(instance) = state.instances.iter_mut().find(|i| i.number == number) {
                    instance.phase = Phase::Ready;
                    instance.boot_time = Some(boot);
                    // An instance nobody came for still goes to standby.
                    if instance.in_flight == 0 {
                        instance.idle_since = Some(TokioInstant::now());
                    }
                }
                // Its places go to the requests held longest, one wake-up
                // each, in the order they came (waking all would let them
                // race for it).
                let places = state.waiting.min(self.config.target_concurrency as usize);
                drop(state);
                for _ in 0..places {
                    self.room.notify_one();
                }
            }
            Err(reason) => {
                let mut state = self.state.lock().expect("not poisoned");
                if let Some(instance) = state.instances.iter_mut().find(|i| i.number == number) {
                    instance.stop(&reason);
                }
                // The loop below terminates it: a stop that came while it was
                // starting was consumed above, so signal again.
                stop.notify_one();
                if !asked_to_stop && state.stop_reason.is_none() {
                    self.fail(&mut state, reason);
                }
            }
        }

        // Serve until stopped or the process exits on its own, putting the
        // instance on standby whenever it stays idle for the cooldown.
        let activity = self.activity_signal(number);
        let group = rustix::process::Pid::from_raw(pid as i32);
        let reason = loop {
            let idle_wait = self.idle_check(number);
            tokio::select! {
                status = child.wait() => {
                    // What the leader started goes with it.
                    let mut out_of_memory = false;
                    self.with_cgroup(number, |cgroup| {
                        out_of_memory = cgroup.is_some_and(|cgroup| cgroup.oom_kills() > 0);
                        instance::kill_rest(group, cgroup);
                    });
                    break if out_of_memory {
                        format!("killed for passing its memory size of {} MiB ({status})", self.config.memory >> 20)
                    } else {
                        format!("exited on its own ({status})")
                    };
                }
                () = stop.notified() => {
                    let reason = self.stop_reason(number);
                    let cgroup = self.take_cgroup(number);
                    instance::terminate(&mut child, cgroup.as_ref(), self.config.stop_timeout).await;
                    if let Some(cgroup) = cgroup {
                        retire(cgroup).await;
                    }
                    break reason;
                }
                () = activity.notified() => {}
                () = tokio::time::sleep(idle_wait.unwrap_or(Duration::from_secs(86_400))) => {}
            }
        };
        if let Some(cgroup) = self.take_cgroup(number) {
            retire(cgroup).await;
        }
        let mut state = self.state.lock().expect("not poisoned");
        let mut went_on_its_own = false;
        if let Some(position) = state.instances.iter().position(|i| i.number == number) {
            let instance = state.instances.remove(position);
            // Only one that had been up a while: an instance that keeps
            // crashing soon after its start must not be restarted in a loop.
            went_on_its_own = instance.stop_reason.is_none() && instance.started_at.elapsed() >= Duration::from_secs(5);
            self.release_fixed_port();
            tracing::info!(service = %self.config.id, instance = number, "stopped: {reason}");
            if state.stops.len() == status::STOPS_KEPT {
                state.stops.pop_front();
            }
            state.stops.push_back(status::StopRecord {
                instance: number,
                reason: instance.stop_reason.unwrap_or(reason),
                served: instance.served,
                boot_time_ms: instance.boot_time.map(|d| d.as_secs_f64() * 1000.0),
            });
        }
        // An instance the minimum keeps up that went away on its own (it
        // crashed, the process helper was killed) is replaced at once,
        // unless the service is failing (its back-off decides) or going
        // away; one stopped on purpose (`instance stop`) is not.
        if went_on_its_own && state.stop_reason.is_none() && state.failing.is_none() {
            let wanted = state.min_up();
            self.start_kept_up(&mut state, wanted);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Gives the fixed port back once the instance holding it is reaped
    /// (a fixed-port service has one instance at a time).
    fn release_fixed_port(&self) {
        if let Some(port) = self.config.port {
            self.processes.release_port(port);
        }
    }

    /// The processes of an instance: its cgroup's, or its leader alone.
    fn instance_pids(&self, number: u64, leader: Option<u32>) -> Vec<u32> {
        let state = self.state.lock().expect("not poisoned");
        match state.instances.iter().find(|i| i.number == number).and_then(|i| i.cgroup.as_ref()) {
            Some(cgroup) => cgroup.pids(),
            None => leader.into_iter().collect(),
        }
    }

    fn with_cgroup(&self, number: u64, act: impl FnOnce(Option<&cgroup::Cgroup>)) {
        let state = self.state.lock().expect("not poisoned");
        act(state.instances.iter().find(|i| i.number == number).and_then(|i| i.cgroup.as_ref()));
    }

    /// Takes an instance's cgroup out of its state once it is stopping, so
    /// that its clean-up can wait without the service's lock.
    fn take_cgroup(&self, number: u64) -> Option<cgroup::Cgroup> {
        let mut state = self.state.lock().expect("not poisoned");
        state.instances.iter_mut().find(|i| i.number == number).and_then(|i| i.cgroup.take())
    }

    fn stop_reason(&self, number: u64) -> String {
        let state = self.state.lock().expect("not poisoned");
        state.instances.iter().find(|i| i.number == number).and_then(|i| i.stop_reason.clone()).unwrap_or_default()
    }

    fn activity_signal(&self, number: u64) -> Arc<Notify> {
        let state = self.state.lock().expect("not poisoned");
        state.instances.iter().find(|i| i.number == number).map(|i| i.activity.clone()).unwrap_or_default()
    }

    /// Puts the instance on standby if it has been idle for the cooldown;
    /// otherwise returns how long until it would have been, if it is idle.
    fn idle_check(&self, number: u64) -> Option<Duration> {
        let mut state = self.state.lock().expect("not poisoned");
        let awake = state.instances.iter().filter(|i| i.phase == Phase::Ready).count();
        let min = state.min_up();
        let cooldown = state.scale.cooldown;
        let instance = state.instances.iter_mut().find(|i| i.number == number)?;
        instance.watching = false;
        if instance.phase != Phase::Ready {
            return None;
        }
        let Some(idle_since) = instance.idle_since.filter(|_| instance.in_flight == 0) else {
            // Busy: an idleness that begins from now on cannot pass its
            // cooldown before one cooldown from now, so that is when to look
            // again (and the end of each request need not wake this task).
            instance.watching = true;
            return Some(cooldown.max(dormouse_manifest::MIN_COOLDOWN));
        };
        let decision = idle::decide(&idle::Clock {
            idle_since,
            started_at: instance.started_at,
            served: instance.served,
            on_demand: instance.on_demand,
            cooldown,
            ready_timeout: self.config.ready_timeout,
            awake,
            min,
        });
        match decision {
            idle::Decision::Wait(duration) => {
                instance.watching = true;
                return Some(duration);
            }
            idle::Decision::Stay => return None,
            idle::Decision::Standby => {}
        }
        match self.config.standby {
            Standby::Pause => instance.freeze(),
            Standby::Stop => instance.stop("idle"),
        }
        None
    }
}

/// A service's scaler: applies its step policies on every lease event and
/// every [`scale::TICK`] while it has instances; with none, it waits for an
/// event (no wake-ups while the service sleeps). Ends with the service or
/// its policies.
async fn scaler(service: std::sync::Weak<ServiceHandle>, events: Arc<Notify>) {
    loop {
        let busy = {
            let Some(service) = service.upgrade() else { return };
            {
                // Under the lock `set_scale` takes, so that policies set just
                // now are not left without a scaler.
                let mut state = service.state.lock().expect("not poisoned");
                if state.stop_reason.is_some() || state.scale.policies.is_empty() {
                    state.scaler_running = false;
                    return;
                }
            }
            service.evaluate()
        };
        if busy {
            tokio::select! {
                () = events.notified() => {}
                () = tokio::time::sleep(scale::TICK) => {}
            }
        } else {
            events.notified().await;
        }
    }
}

/// Empties and removes an instance's cgroup, off the async threads (it may
/// wait a moment for the kernel).
async fn retire(cgroup: cgroup::Cgroup) {
    let _ = tokio::task::spawn_blocking(move || cgroup.retire()).await;
}
