//! Containment: every service instance runs in a cgroup (v2) of its own, so
//! that dormouse can kill (`cgroup.kill`), freeze (`cgroup.freeze`) and
//! measure (`cpu.stat`, `memory.current`) everything the app started,
//! including processes that left its process group (`setsid`, double forks).
//!
//! Layout: `<v2 mount><dormouse's own cgroup>/dormouse-<pid>/` is this run's
//! directory, and each instance gets a directory below it. A run directory
//! whose dormouse is gone (killed before its helper could act) is cleaned at
//! the next start.
//!
//! Measured on this project's VMs (Linux 6.18, cgroup v2 without
//! `favordynmods`): making a cgroup takes ~0.05 ms, but moving a process into
//! one takes ~14 ms (the writer side of the kernel's threadgroup lock waits
//! out an RCU grace period). So a wake never moves a process: the process
//! helper keeps processes waiting inside fresh cgroups ahead of time
//! (`spawn.rs`), and the app is exec'd in one of them.
//!
//! Where no writable cgroup v2 hierarchy exists, instances run without one:
//! stop signals the process group, and a pause uses SIGSTOP.
//!
//! Memory sizes: an instance's cgroup gets `memory.max` where the v2
//! hierarchy has the memory controller. On hybrid hosts (v1 controllers
//! beside a v2 hierarchy that has none, as on this project's VMs) each
//! instance also gets a directory of the same name in the v1 memory
//! hierarchy, `<v1 memory mount><own memory cgroup>/dormouse-<pid>/`, with
//! `memory.limit_in_bytes`, and its processes join both.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a cgroup may take to empty after `cgroup.kill` before it is
/// abandoned (left for the run's final clean-up) instead of removed.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

/// The cgroups of one dormouse process.
pub struct Cgroups {
    /// This run's directory; `None` where cgroups cannot be used.
    run: Option<PathBuf>,
    next: AtomicU64,
}

/// An instance's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroups {
    /// Finds the cgroup v2 hierarchy, cleans directories left by dead runs
    /// and makes this run's directory; with `enabled` false (an app without
    /// services), does nothing.
    pub fn new(enabled: bool) -> Arc<Cgroups> {
        let run = if enabled { run_directory() } else { None };
        if enabled && run.is_none() {
            tracing::warn!(
                "no writable cgroup v2 hierarchy: service instances run without a cgroup \
                 (processes that leave their process group are not stopped with them)"
            );
        }
        Arc::new(Cgroups { run, next: AtomicU64::new(0) })
    }

    /// This run's directory, if instances get cgroups.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run.as_deref()
    }

    /// A new, empty cgroup (cheap: a directory).
    pub fn create(&self) -> Option<Cgroup> {
        let run = self.run.as_ref()?;
        let path = run.join(format!("i-{}", self.next.fetch_add(1, Ordering::Relaxed)));
        match std::fs::create_dir(&path) {
            Ok(()) => Some(Cgroup { path }),
            Err(error) => {
                tracing::warn!("cannot create cgroup `{}`: {error}", path.display());
                None
            }
        }
    }

    /// Kills every process of every instance at once (the second signal).
    pub fn kill_all(&self) {
        if let Some(run) = &self.run {
            let _ = std::fs::write(run.join("cgroup.kill"), "1");
        }
    }

    /// Kills what is left and removes this run's directory. Blocking.
    pub fn remove(&self) {
        if let Some(run) = &self.run {
            remove_run(run);
        }
    }
}

