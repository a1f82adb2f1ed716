//! Where service processes are born. With a helper (the normal case), every
//! service process is a child of one small helper process that dormouse
//! starts at launch (the `dormouse` binary again): it starts the services on
//! dormouse's request and reaps them, and when dormouse is gone, however it
//! went (SIGKILL, the OOM killer), it kills every process of every instance,
//! reaps them at once and exits. A service's parent must outlive dormouse for
//! that: orphans go to PID 1, which on some hosts reaps only every second or
//! two. Without a helper (embedders, tests of the crate) dormouse spawns the
//! processes itself.
//!
//! Moving a process into a cgroup costs ~14 ms (see `cgroup.rs`), so the
//! helper keeps *stubs* ready for each service: a POSIX shell already moved
//! into a fresh cgroup of its own, in the service's directory and
//! environment, blocked reading the instance's port from a pipe, after which
//! it `exec`s the service's command in place. The app starts in its cgroup
//! with no migration on the wake's path, and the stub's pid is the app's. A
//! shell costs about a millisecond of CPU to start (the `dormouse` binary
//! would cost ten, which a concurrently starting app would feel). Stubs are
//! made again in the background; when none is left (a burst of starts), a
//! process is spawned and moved the slow way.
//!
//! The helper speaks JSON lines over a socket pair on its standard input:
//! `Order`s in (prepare stubs for a service, spawn), `Reply`s out; an exit
//! is reported only after the spawn's reply, so dormouse never hears of a
//! process it does not know.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write as _};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::oneshot;

use crate::cgroup::{Cgroup, Cgroups};

/// A request to start one process of a service: argv, the environment added
/// to the inherited one (the same for every instance of the service but for
/// `PORT`), and the working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Spawn {
    pub id: u64,
    /// The service it is for: stubs are kept per service.
    pub service: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The instance's memory size in bytes, set on its cgroup.
    pub memory: Option<u64>,
    /// Where its stdout and stderr go, line by line with timestamps
    /// (`logs.rs`); `None` leaves them on dormouse's own.
    pub log: Option<PathBuf>,
    /// Start from an empty environment but for [`KEPT_ENVIRONMENT`] (the
    /// daemon's apps), rather than from dormouse's (`dormouse up`).
    #[serde(default)]
    pub clean_env: bool,
}

/// What a service started from a clean environment still gets of
/// dormouse's: where programs are, the home directory, the locale, the time
/// zone and the temporary directory. Nothing else of the daemon's (its state
/// directory, tokens, credentials) reaches an app.
pub const KEPT_ENVIRONMENT: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

