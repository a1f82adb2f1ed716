//! The platform commands (`deploy`, `ls`, `instance`, `rm`): clients of a
//! daemon's control API, modelled on KraftCloud's CLI. Tables and colour on a
//! terminal; `-o json` prints the API's own JSON.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use dormouse_control::api::{AppInfo, DeployReply, InstanceInfo};
use dormouse_control::client::{Client, Endpoint};
use http::Method;

use crate::daemon::{TOKEN_FILE, default_state_dir};
use crate::up::{CONTROL_SOCKET, positive_duration};

/// `println!` for a command's output: when the reader went away (`| head`)
/// the command ends quietly, as a Unix tool does, instead of panicking.
macro_rules! out {
    () => { out!("") };
    ($($arg:tt)*) => { write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {error}");
        std::process::exit(1);
    }
}

/// How to reach the daemon: its state directory's socket by default.
#[derive(Args, Debug, Clone)]
pub struct Connect {
    /// The daemon's state directory, where its control socket is
    /// [default: $XDG_STATE_HOME/dormouse, or ~/.local/state/dormouse].
    #[arg(long, global = true, env = "DORMOUSE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The control API over TCP (`HOST:PORT`), instead of the socket.
    #[arg(long, global = true, env = "DORMOUSE_CONTROL")]
    control: Option<String>,
    /// The bearer token for `--control` [default: the state directory's].
    #[arg(long, global = true, env = "DORMOUSE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Connect {
    fn client(&self) -> Client {
        let state_dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
        let endpoint = match &self.control {
            None => Endpoint::Unix(state_dir.join(CONTROL_SOCKET)),
            Some(address) => {
                let address = address.trim_start_matches("http://").trim_end_matches('/').to_owned();
                let token = self
                    .token
                    .clone()
                    .or_else(|| std::fs::read_to_string(state_dir.join(TOKEN_FILE)).ok().map(|t| t.trim().to_owned()));
                Endpoint::Tcp { address, token }
            }
        };
        Client::new(endpoint)
    }
}

/// How lists print (`-o`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Columns for people; colour on a terminal.
    Table,
    /// The control API's own JSON.
    Json,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Scale to zero: idle service instances go to standby (components
    /// always do).
    #[arg(short = '0', long = "scale-to-zero")]
    scale_to_zero: bool,
    /// The app's name, its host label [default: the manifest's app name,
    /// or the directory's or file's name].
    #[arg(long)]
    name: Option<String>,
    /// Idle time before a service instance goes to standby (at least 100ms).
    #[arg(long, value_parser = positive_duration)]
    cooldown: Option<Duration>,
    /// With a command: the port it listens on [default: dormouse picks one
    /// and passes it in PORT].
    #[arg(short = 'p', long)]
    port: Option<u16>,
    /// Each service instance's memory size, enforced by its cgroup
    /// [default: the manifest's, or 256MiB].
    #[arg(short = 'M', long, value_parser = crate::up::positive_size)]
    memory: Option<bytesize::ByteSize>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// A directory holding `spin.toml`, a manifest, or a component (`.wasm`);
    /// with a command, the directory it runs in [default: .].
    path: Option<PathBuf>,
    /// A command to deploy as a one-service app, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    connect: Connect,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    connect: Connect,
}

