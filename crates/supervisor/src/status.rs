//! What `/.well-known/dormouse/services` reports: the wire form, kept apart
//! from the supervisor's own state.

use serde::Serialize;

use crate::instance::Phase;
use crate::{ServiceHandle, Supervisor};

/// Stop records kept per service.
pub const STOPS_KEPT: usize = 20;

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub id: String,
    /// `standby` (no instance), `starting`, `ready`, `paused`, `stopping` or
    /// `failing`.
    pub state: &'static str,
    pub starts: u64,
    pub waiting: usize,
    pub failing: Option<String>,
    pub instances: Vec<InstanceStatus>,
    pub stops: Vec<StopRecord>,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub instance: u64,
    pub pid: u32,
    pub port: u16,
    pub state: &'static str,
    pub in_flight: u32,
    pub served: u64,
    pub boot_time_ms: Option<f64>,
    pub uptime_ms: f64,
    /// How a pause freezes it: `cgroup-v2`, or `sigstop` where the host
    /// gives dormouse no cgroup.
    pub freezer: &'static str,
    /// Memory charged to the instance's cgroup, in bytes (see
    /// `Cgroup::memory_bytes`); absent without a cgroup.
    pub memory_bytes: Option<u64>,
    /// CPU time its processes used so far, in milliseconds; absent without
    /// a cgroup.
    pub cpu_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StopRecord {
    pub instance: u64,
    pub reason: String,
    pub served: u64,
    pub boot_time_ms: Option<f64>,
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Starting => "starting",
        Phase::Ready => "ready",
        Phase::Paused => "paused",
        Phase::Stopping => "stopping",
    }
}

impl ServiceHandle {
    pub fn status(&self) -> ServiceStatus {
        let state = self.state.lock().expect("not poisoned");
        let has = |phase| state.instances.iter().any(|i| i.phase == phase);
        let summary = if has(Phase::Ready) {
            "ready"
        } else if has(Phase::Starting) {
            "starting"
        } else if has(Phase::Paused) {
            "paused"
        } else if has(Phase::Stopping) {
            "stopping"
        } else if state.failing.is_some() {
            "failing"
        } else {
            "standby"
        };
        ServiceStatus {
            id: self.config.id.clone(),
            state: summary,
            starts: state.starts,
            waiting: state.waiting,
            failing: state.failing.as_ref().map(|(reason, _)| reason.clone()),
            instances: state
                .instances
                .iter()
                .map(|i| InstanceStatus {
                    instance: i.number,
                    pid: i.pid,
                    port: i.port,
                    state: phase_name(i.phase),
                    in_flight: i.in_flight,
                    served: i.served,
                    boot_time_ms: i.boot_time.map(|d| d.as_secs_f64() * 1000.0),
                    uptime_ms: i.started_at.elapsed().as_secs_f64() * 1000.0,
                    freezer: i.freezer_name(),
                    memory_bytes: i.cgroup.as_ref().and_then(|c| c.memory_bytes()),
                    cpu_ms: i.cgroup.as_ref().and_then(|c| c.cpu_usec()).map(|usec| usec as f64 / 1000.0),
                })
                .collect(),
            stops: state.stops.iter().cloned().collect(),
        }
    }
}

/// A service's instances counted by phase, read without touching their
/// cgroups or processes: what a metrics scrape reads, however often.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub starting: usize,
    /// Ready, idle or busy.
    pub running: usize,
    pub paused: usize,
    pub stopping: usize,
    /// No instance, and starts are in back-off.
    pub failing: bool,
    /// Requests held for an instance.
    pub waiting: usize,
}

impl ServiceHandle {
    pub fn census(&self) -> Census {
        let state = self.state.lock().expect("not poisoned");
        let mut census = Census { waiting: state.waiting, ..Census::default() };
        for instance in &state.instances {
            match instance.phase {
                Phase::Starting => census.starting += 1,
                Phase::Ready => census.running += 1,
                Phase::Paused => census.paused += 1,
                Phase::Stopping => census.stopping += 1,
            }
        }
        census.failing = state.instances.is_empty() && state.failing.is_some();
        census
    }
}

impl Supervisor {
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services.iter().map(|s| s.status()).collect()
    }
}