impl Spawn {
    /// Sets the command's environment: dormouse's (or, clean, only the kept
    /// part of it), then the service's own.
    fn set_environment(&self, command: &mut std::process::Command) {
        if self.clean_env {
            command.env_clear();
            for name in KEPT_ENVIRONMENT {
                if let Some(value) = std::env::var_os(name) {
                    command.env(name, value);
                }
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
    }

    /// Pipes the command's output to the log, if it has one.
    fn pipe_output(&self, command: &mut std::process::Command) {
        if self.log.is_some() {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }

    /// Starts copying a spawned process's output into the log.
    fn capture_output(
        &self,
        pid: u32,
        stdout: Option<impl Read + Send + 'static>,
        stderr: Option<impl Read + Send + 'static>,
    ) {
        let Some(path) = &self.log else { return };
        let log = crate::logs::LogFile::shared(path);
        let name = self.service.rsplit('/').next().unwrap_or(&self.service);
        let source = format!("{name}[{pid}]");
        if let Some(stdout) = stdout {
            crate::logs::capture(stdout, log.clone(), source.clone(), "stdout");
        }
        if let Some(stderr) = stderr {
            crate::logs::capture(stderr, log, source, "stderr");
        }
    }
}

impl Spawn {
    /// The same command with `PORT` left out: what a service's stubs share.
    fn template(&self) -> Spawn {
        Spawn { id: 0, env: self.env.iter().filter(|(key, _)| key != "PORT").cloned().collect(), ..self.clone() }
    }

    fn port(&self) -> Option<&str> {
        self.env.iter().find(|(key, _)| key == "PORT").map(|(_, value)| value.as_str())
    }
}

/// What dormouse asks of the helper.
#[derive(Debug, Serialize, Deserialize)]
enum Order {
    /// Keep `stubs` processes ready for the service `template` is for.
    Prepare {
        template: Spawn,
        stubs: usize,
    },
    Spawn(Spawn),
    /// Keep no processes ready for `service` any more (its app is gone).
    Forget {
        service: String,
    },
}

/// What the helper says back.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Spawned { id: u64, pid: u32, cgroup: Option<PathBuf> },
    Failed { id: u64, error: String },
    Exited { pid: u32, status: String },
}

/// A service's leader process, however it was spawned.
pub(crate) enum Process {
    Direct(tokio::process::Child),
    Helper { pid: u32, exit: oneshot::Receiver<String>, status: Option<String> },
}

impl Process {
    pub fn id(&self) -> u32 {
        match self {
            Process::Direct(child) => child.id().unwrap_or(0),
            Process::Helper { pid, .. } => *pid,
        }
    }

    /// Waits for the process to exit and says how it did (`exit status: 3`,
    /// `signal: 9`). Cancel-safe; once exited, returns at once.
    pub async fn wait(&mut self) -> String {
        match self {
            Process::Direct(child) => match child.wait().await {
                Ok(status) => status.to_string(),
                Err(error) => format!("wait failed: {error}"),
            },
            Process::Helper { exit, status, .. } => {
                if status.is_none() {
                    *status = Some(exit.await.unwrap_or_else(|_| "the process helper went away".to_owned()));
                }
                status.clone().expect("set above")
            }
        }
    }
}

/// How processes are spawned: by dormouse or by its helper.
#[derive(Clone)]
pub(crate) enum Spawner {
    Direct(Arc<Cgroups>),
    Helper(Arc<HelperClient>),
}

impl Spawner {
    /// Starts `request`'s command in a process group and, where the host has
    /// cgroups, a cgroup of its own, which it is in from its first
    /// instruction.
    pub async fn spawn(&self, request: Spawn) -> std::io::Result<(Process, Option<Cgroup>)> {
        match self {
            Spawner::Direct(cgroups) => {
                let cgroup = cgroups.create();
                let mut child = spawn_joined(&request, cgroup.as_ref(), |command| {
                    let mut command = tokio::process::Command::from(command);
                    command.kill_on_drop(true);
                    command.spawn()
                })?;
                let stdout = child.stdout.take().and_then(|out| out.into_owned_fd().ok()).map(std::fs::File::from);
                let stderr = child.stderr.take().and_then(|err| err.into_owned_fd().ok()).map(std::fs::File::from);
                request.capture_output(child.id().unwrap_or(0), stdout, stderr);
                Ok((Process::Direct(child), cgroup))
            }
            Spawner::Helper(helper) => helper.spawn(request).await,
        }
    }
}

/// Spawns `request`'s command with `spawn`, joined to `cgroup` (its memory
/// size set first). If that fails, the cgroup, with nothing in it, is
/// removed (and its v1 memory mirror).
fn spawn_joined<T>(
    request: &Spawn,
    cgroup: Option<&Cgroup>,
    spawn: impl FnOnce(std::process::Command) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let spawned = (|| {
        if let (Some(cgroup), Some(memory)) = (cgroup, request.memory) {
            cgroup.limit_memory(memory)?;
        }
        let mut command = command_for(request);
        let procs = join_on_exec(&mut command, cgroup)?;
        let child = spawn(command);
        drop(procs);
        child
    })();
    if spawned.is_err()
        && let Some(cgroup) = cgroup
    {
        Cgroup::at(cgroup.path().to_owned()).retire();
    }
    spawned
}

/// The command a spawn request describes, in a process group of its own and
/// with nothing on standard input.
fn command_for(request: &Spawn) -> std::process::Command {
    let mut command = std::process::Command::new(&request.program);
    request.set_environment(&mut command);
    command.args(&request.args).current_dir(&request.cwd).stdin(Stdio::null()).process_group(0);
    request.pipe_output(&mut command);
    command
}

/// Makes the child of `command` join `cgroup` (its v2 cgroup and, on a
/// hybrid host, its v1 memory cgroup) between fork and exec (the slow way: a
/// migration). The returned files must stay open until the command has been
/// spawned.
fn join_on_exec(command: &mut std::process::Command, cgroup: Option<&Cgroup>) -> std::io::Result<Vec<std::fs::File>> {
    let Some(cgroup) = cgroup else { return Ok(Vec::new()) };
    let files = cgroup
        .procs_files()
        .into_iter()
        .map(|path| std::fs::OpenOptions::new().write(true).open(path))
        .collect::<std::io::Result<Vec<_>>>()?;
    let fds: Vec<i32> = files.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the child between fork and exec. It makes
    // one write(2) per descriptor, each kept open by the parent until the
    // spawn returned (the caller holds the returned files), allocating
    // nothing (the vector was built before the fork) and taking no lock,
    // which is what is allowed there. Writing `0` to `cgroup.procs` moves
    // the writing process.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                let procs = BorrowedFd::borrow_raw(fd);
                rustix::io::write(procs, b"0").map(drop).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    Ok(files)
}

/// A spawn's answer: the pid, its cgroup and where its exit will be
/// reported, or why not.
type SpawnReply = oneshot::Sender<Result<(u32, Option<PathBuf>, oneshot::Receiver<String>), String>>;
/// Spawn requests sent and not yet answered, by id.
type Pending = Arc<Mutex<HashMap<u64, SpawnReply>>>;

/// dormouse's end of the helper, which starts it again if it died (killed
/// from outside): its orphaned services are then killed through their
/// cgroups, and the next wake starts them under the new helper.
pub(crate) struct HelperClient {
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    run: Option<PathBuf>,
    connection: Mutex<Option<Connection>>,
    /// Every `prepare` so far, sent again to a new helper.
    prepared: Mutex<HashMap<String, (Spawn, usize)>>,
}

/// One running helper.
struct Connection {
    writer: UnixStream,
    next_id: u64,
    pending: Pending,
    alive: Arc<AtomicBool>,
    /// The helper process itself: it outlives dormouse; waited for only
    /// once it died and is replaced.
    child: std::process::Child,
}

impl HelperClient {
    /// Starts `command` as the helper (with the run's cgroup directory, if
    /// there is one, appended), in a process group of its own so that a
    /// terminal's Ctrl-C reaches dormouse, which drains, and not the helper.
    /// Call from within a tokio runtime.
    pub fn start(command: std::process::Command, run: Option<&Path>) -> std::io::Result<Arc<HelperClient>> {
        let client = HelperClient {
            program: command.get_program().to_owned(),
            args: command.get_args().map(ToOwned::to_owned).collect(),
            run: run.map(Path::to_owned),
            connection: Mutex::default(),
            prepared: Mutex::default(),
        };
        *client.connection.lock().expect("not poisoned") = Some(client.connect()?);
        Ok(Arc::new(client))
    }

    fn connect(&self) -> std::io::Result<Connection> {
        let (ours, theirs) = UnixStream::pair()?;
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .args(&self.run)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .process_group(0)
            .spawn()?;
        let reader = tokio::net::UnixStream::from_std({
            let reader = ours.try_clone()?;
            reader.set_nonblocking(true)?;
            reader
        })?;
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(read_replies(reader, pending.clone(), alive.clone()));
        let mut connection = Connection { writer: ours, next_id: 0, pending, alive, child };
        for (template, stubs) in self.prepared.lock().expect("not poisoned").values() {
            send_order(&mut connection.writer, &Order::Prepare { template: template.clone(), stubs: *stubs })?;
        }
        Ok(connection)
    }

    /// The running helper, started again if it died.
    fn with_connection<T>(&self, act: impl FnOnce(&mut Connection) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut connection = self.connection.lock().expect("not poisoned");
        if !connection.as_ref().is_some_and(|c| c.alive.load(Ordering::Acquire)) {
            tracing::warn!("the process helper is gone: starting it again");
            if let Some(mut dead) = connection.take() {
                // Reaped off the async threads: it may still be exiting.
                std::thread::spawn(move || dead.child.wait());
            }
            *connection = Some(self.connect()?);
        }
        act(connection.as_mut().expect("set above"))
    }

    /// Asks for `stubs` processes to be kept ready for `template`'s service.
    pub fn prepare(&self, template: Spawn, stubs: usize) -> std::io::Result<()> {
        // One entry per service: a redeployed app replaces its own.
        self.prepared.lock().expect("not poisoned").insert(template.service.clone(), (template.clone(), stubs));
        self.with_connection(|connection| send_order(&mut connection.writer, &Order::Prepare { template, stubs }))
    }

    /// Asks that no processes be kept ready for `service` any more; a
    /// helper that is gone took them with it.
    pub fn forget(&self, service: &str) -> std::io::Result<()> {
        self.prepared.lock().expect("not poisoned").remove(service);
        let mut connection = self.connection.lock().expect("not poisoned");
        match connection.as_mut().filter(|c| c.alive.load(Ordering::Acquire)) {
            Some(connection) => send_order(&mut connection.writer, &Order::Forget { service: service.to_owned() }),
            None => Ok(()),
        }
    }

    async fn spawn(&self, mut request: Spawn) -> std::io::Result<(Process, Option<Cgroup>)> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.with_connection(|connection| {
            connection.next_id += 1;
            request.id = connection.next_id;
            connection.pending.lock().expect("not poisoned").insert(request.id, reply_tx);
            send_order(&mut connection.writer, &Order::Spawn(request))
        })?;
        match reply_rx.await {
            Ok(Ok((pid, cgroup, exit))) => Ok((Process::Helper { pid, exit, status: None }, cgroup.map(Cgroup::at))),
            Ok(Err(error)) => Err(std::io::Error::other(error)),
            Err(_) => Err(std::io::Error::other("the process helper went away")),
        }
    }
}

/// Hands each reply to whoever waits for it, until the helper is gone; then
/// every waiter hears so (an instance's exit included: its task then kills
/// what is left of it through its cgroup).
async fn read_replies(reader: tokio::net::UnixStream, pending: Pending, alive: Arc<AtomicBool>) {
    let mut exits: HashMap<u32, oneshot::Sender<String>> = HashMap::new();
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Reply>(&line) {
            Ok(Reply::Spawned { id, pid, cgroup }) => {
                let (exit_tx, exit_rx) = oneshot::channel();
                exits.insert(pid, exit_tx);
                if let Some(reply) = pending.lock().expect("not poisoned").remove(&id) {
                    let _ = reply.send(Ok((pid, cgroup, exit_rx)));
                }
            }
            Ok(Reply::Failed { id, error }) => {
                if let Some(reply) = pending.lock().expect("not poisoned").remove(&id) {
                    let _ = reply.send(Err(error));
                }
            }
            Ok(Reply::Exited { pid, status }) => {
                if let Some(exit) = exits.remove(&pid) {
                    let _ = exit.send(status);
                }
            }
            Err(error) => tracing::warn!("process helper said something unexpected: {error}"),
        }
    }
    alive.store(false, Ordering::Release);
    pending.lock().expect("not poisoned").clear();
}

