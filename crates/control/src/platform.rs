//! What the control API acts on: the gateway's table of running apps and,
//! for the daemon, the deployed apps' state and bundles. `dormouse up` has a
//! platform too (one app, read-only), so `instance ls` works against it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use dormouse_gateway::{App, Gateway, Slot};
use dormouse_supervisor::Processes;

use crate::api::{
    AppInfo, DeployReply, InstanceInfo, PolicyInfo, QuotaInfo, QuotaUsage, RouteInfo, ScaleInfo, ScaleInit,
};
use crate::state::{AppRecord, PolicyRecord, ScaleRecord, StateDb};

/// Why a control request failed; each kind is one status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// 400: the request or what it carries is wrong (a bad name, a manifest
    /// that does not load).
    #[error("{0}")]
    Invalid(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: another deploy of the app is in progress.
    #[error("{0}")]
    Conflict(String),
    /// 405: `dormouse up` serves one app and takes no deploys.
    #[error("{0}")]
    NotAllowed(String),
    /// 413
    #[error("{0}")]
    TooLarge(String),
    /// 403: a deploy would pass a quota.
    #[error("{0}")]
    Quota(String),
    /// 500
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// How the daemon runs deployed apps.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Holds `state.db`, `bundles/`, `apps/<name>/` (each app's default
    /// key-value store), `cache/` (compiled components) and the control
    /// socket.
    pub state_dir: PathBuf,
    /// Apps answer at `<name>.<domain>`. Default `localhost`, which resolves
    /// to loopback with no DNS set-up (RFC 6761).
    pub domain: String,
    /// How long a replaced or removed app may finish its requests before its
    /// services are stopped. Default 30 s.
    pub drain_timeout: Duration,
    /// The quotas every instance is admitted under (shared with the wasm
    /// host and the supervisor).
    pub quotas: Arc<dormouse_quota::Quotas>,
    /// Instances that may exist, standby included; `None`: no limit.
    pub max_total_instances: Option<u64>,
    /// What a bundle may unpack to, in bytes (the upload limit, so a small
    /// archive cannot expand past it).
    pub max_bundle_bytes: u64,
    /// Apps that may be deployed; `None`: no limit.
    pub max_apps: Option<u64>,
}

/// Options a deploy carries beside its bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployOptions {
    /// The manifest's path inside the bundle. Default `spin.toml`.
    pub manifest: String,
    /// `-0`: services go to standby when idle; otherwise each keeps one
    /// instance running.
    pub scale_to_zero: bool,
    /// Overrides every service's cooldown.
    pub cooldown: Option<Duration>,
    /// Overrides every service's memory size, in bytes.
    pub memory: Option<u64>,
}

/// A bundle received: a tar archive in a file of the bundle directory
/// (`.upload-*`, removed when this is dropped), and its BLAKE3 hash.
pub struct Upload {
    pub path: tempfile::TempPath,
    pub hash: String,
}

/// The gateway's apps and, in the daemon, what deploys them.
pub struct Platform {
    gateway: Arc<Gateway>,
    processes: Arc<Processes>,
    /// The public listener's address, for URLs.
    public: SocketAddr,
    daemon: Option<Daemon>,
}

struct Daemon {
    config: DaemonConfig,
    db: StateDb,
    /// Apps with a deploy or removal in progress: a second one gets 409.
    busy: Mutex<HashSet<String>>,
    /// Held from the quota checks to the swap into the table, so that
    /// concurrent deploys of different apps cannot pass a quota together.
    commit: tokio::sync::Mutex<()>,
    /// Bundles of versions still draining (their services run from them),
    /// counted: never collected until they are done.
    retiring: Mutex<std::collections::HashMap<String, usize>>,
}

/// An app's place among those being deployed or removed, given back on drop
/// (also when the request is dropped because its client left).
pub struct DeployClaim {
    platform: Arc<Platform>,
    name: String,
}

impl Drop for DeployClaim {
    fn drop(&mut self) {
        if let Some(daemon) = &self.platform.daemon {
            daemon.busy.lock().expect("not poisoned").remove(&self.name);
        }
    }
}

impl Daemon {
    fn claim(&self, name: &str) -> Result<(), ControlError> {
        if !self.busy.lock().expect("not poisoned").insert(name.to_owned()) {
            return Err(ControlError::Conflict(format!(
                "app `{name}` is being deployed or removed by another request"
            )));
        }
        Ok(())
    }
}

impl Platform {
    /// `dormouse up`'s platform: the gateway's one app, no deploys.
    pub fn single(gateway: Arc<Gateway>, processes: Arc<Processes>, public: SocketAddr) -> Arc<Platform> {
        Arc::new(Platform { gateway, processes, public, daemon: None })
    }

