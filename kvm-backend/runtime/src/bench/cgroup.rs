//! A CPU limit on one process (and its threads), to make a backup slower than its primary as a loaded host
//! would: a cgroup of its own with a CFS quota, under cgroup v1's `cpu` controller or cgroup v2's `cpu.max`.
//! The cgroup is removed on drop (its processes moved back to the root first).

use std::path::{Path, PathBuf};

use crate::error::CliError;

/// CFS period of the limit: the quota is a share of it. Short, so that "half a CPU" is a slower backup rather
/// than one that runs at full speed and then stops for tens of milliseconds (the default period is 100 ms).
const PERIOD_US: u64 = 10_000;

pub struct CpuLimit {
    dir: PathBuf,
    /// The root cgroup's process list, where the process goes back before the cgroup is removed.
    root_procs: PathBuf,
}

/// Where the CPU controller is: v1's `cpu` hierarchy, or the v2 root with `cpu` in its subtree.
fn hierarchy() -> Option<(PathBuf, bool)> {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Some((v1.to_path_buf(), true));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
    if !controllers.split_whitespace().any(|controller| controller == "cpu") {
        return None;
    }
    // Children get the cpu controller only if the root hands it down; asking is harmless if it does already.
    let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
    Some((v2.to_path_buf(), false))
}

/// Why a CPU limit cannot be set on this machine, or None if it can (for tests that skip with a reason).
pub fn unavailable() -> Option<String> {
    match hierarchy() {
        None => Some("no cgroup CPU controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max)".into()),
        Some((root, _)) => {
            let probe = root.join(format!("ftvm-probe-{}", std::process::id()));
            match std::fs::create_dir(&probe) {
                Ok(()) => {
                    let _ = std::fs::remove_dir(&probe);
                    None
                }
                Err(error) => Some(format!("cannot create a cgroup under {}: {error}", root.display())),
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CliError> {
    std::fs::write(path, value).map_err(|error| CliError::io(path.display().to_string(), &error))
}

impl CpuLimit {
    /// Holds process `pid` (every thread of it) to `percent` of one CPU.
    pub fn apply(pid: u32, percent: u32) -> Result<CpuLimit, CliError> {
        let Some((root, v1)) = hierarchy() else {
            return Err(CliError::Usage(unavailable().unwrap_or_default()));
        };
        let dir = root.join(format!("ftvm-{pid}"));
        std::fs::create_dir_all(&dir).map_err(|error| CliError::io(dir.display().to_string(), &error))?;
        let limit = CpuLimit { dir: dir.clone(), root_procs: root.join("cgroup.procs") };
        let quota_us = PERIOD_US * u64::from(percent.clamp(1, 100)) / 100;
        if v1 {
            write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
        } else {
            write(&dir.join("cpu.max"), &format!("{quota_us} {PERIOD_US}"))?;
        }
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
        Ok(limit)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // A cgroup with processes cannot be removed: move any that are left (the process may be gone) to the root.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(&self.root_procs, pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