fn send_order(writer: &mut UnixStream, order: &Order) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(order).map_err(std::io::Error::other)?;
    line.push(b'\n');
    // A line is a few hundred bytes: the socket buffer takes it whole, so
    // this write does not block.
    writer.write_all(&line)
}

/// How long after a start its stub is replaced: long enough for a fast app
/// to be up (nginx listens in ~5 ms, a small Python app in ~40 ms; measured,
/// the readiness overhead of the Python app fell from ~2 ms to ~1 ms once
/// stubs were no longer made during its start), short enough that the next
/// wake finds the service's second stub, or this one, ready.
const REFILL_DELAY: Duration = Duration::from_millis(250);

/// What a stub runs: wait for the port and the working directory, enter the
/// directory, then become the service's command (`$0 "$@"`) with the port
/// in `PORT` and nothing on standard input. A closed pipe means it is not
/// needed. The directory is entered now, not when the stub was made: a
/// bundle directory removed and unpacked again since (a rollback to the
/// same content) is the new one.
const STUB_SCRIPT: &str = r#"IFS= read -r PORT || exit 0; IFS= read -r DIR || exit 0; cd -P -- "$DIR" || exit 1; unset DIR; export PORT; exec "$0" "$@" </dev/null"#;

/// A shell waiting in a cgroup of its own to become a service's process.
struct Stub {
    pid: u32,
    port_pipe: std::process::ChildStdin,
    cgroup: PathBuf,
}

