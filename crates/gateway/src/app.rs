//! Running apps and the table the gateway routes across. An [`App`] is one
//! deployed manifest, assembled: its routes, loaded components, supervised
//! services and outbound policy, drained and dropped as a unit. The
//! [`AppTable`] maps a request's `Host` to an app; the gateway swaps whole
//! tables atomically, so a request sees one version of an app from routing
//! to the end of its response, and a deploy never drops one.
//!
//! Invariants: no lock on the request path (a table is read through
//! `arc_swap`); an app replaced or removed keeps serving the requests it
//! already has until they end (or the drain timeout), and only then are its
//! services stopped.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dormouse_manifest::AllowedHosts;
use dormouse_manifest::model::Target;
use dormouse_supervisor::Supervisor;
use dormouse_telemetry::{TargetKind, TargetMetrics};
use dormouse_wasm_host::{ComponentPre, OutboundSlot};
use tokio::sync::Notify;

use crate::router::{Router, Slot};
use crate::{Gateway, outbound};

/// One app, ready to serve.
pub struct App {
    name: String,
    router: Router,
    components: Vec<ComponentPre>,
    supervisor: Supervisor,
    /// Requests routed to this app whose responses have not ended.
    in_flight: AtomicUsize,
    /// Notified when `in_flight` drops to zero.
    idle: Notify,
    /// What must live as long as the app: staged files, open stores.
    keep: Box<dyn Any + Send + Sync>,
    /// Where its requests that no route took are counted (`target=""`).
    unrouted: Option<Arc<TargetMetrics>>,
}

/// What an [`App`] is assembled from.
pub struct AppParts {
    /// The app's name: its host label in the daemon (`<name>.<domain>`).
    pub name: String,
    /// Components loaded from the manifest; every routed component id must
    /// be among them.
    pub components: Vec<ComponentPre>,
    /// Each component's parsed `allowed_outbound_hosts`; a component without
    /// an entry may reach nothing.
    pub allowed_hosts: HashMap<String, AllowedHosts>,
    /// The slot the components' outbound requests go through; filled here.
    pub outbound: OutboundSlot,
    pub supervisor: Supervisor,
    pub keep: Box<dyn Any + Send + Sync>,
}

