//! The resolved application: what the runtime runs, checked and with paths made
//! absolute. Built only by [`crate::load`]; the user's format lives in `raw`.

use std::collections::BTreeMap;
use std::path::PathBuf;

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
    pub component: String,
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
