//! The `dormouse` binary: parses flags and wires the crates together. It
//! decides which backends exist; the crates know nothing of the command line.

/// Writes a banner line to stdout. A reader that went away (`| head -1`)
/// must not stop a server: the line is dropped.
macro_rules! banner {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod daemon;
mod platform;
mod up;

/// Every request allocates (headers, the store, guest resources) and frees on
/// another thread as often as not; mimalloc's thread-local free lists cost a
/// fraction of glibc malloc's locking and consolidation here (see bench/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "dormouse",
    version,
    about = "Scale-to-zero platform for WebAssembly HTTP components and HTTP services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object a line, with the request's span) for a log pipeline
    /// [default: `DORMOUSE_LOG_FORMAT`, else text].
    #[arg(long, global = true, value_enum, ignore_case = true)]
    log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Set once, before anything logs: whether logs are JSON lines.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether logs are JSON lines, which nothing else may write into.
pub(crate) fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The log format: the flag's, else `DORMOUSE_LOG_FORMAT`'s (any case;
/// empty is unset), else text.
fn log_format(flag: Option<LogFormat>) -> Result<LogFormat, String> {
    if let Some(format) = flag {
        return Ok(format);
    }
    match std::env::var("DORMOUSE_LOG_FORMAT").unwrap_or_default().trim().to_ascii_lowercase().as_str() {
        "" | "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("DORMOUSE_LOG_FORMAT is `{other}`: use `text` or `json`")),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve an application (a Spin manifest) until interrupted.
    Up(Box<up::UpArgs>),
    /// Host many apps, each at `<app>.<domain>`, deployed through the
    /// control API.
    Daemon(Box<daemon::DaemonArgs>),
    /// Deploy an app to the daemon: a Spin manifest, a component, or a
    /// command after `--`.
    Deploy(Box<platform::DeployArgs>),
    /// List deployed apps.
    Ls(platform::ListArgs),
    /// List, stop or start instances.
    Instance(platform::InstanceArgs),
    /// Autoscale settings and step policies of an app's services.
    Scale(platform::ScaleArgs),
    /// What is in use against each quota.
    Quotas(platform::QuotasArgs),
    /// An app's output: its services' and its components' stdout and stderr.
    Logs(platform::LogsArgs),
    /// An app's key-value stores: get, set and list keys.
    Kv(platform::KvArgs),
    /// Remove an app: its requests finish, its instances stop.
    Rm(platform::RemoveArgs),
    /// Internal: the parent of every service process, which kills them when
    /// dormouse is gone (see `dormouse_supervisor::spawn::helper_main`).
    #[command(name = "__process-helper", hide = true)]
    ProcessHelper { run_dir: Option<std::path::PathBuf> },
}

/// The process helper: this very binary (`/proc/self/exe` in the child is
/// the same file, even if it was replaced on disk since).
pub(crate) fn helper_command() -> std::process::Command {
    let mut command = std::process::Command::new("/proc/self/exe");
    command.arg("__process-helper");
    command
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Our crates log at info, everything else at warn; RUST_LOG overrides.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,dormouse=info,dormouse_cli=info,dormouse_gateway=info,dormouse_wasm_host=info,dormouse_loader=info,dormouse_kv=info")
    });
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let format = match log_format(cli.log_format) {
        Ok(format) => format,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    JSON_LOGS.store(format == LogFormat::Json, std::sync::atomic::Ordering::Relaxed);
    match format {
        LogFormat::Text => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).init();
        }
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }

    let result = match cli.command {
        Command::Up(args) => up::run(*args),
        Command::Daemon(args) => daemon::run(*args),
        Command::Deploy(args) => platform::deploy(*args),
        Command::Ls(args) => platform::list(args),
        Command::Instance(args) => platform::instance(args),
        Command::Scale(args) => platform::scale(args),
        Command::Quotas(args) => platform::quotas(args),
        Command::Logs(args) => platform::logs(args),
        Command::Kv(args) => platform::kv(args),
        Command::Rm(args) => platform::remove(args),
        Command::ProcessHelper { run_dir } => {
            return match dormouse_supervisor::spawn::helper_main(run_dir.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: process helper: {error}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(code) => code,
        Err(error) if json_logs() => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
