//! `ftvm demo`: the whole story on localhost. A backup and a primary run as child processes (this binary's
//! `backup` and `primary` commands, the `kv` guest on KVM), a client drives the guest's service over UDP, the
//! primary is killed with SIGKILL at a random moment, the backup detects it, wins the test-and-set, goes live and
//! binds the service address, and the client carries on. Then every key is read back and checked against the
//! acknowledged puts, the disk image against the answers, and the arbiter and the nodes' status for split brain.
//! `report-failover` runs the same trials and a non-FT baseline and prints the figures.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ft::kv::{Op, Request, Response, Status, KEYS};
use serde::Serialize;

use crate::cli::config::{encode_hex, NodeConfig};
use crate::cli::error::CliError;
use crate::cli::machine::{self, splitmix};
use crate::cli::status;
use crate::cli::storage::SharedStorage;

/// How long one attempt of a request waits for its answer before a new attempt (with a new id) is sent.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(25);
/// Give up on a failover after this long.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(15);
/// Keep the load going this long after the first answer of the new primary.
const AFTER_FAILOVER: Duration = Duration::from_millis(400);

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// KVM if usable, else the model guest.
    pub machine: machine::MachineKind,
    pub trials: u32,
    pub seed: u64,
    /// Kill the primary between these many milliseconds after the load starts.
    pub kill_after_ms: (u64, u64),
    /// Freeze the primary (SIGSTOP: a hung host, silent) instead of killing it: detection then takes the failure
    /// timeout. The frozen process is killed once the backup is live, to free the service port on this host.
    pub freeze: bool,
    pub failure_timeout_ms: u64,
}

/// The outcome of one trial.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trial {
    pub failover_ms: Option<f64>,
    pub requests_ok: u64,
    pub requests_indeterminate: u64,
    pub requests_lost: u64,
    pub divergent_outputs: u64,
    pub split_brain: bool,
    pub disk_consistent: bool,
    /// Latencies (µs) of requests answered at the first attempt before the kill.
    #[serde(skip)]
    pub latencies_us: Vec<f64>,
    pub requests_per_s: f64,
    /// Logging-channel bytes per request, from the primary's status before the kill.
    pub log_bytes_per_request: Option<f64>,
    /// The primary's Output Rule hold times (µs) before the kill.
    pub output_hold_p50_us: Option<f64>,
    pub output_hold_p99_us: Option<f64>,
    /// The backup's delay from receiving an entry to acknowledging it (µs) before the kill.
    pub ack_delay_p50_us: Option<f64>,
    pub ack_delay_p99_us: Option<f64>,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub timeline: Vec<(f64, String)>,
}

impl Trial {
    pub fn failed(&self) -> bool {
        self.requests_lost > 0 || self.divergent_outputs > 0 || self.split_brain || !self.errors.is_empty()
    }
}