    /// The daemon's platform, with its state opened (not yet restored: see
    /// [`Platform::restore`]).
    pub fn for_daemon(
        gateway: Arc<Gateway>,
        processes: Arc<Processes>,
        public: SocketAddr,
        config: DaemonConfig,
    ) -> anyhow::Result<Arc<Platform>> {
        for dir in ["bundles", "apps", "cache"] {
            let dir = config.state_dir.join(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        }
        let db = StateDb::open(&config.state_dir.join("state.db"))?;
        // Left by a daemon that died mid-deploy.
        if let Ok(entries) = std::fs::read_dir(config.state_dir.join("bundles")) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".unpacking-") {
                    let _ = std::fs::remove_dir_all(entry.path());
                } else if name.starts_with(".upload-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let daemon = Daemon {
            config,
            db,
            busy: Mutex::default(),
            commit: tokio::sync::Mutex::new(()),
            retiring: Mutex::default(),
        };
        Ok(Arc::new(Platform { gateway, processes, public, daemon: Some(daemon) }))
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    fn deployer(&self) -> Result<&Daemon, ControlError> {
        self.daemon.as_ref().ok_or_else(|| {
            ControlError::NotAllowed("`dormouse up` serves one app: deploy to a `dormouse daemon`".to_owned())
        })
    }

    /// Launches every app in the state, each in standby (or with the
    /// instances its scale settings keep up), and routes to it. An app that
    /// no longer loads is logged and skipped; it stays in the state.
    /// Returns how many were restored.
    pub async fn restore(self: &Arc<Self>) -> anyhow::Result<usize> {
        let daemon = self.deployer().map_err(anyhow::Error::from)?;
        let records = daemon.db.apps()?;
        let mut restored = 0;
        for record in records {
            let platform = self.clone();
            let name = record.name.clone();
            let launched = tokio::task::spawn_blocking(move || platform.launch(&record)).await?;
            match launched {
                Ok(app) => {
                    app.start();
                    if let Some(old) = self.gateway.insert(app) {
                        self.retire(old, None, "replaced by a new version");
                    }
                    restored += 1;
                }
                Err(error) => tracing::error!(app = %name, "cannot restore: {error:#}"),
            }
        }
        Ok(restored)
    }

    /// Claims `name` for a deploy: a second deploy (or removal) of the app
    /// gets 409 while the claim is held. Taken before the upload is read,
    /// so that the loser learns at once; given back when dropped.
    pub fn claim(self: &Arc<Self>, name: &str) -> Result<DeployClaim, ControlError> {
        check_name(name)?;
        self.deployer()?.claim(name)?;
        Ok(DeployClaim { platform: self.clone(), name: name.to_owned() })
    }

    /// Deploys `bundle` (a tar archive of the app's directory) as the
    /// claimed app: the new version is compiled, linked and set up before it
    /// takes traffic; requests in flight finish on the old one. A failed
    /// deploy leaves the old version serving.
    pub async fn deploy(
        self: &Arc<Self>,
        claim: &DeployClaim,
        upload: Upload,
        options: DeployOptions,
    ) -> Result<DeployReply, ControlError> {
        let name = claim.name.as_str();
        check_manifest_path(&options.manifest)?;
        let daemon = self.deployer()?;
        let previous = daemon.db.get(name)?;
        let previous_bundle = previous.as_ref().map(|p| p.bundle.clone());
        let platform = self.clone();
        let name_owned = name.to_owned();
        let built = tokio::task::spawn_blocking(move || -> Result<_, ControlError> {
            let daemon = platform.deployer()?;
            let hash = store_bundle(&daemon.config.state_dir.join("bundles"), &upload, daemon.config.max_bundle_bytes)?;
            drop(upload);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let record = AppRecord {
                id: deployment_id(&name_owned, &hash, now),
                name: name_owned,
                version: previous.map_or(1, |p| p.version + 1),
                bundle: hash,
                manifest: options.manifest,
                scale_to_zero: options.scale_to_zero,
                cooldown_ms: options.cooldown.map(|d| d.as_millis() as u64),
                memory: options.memory,
                deployed_at: now.as_secs(),
            };
            let started = std::time::Instant::now();
            let app = platform.launch(&record).map_err(|error| {
                tracing::warn!(app = %record.name, "deploy refused: {error:#}");
                ControlError::Invalid(format!("{error:#}"))
            })?;
            Ok((record, app, started.elapsed()))
        });
        let (record, app, load_time) = match built.await.map_err(anyhow::Error::from)? {
            Ok(built) => built,
            Err(error) => {
                self.collect_bundles(Some(name));
                return Err(error);
            }
        };
        let commit = daemon.commit.lock().await;
        let recorded = self.check_quotas(&app).and_then(|()| daemon.db.put(&record).map_err(ControlError::from));
        if let Err(error) = recorded {
            drop(commit);
            // Instances its minimum started must not outlive it, nor series
            // its launch made.
            app.retire(Duration::ZERO, "its deploy failed").await;
            self.gateway.abandon_metrics(name);
            self.collect_bundles(Some(name));
            return Err(error);
        }
        app.start();
        let old = self.gateway.insert(app.clone());
        drop(commit);
        if let Some(old) = old {
            let retired = self.retire(old, previous_bundle, "replaced by a new version");
            // A service on a fixed port could not start its kept-up
            // instance while the old version held the port: once that is
            // gone, it can.
            let started = app.clone();
            tokio::spawn(async move {
                let _ = retired.await;
                started.start();
            });
        }
        tracing::info!(app = %record.name, version = record.version, "deployed in {load_time:.1?}");
        // A service app's instances are its services'; components have
        // their linear-memory cap.
        let memory_bytes = match app.supervisor().services().first() {
            Some(service) => service.config().memory,
            None => self.gateway.host().config().memory_limit as u64,
        };
        let boot_ms = first_boot(&app).await;
        Ok(DeployReply {
            app: self.info(&app, Some(&record)),
            load_ms: load_time.as_secs_f64() * 1000.0,
            boot_ms,
            memory_bytes,
        })
    }

    /// Refuses `app` if deploying it would pass a quota: more apps, more
    /// instances in total, or an instance larger than the active memory
    /// quota (it could never run).
    fn check_quotas(&self, app: &App) -> Result<(), ControlError> {
        let daemon = self.deployer()?;
        let quotas = &daemon.config.quotas;
        let table = self.gateway.apps();
        let replaced = table.get(app.name());
        if let Some(limit) = daemon.config.max_apps
            && replaced.is_none()
            && table.apps().count() as u64 >= limit
        {
            return Err(ControlError::Quota(format!("the apps quota is reached ({limit} of {limit} deployed)")));
        }
        if let Some(limit) = daemon.config.max_total_instances {
            let others: u64 = table.apps().filter(|other| other.name() != app.name()).map(|a| total_instances(a)).sum();
            let total = others + total_instances(app);
            if total > limit {
                return Err(ControlError::Quota(format!(
                    "the total instances quota would be passed ({total} of {limit}): app `{}` has {} instances",
                    app.name(),
                    total_instances(app)
                )));
            }
        }
        let sizes = app
            .components()
            .iter()
            .map(|c| (c.id().to_owned(), c.memory_limit() as u64))
            .chain(app.supervisor().services().iter().map(|s| (s.config().id.clone(), s.config().memory)));
        for (id, size) in sizes {
            if let Err(exceeded) = quotas.fits(size) {
                return Err(ControlError::Quota(format!("`{id}` can never run: {exceeded}")));
            }
        }
        Ok(())
    }

    /// What is in use against each quota.
    pub fn quotas(&self) -> Result<QuotaInfo, ControlError> {
        let daemon = self.deployer()?;
        let quotas = &daemon.config.quotas;
        let (usage, limits) = (quotas.usage(), quotas.limits());
        let table = self.gateway.apps();
        Ok(QuotaInfo {
            active_instances: QuotaUsage { used: usage.active_instances, limit: limits.active_instances },
            total_instances: QuotaUsage {
                used: table.apps().map(|app| total_instances(app)).sum(),
                limit: daemon.config.max_total_instances,
            },
            active_memory_bytes: QuotaUsage { used: usage.active_memory, limit: limits.active_memory },
            apps: QuotaUsage { used: table.apps().count() as u64, limit: daemon.config.max_apps },
            max_instances_per_service: dormouse_manifest::MAX_SERVICE_INSTANCES,
            scale_to_zero: true,
        })
    }

    /// Stops routing to `name`, lets its requests finish, stops its services
    /// and forgets it.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<(), ControlError> {
        let claim = self.claim(name)?;
        let daemon = self.deployer()?;
        let bundle = daemon.db.get(name)?.map(|record| record.bundle);
        if !daemon.db.remove(name)? {
            return Err(not_found(name));
        }
        // The drain and the clean-up run to the end even if the client
        // hangs up: its app is already out of the table.
        let platform = self.clone();
        let name = name.to_owned();
        let done = tokio::spawn(async move {
            if let Some(app) = platform.gateway.remove(&name) {
                platform.mark_retiring(bundle.as_deref(), true);
                let timeout = platform.deployer().map(|d| d.config.drain_timeout).unwrap_or_default();
                app.retire(timeout, "its app was removed").await;
                app.supervisor().forget_prepared();
                platform.mark_retiring(bundle.as_deref(), false);
            }
            // Everything of it goes: logs, key-value data, its bundle if no
            // other app runs from it.
            if let Ok(daemon) = platform.deployer() {
                let _ = std::fs::remove_dir_all(daemon.config.state_dir.join("apps").join(&name));
            }
            drop(claim);
            platform.collect_bundles(None);
        });
        done.await.map_err(|error| ControlError::Internal(error.into()))
    }

