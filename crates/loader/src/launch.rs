//! From a manifest to a running app: prepare its grants, load (compile or
//! take from the cache) and pre-instantiate its components, set up its
//! services' supervisor, and assemble the gateway's [`App`]. `dormouse up`
//! launches one app; the daemon launches one per deployed app, and a new
//! version of an app before the old one is retired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dormouse_gateway::{App, AppParts, Gateway};
use dormouse_supervisor::{Processes, Supervisor};
use dormouse_telemetry::{AppMetrics, TargetKind};
use dormouse_wasm_host::{ComponentSpec, LoadEvent};

use crate::{Options, prepare};

/// A launched app and what launching it cost.
pub struct Launched {
    pub app: Arc<App>,
    /// Preparing grants and loading every component (compiling those not in
    /// the cache).
    pub load_time: Duration,
    /// Key-value stores in use, by label, with where they live.
    pub stores: Vec<(String, String)>,
}

/// Launches `manifest` as the app `name` on `gateway`'s host, with its
/// services spawned through `processes`. Nothing is routed to it yet: the
/// caller puts it in the gateway's table. Blocking while components compile:
/// call it on a blocking thread, within the tokio runtime (Redis stores and
/// the supervisor need it).
pub fn launch(
    gateway: &Arc<Gateway>,
    processes: &Arc<Processes>,
    name: &str,
    manifest: &dormouse_manifest::App,
    options: &Options,
    on_event: &dyn Fn(LoadEvent<'_>),
) -> anyhow::Result<Launched> {
    let launched = (|| {
        let started = Instant::now();
        let prepared = prepare(manifest, options)?;
        let stores = prepared.stores.iter().map(|(label, store)| (label.clone(), store.describe())).collect();
        let metrics = gateway.config().metrics.as_ref().map(|metrics| metrics.app(name));
        let mut components = Vec::with_capacity(prepared.components.len());
        for component in &prepared.components {
            let spec = match &metrics {
                Some(metrics) => &counted(&component.spec, metrics),
                None => &component.spec,
            };
            components.push(gateway.host().load(spec, on_event)?);
        }
        let allowed_hosts = prepared.components.iter().map(|c| (c.spec.id.clone(), c.allowed_hosts.clone())).collect();
        let log = options.logs.as_ref().map(|dir| dir.join("services.log"));
        let supervisor = Supervisor::new(name, manifest.services.values().cloned(), processes, log, metrics.as_deref());
        let parts = AppParts {
            name: name.to_owned(),
            components,
            allowed_hosts,
            outbound: prepared.outbound.clone(),
            supervisor,
            keep: Box::new(prepared),
        };
        let app = App::new(gateway, manifest, parts)?;
        Ok(Launched { app, load_time: started.elapsed(), stores })
    })();
    // A failed launch leaves no series behind: a new app's go, a running
    // app keeps its own.
    if launched.is_err() {
        gateway.abandon_metrics(name);
    }
    launched
}

/// `spec` with its instances and key-value operations counted in the app's
/// `metrics`.
fn counted(spec: &ComponentSpec, metrics: &AppMetrics) -> ComponentSpec {
    let key_value = spec
        .key_value
        .iter()
        .map(|(label, store)| (label.clone(), store.with_metrics(metrics.store(label, store.backend()))))
        .collect();
    ComponentSpec { metrics: Some(metrics.target(&spec.id, TargetKind::Component)), key_value, ..spec.clone() }
}
