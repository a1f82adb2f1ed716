//! Where service processes are born. With a helper (the normal case), every
//! service process is a child of one small helper process that dormouse
//! starts at launch (the `dormouse` binary again): it forks the services on
//! dormouse's request and reaps them, and when dormouse is gone, however it
//! went (SIGKILL, the OOM killer), it kills every process of every instance
//! through the run's cgroup, reaps them at once and exits. A service's parent
//! must outlive dormouse for that: orphans go to PID 1, which on some hosts
//! reaps only every second or two. Without a helper (embedders, tests of the
//! crate) dormouse spawns the processes itself.
//!
//! The helper speaks JSON lines over a socket pair on its standard input:
//! [`Spawn`] in, [`Reply`] out; an exit is reported only after the spawn's
//! reply, so dormouse never hears of a process it does not know.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::oneshot;

/// A request to start one process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Spawn {
    pub id: u64,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The cgroup the process joins before exec.
    pub cgroup: Option<PathBuf>,
}

/// What the helper says back.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Spawned { id: u64, pid: u32 },
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
                    *status = Some(exit.await.unwrap_or_else(|_| "the helper went away".to_owned()));
                }
                status.clone().expect("set above")
            }
        }
    }
}

/// How processes are spawned: by dormouse or by its helper.
#[derive(Clone)]
pub(crate) enum Spawner {
    Direct,
    Helper(Arc<HelperClient>),
}

impl Spawner {
    /// Starts `request`'s command in a process group of its own, inside its
    /// cgroup from before its first instruction.
    pub async fn spawn(&self, request: Spawn, cgroup_procs: Option<std::os::fd::RawFd>) -> std::io::Result<Process> {
        match self {
            Spawner::Direct => {
                let mut command = tokio::process::Command::new(&request.program);
                command
                    .args(&request.args)
                    .envs(request.env)
                    .current_dir(&request.cwd)
                    .stdin(Stdio::null())
                    .process_group(0)
                    .kill_on_drop(true);
                if let Some(procs) = cgroup_procs {
                    // SAFETY: see `join_before_exec`.
                    unsafe {
                        command.pre_exec(move || join_before_exec(procs));
                    }
                }
                command.spawn().map(Process::Direct)
            }
            Spawner::Helper(helper) => helper.spawn(request).await,
        }
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as
/// `procs`: writing `0` there moves the writer.
///
/// # Safety
///
/// Meant for `pre_exec`, between fork and exec: it makes one write(2) on a
/// descriptor the parent opened and keeps open until the spawn returned,
/// allocating nothing and taking no lock, which is what is allowed there.
unsafe fn join_before_exec(procs: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: the parent keeps the descriptor open across the spawn.
    let procs = unsafe { BorrowedFd::borrow_raw(procs) };
    rustix::io::write(procs, b"0").map(drop).map_err(std::io::Error::from)
}

/// A spawn's answer: the pid and where its exit will be reported, or why not.
type SpawnReply = oneshot::Sender<Result<(u32, oneshot::Receiver<String>), String>>;
/// Spawn requests sent and not yet answered, by id.
type Pending = Arc<Mutex<HashMap<u64, SpawnReply>>>;

/// dormouse's end of the helper.
pub(crate) struct HelperClient {
    writer: Mutex<(u64, UnixStream)>,
    pending: Pending,
    /// The helper process itself, never waited for: it outlives dormouse.
    _child: std::process::Child,
}

impl HelperClient {
    /// Starts `command` (with the run's cgroup directory appended, if there
    /// is one) as the helper, in a process group of its own so that a
    /// terminal's Ctrl-C reaches dormouse, which drains, and not the helper.
    /// Call from within a tokio runtime.
    pub fn start(mut command: std::process::Command, run: Option<&Path>) -> std::io::Result<Arc<HelperClient>> {
        let (ours, theirs) = UnixStream::pair()?;
        command.args(run).stdin(Stdio::from(OwnedFd::from(theirs))).process_group(0);
        let child = command.spawn()?;
        let reader = tokio::net::UnixStream::from_std({
            let reader = ours.try_clone()?;
            reader.set_nonblocking(true)?;
            reader
        })?;
        let pending: Pending = Arc::default();
        let exits: Arc<Mutex<HashMap<u32, oneshot::Sender<String>>>> = Arc::default();
        tokio::spawn(Self::read_replies(reader, pending.clone(), exits));
        Ok(Arc::new(HelperClient { writer: Mutex::new((0, ours)), pending, _child: child }))
    }

    async fn spawn(&self, mut request: Spawn) -> std::io::Result<Process> {
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut writer = self.writer.lock().expect("not poisoned");
            writer.0 += 1;
            request.id = writer.0;
            self.pending.lock().expect("not poisoned").insert(request.id, reply_tx);
            let mut line = serde_json::to_vec(&request).map_err(std::io::Error::other)?;
            line.push(b'\n');
            // A line is a few hundred bytes: the socket buffer takes it
            // whole, so this write does not block.
            writer.1.write_all(&line)?;
        }
        match reply_rx.await {
            Ok(Ok((pid, exit))) => Ok(Process::Helper { pid, exit, status: None }),
            Ok(Err(error)) => Err(std::io::Error::other(error)),
            Err(_) => Err(std::io::Error::other("the process helper is gone")),
        }
    }

    async fn read_replies(
        reader: tokio::net::UnixStream,
        pending: Pending,
        exits: Arc<Mutex<HashMap<u32, oneshot::Sender<String>>>>,
    ) {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Reply>(&line) {
                Ok(Reply::Spawned { id, pid }) => {
                    let (exit_tx, exit_rx) = oneshot::channel();
                    exits.lock().expect("not poisoned").insert(pid, exit_tx);
                    if let Some(reply) = pending.lock().expect("not poisoned").remove(&id) {
                        let _ = reply.send(Ok((pid, exit_rx)));
                    }
                }
                Ok(Reply::Failed { id, error }) => {
                    if let Some(reply) = pending.lock().expect("not poisoned").remove(&id) {
                        let _ = reply.send(Err(error));
                    }
                }
                Ok(Reply::Exited { pid, status }) => {
                    if let Some(exit) = exits.lock().expect("not poisoned").remove(&pid) {
                        let _ = exit.send(status);
                    }
                }
                Err(error) => tracing::warn!("process helper said something unexpected: {error}"),
            }
        }
        tracing::error!("the process helper is gone: services can no longer start");
        pending.lock().expect("not poisoned").clear();
        exits.lock().expect("not poisoned").clear();
    }
}