    /// Counts `bundle` as in use by a version that is draining (or no
    /// longer).
    fn mark_retiring(&self, bundle: Option<&str>, retiring: bool) {
        let (Some(daemon), Some(bundle)) = (&self.daemon, bundle) else { return };
        let mut counts = daemon.retiring.lock().expect("not poisoned");
        let count = counts.entry(bundle.to_owned()).or_default();
        if retiring {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(bundle);
            }
        }
    }

    /// Builds the app `record` describes from its bundle. Blocking.
    fn launch(&self, record: &AppRecord) -> anyhow::Result<Arc<App>> {
        let daemon = self.deployer().map_err(anyhow::Error::from)?;
        let bundle = daemon.config.state_dir.join("bundles").join(&record.bundle);
        let mut manifest = load_manifest(&bundle, &record.manifest)?;
        // An app runs from its bundle alone: nothing it names may lead out
        // of it (a link, `..`, an absolute path), or it would read the host's
        // files, or another app's.
        let inside = bundle.canonicalize()?;
        let within = |path: &Path, what: &str| -> anyhow::Result<()> {
            let resolved =
                path.canonicalize().with_context(|| format!("{what} `{}` does not exist", shown(&bundle, path)))?;
            anyhow::ensure!(resolved.starts_with(&inside), "{what} `{}` is outside the bundle", shown(&bundle, path));
            Ok(())
        };
        within(&manifest.manifest_path, "the manifest")?;
        for component in manifest.components.values() {
            within(&component.source, &format!("component `{}`: source", component.id))?;
        }
        for service in manifest.services.values() {
            within(&service.workdir, &format!("service `{}`: workdir", service.id))?;
            dormouse_supervisor::check_command(&service.command[0], &service.workdir, &service.environment)
                .map_err(|error| anyhow::anyhow!("service `{}`: {error}", service.id))?;
        }
        for service in manifest.services.values_mut() {
            // `-0` puts idle instances on standby; without it one stays up.
            service.min = if record.scale_to_zero { 0 } else { service.min.max(1) };
            if let Some(ms) = record.cooldown_ms {
                service.cooldown = Duration::from_millis(ms);
            }
            if let Some(bytes) = record.memory {
                service.memory = bytes;
            }
        }
        let options = dormouse_loader::Options {
            state_dir: daemon.config.state_dir.join("apps").join(&record.name),
            runtime_config: Default::default(),
            extra_env: Vec::new(),
            // The daemon's own environment is not the apps' to read.
            env: Box::new(|_| None),
            logs: Some(self.logs_dir(&record.name)?),
            guest_output: None,
        };
        let launched =
            dormouse_loader::launch(&self.gateway, &self.processes, &record.name, &manifest, &options, &|_| {})?;
        if let Some(scale) = daemon.db.scale(&record.name)? {
            apply_scale(&launched.app, &scale)?;
        }
        Ok(launched.app)
    }

    /// Where uploads are received (the daemon's bundle directory).
    pub fn bundles_dir(&self) -> Result<PathBuf, ControlError> {
        Ok(self.deployer()?.config.state_dir.join("bundles"))
    }

    /// Where `name`'s output is captured.
    fn logs_dir(&self, name: &str) -> Result<PathBuf, ControlError> {
        Ok(self.deployer()?.config.state_dir.join("apps").join(name).join("logs"))
    }

    /// The last `limit` lines `name` wrote, after `after` (a timestamp of a
    /// line already seen) if given.
    pub fn logs(&self, name: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, ControlError> {
        if self.gateway.apps().get(name).is_none() {
            return Err(not_found(name));
        }
        Ok(dormouse_supervisor::logs::tail(&self.logs_dir(name)?, after, limit))
    }

    /// The key-value store `label` of the app `name`: the very store its
    /// components use.
    fn store(&self, name: &str, label: &str) -> Result<dormouse_kv::Store, ControlError> {
        let table = self.gateway.apps();
        let app = table.get(name).ok_or_else(|| not_found(name))?;
        let prepared = app
            .resources()
            .downcast_ref::<dormouse_loader::PreparedApp>()
            .ok_or_else(|| ControlError::Internal(anyhow::anyhow!("app `{name}` was not launched from a manifest")))?;
        prepared.stores.get(label).cloned().ok_or_else(|| {
            ControlError::NotFound(format!("app `{name}` has no key-value store `{label}`: no component lists it"))
        })
    }

    /// Every key in the store.
    pub async fn kv_keys(&self, name: &str, label: &str) -> Result<Vec<String>, ControlError> {
        let store = self.store(name, label)?;
        store.all_keys().await.map_err(|error| ControlError::Internal(error.into()))
    }

    /// A key's value.
    pub async fn kv_get(&self, name: &str, label: &str, key: &str) -> Result<Vec<u8>, ControlError> {
        let store = self.store(name, label)?;
        match store.get(key).await {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(ControlError::NotFound(format!("no key `{key}` in store `{label}` of app `{name}`"))),
            Err(error) => Err(ControlError::Internal(error.into())),
        }
    }

    /// Sets a key; the store's limits (key ≤ 256 bytes, value ≤ 1 MiB) hold.
    pub async fn kv_set(&self, name: &str, label: &str, key: &str, value: Vec<u8>) -> Result<(), ControlError> {
        if key.is_empty() {
            return Err(ControlError::Invalid("the key is empty".to_owned()));
        }
        let store = self.store(name, label)?;
        store.set(key, value).await.map_err(|error| match error {
            dormouse_kv::Error::KeyTooLong(_) | dormouse_kv::Error::ValueTooLarge(_) => {
                ControlError::Invalid(error.to_string())
            }
            other => ControlError::Internal(other.into()),
        })
    }

    /// The scale settings of `name`'s services (the first service's: they
    /// all get the same).
    pub fn scale(&self, name: &str) -> Result<ScaleInfo, ControlError> {
        let table = self.gateway.apps();
        let app = table.get(name).ok_or_else(|| not_found(name))?;
        let service = app.supervisor().services().first().ok_or_else(|| no_services(name))?;
        Ok(scale_info(&service.scale()))
    }

    /// Changes `name`'s own scale settings with `change`, stores them and
    /// applies them to its running services.
    fn change_scale(
        self: &Arc<Self>,
        name: &str,
        change: impl FnOnce(&mut ScaleRecord) -> Result<(), ControlError>,
    ) -> Result<ScaleInfo, ControlError> {
        let _claim = self.claim(name)?;
        let daemon = self.deployer()?;
        let table = self.gateway.apps();
        let app = table.get(name).ok_or_else(|| not_found(name))?;
        if app.supervisor().services().is_empty() {
            return Err(no_services(name));
        }
        let mut record = daemon.db.scale(name)?.unwrap_or_default();
        change(&mut record)?;
        apply_scale(app, &record).map_err(|error| ControlError::Invalid(format!("{error:#}")))?;
        daemon.db.set_scale(name, Some(&record))?;
        // A higher minimum is met at once.
        app.start();
        self.scale(name)
    }

    /// `scale init`.
    pub fn scale_init(self: &Arc<Self>, name: &str, init: ScaleInit) -> Result<ScaleInfo, ControlError> {
        if let (Some(min), Some(max)) = (init.min_size, init.max_size)
            && min > max
        {
            return Err(ControlError::Invalid(format!("min size {min} is above max size {max}")));
        }
        if init.max_size == Some(0) {
            return Err(ControlError::Invalid("max size must be at least 1".to_owned()));
        }
        if init.cooldown_ms.is_some_and(|ms| ms < 100) {
            return Err(ControlError::Invalid("the cooldown must be at least 100ms".to_owned()));
        }
        let most = dormouse_manifest::MAX_SERVICE_INSTANCES;
        if init.max_size.is_some_and(|max| max > most) {
            return Err(ControlError::Invalid(format!("max size is at most {most} instances per service")));
        }
        const DAY_MS: u64 = 86_400_000;
        if init.cooldown_ms.is_some_and(|ms| ms > DAY_MS) || init.warmup_ms.is_some_and(|ms| ms > DAY_MS) {
            return Err(ControlError::Invalid("warmup and cooldown are at most a day".to_owned()));
        }
        if let (Some(min), Some(limit)) = (init.min_size, self.deployer()?.config.quotas.limits().active_instances)
            && u64::from(min) > limit
        {
            return Err(ControlError::Quota(format!(
                "min size {min} can never be met: the active instances quota is {limit}"
            )));
        }
        self.change_scale(name, |record| {
            record.min = init.min_size.or(record.min);
            record.max = init.max_size.or(record.max);
            record.warmup_ms = init.warmup_ms.or(record.warmup_ms);
            record.cooldown_ms = init.cooldown_ms.or(record.cooldown_ms);
            Ok(())
        })
    }

    /// `scale add`: adds the policy, or replaces the one of its name.
    pub fn scale_add(self: &Arc<Self>, name: &str, policy: PolicyInfo) -> Result<ScaleInfo, ControlError> {
        let parsed = parse_policy(&PolicyRecord {
            name: policy.name.clone(),
            metric: policy.metric.clone(),
            adjustment: policy.adjustment.clone(),
            steps: policy.steps.clone(),
        })
        .map_err(ControlError::Invalid)?;
        check_policy_name(&parsed.name)?;
        self.change_scale(name, |record| {
            record.policies.retain(|p| p.name != policy.name);
            record.policies.push(PolicyRecord {
                name: policy.name,
                metric: policy.metric,
                adjustment: policy.adjustment,
                steps: parsed.steps.iter().map(ToString::to_string).collect(),
            });
            Ok(())
        })
    }

    /// `scale rm --name P`: removes one policy.
    pub fn scale_remove_policy(self: &Arc<Self>, name: &str, policy: &str) -> Result<ScaleInfo, ControlError> {
        self.change_scale(name, |record| {
            let before = record.policies.len();
            record.policies.retain(|p| p.name != policy);
            if record.policies.len() == before {
                return Err(ControlError::NotFound(format!("app `{name}` has no scale policy `{policy}`")));
            }
            Ok(())
        })
    }

    /// `scale rm`: back to the manifest's settings, no policies.
    pub fn scale_reset(self: &Arc<Self>, name: &str) -> Result<ScaleInfo, ControlError> {
        self.change_scale(name, |record| {
            *record = ScaleRecord::default();
            Ok(())
        })
    }

    /// Retires `app` (which ran from `bundle`) in the background: its
    /// requests finish, then its services stop; the returned handle ends
    /// when they have.
    fn retire(
        self: &Arc<Self>,
        app: Arc<App>,
        bundle: Option<String>,
        reason: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let timeout = self.daemon.as_ref().map_or(Duration::from_secs(30), |d| d.config.drain_timeout);
        let platform = self.clone();
        self.mark_retiring(bundle.as_deref(), true);
        tokio::spawn(async move {
            if !app.retire(timeout, reason).await {
                tracing::warn!(app = app.name(), "replaced while requests were still in flight past {timeout:?}");
            }
            drop(app);
            platform.mark_retiring(bundle.as_deref(), false);
            platform.collect_bundles(None);
        })
    }

    /// Removes the bundles no recorded app and no draining version runs
    /// from; not while another app's deploy is under way (`own`, the
    /// caller's, aside): it may be unpacking or about to record its bundle.
    fn collect_bundles(&self, own: Option<&str>) {
        let Some(daemon) = &self.daemon else { return };
        let bundles = daemon.config.state_dir.join("bundles");
        let Ok(entries) = std::fs::read_dir(&bundles) else { return };
        let recorded: HashSet<String> = match daemon.db.apps() {
            Ok(apps) => apps.into_iter().map(|app| app.bundle).collect(),
            Err(_) => return,
        };
        let busy = daemon.busy.lock().expect("not poisoned").iter().any(|name| Some(name.as_str()) != own);
        if busy {
            return;
        }
        let retiring = daemon.retiring.lock().expect("not poisoned").clone();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || recorded.contains(&name) || retiring.contains_key(&name) {
                continue;
            }
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }

    /// Every app, by name.
    pub fn apps(&self) -> Result<Vec<AppInfo>, ControlError> {
        let table = self.gateway.apps();
        let mut apps: Vec<AppInfo> = match &self.daemon {
            Some(daemon) => daemon
                .db
                .apps()?
                .iter()
                .filter_map(|record| table.get(&record.name).map(|app| self.info(app, Some(record))))
                .collect(),
            None => table.apps().map(|app| self.info(app, None)).collect(),
        };
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(apps)
    }

    pub fn app(&self, name: &str) -> Result<AppInfo, ControlError> {
        if self.daemon.is_some() {
            check_name(name)?;
        }
        let table = self.gateway.apps();
        let app = table.get(name).ok_or_else(|| not_found(name))?;
        let record = match &self.daemon {
            Some(daemon) => daemon.db.get(name)?,
            None => None,
        };
        Ok(self.info(app, record.as_ref()))
    }

    /// The services of `name` as the supervisor reports them (pids, ports,
    /// stop records).
    pub fn services(&self, name: &str) -> Result<serde_json::Value, ControlError> {
        let table = self.gateway.apps();
        let app = table.get(name).ok_or_else(|| not_found(name))?;
        Ok(serde_json::to_value(app.supervisor().status()).map_err(anyhow::Error::from)?)
    }

    /// `instance stop` (`start` false) or `start` of an app's service.
    pub fn service_action(&self, name: &str, service: &str, start: bool) -> Result<bool, ControlError> {
        let table = self.gateway.apps();
        let app = table.get(name).ok_or_else(|| not_found(name))?;
        let handle = app
            .supervisor()
            .service(service)
            .ok_or_else(|| ControlError::NotFound(format!("app `{name}` has no service `{service}`")))?;
        Ok(if start { handle.start_one() } else { handle.stop_instances("stopped by the operator") > 0 })
    }

    /// Every instance row: each component, each live service instance, and
    /// each service with none alive (in standby or failing).
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let table = self.gateway.apps();
        let mut apps: Vec<&Arc<App>> = table.apps().collect();
        apps.sort_by(|a, b| a.name().cmp(b.name()));
        let mut rows = Vec::new();
        for app in apps {
            for component in app.components() {
                let live = component.live_instances() as u64;
                rows.push(InstanceInfo {
                    name: component.id().to_owned(),
                    app: app.name().to_owned(),
                    kind: "component".to_owned(),
                    state: if live > 0 { "running" } else { "standby" }.to_owned(),
                    boot_time_ms: None,
                    memory_bytes: Some(component.memory_limit() as u64),
                    requests: component.instantiated(),
                    in_flight: live,
                    uptime_ms: None,
                    stop_reason: None,
                    pid: None,
                    port: None,
                });
            }
            for service in app.supervisor().services() {
                let status = service.status();
                if status.instances.is_empty() {
                    let state = if status.failing.is_some() { "failing" } else { "standby" };
                    rows.push(InstanceInfo {
                        name: status.id.clone(),
                        app: app.name().to_owned(),
                        kind: "service".to_owned(),
                        state: state.to_owned(),
                        boot_time_ms: status.stops.last().and_then(|stop| stop.boot_time_ms),
                        memory_bytes: None,
                        requests: status.stops.iter().map(|stop| stop.served).sum(),
                        in_flight: 0,
                        uptime_ms: None,
                        stop_reason: status.failing.clone().or_else(|| status.stops.last().map(|s| s.reason.clone())),
                        pid: None,
                        port: None,
                    });
                }
                for instance in &status.instances {
                    let state = match instance.state {
                        "ready" => "running",
                        other => other,
                    };
                    rows.push(InstanceInfo {
                        name: format!("{}-{}", status.id, instance.instance),
                        app: app.name().to_owned(),
                        kind: "service".to_owned(),
                        state: state.to_owned(),
                        boot_time_ms: instance.boot_time_ms,
                        memory_bytes: instance.memory_bytes,
                        requests: instance.served,
                        in_flight: u64::from(instance.in_flight),
                        uptime_ms: Some(instance.uptime_ms),
                        stop_reason: None,
                        pid: Some(instance.pid),
                        port: Some(instance.port),
                    });
                }
            }
        }
        rows
    }

    fn info(&self, app: &App, record: Option<&AppRecord>) -> AppInfo {
        let scheme = self.gateway.config().scheme();
        let url = match &self.daemon {
            Some(daemon) => format!("{scheme}://{}.{}:{}", app.name(), daemon.config.domain, self.public.port()),
            None => format!("{scheme}://{}", self.public),
        };
        let routes = app
            .router()
            .entries()
            .iter()
            .map(|entry| RouteInfo {
                route: entry.pattern.to_string(),
                target: entry.target_id.clone(),
                kind: match entry.target {
                    Slot::Component(_) => "component",
                    Slot::Service(_) => "service",
                }
                .to_owned(),
            })
            .collect();
        let running = app.in_flight() > 0
            || app.components().iter().any(|c| c.live_instances() > 0)
            || app.supervisor().services().iter().any(|s| s.instance_count() > 0);
        AppInfo {
            name: app.name().to_owned(),
            id: record.map(|r| r.id.clone()).unwrap_or_default(),
            version: record.map_or(1, |r| r.version),
            state: if running { "running" } else { "standby" }.to_owned(),
            url,
            routes,
            scale_to_zero: record.is_none_or(|r| r.scale_to_zero),
            bundle: record.map(|r| r.bundle.clone()).unwrap_or_default(),
            deployed_at: record.map_or(0, |r| r.deployed_at),
            in_flight: app.in_flight(),
        }
    }
}

