//! `dormouse up`: load a manifest, compile its components, serve them.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::Args;
use dormouse_control::Platform;
use dormouse_control::server::{self, ControlConfig, ControlListener};
use dormouse_gateway::{Admin, AppTable, Gateway, GatewayConfig, Metrics, Tls};
use dormouse_manifest::{App, RuntimeConfig};
use dormouse_supervisor::Processes;
use dormouse_wasm_host::{CacheOutcome, Host, HostConfig, LoadEvent};

/// The control socket's name in the state directory.
pub(crate) const CONTROL_SOCKET: &str = "control.sock";

/// Components at least this large get a progress spinner while compiling.
const SPINNER_MIN_BYTES: usize = 1 << 20;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The application: a manifest file, or a directory holding `spin.toml`.
    #[arg(short = 'f', long = "from", default_value = ".")]
    from: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Environment variable for every component, as KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Spin's runtime configuration file: where key-value stores live.
    #[arg(long)]
    runtime_config_file: Option<PathBuf>,
    /// Where runtime state goes: the default key-value store, staged files
    /// and the control socket [default: .dormouse beside the manifest].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where compiled components are cached [default: .dormouse/cache beside the manifest].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile every component on start, reading and writing no cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (never the
    /// public one) [default: off: no metrics are kept].
    #[arg(long, value_name = "ADDR|off", value_parser = admin_address)]
    admin_listen: Option<AdminAddress>,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    tls: TlsArgs,
}

/// HTTPS, with Spin's flags and environment variables, the same for `up`
/// and `daemon`: both files or neither.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate
    /// first); reloaded when the file changes. Needs `--tls-key`.
    #[arg(long, value_name = "FILE", env = "SPIN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1); reloaded
    /// when the file changes. Needs `--tls-cert`.
    #[arg(long, value_name = "FILE", env = "SPIN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The certificate and key, loaded and checked against each other, or
    /// `None` for plain HTTP. Call before anything slow, so that a bad pair
    /// fails the start at once.
    pub(crate) fn load(&self) -> anyhow::Result<Option<Tls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(Tls::load(cert, key)?)),
            // clap's `requires` refuses one without the other.
            _ => Ok(None),
        }
    }
}

/// Limits and timeouts of the front and the wasm host, the same flags for
/// `up` and `daemon`. Each default is the one `HostConfig` and
/// `GatewayConfig` document.
#[derive(Args, Debug)]
pub struct Limits {
    /// Linear memory per instance (at most 1 GiB).
    #[arg(long, default_value = "128MiB", value_parser = positive_size)]
    memory_limit: ByteSize,
    /// Guest CPU time per request; past it the request gets 500.
    #[arg(long, default_value = "1s", value_parser = positive_duration)]
    cpu_limit: Duration,
    /// Wall-clock time per request, to components and services; past it the
    /// request gets 504.
    #[arg(long, default_value = "30s", value_parser = positive_duration)]
    timeout: Duration,
    /// Instances alive at once.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: u32,
    /// Requests that may wait for an instance; past it 503 + Retry-After.
    #[arg(long, default_value_t = 1000)]
    queue_limit: usize,
    /// How long a component's compiled code stays in memory after its last
    /// request; its next request loads it again from the compile cache.
    #[arg(long, default_value = "60s", value_parser = positive_duration)]
    unload_after: Duration,
    /// Largest request body; larger gets 413.
    #[arg(long, default_value = "10MiB")]
    max_body: ByteSize,
    /// Longest URL (path and query); longer gets 414.
    #[arg(long, default_value = "8KiB", value_parser = positive_size)]
    max_url: ByteSize,
    /// Largest header section; larger gets 431.
    #[arg(long, default_value = "32KiB", value_parser = positive_size)]
    max_headers: ByteSize,
    /// Time a client has to send a request head (and a new connection its
    /// first request); past it the connection is closed.
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    header_timeout: Duration,
    /// How long a connection with no request in flight may stay silent.
    #[arg(long, default_value = "60s", value_parser = positive_duration)]
    idle_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// How long shutdown (and, in the daemon, a replaced app) waits for
    /// in-flight requests.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Threads that accept and serve connections, each keeping a
    /// connection's I/O, hops and guests' first stretch on one CPU; guests
    /// that wait or run past a 10 ms tick go on on the guests' runtime.
    /// Default: one per CPU dormouse may use; at most 256.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=dormouse_gateway::MAX_IO_THREADS as i64))]
    io_threads: Option<u32>,
}