/// The services stubs are kept for, at most: the most recently prepared or
/// started ones. Beyond them a start pays the migration (~14 ms), and a
/// host with many idle services keeps no more than 16 idle shells.
const STUBBED_SERVICES: usize = 8;

/// Which services have stubs, and those ready.
#[derive(Default)]
struct StubTable {
    /// Every service dormouse prepared: the command its stubs become and
    /// how many to keep.
    known: HashMap<String, (Spawn, usize)>,
    /// The ready stubs of the services that have them.
    ready: HashMap<String, Vec<Stub>>,
    /// Those services, least recently used first.
    recent: std::collections::VecDeque<String>,
}

impl StubTable {
    /// Marks `service` as just used, giving it stubs and taking them from
    /// the least recently used service past the limit.
    fn touch(&mut self, service: &str) {
        self.recent.retain(|name| name != service);
        self.recent.push_back(service.to_owned());
        self.ready.entry(service.to_owned()).or_default();
        while self.recent.len() > STUBBED_SERVICES {
            let evicted = self.recent.pop_front().expect("longer than the limit");
            if let Some(stubs) = self.ready.remove(&evicted) {
                retire_stubs(stubs);
            }
        }
    }
}

/// Lets unneeded stubs go: their pipe closes, they exit, and their cgroups
/// are removed once empty (on a thread: that may take a moment).
fn retire_stubs(stubs: Vec<Stub>) {
    if stubs.is_empty() {
        return;
    }
    std::thread::spawn(move || {
        for stub in stubs {
            drop(stub.port_pipe);
            Cgroup::at(stub.cgroup).retire();
        }
    });
}