impl Cgroup {
    /// The cgroup at `path`, made by someone else (the process helper).
    pub fn at(path: PathBuf) -> Cgroup {
        Cgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    /// The cgroup in the v1 memory hierarchy that enforces this one's memory
    /// size, on a hybrid host.
    fn v1_memory(&self) -> Option<PathBuf> {
        let home = v1_memory_home()?;
        let run = self.path.parent()?.file_name()?;
        Some(home.join(run).join(self.path.file_name()?))
    }

    /// Sets the memory size of a new, empty cgroup: `memory.max`, or on a
    /// hybrid host a v1 memory cgroup beside it, which [`Cgroup::join`]
    /// then joins too. Without either, the size is not enforced (warned
    /// once).
    pub fn limit_memory(&self, bytes: u64) -> std::io::Result<()> {
        let max = self.path.join("memory.max");
        if max.exists() {
            return std::fs::write(max, bytes.to_string());
        }
        match self.v1_memory() {
            Some(v1) => {
                std::fs::create_dir(&v1).or_else(|error| {
                    if error.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(error) }
                })?;
                std::fs::write(v1.join("memory.limit_in_bytes"), bytes.to_string())
            }
            None => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "no cgroup memory controller is writable here: service memory sizes are not enforced"
                    );
                });
                Ok(())
            }
        }
    }

    /// The `cgroup.procs` files a process writes itself into to join the
    /// instance: the v2 cgroup's, and the v1 memory cgroup's if it has one.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.join("cgroup.procs")];
        if let Some(v1) = self.v1_memory().filter(|v1| v1.is_dir()) {
            files.push(v1.join("cgroup.procs"));
        }
        files
    }

    /// Moves process `pid` into the instance (the slow way: ~14 ms per
    /// hierarchy).
    pub fn join(&self, pid: u32) -> std::io::Result<()> {
        for file in self.procs_files() {
            std::fs::write(file, pid.to_string())?;
        }
        Ok(())
    }

    /// How many times the kernel killed a process of the instance for
    /// passing its memory size.
    pub fn oom_kills(&self) -> u64 {
        let count = |file: PathBuf| {
            std::fs::read_to_string(file).ok().and_then(|text| {
                text.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
            })
        };
        count(self.path.join("memory.events"))
            .or_else(|| self.v1_memory().and_then(|v1| count(v1.join("memory.oom_control"))))
            .unwrap_or(0)
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
        if let Some(usage) =
            self.v1_memory().and_then(|v1| std::fs::read_to_string(v1.join("memory.usage_in_bytes")).ok())
        {
            return usage.trim().parse().ok();
        }
        let mut total = 0;
        for pid in self.pids() {
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

    /// Once the instance's leader is reaped: kills what is left, waits for
    /// the cgroup to empty and removes it. Blocking (milliseconds at most).
    pub fn retire(self) {
        let _ = std::fs::write(self.path.join("cgroup.freeze"), "0");
        if wait_empty(&self.path, EMPTY_WAIT) {
            let _ = std::fs::remove_dir(&self.path);
            if let Some(v1) = self.v1_memory() {
                let _ = std::fs::remove_dir(v1);
            }
        } else {
            tracing::warn!("cgroup `{}` did not empty; left for clean-up at exit", self.path.display());
        }
    }
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

/// Removes a run directory and, on a hybrid host, its v1 memory mirror.
pub(crate) fn remove_run(run: &Path) {
    remove_tree(run);
    if let (Some(home), Some(name)) = (v1_memory_home(), run.file_name()) {
        remove_tree(&home.join(name));
    }
}

/// Kills what is left in `dir` and its children, then removes them all.
pub(crate) fn remove_tree(dir: &Path) {
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
    if !parent.join("cgroup.procs").exists() {
        return None;
    }
    clean_dead_runs(&parent);
    let run = parent.join(format!("dormouse-{}", std::process::id()));
    if run.exists() {
        remove_tree(&run);
    }
    std::fs::create_dir(&run).ok()?;
    // cgroup.kill is Linux 5.14+; without it nothing here can be promised.
    if !run.join("cgroup.kill").exists() || !run.join("cgroup.freeze").exists() {
        let _ = std::fs::remove_dir(&run);
        return None;
    }
    // Memory sizes: the v2 controller where the parent delegates it, else
    // the v1 hierarchy beside (see the module's comment).
    let _ = std::fs::write(run.join("cgroup.subtree_control"), "+memory");
    if !has_v2_memory(&run)
        && let Some(home) = v1_memory_home()
    {
        clean_dead_runs(home);
        let v1_run = home.join(run.file_name().expect("named above"));
        if v1_run.exists() {
            remove_tree(&v1_run);
        }
        let _ = std::fs::create_dir(v1_run);
    }
    Some(run)
}

/// Whether instances under `run` get the v2 memory controller.
fn has_v2_memory(run: &Path) -> bool {
    std::fs::read_to_string(run.join("cgroup.subtree_control"))
        .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "memory"))
}

/// This process's directory in the v1 memory hierarchy, if the host has
/// one mounted and it is writable (a hybrid host); the same for dormouse
/// and its helper, which inherits dormouse's cgroups.
fn v1_memory_home() -> Option<&'static Path> {
    static HOME: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        let mount = mounts.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind, options) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup" && options.split(',').any(|o| o == "memory")).then(|| PathBuf::from(point))
        })?;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = cgroups.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.to_owned())
        })?;
        let home = mount.join(own.trim_start_matches('/'));
        let writable = rustix::fs::access(&home, rustix::fs::Access::WRITE_OK).is_ok();
        writable.then_some(home)
    })
    .as_deref()
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