/// The boot time of the first instance of `app` that its scale settings keep
/// up, once it is ready (at most its ready timeout); `None` if none is kept
/// up or none got ready.
async fn first_boot(app: &App) -> Option<f64> {
    let service = app.supervisor().services().iter().find(|s| s.scale().min > 0)?;
    let deadline = tokio::time::Instant::now() + service.config().ready_timeout;
    while tokio::time::Instant::now() < deadline {
        let status = service.status();
        if let Some(boot) = status.instances.iter().find_map(|i| i.boot_time_ms) {
            return Some(boot);
        }
        if status.failing.is_some() || status.instances.is_empty() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Instances of `app` that exist, standby included: one per component, and
/// per service its live instances, at least one.
fn total_instances(app: &App) -> u64 {
    let services: usize = app.supervisor().services().iter().map(|s| s.instance_count().max(1)).sum();
    (app.components().len() + services) as u64
}

/// Applies `record` over each service's manifest settings. Call within the
/// tokio runtime.
fn apply_scale(app: &App, record: &ScaleRecord) -> anyhow::Result<()> {
    let policies =
        record.policies.iter().map(parse_policy).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    for service in app.supervisor().services() {
        let config = service.config();
        let scale = dormouse_supervisor::ScaleConfig {
            min: record.min.unwrap_or(config.min),
            max: record.max.unwrap_or(config.max),
            warmup: Duration::from_millis(record.warmup_ms.unwrap_or(0)),
            cooldown: record.cooldown_ms.map_or(config.cooldown, Duration::from_millis),
            policies: policies.clone(),
        };
        anyhow::ensure!(
            config.port.is_none() || scale.max <= 1,
            "service `{}` listens on the fixed port {}: it can have one instance only",
            config.id,
            config.port.unwrap_or_default()
        );
        anyhow::ensure!(scale.min <= scale.max, "min size {} is above max size {}", scale.min, scale.max);
        service.set_scale(scale);
    }
    Ok(())
}

fn parse_policy(record: &PolicyRecord) -> Result<dormouse_supervisor::StepPolicy, String> {
    use dormouse_supervisor::{Adjustment, Metric, Step};
    let metric = match record.metric.as_str() {
        "cpu" => Metric::Cpu,
        "inflight" => Metric::Inflight,
        "rps" => Metric::Rps,
        other => return Err(format!("unknown metric `{other}`: use `cpu`, `inflight` or `rps`")),
    };
    let adjustment = match record.adjustment.as_str() {
        "change" => Adjustment::Change,
        "percent" => Adjustment::Percent,
        "exact" => Adjustment::Exact,
        other => return Err(format!("unknown adjustment `{other}`: use `change`, `percent` or `exact`")),
    };
    let steps = record.steps.iter().map(|step| Step::parse(step)).collect::<Result<Vec<_>, _>>()?;
    // Larger would only overflow: the count is clamped to the max size anyway.
    const MOST: i64 = 100_000;
    if let Some(step) = steps.iter().find(|step| step.adjustment.unsigned_abs() > MOST as u64) {
        return Err(format!("step `{step}`: an adjustment is at most {MOST} in size"));
    }
    let policy = dormouse_supervisor::StepPolicy { name: record.name.clone(), metric, adjustment, steps };
    policy.check()?;
    Ok(policy)
}

fn check_policy_name(name: &str) -> Result<(), ControlError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!("invalid policy name `{name}`: use letters, digits, `-` and `_`")))
    }
}

