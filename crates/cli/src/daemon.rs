//! `dormouse daemon`: many apps on one listener, each at `<app>.<domain>`,
//! deployed, listed and removed through the control API; restored from the
//! state directory on start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::Args;
use dormouse_control::server::{self, ControlConfig, ControlListener};
use dormouse_control::{DaemonConfig, Platform};
use dormouse_gateway::{AppTable, Gateway, GatewayConfig, Metrics};
use dormouse_quota::{QuotaLimits, Quotas};
use dormouse_supervisor::Processes;
use dormouse_wasm_host::{Host, HostConfig};

use crate::up::{
    AdminAddress, CONTROL_SOCKET, Limits, Signals, TlsArgs, admin_address, serve_admin, serve_until_signalled,
};

/// The bearer token's file in the state directory (TCP control only).
pub(crate) const TOKEN_FILE: &str = "token";

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Address apps are served on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Apps answer at `<app>.<domain>`; `localhost` needs no DNS set-up.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Apps, bundles, the compile cache and the control socket
    /// [default: $XDG_STATE_HOME/dormouse, or ~/.local/state/dormouse].
    #[arg(long, env = "DORMOUSE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Serve the control API on this TCP address, with a bearer token
    /// (made on first start, kept in the state directory), instead of the
    /// Unix socket.
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// Largest bundle a deploy may upload.
    #[arg(long, default_value = "256MiB", value_parser = crate::up::positive_size)]
    max_upload: ByteSize,
    /// Quota: instances active at once (service instances starting or
    /// running, component instances handling a request) [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_active_instances: Option<u64>,
    /// Quota: the memory sizes of the active instances, summed
    /// [default: no limit].
    #[arg(long, value_parser = crate::up::positive_size)]
    max_active_memory: Option<ByteSize>,
    /// Quota: instances that may exist, standby included [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_total_instances: Option<u64>,
    /// Quota: apps that may be deployed [default: no limit].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_apps: Option<u64>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address, never the
    /// apps' one; `off` keeps no metrics. The default port is the one
    /// OpenTelemetry's Prometheus exporters use.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9464", value_parser = admin_address)]
    admin_listen: AdminAddress,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    tls: TlsArgs,
}

/// The state directory when none is given: XDG's state home.
pub(crate) fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("dormouse"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".local/state/dormouse")
        }
    }
}

pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let tls = args.tls.load()?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    create_private_dir(&state_dir)?;
    // One daemon per state directory: a second would serve the same apps
    // from the same database and bundles.
    let _lock = lock_state_dir(&state_dir)?;
    let domain = args.domain.trim_matches('.').to_ascii_lowercase();
    let label = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    anyhow::ensure!(
        !domain.is_empty() && domain.len() <= 253 && domain.split('.').all(label),
        "`{}` is not a domain name: use labels of letters, digits and `-` separated by dots",
        args.domain
    );
    let quotas = Quotas::new(QuotaLimits {
        active_instances: args.max_active_instances,
        active_memory: args.max_active_memory.map(|size| size.as_u64()),
    });
    let host_config =
        HostConfig { quotas: Some(quotas.clone()), ..args.limits.host_config(Some(state_dir.join("cache")))? };
    let host = Host::new(host_config)?;
    let gateway_config =
        GatewayConfig { tls, metrics: args.admin_listen.0.map(|_| Metrics::new()), ..args.limits.gateway_config()? };
    let gateway = Gateway::new(host, gateway_config, AppTable::for_domain(&domain));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let signals = Signals::install()?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        // Before the apps are restored: a taken port fails the start at
        // once, and `/readyz` says "not ready" until they are.
        serve_admin(&gateway, args.admin_listen.0).await?;
        let (control, control_at) = control_listener(&state_dir, args.control_listen).await?;
        let processes = Processes::with_clean_environment(Some(crate::helper_command()), Some(quotas.clone()));
        let config = DaemonConfig {
            state_dir: state_dir.clone(),
            domain: domain.clone(),
            drain_timeout: args.limits.drain_timeout(),
            quotas,
            max_total_instances: args.max_total_instances,
            max_apps: args.max_apps,
            max_bundle_bytes: args.max_upload.as_u64(),
        };
        let platform = Platform::for_daemon(gateway.clone(), processes.clone(), address, config)?;
        let started = Instant::now();
        let restored = platform.restore().await?;
        tracing::info!("{restored} apps restored in {:.1?}", started.elapsed());
        let (control_stop, control_stopped) = tokio::sync::oneshot::channel::<()>();
        let control_config = ControlConfig {
            max_upload_bytes: usize::try_from(args.max_upload.as_u64()).unwrap_or(usize::MAX),
            ..ControlConfig::default()
        };
        tokio::spawn(server::serve(platform.clone(), control, control_config, async {
            let _ = control_stopped.await;
        }));
        banner!("Control API at {control_at}");
        let scheme = gateway.config().scheme();
        banner!("Serving apps at {scheme}://<app>.{domain}:{}", address.port());

        let code = serve_until_signalled(gateway, listener, signals, &processes).await;
        drop(control_stop);
        if args.control_listen.is_none() {
            let _ = std::fs::remove_file(state_dir.join(CONTROL_SOCKET));
        }
        Ok(code)
    })
}

/// Makes the state directory, readable by its owner only (it holds the
/// token, the database, every app's data).
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    Ok(())
}

/// An exclusive lock on `<dir>/daemon.lock`, held while the returned file is
/// open (the kernel drops it when the daemon dies, however it dies).
fn lock_state_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = dir.join("daemon.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        anyhow::bail!("another dormouse daemon (pid {}) uses the state directory `{}`", holder.trim(), dir.display());
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// The control API's listener and where it is, for the banner.
async fn control_listener(state_dir: &Path, tcp: Option<SocketAddr>) -> anyhow::Result<(ControlListener, String)> {
    match tcp {
        None => {
            let socket = state_dir.join(CONTROL_SOCKET);
            Ok((ControlListener::unix(&socket)?, socket.display().to_string()))
        }
        Some(address) => {
            let token = token(&state_dir.join(TOKEN_FILE))?;
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for the control API on {address}"))?;
            let bound = listener.local_addr()?;
            let at = format!("http://{bound} (bearer token in `{}`)", state_dir.join(TOKEN_FILE).display());
            Ok((ControlListener::Tcp { listener, token }, at))
        }
    }
}

/// The bearer token in `path`, made (mode 0600) on first use.
fn token(path: &Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => {
            // Whoever reads it is the operator: owner only, whatever it was.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make `{}` private", path.display()))?;
            return Ok(token.trim().to_owned());
        }
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot read `{}`", path.display())),
    }
    let token = server::new_token()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    writeln!(file, "{token}")?;
    Ok(token)
}
