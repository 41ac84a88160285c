//! `ftvm demo --guest redis`: the paper's promise with a real client. The `redis` guest (smoltcp, RESP) runs as
//! a pair in two network namespaces standing for two hosts ([`crate::netlab`]), each node's TAP on its host's
//! bridge while it is live; `redis-benchmark` runs in a third namespace with many connections and pipelining,
//! beside the demo's own writer ([`super::resp_client`]). In the middle the primary is killed (kill -9) or its
//! host is lost (its link cut and the process frozen). The backup goes live, attaches its TAP, announces the
//! guest with a gratuitous ARP, and the clients' TCP connections carry on.
//!
//! Then the outside is believed, not the nodes: `redis-benchmark` must finish every request without an error,
//! the client namespace's TCP counters must show no connection reset, every SET the writer saw acknowledged must
//! read back through `redis-cli`, and the shared storage's journal must show no split brain.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::redis_pair::{spawn_redis_cli, RedisPair, PORT};
use super::resp_client::{write_until, WriterReport};
use super::{storage_evidence, FailureMode, Trial};
use crate::error::CliError;
use crate::ethernet::GUEST_IP_DEFAULT;
use crate::netlab::{Host, Lab};
use crate::pair::wait_for;
use crate::storage::SharedStorage;

const BENCHMARK_DEADLINE: Duration = Duration::from_secs(300);
/// The demo's writer: connections, SETs in flight on each, and the pause between its batches (it is a witness,
/// not the load).
const WRITER_CONNECTIONS: u32 = 4;
const WRITER_PIPELINE: usize = 4;
const WRITER_PAUSE: Duration = Duration::from_millis(20);
/// Parallel `redis-cli` processes reading the writer's keys back, and how long they may take.
const READERS: usize = 8;
const READ_BACK_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub seed: u64,
    pub mode: FailureMode,
    /// redis-benchmark's connections (`-c`), pipelining (`-P`) and requests (`-n`).
    pub connections: u32,
    pub pipeline: u32,
    pub requests: u64,
    /// Fail the primary this long after the load starts.
    pub kill_after_ms: u64,
    pub failure_timeout_ms: u64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            seed: 1,
            mode: FailureMode::Kill,
            connections: 50,
            pipeline: 16,
            requests: 200_000,
            kill_after_ms: 2_000,
            failure_timeout_ms: 300,
        }
    }
}

/// One line of redis-benchmark's CSV.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BenchmarkLine {
    pub test: String,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisReport {
    pub client: String,
    pub mode: String,
    pub seed: u64,
    /// Requests answered: redis-benchmark's (all of them, if it finished) and the writer's acknowledged SETs.
    pub requests_ok: u64,
    /// Acknowledged SETs that did not read back.
    pub requests_lost: u64,
    /// Established connections reset (the client namespace's `EstabResets`), and failed writer connections.
    pub tcp_connections_reset: u64,
    /// Connections the client namespace opened beyond those the clients open once each.
    pub tcp_connections_opened: u64,
    pub failovers: u32,
    /// The longest silence between two replies on one of the writer's connections.
    pub failover_ms: Option<f64>,
    pub split_brain: bool,
    /// Host loss: the lost host froze holding the storage's fence lock, and the failover waited for its storage
    /// lease to expire (its process killed).
    pub storage_lease_expired: bool,
    pub benchmark: Vec<BenchmarkLine>,
    pub benchmark_exit_ok: bool,
    pub writer_sets_acknowledged: u64,
    pub writer_sets_unanswered: u64,
    pub errors: Vec<String>,
    #[serde(skip)]
    pub timeline: Vec<(f64, String)>,
}

impl RedisReport {
    pub fn passed(&self) -> bool {
        self.errors.is_empty()
            && self.requests_lost == 0
            && self.tcp_connections_reset == 0
            && !self.split_brain
            && self.failovers == 1
            && self.benchmark_exit_ok
    }
}