impl Limits {
    pub(crate) fn host_config(&self, cache_dir: Option<PathBuf>) -> anyhow::Result<HostConfig> {
        Ok(HostConfig {
            memory_limit: usize::try_from(self.memory_limit.as_u64()).context("memory limit too large")?,
            cpu_limit: self.cpu_limit,
            wall_limit: self.timeout,
            max_instances: self.max_instances,
            queue_limit: self.queue_limit,
            cache_dir,
            unload_after: self.unload_after,
            ..HostConfig::default()
        })
    }

    pub(crate) fn gateway_config(&self) -> anyhow::Result<GatewayConfig> {
        Ok(GatewayConfig {
            header_read_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections as usize,
            max_url_bytes: usize::try_from(self.max_url.as_u64()).context("URL limit too large")?,
            max_header_bytes: usize::try_from(self.max_headers.as_u64()).context("header limit too large")?,
            max_body_bytes: self.max_body.as_u64(),
            drain_timeout: self.drain_timeout,
            io_threads: match self.io_threads {
                Some(threads) => threads as usize,
                None => GatewayConfig::default().io_threads,
            },
            ..GatewayConfig::default()
        })
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }
}

/// A duration above zero: a zero timeout or budget would refuse everything.
pub(crate) fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be more than 0".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// A size above zero.
pub(crate) fn positive_size(text: &str) -> Result<ByteSize, String> {
    match text.parse::<ByteSize>() {
        Ok(size) if size.as_u64() == 0 => Err("must be more than 0".to_owned()),
        Ok(size) => Ok(size),
        Err(error) => Err(error),
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let tls = args.tls.load()?;
    let app = dormouse_manifest::load(&args.from)?;
    if app.http_triggers.is_empty() {
        tracing::warn!("app `{}` has no HTTP triggers: every request will get 404", app.name);
    }
    let runtime_config = match &args.runtime_config_file {
        Some(path) => RuntimeConfig::load(path)?,
        None => RuntimeConfig::default(),
    };
    let state_dir = args.state_dir.clone().unwrap_or_else(|| app.base_dir.join(".dormouse"));
    let cache_dir = match (&args.cache_dir, args.no_cache) {
        (_, true) => None,
        (Some(dir), false) => Some(dir.clone()),
        (None, false) => Some(state_dir.join("cache")),
    };
    let host_config = args.limits.host_config(cache_dir)?;
    let admin_listen = args.admin_listen.and_then(|address| address.0);
    let gateway_config =
        GatewayConfig { tls, metrics: admin_listen.map(|_| Metrics::new()), ..args.limits.gateway_config()? };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let options = dormouse_loader::Options {
        state_dir: state_dir.clone(),
        runtime_config,
        extra_env: args.env.clone(),
        env: Box::new(|name| std::env::var(name).ok()),
        // `up` runs in a terminal: output stays on it.
        logs: None,
        // JSON logs stay one object a line: guests' lines become events.
        guest_output: crate::json_logs().then(|| Arc::new(GuestEvents) as Arc<dyn dormouse_wasm_host::GuestOutput>),
    };
    let host = Host::new(host_config)?;
    let gateway = Gateway::new(host, gateway_config, AppTable::default());
    // The process helper's socket is read by a task on this runtime; key-value
    // stores are opened by `launch`, and Redis's need the runtime too.
    let _runtime = runtime.enter();
    let processes = Processes::new(Some(crate::helper_command()), !app.services.is_empty(), None);
    let launched = dormouse_loader::launch(&gateway, &processes, &app.name, &app, &options, &load_progress())?;
    for (label, store) in &launched.stores {
        tracing::info!("key-value store `{label}`: {store}");
    }
    let served = launched.app.clone();
    gateway.update(|_| (AppTable::single(launched.app), ()));

    runtime.block_on(async move {
        let signals = Signals::install()?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        serve_admin(&gateway, admin_listen).await?;
        // Kept-up instances once every listener is bound: a taken port
        // fails the start before any process runs.
        served.start();
        // `instance ls` and the services' status, for this one app; serving
        // goes on without them if the socket cannot be made.
        let (control_stop, control_stopped) = tokio::sync::oneshot::channel::<()>();
        let socket = state_dir.join(CONTROL_SOCKET);
        let control = std::fs::create_dir_all(&state_dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| ControlListener::unix(&socket));
        let bound = control.is_ok();
        match control {
            Ok(control) => {
                let platform = Platform::single(gateway.clone(), processes.clone(), address);
                tokio::spawn(server::serve(platform, control, ControlConfig::default(), async {
                    let _ = control_stopped.await;
                }));
            }
            Err(error) => tracing::warn!("no control API for `dormouse instance ls`: {error:#}"),
        }
        print_banner(&app, gateway.config().scheme(), address);
        let code = serve_until_signalled(gateway, listener, signals, &processes).await;
        drop(control_stop);
        if bound {
            let _ = std::fs::remove_file(&socket);
        }
        Ok(code)
    })
}

/// Guests' output lines as log events (`component`, `stream`), for JSON
/// logs.
struct GuestEvents;

impl dormouse_wasm_host::GuestOutput for GuestEvents {
    fn line(&self, component: &str, stream: &'static str, line: &[u8]) {
        tracing::info!(target: "dormouse::guest", component, stream, "{}", String::from_utf8_lossy(line));
    }
}

/// `--admin-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdminAddress(pub Option<SocketAddr>);

pub(crate) fn admin_address(text: &str) -> Result<AdminAddress, String> {
    if text == "off" {
        return Ok(AdminAddress(None));
    }
    text.parse().map(|address| AdminAddress(Some(address))).map_err(|_| format!("`{text}` is not ADDR:PORT or `off`"))
}

/// Starts the admin listener on `address`, if any (the gateway keeps
/// metrics then), and says where it is. It serves until the process exits,
/// through the drain, when `/readyz` says the gateway is not ready.
pub(crate) async fn serve_admin(gateway: &Arc<Gateway>, address: Option<SocketAddr>) -> anyhow::Result<()> {
    let (Some(address), Some(metrics)) = (address, gateway.config().metrics.clone()) else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for the admin endpoints on {address}"))?;
    let bound = listener.local_addr()?;
    let admin = Admin::new(gateway.clone(), metrics);
    tokio::spawn(dormouse_gateway::serve_admin(listener, admin, std::future::pending()));
    banner!("Admin at http://{bound} (/metrics, /healthz, /readyz)");
    Ok(())
}

/// Serves until the first signal, then drains (a second signal kills every
/// service instance and exits at once), stops every app's services and
/// removes the run's cgroups. Exit 0 if every request finished in time.
pub(crate) async fn serve_until_signalled(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    mut signals: Signals,
    processes: &Processes,
) -> ExitCode {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let on_second = gateway.clone();
    tokio::spawn(async move {
        let name = signals.recv().await;
        match on_second.config().drain_timeout {
            Duration::ZERO => {
                tracing::info!("{name}: shutting down without a drain (`--drain-timeout 0`; again to exit at once)")
            }
            limit => tracing::info!(
                "{name}: shutting down: draining in-flight requests for up to {limit:?} (again to exit at once)"
            ),
        }
        let _ = first_tx.send(());
        let name = signals.recv().await;
        tracing::warn!("{name} again: exiting without draining");
        for app in on_second.apps().apps() {
            app.supervisor().kill_now();
        }
        std::process::exit(1);
    });
    let drained = gateway
        .clone()
        .serve(listener, async {
            let _ = first_rx.await;
        })
        .await;
    for app in gateway.apps().apps() {
        app.supervisor().shutdown().await;
    }
    processes.shutdown().await;
    if drained {
        tracing::info!("stopped");
        ExitCode::SUCCESS
    } else {
        tracing::warn!("stopped before every in-flight request finished");
        ExitCode::FAILURE
    }
}

/// Reports each component's load in the log, with a spinner on a terminal
/// while a large one compiles.
pub(crate) fn load_progress() -> impl Fn(LoadEvent<'_>) {
    let show_progress = std::io::stderr().is_terminal();
    let spinner = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    move |event: LoadEvent<'_>| match event {
        LoadEvent::CompileStarted { id, bytes } if show_progress && bytes >= SPINNER_MIN_BYTES => {
            let bar = indicatif::ProgressBar::new_spinner()
                .with_message(format!("compiling component `{id}` ({})", ByteSize(bytes as u64)));
            bar.enable_steady_tick(Duration::from_millis(100));
            *spinner.lock().expect("not poisoned") = Some(bar);
        }
        LoadEvent::CompileStarted { .. } => {}
        LoadEvent::Loaded { id, outcome, elapsed } => {
            if let Some(bar) = spinner.lock().expect("not poisoned").take() {
                bar.finish_and_clear();
            }
            let how = match outcome {
                CacheOutcome::Hit => "loaded from the compile cache",
                CacheOutcome::Miss => "compiled (cache miss)",
                CacheOutcome::Replaced => "compiled (cache entry was invalid, replaced)",
                CacheOutcome::Disabled => "compiled (no cache)",
                CacheOutcome::Unwritable => "compiled (the cache could not be written; kept in memory)",
                CacheOutcome::Shared => "shares the code of an identical component",
            };
            tracing::info!("component `{id}` {how} in {:.1?}", elapsed);
        }
    }
}

