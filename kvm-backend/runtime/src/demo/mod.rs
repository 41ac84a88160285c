//! `ftvm demo`: the whole story on localhost. A backup and a primary run as child processes (this binary's
//! `backup` and `primary` commands, the pipelined key-value guest `kvq` on KVM, or on the model guest without
//! KVM), several clients each keep several requests in flight against the guest's service over UDP
//! ([`crate::load`]), and at a random moment the primary is killed (kill -9) or its host is lost (SIGSTOP:
//! it sends nothing more, not even a FIN or RST, so only the failure timeout can tell), with outputs held by the
//! Output Rule and disk IO pending. The backup detects it, wins the test-and-set, goes live and binds the service
//! address, and the clients carry on.
//!
//! Then the demo believes the outside, not the nodes: every answer is checked against one history of the puts
//! (no acknowledged put lost), two answers to one request id must be byte-identical, a read the guest found
//! inconsistent fails the trial, the disk image must hold what was read back, and split brain is read from the
//! shared storage's write journal (a write of a deposed epoch landing after a newer grant, an epoch granted
//! twice) and the arbiter record. `report-failover` runs kill and host-loss trials and a non-FT baseline and
//! prints the figures.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use ft::kv::KEYS;
use serde::Serialize;

use crate::error::CliError;
use crate::figures::percentile;
use crate::load::{self, Client, History, Load};
use crate::machine::{self, splitmix};
use crate::pair::{localhost_pair, log_tail, status_json, wait_for, write_config, Scratch, GUEST};
use crate::storage::{journal_path, Journal, SharedStorage, NOBODY};

pub mod redis;
pub mod redis_pair;
mod reprotect;
mod resp_client;

pub use redis::{RedisOptions, RedisReport};

/// Most failures one trial may ask for (`--failures`).
pub const FAILURES_MAX: u32 = 20;

/// Give up on a failover after this long.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(15);
/// Keep the load going this long after the first answer of the new primary.
const AFTER_FAILOVER: Duration = Duration::from_millis(200);
/// Reads in flight while every key is read back.
const READ_BACK_DEPTH: usize = 8;

/// How the primary fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureMode {
    /// kill -9: the kernel closes the process's sockets, so the backup hears of it at once.
    Kill,
    /// The host is lost (the primary is frozen with SIGSTOP): silence, detected by the failure timeout. On this
    /// one host the frozen process is killed once the backup is live, to free the service port.
    HostLoss,
}

impl FailureMode {
    pub fn name(self) -> &'static str {
        match self {
            FailureMode::Kill => "kill",
            FailureMode::HostLoss => "host-loss",
        }
    }
}

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// KVM if usable, else the model guest.
    pub machine: machine::MachineKind,
    pub trials: u32,
    pub seed: u64,
    /// Kill the primary between these many milliseconds after the load starts.
    pub kill_after_ms: (u64, u64),
    pub mode: FailureMode,
    /// Failures of the primary in each trial: after each but the last, a fresh node re-protects the live one.
    pub failures: u32,
    pub failure_timeout_ms: u64,
    /// Client threads, and requests each keeps in flight.
    pub clients: u32,
    pub in_flight: u32,
}

/// The seed of trial `index` of a demo seeded `seed`: the first trial's is the demo's own, so that
/// `--seed <a trial's seed> --trials 1` runs that trial again (the same kill moment and client load).
pub fn trial_seed(seed: u64, index: u32) -> u64 {
    if index == 0 {
        seed
    } else {
        splitmix(seed.wrapping_add(u64::from(index)))
    }
}

/// The outcome of one trial.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trial {
    pub seed: u64,
    pub failover_ms: Option<f64>,
    /// When and why the backup declared the primary failed, in its own words ("after 151 ms without word: no
    /// word from it within the failure timeout").
    pub detected_by: Option<String>,
    pub requests_ok: u64,
    pub requests_indeterminate: u64,
    pub requests_lost: u64,
    pub divergent_outputs: u64,
    pub inconsistent_reads: u64,
    /// Attempts sent and not yet answered (nor given up) when the kill landed.
    pub requests_in_flight_at_kill: u64,
    /// Outputs the primary held under the Output Rule just before the kill, from its status.
    pub outputs_held_at_kill: Option<u64>,
    /// Host loss: the lost host froze holding the storage's fence lock, and the failover waited for its storage
    /// lease to expire (its process killed).
    pub storage_lease_expired: bool,
    /// Failovers that brought a new primary (its first answer came), re-protections that completed, and per
    /// re-protection: the pause at the cut, the clone's whole time and bytes, and the time from the failure
    /// before it until the pair was protected again.
    pub failovers: u32,
    pub reprotections: u32,
    pub reprotect_pause_ms: Vec<f64>,
    pub reprotect_total_ms: Vec<f64>,
    pub reprotect_bytes: Vec<u64>,
    pub protected_again_ms: Vec<f64>,
    /// The failover time of each failure after the first (the first is `failover_ms`).
    pub later_failover_ms: Vec<f64>,
    pub split_brain: bool,
    pub split_brain_evidence: Vec<String>,
    pub journal_writes: u64,
    pub journal_grants: u64,
    pub disk_consistent: bool,
    /// Latencies (µs) of requests answered in time before the kill.
    #[serde(skip)]
    pub latencies_us: Vec<f64>,
    pub requests_per_s: f64,
    /// Logging-channel bytes per request, from the primary's status before the kill.
    pub log_bytes_per_request: Option<f64>,
    /// The primary's Output Rule hold times (µs) before the kill.
    pub output_hold_p50_us: Option<f64>,
    pub output_hold_p99_us: Option<f64>,
    /// The hold's stages (µs): logging to the covering ack, and that ack to the release.
    pub hold_log_to_ack_p50_us: Option<f64>,
    pub hold_log_to_ack_p99_us: Option<f64>,
    pub hold_ack_to_release_p50_us: Option<f64>,
    pub hold_ack_to_release_p99_us: Option<f64>,
    pub hold_log_to_write_p50_us: Option<f64>,
    pub hold_log_to_write_p99_us: Option<f64>,
    pub hold_write_to_ack_p50_us: Option<f64>,
    pub hold_write_to_ack_p99_us: Option<f64>,
    /// The backup's delay from receiving an entry to acknowledging it (µs) before the kill.
    pub ack_delay_p50_us: Option<f64>,
    pub ack_delay_p99_us: Option<f64>,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub timeline: Vec<(f64, String)>,
}

