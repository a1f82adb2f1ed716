//! Turns a resolved app (the manifest model) plus its runtime configuration
//! and environment into what the runtime needs per component: a
//! [`ComponentSpec`] for the wasm host (environment, variables, key-value
//! stores, staged files) and the parsed `allowed_outbound_hosts` for the
//! gateway's outbound policy; then [`launch`] loads the components and
//! assembles the running app the gateway routes to.
//!
//! Invariants: every failure names the component and the thing it asked for
//! (a variable, a store label, a host); a component gets exactly what its
//! manifest entry grants and nothing else; nothing here runs guest code.

#![forbid(unsafe_code)]

mod files;
mod launch;

pub use launch::{Launched, launch};

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use dormouse_kv::Store;
use dormouse_manifest::runtime_config::KeyValueStore;
use dormouse_manifest::{AllowedHosts, App, RuntimeConfig, VariableError, Variables};
use dormouse_wasm_host::{ComponentSpec, Preopen};

/// The default store's file, under the state directory (Spin keeps its own
/// as `.spin/sqlite_key_value.db`).
pub const DEFAULT_KV_FILE: &str = "sqlite_key_value.db";

/// Environment variable prefixes a variable's value is read from, in order.
pub const VARIABLE_ENV_PREFIXES: [&str; 2] = ["DORMOUSE_VARIABLE_", "SPIN_VARIABLE_"];

/// Looks up an environment variable by name.
pub type EnvLookup = Box<dyn Fn(&str) -> Option<String>>;

/// Where things come from besides the manifest.
pub struct Options {
    /// Runtime state: the default key-value store and staged files
    /// (`.dormouse` beside the manifest, for `dormouse up`).
    pub state_dir: PathBuf,
    pub runtime_config: RuntimeConfig,
    /// `-e KEY=VALUE`, for every component; wins over the manifest.
    pub extra_env: Vec<(String, String)>,
    /// Looks up environment variables (the process's own, in the binary).
    pub env: EnvLookup,
    /// Where the app's output is captured (`services.log`, `guests.log`;
    /// see `dormouse_supervisor::logs`); `None` leaves it on dormouse's own
    /// stdout and stderr.
    pub logs: Option<PathBuf>,
    /// Where guests' lines go when `logs` is `None`; `None`: straight to
    /// dormouse's own stdout and stderr.
    pub guest_output: Option<std::sync::Arc<dyn dormouse_wasm_host::GuestOutput>>,
}

/// Guests' output lines, into the app's `guests.log`.
struct GuestLog(std::sync::Arc<std::sync::Mutex<dormouse_supervisor::logs::LogFile>>);

impl dormouse_wasm_host::GuestOutput for GuestLog {
    fn line(&self, component: &str, stream: &'static str, line: &[u8]) {
        self.0.lock().expect("not poisoned").write_line(component, stream, line);
    }
}

/// One component, ready to load.
pub struct Prepared {
    pub spec: ComponentSpec,
    pub allowed_hosts: AllowedHosts,
}

/// Everything prepared, plus what must live as long as the components do.
pub struct PreparedApp {
    pub components: Vec<Prepared>,
    /// The app's outbound policy, shared by its components' specs; the
    /// gateway fills it when it assembles the app.
    pub outbound: dormouse_wasm_host::OutboundSlot,
    /// Key-value stores in use, by label, for the banner.
    pub stores: BTreeMap<String, Store>,
    /// Staged files; removed when this is dropped.
    _staging: Option<tempfile::TempDir>,
}

