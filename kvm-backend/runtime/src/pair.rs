//! Pairs of nodes as child processes on localhost, for `ftvm demo`, `report-failover` and `bench`: this binary's
//! `primary` and `backup` commands on free ports with shared storage in a scratch directory, their status read
//! over HTTP, and every child killed and reaped (and the directory removed) on drop, failure included.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{encode_hex, NodeConfig};
use crate::error::CliError;
use crate::machine::{self, splitmix};
use crate::status;

/// The guest of the demo: the key-value service with up to eight requests in flight.
pub const GUEST: &str = "kvq";

/// Child processes killed (SIGKILL) and reaped on drop, and a scratch directory removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch, CliError> {
        Scratch::at(std::env::temp_dir().join(format!("ftvm-{tag}-{}-{}", std::process::id(), unique())))
    }

    /// A scratch directory at `dir`, emptied first (tests keep theirs under the target directory).
    pub fn at(dir: PathBuf) -> Result<Scratch, CliError> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|error| CliError::io(dir.display().to_string(), &error))?;
        Ok(Scratch { dir, children: Vec::new() })
    }

    /// Takes a child started elsewhere (in a network namespace, with flags of its own) into the same care:
    /// killed and reaped on drop.
    pub fn adopt(&mut self, name: &str, child: Child) {
        self.children.push((name.to_string(), child));
    }

    /// The newest child called `name` (a restarted node's name comes back).
    fn newest(&mut self, name: &str) -> Option<&mut Child> {
        self.children.iter_mut().rev().find(|(n, _)| n == name).map(|(_, child)| child)
    }

    pub fn spawn(&mut self, name: &str, role: &str, config: &Path) -> Result<u32, CliError> {
        self.spawn_on(name, role, config, None)
    }

    /// Like `spawn`, with the child (every thread of it) held to CPU `cpu`, if given: two nodes on CPUs of their
    /// own stand for two hosts.
    pub fn spawn_on(&mut self, name: &str, role: &str, config: &Path, cpu: Option<usize>) -> Result<u32, CliError> {
        if cpu.is_some_and(|cpu| cpu >= libc::CPU_SETSIZE as usize) {
            return Err(CliError::Usage(format!("no CPU {cpu:?} to pin the {role} to")));
        }
        self.spawn_with(name, role, config, Command::new(node_executable()?), cpu)
    }

    /// Starts this binary's `role` from `command` (the node executable itself, or a wrapper that execs it, such
    /// as `ip netns exec NS ftvm`): its log in `<name>.log`, its stdout (the guest's console) in `<name>.console`,
    /// dying with the demo, held to CPU `cpu` if given.
    pub fn spawn_with(
        &mut self,
        name: &str,
        role: &str,
        config: &Path,
        mut command: Command,
        cpu: Option<usize>,
    ) -> Result<u32, CliError> {
        let file = |suffix: &str| {
            let path = self.dir.join(format!("{name}.{suffix}"));
            std::fs::File::create(&path).map_err(|error| CliError::io(path.display().to_string(), &error))
        };
        let (stderr, console) = (file("log")?, file("console")?);
        // SAFETY: prctl and sched_setaffinity are async-signal-safe system calls on the child itself, and touch
        // nothing of the parent's state; `pin_to` allocates only for a CPU out of range, refused by the callers.
        // The death signal is kept across an exec of the wrapper into ftvm.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                // The nodes die with the demo, even if the demo itself is killed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(cpu) = cpu {
                    pin_to(cpu)?;
                }
                Ok(())
            });
        }
        // The timeline and the detection cause come from the nodes' info lines, whatever the demo's own level.
        let log = std::env::var("FTVM_NODE_LOG").unwrap_or_else(|_| "info".into());
        // A role may carry flags of its own (`backup --join`).
        let child = command
            .args(role.split_whitespace())
            .arg("--config")
            .arg(config)
            .env("FTVM_LOG", log)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(stderr)
            .spawn()
            .map_err(|error| CliError::io(format!("starting the {role}"), &error))?;
        let pid = child.id();
        self.children.push((name.to_string(), child));
        Ok(pid)
    }

    /// Waits up to `deadline` for the child `name` to exit by itself; its exit status, or None if it still runs.
    pub fn wait_exit(&mut self, name: &str, deadline: Duration) -> Option<std::process::ExitStatus> {
        let child = self.newest(name)?;
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(1)),
                _ => return None,
            }
        }
    }

    /// The process id of the child `name`, while it has not been reaped.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children.iter().rev().find(|(n, _)| n == name).map(|(_, child)| child.id())
    }

    /// Kills (SIGKILL) and reaps every child called `name`.
    pub fn kill(&mut self, name: &str) {
        for (_, child) in self.children.iter_mut().filter(|(n, _)| n == name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, name: &str, signal: libc::c_int) {
        if let Some((_, child)) = self.children.iter().rev().find(|(n, _)| n == name) {
            // SAFETY: kill(2) of our own child's pid, which is not reaped while it is in `children`.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("FTVM_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

static NODE_EXECUTABLE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs the nodes from `path` (an `ftvm` binary) instead of this process's own executable: for a program or a
/// test that calls the demo or the benchmark as a library. The first call wins.
pub fn use_node_executable(path: PathBuf) {
    let _ = NODE_EXECUTABLE.set(path);
}

/// The binary the nodes run as: `ftvm` itself, unless [`use_node_executable`] said otherwise.
pub fn node_executable() -> Result<PathBuf, CliError> {
    match NODE_EXECUTABLE.get() {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe().map_err(|error| CliError::io("current executable", &error)),
    }
}

/// Holds the calling thread (and the threads it starts afterwards) to CPU `cpu`.
pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no CPU {cpu}")));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes the bit of `cpu`, which is below CPU_SETSIZE
    // (checked above), inside it; sched_setaffinity reads the set we pass, of the size we give. No allocation and
    // no panic: this runs between fork and exec too.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The first two CPUs this process may run on (a primary's and a backup's, as two hosts), if it may run on two.
pub fn two_cpus() -> Option<(usize, usize)> {
    let set = affinity().ok()?;
    // SAFETY: CPU_ISSET reads the bit of a CPU below CPU_SETSIZE in a set we own.
    let mut allowed = (0..libc::CPU_SETSIZE as usize).filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) });
    Some((allowed.next()?, allowed.next()?))
}

