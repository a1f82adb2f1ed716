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
//! Invariants: every instance is its own process group and every child is
//! reaped; no two waiting requests start two processes for one slot; a held
//! request is answered or refused (see [`WakeError`]) by the wake deadline;
//! this crate runs no wasm and knows nothing of HTTP routing.

mod backoff;
mod freezer;
mod idle;
mod instance;
pub mod status;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::time::Instant as TokioInstant;

use dormouse_manifest::model::{Service, Standby};
use tokio::sync::Notify;

pub use backoff::Backoff;
use instance::{Instance, Phase};

/// Requests a service may hold while it wakes, per instance it may start
/// (`max`); past it 503. Bounds what one cold service can take from the
/// gateway while letting a burst fill every instance a scale-out brings.
pub const WAKE_BUFFER: usize = 100;

/// Why a request for a service got no instance.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("service `{service}` did not become ready within {limit:?}")]
    Timeout { service: String, limit: Duration },
    #[error("service `{service}` is failing ({reason}); next start in {retry_after:?}")]
    Failing { service: String, reason: String, retry_after: Duration },
    #[error("service `{service}` already holds {held} requests while it wakes")]
    Overloaded { service: String, held: usize },
}

/// All services of an app.
pub struct Supervisor {
    services: Vec<Arc<ServiceHandle>>,
}

impl Supervisor {
    pub fn new(services: impl IntoIterator<Item = Service>) -> Supervisor {
        Supervisor { services: services.into_iter().map(ServiceHandle::new).collect() }
    }

    pub fn service(&self, id: &str) -> Option<&Arc<ServiceHandle>> {
        self.services.iter().find(|s| s.config.id == id)
    }

    pub fn services(&self) -> &[Arc<ServiceHandle>] {
        &self.services
    }

    /// Starts the `min` instances of every service.
    pub fn start(&self) {
        for service in &self.services {
            let mut state = service.state.lock().expect("not poisoned");
            while state.live() < service.config.min as usize {
                service.start_instance(&mut state);
            }
        }
    }

    /// Stops every instance (SIGTERM, SIGKILL after the stop timeout) and
    /// waits until all are reaped.
    pub async fn shutdown(&self) {
        for service in &self.services {
            service.shutting_down.store(true, std::sync::atomic::Ordering::Release);
            let mut state = service.state.lock().expect("not poisoned");
            for instance in &mut state.instances {
                instance.stop("dormouse shutting down");
            }
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
}

/// One service: its instances and the requests waiting for them.
pub struct ServiceHandle {
    config: Service,
    state: Mutex<State>,
    /// Notified on every state change that could let a waiting request go.
    changed: Notify,
    shutting_down: std::sync::atomic::AtomicBool,
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
}

impl State {
    /// Instances that are or will be able to serve.
    fn live(&self) -> usize {
        self.instances.iter().filter(|i| i.phase != Phase::Stopping).count()
    }
}

/// A request's claim on an instance: its address, held until the response is
/// over. Dropping the last lease of an instance starts its cooldown.
pub struct Lease {
    service: Arc<ServiceHandle>,
    number: u64,
    pub addr: std::net::SocketAddr,
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
            // The last lease starts the cooldown, kept by the instance's own task.
            instance.idle_since = Some(TokioInstant::now());
            instance.activity.notify_one();
        }
        // Room freed on an instance matters only to requests waiting for it.
        let someone_waits = state.waiting > 0;
        drop(state);
        if someone_waits {
            self.service.changed.notify_waiters();
        }
    }
}

impl ServiceHandle {
    fn new(config: Service) -> Arc<ServiceHandle> {
        Arc::new(ServiceHandle {
            config,
            state: Mutex::default(),
            changed: Notify::new(),
            shutting_down: Default::default(),
        })
    }

    pub fn config(&self) -> &Service {
        &self.config
    }