fn scale_info(scale: &dormouse_supervisor::ScaleConfig) -> ScaleInfo {
    use dormouse_supervisor::{Adjustment, Metric};
    ScaleInfo {
        min_size: scale.min,
        max_size: scale.max,
        warmup_ms: scale.warmup.as_millis() as u64,
        cooldown_ms: scale.cooldown.as_millis() as u64,
        policies: scale
            .policies
            .iter()
            .map(|policy| PolicyInfo {
                name: policy.name.clone(),
                metric: match policy.metric {
                    Metric::Cpu => "cpu",
                    Metric::Inflight => "inflight",
                    Metric::Rps => "rps",
                }
                .to_owned(),
                adjustment: match policy.adjustment {
                    Adjustment::Change => "change",
                    Adjustment::Percent => "percent",
                    Adjustment::Exact => "exact",
                }
                .to_owned(),
                steps: policy.steps.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    }
}

fn no_services(name: &str) -> ControlError {
    ControlError::Invalid(format!(
        "app `{name}` has no services to scale: its components get a fresh instance per request"
    ))
}

fn not_found(name: &str) -> ControlError {
    ControlError::NotFound(format!("no app `{name}` is deployed"))
}

/// An app name is a DNS label (RFC 1035 §2.3.1, lowercase): it is the app's
/// host name under the domain.
pub fn check_name(name: &str) -> Result<(), ControlError> {
    let valid = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "invalid app name `{name}`: use 1 to 63 lowercase letters, digits and `-`, not starting or ending with `-`"
        )))
    }
}