/// Why the demo cannot run here (root, namespaces, TAP, KVM, redis-tools), if it cannot.
pub fn missing_prerequisite(kvm_path: &Path) -> Option<String> {
    if let Some(reason) = crate::netlab::missing_prerequisite() {
        return Some(reason);
    }
    if let Err(error) = std::fs::OpenOptions::new().read(true).write(true).open(kvm_path) {
        return Some(format!("the redis guest runs on KVM, and {} cannot be opened: {error}", kvm_path.display()));
    }
    for tool in ["redis-benchmark", "redis-cli"] {
        if std::process::Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is not installed (Debian: apt-get install redis-tools)"));
        }
    }
    None
}

/// The client namespace's TCP counters (`/proc/net/snmp`), by name.
fn tcp_counters(lab: &Lab) -> Result<std::collections::BTreeMap<String, u64>, CliError> {
    let output = lab
        .command(Host::Client, "cat")
        .arg("/proc/net/snmp")
        .output()
        .map_err(|error| CliError::io("the client namespace's /proc/net/snmp", &error))?;
    Ok(parse_snmp_tcp(&String::from_utf8_lossy(&output.stdout)))
}

/// The `Tcp:` counters of /proc/net/snmp: a line of names, then a line of values.
pub fn parse_snmp_tcp(text: &str) -> std::collections::BTreeMap<String, u64> {
    let lines: Vec<&str> = text.lines().filter(|line| line.starts_with("Tcp:")).collect();
    let mut counters = std::collections::BTreeMap::new();
    if let [names, values] = lines.as_slice() {
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()).skip(1) {
            if let Ok(value) = value.parse::<i64>() {
                counters.insert(name.to_string(), value.max(0) as u64);
            }
        }
    }
    counters
}

/// The lines of redis-benchmark's `--csv` output.
pub fn parse_benchmark_csv(text: &str) -> Vec<BenchmarkLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(|field| field.trim_matches('"')).collect();
            let number = |index: usize| fields.get(index).and_then(|field| field.parse::<f64>().ok());
            Some(BenchmarkLine {
                test: fields.first()?.to_string(),
                requests_per_s: number(1)?,
                p50_ms: number(4)?,
                p99_ms: number(6)?,
                max_ms: number(7)?,
            })
        })
        .collect()
}

/// Reads the writer's keys back with `redis-cli`, several processes at once; returns the keys that did not
/// read back as written.
fn read_back(lab: &Lab, acknowledged: &[(String, String)]) -> Result<Vec<String>, CliError> {
    let chunk = acknowledged.len().div_ceil(READERS).max(1);
    let mut readers = Vec::new();
    for slice in acknowledged.chunks(chunk) {
        let commands: String = slice.iter().map(|(key, _)| format!("GET {key}\n")).collect();
        let (child, feeder) = spawn_redis_cli(lab, commands)?;
        readers.push((slice, child, feeder));
    }
    let mut lost = Vec::new();
    let deadline = Instant::now() + READ_BACK_DEADLINE;
    // Each reader's output is drained on a thread of its own (a full pipe would stop redis-cli); a guest that does
    // not answer must not hang the demo: readers still running at the deadline are killed (by pid), and what
    // they did not read counts as lost.
    let readers: Vec<_> = readers
        .into_iter()
        .map(|(slice, child, feeder)| {
            let pid = child.id();
            (slice, pid, std::thread::spawn(move || child.wait_with_output()), feeder)
        })
        .collect();
    for (slice, pid, waiter, feeder) in readers {
        if !wait_for(deadline.saturating_duration_since(Instant::now()), || waiter.is_finished()) {
            // SAFETY: kill(2) of a child of ours that its waiter thread has not reaped (it is still running).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let output = match waiter.join() {
            Ok(output) => output.map_err(|error| CliError::io("redis-cli", &error))?,
            Err(_) => return Err(CliError::Io { what: "redis-cli".into(), reason: "its waiter panicked".into() }),
        };
        let _ = feeder.join();
        let text = String::from_utf8_lossy(&output.stdout);
        let mut values = text.lines();
        for (key, value) in slice {
            if values.next() != Some(value.as_str()) {
                lost.push(key.clone());
            }
        }
    }
    Ok(lost)
}

