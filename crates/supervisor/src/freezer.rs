//! Freezing an instance's processes: the cgroup freezer where the host has
//! one (v2 `cgroup.freeze`, or the v1 `freezer` controller), else SIGSTOP and
//! SIGCONT to the process group. A cgroup freeze is invisible to the app (no
//! stop signal, no SIGCHLD to its parent) and catches every process in it.

use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal, kill_process_group};

#[derive(Debug)]
pub enum Freezer {
    CgroupV2(PathBuf),
    CgroupV1(PathBuf),
    Signals(u32),
}

impl Freezer {
    /// Puts `pid` in a cgroup of its own named after the instance, on the
    /// first hierarchy that can freeze, and returns how to freeze it.
    pub fn for_process(name: &str, pid: u32) -> Freezer {
        let v2_roots = [Path::new("/sys/fs/cgroup"), Path::new("/sys/fs/cgroup/unified")];
        for root in v2_roots {
            if root.join("cgroup.procs").exists()
                && !root.join("freezer.state").exists()
                && let Some(group) = join(&root.join("dormouse").join(name), pid)
                && group.join("cgroup.freeze").exists()
            {
                return Freezer::CgroupV2(group);
            }
        }
        let v1 = Path::new("/sys/fs/cgroup/freezer");
        if v1.join("cgroup.procs").exists()
            && let Some(group) = join(&v1.join("dormouse").join(name), pid)
        {
            return Freezer::CgroupV1(group);
        }
        Freezer::Signals(pid)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Freezer::CgroupV2(_) => "cgroup-v2",
            Freezer::CgroupV1(_) => "cgroup-v1",
            Freezer::Signals(_) => "sigstop",
        }
    }

    pub fn freeze(&self) {
        self.set(true);
    }

    pub fn thaw(&self) {
        self.set(false);
    }

    fn set(&self, frozen: bool) {
        let result = match self {
            Freezer::CgroupV2(group) => std::fs::write(group.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
            Freezer::CgroupV1(group) => {
                std::fs::write(group.join("freezer.state"), if frozen { "FROZEN" } else { "THAWED" })
            }
            Freezer::Signals(pid) => {
                let signal = if frozen { Signal::STOP } else { Signal::CONT };
                match Pid::from_raw(*pid as i32) {
                    Some(group) => kill_process_group(group, signal).map_err(Into::into),
                    None => Ok(()),
                }
            }
        };
        if let Err(error) = result {
            tracing::warn!("cannot {} instance ({}): {error}", if frozen { "freeze" } else { "thaw" }, self.name());
        }
    }

    /// Removes the instance's cgroup once its processes are gone.
    pub fn remove(&self) {
        if let Freezer::CgroupV2(group) | Freezer::CgroupV1(group) = self {
            let _ = std::fs::remove_dir(group);
        }
    }
}

/// Creates `group` and moves `pid` into it.
fn join(group: &Path, pid: u32) -> Option<PathBuf> {
    std::fs::create_dir_all(group).ok()?;
    if std::fs::write(group.join("cgroup.procs"), pid.to_string()).is_err() {
        let _ = std::fs::remove_dir(group);
        return None;
    }
    Some(group.to_owned())
}
