//! Containment: every service instance runs in a cgroup (v2) of its own, so
//! that dormouse can kill (`cgroup.kill`), freeze (`cgroup.freeze`) and
//! measure (`cpu.stat`, `memory.current`) everything the app started,
//! including processes that left its process group (`setsid`, double forks).
//!
//! Layout: `<v2 mount><dormouse's own cgroup>/dormouse-<pid>/` is this run's
//! directory, and each instance gets `i-<n>` below it. A run directory whose
//! dormouse is gone (killed before its reaper could act) is cleaned at the
//! next start.
//!
//! Creating a cgroup costs milliseconds (the kernel waits out an RCU grace
//! period; ~14 ms was measured here), which a wake must not pay: a few empty
//! cgroups are made ahead of time by a background thread, and an instance's
//! cgroup is emptied and kept for the next instance instead of removed.
//!
//! Where no writable cgroup v2 hierarchy exists, instances run without one:
//! stop signals the process group, and a pause uses SIGSTOP.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Empty cgroups kept ready, at most. Each is a directory in the cgroup
/// filesystem and a little kernel memory; more would only help bursts of
/// cold starts of many services at once.
pub const MAX_SPARES: usize = 8;

/// How long a cgroup may take to empty after `cgroup.kill` before it is
/// abandoned (left for the run's final clean-up) instead of reused.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

/// The cgroups of one dormouse process.
pub struct Cgroups {
    /// This run's directory; `None` where cgroups cannot be used.
    run: Option<PathBuf>,
    spares: Mutex<Vec<PathBuf>>,
    /// How many spares to keep.
    target: usize,
    next: AtomicU64,
    refilling: AtomicBool,
}

/// An instance's cgroup, with `cgroup.procs` open so that a child can join
/// it between fork and exec (see [`Cgroup::join_fd`]).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    procs: OwnedFd,
}

impl Cgroups {
    /// Finds the cgroup v2 hierarchy, makes this run's directory, cleans
    /// directories left by dead runs, and starts making `spares` cgroups in
    /// the background (at most [`MAX_SPARES`]).
    pub fn new(spares: usize) -> Arc<Cgroups> {
        Self::with_run(run_directory(), spares)
    }

    /// No cgroups at all: for an app without services.
    pub fn none() -> Arc<Cgroups> {
        Self::with_run(None, 0)
    }

    fn with_run(run: Option<PathBuf>, spares: usize) -> Arc<Cgroups> {
        if run.is_none() && spares > 0 {
            tracing::warn!(
                "no writable cgroup v2 hierarchy: service instances run without a cgroup \
                 (processes that leave their process group are not stopped with them)"
            );
        }
        let cgroups = Arc::new(Cgroups {
            run,
            spares: Mutex::default(),
            target: spares.min(MAX_SPARES),
            next: AtomicU64::new(0),
            refilling: AtomicBool::new(false),
        });
        cgroups.refill();
        cgroups
    }

    /// This run's directory, if instances get cgroups.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run.as_deref()
    }

    /// An empty cgroup for a new instance: a spare if there is one (no system
    /// call beyond opening `cgroup.procs`), else one made now.
    pub fn take(self: &Arc<Self>) -> Option<Cgroup> {
        let run = self.run.as_ref()?;
        let spare = self.spares.lock().expect("not poisoned").pop();
        let path = match spare {
            Some(path) => path,
            None => self.make(run)?,
        };
        self.refill();
        match open_procs(&path) {
            Ok(procs) => Some(Cgroup { path, procs }),
            Err(error) => {
                tracing::warn!("cannot use cgroup `{}`: {error}", path.display());
                None
            }
        }
    }

    /// Takes back an instance's cgroup once its processes are gone: kept as a
    /// spare if it emptied, removed otherwise.
    pub fn give_back(self: &Arc<Self>, cgroup: Cgroup) {
        let Cgroup { path, procs } = cgroup;
        drop(procs);
        let _ = std::fs::write(path.join("cgroup.freeze"), "0");
        if !wait_empty(&path, EMPTY_WAIT) {
            tracing::warn!("cgroup `{}` did not empty; left for clean-up at exit", path.display());
            return;
        }
        let mut spares = self.spares.lock().expect("not poisoned");
        if spares.len() < self.target {
            spares.push(path);
        } else {
            drop(spares);
            let _ = std::fs::remove_dir(&path);
        }
    }

    fn make(&self, run: &Path) -> Option<PathBuf> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let path = run.join(format!("i-{number}"));
        match std::fs::create_dir(&path) {
            Ok(()) => Some(path),
            Err(error) => {
                tracing::warn!("cannot create cgroup `{}`: {error}", path.display());
                None
            }
        }
    }

    /// Tops the spares up on a thread of its own, off every request's path.
    fn refill(self: &Arc<Self>) {
        let Some(run) = self.run.clone() else { return };
        if self.spares.lock().expect("not poisoned").len() >= self.target || self.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let cgroups = self.clone();
        let spawned = std::thread::Builder::new().name("dormouse-cgroups".into()).spawn(move || {
            while cgroups.spares.lock().expect("not poisoned").len() < cgroups.target {
                let Some(path) = cgroups.make(&run) else { break };
                cgroups.spares.lock().expect("not poisoned").push(path);
            }
            cgroups.refilling.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.refilling.store(false, Ordering::Release);
        }
    }

    /// Kills every process of every instance at once (the second signal, or
    /// a failed shutdown). Safe to call from any thread.
    pub fn kill_all(&self) {
        if let Some(run) = &self.run {
            let _ = std::fs::write(run.join("cgroup.kill"), "1");
        }
    }

    /// Removes this run's directory (after [`Cgroups::kill_all`] or once every
    /// instance is gone).
    pub fn remove(&self) {
        if let Some(run) = &self.run {
            remove_tree(run);
        }
    }
}