pub fn run(options: &RedisOptions, kvm_path: &Path) -> Result<RedisReport, CliError> {
    if let Some(reason) = missing_prerequisite(kvm_path) {
        return Err(CliError::Usage(format!("ftvm demo --guest redis cannot run here: {reason}")));
    }
    let mut report = RedisReport {
        client: "redis-benchmark".into(),
        mode: options.mode.name().into(),
        seed: options.seed,
        ..Default::default()
    };
    let start = Instant::now();
    let at = |instant: Instant| (instant - start).as_secs_f64() * 1e3;
    let mut pair = RedisPair::start(options.seed, options.failure_timeout_ms, true)?;
    report.timeline.push((at(Instant::now()), "a is primary, protected by b; the guest answers PING".into()));
    let (lab, scratch) = (&pair.lab, &mut pair.scratch);

    let before = tcp_counters(lab)?;
    let stop = Arc::new(AtomicBool::new(false));
    // Whatever way this function leaves, the writers stop.
    let _stop_writers = StopOnDrop(stop.clone());
    let server = SocketAddr::V4(SocketAddrV4::new(GUEST_IP_DEFAULT, PORT));
    let mut writers = Vec::new();
    for connection in 0..WRITER_CONNECTIONS {
        let stop = stop.clone();
        let seed = options.seed;
        writers.push(lab.spawn_in(Host::Client, move || {
            write_until(server, connection, WRITER_PIPELINE, seed, stop, WRITER_PAUSE)
        })?);
    }
    let benchmark_out = scratch.dir.join("redis-benchmark.csv");
    let benchmark_err = scratch.dir.join("redis-benchmark.err");
    let file =
        |path: &Path| std::fs::File::create(path).map_err(|error| CliError::io(path.display().to_string(), &error));
    let mut benchmark = ChildGuard(
        lab.command(Host::Client, "redis-benchmark")
            .args(["-h", &GUEST_IP_DEFAULT.to_string(), "-p", &PORT.to_string()])
            .args(["-c", &options.connections.to_string(), "-P", &options.pipeline.to_string()])
            .args(["-n", &options.requests.to_string(), "-r", "10000", "-t", "set,get", "--csv"])
            .stdin(Stdio::null())
            .stdout(file(&benchmark_out)?)
            .stderr(file(&benchmark_err)?)
            .spawn()
            .map_err(|error| CliError::io("redis-benchmark", &error))?,
    );
    let load_start = Instant::now();
    report.timeline.push((
        at(load_start),
        format!(
            "load: redis-benchmark -c {} -P {} -n {} -t set,get, and {WRITER_CONNECTIONS} writer connections",
            options.connections, options.pipeline, options.requests
        ),
    ));
    std::thread::sleep(Duration::from_millis(options.kill_after_ms));
    // The failover must come under load, and must be the first: a benchmark already finished would leave only the
    // writer's connections to judge, and a backup already live would be a failover nobody asked for.
    if !matches!(benchmark.0.try_wait(), Ok(None)) {
        report.errors.push("redis-benchmark finished before the primary failed: no failover under load".into());
    }
    if std::fs::read_to_string(scratch.dir.join("arbiter")).is_ok_and(|record| !record.contains("epoch=1\n")) {
        report.errors.push("the arbiter moved past epoch 1 before the primary failed: a false failover".into());
    }
    let failed_at = Instant::now();
    match options.mode {
        FailureMode::Kill => {
            scratch.signal("a", libc::SIGKILL);
            report.timeline.push((at(failed_at), "KILL -9 of the primary a".into()));
        }
        FailureMode::HostLoss => {
            lab.cut(Host::A)?;
            scratch.signal("a", libc::SIGSTOP);
            report.timeline.push((at(failed_at), "HOST LOSS: a's link cut, a frozen (SIGSTOP)".into()));
        }
    }
    let arbiter = scratch.dir.join("arbiter");
    let b_log = scratch.dir.join("b.log");
    let mut frozen = options.mode == FailureMode::HostLoss;
    let live = wait_for(Duration::from_secs(30), || {
        if frozen && super::arbiter_blocked(&b_log) {
            // The lost host froze inside a disk write, holding the shared fence lock: no grant is safe while that
            // write may still land. Shared storage revokes a lost host's locks when its lease runs out; here its
            // process dies, which releases them as the expiry would (as in the kvq demo).
            scratch.kill("a");
            frozen = false;
            report.storage_lease_expired = true;
            report.timeline.push((
                at(Instant::now()),
                "a froze holding the storage's fence lock, so b's test-and-set waits: a's storage lease expires, a is \
                 killed and its locks are released"
                    .into(),
            ));
        }
        std::fs::read_to_string(&arbiter).is_ok_and(|record| record.contains("owner=b/"))
    });
    if live {
        report.failovers = 1;
        report.timeline.push((at(Instant::now()), "b won the arbiter's test-and-set: b is live".into()));
    } else {
        report.errors.push("b never won the arbiter".into());
    }
    let finished = wait_for(BENCHMARK_DEADLINE, || matches!(benchmark.0.try_wait(), Ok(Some(_))));
    if !finished {
        let _ = benchmark.0.kill();
        report.errors.push(format!("redis-benchmark did not finish within {BENCHMARK_DEADLINE:?}"));
    }
    let status = benchmark.0.wait().map_err(|error| CliError::io("redis-benchmark", &error))?;
    report.benchmark_exit_ok = status.success();
    report.timeline.push((at(Instant::now()), format!("redis-benchmark finished: {status}")));
    stop.store(true, Ordering::Relaxed);
    let mut writer = WriterReport::default();
    for handle in writers {
        match handle.join() {
            Ok(Ok(one)) => writer.merge(one),
            Ok(Err(reason)) => report.errors.push(reason),
            Err(_) => report.errors.push("a writer thread panicked".into()),
        }
    }
    let after = tcp_counters(lab)?;
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0).saturating_sub(before.get(name).copied().unwrap_or(0));
    report.benchmark = parse_benchmark_csv(&std::fs::read_to_string(&benchmark_out).unwrap_or_default());
    let benchmark_errors = std::fs::read_to_string(&benchmark_err).unwrap_or_default();
    for line in benchmark_errors.lines().filter(|line| line.contains("Error") || line.contains("rror:")) {
        report.errors.push(format!("redis-benchmark: {line}"));
    }
    if report.benchmark.len() != 2 {
        report.errors.push(format!("redis-benchmark reported {} tests, not SET and GET", report.benchmark.len()));
    }
    // A reset the writer saw is one `EstabResets` counted too (or, refused at connect, not at all).
    report.tcp_connections_reset = delta("EstabResets").max(writer.connections_reset);
    // Each test of redis-benchmark opens its connections once, plus one to ask for the CONFIG.
    let expected_opens = u64::from(options.connections) * 2 + 1 + u64::from(WRITER_CONNECTIONS);
    report.tcp_connections_opened = delta("ActiveOpens");
    if report.tcp_connections_opened > expected_opens {
        report.errors.push(format!(
            "the clients opened {} connections, more than the {expected_opens} they open once each: a reconnect",
            report.tcp_connections_opened
        ));
    }
    report.errors.extend(writer.errors.iter().cloned());
    report.writer_sets_acknowledged = writer.acknowledged.len() as u64;
    report.writer_sets_unanswered = writer.unanswered;
    report.failover_ms = Some(writer.longest_gap_ms);
    let lost = read_back(lab, &writer.acknowledged)?;
    report.requests_lost = lost.len() as u64;
    if let Some(first) = lost.first() {
        report.errors.push(format!("{} acknowledged SETs did not read back (first: {first})", lost.len()));
    }
    let benchmark_done = if report.benchmark_exit_ok { options.requests * report.benchmark.len() as u64 } else { 0 };
    report.requests_ok = benchmark_done + report.writer_sets_acknowledged - report.requests_lost;
    report.timeline.push((
        at(Instant::now()),
        format!(
            "checked: {} writer SETs read back through redis-cli, {} lost",
            report.writer_sets_acknowledged, report.requests_lost
        ),
    ));
    // Stop the nodes before reading the storage's journal.
    scratch.kill("b");
    scratch.kill("a");
    let storage = SharedStorage {
        disk: scratch.dir.join("disk.img"),
        arbiter: scratch.dir.join("arbiter"),
        sync_writes: false,
        journal: None,
    };
    let mut trial = Trial::default();
    storage_evidence(&storage, &mut trial)?;
    report.split_brain = trial.split_brain;
    report.errors.extend(trial.split_brain_evidence);
    report.errors.extend(trial.errors);
    report.timeline.extend(trial.timeline.into_iter().map(|(_, line)| (at(Instant::now()), line)));
    drop(pair);
    Ok(report)
}