/// The calling thread's CPU affinity, to put back with [`restore_affinity`].
pub fn affinity() -> std::io::Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid set for sched_getaffinity to fill, of the size we give.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(set)
    }
}

pub fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: sched_setaffinity reads the set we pass, of the size we give.
    let _ = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The lowest port of the kernel's ephemeral range (where `bind(0)` and `connect` take their local ports).
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(32_768)
}

/// A local port that is free now, for a node to bind a moment later. Taken below the ephemeral range: a port that
/// `bind(0)` hands out and the caller releases is soon handed to somebody's `connect` (the demo's status requests,
/// the primary's channel), and the node that wanted it fails to start.
fn free_port(tcp: bool) -> Result<SocketAddr, CliError> {
    let start = ephemeral_ports_start().min(32_768);
    let low = 10_000u16.min(start / 2);
    let span = u64::from(start.saturating_sub(low).max(1));
    // Ports handed out lately: a pair's ports must differ, and none is bound until its node starts.
    static RECENT: std::sync::Mutex<std::collections::VecDeque<u16>> =
        std::sync::Mutex::new(std::collections::VecDeque::new());
    let mut recent = RECENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut state = splitmix(unique() ^ (u64::from(std::process::id()) << 32));
    for _ in 0..256 {
        state = splitmix(state);
        let port = low + (state % span) as u16;
        if recent.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let free = if tcp { std::net::TcpListener::bind(addr).is_ok() } else { UdpSocket::bind(addr).is_ok() };
        if free {
            if recent.len() == 64 {
                recent.pop_front();
            }
            recent.push_back(port);
            return Ok(addr);
        }
    }
    Err(CliError::Io { what: "a free local port".into(), reason: "256 tries found none".into() })
}