#[derive(Args, Debug)]
pub struct InstanceArgs {
    #[command(subcommand)]
    command: InstanceCommand,
}

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Every component and service instance, with its state.
    Ls {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// Print again every second until interrupted.
        #[arg(short = 'w', long)]
        watch: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Stops a service's instances (`APP/SERVICE`): they go to standby.
    Stop {
        /// `APP/SERVICE`.
        name: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Starts an instance of a service (`APP/SERVICE`) without waiting for a
    /// request.
    Start {
        /// `APP/SERVICE`.
        name: String,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    #[command(subcommand)]
    command: ScaleCommand,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum MetricArg {
    /// Millicores per instance, from the instances' cgroups.
    Cpu,
    /// Requests in flight (and waiting) per instance.
    Inflight,
    /// Requests answered per second per instance.
    Rps,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum AdjustmentArg {
    Change,
    Percent,
    Exact,
}

#[derive(Subcommand, Debug)]
pub enum ScaleCommand {
    /// Sets an app's instance range, warmup and cooldown.
    Init {
        /// The app.
        app: String,
        /// Instances kept up however idle (0: scale to zero).
        #[arg(long)]
        min_size: Option<u32>,
        /// Instances at most.
        #[arg(long)]
        max_size: Option<u32>,
        /// After a scale-out, how long before another.
        #[arg(long, value_parser = humantime::parse_duration)]
        warmup: Option<Duration>,
        /// After a scale-out, how long before a scale-in; also the idle time
        /// before standby (at least 100ms).
        #[arg(long, value_parser = positive_duration)]
        cooldown: Option<Duration>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Adds a step policy (or replaces the one of its name).
    Add {
        /// The app.
        app: String,
        /// The policy's name.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        metric: MetricArg,
        #[arg(long, value_enum, default_value = "change")]
        adjustment: AdjustmentArg,
        /// `LO:HI/ADJ`: when LO <= metric < HI, adjust by ADJ (repeatable;
        /// a missing bound is unbounded), e.g. `--step 600:800/1 --step 800:/2 --step :100/-1`.
        #[arg(long = "step", required = true, allow_hyphen_values = true)]
        steps: Vec<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Shows an app's scale settings and policies.
    Get {
        /// The app.
        app: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        connect: Connect,
    },
    /// Removes one policy (`--name`), or every setting of the app's own.
    Rm {
        /// The app.
        app: String,
        /// Only this policy.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Prints a key's value.
    Get {
        /// The app.
        app: String,
        key: String,
        /// The store's label.
        #[arg(long, default_value = "default")]
        store: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Sets a key.
    Set {
        /// The app.
        app: String,
        key: String,
        value: String,
        /// The store's label.
        #[arg(long, default_value = "default")]
        store: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Lists the keys.
    Ls {
        /// The app.
        app: String,
        /// The store's label.
        #[arg(long, default_value = "default")]
        store: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The app.
    app: String,
    /// Keep printing lines as they come, until interrupted.
    #[arg(short = 'f', long)]
    follow: bool,
    /// How many of the last lines to print first.
    #[arg(long, default_value_t = 100)]
    tail: usize,
    #[command(flatten)]
    connect: Connect,
}

#[derive(Args, Debug)]
pub struct QuotasArgs {
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    connect: Connect,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The app to remove.
    name: String,
    #[command(flatten)]
    connect: Connect,
}

/// Runs a client command on a small runtime of its own.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(future)
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::build(&args)?;
    let mut query = form_query(&[
        ("manifest", Some(bundle.manifest.clone())),
        ("scale_to_zero", Some(args.scale_to_zero.to_string())),
        ("cooldown", args.cooldown.map(|d| humantime::format_duration(d).to_string())),
        ("memory", args.memory.map(|size| size.as_u64().to_string())),
    ]);
    query.insert(0, '?');
    let path = format!("/v1/apps/{}{query}", bundle.name);
    let client = args.connect.client();
    let body = block_on(client.send(Method::PUT, &path, Some(("application/x-tar", Bytes::from(bundle.tar)))))?;
    let reply: DeployReply =
        serde_json::from_slice(&body).context("the daemon's answer is not what this CLI expects")?;
    if args.output == Output::Json {
        out!("{}", String::from_utf8_lossy(&body));
        return Ok(ExitCode::SUCCESS);
    }
    let app = &reply.app;
    let routes: Vec<String> = app.routes.iter().map(|r| format!("{} → {} ({})", r.route, r.target, r.kind)).collect();
    let style = Style::detect();
    out!("{} deployed {}", style.good("●"), app.name);
    let rows = [
        ("name", app.name.clone()),
        ("id", app.id.clone()),
        ("version", app.version.to_string()),
        ("state", style.state(&app.state)),
        ("url", app.url.clone()),
        ("routes", routes.join(", ")),
        ("load time", format!("{:.1} ms", reply.load_ms)),
        ("boot time", reply.boot_ms.map_or_else(|| "at its first request".to_owned(), |ms| format!("{ms:.1} ms"))),
        ("memory", format!("{}", bytesize::ByteSize(reply.memory_bytes))),
        ("scale to zero", if app.scale_to_zero { "on" } else { "off" }.to_owned()),
    ];
    for (index, (key, value)) in rows.iter().enumerate() {
        let branch = if index + 1 == rows.len() { "└" } else { "├" };
        out!(" {branch}{:─>15}: {value}", format!(" {key}"));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = args.connect.client();
    let apps: Vec<AppInfo> = block_on(client.get("/v1/apps"))?;
    if args.output == Output::Json {
        out!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(ExitCode::SUCCESS);
    }
    let style = Style::detect();
    let mut table = vec![["NAME", "STATE", "VERSION", "URL", "ROUTES"].map(String::from).to_vec()];
    for app in &apps {
        table.push(vec![
            app.name.clone(),
            style.state(&app.state),
            app.version.to_string(),
            app.url.clone(),
            app.routes.iter().map(|r| r.route.clone()).collect::<Vec<_>>().join(" "),
        ]);
    }
    print_table(&table);
    Ok(ExitCode::SUCCESS)
}

pub fn instance(args: InstanceArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        InstanceCommand::Ls { output, watch, connect } => {
            let client = connect.client();
            let style = Style::detect();
            loop {
                let rows: Vec<InstanceInfo> = block_on(client.get("/v1/instances"))?;
                if output == Output::Json {
                    out!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    if watch && style.terminal {
                        // Clear the screen and go home, as `watch` does.
                        write_out(format_args!("\x1b[2J\x1b[H"));
                    }
                    print_instances(&rows, &style);
                }
                if !watch {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        InstanceCommand::Stop { name, connect } => service_action(&connect, &name, "stop"),
        InstanceCommand::Start { name, connect } => service_action(&connect, &name, "start"),
    }
}

fn service_action(connect: &Connect, name: &str, action: &str) -> anyhow::Result<ExitCode> {
    let Some((app, service)) = name.split_once('/') else {
        anyhow::bail!("`{name}` is not APP/SERVICE: name the app and its service, e.g. `web/nginx`");
    };
    let path = format!("/v1/apps/{app}/services/{service}/{action}");
    let body = block_on(connect.client().send(Method::POST, &path, None))?;
    let changed = serde_json::from_slice::<serde_json::Value>(&body)?.get("changed").and_then(|v| v.as_bool());
    match (action, changed) {
        ("stop", Some(false)) => out!("{name}: no instance was running"),
        ("stop", _) => out!("{name}: stopped"),
        (_, Some(false)) => out!("{name}: already running"),
        _ => out!("{name}: starting"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let (connect, method, path, body, output) = match &args.command {
        ScaleCommand::Init { app, min_size, max_size, warmup, cooldown, connect } => {
            let body = dormouse_control::api::ScaleInit {
                min_size: *min_size,
                max_size: *max_size,
                warmup_ms: warmup.map(|d| d.as_millis() as u64),
                cooldown_ms: cooldown.map(|d| d.as_millis() as u64),
            };
            (connect, Method::PUT, format!("/v1/apps/{app}/scale"), Some(serde_json::to_vec(&body)?), Output::Table)
        }
        ScaleCommand::Add { app, name, metric, adjustment, steps, connect } => {
            let body = dormouse_control::api::PolicyInfo {
                name: name.clone(),
                metric: format!("{metric:?}").to_ascii_lowercase(),
                adjustment: format!("{adjustment:?}").to_ascii_lowercase(),
                steps: steps.clone(),
            };
            let path = format!("/v1/apps/{app}/scale/policies/{name}");
            (connect, Method::PUT, path, Some(serde_json::to_vec(&body)?), Output::Table)
        }
        ScaleCommand::Get { app, output, connect } => {
            (connect, Method::GET, format!("/v1/apps/{app}/scale"), None, *output)
        }
        ScaleCommand::Rm { app, name: Some(name), connect } => {
            (connect, Method::DELETE, format!("/v1/apps/{app}/scale/policies/{name}"), None, Output::Table)
        }
        ScaleCommand::Rm { app, name: None, connect } => {
            (connect, Method::DELETE, format!("/v1/apps/{app}/scale"), None, Output::Table)
        }
    };
    let body = body.map(|bytes| ("application/json", Bytes::from(bytes)));
    let reply = block_on(connect.client().send(method, &path, body))?;
    if output == Output::Json {
        out!("{}", String::from_utf8_lossy(&reply));
        return Ok(ExitCode::SUCCESS);
    }
    let scale: dormouse_control::api::ScaleInfo = serde_json::from_slice(&reply)?;
    out!("min size: {}", scale.min_size);
    out!("max size: {}", scale.max_size);
    out!("warmup:   {}", humantime::format_duration(Duration::from_millis(scale.warmup_ms)));
    out!("cooldown: {}", humantime::format_duration(Duration::from_millis(scale.cooldown_ms)));
    if !scale.policies.is_empty() {
        let mut table = vec![["POLICY", "METRIC", "ADJUSTMENT", "STEPS"].map(String::from).to_vec()];
        for policy in &scale.policies {
            table.push(vec![
                policy.name.clone(),
                policy.metric.clone(),
                policy.adjustment.clone(),
                policy.steps.join(" "),
            ]);
        }
        out!();
        print_table(&table);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn kv(args: KvArgs) -> anyhow::Result<ExitCode> {
    let segment =
        |text: &str| percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string();
    match args.command {
        KvCommand::Get { app, key, store, connect } => {
            let path = format!("/v1/apps/{app}/kv/{}/{}", segment(&store), segment(&key));
            let value = block_on(connect.client().send(Method::GET, &path, None))?;
            use std::io::Write as _;
            std::io::stdout().write_all(&value)?;
            if std::io::stdout().is_terminal() && !value.ends_with(b"\n") {
                out!();
            }
        }
        KvCommand::Set { app, key, value, store, connect } => {
            let path = format!("/v1/apps/{app}/kv/{}/{}", segment(&store), segment(&key));
            let body = Some(("application/octet-stream", Bytes::from(value.into_bytes())));
            block_on(connect.client().send(Method::PUT, &path, body))?;
        }
        KvCommand::Ls { app, store, output, connect } => {
            let keys: Vec<String> = block_on(connect.client().get(&format!("/v1/apps/{app}/kv/{}", segment(&store))))?;
            if output == Output::Json {
                out!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                for key in keys {
                    out!("{key}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.connect.client();
    block_on(async {
        let mut after: Option<String> = None;
        // One line more than shown, at least one: its stamp is where
        // following starts, even with `--tail 0`.
        let mut fetch = args.tail.max(1);
        let mut show = args.tail;
        loop {
            let mut query = form_query(&[("tail", Some(fetch.to_string())), ("after", after.clone())]);
            query.insert(0, '?');
            let lines: Vec<String> = client.get(&format!("/v1/apps/{}/logs{query}", args.app)).await?;
            for line in &lines[lines.len().saturating_sub(show)..] {
                out!("{}", printable(line));
            }
            if let Some(stamp) = lines.last().and_then(|line| line.split(' ').next()) {
                after = Some(stamp.to_owned());
            }
            if !args.follow {
                return Ok(ExitCode::SUCCESS);
            }
            // Following: everything new since the last line seen.
            fetch = 10_000;
            show = fetch;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// An app's log line as it may reach a terminal: control characters (an
/// app could write escape sequences that move the cursor, retitle the
/// window, or hide text) shown escaped, `\u{1b}`; tabs kept.
fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| c.is_control() && c != '\t';
    if !line.chars().any(control) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut shown = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if control(c) {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

pub fn quotas(args: QuotasArgs) -> anyhow::Result<ExitCode> {
    let quotas: dormouse_control::api::QuotaInfo = block_on(args.connect.client().get("/v1/quotas"))?;
    if args.output == Output::Json {
        out!("{}", serde_json::to_string_pretty(&quotas)?);
        return Ok(ExitCode::SUCCESS);
    }
    let style = Style::detect();
    let rows = [
        ("active instances", quotas.active_instances, false),
        ("total instances", quotas.total_instances, false),
        ("active memory", quotas.active_memory_bytes, true),
        ("apps", quotas.apps, false),
    ];
    for (name, usage, in_bytes) in rows {
        let show = |n: u64| if in_bytes { bytesize::ByteSize(n).to_string() } else { n.to_string() };
        let limit = usage.limit.map_or_else(|| "unlimited".to_owned(), show);
        out!("{name:>17}: {}{} / {limit}", style.bar(usage), show(usage.used));
    }
    out!("{:>17}: {} instances per service", "autoscale", quotas.max_instances_per_service);
    out!("{:>17}: {}", "scale to zero", if quotas.scale_to_zero { "enabled" } else { "disabled" });
    Ok(ExitCode::SUCCESS)
}

pub fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/apps/{}", args.name);
    block_on(args.connect.client().send(Method::DELETE, &path, None))?;
    out!("removed {}", args.name);
    Ok(ExitCode::SUCCESS)
}

fn print_instances(rows: &[InstanceInfo], style: &Style) {
    let mut table = vec![
        ["NAME", "APP", "KIND", "STATE", "BOOT-TIME", "MEMORY", "REQUESTS", "UPTIME", "STOP-REASON"]
            .map(String::from)
            .to_vec(),
    ];
    for row in rows {
        table.push(vec![
            row.name.clone(),
            row.app.clone(),
            row.kind.clone(),
            style.state(&row.state),
            row.boot_time_ms.map(|ms| format!("{ms:.1}ms")).unwrap_or_default(),
            row.memory_bytes.map(|b| bytesize::ByteSize(b).to_string()).unwrap_or_default(),
            row.requests.to_string(),
            row.uptime_ms
                .map(|ms| humantime::format_duration(Duration::from_secs((ms / 1000.0) as u64)).to_string())
                .unwrap_or_default(),
            row.stop_reason.clone().unwrap_or_default(),
        ]);
    }
    print_table(&table);
}

/// Prints rows as columns padded to their widest cell (escape codes not
/// counted).
fn print_table(rows: &[Vec<String>]) {
    let width = |cell: &str| strip_escapes(cell).chars().count();
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns).map(|c| rows.iter().map(|row| width(&row[c])).max().unwrap_or(0)).collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - width(cell) + 2));
            }
        }
        out!("{}", line.trim_end());
    }
}

fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Colour only on a terminal.
struct Style {
    terminal: bool,
}

impl Style {
    fn detect() -> Style {
        Style { terminal: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.terminal { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }

    /// A 20-cell bar of `usage` against its limit, on a terminal only.
    fn bar(&self, usage: dormouse_control::api::QuotaUsage) -> String {
        let Some(limit) = usage.limit.filter(|_| self.terminal) else { return String::new() };
        let filled = ((usage.used as f64 / limit.max(1) as f64).min(1.0) * 20.0).round() as usize;
        let colour = if filled >= 18 {
            "31"
        } else if filled >= 14 {
            "33"
        } else {
            "32"
        };
        format!("{}{} ", self.paint(colour, &"█".repeat(filled)), "░".repeat(20 - filled))
    }

    fn good(&self, text: &str) -> String {
        self.paint("32", text)
    }

    fn state(&self, state: &str) -> String {
        match state {
            "running" => self.paint("32", state),
            "starting" | "paused" | "stopping" => self.paint("33", state),
            "failing" => self.paint("31", state),
            _ => self.paint("2", state),
        }
    }
}

/// `key=value&…` for the values that are set.
fn form_query(pairs: &[(&str, Option<String>)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    query.finish()
}

/// What a deploy uploads: a tar archive of the app's directory, the
/// manifest's path in it, and the app's name.
struct Bundle {
    name: String,
    manifest: String,
    tar: Vec<u8>,
}

/// The manifest a bare component or command is deployed with, in the bundle.
const GENERATED_MANIFEST: &str = "dormouse-deploy.toml";

impl Bundle {
    fn build(args: &DeployArgs) -> anyhow::Result<Bundle> {
        let path = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
        if !args.command.is_empty() {
            anyhow::ensure!(path.is_dir(), "`{}` is not a directory: a command runs in a directory", path.display());
            let name = match &args.name {
                Some(name) => name.clone(),
                None => label_from(&std::path::absolute(&path)?)?,
            };
            let manifest = service_manifest(&name, &args.command, args.port);
            let tar = archive(&path, &[(GENERATED_MANIFEST.to_owned(), manifest.into_bytes())])?;
            return Ok(Bundle { name, manifest: GENERATED_MANIFEST.to_owned(), tar });
        }
        anyhow::ensure!(args.port.is_none(), "`--port` is for a command deployed after `--`");
        if path.extension().is_some_and(|ext| ext == "wasm") {
            let name = match &args.name {
                Some(name) => name.clone(),
                None => label_from(&path.with_extension(""))?,
            };
            let file_name =
                path.file_name().and_then(|n| n.to_str()).context("the component's file name is not UTF-8")?;
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
            let manifest = component_manifest(&name, file_name);
            let mut builder = tar::Builder::new(Vec::new());
            append_bytes(&mut builder, file_name, &bytes, 0o644)?;
            append_bytes(&mut builder, GENERATED_MANIFEST, manifest.as_bytes(), 0o644)?;
            return Ok(Bundle { name, manifest: GENERATED_MANIFEST.to_owned(), tar: builder.into_inner()? });
        }
        // A Spin manifest: loaded here first, so its errors show with
        // file:line:column before anything is uploaded.
        let app = dormouse_manifest::load(&path)?;
        let root = app.base_dir.clone();
        let manifest = app
            .manifest_path
            .strip_prefix(&root)
            .ok()
            .and_then(|p| p.to_str())
            .context("the manifest's path is not UTF-8")?
            .to_owned();
        let name = match &args.name {
            Some(name) => name.clone(),
            None => sanitize_label(&app.name)
                .with_context(|| format!("app name `{}` is not a host name: pass `--name`", app.name))?,
        };
        // Components built outside the app's directory travel with it, as
        // Spin's packaging takes every source: copied into the bundle, and
        // the manifest's `source` pointed at the copy.
        let canonical_root = root.canonicalize().with_context(|| format!("cannot read `{}`", root.display()))?;
        let outside: Vec<_> = app
            .components
            .values()
            .filter(|c| !c.source.canonicalize().is_ok_and(|source| source.starts_with(&canonical_root)))
            .collect();
        if outside.is_empty() {
            return Ok(Bundle { name, manifest, tar: archive(&root, &[])? });
        }
        let text = std::fs::read_to_string(&app.manifest_path)?;
        let mut document: toml_edit::DocumentMut = text.parse()?;
        let mut extra = Vec::new();
        for component in outside {
            let copied = format!("{EXTERNAL_SOURCES}/{}.wasm", component.id);
            let entry = document
                .get_mut("component")
                .and_then(|components| components.get_mut(&component.id))
                .and_then(|table| table.get_mut("source"))
                .with_context(|| {
                    format!(
                        "component `{}`: its source `{}` is outside `{}`: give it a `[component.{}]` table, or move it into the app's directory",
                        component.id,
                        component.source.display(),
                        root.display(),
                        component.id
                    )
                })?;
            *entry = toml_edit::value(copied.clone());
            let bytes = std::fs::read(&component.source).with_context(|| {
                format!("component `{}`: cannot read `{}`", component.id, component.source.display())
            })?;
            extra.push((copied, bytes));
        }
        extra.push((manifest.clone(), document.to_string().into_bytes()));
        Ok(Bundle { name, manifest, tar: archive(&root, &extra)? })
    }
}

/// Where a bundle keeps component sources that were outside the app's
/// directory.
const EXTERNAL_SOURCES: &str = ".dormouse-sources";

/// A DNS label made from a file or directory name.
fn label_from(path: &Path) -> anyhow::Result<String> {
    let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    sanitize_label(stem).with_context(|| format!("cannot make an app name from `{}`: pass `--name`", path.display()))
}

/// `My_App` → `my-app`; `None` if nothing usable is left.
fn sanitize_label(text: &str) -> Option<String> {
    let label: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let label = label.trim_matches('-');
    let label = &label[..label.len().min(63)];
    (!label.is_empty()).then(|| label.trim_end_matches('-').to_owned())
}

/// The id of the one component or service of a generated manifest: the
/// app's name where it is a valid Spin id (which starts with a letter).
fn target_id(name: &str) -> &str {
    if name.starts_with(|c: char| c.is_ascii_lowercase()) { name } else { "app" }
}

/// `text` as a TOML string, escaped as TOML escapes it.
fn toml_string(text: &str) -> String {
    toml_edit::Value::from(text).to_string().trim().to_owned()
}

fn component_manifest(name: &str, source: &str) -> String {
    let id = target_id(name);
    let (name, source) = (toml_string(name), toml_string(source));
    format!(
        "spin_manifest_version = 2\n[application]\nname = {name}\n\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"{id}\"\n\n[component.{id}]\nsource = {source}\n"
    )
}

fn service_manifest(name: &str, command: &[String], port: Option<u16>) -> String {
    let id = target_id(name);
    let name = toml_string(name);
    let command = command.iter().map(|part| toml_string(part)).collect::<Vec<_>>().join(", ");
    let port = port.map(|port| format!("port = {port}\n")).unwrap_or_default();
    format!(
        "spin_manifest_version = 2\n[application]\nname = {name}\n\n[[trigger.http]]\nroute = \"/...\"\nservice = \"{id}\"\n\n[service.{id}]\ncommand = [{command}]\n{port}"
    )
}

/// A tar archive of `root` (without dormouse's state and `.git`), with
/// `extra` files added or replacing those of the same path.
fn archive(root: &Path, extra: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let walk = walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name().into_iter().filter_entry(|entry| {
        !(entry.depth() == 1 && matches!(entry.file_name().to_str(), Some(".dormouse" | ".git" | EXTERNAL_SOURCES)))
    });
    for entry in walk {
        let entry = entry.with_context(|| format!("cannot read `{}`", root.display()))?;
        let relative = entry.path().strip_prefix(root).expect("walked from root");
        if extra.iter().any(|(name, _)| Path::new(name) == relative) {
            continue;
        }
        builder
            .append_path_with_name(entry.path(), relative)
            .with_context(|| format!("cannot add `{}` to the bundle", entry.path().display()))?;
    }
    for (name, bytes) in extra {
        append_bytes(&mut builder, name, bytes, 0o644)?;
    }
    Ok(builder.into_inner()?)
}

fn append_bytes(builder: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_cksum();
    builder.append_data(&mut header, name, bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_reach_the_terminal_without_their_control_characters() {
        assert_eq!(printable("plain\ttext"), "plain\ttext");
        assert_eq!(printable("\u{1b}]0;owned\u{7}red\u{1b}[31m"), "\\u{1b}]0;owned\\u{7}red\\u{1b}[31m");
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(sanitize_label("My_App").as_deref(), Some("my-app"));
        assert_eq!(sanitize_label("--x--").as_deref(), Some("x"));
        assert_eq!(sanitize_label("..."), None);
    }

    #[test]
    fn generated_manifests_parse() {
        let dir = Path::new("/tmp");
        let text = service_manifest("web", &["nginx".into(), "-g".into(), "daemon off;".into()], Some(8080));
        let app = dormouse_manifest::parse(&text, Path::new(GENERATED_MANIFEST), dir).unwrap();
        assert_eq!(app.services["web"].command, ["nginx", "-g", "daemon off;"]);
        let odd = ["sh".to_owned(), "-c".to_owned(), "echo \"\u{1b}[31m\\ 'x'".to_owned()];
        let text = service_manifest("web", &odd, None);
        let parsed = dormouse_manifest::parse(&text, Path::new(GENERATED_MANIFEST), dir).unwrap();
        assert_eq!(parsed.services["web"].command, odd, "any argument survives the manifest");
        assert_eq!(app.services["web"].port, Some(8080));
        let text = component_manifest("hello", "hello.wasm");
        let app = dormouse_manifest::parse(&text, Path::new(GENERATED_MANIFEST), dir).unwrap();
        assert_eq!(app.components["hello"].source, dir.join("hello.wasm"));
        let text = component_manifest("2048", "game.wasm");
        let app = dormouse_manifest::parse(&text, Path::new(GENERATED_MANIFEST), dir).unwrap();
        assert!(app.components.contains_key("app"), "an id must start with a letter");
    }
}