/// A child killed and reaped when the demo leaves early (an error after it started).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Tells the writer threads to stop when the demo leaves, however it leaves.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What a series of trials shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisSummary {
    pub trials: usize,
    pub passed: usize,
    pub trials_with_a_reset: usize,
    pub requests_lost: u64,
    pub failover_ms_min: f64,
    pub failover_ms_median: f64,
    pub failover_ms_max: f64,
}

impl RedisSummary {
    pub fn line(&self) -> String {
        format!(
            "{} of {} trials passed; connections reset in {} of {}; {} requests lost; longest reply gap (failover as \
             the client sees it) min {:.1} / median {:.1} / max {:.1} ms",
            self.passed,
            self.trials,
            self.trials_with_a_reset,
            self.trials,
            self.requests_lost,
            self.failover_ms_min,
            self.failover_ms_median,
            self.failover_ms_max
        )
    }
}

pub fn summary(reports: &[RedisReport]) -> RedisSummary {
    let mut gaps: Vec<f64> = reports.iter().filter_map(|report| report.failover_ms).collect();
    gaps.sort_by(f64::total_cmp);
    RedisSummary {
        trials: reports.len(),
        passed: reports.iter().filter(|report| report.passed()).count(),
        trials_with_a_reset: reports.iter().filter(|report| report.tcp_connections_reset > 0).count(),
        requests_lost: reports.iter().map(|report| report.requests_lost).sum(),
        failover_ms_min: gaps.first().copied().unwrap_or(f64::NAN),
        failover_ms_median: crate::figures::percentile(&gaps, 0.5),
        failover_ms_max: gaps.last().copied().unwrap_or(f64::NAN),
    }
}