fn print_banner(app: &App, scheme: &str, address: SocketAddr) {
    banner!("Serving {scheme}://{address}");
    banner!("Available Routes:");
    for trigger in &app.http_triggers {
        if let dormouse_manifest::model::Route::Public(pattern) = &trigger.route {
            let path =
                if pattern.is_wildcard() { format!("{} (wildcard)", pattern.prefix()) } else { pattern.normalized() };
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            let target = match &trigger.target {
                dormouse_manifest::model::Target::Component(id) => id.clone(),
                dormouse_manifest::model::Target::Service(id) => format!("{id} (service)"),
            };
            banner!("  {target}: {scheme}://{address}{path}");
        }
    }
}

/// The signals that end dormouse, each after a drain: every one whose
/// default action would end the process, but SIGKILL and the faults (SIGKILL
/// is handled by the reaper, which kills the services).
pub(crate) struct Signals(Vec<(&'static str, tokio::signal::unix::Signal)>);

impl Signals {
    pub(crate) fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let kinds = [
            ("SIGINT", SignalKind::interrupt()),
            ("SIGTERM", SignalKind::terminate()),
            ("SIGHUP", SignalKind::hangup()),
            ("SIGQUIT", SignalKind::quit()),
            ("SIGUSR1", SignalKind::user_defined1()),
            ("SIGUSR2", SignalKind::user_defined2()),
            ("SIGALRM", SignalKind::alarm()),
        ];
        let mut signals = Vec::with_capacity(kinds.len());
        for (name, kind) in kinds {
            signals.push((name, signal(kind).with_context(|| format!("cannot handle {name}"))?));
        }
        Ok(Signals(signals))
    }

    /// The name of the next signal that arrives.
    pub(crate) async fn recv(&mut self) -> &'static str {
        let waits = self.0.iter_mut().map(|(name, signal)| {
            Box::pin(async move {
                signal.recv().await;
                *name
            })
        });
        futures_util::future::select_all(waits).await.0
    }
}