/// Child processes killed (SIGKILL) and reaped on drop, and a scratch directory removed on drop.
struct Scratch {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Scratch {
    fn new(tag: &str) -> Result<Scratch, CliError> {
        let dir = std::env::temp_dir().join(format!("ftvm-{tag}-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).map_err(|error| CliError::io(dir.display().to_string(), &error))?;
        Ok(Scratch { dir, children: Vec::new() })
    }

    fn spawn(&mut self, name: &str, role: &str, config: &Path) -> Result<u32, CliError> {
        let exe = std::env::current_exe().map_err(|error| CliError::io("current executable", &error))?;
        let stderr = std::fs::File::create(self.dir.join(format!("{name}.log")))
            .map_err(|error| CliError::io("node log", &error))?;
        let mut command = Command::new(exe);
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's state.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                // The nodes die with the demo, even if the demo itself is killed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .arg(role)
            .arg("--config")
            .arg(config)
            .env("FTVM_LOG", std::env::var("FTVM_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|error| CliError::io(format!("starting the {role}"), &error))?;
        let pid = child.id();
        self.children.push((name.to_string(), child));
        Ok(pid)
    }

    fn kill(&mut self, name: &str) {
        if let Some((_, child)) = self.children.iter_mut().find(|(n, _)| n == name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn alive(&mut self, name: &str) -> bool {
        self.children.iter_mut().any(|(n, child)| n == name && matches!(child.try_wait(), Ok(None)))
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

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free local TCP port")
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free local UDP port")
}

/// The two configs of a localhost pair in `dir`.
pub struct PairConfigs {
    pub a: NodeConfig,
    pub b: NodeConfig,
}

pub fn localhost_pair(dir: &Path, seed: u64, failure_timeout_ms: u64, machine: &machine::MachineKind) -> PairConfigs {
    let mut key = Vec::new();
    let mut state =
        seed ^ SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    for _ in 0..4 {
        state = splitmix(state);
        key.extend_from_slice(&state.to_le_bytes());
    }
    let (channel, hb_a, hb_b, service) = (free_tcp(), free_udp(), free_udp(), free_udp());
    let base = NodeConfig {
        guest: Some("kv".into()),
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
        ..NodeConfig::default()
    };
    let a = NodeConfig {
        name: Some("a".into()),
        channel_peer: Some(channel),
        heartbeat_listen: Some(hb_a),
        heartbeat_peer: Some(hb_b),
        status: Some(free_tcp()),
        ..base.clone()
    };
    let b = NodeConfig {
        name: Some("b".into()),
        channel_listen: Some(channel),
        heartbeat_listen: Some(hb_b),
        heartbeat_peer: Some(hb_a),
        status: Some(free_tcp()),
        ..base
    };
    PairConfigs { a, b }
}

fn write_config(dir: &Path, name: &str, config: &NodeConfig) -> Result<PathBuf, CliError> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config.to_toml()).map_err(|error| CliError::io(path.display().to_string(), &error))?;
    Ok(path)
}

fn status_json(addr: Option<SocketAddr>) -> Option<serde_json::Value> {
    let body = status::fetch(addr?, "/json").ok()?;
    serde_json::from_str(&body).ok()
}

fn wait_for(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// What the client knows of one key: the value of the last acknowledged put, and the values of puts sent
/// after it whose answers never came (they may or may not have been applied).
#[derive(Clone, Default)]
struct KeyModel {
    acked: Option<u64>,
    maybe: Vec<u64>,
}

impl KeyModel {
    fn allows(&self, value: u64) -> bool {
        self.acked.map_or(value == 0, |acked| acked == value) || self.maybe.contains(&value)
    }
}

/// A sequential client of the kv service.
pub struct Client {
    socket: UdpSocket,
    service: SocketAddr,
    id: u32,
    next_request: u64,
    answers: HashMap<u64, Vec<u8>>,
    pub divergent: u64,
    pub lost: u64,
    pub ok: u64,
    pub indeterminate: u64,
    model: Vec<KeyModel>,
    rng: u64,
}

pub struct Answer {
    pub response: Response,
    pub sent_at: Instant,
    pub received_at: Instant,
    pub first_attempt: bool,
}

impl Client {
    pub fn new(service: SocketAddr, seed: u64) -> Result<Client, CliError> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|error| CliError::io("client socket", &error))?;
        let _ = socket.set_read_timeout(Some(Duration::from_millis(10)));
        Ok(Client {
            socket,
            service,
            id: 1,
            next_request: 1,
            answers: HashMap::new(),
            divergent: 0,
            lost: 0,
            ok: 0,
            indeterminate: 0,
            model: vec![KeyModel::default(); KEYS as usize],
            rng: seed,
        })
    }

    fn random(&mut self) -> u64 {
        self.rng = splitmix(self.rng);
        self.rng
    }

    /// Receives one datagram before `until`; checks duplicates of old answers on the way.
    fn receive(&mut self, until: Instant) -> Option<(Response, Vec<u8>)> {
        let mut buffer = [0u8; 256];
        while Instant::now() < until {
            let Ok((length, _)) = self.socket.recv_from(&mut buffer) else { continue };
            let bytes = buffer[..length].to_vec();
            let Ok(response) = Response::decode(&bytes) else { continue };
            match self.answers.get(&response.request) {
                Some(first) if *first != bytes => {
                    self.divergent += 1;
                    tracing::error!("divergent answers to request {}: {first:?} then {bytes:?}", response.request);
                }
                Some(_) => {} // an identical duplicate (re-sent at go-live): fine
                None => {
                    self.answers.insert(response.request, bytes.clone());
                    return Some((response, bytes));
                }
            }
        }
        None
    }

    /// One operation, retried with new request ids until answered or `deadline` passes.
    pub fn operation(&mut self, op: Op, key: u64, deadline: Instant) -> Option<Answer> {
        let mut first_attempt = true;
        while Instant::now() < deadline {
            let request_id = self.next_request;
            self.next_request += 1;
            let value = if op == Op::Put { (u64::from(self.id) << 48) | request_id } else { 0 };
            let request = Request { op, client: self.id, request: request_id, key, value };
            let sent_at = Instant::now();
            let _ = self.socket.send_to(&request.encode(), self.service);
            let until = (sent_at + ATTEMPT_TIMEOUT).min(deadline);
            while let Some((response, _)) = self.receive(until) {
                if response.request != request_id {
                    continue; // a late answer to an earlier attempt (already counted indeterminate)
                }
                let received_at = Instant::now();
                self.ok += 1;
                let model = &mut self.model[key as usize];
                if response.status == Status::Ok {
                    match op {
                        Op::Put => *model = KeyModel { acked: Some(value), maybe: Vec::new() },
                        Op::Get => {
                            if !model.allows(response.value) {
                                self.lost += 1;
                                tracing::error!(
                                    "lost write: key {key} reads {:#x}, acknowledged {:?}",
                                    response.value,
                                    model.acked
                                );
                            }
                        }
                    }
                }
                return Some(Answer { response, sent_at, received_at, first_attempt });
            }
            if op == Op::Put {
                self.model[key as usize].maybe.push(value);
            }
            self.indeterminate += 1;
            first_attempt = false;
        }
        None
    }

    /// A random operation: 3 puts to 1 get.
    pub fn random_operation(&mut self, deadline: Instant) -> Option<Answer> {
        let op = if self.random().is_multiple_of(4) { Op::Get } else { Op::Put };
        let key = self.random() % KEYS;
        self.operation(op, key, deadline)
    }

    /// Reads every key back; returns the values (None where no answer came).
    pub fn read_all(&mut self, deadline: Instant) -> Vec<Option<u64>> {
        (0..KEYS).map(|key| self.operation(Op::Get, key, deadline).map(|answer| answer.response.value)).collect()
    }
}

/// Whether the disk image holds, for every key, the value the final read returned (kv record layout: magic u32,
/// reserved u32, key u64, value u64, version u64 in sector 1 + key).
fn disk_matches(disk: &Path, values: &[Option<u64>]) -> Result<bool, String> {
    let bytes = std::fs::read(disk).map_err(|error| error.to_string())?;
    for (key, value) in values.iter().enumerate() {
        let Some(value) = value else { return Ok(false) };
        let at = (1 + key) * ft::abi::SECTOR_BYTES;
        let record = bytes.get(at..at + 32).ok_or("disk too small")?;
        let stored_key = u64::from_le_bytes(record[8..16].try_into().expect("8 bytes"));
        let stored = u64::from_le_bytes(record[16..24].try_into().expect("8 bytes"));
        let written = u32::from_le_bytes(record[0..4].try_into().expect("4 bytes")) != 0;
        let on_disk = if written && stored_key == key as u64 { stored } else { 0 };
        if on_disk != *value {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Lines of a node's log that belong on the timeline, with their wall-clock second of the day.
fn log_events(path: &Path) -> Vec<(f64, String)> {
    const INTERESTING: [&str; 8] = [
        "PeerFailed",
        "TestAndSetStarted",
        "test-and-set",
        "WentLive",
        "service address",
        "refused",
        "LostRace",
        "stopped",
    ];
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|line| INTERESTING.iter().any(|word| line.contains(word)))
        .filter_map(|line| {
            // "2026-11-27T15:30:47.883532Z  INFO ftvm::cli::node: b: ..."
            let time = line.get(11..26)?;
            let mut parts = time.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            let text = line.split_once("ftvm::cli::node: ").map_or(line.as_str(), |(_, rest)| rest).to_string();
            Some((h * 3600.0 + m * 60.0 + s, text))
        })
        .collect()
}

fn second_of_day(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64() % 86_400.0
}

/// One trial: start the pair, load, kill the primary, check.
pub fn trial(options: &DemoOptions, index: u32) -> Result<Trial, CliError> {
    let mut scratch = Scratch::new("demo")?;
    let seed = splitmix(options.seed ^ u64::from(index));
    let configs = localhost_pair(&scratch.dir, seed, options.failure_timeout_ms, &options.machine);
    let a_path = write_config(&scratch.dir, "a", &configs.a)?;
    let b_path = write_config(&scratch.dir, "b", &configs.b)?;
    let mut out = Trial::default();
    let t0 = Instant::now();
    let wall0 = second_of_day(SystemTime::now()) - 0.0;
    let at = |instant: Instant| instant.duration_since(t0).as_secs_f64() * 1e3;
    let b_pid = scratch.spawn("b", "backup", &b_path)?;
    out.timeline.push((at(Instant::now()), format!("backup b started (pid {b_pid}), waiting for its primary")));
    let a_pid = scratch.spawn("a", "primary", &a_path)?;
    out.timeline.push((
        at(Instant::now()),
        format!("primary a started (pid {a_pid}), guest kv {}", options.machine.describe()),
    ));
    let protected = wait_for(Duration::from_secs(10), || {
        status_json(configs.a.status).is_some_and(|s| s["channel_up"] == true && s["service_bound"] == true)
    });
    if !protected {
        out.errors.push("the pair did not come up within 10 s".into());
        return Ok(out);
    }
    out.timeline.push((at(Instant::now()), "logging channel up, authenticated: a is protected by b".into()));
    let service = configs.a.service.expect("set");
    let mut client = Client::new(service, seed)?;
    let load_start = Instant::now();
    let (low, high) = options.kill_after_ms;
    let kill_after = Duration::from_millis(low + splitmix(seed) % (high - low).max(1));
    out.timeline.push((at(load_start), format!("client load starts on {service} (puts and gets, one at a time)")));
    // Before the kill.
    while load_start.elapsed() < kill_after {
        match client.random_operation(Instant::now() + Duration::from_secs(5)) {
            Some(answer) if answer.first_attempt => {
                out.latencies_us.push(answer.received_at.duration_since(answer.sent_at).as_secs_f64() * 1e6)
            }
            Some(_) => {}
            None => {
                out.errors.push("no answer from the protected primary for 5 s".into());
                return Ok(out);
            }
        }
    }
    let before_kill = client.ok;
    out.requests_per_s = before_kill as f64 / load_start.elapsed().as_secs_f64();
    if let Some(status) = status_json(configs.a.status) {
        let bytes = status["channel_bytes_sent"].as_f64().unwrap_or(0.0);
        out.log_bytes_per_request = Some(bytes / before_kill.max(1) as f64);
        out.output_hold_p50_us = status["output_hold_p50_us"].as_f64();
        out.output_hold_p99_us = status["output_hold_p99_us"].as_f64();
    }
    if let Some(status) = status_json(configs.b.status) {
        out.ack_delay_p50_us = status["ack_delay_p50_us"].as_f64();
        out.ack_delay_p99_us = status["ack_delay_p99_us"].as_f64();
    }
    let kill_at = Instant::now();
    let kill_wall = second_of_day(SystemTime::now());
    if options.freeze {
        if let Some((_, child)) = scratch.children.iter().find(|(name, _)| name == "a") {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGSTOP) };
        }
        out.timeline.push((at(kill_at), format!("FREEZE primary a (SIGSTOP) after {before_kill} answered requests")));
    } else {
        scratch.kill("a");
        out.timeline.push((at(kill_at), format!("KILL -9 primary a after {before_kill} answered requests")));
    }
    let mut frozen = options.freeze;
    // After the kill: until the new primary answers, then a little longer.
    let mut first_new: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        if let Some(first) = first_new {
            if first.elapsed() > AFTER_FAILOVER {
                break;
            }
        }
        if frozen && status_json(configs.b.status).is_some_and(|s| s["role"] == "live, not protected") {
            // The frozen primary still holds the service port of this host: now it dies.
            scratch.kill("a");
            frozen = false;
            out.timeline
                .push((at(Instant::now()), "b is live: the frozen primary a is killed (frees the port)".into()));
        }
        if kill_at.elapsed() > FAILOVER_DEADLINE {
            out.errors.push(format!("no answer within {FAILOVER_DEADLINE:?} of the kill"));
            break;
        }
        // Short operation deadlines, so that the loop looks at the nodes often.
        if let Some(answer) = client.random_operation(Instant::now() + Duration::from_millis(30)) {
            if first_new.is_none() && answer.sent_at >= sent {
                first_new = Some(answer.received_at);
                out.failover_ms = Some(answer.received_at.duration_since(kill_at).as_secs_f64() * 1e3);
                out.timeline.push((
                    at(answer.received_at),
                    format!("first answer from the new primary (request {})", answer.response.request),
                ));
            }
        }
    }
    for (wall, text) in log_events(&scratch.dir.join("b.log")) {
        let ms = at(kill_at) + (wall - kill_wall) * 1e3;
        if ms >= 0.0 && ms < at(kill_at) + FAILOVER_DEADLINE.as_secs_f64() * 1e3 {
            out.timeline.push((ms, text));
        }
    }
    let _ = wall0;
    // Read everything back.
    let values = client.read_all(Instant::now() + Duration::from_secs(5));
    out.timeline.push((at(Instant::now()), format!("read back all {KEYS} keys")));
    // Split brain: the arbiter names one owner of the newest epoch, and only that node is live in it.
    let storage = SharedStorage {
        disk: configs.a.disk.clone().expect("set"),
        arbiter: configs.a.arbiter.clone().expect("set"),
        sync_writes: false,
        journal: None,
    };
    let record = storage.record().map_err(|error| CliError::io("arbiter", &error))?;
    let b_status = status_json(configs.b.status);
    let b_live = b_status.as_ref().is_some_and(|s| s["role"] == "live, not protected" || s["role"] == "primary");
    let b_epoch = b_status.as_ref().and_then(|s| s["epoch"].as_u64()).unwrap_or(0);
    let a_alive = scratch.alive("a");
    out.split_brain = a_alive || (b_live && (record.owner_name() != "b" || b_epoch != record.epoch));
    out.timeline.push((at(Instant::now()), format!("arbiter: epoch {} owner {}", record.epoch, record.owner)));
    // Stop the new primary before reading its disk: everything it answered is on the disk already.
    scratch.kill("b");
    out.disk_consistent = disk_matches(&storage.disk, &values).unwrap_or(false);
    for (key, value) in values.iter().enumerate() {
        match value {
            None => out.errors.push(format!("key {key}: no answer to the final read")),
            Some(value) if !client.model[key].allows(*value) => {
                client.lost += 1;
                tracing::error!("lost write: key {key} reads {value:#x}, acknowledged {:?}", client.model[key].acked);
            }
            Some(_) => {}
        }
    }
    if !out.disk_consistent {
        out.errors.push("the disk image does not match the answers".into());
    }
    out.requests_ok = client.ok;
    out.requests_indeterminate = client.indeterminate;
    out.requests_lost = client.lost;
    out.divergent_outputs = client.divergent;
    out.timeline.sort_by(|x, y| x.0.total_cmp(&y.0));
    Ok(out)
}

/// A primary alone (no backup: outputs released at once), for the non-FT baseline: latencies (µs) and requests
/// per second over `duration`.
pub fn baseline(duration: Duration, seed: u64, machine: &machine::MachineKind) -> Result<(Vec<f64>, f64), CliError> {
    let mut scratch = Scratch::new("baseline")?;
    let mut configs = localhost_pair(&scratch.dir, seed, 150, machine);
    configs.a.startup_timeout_ms = Some(100);
    let a_path = write_config(&scratch.dir, "a", &configs.a)?;
    scratch.spawn("a", "primary", &a_path)?;
    let unprotected = wait_for(Duration::from_secs(10), || {
        status_json(configs.a.status).is_some_and(|s| s["role"] == "live, not protected" && s["service_bound"] == true)
    });
    if !unprotected {
        return Err(CliError::Protocol("the baseline primary did not go live alone".into()));
    }
    let mut client = Client::new(configs.a.service.expect("set"), seed)?;
    let start = Instant::now();
    let mut latencies = Vec::new();
    while start.elapsed() < duration {
        if let Some(answer) = client.random_operation(Instant::now() + Duration::from_secs(5)) {
            if answer.first_attempt {
                latencies.push(answer.received_at.duration_since(answer.sent_at).as_secs_f64() * 1e6);
            }
        }
    }
    Ok((latencies, client.ok as f64 / start.elapsed().as_secs_f64()))
}

#[derive(Serialize)]
struct Summary {
    guest: String,
    trials: u32,
    failover_ms: Option<f64>,
    failover_ms_all: Vec<Option<f64>>,
    requests_ok: u64,
    requests_indeterminate: u64,
    requests_lost: u64,
    divergent_outputs: u64,
    split_brain: bool,
    disk_consistent: bool,
    errors: Vec<String>,
}

/// `ftvm demo`.
pub fn run(options: &DemoOptions, json: bool) -> Result<bool, CliError> {
    if !json {
        println!(
            "ftvm demo: backup and primary as child processes on localhost, guest `kv` {}",
            options.machine.describe()
        );
    }
    let mut trials = Vec::new();
    for index in 0..options.trials {
        let result = trial(options, index)?;
        if !json {
            println!("\n== trial {} of {} ==", index + 1, options.trials);
            for (ms, text) in &result.timeline {
                println!("{ms:9.1} ms  {text}");
            }
            println!(
                "failover {} | {} requests answered, {} attempts unanswered, {} lost, {} divergent | split brain: {} | disk consistent: {}",
                result.failover_ms.map_or("none".into(), |ms| format!("{ms:.1} ms")),
                result.requests_ok,
                result.requests_indeterminate,
                result.requests_lost,
                result.divergent_outputs,
                if result.split_brain { "YES" } else { "no" },
                if result.disk_consistent { "yes" } else { "NO" },
            );
            for error in &result.errors {
                println!("ERROR: {error}");
            }
        }
        trials.push(result);
    }
    let mut failovers: Vec<f64> = trials.iter().filter_map(|t| t.failover_ms).collect();
    failovers.sort_by(f64::total_cmp);
    let summary = Summary {
        guest: match options.machine {
            machine::MachineKind::Kvm => "kv (KVM)".to_string(),
            machine::MachineKind::Model { .. } => "kv (model guest, no KVM)".to_string(),
        },
        trials: options.trials,
        failover_ms: failovers.get(failovers.len() / 2).copied(),
        failover_ms_all: trials.iter().map(|t| t.failover_ms).collect(),
        requests_ok: trials.iter().map(|t| t.requests_ok).sum(),
        requests_indeterminate: trials.iter().map(|t| t.requests_indeterminate).sum(),
        requests_lost: trials.iter().map(|t| t.requests_lost).sum(),
        divergent_outputs: trials.iter().map(|t| t.divergent_outputs).sum(),
        split_brain: trials.iter().any(|t| t.split_brain),
        disk_consistent: trials.iter().all(|t| t.disk_consistent),
        errors: trials.iter().flat_map(|t| t.errors.iter().cloned()).collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("serialisable"));
    } else {
        println!(
            "\nsummary: {} trial(s), median failover {}, {} requests answered, {} lost, {} divergent, split brain: {}",
            summary.trials,
            summary.failover_ms.map_or("none".into(), |ms| format!("{ms:.1} ms")),
            summary.requests_ok,
            summary.requests_lost,
            summary.divergent_outputs,
            if summary.split_brain { "YES" } else { "no" }
        );
    }
    Ok(!trials.iter().any(Trial::failed))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `ftvm report-failover`: the figures of `trials` demo trials and a non-FT baseline.
pub fn report(options: &DemoOptions) -> Result<bool, CliError> {
    let mut trials = Vec::new();
    for index in 0..options.trials {
        let result = trial(options, index)?;
        eprintln!(
            "trial {}: failover {:?} ms, lost {}, divergent {}",
            index + 1,
            result.failover_ms,
            result.requests_lost,
            result.divergent_outputs
        );
        trials.push(result);
    }
    let (mut plain, plain_rps) = baseline(Duration::from_secs(2), options.seed, &options.machine)?;
    plain.sort_by(f64::total_cmp);
    let mut failovers: Vec<f64> = trials.iter().filter_map(|t| t.failover_ms).collect();
    failovers.sort_by(f64::total_cmp);
    let mut ft: Vec<f64> = trials.iter().flat_map(|t| t.latencies_us.iter().copied()).collect();
    ft.sort_by(f64::total_cmp);
    let rps: Vec<f64> = trials.iter().map(|t| t.requests_per_s).collect();
    let ft_rps = rps.iter().sum::<f64>() / rps.len().max(1) as f64;
    let per_request: Vec<f64> = trials.iter().filter_map(|t| t.log_bytes_per_request).collect();
    let bytes = per_request.iter().sum::<f64>() / per_request.len().max(1) as f64;
    println!("trials={}", trials.len());
    println!(
        "failover-ms min={:.1} median={:.1} max={:.1}",
        failovers.first().copied().unwrap_or(f64::NAN),
        percentile(&failovers, 0.5),
        failovers.last().copied().unwrap_or(f64::NAN)
    );
    println!("latency-us ft p50={:.0} p99={:.0} (n={})", percentile(&ft, 0.5), percentile(&ft, 0.99), ft.len());
    println!(
        "latency-us plain p50={:.0} p99={:.0} (n={})",
        percentile(&plain, 0.5),
        percentile(&plain, 0.99),
        plain.len()
    );
    println!(
        "output-rule-added-us p50={:.0} p99={:.0}",
        percentile(&ft, 0.5) - percentile(&plain, 0.5),
        percentile(&ft, 0.99) - percentile(&plain, 0.99)
    );
    let mut p50: Vec<f64> = trials.iter().filter_map(|t| t.output_hold_p50_us).collect();
    let mut p99: Vec<f64> = trials.iter().filter_map(|t| t.output_hold_p99_us).collect();
    p50.sort_by(f64::total_cmp);
    p99.sort_by(f64::total_cmp);
    println!(
        "output-rule-hold-us p50={:.0} p99={:.0} (per output, measured in the primary; a put holds two: disk write, answer)",
        percentile(&p50, 0.5),
        percentile(&p99, 0.5)
    );
    let mut a50: Vec<f64> = trials.iter().filter_map(|t| t.ack_delay_p50_us).collect();
    let mut a99: Vec<f64> = trials.iter().filter_map(|t| t.ack_delay_p99_us).collect();
    a50.sort_by(f64::total_cmp);
    a99.sort_by(f64::total_cmp);
    println!(
        "backup-ack-delay-us p50={:.0} p99={:.0} (receipt of an entry to its ack, in the backup)",
        percentile(&a50, 0.5),
        percentile(&a99, 0.5)
    );
    println!("log-bytes-per-request={bytes:.0}");
    println!("requests-per-s ft={ft_rps:.0} plain={plain_rps:.0}");
    println!(
        "requests-lost={} divergent-outputs={} split-brain={}",
        trials.iter().map(|t| t.requests_lost).sum::<u64>(),
        trials.iter().map(|t| t.divergent_outputs).sum::<u64>(),
        trials.iter().any(|t| t.split_brain)
    );
    Ok(!trials.iter().any(Trial::failed))
}