/// Prepares every component of `app`. Key-value stores are opened here, so
/// this must run inside a tokio runtime (Redis connects lazily on it).
pub fn prepare(app: &App, options: &Options) -> anyhow::Result<PreparedApp> {
    let variables =
        Variables::resolve(app, |name| variable_from_env(&options.env, name)).map_err(|error| match error {
            VariableError::Missing(name) => anyhow::anyhow!(
                "variable `{name}` is required and has no value: set {0}{upper} (or {1}{upper}) or give it a `default`",
                VARIABLE_ENV_PREFIXES[1],
                VARIABLE_ENV_PREFIXES[0],
                upper = name.to_ascii_uppercase()
            ),
            other => other.into(),
        })?;

    let mut stores = BTreeMap::new();
    let mut staging = None;
    let outbound = dormouse_wasm_host::OutboundSlot::default();
    let output: Option<std::sync::Arc<dyn dormouse_wasm_host::GuestOutput>> = match &options.logs {
        Some(dir) => {
            let log = dormouse_supervisor::logs::LogFile::shared(&dir.join("guests.log"));
            Some(std::sync::Arc::new(GuestLog(log)))
        }
        None => options.guest_output.clone(),
    };
    let mut components = Vec::with_capacity(app.components.len());
    for component in app.components.values() {
        let id = &component.id;
        let variables_of = variables.for_component(component).with_context(|| format!("component `{id}`"))?;
        let hosts = variables.outbound_hosts(component).with_context(|| format!("component `{id}`"))?;
        let allowed_hosts = AllowedHosts::parse(&hosts).map_err(|why| anyhow::anyhow!("component `{id}`: {why}"))?;

        let mut key_value = Vec::new();
        for label in &component.key_value_stores {
            let store = match stores.get(label) {
                Some(store) => Store::clone(store),
                None => {
                    let store = open_store(label, options)
                        .with_context(|| format!("component `{id}` cannot open its key-value store `{label}`"))?;
                    stores.insert(label.clone(), store.clone());
                    store
                }
            };
            key_value.push((label.clone(), store));
        }

        let mut preopens = Vec::new();
        if !component.files.is_empty() {
            if staging.is_none() {
                let files_dir = options.state_dir.join("files");
                std::fs::create_dir_all(&files_dir)
                    .with_context(|| format!("cannot create `{}`", files_dir.display()))?;
                remove_stale_staging(&files_dir);
                let prefix = format!("staged-{}-", std::process::id());
                staging = Some(tempfile::Builder::new().prefix(&prefix).tempdir_in(&files_dir)?);
            }
            let target = staging.as_ref().expect("created above").path().join(id);
            std::fs::create_dir_all(&target)?;
            // dormouse's own state is never mounted: the whole state
            // directory, or, where it holds the app itself, what dormouse
            // keeps there.
            let state = &options.state_dir;
            let holds_app = app
                .base_dir
                .canonicalize()
                .ok()
                .zip(state.canonicalize().ok())
                .is_some_and(|(app_dir, state)| app_dir.starts_with(state));
            let mut hidden = vec![app.base_dir.join(".dormouse")];
            if holds_app {
                hidden.extend(["files", "cache", DEFAULT_KV_FILE].map(|name| state.join(name)));
            } else {
                hidden.push(state.clone());
            }
            let count = files::stage(&app.base_dir, &component.files, &component.exclude_files, &target, &hidden)
                .with_context(|| format!("component `{id}`: cannot stage its files"))?;
            tracing::debug!(component = %id, "{count} files mounted read-only at /");
            preopens.push(Preopen { host: target, guest: "/".to_owned() });
        }

        // The manifest's `environment`, then `-e` values, which win for a key
        // both set.
        let mut environment = component.environment.clone();
        environment.extend(options.extra_env.iter().cloned());

        let spec = ComponentSpec {
            id: id.clone(),
            source: component.source.clone(),
            environment: environment.into_iter().collect(),
            variables: variables_of,
            key_value,
            preopens,
            outbound: outbound.clone(),
            output: output.clone(),
            // Counted by `launch`, which knows the gateway's metrics.
            metrics: None,
        };
        components.push(Prepared { spec, allowed_hosts });
    }
    Ok(PreparedApp { components, outbound, stores, _staging: staging })
}