impl Trial {
    pub fn failed(&self) -> bool {
        self.requests_lost > 0
            || self.divergent_outputs > 0
            || self.inconsistent_reads > 0
            || self.split_brain
            || !self.disk_consistent
            || !self.errors.is_empty()
    }

    /// Whether every failure asked for happened, each but the last followed by a re-protection.
    pub fn complete(&self, failures: u32) -> bool {
        self.failovers == failures && self.reprotections + 1 == failures
    }
}

/// Whether the disk image holds, for every key, the value the final read returned (kv record layout: magic u32,
/// reserved u32, key u64, value u64, version u64 in sector 1 + key).
fn disk_matches(disk: &Path, values: &[Option<u64>]) -> Result<bool, String> {
    let bytes = std::fs::read(disk).map_err(|error| error.to_string())?;
    let u64_at = |record: &[u8], at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&record[at..at + 8]);
        u64::from_le_bytes(word)
    };
    for (key, value) in values.iter().enumerate() {
        let Some(value) = value else { return Ok(false) };
        let at = (1 + key) * ft::abi::SECTOR_BYTES;
        let record = bytes.get(at..at + 32).ok_or("disk too small")?;
        let written = record[0..4] != [0u8; 4];
        let on_disk = if written && u64_at(record, 8) == key as u64 { u64_at(record, 16) } else { 0 };
        if on_disk != *value {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The lines of a node's log that tell the failover's story (`node::TIMELINE`), with their wall-clock second of
/// the day and without their prefix.
fn log_events(path: &Path) -> Vec<(f64, String)> {
    let marker = format!("{}: ", crate::node::TIMELINE);
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            // "2026-11-27T15:30:47.883532Z  INFO ftvm::timeline: b: ..."
            let (_, text) = line.split_once(&marker)?;
            let time = line.get(11..26)?;
            let mut parts = time.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some((h * 3600.0 + m * 60.0 + s, text.to_string()))
        })
        .collect()
}

fn second_of_day(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64() % 86_400.0
}

/// Whether the backup's log says its test-and-set got no answer from the arbiter.
fn arbiter_blocked(b_log: &Path) -> bool {
    std::fs::read_to_string(b_log).is_ok_and(|log| log.contains("the arbiter did not answer"))
}

/// What the shared storage saw: the journal's split-brain evidence, and the arbiter record checked against the
/// journal's grants. Returns the evidence, and errors for a journal that cannot be read or trusted.
fn storage_evidence(storage: &SharedStorage, out: &mut Trial) -> Result<(), CliError> {
    let journal = match Journal::read(&journal_path(&storage.disk)) {
        Ok(journal) => journal,
        Err(error) => {
            out.errors.push(error);
            return Ok(());
        }
    };
    out.journal_writes = journal.writes() as u64;
    out.journal_grants = journal.grants().count() as u64;
    out.split_brain_evidence = journal.split_brain();
    let record = storage.record().map_err(|error| CliError::io("arbiter", &error))?;
    let last = journal.grants().last().map(|(epoch, owner)| (epoch, owner.to_string()));
    match last {
        Some((epoch, owner)) if epoch != record.epoch || owner != record.owner => {
            out.split_brain_evidence.push(format!(
                "the arbiter record says epoch {} owned by {}, but the last grant the storage saw was epoch \
                 {epoch} to {owner}",
                record.epoch, record.owner
            ));
        }
        None if record.owner != NOBODY => out.split_brain_evidence.push(format!(
            "the arbiter record says epoch {} owned by {}, which the storage never granted",
            record.epoch, record.owner
        )),
        _ => {}
    }
    if !journal.bad_lines.is_empty() {
        out.errors.push(format!(
            "the write journal has {} lines that are not entries (first: {:?})",
            journal.bad_lines.len(),
            journal.bad_lines[0]
        ));
    }
    if journal.writes() == 0 {
        out.errors.push("the write journal saw no write: the split-brain check had nothing to look at".into());
    }
    out.split_brain = !out.split_brain_evidence.is_empty();
    out.timeline.push((
        f64::NAN,
        format!(
            "storage journal: {} writes landed, {} grant{}{}; arbiter at epoch {}, owner {}",
            journal.writes(),
            out.journal_grants,
            if out.journal_grants == 1 { "" } else { "s" },
            if out.split_brain {
                ": SPLIT BRAIN".to_string()
            } else {
                ", no write of a deposed epoch after a newer grant, no epoch granted twice".to_string()
            },
            record.epoch,
            record.owner
        ),
    ));
    Ok(())
}