impl Cgroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open `cgroup.procs`: a child writes `0` to it after fork, before
    /// exec, so that it is inside before it can fork anything.
    pub fn join_fd(&self) -> std::os::fd::RawFd {
        self.procs.as_raw_fd()
    }

    /// Kills every process in the cgroup (SIGKILL, including ones that left
    /// the process group).
    pub fn kill(&self) {
        if let Err(error) = std::fs::write(self.path.join("cgroup.kill"), "1") {
            tracing::warn!("cannot kill cgroup `{}`: {error}", self.path.display());
        }
    }

    pub fn freeze(&self, frozen: bool) -> std::io::Result<()> {
        std::fs::write(self.path.join("cgroup.freeze"), if frozen { "1" } else { "0" })
    }

    /// Whether any process is still in it.
    pub fn populated(&self) -> bool {
        populated(&self.path)
    }

    /// CPU time used by the instance's processes so far, in microseconds
    /// (`cpu.stat` `usage_usec`).
    pub fn cpu_usec(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.path.join("cpu.stat")).ok()?;
        stat.lines().find_map(|line| line.strip_prefix("usage_usec ")?.trim().parse().ok())
    }

    /// Memory charged to the instance, in bytes: `memory.current` where the
    /// memory controller is enabled, else the sum of its processes' resident
    /// sets (`VmRSS`), which counts shared pages once per process.
    pub fn memory_bytes(&self) -> Option<u64> {
        if let Ok(current) = std::fs::read_to_string(self.path.join("memory.current")) {
            return current.trim().parse().ok();
        }
        let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).ok()?;
        let mut total = 0;
        for pid in procs.lines() {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
            let kib = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
            total += kib.unwrap_or(0) * 1024;
        }
        Some(total)
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|procs| procs.lines().filter_map(|pid| pid.parse().ok()).collect())
            .unwrap_or_default()
    }
}

fn open_procs(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new().write(true).open(path.join("cgroup.procs"))?.into())
}

fn populated(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.events"))
        .map(|events| events.lines().any(|line| line == "populated 1"))
        .unwrap_or(false)
}

fn wait_empty(path: &Path, limit: Duration) -> bool {
    let started = Instant::now();
    let mut killed = false;
    while populated(path) {
        if !killed {
            let _ = std::fs::write(path.join("cgroup.kill"), "1");
            killed = true;
        }
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Kills what is left in `dir` and its children, then removes them all.
fn remove_tree(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                wait_empty(&entry.path(), EMPTY_WAIT);
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
    wait_empty(dir, EMPTY_WAIT);
    let _ = std::fs::remove_dir(dir);
}

/// The cgroup v2 mount point: `/sys/fs/cgroup` on a unified host, or
/// `/sys/fs/cgroup/unified` on a hybrid one (v1 controllers beside it).
fn v2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// This process's cgroup v2 path (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroups.lines().find_map(|line| line.strip_prefix("0::").map(str::to_owned))
}

fn run_directory() -> Option<PathBuf> {
    let mount = v2_mount()?;
    let own = own_cgroup()?;
    let parent = mount.join(own.trim_start_matches('/'));
    // cgroup.kill is Linux 5.14+; without it nothing here can be promised.
    if !parent.join("cgroup.procs").exists() {
        return None;
    }
    clean_dead_runs(&parent);
    let run = parent.join(format!("dormouse-{}", std::process::id()));
    if run.exists() {
        remove_tree(&run);
    }
    std::fs::create_dir(&run).ok()?;
    if !run.join("cgroup.kill").exists() || !run.join("cgroup.freeze").exists() {
        let _ = std::fs::remove_dir(&run);
        return None;
    }
    Some(run)
}

/// Removes run directories of dormouse processes that no longer exist, with
/// anything still running in them.
fn clean_dead_runs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix("dormouse-")) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            tracing::info!("removing cgroup `{}` left by a dormouse that is gone", entry.path().display());
            remove_tree(&entry.path());
        }
    }
}

/// Kills every process left in a run directory and removes it: what the
/// process helper does once dormouse is gone.
pub(crate) fn remove_run(run: &Path) {
    remove_tree(run);
}
