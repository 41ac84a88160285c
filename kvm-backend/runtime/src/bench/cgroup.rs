//! A CPU limit on one process (and its threads), to make a backup slower than its primary as a loaded host
//! would: a cgroup of its own with a CFS quota, under cgroup v1's `cpu` controller or cgroup v2's `cpu.max`,
//! created beside the process's own cgroup (never at the root: a process in a systemd scope or a CI job's cgroup
//! stays under it). On drop the process goes back to where it was and the cgroup is removed; a limit left behind
//! by a killed benchmark (an empty `ftvm-*` cgroup) is removed by the next one.

use std::path::{Path, PathBuf};

use crate::error::CliError;

/// CFS period of the limit: the quota is a share of it. Short, so that "half a CPU" is a slower backup rather
/// than one that runs at full speed and then stops for tens of milliseconds (the default period is 100 ms).
const PERIOD_US: u64 = 10_000;
/// The smallest CFS quota the kernel accepts.
const QUOTA_US_MIN: u64 = 1_000;
/// Names of the cgroups made here.
const PREFIX: &str = "ftvm-";

pub struct CpuLimit {
    dir: PathBuf,
    /// The cgroup the process was in, where it goes back before `dir` is removed.
    home: PathBuf,
}

/// The CPU controller's hierarchy and whether it is v1: v1's `cpu`, or v2's unified tree if it offers `cpu`.
fn hierarchy() -> Option<(PathBuf, bool)> {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Some((v1.to_path_buf(), true));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
    controllers.split_whitespace().any(|controller| controller == "cpu").then(|| (v2.to_path_buf(), false))
}

/// The cgroup of process `pid` (`self` for this one) in the CPU controller's hierarchy, from /proc.
fn cgroup_of(pid: &str, v1: bool) -> Option<String> {
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    listing.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let ours = if v1 { controllers.split(',').any(|c| c == "cpu") } else { controllers.is_empty() };
        ours.then(|| path.to_string())
    })
}

/// Where the limited cgroups go: inside this process's own cgroup in the CPU hierarchy. With the hierarchy's
/// root and whether it is v1.
fn parent() -> Option<(PathBuf, PathBuf, bool)> {
    let (root, v1) = hierarchy()?;
    let own = cgroup_of("self", v1)?;
    Some((root.join(own.trim_start_matches('/')), root, v1))
}

/// Why a CPU limit cannot be set on this machine, or None if it can (for tests that skip with a reason).
pub fn unavailable() -> Option<String> {
    let Some((parent, _, v1)) = parent() else {
        return Some("no cgroup CPU controller (v1 /sys/fs/cgroup/cpu or v2 with cpu)".into());
    };
    if !v1 {
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu");
    }
    let probe = parent.join(format!("{PREFIX}probe-{}", std::process::id()));
    if let Err(error) = std::fs::create_dir(&probe) {
        return Some(format!("cannot create a cgroup under {}: {error}", parent.display()));
    }
    // v2 gives a child `cpu.max` only if the parent hands the controller down, which a cgroup that holds
    // processes itself cannot do.
    let quota = probe.join(if v1 { "cpu.cfs_quota_us" } else { "cpu.max" });
    let usable = quota.exists();
    let _ = std::fs::remove_dir(&probe);
    (!usable).then(|| format!("cgroups under {} have no CPU quota ({} missing)", parent.display(), quota.display()))
}

fn write(path: &Path, value: &str) -> Result<(), CliError> {
    std::fs::write(path, value).map_err(|error| CliError::io(path.display().to_string(), &error))
}

/// Removes cgroups a killed benchmark left behind: ours by name, and empty.
fn remove_leftovers(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let empty = std::fs::read_to_string(entry.path().join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
        if name.to_string_lossy().starts_with(PREFIX) && empty {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

impl CpuLimit {
    /// Holds process `pid` (every thread of it) to `percent` of one CPU.
    pub fn apply(pid: u32, percent: u32) -> Result<CpuLimit, CliError> {
        let Some((parent, root, v1)) = parent() else {
            return Err(CliError::Usage(unavailable().unwrap_or_default()));
        };
        remove_leftovers(&parent);
        let home = cgroup_of(&pid.to_string(), v1)
            .map(|path| root.join(path.trim_start_matches('/')))
            .unwrap_or_else(|| parent.clone());
        if !v1 {
            // A v2 child gets `cpu.max` only if its parent hands the controller down (a no-op if it does).
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu");
        }
        let dir = parent.join(format!("{PREFIX}{pid}"));
        std::fs::create_dir_all(&dir).map_err(|error| CliError::io(dir.display().to_string(), &error))?;
        let limit = CpuLimit { dir: dir.clone(), home };
        // The kernel takes no quota under 1 ms: at a 10 ms period, 10 % is the least.
        let quota_us = (PERIOD_US * u64::from(percent.clamp(1, 100)) / 100).max(QUOTA_US_MIN);
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
        // A cgroup with processes cannot be removed: any left (the process may be gone) go back home first.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.home.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
