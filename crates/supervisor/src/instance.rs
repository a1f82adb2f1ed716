//! One instance of a service: its process group, port and counters.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dormouse_manifest::model::Service;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::cgroup::Cgroup;
use crate::spawn::{Process, Spawn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Starting,
    Ready,
    Paused,
    Stopping,
}

pub(crate) struct Instance {
    pub number: u64,
    pub port: u16,
    /// The leader's pid; 0 until it is spawned.
    pub pid: u32,
    pub phase: Phase,
    pub in_flight: u32,
    pub served: u64,
    /// Started for requests, not by a policy or a minimum (see `idle.rs`).
    pub on_demand: bool,
    /// Its share of the platform's quotas while starting or running; given
    /// back when it is paused (standby) or gone.
    pub quota: Option<dormouse_quota::QuotaPermit>,
    pub started_at: tokio::time::Instant,
    pub boot_time: Option<Duration>,
    /// When the last lease was dropped (or the instance became ready with
    /// none); `None` while leased.
    pub idle_since: Option<tokio::time::Instant>,
    /// Wakes the owning task when the instance becomes idle, unless it is
    /// already `watching`.
    pub activity: Arc<Notify>,
    /// Whether the owning task sleeps to a time at which it looks at the
    /// instance again. It then needs no wake-up when a lease ends: idleness
    /// that begins before that time is seen then (see
    /// `ServiceHandle::idle_check`), and a request does not wake a task.
    pub watching: bool,
    /// Wakes the task that owns the process, to stop it.
    pub stop_signal: Arc<Notify>,
    pub stop_reason: Option<String>,
    /// The instance's cgroup, once spawned; `None` where the host has none
    /// to give.
    pub cgroup: Option<Cgroup>,
}

impl Instance {
    /// A new instance in `Starting`, and the request that spawns its process
    /// (which the instance's task sends). A fixed port already held by
    /// another process is an error: requests must never reach a process
    /// dormouse did not start.
    pub fn new(key: &str, config: &Service, number: u64) -> std::io::Result<(Instance, Spawn)> {
        let port = match config.port {
            Some(port) => {
                check_port_free(port)?;
                port
            }
            None => free_port()?,
        };
        let request = Instance::spawn_request(key, config, port);
        let instance = Instance {
            number,
            port,
            pid: 0,
            phase: Phase::Starting,
            in_flight: 0,
            served: 0,
            on_demand: true,
            quota: None,
            started_at: tokio::time::Instant::now(),
            boot_time: None,
            idle_since: None,
            activity: Arc::new(Notify::new()),
            watching: false,
            stop_signal: Arc::new(Notify::new()),
            stop_reason: None,
            cgroup: None,
        };
        Ok((instance, request))
    }