/// Removes trees staged by processes that are gone (killed before they could
/// clean up): `staged-<pid>-*` whose pid no longer runs.
fn remove_stale_staging(files_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(files_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("staged-")).and_then(|n| n.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn variable_from_env(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    VARIABLE_ENV_PREFIXES.iter().find_map(|prefix| env(&format!("{prefix}{upper}")))
}

fn open_store(label: &str, options: &Options) -> anyhow::Result<Store> {
    let store = match options.runtime_config.key_value_stores.get(label) {
        Some(KeyValueStore::Sqlite(path)) => Store::sqlite(path.as_deref(), label)?,
        Some(KeyValueStore::Redis { url }) => Store::redis(url)?,
        None if label == "default" => Store::sqlite(Some(&options.state_dir.join(DEFAULT_KV_FILE)), label)?,
        None => bail!(
            "no store is defined under that label: add `[key_value_store.{label}]` to a runtime config file (--runtime-config-file)"
        ),
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(dir: &std::path::Path, component: &str) -> App {
        let text = format!(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[variables]\ntoken = {{ required = true }}\nhost = {{ default = \"api.example.com\" }}\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\n{component}"
        );
        dormouse_manifest::parse(&text, std::path::Path::new("spin.toml"), dir).unwrap()
    }

    fn options(state_dir: &std::path::Path, env: &'static [(&'static str, &'static str)]) -> Options {
        Options {
            state_dir: state_dir.to_owned(),
            runtime_config: RuntimeConfig::default(),
            extra_env: vec![("MODE".into(), "cli".into())],
            env: Box::new(move |key| env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())),
            logs: None,
            guest_output: None,
        }
    }

    #[tokio::test]
    async fn grants_exactly_what_the_manifest_lists() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(
            dir.path(),
            "variables = { token = \"{{ token }}\", url = \"https://{{ host }}/v1\" }\nallowed_outbound_hosts = [\"https://{{ host }}\"]\nkey_value_stores = [\"default\"]\nenvironment = { MODE = \"manifest\", KEEP = \"1\" }\n",
        );
        let prepared = prepare(
            &app,
            &options(dir.path(), &[("SPIN_VARIABLE_TOKEN", "spin"), ("DORMOUSE_VARIABLE_TOKEN", "ours")]),
        )
        .unwrap();
        let component = &prepared.components[0];
        assert_eq!(component.spec.variables["token"], "ours", "DORMOUSE_VARIABLE_ wins over SPIN_VARIABLE_");
        assert_eq!(component.spec.variables["url"], "https://api.example.com/v1");
        assert!(component.allowed_hosts.allows("https", "api.example.com", None));
        assert!(!component.allowed_hosts.allows("https", "example.com", None));
        assert_eq!(component.spec.key_value.len(), 1);
        assert!(dir.path().join(DEFAULT_KV_FILE).exists(), "the default store is a SQLite file in the state dir");
        let env: BTreeMap<_, _> = component.spec.environment.iter().cloned().collect();
        assert_eq!((env["MODE"].as_str(), env["KEEP"].as_str()), ("cli", "1"));
        assert!(component.spec.preopens.is_empty());
    }

    #[tokio::test]
    async fn a_missing_variable_or_store_stops_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let error = prepare(&app(dir.path(), ""), &options(dir.path(), &[])).err().unwrap();
        assert_eq!(
            error.to_string(),
            "variable `token` is required and has no value: set SPIN_VARIABLE_TOKEN (or DORMOUSE_VARIABLE_TOKEN) or give it a `default`"
        );

        let app = app(dir.path(), "key_value_stores = [\"cache\"]\n");
        let error = prepare(&app, &options(dir.path(), &[("SPIN_VARIABLE_TOKEN", "x")])).err().unwrap();
        assert_eq!(
            format!("{error:#}"),
            "component `c` cannot open its key-value store `cache`: no store is defined under that label: add `[key_value_store.cache]` to a runtime config file (--runtime-config-file)"
        );
    }

    #[tokio::test]
    async fn staged_files_go_with_their_process() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("page.html"), "page").unwrap();
        // Left by a process that is gone (no pid is this large).
        let stale = dir.path().join("files/staged-4294967295-abc");
        std::fs::create_dir_all(&stale).unwrap();
        let app = app(dir.path(), "files = [\"*.html\"]\n");
        let prepared = prepare(&app, &options(dir.path(), &[("SPIN_VARIABLE_TOKEN", "x")])).unwrap();
        assert!(!stale.exists(), "a dead process's tree is removed");
        let preopen = &prepared.components[0].spec.preopens[0];
        assert_eq!(preopen.guest, "/");
        assert_eq!(std::fs::read_to_string(preopen.host.join("page.html")).unwrap(), "page");
        let staged = preopen.host.clone();
        drop(prepared);
        assert!(!staged.exists(), "the tree goes when the prepared app does");
    }
}
