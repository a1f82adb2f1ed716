//! One instance of a service: its process group, port and counters.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use dormouse_manifest::model::{Service, Standby};
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::freezer::Freezer;

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
    pub pid: u32,
    pub phase: Phase,
    pub in_flight: u32,
    pub served: u64,
    pub started_at: tokio::time::Instant,
    pub boot_time: Option<Duration>,
    /// When the last lease was dropped (or the instance became ready with
    /// none); `None` while leased.
    pub idle_since: Option<tokio::time::Instant>,
    /// Wakes the owning task when the instance becomes idle.
    pub activity: Arc<Notify>,
    /// Wakes the task that owns the process, to stop it.
    pub stop_signal: Arc<Notify>,
    pub stop_reason: Option<String>,
    pub freezer: Freezer,
}

impl Instance {
    /// Spawns the service's command in a process group of its own.
    pub fn spawn(config: &Service, number: u64) -> std::io::Result<(Instance, tokio::process::Child)> {
        let port = match config.port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut command = tokio::process::Command::new(&config.command[0]);
        command
            .args(&config.command[1..])
            .envs(&config.environment)
            .env("PORT", port.to_string())
            .current_dir(&config.workdir)
            .stdin(Stdio::null())
            // Its own group, so that stop, freeze and thaw reach every process
            // the app forks (nginx workers, a shell's children).
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn()?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        // Only a service that pauses needs a cgroup; making one costs
        // milliseconds (the kernel waits out RCU), which a stop-mode wake
        // would pay. Joined right after spawn: what the app forks later is
        // born inside.
        let freezer = match config.standby {
            Standby::Pause => Freezer::for_process(&format!("{}-{number}-{pid}", config.id), pid),
            Standby::Stop => Freezer::Signals(pid),
        };
        let instance = Instance {
            number,
            port,
            pid,
            phase: Phase::Starting,
            in_flight: 0,
            served: 0,
            started_at: tokio::time::Instant::now(),
            boot_time: None,
            idle_since: None,
            activity: Arc::new(Notify::new()),
            stop_signal: Arc::new(Notify::new()),
            stop_reason: None,
            freezer,
        };
        Ok((instance, child))
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
            self.freezer.thaw();
        }
        self.phase = Phase::Stopping;
        self.stop_reason = Some(reason.to_owned());
        self.stop_signal.notify_one();
    }

    pub fn freeze(&mut self) {
        self.freezer.freeze();
        self.phase = Phase::Paused;
        tracing::info!(instance = self.number, pid = self.pid, freezer = self.freezer.name(), "paused");
    }

    pub fn thaw(&mut self) {
        self.freezer.thaw();
        self.phase = Phase::Ready;
    }
}

/// SIGTERM to the process group, SIGKILL after `timeout`; reaps the child.
pub async fn terminate(child: &mut tokio::process::Child, timeout: Duration) {
    let group = child.id().and_then(|pid| Pid::from_raw(pid as i32));
    if let Some(group) = group {
        let _ = kill_process_group(group, Signal::TERM);
    }
    if tokio::time::timeout(timeout, child.wait()).await.is_err() {
        tracing::warn!("process ignored SIGTERM for {timeout:?}: killing it");
        if let Some(group) = group {
            let _ = kill_process_group(group, Signal::KILL);
        }
        let _ = child.wait().await;
    } else if let Some(group) = group {
        // The leader is gone; make sure no member of its group outlives it.
        let _ = kill_process_group(group, Signal::KILL);
    }
}

/// Resolves once the app accepts a connection on `port` (and, with a path,
/// answers `GET path` with a status below 500). Tries again after 1 ms,
/// doubling to 50 ms: a fast app is seen within a millisecond of listening.
pub async fn wait_ready(port: u16, path: Option<&str>) {
    let mut delay = Duration::from_millis(1);
    loop {
        if probe(port, path).await {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

async fn probe(port: u16, path: Option<&str>) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else {
        return false;
    };
    let Some(path) = path else { return true };
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

/// A port free right now on loopback, for an app that reads `PORT`.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}