/// The manifest path inside a bundle: relative, without `..`.
fn check_manifest_path(path: &str) -> Result<(), ControlError> {
    let relative = Path::new(path);
    use std::path::Component::{CurDir, Normal};
    let inside = relative.components().any(|part| matches!(part, Normal(_)))
        && relative.components().all(|part| matches!(part, Normal(_) | CurDir));
    if inside {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!("manifest path `{path}` must be relative to the bundle, without `..`")))
    }
}

/// `path` as the user wrote it: relative to the bundle where it is in it.
fn shown(bundle: &Path, path: &Path) -> String {
    path.strip_prefix(bundle).unwrap_or(path).display().to_string()
}

/// Loads the manifest at `manifest` inside `bundle`; errors name the file as
/// the user knows it (its path in the bundle).
fn load_manifest(bundle: &Path, manifest: &str) -> anyhow::Result<dormouse_manifest::App> {
    let file = bundle.join(manifest);
    let base_dir = file.parent().unwrap_or(bundle).to_owned();
    let text = match dormouse_manifest::read_regular_file(&file) {
        Ok(text) => text,
        Err(dormouse_manifest::ManifestError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("the bundle has no manifest `{manifest}`")
        }
        Err(dormouse_manifest::ManifestError::Read { source, .. }) => {
            anyhow::bail!("cannot read the manifest `{manifest}`: {source}")
        }
        Err(other) => return Err(other.into()),
    };
    let mut app = dormouse_manifest::parse(&text, Path::new(manifest), &base_dir)?;
    app.manifest_path = file;
    Ok(app)
}

