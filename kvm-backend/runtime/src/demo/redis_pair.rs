//! A pair of the `redis` guest on two hosts made of network namespaces ([`crate::netlab`]): `a` the primary, `b`
//! its backup (or `a` alone, for the non-FT baseline), each node's TAP on its host's bridge while it is live.
//! Used by `ftvm demo --guest redis` and `ftvm bench`. Dropping it kills the nodes, then deletes the namespaces.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::config::{encode_hex, NodeConfig};
use crate::error::CliError;
use crate::ethernet::{EthernetConfig, GUEST_IP_DEFAULT};
use crate::machine::splitmix;
use crate::netlab::{Host, Lab, HOST_BRIDGE};
use crate::pair::{log_tail, node_executable, status_json, wait_for, write_config, Scratch};

const GUEST: &str = "redis";
pub const PORT: u16 = 6379;
const CHANNEL_PORT: u16 = 7102;
const HEARTBEAT_PORT: u16 = 7101;
const STATUS_PORT: u16 = 7110;
/// The guest's append log: 64 MiB.
const DISK_SECTORS: u64 = 1 << 17;
const UP_DEADLINE: Duration = Duration::from_secs(60);

pub struct RedisPair {
    // Fields drop in order: the nodes go before their namespaces (a node still running keeps its namespace).
    pub scratch: Scratch,
    pub lab: Lab,
}

impl RedisPair {
    /// Starts the pair (or, without `protected`, the primary alone: it gives up on its backup after half a second
    /// and runs unprotected, outputs released at once) and waits until the guest answers PING.
    pub fn start(seed: u64, failure_timeout_ms: u64, protected: bool) -> Result<RedisPair, CliError> {
        let scratch = Scratch::new("redis")?;
        let lab = Lab::build("r")?;
        let mut pair = RedisPair { scratch, lab };
        let mut key = Vec::new();
        let mut state = seed ^ 0x0072_6564_6973;
        for _ in 0..4 {
            state = splitmix(state);
            key.extend_from_slice(&state.to_le_bytes());
        }
        let dir = pair.scratch.dir.clone();
        let mut config_a = node_config(Host::A, &dir, &key, seed, failure_timeout_ms);
        if protected {
            let config_b = write_config(&dir, "b", &node_config(Host::B, &dir, &key, seed, failure_timeout_ms))?;
            pair.spawn_node(Host::B, "backup", &config_b)?;
        } else {
            config_a.startup_timeout_ms = Some(500);
        }
        let config_a = write_config(&dir, "a", &config_a)?;
        pair.spawn_node(Host::A, "primary", &config_a)?;
        pair.wait_up(if protected { "b" } else { "" })?;
        Ok(pair)
    }

    /// Waits until `a` is live, protected by `backup` ("" for none), and the guest answers PING.
    fn wait_up(&self, backup: &str) -> Result<(), CliError> {
        let up = wait_for(UP_DEADLINE, || {
            self.status(Host::A).is_some_and(|status| {
                let role = status["role"].as_str().unwrap_or("");
                (role == "primary" || role.starts_with("live"))
                    && status["protected_by"].as_str().unwrap_or("") == backup
            })
        });
        if !up {
            let tail = log_tail(&self.scratch.dir.join("a.log"));
            return Err(CliError::CheckFailed(format!("the redis pair did not come up: a said {tail}")));
        }
        // The guest reads its log and starts listening after the node is up.
        let answering = wait_for(UP_DEADLINE, || {
            redis_cli_command(&self.lab).arg("PING").output().is_ok_and(|output| output.stdout.starts_with(b"PONG"))
        });
        if !answering {
            return Err(CliError::CheckFailed(format!("the guest never answered PING on {GUEST_IP_DEFAULT}:{PORT}")));
        }
        Ok(())
    }