/// The demo's human output.
pub fn print(report: &RedisReport) {
    for (ms, line) in &report.timeline {
        println!("{ms:>9.1} ms  {line}");
    }
    for line in &report.benchmark {
        println!(
            "redis-benchmark {}: {:.0} requests/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            line.test, line.requests_per_s, line.p50_ms, line.p99_ms, line.max_ms
        );
    }
    println!(
        "requests ok {}, lost {}, TCP connections reset {}, opened {}, failovers {}, longest gap {:.1} ms, split \
         brain {}",
        report.requests_ok,
        report.requests_lost,
        report.tcp_connections_reset,
        report.tcp_connections_opened,
        report.failovers,
        report.failover_ms.unwrap_or(f64::NAN),
        if report.split_brain { "YES" } else { "no" }
    );
    for error in &report.errors {
        println!("ERROR: {error}");
    }
    println!("{}", if report.passed() { "PASSED" } else { "FAILED" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_and_snmp_counters_parse() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\
                   \"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"31012.56\",\"25.169\",\"9.056\",\"22.287\",\
                   \"39.711\",\"50.847\",\"58.847\"\n";
        let lines = parse_benchmark_csv(csv);
        assert_eq!(lines.len(), 1, "the header is not a line");
        assert_eq!((lines[0].test.as_str(), lines[0].requests_per_s, lines[0].p99_ms), ("SET", 31012.56, 50.847));
        let snmp = "Tcp: RtoAlgorithm ActiveOpens EstabResets\nTcp: 1 51 2\nUdp: InDatagrams\nUdp: 3\n";
        let counters = parse_snmp_tcp(snmp);
        assert_eq!(counters.get("ActiveOpens"), Some(&51));
        assert_eq!(counters.get("EstabResets"), Some(&2));
    }
}
