//! The resolved application: what the runtime runs, checked and with paths made
//! absolute. Built only by [`crate::load`]; the user's format lives in `raw`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::route::RoutePattern;

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub authors: Vec<String>,
    /// The manifest file the app came from.
    pub manifest_path: PathBuf,
    /// The directory relative paths in the manifest are resolved against.
    pub base_dir: PathBuf,
    pub variables: BTreeMap<String, Variable>,
    /// Components by id, in id order.
    pub components: BTreeMap<String, Component>,
    /// Services (`[service.<id>]`) by id.
    pub services: BTreeMap<String, Service>,
    /// HTTP triggers in manifest order.
    pub http_triggers: Vec<HttpTrigger>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub default: Option<String>,
    pub required: bool,
    pub secret: bool,
}

#[derive(Debug, Clone)]
pub struct HttpTrigger {
    pub id: String,
    pub route: Route,
    pub target: Target,
}

/// What a trigger's requests go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Component(String),
    Service(String),
}

impl Target {
    pub fn id(&self) -> &str {
        match self {
            Target::Component(id) | Target::Service(id) => id,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Route {
    Public(RoutePattern),
    /// Reachable only from other components of the app, never from outside.
    Private,
}

#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    pub description: Option<String>,
    /// Absolute path of the `.wasm` file.
    pub source: PathBuf,
    pub allowed_outbound_hosts: Vec<String>,
    pub key_value_stores: Vec<String>,
    /// Component variables: name → template (`"{{ app_var }}"` or a literal).
    pub variables: BTreeMap<String, String>,
    pub environment: BTreeMap<String, String>,
    pub files: Vec<FileMount>,
    pub exclude_files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMount {
    /// A glob relative to the app directory, mounted at the same relative path.
    Pattern(String),
    /// A file or directory (absolute source) mounted at `destination`.
    Placement { source: PathBuf, destination: String },
}

/// An ordinary HTTP server process, started on demand and put on standby when
/// idle. Every default below is DESIGN.md's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: String,
    /// argv; the first element is looked up on `PATH`.
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// Absolute; the app directory unless `workdir` says otherwise.
    pub workdir: PathBuf,
    /// The port the app listens on; `None`: dormouse picks a free one per
    /// instance and passes it in `PORT`.
    pub port: Option<u16>,
    /// Ready when `GET ready_path` answers below 500; `None`: when the port
    /// accepts a connection.
    pub ready_path: Option<String>,
    /// Idle time before standby. Default 1 s, at least 100 ms.
    pub cooldown: Duration,
    pub standby: Standby,
    /// Instances kept up even when idle. Default 0.
    pub min: u32,
    /// Instances at most. Default 1 (and 1 with a fixed `port`).
    pub max: u32,
    /// Requests in flight per instance before another is started. Default 10.
    pub target_concurrency: u32,
    /// Start to ready, at most. Default 30 s.
    pub ready_timeout: Duration,
    /// SIGTERM to SIGKILL. Default 10 s.
    pub stop_timeout: Duration,
    /// Each instance's memory size in bytes (`memory = "256MiB"`): the
    /// limit of its cgroup, and what it counts against the active memory
    /// quota while it runs. Default 256 MiB, at least 4 MiB.
    pub memory: u64,
}

/// What an idle instance becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standby {
    /// The process exits (SIGTERM, then SIGKILL); the next request starts a new one.
    Stop,
    /// The process group is frozen; the next request thaws it.
    Pause,
}