impl App {
    /// Assembles `manifest`'s app from `parts` and installs its outbound
    /// policy, which sends requests to the app itself back through `gateway`.
    /// Fails if a route names a component or service that was not loaded.
    pub fn new(gateway: &Arc<Gateway>, manifest: &dormouse_manifest::App, parts: AppParts) -> anyhow::Result<Arc<App>> {
        let AppParts { name, components, allowed_hosts, outbound, supervisor, keep } = parts;
        let slot_of = |target: &Target| match target {
            Target::Component(id) => components.iter().position(|c| c.id() == id).map(Slot::Component),
            Target::Service(id) => supervisor.services().iter().position(|s| &s.config().id == id).map(Slot::Service),
        };
        for trigger in &manifest.http_triggers {
            anyhow::ensure!(
                slot_of(&trigger.target).is_some(),
                "`{}` is routed but was not loaded",
                trigger.target.id()
            );
        }
        let router = Router::new(manifest, |target| slot_of(target).expect("checked above"));
        let unrouted =
            gateway.config.metrics.as_ref().map(|metrics| metrics.app(&name).target("", TargetKind::Unrouted));
        let counted = components
            .iter()
            .filter_map(|component| Some((component.id().to_owned(), component.metrics()?.clone())))
            .collect();
        let app = Arc::new(App {
            name,
            router,
            components,
            supervisor,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            keep,
            unrouted,
        });
        let policy = outbound::Outbound {
            gateway: Arc::downgrade(gateway),
            app: Arc::downgrade(&app),
            allowed: allowed_hosts,
            config: gateway.config.outbound.clone(),
            metrics: counted,
        };
        anyhow::ensure!(
            outbound.set(Arc::new(policy)).is_ok(),
            "app `{}`: its outbound policy is already set",
            app.name
        );
        Ok(app)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn components(&self) -> &[ComponentPre] {
        &self.components
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// What the app was assembled with to keep (`AppParts::keep`), for its
    /// embedder to look into (the daemon reads its key-value stores there).
    pub fn resources(&self) -> &(dyn Any + Send + Sync) {
        &*self.keep
    }

    /// Where requests of this app that no route took are counted, if
    /// metrics are kept.
    pub fn unrouted_metrics(&self) -> Option<&Arc<TargetMetrics>> {
        self.unrouted.as_ref()
    }

    /// Where a request for `path` is counted when it is refused before it is
    /// routed (a limit): its route's component or service, else the app's
    /// unrouted requests; `None` if no metrics are kept.
    pub(crate) fn counted_for(&self, path: &str) -> Option<Arc<TargetMetrics>> {
        let unrouted = self.unrouted.as_ref()?;
        let normalized = crate::router::normalize_path(path);
        let counted = match self.router.route(normalized.as_deref().unwrap_or(path)) {
            Some((entry, _)) => match entry.target {
                Slot::Component(index) => self.components[index].metrics(),
                Slot::Service(index) => self.supervisor.services()[index].metrics(),
            },
            None => None,
        };
        Some(counted.unwrap_or(unrouted).clone())
    }

    /// Requests routed to this app whose responses have not ended.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Starts each service's minimum instances.
    pub fn start(&self) {
        self.supervisor.start();
    }

    /// Waits until no request is in flight, at most `timeout`, then stops
    /// every service instance for `reason` and waits until they are reaped.
    /// Call once the app is out of the table: nothing new reaches it.
    /// Returns whether the requests ended in time.
    pub async fn retire(&self, timeout: Duration, reason: &str) -> bool {
        let drained = tokio::time::timeout(timeout, async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight() == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await
        .is_ok();
        self.supervisor.stop(reason).await;
        drained
    }
}

/// A request's mark on its app, held until its response ends: what
/// [`App::retire`] waits for.
pub(crate) struct AppGuard(pub Arc<App>);

impl AppGuard {
    pub fn new(app: Arc<App>) -> AppGuard {
        app.in_flight.fetch_add(1, Ordering::AcqRel);
        AppGuard(app)
    }
}

impl Drop for AppGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Which app a request is for.
#[derive(Default, Clone)]
pub struct AppTable {
    /// `dormouse up`: this app answers whatever the `Host`.
    single: Option<Arc<App>>,
    /// The daemon: `<name>.<domain>` is the app `name`.
    domain: Option<String>,
    by_name: HashMap<String, Arc<App>>,
}

/// Why a request's `Host` names no app.
#[derive(Debug, PartialEq, Eq)]
pub enum Unrouted {
    /// Under the domain, but no app has that name: 404.
    NoApp(String),
    /// Not under the domain at all: 421 Misdirected Request (RFC 9110
    /// §15.5.20), the server is not configured for that authority.
    OtherHost { domain: String },
}

impl AppTable {
    /// A table that routes every request to `app`.
    pub fn single(app: Arc<App>) -> AppTable {
        AppTable { single: Some(app), ..AppTable::default() }
    }

    /// An empty table that routes `<name>.<domain>` to the app `name`.
    pub fn for_domain(domain: &str) -> AppTable {
        AppTable { domain: Some(domain.trim_matches('.').to_ascii_lowercase()), ..AppTable::default() }
    }

    /// The same table with `app` added or replacing the app of its name,
    /// and the app it replaced.
    pub fn with(&self, app: Arc<App>) -> (AppTable, Option<Arc<App>>) {
        let mut table = self.clone();
        let old = table.by_name.insert(app.name.clone(), app);
        (table, old)
    }

    /// The same table without the app `name`, and that app.
    pub fn without(&self, name: &str) -> (AppTable, Option<Arc<App>>) {
        let mut table = self.clone();
        let old = table.by_name.remove(name);
        (table, old)
    }

    /// `up`'s one app, if this is its table.
    pub fn only(&self) -> Option<&Arc<App>> {
        self.single.as_ref()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<App>> {
        self.by_name.get(name).or(self.single.as_ref().filter(|app| app.name == name))
    }

    /// Every app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.single.iter().chain(self.by_name.values())
    }

    /// The app a request with this authority (`Host` header or URI
    /// authority; a port is ignored) is for.
    pub fn route(&self, authority: Option<&str>) -> Result<&Arc<App>, Unrouted> {
        if let Some(app) = &self.single {
            return Ok(app);
        }
        let domain = self.domain.as_deref().unwrap_or("localhost");
        let name = app_name(authority, domain)?;
        self.by_name.get(&name).ok_or(Unrouted::NoApp(name))
    }
}

/// The app name an authority addresses under `domain` (lowercase):
/// `hello` for `hello.localhost:3000` under `localhost`.
pub fn app_name(authority: Option<&str>, domain: &str) -> Result<String, Unrouted> {
    let other = || Unrouted::OtherHost { domain: domain.to_owned() };
    let host = authority.map(host_of).ok_or_else(other)?;
    let split = host.len().checked_sub(domain.len() + 1).ok_or_else(other)?;
    if host.as_bytes()[split] != b'.'
        || !host.is_char_boundary(split)
        || !host[split + 1..].eq_ignore_ascii_case(domain)
    {
        return Err(other());
    }
    Ok(host[..split].to_ascii_lowercase())
}

/// The host of an authority: without its port, without the brackets of an
/// IPv6 literal, without a trailing dot.
/// A bracketed host must be an IPv6 literal and a port must be a port;
/// anything else is returned whole, which names no app.
fn host_of(authority: &str) -> &str {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((literal, after)) if literal.parse::<std::net::Ipv6Addr>().is_ok() => {
                (literal, after.strip_prefix(':'))
            }
            _ => return authority,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if port.is_some_and(|port| port.parse::<u16>().is_err()) {
        return authority;
    }
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::{Unrouted, app_name, host_of};

    #[test]
    fn hosts_of_authorities() {
        assert_eq!(host_of("hello.localhost:3000"), "hello.localhost");
        assert_eq!(host_of("hello.localhost"), "hello.localhost");
        assert_eq!(host_of("hello.localhost.:80"), "hello.localhost");
        assert_eq!(host_of("[::1]:3000"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
        assert_eq!(host_of("[hello.localhost]"), "[hello.localhost]", "brackets hold an IPv6 literal only");
        assert_eq!(host_of("hello.localhost:99999"), "hello.localhost:99999", "not a port");
    }

    #[test]
    fn app_names_under_the_domain() {
        assert_eq!(app_name(Some("hello.localhost:3000"), "localhost"), Ok("hello".into()));
        assert_eq!(app_name(Some("Hello.LocalHost"), "localhost"), Ok("hello".into()));
        assert_eq!(app_name(Some("a.apps.example.com"), "apps.example.com"), Ok("a".into()));
        let other = Err(Unrouted::OtherHost { domain: "localhost".into() });
        assert_eq!(app_name(Some("127.0.0.1:3000"), "localhost"), other);
        assert_eq!(app_name(Some("localhost:3000"), "localhost"), other);
        assert_eq!(app_name(Some("hellolocalhost"), "localhost"), other);
        assert_eq!(app_name(None, "localhost"), other);
        assert_eq!(app_name(Some("é.localhost"), "localhost"), Ok("é".into()));
        assert_eq!(app_name(Some("hello.localhost:99999"), "localhost"), other);
    }
}
