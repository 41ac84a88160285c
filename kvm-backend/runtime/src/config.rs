//! The configuration of one node of a pair (`ftvm primary --config FILE`, `ftvm backup --config FILE`): TOML,
//! every key optional in the file, flags override it. Units are in the names. See docs/deployment.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// Everything a node needs. Field names are the TOML keys.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's name, recorded in the arbiter by the winner of a test-and-set (unique within the pair).
    pub name: Option<String>,
    /// A corpus guest (`kv`) or a path to a guest ELF. Primary and backup must run the same image.
    pub guest: Option<String>,
    /// `kvm` (the default) or `model`: the deterministic model guest of corpus/model running the same workload,
    /// for machines without a usable /dev/kvm (what `ftvm demo` falls back to).
    pub machine: Option<String>,
    /// Identifies the pair; a backup refuses a primary of another pair.
    pub pair_id: Option<u64>,
    /// The guest's RAM in MiB on KVM (a multiple of 2, from 2 to 1024); both nodes of a pair need the same (a
    /// clone of another size is refused). The model guest's memory is fixed.
    pub memory_mib: Option<u64>,
    /// Backup: where it accepts the logging channel (TCP).
    pub channel_listen: Option<SocketAddr>,
    /// Primary: the backup's logging-channel address (TCP).
    pub channel_peer: Option<SocketAddr>,
    /// Where this node, once it is live without a backup, takes nodes that join as its new backup (TCP;
    /// re-protection). Without it the node takes joiners only from its `spares`.
    pub join_listen: Option<SocketAddr>,
    /// `ftvm backup --join`: the `join_listen` addresses of the pair's nodes, asked in order until the live
    /// primary takes this node. Without it a joining node waits on its `channel_listen` as a spare, for a live
    /// primary that lists it in `spares` to call.
    pub join_peers: Option<Vec<SocketAddr>>,
    /// The `channel_listen` addresses of spare nodes (`ftvm backup --join` without `join_peers`), called in
    /// order as soon as this node is live without a backup, until one is cloned.
    pub spares: Option<Vec<SocketAddr>>,
    /// Where this node receives heartbeats (UDP).
    pub heartbeat_listen: Option<SocketAddr>,
    /// Where the peer receives heartbeats (UDP).
    pub heartbeat_peer: Option<SocketAddr>,
    /// The guest's service (UDP, the network device's datagram mode): bound by the live primary only. Not with
    /// `[ethernet]`.
    pub service: Option<SocketAddr>,
    /// Plain-text status endpoint (`ftvm status --addr`).
    pub status: Option<SocketAddr>,
    /// Prometheus text endpoint.
    pub metrics: Option<SocketAddr>,
    /// The shared disk image (created zeroed with `disk_sectors` sectors if missing).
    pub disk: Option<PathBuf>,
    pub disk_sectors: Option<u64>,
    /// The arbiter record on shared storage (created at epoch 1 if missing).
    pub arbiter: Option<PathBuf>,
    /// The pre-shared key of the pair, hex (at least 16 bytes), or a file holding it in hex.
    pub key_hex: Option<String>,
    pub key_file: Option<PathBuf>,
    pub heartbeat_interval_ms: Option<u64>,
    pub failure_timeout_ms: Option<u64>,
    pub startup_timeout_ms: Option<u64>,
    pub arbiter_retry_ms: Option<u64>,
    /// A storage request (disk or arbiter) that takes longer than this counts as "storage unreachable".
    pub storage_timeout_ms: Option<u64>,
    /// Guest exits per slice between two looks at the network (default 1): smaller answers the peer sooner.
    pub slice_exits_max: Option<u64>,
    /// The execution lag the primary's CPU-share throttle aims to stay under.
    pub lag_target_ms: Option<u64>,
    /// The throttle's duty-cycle period.
    pub throttle_period_ms: Option<u64>,
    /// fdatasync the disk image after every write (default true).
    pub sync_writes: Option<bool>,
    /// Keep a journal of every landed write and every arbiter grant next to the disk (`<disk>.journal`), for
    /// `ftvm demo`'s split-brain check (default false).
    pub write_journal: Option<bool>,
    /// Run with `sh -c` when this node goes live, before it binds the service address (move the service IP,
    /// send a gratuitous ARP).
    pub go_live_command: Option<String>,
    /// When the node stops, its last status (the JSON of `ftvm status --json`) is written here: the figures of
    /// a node that is gone, for a post-mortem or a benchmark. Its directory must exist.
    pub status_file: Option<PathBuf>,
    /// The network device's Ethernet mode: the guest's frames to and from a TAP device (instead of `service`).
    pub ethernet: Option<crate::ethernet::EthernetConfig>,
}