    /// What starts an instance of `config` (known to the helper as `key`)
    /// listening on `port`.
    pub fn spawn_request(key: &str, config: &Service, port: u16) -> Spawn {
        let mut env: Vec<(String, String)> =
            config.environment.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
        env.push(("PORT".to_owned(), port.to_string()));
        Spawn {
            id: 0,
            service: key.to_owned(),
            program: config.command[0].clone(),
            args: config.command[1..].to_vec(),
            env,
            cwd: config.workdir.clone(),
            memory: Some(config.memory),
            log: None,
            clean_env: false,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Asks the owning task to stop the process (SIGTERM, then SIGKILL).
    pub fn stop(&mut self, reason: &str) {
        if self.phase == Phase::Stopping {
            return;
        }
        if self.phase == Phase::Paused {
            // A frozen process cannot act on SIGTERM.
            self.set_frozen(false);
        }
        self.phase = Phase::Stopping;
        self.stop_reason = Some(reason.to_owned());
        self.stop_signal.notify_one();
    }

    pub fn freeze(&mut self) {
        self.set_frozen(true);
        self.phase = Phase::Paused;
        self.quota = None;
        tracing::info!(instance = self.number, pid = self.pid, freezer = self.freezer_name(), "paused");
    }

    pub fn thaw(&mut self) {
        self.set_frozen(false);
        self.phase = Phase::Ready;
    }

    /// How a pause freezes the instance: `cgroup-v2` (`cgroup.freeze`: the
    /// app sees nothing, every process in the cgroup stops), or `sigstop` to
    /// the process group where there is no cgroup.
    pub fn freezer_name(&self) -> &'static str {
        if self.cgroup.is_some() { "cgroup-v2" } else { "sigstop" }
    }

    fn set_frozen(&self, frozen: bool) {
        let result = match &self.cgroup {
            Some(cgroup) => cgroup.freeze(frozen),
            None => {
                let signal = if frozen { Signal::STOP } else { Signal::CONT };
                match Pid::from_raw(self.pid as i32) {
                    Some(group) => kill_process_group(group, signal).map_err(Into::into),
                    None => Ok(()),
                }
            }
        };
        if let Err(error) = result {
            tracing::warn!(
                instance = self.number,
                "cannot {} instance: {error}",
                if frozen { "freeze" } else { "thaw" }
            );
        }
    }
}

/// SIGTERM to the process group, SIGKILL after `timeout`; then whatever is
/// left of the instance (processes that left the group included) is killed
/// through its cgroup, and the leader is reaped.
pub async fn terminate(child: &mut Process, cgroup: Option<&Cgroup>, timeout: Duration) {
    let group = Pid::from_raw(child.id() as i32);
    if let Some(group) = group {
        let _ = kill_process_group(group, Signal::TERM);
    }
    if tokio::time::timeout(timeout, child.wait()).await.is_err() {
        tracing::warn!("process ignored SIGTERM for {timeout:?}: killing it");
        if let Some(group) = group {
            let _ = kill_process_group(group, Signal::KILL);
        }
    }
    kill_rest(group, cgroup);
    child.wait().await;
}

/// Kills every process of an instance whose leader is gone or going: all
/// of its cgroup, or, without one, its process group.
pub fn kill_rest(group: Option<Pid>, cgroup: Option<&Cgroup>) {
    match cgroup {
        Some(cgroup) => cgroup.kill(),
        None => {
            if let Some(group) = group {
                let _ = kill_process_group(group, Signal::KILL);
            }
        }
    }
}

/// How often the readiness probe tries to connect while an app starts. A
/// refused loopback connect costs some 10-20 µs of CPU, so 2,000 a second is
/// ~3 % of a core during a wake, and an app is seen listening 0.25 ms late
/// on average (bench/run.py --only services measures both).
pub const PROBE_INTERVAL: Duration = Duration::from_micros(500);

/// Resolves once the app accepts a connection on `port` (and, with a path,
/// answers `GET path` with a status below 500). Connects are tried every
/// [`PROBE_INTERVAL`] on a blocking thread of their own (tokio's timers tick
/// in whole milliseconds), which stops when this future is dropped.
pub async fn wait_ready(port: u16, path: Option<&str>) {
    let stop = Arc::new(AtomicBool::new(false));
    // Dropping the future (stopped, timed out, exited) ends the thread too.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _guard = StopOnDrop(stop.clone());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listening = tokio::task::spawn_blocking(move || {
        while !stop.load(Ordering::Acquire) {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return true;
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
        false
    });
    if !matches!(listening.await, Ok(true)) {
        return std::future::pending().await;
    }
    let Some(path) = path else { return };
    while !probe(port, path).await {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether a process in `pids` holds a listening socket on `port`. Each
/// socket among its open files is borrowed (`pidfd_getfd`, Linux 5.6+) and
/// asked whether it listens, and where: a few system calls per open socket of
/// the instance, whatever else the host has open. Where borrowing is not
/// allowed (a seccomp filter, a ptrace policy), the listening sockets on the
/// port are looked up in `/proc/net/tcp{,6}` instead, which grows with every
/// socket on the machine.
pub fn owns_listener(port: u16, pids: &[u32]) -> bool {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    let mut sockets = Vec::new();
    let mut unasked = false;
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let pidfd = Pid::from_raw(pid as i32).map(|process| pidfd_open(process, PidfdFlags::empty()));
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy().into_owned();
            if !target.starts_with("socket:") {
                continue;
            }
            let borrowed = match (&pidfd, fd.file_name().to_str().and_then(|name| name.parse().ok())) {
                (Some(Ok(pidfd)), Some(number)) => pidfd_getfd(pidfd, number, PidfdGetfdFlags::empty()).ok(),
                _ => None,
            };
            match borrowed {
                Some(socket) => {
                    let listening = rustix::net::sockopt::socket_acceptconn(&socket).unwrap_or(false);
                    let local = rustix::net::getsockname(&socket).ok().and_then(|addr| SocketAddr::try_from(addr).ok());
                    if listening && local.is_some_and(|local| local.port() == port) {
                        return true;
                    }
                }
                None => unasked = true,
            }
            sockets.push(target);
        }
    }
    unasked && listening_inodes(port).iter().any(|inode| sockets.contains(inode))
}

/// The sockets (as `/proc/PID/fd` names them, `socket:[inode]`) listening on
/// `port`, from `/proc/net/tcp` and `/proc/net/tcp6`.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT, st 0A is LISTEN, inode is field 9.
            let local_port = fields.get(1).and_then(|local| local.rsplit(':').next());
            if local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                && fields.get(3) == Some(&"0A")
                && let Some(inode) = fields.get(9)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    inodes
}

async fn probe(port: u16, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok().and_then(|code| code.parse::<u16>().ok()).is_some_and(|code| code < 500)
}

/// Fails when another process listens on `port` already (on loopback or on
/// every address).
fn check_port_free(port: u16) -> std::io::Result<()> {
    match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("port {port} is already in use by another process"),
        )),
        Err(error) => Err(error),
    }
}

/// A port free right now on loopback, for an app that reads `PORT`.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_owned_only_by_the_process_that_holds_it() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(owns_listener(port, &[std::process::id()]));
        let mut other = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(!owns_listener(port, &[other.id()]), "a process without the socket does not own it");
        other.kill().unwrap();
        other.wait().unwrap();
        drop(listener);
        assert!(!owns_listener(port, &[std::process::id()]), "nothing listens any more");
        // A connected socket on the port is not a listener.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let client_port = client.local_addr().unwrap().port();
        assert!(!owns_listener(client_port, &[std::process::id()]));
        assert_eq!(listening_inodes(listener.local_addr().unwrap().port()).len(), 1);
    }
}