/// The helper's stubs.
struct Stubs {
    run: PathBuf,
    table: Mutex<StubTable>,
    next: AtomicU64,
    refilling: AtomicBool,
}

impl Stubs {
    /// Makes stubs until every service that has them has its target ready,
    /// on a thread of its own: each costs a cgroup migration (~14 ms), which
    /// no request should wait for. After `delay`: a stub's own start (a
    /// millisecond or so of CPU) would otherwise compete with the app that
    /// just started.
    fn refill(self: &Arc<Self>, delay: Duration) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let stubs = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            loop {
                let wanted = {
                    let table = stubs.table.lock().expect("not poisoned");
                    table.ready.iter().find_map(|(service, ready)| {
                        let (template, target) = table.known.get(service)?;
                        (ready.len() < *target).then(|| template.clone())
                    })
                };
                let Some(template) = wanted else { break };
                match stubs.make(&template) {
                    Ok(stub) => {
                        let mut table = stubs.table.lock().expect("not poisoned");
                        match table.ready.get_mut(&template.service) {
                            Some(ready) => ready.push(stub),
                            // Evicted meanwhile.
                            None => retire_stubs(vec![stub]),
                        }
                    }
                    Err(error) => {
                        eprintln!("dormouse process helper: cannot prepare `{}`: {error}", template.program);
                        break;
                    }
                }
            }
            stubs.refilling.store(false, Ordering::Release);
        });
    }

    fn make(&self, template: &Spawn) -> std::io::Result<Stub> {
        let cgroup = self.run.join(format!("w-{}", self.next.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&cgroup)?;
        let instance = Cgroup::at(cgroup.clone());
        if let Some(memory) = template.memory
            && let Err(error) = instance.limit_memory(memory)
        {
            instance.retire();
            return Err(error);
        }
        let mut stub = std::process::Command::new("/bin/sh");
        template.set_environment(&mut stub);
        stub.args(["-c", STUB_SCRIPT, &template.program])
            .args(&template.args)
            .current_dir(&template.cwd)
            .stdin(Stdio::piped())
            .process_group(0);
        template.pipe_output(&mut stub);
        let mut child = stub.spawn()?;
        let port_pipe = child.stdin.take().expect("piped");
        // The stub becomes the app: its pid and its output are the app's.
        template.capture_output(child.id(), child.stdout.take(), child.stderr.take());
        if let Err(error) = instance.join(child.id()) {
            drop(port_pipe);
            let _ = child.wait();
            instance.retire();
            return Err(error);
        }
        Ok(Stub { pid: child.id(), port_pipe, cgroup })
    }

    /// Keeps `target` stubs ready for `template`'s service (one of the most
    /// recently used).
    fn prepare(self: &Arc<Self>, template: Spawn, target: usize) {
        let template = template.template();
        let service = template.service.clone();
        let mut table = self.table.lock().expect("not poisoned");
        let changed = table.known.get(&service).is_some_and(|(known, _)| *known != template);
        table.known.insert(service.clone(), (template, target));
        if changed && let Some(old) = table.ready.remove(&service) {
            // Another command for the service: the old stubs are of no use.
            retire_stubs(old);
        }
        table.touch(&service);
        drop(table);
        self.refill(Duration::ZERO);
    }

    /// Keeps no stubs for `service` any more, and lets its ready ones go.
    fn forget(&self, service: &str) {
        let mut table = self.table.lock().expect("not poisoned");
        table.known.remove(service);
        table.recent.retain(|name| name != service);
        if let Some(stubs) = table.ready.remove(service) {
            retire_stubs(stubs);
        }
    }

    /// A ready stub that becomes `request`, if there is one; either way the
    /// service counts as just used (it gets stubs again if it had none).
    fn take(self: &Arc<Self>, request: &Spawn) -> Option<Stub> {
        let mut table = self.table.lock().expect("not poisoned");
        if table.known.get(&request.service).is_none_or(|(template, _)| *template != request.template()) {
            return None;
        }
        table.touch(&request.service);
        let stub = table.ready.get_mut(&request.service).and_then(Vec::pop);
        drop(table);
        self.refill(REFILL_DELAY);
        stub
    }
}