/// Defaults of the optional settings.
pub const DISK_SECTORS_DEFAULT: u64 = 128;
pub const STORAGE_TIMEOUT_MS_DEFAULT: u64 = 500;
/// Exits per guest slice. A KVM exit from user mode costs about 60 µs here, and between two slices the driver
/// handles the network: one exit per slice roughly halves the Output Rule's hold (the backup acks after its
/// slice) at a cost of a few µs of driver work per exit.
pub const SLICE_EXITS_MAX_DEFAULT: u64 = 1;
/// Largest config file read.
const CONFIG_BYTES_MAX: u64 = 1 << 20;
/// Largest key file read (a key is a line of hex).
const KEY_FILE_BYTES_MAX: u64 = 64 << 10;
/// Shortest pre-shared key accepted.
const KEY_BYTES_MIN: usize = 16;
/// Longest node name: it goes into the arbiter record (with a process id) and the handshake.
pub const NAME_BYTES_MAX: usize = 32;
/// Largest disk created or accepted: 2^31 sectors (1 TiB).
pub const DISK_SECTORS_MAX: u64 = 1 << 31;

/// Which node a config is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Primary,
    Backup,
    /// `ftvm backup --join`: a node that becomes the backup of the live primary by cloning its VM.
    Joiner,
}

/// Every setting of a node, checked: what `NodeConfig::settings` makes of a config.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub name: String,
    pub guest: String,
    /// `kvm` or `model`.
    pub machine: String,
    /// Guest RAM on KVM.
    pub memory_bytes: u64,
    /// The protocol settings (`image_digest` is filled in once the guest image is read).
    pub protocol: ft::Config,
    /// The backup's `channel_listen`, or the primary's `channel_peer`; a joiner's `channel_listen` as a spare,
    /// or its first `join_peers` address.
    pub channel: SocketAddr,
    pub join_listen: Option<SocketAddr>,
    /// A joiner's live primaries to ask (empty: it waits as a spare on `channel`).
    pub join_peers: Vec<SocketAddr>,
    pub spares: Vec<SocketAddr>,
    pub heartbeat_listen: SocketAddr,
    pub heartbeat_peer: SocketAddr,
    /// The network device's mode: a UDP service address, or a TAP device.
    pub network: Network,
    pub status: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub disk: PathBuf,
    pub arbiter: PathBuf,
    /// The disk size asked for (`disk_sectors`), if the config says; the default otherwise.
    pub disk_sectors: u64,
    pub disk_sectors_given: bool,
    pub storage_timeout_ms: u64,
    pub sync_writes: bool,
    pub write_journal: bool,
    pub go_live_command: Option<String>,
    pub status_file: Option<PathBuf>,
    pub key: Vec<u8>,
}

/// How the guest's network device reaches the outside (docs/guest-abi.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// Datagram mode: UDP datagrams on this address, bridged to `peer || payload` frames.
    Datagram(SocketAddr),
    /// Ethernet mode: whole frames to and from a TAP device.
    Ethernet(crate::ethernet::EthernetSettings),
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Network::Datagram(addr) => write!(f, "{addr}"),
            Network::Ethernet(ethernet) => write!(f, "{} on TAP {} (Ethernet)", ethernet.guest_ip, ethernet.tap),
        }
    }
}

fn bad(key: &str, value: impl std::fmt::Display, reason: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("config: `{key}` = {value}: {reason}"))
}

/// A node name: 1 to 32 letters, digits, `.`, `_` or `-`, and not `-` (the arbiter's "nobody").
fn check_name(name: &str) -> Result<(), CliError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > NAME_BYTES_MAX || !name.chars().all(allowed) || name == "-" {
        return Err(bad(
            "name",
            format!("{name:?}"),
            format!("a node name is 1 to {NAME_BYTES_MAX} letters, digits, '.', '_' or '-', and not \"-\""),
        ));
    }
    Ok(())
}