/// One trial: start the pair, load it, fail the primary with requests in flight, check what the outside saw.
pub fn trial(options: &DemoOptions, index: u32) -> Result<Trial, CliError> {
    let mut scratch = Scratch::new("demo")?;
    let seed = trial_seed(options.seed, index);
    let configs = localhost_pair(&scratch.dir, seed, options.failure_timeout_ms, &options.machine)?;
    let a_path = write_config(&scratch.dir, "a", &configs.a)?;
    let b_path = write_config(&scratch.dir, "b", &configs.b)?;
    let mut out = Trial { seed, ..Trial::default() };
    let t0 = Instant::now();
    let at = |instant: Instant| instant.duration_since(t0).as_secs_f64() * 1e3;
    let b_pid = scratch.spawn("b", "backup", &b_path)?;
    out.timeline.push((at(Instant::now()), format!("backup b started (pid {b_pid}), waiting for its primary")));
    let a_pid = scratch.spawn("a", "primary", &a_path)?;
    out.timeline.push((
        at(Instant::now()),
        format!("primary a started (pid {a_pid}): guest {GUEST} {}", options.machine.describe()),
    ));
    let protected = wait_for(Duration::from_secs(10), || {
        status_json(configs.a.status).is_some_and(|s| s["channel_up"] == true && s["service_bound"] == true)
    });
    if !protected {
        out.errors.push(format!(
            "the pair did not come up within 10 s; a's log ends: {}; b's log ends: {}",
            log_tail(&scratch.dir.join("a.log")),
            log_tail(&scratch.dir.join("b.log"))
        ));
        return Ok(out);
    }
    out.timeline.push((at(Instant::now()), "the logging channel is up and authenticated: a is protected by b".into()));
    let service = configs.a.service.ok_or_else(|| CliError::Usage("no service address".into()))?;
    let load_start = Instant::now();
    let load = Load::start(service, options.clients, options.in_flight, seed, load_start)?;
    let (low, high) = options.kill_after_ms;
    let kill_after = Duration::from_millis(low + splitmix(seed ^ 0x6b69_6c6c) % (high.saturating_sub(low) + 1));
    out.timeline.push((
        at(load_start),
        format!(
            "{} clients start on {service}, each keeping {} requests in flight (3 puts to 1 get); the {} comes \
             after {} ms",
            options.clients,
            options.in_flight,
            match options.mode {
                FailureMode::Kill => "kill",
                FailureMode::HostLoss => "host loss",
            },
            kill_after.as_millis()
        ),
    ));
    while load_start.elapsed() < kill_after {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Just before the kill: what the nodes say of themselves (figures only: the checks believe the outside).
    if let Some(status) = status_json(configs.a.status) {
        out.outputs_held_at_kill = status["outputs_held"].as_u64();
        out.output_hold_p50_us = status["output_hold_p50_us"].as_f64();
        out.output_hold_p99_us = status["output_hold_p99_us"].as_f64();
        out.hold_log_to_ack_p50_us = status["hold_log_to_ack_p50_us"].as_f64();
        out.hold_log_to_ack_p99_us = status["hold_log_to_ack_p99_us"].as_f64();
        out.hold_ack_to_release_p50_us = status["hold_ack_to_release_p50_us"].as_f64();
        out.hold_ack_to_release_p99_us = status["hold_ack_to_release_p99_us"].as_f64();
        out.hold_log_to_write_p50_us = status["hold_log_to_write_p50_us"].as_f64();
        out.hold_log_to_write_p99_us = status["hold_log_to_write_p99_us"].as_f64();
        out.hold_write_to_ack_p50_us = status["hold_write_to_ack_p50_us"].as_f64();
        out.hold_write_to_ack_p99_us = status["hold_write_to_ack_p99_us"].as_f64();
        let bytes = status["channel_bytes_sent"].as_f64().unwrap_or(0.0);
        out.log_bytes_per_request = Some(bytes / load.answered().max(1) as f64);
    }
    let b_role = status_json(configs.b.status).map(|status| {
        out.ack_delay_p50_us = status["ack_delay_p50_us"].as_f64();
        out.ack_delay_p99_us = status["ack_delay_p99_us"].as_f64();
        status["role"].as_str().unwrap_or_default().to_string()
    });
    if b_role.as_deref() != Some("backup") {
        out.errors.push(format!(
            "b was not a backup just before the kill ({}): the pair failed over early",
            b_role.as_deref().unwrap_or("no status")
        ));
    }
    let answered_before = load.answered();
    out.requests_in_flight_at_kill = load.in_flight();
    let kill_at = Instant::now();
    let kill_wall = second_of_day(SystemTime::now());
    let kill_offset_ns = u64::try_from(kill_at.duration_since(load_start).as_nanos()).unwrap_or(u64::MAX);
    out.requests_per_s = answered_before as f64 / kill_at.duration_since(load_start).as_secs_f64();
    let held = out.outputs_held_at_kill.map_or(String::new(), |held| {
        format!(", {held} output{} held by the Output Rule", if held == 1 { "" } else { "s" })
    });
    let what =
        format!("after {answered_before} answers, with {} requests in flight{held}", out.requests_in_flight_at_kill);
    let failure = Failure { victim: "a", survivor: "b", survivor_status: configs.b.status, what: &what };
    let (first, lease_expired) = fail_primary(&mut scratch, &failure, options.mode, &load, &mut out, &at);
    out.storage_lease_expired = lease_expired;
    let mut live = "b".to_string();
    if let Some(first) = first {
        out.failovers += 1;
        let received = load_start + Duration::from_nanos(first.received_ns);
        out.failover_ms = Some(received.saturating_duration_since(kill_at).as_secs_f64() * 1e3);
        out.timeline.push((
            at(received),
            format!("first answer from the new primary (client {}, request {})", first.client, first.request),
        ));
        while received.elapsed() < AFTER_FAILOVER {
            std::thread::sleep(Duration::from_millis(5));
        }
        if options.failures > 1 {
            let first_failure = (live.clone(), kill_at);
            live = reprotect::fail_again(&mut scratch, &configs, options, &load, &mut out, &at, first_failure)?;
        }
    }
    let clients = load.stop()?;
    let mut history = History::default();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(
            client
                .latencies
                .iter()
                .filter(|(_, received)| *received < kill_offset_ns)
                .map(|(sent, received)| received.saturating_sub(*sent) as f64 / 1e3),
        );
        collect(client, &mut history, &mut out);
    }
    out.latencies_us = latencies;
    out.timeline.push((
        at(Instant::now()),
        format!(
            "the clients stop: {} answers, {} attempts never answered",
            out.requests_ok, out.requests_indeterminate
        ),
    ));
    for (wall, text) in log_events(&scratch.dir.join("b.log")) {
        let mut seconds = wall - kill_wall;
        if seconds < -43_200.0 {
            seconds += 86_400.0; // past midnight
        }
        if seconds >= -0.001 && seconds < FAILOVER_DEADLINE.as_secs_f64() {
            if out.detected_by.is_none() {
                // "b: declaring the peer failed after 151 ms without word: no word from it within ..."
                if let Some((_, how)) = text.split_once("declaring the peer failed ") {
                    out.detected_by = Some(how.to_string());
                }
            }
            out.timeline.push((at(kill_at) + seconds.max(0.0) * 1e3, text));
        }
    }
    if out.detected_by.is_none() && out.failover_ms.is_some() {
        out.errors.push("b's log does not say why it declared a failed".into());
    }
    // Read everything back, as one more client whose reads join the history.
    let (values, reader) = load::read_back(
        service,
        options.clients + 1,
        load_start,
        READ_BACK_DEPTH,
        Instant::now() + Duration::from_secs(5),
    )?;
    out.timeline.push((at(Instant::now()), format!("read back all {KEYS} keys")));
    collect(reader, &mut history, &mut out);
    let unread: Vec<String> =
        values.iter().enumerate().filter(|(_, value)| value.is_none()).map(|(key, _)| key.to_string()).collect();
    if !unread.is_empty() {
        out.errors.push(format!("no answer to the final read of key(s) {}", unread.join(", ")));
    }
    let (lost, contradictions) = history.contradictions();
    out.requests_lost = lost;
    for contradiction in contradictions {
        out.errors.push(format!("a read contradicts the puts: {contradiction}"));
    }
    // Stop the new primary before reading its disk: everything it answered is on the disk already.
    scratch.kill(&live);
    let storage = SharedStorage {
        disk: configs.a.disk.clone().unwrap_or_default(),
        arbiter: configs.a.arbiter.clone().unwrap_or_default(),
        sync_writes: false,
        journal: None,
    };
    storage_evidence(&storage, &mut out)?;
    let now = at(Instant::now());
    if let Some(line) = out.timeline.iter_mut().find(|(ms, _)| ms.is_nan()) {
        line.0 = now;
    }
    out.disk_consistent = disk_matches(&storage.disk, &values).unwrap_or(false);
    if !out.disk_consistent {
        out.errors.push("the disk image does not hold the values read back".into());
    }
    out.timeline.sort_by(|x, y| x.0.total_cmp(&y.0));
    Ok(out)
}

