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
use dormouse_gateway::{Gateway, GatewayConfig};
use dormouse_loader::PreparedApp;
use dormouse_manifest::{App, RuntimeConfig};
use dormouse_wasm_host::{CacheOutcome, ComponentPre, Host, HostConfig, LoadEvent};

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
    /// Where runtime state goes: the default key-value store and staged files
    /// [default: .dormouse beside the manifest].
    #[arg(long)]
    state_dir: Option<PathBuf>,
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
    /// How long shutdown waits for in-flight requests.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Where compiled components are cached [default: .dormouse/cache beside the manifest].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile every component on start, reading and writing no cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

/// A duration above zero: a zero timeout or budget would refuse everything.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be more than 0".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// A size above zero.
fn positive_size(text: &str) -> Result<ByteSize, String> {
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
    let host_config = HostConfig {
        memory_limit: usize::try_from(args.memory_limit.as_u64()).context("memory limit too large")?,
        cpu_limit: args.cpu_limit,
        wall_limit: args.timeout,
        max_instances: args.max_instances,
        queue_limit: args.queue_limit,
        cache_dir,
        ..HostConfig::default()
    };
    let gateway_config = GatewayConfig {
        header_read_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections as usize,
        max_url_bytes: usize::try_from(args.max_url.as_u64()).context("URL limit too large")?,
        max_header_bytes: usize::try_from(args.max_headers.as_u64()).context("header limit too large")?,
        max_body_bytes: args.max_body.as_u64(),
        drain_timeout: args.drain_timeout,
        ..GatewayConfig::default()
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let options = dormouse_loader::Options {
        state_dir,
        runtime_config,
        extra_env: args.env.clone(),
        env: Box::new(|name| std::env::var(name).ok()),
    };
    // Key-value stores are opened here, and Redis's need the runtime.
    let prepared = runtime.block_on(async { dormouse_loader::prepare(&app, &options) })?;
    for (label, store) in &prepared.stores {
        tracing::info!("key-value store `{label}`: {}", store.describe());
    }
    let host = Host::new(host_config)?;
    let components = load_components(&host, &prepared)?;
    let allowed_hosts = prepared.components.iter().map(|c| (c.spec.id.clone(), c.allowed_hosts.clone())).collect();
    let supervisor = {
        // The process helper's socket is read by a task on this runtime.
        let _runtime = runtime.enter();
        Arc::new(dormouse_supervisor::Supervisor::new(app.services.values().cloned(), Some(crate::helper_command())))
    };
    let gateway = Gateway::new(&app, components, allowed_hosts, supervisor.clone(), host, gateway_config)?;

    runtime.block_on(async move {
        let mut signals = Signals::install()?;
        supervisor.start();
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        print_banner(&app, address);
        // The first signal drains; a second one exits at once, killing every
        // service instance first.
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let on_second = supervisor.clone();
        tokio::spawn(async move {
            let name = signals.recv().await;
            tracing::info!("{name}: shutting down: draining in-flight requests (again to exit at once)");
            let _ = first_tx.send(());
            let name = signals.recv().await;
            tracing::warn!("{name} again: exiting without draining");
            on_second.kill_now();
            std::process::exit(1);
        });
        let drained = gateway
            .serve(listener, async {
                let _ = first_rx.await;
            })
            .await;
        supervisor.shutdown().await;
        if drained {
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        } else {
            tracing::warn!("stopped before every in-flight request finished");
            Ok(ExitCode::FAILURE)
        }
    })
}

fn load_components(host: &Host, prepared: &PreparedApp) -> anyhow::Result<Vec<ComponentPre>> {
    let show_progress = std::io::stderr().is_terminal();
    let mut loaded = Vec::with_capacity(prepared.components.len());
    for component in &prepared.components {
        let spec = &component.spec;
        let spinner = std::cell::RefCell::new(None);
        let on_event = |event: LoadEvent<'_>| match event {
            LoadEvent::CompileStarted { id, bytes } if show_progress && bytes >= SPINNER_MIN_BYTES => {
                let bar = indicatif::ProgressBar::new_spinner()
                    .with_message(format!("compiling component `{id}` ({})", ByteSize(bytes as u64)));
                bar.enable_steady_tick(Duration::from_millis(100));
                *spinner.borrow_mut() = Some(bar);
            }
            LoadEvent::CompileStarted { .. } => {}
            LoadEvent::Loaded { id, outcome, elapsed } => {
                if let Some(bar) = spinner.borrow_mut().take() {
                    bar.finish_and_clear();
                }
                let how = match outcome {
                    CacheOutcome::Hit => "loaded from the compile cache",
                    CacheOutcome::Miss => "compiled (cache miss)",
                    CacheOutcome::Replaced => "compiled (cache entry was invalid, replaced)",
                    CacheOutcome::Disabled => "compiled (no cache)",
                    CacheOutcome::Shared => "shares the code of an identical component",
                };
                tracing::info!("component `{id}` {how} in {:.1?}", elapsed);
            }
        };
        loaded.push(host.load(spec, &on_event)?);
    }
    Ok(loaded)
}

fn print_banner(app: &App, address: SocketAddr) {
    println!("Serving http://{address}");
    println!("Available Routes:");
    for trigger in &app.http_triggers {
        if let dormouse_manifest::model::Route::Public(pattern) = &trigger.route {
            let path =
                if pattern.is_wildcard() { format!("{} (wildcard)", pattern.prefix()) } else { pattern.normalized() };
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            let target = match &trigger.target {
                dormouse_manifest::model::Target::Component(id) => id.clone(),
                dormouse_manifest::model::Target::Service(id) => format!("{id} (service)"),
            };
            println!("  {target}: http://{address}{path}");
        }
    }
}

/// The signals that end dormouse, each after a drain: every one whose
/// default action would end the process, but SIGKILL and the faults (SIGKILL
/// is handled by the reaper, which kills the services).
struct Signals(Vec<(&'static str, tokio::signal::unix::Signal)>);

impl Signals {
    fn install() -> anyhow::Result<Signals> {
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
    async fn recv(&mut self) -> &'static str {
        let waits = self.0.iter_mut().map(|(name, signal)| {
            Box::pin(async move {
                signal.recv().await;
                *name
            })
        });
        futures_util::future::select_all(waits).await.0
    }
}
