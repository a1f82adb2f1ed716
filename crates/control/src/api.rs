//! The control API's wire types: what goes over the socket as JSON, kept apart
//! from the daemon's own state (`crate::state`) and the runtime's types, so
//! that either can change without changing the API. `openapi.json` beside
//! this crate describes the same shapes; a test holds the two together.

use serde::{Deserialize, Serialize};

/// The API's version prefix: every path starts with it.
pub const PREFIX: &str = "/v1";

/// Every error: a status and this body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, naming the offending value (lowercase, one line).
    pub message: String,
}

/// One deployed app (`GET /v1/apps`, `GET /v1/apps/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppInfo {
    /// The app's name: its host label (`<name>.<domain>`).
    pub name: String,
    /// Identifies this deployment: changes with every deploy.
    pub id: String,
    /// 1 for the first deploy, one more for each after it.
    pub version: u64,
    /// `running` while any of its instances is alive, `standby` otherwise.
    pub state: String,
    /// Where it answers on the public listener.
    pub url: String,
    pub routes: Vec<RouteInfo>,
    /// Whether idle service instances go to standby (`deploy -0`).
    pub scale_to_zero: bool,
    /// The content hash (BLAKE3, hex) of the bundle it runs from.
    pub bundle: String,
    /// Seconds since the Unix epoch.
    pub deployed_at: u64,
    /// Requests in flight now.
    pub in_flight: usize,
}

/// A public route of an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Spin's route pattern, e.g. `/api/...`.
    pub route: String,
    /// The component or service id it goes to.
    pub target: String,
    /// `component` or `service`.
    pub kind: String,
}

/// What a deploy did (`PUT /v1/apps/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployReply {
    pub app: AppInfo,
    /// Preparing grants and compiling (or loading from the compile cache)
    /// every component, in milliseconds.
    pub load_ms: f64,
    /// For an app that keeps an instance up (deployed without `-0`), its
    /// first instance's start to ready, in milliseconds; `null` for one in
    /// standby (its boot happens at its first request).
    pub boot_ms: Option<f64>,
    /// Each instance's memory size, in bytes: the first service's, or for
    /// an app of components only, their linear-memory cap.
    pub memory_bytes: u64,
}

/// One row of `instance ls` (`GET /v1/instances`): a component, whose
/// instances live only while requests are in flight, or one service
/// instance (or, with none alive, the service in standby).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The component or service id, with the instance number for a live
    /// service instance (`web-3`).
    pub name: String,
    pub app: String,
    /// `component` or `service`.
    pub kind: String,
    /// `standby`, `starting`, `running`, `paused`, `stopping` or `failing`.
    pub state: String,
    /// Start to ready, in milliseconds (service instances).
    pub boot_time_ms: Option<f64>,
    /// Memory charged to the instance's cgroup (services), or the linear
    /// memory cap of one instance (components), in bytes.
    pub memory_bytes: Option<u64>,
    /// Requests served: by this service instance, or instances made of this
    /// component (one per request).
    pub requests: u64,
    /// Requests in flight now (for a component: its live instances).
    pub in_flight: u64,
    /// Since the instance started, in milliseconds (service instances).
    pub uptime_ms: Option<f64>,
    /// Why the service's last instance stopped, when none is alive.
    pub stop_reason: Option<String>,
    /// The leader process and the port it listens on (service instances).
    pub pid: Option<u32>,
    pub port: Option<u16>,
}

/// An app's scale settings (`GET /v1/apps/{name}/scale`), applied to each of
/// its services.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleInfo {
    /// Instances kept up however idle (0: scale to zero).
    pub min_size: u32,
    /// Instances at most.
    pub max_size: u32,
    /// After a scale-out, how long before another, in milliseconds.
    pub warmup_ms: u64,
    /// After a scale-out, how long before a scale-in; also the idle time
    /// before standby, in milliseconds.
    pub cooldown_ms: u64,
    pub policies: Vec<PolicyInfo>,
}

/// `scale init` (`PUT /v1/apps/{name}/scale`); a setting left out keeps
/// its current value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleInit {
    pub min_size: Option<u32>,
    pub max_size: Option<u32>,
    pub warmup_ms: Option<u64>,
    pub cooldown_ms: Option<u64>,
}

/// A step policy (`PUT /v1/apps/{name}/scale/policies/{policy}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyInfo {
    /// Set from the path on `PUT`.
    #[serde(default)]
    pub name: String,
    /// `cpu` (millicores per instance), `inflight` (requests in flight per
    /// instance) or `rps` (requests answered per second per instance).
    pub metric: String,
    /// `change`, `percent` or `exact`.
    pub adjustment: String,
    /// KraftCloud's `LO:HI/ADJ`, e.g. `600:800/50`, `800:/100`, `:50/-50`.
    pub steps: Vec<String>,
}

/// `dormouse quotas` (`GET /v1/quotas`): what is in use against each limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuotaInfo {
    /// Service instances starting or running, plus component instances
    /// handling a request. Standby counts for nothing.
    pub active_instances: QuotaUsage,
    /// Instances that exist, in standby too: one per component, and per
    /// service its live instances (at least one).
    pub total_instances: QuotaUsage,
    /// The memory sizes of the active instances, in bytes.
    pub active_memory_bytes: QuotaUsage,
    pub apps: QuotaUsage,
    /// The most instances `scale init --max-size` may give a service.
    pub max_instances_per_service: u32,
    /// Whether apps may scale to zero (`deploy -0`).
    pub scale_to_zero: bool,
}

/// One quota: how much is used, and the limit (`null`: none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuotaUsage {
    pub used: u64,
    pub limit: Option<u64>,
}