/// An address a node listens on or sends to: port 0 is no address anyone can reach.
fn check_port(key: &str, addr: SocketAddr) -> Result<SocketAddr, CliError> {
    if addr.port() == 0 {
        return Err(bad(key, addr, "port 0 is not an address a peer or a client can reach"));
    }
    Ok(addr)
}

/// An address this node sends to: also not the unspecified address.
fn check_peer(key: &str, addr: SocketAddr) -> Result<SocketAddr, CliError> {
    if addr.ip().is_unspecified() {
        return Err(bad(key, addr, "the unspecified address is not one to send to"));
    }
    check_port(key, addr)
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, CliError> {
        let text = kvm_backend::files::read_text_bounded(path, CONFIG_BYTES_MAX)
            .map_err(|error| CliError::Io { what: format!("config {}", path.display()), reason: error.to_string() })?;
        toml::from_str(&text).map_err(|error| CliError::Usage(format!("config {}: {error}", path.display())))
    }

    /// `self` with every setting `other` has replacing ours (flags over the file).
    pub fn overridden_by(self, other: NodeConfig) -> NodeConfig {
        macro_rules! pick {
            ($($field:ident),*) => { NodeConfig { $($field: other.$field.or(self.$field)),* } };
        }
        pick!(
            name,
            guest,
            machine,
            pair_id,
            memory_mib,
            channel_listen,
            channel_peer,
            join_listen,
            join_peers,
            spares,
            heartbeat_listen,
            heartbeat_peer,
            service,
            status,
            metrics,
            disk,
            disk_sectors,
            arbiter,
            key_hex,
            key_file,
            heartbeat_interval_ms,
            failure_timeout_ms,
            startup_timeout_ms,
            arbiter_retry_ms,
            storage_timeout_ms,
            slice_exits_max,
            lag_target_ms,
            throttle_period_ms,
            sync_writes,
            write_journal,
            go_live_command,
            status_file,
            ethernet
        )
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config serialises")
    }

    pub fn required<'a, T>(value: &'a Option<T>, key: &str) -> Result<&'a T, CliError> {
        value.as_ref().ok_or_else(|| CliError::Usage(format!("config: `{key}` is required")))
    }

    /// The pre-shared key.
    pub fn key(&self) -> Result<Vec<u8>, CliError> {
        let (hex, source) = match (&self.key_hex, &self.key_file) {
            (Some(hex), _) => (hex.clone(), "`key_hex`".to_string()),
            (None, Some(path)) => {
                let text =
                    kvm_backend::files::read_text_bounded(path, KEY_FILE_BYTES_MAX).map_err(|error| CliError::Io {
                        what: format!("key file {} (`key_file`)", path.display()),
                        reason: error.to_string(),
                    })?;
                (text, format!("the key file {} (`key_file`)", path.display()))
            }
            (None, None) => return Err(CliError::Usage("config: `key_hex` or `key_file` is required".into())),
        };
        let key = decode_hex(hex.trim())
            .ok_or_else(|| CliError::Usage(format!("config: {source}: the key is not hexadecimal")))?;
        if key.len() < KEY_BYTES_MIN {
            return Err(CliError::Usage(format!(
                "config: {source}: the key has {} bytes, it must have at least {KEY_BYTES_MIN}",
                key.len()
            )));
        }
        Ok(key)
    }

    /// Checks every setting a node of `side` needs, and reads its key: the first thing a node does, before any
    /// network or storage activity. An error names the key.
    pub fn settings(&self, side: Side) -> Result<NodeSettings, CliError> {
        let name = self.name.clone().unwrap_or_else(|| {
            match side {
                Side::Primary => "primary",
                Side::Backup => "backup",
                Side::Joiner => "joiner",
            }
            .to_string()
        });
        check_name(&name)?;
        let guest = NodeConfig::required(&self.guest, "guest")?.clone();
        let machine = self.machine.clone().unwrap_or_else(|| "kvm".into());
        if machine != "kvm" && machine != "model" {
            return Err(bad("machine", format!("{machine:?}"), "expected \"kvm\" or \"model\""));
        }
        let memory_mib = self.memory_mib.unwrap_or(kvm_backend::MEMORY_BYTES_DEFAULT >> 20);
        let memory_max_mib = kvm_backend::arch::x86_64::layout::MEMORY_BYTES_MAX >> 20;
        if memory_mib < 2 || memory_mib > memory_max_mib || !memory_mib.is_multiple_of(2) {
            return Err(bad("memory_mib", memory_mib, format!("must be a multiple of 2 from 2 to {memory_max_mib}")));
        }
        let protocol = self.protocol(0);
        protocol.validate().map_err(|error| CliError::Usage(format!("config: {error}")))?;
        let storage_timeout_ms = self.storage_timeout_ms.unwrap_or(STORAGE_TIMEOUT_MS_DEFAULT);
        if storage_timeout_ms == 0 || storage_timeout_ms > ft::config::DURATION_MS_MAX {
            let range = format!("must be between 1 and {}", ft::config::DURATION_MS_MAX);
            return Err(bad("storage_timeout_ms", storage_timeout_ms, range));
        }
        let disk_sectors = self.disk_sectors.unwrap_or(DISK_SECTORS_DEFAULT);
        if disk_sectors == 0 || disk_sectors > DISK_SECTORS_MAX {
            return Err(bad("disk_sectors", disk_sectors, format!("must be between 1 and {DISK_SECTORS_MAX}")));
        }
        let join_peers = match &self.join_peers {
            Some(peers) if peers.is_empty() => {
                return Err(bad("join_peers", "[]", "no address to ask (leave the key out to wait as a spare)"))
            }
            Some(peers) => peers.iter().map(|peer| check_peer("join_peers", *peer)).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let spares = match &self.spares {
            Some(spares) if spares.is_empty() => {
                return Err(bad("spares", "[]", "no spare to call (leave the key out for none)"))
            }
            Some(spares) => spares.iter().map(|spare| check_peer("spares", *spare)).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let join_listen = self.join_listen.map(|addr| check_port("join_listen", addr)).transpose()?;
        let channel = match side {
            Side::Primary => check_peer("channel_peer", *NodeConfig::required(&self.channel_peer, "channel_peer")?)?,
            Side::Backup => {
                check_port("channel_listen", *NodeConfig::required(&self.channel_listen, "channel_listen")?)?
            }
            Side::Joiner => match (join_peers.first(), self.channel_listen) {
                (Some(peer), _) => *peer,
                (None, Some(listen)) => check_port("channel_listen", listen)?,
                (None, None) => {
                    return Err(CliError::Usage(
                        "config: a joining node needs `join_peers` (the live primary's `join_listen`) or \
                         `channel_listen` (to wait as a spare)"
                            .into(),
                    ))
                }
            },
        };
        let heartbeat_listen =
            check_port("heartbeat_listen", *NodeConfig::required(&self.heartbeat_listen, "heartbeat_listen")?)?;
        let heartbeat_peer =
            check_peer("heartbeat_peer", *NodeConfig::required(&self.heartbeat_peer, "heartbeat_peer")?)?;
        if heartbeat_peer == heartbeat_listen {
            return Err(bad(
                "heartbeat_peer",
                heartbeat_peer,
                "this node's own `heartbeat_listen`: its heartbeats would come back to it",
            ));
        }
        let network = match (&self.ethernet, self.service) {
            (Some(_), Some(service)) => {
                return Err(bad("service", service, "with `[ethernet]`: the guest's network is its TAP device"))
            }
            (Some(ethernet), None) => Network::Ethernet(ethernet.settings()?),
            (None, service) => {
                let service = check_port("service", *NodeConfig::required(&service, "service")?)?;
                if service == heartbeat_listen {
                    return Err(bad("service", service, "also this node's `heartbeat_listen` (both are UDP)"));
                }
                Network::Datagram(service)
            }
        };
        let status = self.status.map(|addr| check_port("status", addr)).transpose()?;
        let metrics = self.metrics.map(|addr| check_port("metrics", addr)).transpose()?;
        let channel_listening = side == Side::Backup || (side == Side::Joiner && join_peers.is_empty());
        let listening = [
            ("channel_listen", channel_listening.then_some(channel)),
            ("join_listen", join_listen),
            ("status", status),
            ("metrics", metrics),
        ];
        for (at, (key, addr)) in listening.iter().enumerate() {
            if let Some((other, _)) = listening[..at].iter().find(|(_, other)| other.is_some() && other == addr) {
                return Err(bad(
                    key,
                    addr.expect("found equal to a Some"),
                    format!("also this node's `{other}` (both are TCP)"),
                ));
            }
        }
        let disk = NodeConfig::required(&self.disk, "disk")?.clone();
        let arbiter = NodeConfig::required(&self.arbiter, "arbiter")?.clone();
        if disk == arbiter {
            return Err(bad("arbiter", arbiter.display(), "the same file as `disk`"));
        }
        if let Some(command) = &self.go_live_command {
            if command.trim().is_empty() {
                return Err(bad("go_live_command", "\"\"", "an empty command (leave the key out for none)"));
            }
        }
        if let Some(path) = &self.status_file {
            let directory = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            if !directory.is_dir() || path.is_dir() {
                return Err(bad("status_file", path.display(), "not a file in an existing directory"));
            }
        }
        let key = self.key()?;
        Ok(NodeSettings {
            name,
            guest,
            machine,
            memory_bytes: memory_mib << 20,
            protocol,
            channel,
            join_listen,
            join_peers,
            spares,
            heartbeat_listen,
            heartbeat_peer,
            network,
            status,
            metrics,
            disk,
            arbiter,
            disk_sectors,
            disk_sectors_given: self.disk_sectors.is_some(),
            storage_timeout_ms,
            sync_writes: self.sync_writes.unwrap_or(true),
            write_journal: self.write_journal.unwrap_or(false),
            go_live_command: self.go_live_command.clone(),
            status_file: self.status_file.clone(),
            key,
        })
    }

    /// The protocol tunables, from the defaults of `ft::Config` and our timeouts.
    pub fn protocol(&self, image_digest: u64) -> ft::Config {
        let defaults = ft::Config::default();
        ft::Config {
            pair_id: self.pair_id.unwrap_or(defaults.pair_id),
            image_digest,
            heartbeat_interval_ms: self.heartbeat_interval_ms.unwrap_or(defaults.heartbeat_interval_ms),
            failure_timeout_ms: self.failure_timeout_ms.unwrap_or(defaults.failure_timeout_ms),
            startup_timeout_ms: self.startup_timeout_ms.unwrap_or(defaults.startup_timeout_ms),
            arbiter_retry_ms: self.arbiter_retry_ms.unwrap_or(defaults.arbiter_retry_ms),
            slice_exits_max: self.slice_exits_max.unwrap_or(SLICE_EXITS_MAX_DEFAULT),
            lag_target_ms: self.lag_target_ms.unwrap_or(defaults.lag_target_ms),
            throttle_period_ms: self.throttle_period_ms.unwrap_or(defaults.throttle_period_ms),
            ..defaults
        }
    }
}

pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let file: NodeConfig = toml::from_str("guest = \"kv\"\npair_id = 7\nfailure_timeout_ms = 300\n").unwrap();
        let flags = NodeConfig { failure_timeout_ms: Some(100), ..NodeConfig::default() };
        let merged = file.overridden_by(flags);
        assert_eq!(merged.guest.as_deref(), Some("kv"));
        assert_eq!(merged.failure_timeout_ms, Some(100));
        assert_eq!(merged.protocol(1).pair_id, 7);
        assert!(toml::from_str::<NodeConfig>("gust = \"kv\"").is_err(), "unknown keys are refused");
    }

    #[test]
    fn the_sample_configs_parse() {
        for (name, text) in [
            ("primary", include_str!("../../../corpus/configs/primary.toml")),
            ("backup", include_str!("../../../corpus/configs/backup.toml")),
            ("two-hosts-a", include_str!("../../../corpus/configs/two-hosts-a.toml")),
            ("two-hosts-b", include_str!("../../../corpus/configs/two-hosts-b.toml")),
            ("redis-a", include_str!("../../../corpus/configs/redis-a.toml")),
            ("redis-b", include_str!("../../../corpus/configs/redis-b.toml")),
        ] {
            let config: NodeConfig = toml::from_str(text).unwrap_or_else(|error| panic!("{name}: {error}"));
            let network = config.service.is_some() != config.ethernet.is_some();
            assert!(config.guest.is_some() && network && config.arbiter.is_some(), "{name}");
            let primary = name.contains("primary") || name.ends_with('a');
            assert_eq!(config.channel_peer.is_some(), primary, "{name}");
            // Every setting passes the startup checks (the two-host samples' key file lives on those hosts).
            let config = NodeConfig { key_hex: config.key_hex.clone().or(Some("ab".repeat(32))), ..config };
            let side = if primary { Side::Primary } else { Side::Backup };
            let settings = config.settings(side).unwrap_or_else(|error| panic!("{name}: {error}"));
            assert_eq!(matches!(settings.network, Network::Ethernet(_)), name.starts_with("redis"), "{name}");
        }
    }

    #[test]
    fn a_service_and_an_ethernet_table_together_are_refused() {
        let text = include_str!("../../../corpus/configs/redis-a.toml");
        let config: NodeConfig = toml::from_str(text).unwrap();
        let config =
            NodeConfig { service: Some("127.0.0.1:7000".parse().unwrap()), key_hex: Some("ab".repeat(32)), ..config };
        let error = config.settings(Side::Primary).expect_err("refused").to_string();
        assert!(error.contains("`service`") && error.contains("[ethernet]"), "{error}");
        let missing = NodeConfig { service: None, ethernet: None, ..config };
        let error = missing.settings(Side::Primary).expect_err("refused").to_string();
        assert!(error.contains("`service` is required"), "{error}");
    }

    #[test]
    fn settings_name_the_key_at_fault() {
        let sample: NodeConfig = toml::from_str(include_str!("../../../corpus/configs/primary.toml")).unwrap();
        let refused = |config: NodeConfig| config.settings(Side::Primary).expect_err("refused").to_string();
        let error = refused(NodeConfig { failure_timeout_ms: Some(0), ..sample.clone() });
        assert!(error.contains("`failure_timeout_ms`"), "{error}");
        let error = refused(NodeConfig { name: Some("a\nb".into()), ..sample.clone() });
        assert!(error.contains("`name`"), "{error}");
        let error = refused(NodeConfig { heartbeat_peer: sample.heartbeat_listen, ..sample.clone() });
        assert!(error.contains("`heartbeat_peer`"), "{error}");
        let error = refused(NodeConfig { channel_peer: Some("0.0.0.0:7102".parse().unwrap()), ..sample.clone() });
        assert!(error.contains("`channel_peer`"), "{error}");
        let error = refused(NodeConfig { status: sample.metrics, ..sample.clone() });
        assert!(error.contains("`metrics`") && error.contains("`status`"), "{error}");
        let error = refused(NodeConfig { disk_sectors: Some(DISK_SECTORS_MAX + 1), ..sample.clone() });
        assert!(error.contains("`disk_sectors`"), "{error}");
        let error = refused(NodeConfig { go_live_command: Some(" ".into()), ..sample.clone() });
        assert!(error.contains("`go_live_command`"), "{error}");
        let error = refused(NodeConfig { status_file: Some("/nonexistent/dir/status.json".into()), ..sample.clone() });
        assert!(error.contains("`status_file`"), "{error}");
        let error = refused(NodeConfig { status_file: Some("/tmp".into()), ..sample.clone() });
        assert!(error.contains("`status_file`"), "{error}");
        let error = refused(NodeConfig { join_peers: Some(Vec::new()), ..sample.clone() });
        assert!(error.contains("`join_peers`"), "{error}");
        let error = refused(NodeConfig { spares: Some(vec!["0.0.0.0:7102".parse().unwrap()]), ..sample.clone() });
        assert!(error.contains("`spares`"), "{error}");
        let error = refused(NodeConfig { join_listen: sample.status, ..sample.clone() });
        assert!(error.contains("`join_listen`") && error.contains("`status`"), "{error}");
        // A joiner needs somewhere to find the live primary: its join peers, or its own channel address as a spare.
        let joiner = NodeConfig { join_peers: None, channel_listen: None, ..sample.clone() };
        let error = joiner.settings(Side::Joiner).expect_err("refused").to_string();
        assert!(error.contains("`join_peers`") && error.contains("`channel_listen`"), "{error}");
        let spare = NodeConfig { join_peers: None, channel_listen: Some("127.0.0.1:7102".parse().unwrap()), ..sample };
        let settings = spare.settings(Side::Joiner).expect("a spare");
        assert!(settings.join_peers.is_empty() && settings.channel.port() == 7102);
    }

    #[test]
    fn keys_are_hex() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        let config = NodeConfig { key_hex: Some("00".repeat(8)), ..NodeConfig::default() };
        assert!(config.key().is_err(), "too short");
    }
}