/// Unpacks the uploaded bundle into `bundles/<hash>` unless an identical one
/// is there, and returns the hash. A bundle is unpacked into a fresh
/// directory first and renamed into place, so a half-unpacked one is never
/// used; one that would unpack to more than `max_bytes`, or holds a sparse
/// file (a small archive of a huge file), is refused before anything is
/// written.
fn store_bundle(bundles: &Path, upload: &Upload, max_bytes: u64) -> Result<String, ControlError> {
    let target = bundles.join(&upload.hash);
    if target.is_dir() {
        return Ok(upload.hash.clone());
    }
    // Removed when dropped, whatever happens; once renamed into place,
    // there is nothing left to remove.
    let staging = tempfile::Builder::new()
        .prefix(".unpacking-")
        .tempdir_in(bundles)
        .map_err(|error| ControlError::Internal(anyhow::Error::from(error).context("cannot unpack the bundle")))?;
    unpack(&upload.path, staging.path(), max_bytes)?;
    match std::fs::rename(staging.path(), &target) {
        Ok(()) => Ok(upload.hash.clone()),
        // A concurrent deploy of the same bundle (another app) won.
        Err(_) if target.is_dir() => Ok(upload.hash.clone()),
        Err(error) => Err(ControlError::Internal(anyhow::Error::from(error).context("cannot store the bundle"))),
    }
}