/// The helper's whole life: spawn what dormouse asks for, report exits, and
/// when dormouse is gone (its end of the socket on standard input closes),
/// kill every process left in `run` (or, without cgroups, the process group
/// of every service it spawned), reap them and exit. A subreaper, so that
/// what the services fork and orphan is reaped here too, at once.
pub fn helper_main(run: Option<&Path>) -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let socket = UnixStream::from(std::io::stdin().as_fd_owned()?);
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UnixStream::from_std(socket)?;
        let (reader, mut writer) = socket.into_split();
        let mut lines = BufReader::new(reader).lines();
        let mut children = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let mut leaders = std::collections::HashSet::new();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    let reply = match serde_json::from_str::<Spawn>(&line) {
                        Ok(request) => {
                            let id = request.id;
                            match spawn_here(request) {
                                Ok(pid) => {
                                    leaders.insert(pid);
                                    Reply::Spawned { id, pid }
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

async fn send(writer: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) {
    use tokio::io::AsyncWriteExt as _;
    let mut line = serde_json::to_vec(reply).expect("replies serialize");
    line.push(b'\n');
    // dormouse may be gone; then nobody is listening.
    let _ = writer.write_all(&line).await;
}

/// Reaps every child that has exited, reporting each.
async fn reap(writer: &mut tokio::net::unix::OwnedWriteHalf, leaders: &mut std::collections::HashSet<u32>) {
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

fn spawn_here(request: Spawn) -> std::io::Result<u32> {
    let mut command = std::process::Command::new(&request.program);
    command.args(&request.args).envs(request.env).current_dir(&request.cwd).stdin(Stdio::null()).process_group(0);
    let procs = match &request.cgroup {
        Some(cgroup) => Some(std::fs::OpenOptions::new().write(true).open(cgroup.join("cgroup.procs"))?),
        None => None,
    };
    if let Some(procs) = &procs {
        let procs = procs.as_raw_fd();
        // SAFETY: see `join_before_exec`; `procs` stays open until after spawn.
        unsafe {
            command.pre_exec(move || join_before_exec(procs));
        }
    }
    // The child is reaped by `reap`, not through this handle.
    let child = command.spawn()?;
    Ok(child.id())
}

/// Standard input as an owned descriptor (a duplicate: the original stays
/// fd 0).
trait StdinFd {
    fn as_fd_owned(&self) -> std::io::Result<OwnedFd>;
}

impl StdinFd for std::io::Stdin {
    fn as_fd_owned(&self) -> std::io::Result<OwnedFd> {
        use std::os::fd::AsFd as _;
        self.as_fd().try_clone_to_owned()
    }
}
