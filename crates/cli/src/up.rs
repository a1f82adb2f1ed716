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
    #[arg(long, default_value = "128MiB")]
    memory_limit: ByteSize,
    /// Guest CPU time per request; past it the request gets 500.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    cpu_limit: Duration,
    /// Wall-clock time per request; past it the request gets 504.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Instances alive at once.
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
    /// Requests that may wait for an instance; past it 503 + Retry-After.
    #[arg(long, default_value_t = 1000)]
    queue_limit: usize,
    /// Largest request body; larger gets 413.
    #[arg(long, default_value = "10MiB")]
    max_body: ByteSize,
    /// Longest URL (path and query); longer gets 414.
    #[arg(long, default_value = "8KiB")]
    max_url: ByteSize,
    /// Largest header section; larger gets 431.
    #[arg(long, default_value = "32KiB")]
    max_headers: ByteSize,
    /// Time a client has to send a request head.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
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
    let supervisor = Arc::new(dormouse_supervisor::Supervisor::new(app.services.values().cloned()));
    let gateway = Gateway::new(&app, components, allowed_hosts, supervisor.clone(), host, gateway_config)?;

    runtime.block_on(async move {
        supervisor.start();
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        print_banner(&app, address);
        let drained = gateway.serve(listener, shutdown_signal()).await;
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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}