fn unpack(archive: &Path, into: &Path, max_bytes: u64) -> Result<(), ControlError> {
    let invalid =
        |error: std::io::Error| ControlError::Invalid(format!("the bundle is not a valid tar archive: {error}"));
    let file = std::fs::File::open(archive).map_err(|error| ControlError::Internal(error.into()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    let mut total = 0u64;
    for entry in archive.entries().map_err(invalid)? {
        let mut entry = entry.map_err(invalid)?;
        let header = entry.header();
        if header.entry_type().is_gnu_sparse() {
            return Err(ControlError::Invalid(format!(
                "the bundle holds a sparse file (`{}`): archive it without `--sparse`",
                String::from_utf8_lossy(&entry.path_bytes())
            )));
        }
        total = total.saturating_add(entry.size().max(header.size().unwrap_or(0)));
        if total > max_bytes {
            return Err(ControlError::TooLarge(format!(
                "the bundle unpacks to more than the limit of {} MiB",
                max_bytes >> 20
            )));
        }
        // `unpack_in` skips entries that would land outside the directory
        // (`..`, absolute paths) and refuses to write through links.
        entry.unpack_in(into).map_err(invalid)?;
    }
    Ok(())
}

/// A deployment's id: short, and different for every deploy.
fn deployment_id(name: &str, bundle: &str, now: Duration) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(name.as_bytes());
    hasher.update(bundle.as_bytes());
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.finalize().to_hex()[..12].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_dns_labels() {
        for good in ["hello", "a", "web-2", &"x".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Hello", "-web", "web-", "a.b", "a_b", &"x".repeat(64), "é"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bundle_that_unpacks_past_the_limit_or_holds_a_sparse_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("bundle.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(4096);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, "spin.toml", &[b'x'; 4096][..]).unwrap();
        builder.finish().unwrap();
        drop(builder);
        let into = dir.path().join("out");
        std::fs::create_dir(&into).unwrap();
        assert!(matches!(unpack(&archive, &into, 1024), Err(ControlError::TooLarge(_))));
        assert!(unpack(&archive, &into, 8192).is_ok());

        // 1 GiB of nothing in a few KiB of archive (GNU tar's --sparse).
        let sparse = dir.path().join("big.wasm");
        std::fs::File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
        let archive = dir.path().join("sparse.tar");
        let packed = std::process::Command::new("tar")
            .args(["--sparse", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(dir.path())
            .arg("big.wasm")
            .status()
            .unwrap();
        assert!(packed.success());
        assert!(std::fs::metadata(&archive).unwrap().len() < 1 << 20);
        let into = dir.path().join("sparse-out");
        std::fs::create_dir(&into).unwrap();
        match unpack(&archive, &into, 256 << 20) {
            Err(ControlError::Invalid(message)) => assert!(message.contains("sparse"), "{message}"),
            other => panic!("a sparse file was unpacked: {:?}", other.map(|()| "ok")),
        }
        assert!(!into.join("big.wasm").exists());
    }

    #[test]
    fn manifest_paths_stay_in_the_bundle() {
        assert!(check_manifest_path("spin.toml").is_ok());
        assert!(check_manifest_path("app/spin.toml").is_ok());
        assert!(check_manifest_path("./spin.toml").is_ok());
        for bad in ["", ".", "../spin.toml", "/etc/spin.toml", "a/../../b"] {
            assert!(check_manifest_path(bad).is_err(), "{bad}");
        }
    }
}