pub fn free_tcp() -> Result<SocketAddr, CliError> {
    free_port(true)
}

pub fn free_udp() -> Result<SocketAddr, CliError> {
    free_port(false)
}

/// The two configs of a localhost pair in `dir`.
pub struct PairConfigs {
    pub a: NodeConfig,
    pub b: NodeConfig,
}

/// A pair of the `kvq` guest (the demo's; change `guest` for another) on free localhost ports, storage in `dir`, with the write journal on.
pub fn localhost_pair(
    dir: &Path,
    seed: u64,
    failure_timeout_ms: u64,
    machine: &machine::MachineKind,
) -> Result<PairConfigs, CliError> {
    let mut key = Vec::new();
    let mut state =
        seed ^ SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    for _ in 0..4 {
        state = splitmix(state);
        key.extend_from_slice(&state.to_le_bytes());
    }
    let (channel, hb_a, hb_b, service) = (free_tcp()?, free_udp()?, free_udp()?, free_udp()?);
    // Where each node, live without a backup, takes the node that re-protects it, and where a node that takes
    // the other's place asks.
    let (join_a, join_b) = (free_tcp()?, free_tcp()?);
    let base = NodeConfig {
        guest: Some(GUEST.into()),
        machine: Some(machine.config_value().into()),
        pair_id: Some(seed | 1),
        service: Some(service),
        disk: Some(dir.join("disk.img")),
        disk_sectors: Some(128),
        arbiter: Some(dir.join("arbiter")),
        key_hex: Some(encode_hex(&key)),
        heartbeat_interval_ms: Some(20),
        failure_timeout_ms: Some(failure_timeout_ms),
        startup_timeout_ms: Some(5_000),
        arbiter_retry_ms: Some(50),
        storage_timeout_ms: Some(500),
        write_journal: Some(true),
        ..NodeConfig::default()
    };
    let a = NodeConfig {
        name: Some("a".into()),
        channel_peer: Some(channel),
        join_listen: Some(join_a),
        join_peers: Some(vec![join_b]),
        heartbeat_listen: Some(hb_a),
        heartbeat_peer: Some(hb_b),
        status: Some(free_tcp()?),
        ..base.clone()
    };
    let b = NodeConfig {
        name: Some("b".into()),
        channel_listen: Some(channel),
        join_listen: Some(join_b),
        join_peers: Some(vec![join_a]),
        heartbeat_listen: Some(hb_b),
        heartbeat_peer: Some(hb_a),
        status: Some(free_tcp()?),
        ..base
    };
    Ok(PairConfigs { a, b })
}

pub fn write_config(dir: &Path, name: &str, config: &NodeConfig) -> Result<PathBuf, CliError> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config.to_toml()).map_err(|error| CliError::io(path.display().to_string(), &error))?;
    Ok(path)
}

pub fn status_json(addr: Option<SocketAddr>) -> Option<serde_json::Value> {
    let body = status::fetch(addr?, "/json").ok()?;
    serde_json::from_str(&body).ok()
}

/// Waits up to `deadline` until the node whose status is at `status` is protected by `backup` and the pause of
/// its last clone is known (the guest has run again after the cut); returns that clone as the status shows it.
pub fn wait_cloned_onto(status: Option<SocketAddr>, backup: &str, deadline: Duration) -> Option<serde_json::Value> {
    let mut clone = None;
    wait_for(deadline, || {
        let Some(status) = status_json(status) else { return false };
        let last = status["clones"].as_array().and_then(|clones| clones.last()).cloned().unwrap_or_default();
        let done = status["protected_by"] == backup && last["pause_ms"].is_f64();
        clone = done.then_some(last);
        done
    });
    clone
}

pub fn wait_for(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The last lines of a node's log, for an error that says what the node said.
pub fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    if tail.is_empty() {
        "(nothing)".into()
    } else {
        tail
    }
}