/// One failure of the primary, as the demo causes it.
struct Failure<'a> {
    victim: &'a str,
    survivor: &'a str,
    survivor_status: Option<std::net::SocketAddr>,
    /// What the load was doing, for the timeline: "after N answers, with M requests in flight".
    what: &'a str,
}

/// Fails the primary (kill -9, or its host lost: frozen, and killed once the survivor is live or waits on the
/// storage fence the frozen host holds), marks the kill in the load, and waits for the new primary's first
/// answer. Returns it (None past `FAILOVER_DEADLINE`, an error in `out`), and whether the lost host's storage lease
/// had to expire.
fn fail_primary(
    scratch: &mut Scratch,
    failure: &Failure<'_>,
    mode: FailureMode,
    load: &Load,
    out: &mut Trial,
    at: &dyn Fn(Instant) -> f64,
) -> (Option<load::FirstAnswer>, bool) {
    let Failure { victim, survivor, survivor_status, what } = *failure;
    let kill_at = Instant::now();
    match mode {
        FailureMode::Kill => {
            scratch.kill(victim);
            out.timeline.push((at(kill_at), format!("KILL -9 of primary {victim} {what}")));
        }
        FailureMode::HostLoss => {
            scratch.signal(victim, libc::SIGSTOP);
            out.timeline.push((
                at(kill_at),
                format!(
                    "HOST LOSS: primary {victim} frozen (SIGSTOP) {what}: from now on it sends nothing, not even a \
                     FIN or RST"
                ),
            ));
        }
    }
    // Attempts sent from now on can only be answered by the new primary.
    load.mark_kill();
    let mut frozen = mode == FailureMode::HostLoss;
    let mut lease_expired = false;
    let survivor_log = scratch.dir.join(format!("{survivor}.log"));
    let mut looks = 0u64;
    loop {
        if let Some(first) = load.first_after_kill() {
            return (Some(first), lease_expired);
        }
        looks += 1;
        // The survivor's log and status every 10 ms: it has enough to do.
        let look = looks.is_multiple_of(5);
        if frozen && look && arbiter_blocked(&survivor_log) {
            // The lost host froze inside a disk write, holding the shared fence lock on the arbiter record: no
            // grant is safe while that write may still land, so the test-and-set waits (and the survivor says the
            // arbiter does not answer). Shared storage revokes a lost host's locks when its lease runs out
            // (NFSv4: the lease time); here the lost host's process dies, which releases them as the expiry would.
            scratch.kill(victim);
            frozen = false;
            lease_expired = true;
            out.timeline.push((
                at(Instant::now()),
                format!(
                    "the lost host holds the storage's fence lock (it froze inside a disk write), so {survivor}'s \
                     test-and-set waits: its storage lease expires, {victim} is killed and its locks are released"
                ),
            ));
        }
        if frozen && look && status_json(survivor_status).is_some_and(|s| s["role"] == "live, not protected") {
            // The frozen primary still holds the service port of this one host: now it dies.
            scratch.kill(victim);
            frozen = false;
            out.timeline.push((
                at(Instant::now()),
                format!(
                    "{survivor} is live: the frozen primary {victim} is killed to free the service port (one host; \
                     a second host would not need it)"
                ),
            ));
        }
        if kill_at.elapsed() > FAILOVER_DEADLINE {
            out.errors.push(format!("no answer within {FAILOVER_DEADLINE:?} of the kill of {victim}"));
            return (None, lease_expired);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Adds a client's counts to the trial and its history to `history`.
fn collect(client: Client, history: &mut History, out: &mut Trial) {
    let (client_history, counts) = client.finish();
    history.extend(client_history);
    out.requests_ok += counts.answered;
    out.requests_indeterminate += counts.indeterminate;
    out.divergent_outputs += counts.divergent;
    out.inconsistent_reads += counts.inconsistent;
    out.errors.extend(counts.failures);
}

/// A primary alone (no backup: outputs released at once), for the non-FT baseline, under the same load: latencies
/// (µs) and requests per second over `duration`.
pub fn baseline(duration: Duration, options: &DemoOptions) -> Result<(Vec<f64>, f64), CliError> {
    let mut scratch = Scratch::new("baseline")?;
    let mut configs = localhost_pair(&scratch.dir, options.seed, 150, &options.machine)?;
    configs.a.startup_timeout_ms = Some(100);
    configs.a.write_journal = Some(false);
    let a_path = write_config(&scratch.dir, "a", &configs.a)?;
    scratch.spawn("a", "primary", &a_path)?;
    let unprotected = wait_for(Duration::from_secs(10), || {
        status_json(configs.a.status).is_some_and(|s| s["role"] == "live, not protected" && s["service_bound"] == true)
    });
    if !unprotected {
        return Err(CliError::Protocol("the baseline primary did not go live alone".into()));
    }
    let service = configs.a.service.ok_or_else(|| CliError::Usage("no service address".into()))?;
    let start = Instant::now();
    let load = Load::start(service, options.clients, options.in_flight, options.seed, start)?;
    std::thread::sleep(duration);
    let answered = load.answered();
    let elapsed = start.elapsed();
    let end_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    let mut latencies = Vec::new();
    for client in load.stop()? {
        latencies.extend(
            client
                .latencies
                .iter()
                .filter(|(_, received)| *received < end_ns)
                .map(|(sent, received)| received.saturating_sub(*sent) as f64 / 1e3),
        );
    }
    Ok((latencies, answered as f64 / elapsed.as_secs_f64()))
}

fn median(sorted: &[f64]) -> Option<f64> {
    (!sorted.is_empty()).then(|| percentile(sorted, 0.5))
}

#[derive(Serialize)]
struct Summary {
    guest: String,
    mode: FailureMode,
    seed: u64,
    trials: u32,
    trial_seeds: Vec<u64>,
    clients: u32,
    requests_in_flight_per_client: u32,
    /// The median.
    failover_ms: Option<f64>,
    failover_ms_min: Option<f64>,
    failover_ms_max: Option<f64>,
    failover_ms_all: Vec<Option<f64>>,
    detected_by_all: Vec<Option<String>>,
    requests_ok: u64,
    requests_indeterminate: u64,
    requests_lost: u64,
    divergent_outputs: u64,
    inconsistent_reads: u64,
    /// Summed over the trials; per trial in `requests_in_flight_at_kill_all`.
    requests_in_flight_at_kill: u64,
    requests_in_flight_at_kill_all: Vec<u64>,
    outputs_held_at_kill_all: Vec<Option<u64>>,
    /// Host loss: trials whose failover waited for the lost host's storage lease (it froze holding the fence).
    storage_lease_expiries: u64,
    /// Failures of the primary asked for per trial, failovers and re-protections that happened (in all trials),
    /// and per re-protection its pause at the cut, whole time, bytes, and time from the failure before it until
    /// the pair was protected again.
    failures_per_trial: u32,
    failovers: u32,
    reprotections: u32,
    reprotect_pause_ms: Vec<f64>,
    reprotect_total_ms: Vec<f64>,
    reprotect_bytes: Vec<u64>,
    protected_again_ms: Vec<f64>,
    split_brain: bool,
    split_brain_evidence: Vec<String>,
    journal_writes: u64,
    disk_consistent: bool,
    errors: Vec<String>,
}

fn guest_name(machine: &machine::MachineKind) -> String {
    match machine {
        machine::MachineKind::Kvm => format!("{GUEST} (KVM)"),
        machine::MachineKind::Model { .. } => format!("{GUEST} (model guest, no KVM)"),
    }
}

fn summary(options: &DemoOptions, trials: &[Trial]) -> Summary {
    let mut failovers: Vec<f64> = trials.iter().filter_map(|t| t.failover_ms).collect();
    failovers.sort_by(f64::total_cmp);
    Summary {
        guest: guest_name(&options.machine),
        mode: options.mode,
        seed: options.seed,
        trials: options.trials,
        trial_seeds: trials.iter().map(|t| t.seed).collect(),
        clients: options.clients,
        requests_in_flight_per_client: options.in_flight,
        failover_ms: median(&failovers),
        failover_ms_min: failovers.first().copied(),
        failover_ms_max: failovers.last().copied(),
        failover_ms_all: trials.iter().map(|t| t.failover_ms).collect(),
        detected_by_all: trials.iter().map(|t| t.detected_by.clone()).collect(),
        requests_ok: trials.iter().map(|t| t.requests_ok).sum(),
        requests_indeterminate: trials.iter().map(|t| t.requests_indeterminate).sum(),
        requests_lost: trials.iter().map(|t| t.requests_lost).sum(),
        divergent_outputs: trials.iter().map(|t| t.divergent_outputs).sum(),
        inconsistent_reads: trials.iter().map(|t| t.inconsistent_reads).sum(),
        requests_in_flight_at_kill: trials.iter().map(|t| t.requests_in_flight_at_kill).sum(),
        requests_in_flight_at_kill_all: trials.iter().map(|t| t.requests_in_flight_at_kill).collect(),
        outputs_held_at_kill_all: trials.iter().map(|t| t.outputs_held_at_kill).collect(),
        storage_lease_expiries: trials.iter().filter(|t| t.storage_lease_expired).count() as u64,
        failures_per_trial: options.failures,
        failovers: trials.iter().map(|t| t.failovers).sum(),
        reprotections: trials.iter().map(|t| t.reprotections).sum(),
        reprotect_pause_ms: trials.iter().flat_map(|t| t.reprotect_pause_ms.iter().copied()).collect(),
        reprotect_total_ms: trials.iter().flat_map(|t| t.reprotect_total_ms.iter().copied()).collect(),
        reprotect_bytes: trials.iter().flat_map(|t| t.reprotect_bytes.iter().copied()).collect(),
        protected_again_ms: trials.iter().flat_map(|t| t.protected_again_ms.iter().copied()).collect(),
        split_brain: trials.iter().any(|t| t.split_brain),
        split_brain_evidence: trials
            .iter()
            .flat_map(|t| t.split_brain_evidence.iter().map(move |e| format!("trial seed {}: {e}", t.seed)))
            .collect(),
        journal_writes: trials.iter().map(|t| t.journal_writes).sum(),
        disk_consistent: trials.iter().all(|t| t.disk_consistent),
        errors: trials
            .iter()
            .flat_map(|t| t.errors.iter().map(move |e| format!("trial seed {}: {e}", t.seed)))
            .collect(),
    }
}

fn mode_words(mode: FailureMode) -> &'static str {
    match mode {
        FailureMode::Kill => "kill -9 of the primary",
        FailureMode::HostLoss => "loss of the primary's host (SIGSTOP: silent)",
    }
}

fn yes_no(flag: bool, alarm: &str) -> String {
    if flag {
        alarm.to_string()
    } else {
        "no".to_string()
    }
}

/// `ftvm demo`.
pub fn run(options: &DemoOptions, json: bool) -> Result<bool, CliError> {
    if !json {
        println!(
            "ftvm demo: seed {} (run it again with --seed {}), {} trial(s) of {}; backup and primary as child \
             processes on localhost, guest `{GUEST}` {}",
            options.seed,
            options.seed,
            options.trials,
            mode_words(options.mode),
            options.machine.describe()
        );
    }
    let mut trials = Vec::new();
    for index in 0..options.trials {
        let result = trial(options, index)?;
        if !json {
            println!("\n== trial {} of {}, seed {} ==", index + 1, options.trials, result.seed);
            for (ms, text) in &result.timeline {
                println!("{ms:9.1} ms  {text}");
            }
            println!(
                "failover {}{} | {} requests in flight at the {} | {} answers, {} attempts never answered, {} lost \
                 puts, {} divergent answers, {} inconsistent reads | split brain: {} | disk consistent: {}",
                result.failover_ms.map_or("none".into(), |ms| format!("{ms:.1} ms")),
                result.detected_by.as_ref().map_or(String::new(), |cause| format!(" (detected: {cause})")),
                result.requests_in_flight_at_kill,
                options.mode.name(),
                result.requests_ok,
                result.requests_indeterminate,
                result.requests_lost,
                result.divergent_outputs,
                result.inconsistent_reads,
                yes_no(result.split_brain, "YES"),
                if result.disk_consistent { "yes" } else { "NO" },
            );
            if options.failures > 1 {
                println!(
                    "failures: {} of {}, re-protections: {} (pause at the cut {:?} ms, clone {:?} ms, {:?} bytes; \
                     protected again {:?} ms after each failure), later failovers {:?} ms",
                    result.failovers,
                    options.failures,
                    result.reprotections,
                    result.reprotect_pause_ms,
                    result.reprotect_total_ms,
                    result.reprotect_bytes,
                    result.protected_again_ms,
                    result.later_failover_ms
                );
            }
            for evidence in &result.split_brain_evidence {
                println!("SPLIT BRAIN: {evidence}");
            }
            for error in &result.errors {
                println!("ERROR: {error}");
            }
        }
        trials.push(result);
    }
    let summary = summary(options, &trials);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(|error| CliError::Protocol(error.to_string()))?);
    } else {
        println!(
            "\nsummary (seed {}): {} trial(s) of {}, median failover {}, {} answers, {} requests in flight at the \
             kills, {} lost puts, {} divergent answers, {} inconsistent reads, split brain: {}",
            summary.seed,
            summary.trials,
            mode_words(options.mode),
            summary.failover_ms.map_or("none".into(), |ms| format!("{ms:.1} ms")),
            summary.requests_ok,
            summary.requests_in_flight_at_kill,
            summary.requests_lost,
            summary.divergent_outputs,
            summary.inconsistent_reads,
            yes_no(summary.split_brain, "YES")
        );
    }
    Ok(!trials.iter().any(|trial| trial.failed() || !trial.complete(options.failures)))
}