/// The helper's whole life: start what dormouse asks for, report exits, and
/// when dormouse is gone (its end of the socket on standard input closes),
/// kill every process left in `run` (or, without cgroups, the process group
/// of every service it started), reap them and exit. A subreaper, so that
/// what the services fork and orphan is reaped here too, at once.
pub fn helper_main(run: Option<&Path>) -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let stubs = run.map(|run| {
        Arc::new(Stubs {
            run: run.to_owned(),
            table: Mutex::default(),
            next: AtomicU64::new(0),
            refilling: AtomicBool::new(false),
        })
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use std::os::fd::AsFd as _;
        let socket = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UnixStream::from_std(socket)?;
        let (reader, mut writer) = socket.into_split();
        let mut lines = BufReader::new(reader).lines();
        let mut children = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let mut leaders = HashSet::new();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    let reply = match serde_json::from_str::<Order>(&line) {
                        Ok(Order::Prepare { template, stubs: count }) => {
                            if let Some(stubs) = &stubs {
                                stubs.prepare(template, count);
                            }
                            continue;
                        }
                        Ok(Order::Forget { service }) => {
                            if let Some(stubs) = &stubs {
                                stubs.forget(&service);
                            }
                            continue;
                        }
                        Ok(Order::Spawn(request)) => {
                            let id = request.id;
                            match start(request, run, stubs.as_ref()) {
                                Ok((pid, cgroup)) => {
                                    leaders.insert(pid);
                                    Reply::Spawned { id, pid, cgroup }
                                }
                                Err(error) => Reply::Failed { id, error: error.to_string() },
                            }
                        }
                        Err(error) => Reply::Failed { id: 0, error: error.to_string() },
                    };
                    send(&mut writer, &reply).await;
                    // An exit that came meanwhile is reported after the reply.
                    reap(&mut writer, &mut leaders).await;
                }
                _ = children.recv() => reap(&mut writer, &mut leaders).await,
            }
        }
        // dormouse is gone: nothing it started may outlive it.
        for leader in &leaders {
            if let Some(group) = rustix::process::Pid::from_raw(*leader as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
        }
        if let Some(run) = run.map(Path::to_owned) {
            let _ = tokio::task::spawn_blocking(move || crate::cgroup::remove_run(&run)).await;
        }
        // Reap what was killed, for a moment: the helper's own exit hands
        // anything slower to PID 1, dead already.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while !leaders.is_empty() && tokio::time::Instant::now() < deadline {
            reap(&mut writer, &mut leaders).await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    })
}