    /// Runs `redis-cli` in the client namespace with `commands` on its standard input; returns what it printed.
    pub fn redis_cli(&self, commands: &str) -> Result<String, CliError> {
        let (child, feeder) = spawn_redis_cli(&self.lab, commands.to_string())?;
        let output = child.wait_with_output().map_err(|error| CliError::io("redis-cli", &error))?;
        let _ = feeder.join();
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A node's status (`ftvm status --json`), read from inside its host's namespace.
    pub fn status(&self, host: Host) -> Option<serde_json::Value> {
        let address = SocketAddr::V4(SocketAddrV4::new(host.address(), STATUS_PORT));
        self.lab.in_namespace(host, move || status_json(Some(address))).ok().flatten()
    }

    fn spawn_node(&mut self, host: Host, role: &str, config: &Path) -> Result<(), CliError> {
        let name = if host == Host::A { "a" } else { "b" };
        let command = self.lab.command(host, node_executable()?);
        self.scratch.spawn_with(name, role, config, command, None).map(|_| ())
    }
}

/// `redis-cli` in the client namespace, pointed at the guest.
fn redis_cli_command(lab: &Lab) -> std::process::Command {
    let mut command = lab.command(Host::Client, "redis-cli");
    command.args(["-h", &GUEST_IP_DEFAULT.to_string(), "-p", &PORT.to_string()]);
    command
}

/// Starts `redis-cli` in the client namespace with `commands` fed to its standard input by a thread of its own
/// (so that neither pipe can stop the other); its stdout is piped for the caller.
pub fn spawn_redis_cli(
    lab: &Lab,
    commands: String,
) -> Result<(std::process::Child, std::thread::JoinHandle<std::io::Result<()>>), CliError> {
    let mut child = redis_cli_command(lab)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| CliError::io("redis-cli", &error))?;
    let mut stdin = child.stdin.take().expect("stdin was piped just above");
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, commands.as_bytes()));
    Ok((child, feeder))
}

fn node_config(host: Host, dir: &Path, key: &[u8], seed: u64, failure_timeout_ms: u64) -> NodeConfig {
    let (me, peer) = match host {
        Host::A => (Host::A.address(), Host::B.address()),
        _ => (Host::B.address(), Host::A.address()),
    };
    let at = |port: u16| SocketAddr::V4(SocketAddrV4::new(me, port));
    let channel = SocketAddr::V4(SocketAddrV4::new(Host::B.address(), CHANNEL_PORT));
    NodeConfig {
        name: Some(if host == Host::A { "a" } else { "b" }.into()),
        guest: Some(GUEST.into()),
        pair_id: Some(seed | 1),
        channel_peer: (host == Host::A).then_some(channel),
        channel_listen: (host != Host::A).then_some(channel),
        heartbeat_listen: Some(at(HEARTBEAT_PORT)),
        heartbeat_peer: Some(SocketAddr::V4(SocketAddrV4::new(peer, HEARTBEAT_PORT))),
        status: Some(at(STATUS_PORT)),
        disk: Some(dir.join("disk.img")),
        disk_sectors: Some(DISK_SECTORS),
        arbiter: Some(dir.join("arbiter")),
        key_hex: Some(encode_hex(key)),
        heartbeat_interval_ms: Some(20),
        failure_timeout_ms: Some(failure_timeout_ms),
        startup_timeout_ms: Some(10_000),
        arbiter_retry_ms: Some(50),
        write_journal: Some(true),
        ethernet: Some(EthernetConfig { bridge: Some(HOST_BRIDGE.into()), ..EthernetConfig::default() }),
        ..NodeConfig::default()
    }
}

impl RedisPair {
    /// Loses both hosts and cold-starts the guest from the disk, as an operator does after a double failure: both
    /// nodes are killed, the arbiter record removed (docs/deployment.md), and `a` started alone on the same disk.
    /// Returns once the guest answers PING again.
    pub fn cold_restart(&mut self) -> Result<(), CliError> {
        self.scratch.kill("a");
        self.scratch.kill("b");
        let dir = self.scratch.dir.clone();
        let arbiter = dir.join("arbiter");
        std::fs::remove_file(&arbiter).map_err(|error| CliError::io(arbiter.display().to_string(), &error))?;
        let config = NodeConfig { startup_timeout_ms: Some(500), ..NodeConfig::load(&dir.join("a.toml"))? };
        let path = write_config(&dir, "a", &config)?;
        self.spawn_node(Host::A, "primary", &path)?;
        self.wait_up("")
    }

    /// Runs `redis-benchmark` from the client namespace to the end (`-t set,get --csv`, keys from a space of
    /// 10,000); returns its lines, or why it failed.
    pub fn benchmark(
        &self,
        connections: u32,
        pipeline: u32,
        requests: u64,
    ) -> Result<Vec<super::redis::BenchmarkLine>, CliError> {
        let output = self
            .lab
            .command(Host::Client, "redis-benchmark")
            .args(["-h", &GUEST_IP_DEFAULT.to_string(), "-p", &PORT.to_string()])
            .args(["-c", &connections.to_string(), "-P", &pipeline.to_string(), "-n", &requests.to_string()])
            .args(["-r", "10000", "-t", "set,get", "--csv"])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| CliError::io("redis-benchmark", &error))?;
        let lines = super::redis::parse_benchmark_csv(&String::from_utf8_lossy(&output.stdout));
        if !output.status.success() || lines.len() != 2 {
            return Err(CliError::CheckFailed(format!(
                "redis-benchmark -c {connections} -P {pipeline}: {} ({})",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(lines)
    }
}