fn failover_line(mode: FailureMode, trials: &[Trial]) -> String {
    let mut failovers: Vec<f64> = trials.iter().filter_map(|t| t.failover_ms).collect();
    failovers.sort_by(f64::total_cmp);
    format!(
        "failover-ms {} min={:.1} median={:.1} max={:.1} (n={})",
        mode.name(),
        failovers.first().copied().unwrap_or(f64::NAN),
        percentile(&failovers, 0.5),
        failovers.last().copied().unwrap_or(f64::NAN),
        failovers.len()
    )
}

/// `ftvm report-failover`: the figures of `trials` kill trials, `trials` host-loss trials and a non-FT baseline
/// under the same load.
pub fn report(options: &DemoOptions) -> Result<bool, CliError> {
    let mut all = Vec::new();
    let mut by_mode = Vec::new();
    for mode in [FailureMode::Kill, FailureMode::HostLoss] {
        let options = DemoOptions { mode, ..options.clone() };
        let mut trials = Vec::new();
        for index in 0..options.trials {
            let result = trial(&options, index)?;
            eprintln!(
                "{} trial {} (seed {}): failover {} ms{}, {} in flight, {} lost, {} divergent, {} inconsistent, \
                 split brain {}",
                mode.name(),
                index + 1,
                result.seed,
                result.failover_ms.map_or("none".into(), |ms| format!("{ms:.1}")),
                if result.storage_lease_expired { " (waited for the lost host's storage lease)" } else { "" },
                result.requests_in_flight_at_kill,
                result.requests_lost,
                result.divergent_outputs,
                result.inconsistent_reads,
                result.split_brain
            );
            for error in &result.errors {
                eprintln!("  error: {error}");
            }
            trials.push(result);
        }
        by_mode.push((mode, trials.clone()));
        all.extend(trials);
    }
    let (mut plain, plain_rps) = baseline(Duration::from_secs(2), options)?;
    plain.sort_by(f64::total_cmp);
    let mut ft: Vec<f64> = all.iter().flat_map(|t| t.latencies_us.iter().copied()).collect();
    ft.sort_by(f64::total_cmp);
    let rps: Vec<f64> = all.iter().map(|t| t.requests_per_s).collect();
    let ft_rps = rps.iter().sum::<f64>() / rps.len().max(1) as f64;
    let per_request: Vec<f64> = all.iter().filter_map(|t| t.log_bytes_per_request).collect();
    let bytes = per_request.iter().sum::<f64>() / per_request.len().max(1) as f64;
    println!("seed={}", options.seed);
    println!(
        "trials={} kill, {} host-loss; load: {} clients x {} requests in flight, guest {}",
        options.trials,
        options.trials,
        options.clients,
        options.in_flight,
        guest_name(&options.machine)
    );
    for (mode, trials) in &by_mode {
        println!("{}", failover_line(*mode, trials));
        if *mode == FailureMode::HostLoss {
            println!(
                "host-loss-storage-lease-expiries={} of {} (the lost host froze inside a disk write, holding the fence)",
                trials.iter().filter(|t| t.storage_lease_expired).count(),
                trials.len()
            );
        }
    }
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
    let mut p50: Vec<f64> = all.iter().filter_map(|t| t.output_hold_p50_us).collect();
    let mut p99: Vec<f64> = all.iter().filter_map(|t| t.output_hold_p99_us).collect();
    p50.sort_by(f64::total_cmp);
    p99.sort_by(f64::total_cmp);
    println!(
        "output-rule-hold-us p50={:.0} p99={:.0} (per output, measured in the primary; a put holds two: disk write, answer)",
        percentile(&p50, 0.5),
        percentile(&p99, 0.5)
    );
    // The median over trials of each trial's figure.
    let median = |figure: fn(&Trial) -> Option<f64>| {
        let mut values: Vec<f64> = all.iter().filter_map(figure).collect();
        values.sort_by(f64::total_cmp);
        percentile(&values, 0.5)
    };
    println!(
        "output-rule-stages-us log-to-ack p50={:.0} p99={:.0} ack-to-release p50={:.0} p99={:.0} log-to-write \
         p50={:.0} p99={:.0} write-to-ack p50={:.0} p99={:.0}",
        median(|t| t.hold_log_to_ack_p50_us),
        median(|t| t.hold_log_to_ack_p99_us),
        median(|t| t.hold_ack_to_release_p50_us),
        median(|t| t.hold_ack_to_release_p99_us),
        median(|t| t.hold_log_to_write_p50_us),
        median(|t| t.hold_log_to_write_p99_us),
        median(|t| t.hold_write_to_ack_p50_us),
        median(|t| t.hold_write_to_ack_p99_us),
    );
    let mut a50: Vec<f64> = all.iter().filter_map(|t| t.ack_delay_p50_us).collect();
    let mut a99: Vec<f64> = all.iter().filter_map(|t| t.ack_delay_p99_us).collect();
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
        "requests-in-flight-at-kill total={} requests-lost={} divergent-outputs={} inconsistent-reads={} split-brain={}",
        all.iter().map(|t| t.requests_in_flight_at_kill).sum::<u64>(),
        all.iter().map(|t| t.requests_lost).sum::<u64>(),
        all.iter().map(|t| t.divergent_outputs).sum::<u64>(),
        all.iter().map(|t| t.inconsistent_reads).sum::<u64>(),
        all.iter().any(|t| t.split_brain)
    );
    Ok(!all.iter().any(Trial::failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_trial_runs_on_the_demo_seed() {
        assert_eq!(trial_seed(42, 0), 42);
        assert_ne!(trial_seed(42, 1), 42);
        assert_ne!(trial_seed(42, 1), trial_seed(42, 2));
    }

    /// A trial fails on any one of the outside's findings.
    #[test]
    fn every_finding_fails_a_trial() {
        let clean = Trial { disk_consistent: true, ..Trial::default() };
        assert!(!clean.failed());
        for failed in [
            Trial { requests_lost: 1, ..clean.clone() },
            Trial { divergent_outputs: 1, ..clean.clone() },
            Trial { inconsistent_reads: 1, ..clean.clone() },
            Trial { split_brain: true, ..clean.clone() },
            Trial { disk_consistent: false, ..clean.clone() },
            Trial { errors: vec!["x".into()], ..clean.clone() },
        ] {
            assert!(failed.failed(), "{failed:?}");
        }
    }

    /// The arbiter record must be the journal's last grant: a record that moved without a grant the storage saw
    /// is split brain evidence.
    #[test]
    fn an_arbiter_record_the_journal_never_granted_is_evidence() {
        let dir = std::env::temp_dir().join(format!("ftvm-demo-evidence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        let storage = SharedStorage {
            disk: disk.clone(),
            arbiter: dir.join("arbiter"),
            sync_writes: false,
            journal: Some(journal_path(&disk)),
        };
        storage.create_if_missing(8).unwrap();
        let target = ft::log::DiskTarget { tag: 1, sector: 1, sectors: 1 };
        storage.write(1, target, &[1u8; 512]).unwrap();
        storage.test_and_set(1, "b/1").unwrap();
        let mut out = Trial::default();
        storage_evidence(&storage, &mut out).unwrap();
        assert!(!out.split_brain, "{out:?}");
        assert_eq!((out.journal_writes, out.journal_grants), (1, 1));
        // The record moves on behind the storage's back (no journaled grant).
        let unjournaled = SharedStorage { journal: None, ..storage.clone() };
        unjournaled.test_and_set(2, "a/2").unwrap();
        let mut out = Trial::default();
        storage_evidence(&storage, &mut out).unwrap();
        assert!(out.split_brain, "{out:?}");
        assert!(out.split_brain_evidence[0].contains("epoch 3 owned by a/2"), "{out:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