/// Starts one service process: in a ready stub if there is one, else spawned
/// (and, with cgroups, moved into a new one the slow way). Returns its pid and
/// cgroup.
fn start(request: Spawn, run: Option<&Path>, stubs: Option<&Arc<Stubs>>) -> std::io::Result<(u32, Option<PathBuf>)> {
    check_runnable(&request)?;
    let cwd = std::os::unix::ffi::OsStrExt::as_bytes(request.cwd.as_os_str());
    if let Some(stubs) = stubs
        && let Some(port) = request.port()
        // A line each: a directory with a newline in its name is spawned.
        && !cwd.contains(&b'\n')
    {
        let mut orders = format!("{port}\n").into_bytes();
        orders.extend_from_slice(cwd);
        orders.push(b'\n');
        while let Some(mut stub) = stubs.take(&request) {
            // A stub that died meanwhile (killed from outside) takes no
            // orders: try the next.
            if stub.port_pipe.write_all(&orders).is_ok() {
                return Ok((stub.pid, Some(stub.cgroup)));
            }
            Cgroup::at(stub.cgroup).retire();
        }
    }
    let cgroup = match run {
        Some(run) => {
            let path = run.join(format!("s-{}-{}", request.id, std::process::id()));
            std::fs::create_dir(&path)?;
            Some(Cgroup::at(path))
        }
        None => None,
    };
    // The child is reaped by `reap`, not through this handle.
    let mut child = spawn_joined(&request, cgroup.as_ref(), |mut command| command.spawn())?;
    request.capture_output(child.id(), child.stdout.take(), child.stderr.take());
    Ok((child.id(), cgroup.map(|c| c.path().to_owned())))
}

/// What `execvp` would refuse, found before a stub commits to the command:
/// a program not on `PATH` (or not executable), a missing directory.
fn check_runnable(request: &Spawn) -> std::io::Result<()> {
    let path = request.env.iter().find(|(key, _)| key == "PATH").map(|(_, value)| value.as_str());
    runnable(&request.program, &request.cwd, path)
}

/// Whether `program` would start in `cwd`: a path (with a `/`, relative to
/// `cwd`) to an executable file, or an executable on `path` (dormouse's
/// `PATH` when `None`); and `cwd` a directory.
pub(crate) fn runnable(program: &str, cwd: &Path, path: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let not_found = |what: String| std::io::Error::new(std::io::ErrorKind::NotFound, what);
    if !cwd.is_dir() {
        return Err(not_found(format!("working directory `{}` does not exist", cwd.display())));
    }
    let executable = |path: &Path| path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let found = if program.contains('/') {
        executable(&cwd.join(program))
    } else {
        let path = path.map(str::to_owned).or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
        std::env::split_paths(&path).any(|dir| executable(&dir.join(program)))
    };
    if found { Ok(()) } else { Err(not_found(format!("`{program}` is not an executable on PATH"))) }
}

async fn send(writer: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) {
    use tokio::io::AsyncWriteExt as _;
    let mut line = serde_json::to_vec(reply).expect("replies serialize");
    line.push(b'\n');
    // dormouse may be gone; then nobody is listening.
    let _ = writer.write_all(&line).await;
}

/// Reaps every child that has exited, reporting each.
async fn reap(writer: &mut tokio::net::unix::OwnedWriteHalf, leaders: &mut HashSet<u32>) {
    use rustix::process::{WaitOptions, wait};
    while let Ok(Some((pid, status))) = wait(WaitOptions::NOHANG) {
        let status = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => format!("exit status: {code}"),
            (None, Some(signal)) => format!("signal: {signal}"),
            (None, None) => "ended".to_owned(),
        };
        let pid = pid.as_raw_nonzero().get() as u32;
        leaders.remove(&pid);
        send(writer, &Reply::Exited { pid, status }).await;
    }
}