    /// A lease on a ready instance, starting or thawing instances as needed.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, WakeError> {
        // The common case, a ready instance with room, needs no waiting list.
        if let Some(lease) = self.try_lease(&mut self.state.lock().expect("not poisoned")) {
            return Ok(lease);
        }
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        let mut counted = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so no change is missed.
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().expect("not poisoned");
                if let Some(lease) = self.try_lease(&mut state) {
                    if counted {
                        state.waiting -= 1;
                    }
                    return Ok(lease);
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
                        if counted {
                            state.waiting -= 1;
                        }
                        return Err(error);
                    }
                    state.failing = None;
                }
                if !counted {
                    let limit = WAKE_BUFFER * self.config.max as usize;
                    if state.waiting >= limit {
                        return Err(WakeError::Overloaded { service: self.config.id.clone(), held: limit });
                    }
                    state.waiting += 1;
                    counted = true;
                }
                // Start what the demand needs and no more: one instance holds
                // `target_concurrency` requests, starting ones included.
                let in_flight: usize = state.instances.iter().map(|i| i.in_flight as usize).sum();
                let demand = in_flight + state.waiting;
                while demand > state.live() * self.config.target_concurrency as usize
                    && state.live() < self.config.max as usize
                    && !self.shutting_down.load(std::sync::atomic::Ordering::Acquire)
                {
                    if !self.start_instance(&mut state) {
                        break;
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut state = self.state.lock().expect("not poisoned");
                state.waiting -= 1;
                if let Some(lease) = self.try_lease(&mut state) {
                    return Ok(lease);
                }
                return Err(WakeError::Timeout { service: self.config.id.clone(), limit: self.config.ready_timeout });
            }
        }
    }

    /// The least loaded ready instance with room, or a paused one thawed.
    fn try_lease(self: &Arc<Self>, state: &mut State) -> Option<Lease> {
        let target = self.config.target_concurrency;
        let instance = match state
            .instances
            .iter_mut()
            .filter(|i| i.phase == Phase::Ready && i.in_flight < target)
            .min_by_key(|i| i.in_flight)
        {
            Some(instance) => instance,
            None => {
                let paused = state.instances.iter_mut().find(|i| i.phase == Phase::Paused)?;
                paused.thaw();
                paused
            }
        };
        instance.in_flight += 1;
        instance.idle_since = None;
        Some(Lease { service: self.clone(), number: instance.number, addr: instance.addr() })
    }

    /// Spawns one more instance; false (and the service failing) if it could
    /// not even be spawned.
    fn start_instance(self: &Arc<Self>, state: &mut State) -> bool {
        state.next_number += 1;
        state.starts += 1;
        match Instance::spawn(&self.config, state.next_number) {
            Ok((instance, child)) => {
                tracing::info!(service = %self.config.id, instance = instance.number, pid = instance.pid, "starting");
                let number = instance.number;
                let stop = instance.stop_signal.clone();
                let port = instance.port;
                state.instances.push(instance);
                tokio::spawn(self.clone().run_instance(number, port, child, stop));
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

    /// Owns one instance's process from start to reaping.
    async fn run_instance(
        self: Arc<Self>,
        number: u64,
        port: u16,
        mut child: tokio::process::Child,
        stop: Arc<Notify>,
    ) {
        let started = Instant::now();
        let ready = instance::wait_ready(port, self.config.ready_path.as_deref());
        let outcome = tokio::select! {
            status = child.wait() => Err(format!("exited before it was ready ({})", describe(status))),
            ready = tokio::time::timeout(self.config.ready_timeout, ready) => {
                ready.map_err(|_| format!("not ready within {:?}", self.config.ready_timeout))
            }
            () = stop.notified() => Err("stopped while starting".to_owned()),
        };
        match outcome {
            Ok(()) => {
                let boot = started.elapsed();
                tracing::info!(service = %self.config.id, instance = number, "ready in {boot:.1?}");
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
                drop(state);
                self.changed.notify_waiters();
            }
            Err(reason) => {
                let mut state = self.state.lock().expect("not poisoned");
                if let Some(instance) = state.instances.iter_mut().find(|i| i.number == number) {
                    instance.stop(&reason);
                }
                if !self.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                    self.fail(&mut state, reason);
                }
            }
        }

        // Serve until stopped or the process exits on its own, putting the
        // instance on standby whenever it stays idle for the cooldown.
        let activity = self.activity_signal(number);
        let reason = loop {
            let idle_wait = self.idle_check(number);
            tokio::select! {
                status = child.wait() => break format!("exited on its own ({})", describe(status)),
                () = stop.notified() => {
                    let reason = self.stop_reason(number);
                    instance::terminate(&mut child, self.config.stop_timeout).await;
                    break reason;
                }
                () = activity.notified() => {}
                () = tokio::time::sleep(idle_wait.unwrap_or(Duration::from_secs(86_400))) => {}
            }
        };
        let mut state = self.state.lock().expect("not poisoned");
        if let Some(position) = state.instances.iter().position(|i| i.number == number) {
            let instance = state.instances.remove(position);
            instance.freezer.remove();
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
        drop(state);
        self.changed.notify_waiters();
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
        let min = self.config.min as usize;
        let instance = state.instances.iter_mut().find(|i| i.number == number)?;
        if instance.phase != Phase::Ready || instance.in_flight > 0 {
            return None;
        }
        let decision = idle::decide(&idle::Clock {
            idle_since: instance.idle_since?,
            started_at: instance.started_at,
            served: instance.served,
            cooldown: self.config.cooldown,
            ready_timeout: self.config.ready_timeout,
            awake,
            min,
        });
        match decision {
            idle::Decision::Wait(duration) => return Some(duration),
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

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("wait failed: {error}"),
    }
}
