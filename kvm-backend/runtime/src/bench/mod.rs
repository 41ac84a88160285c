//! `ftvm bench`: the system measured the way the paper measures it, FT against non-FT in one run and one process
//! tree (this binary's `primary` and `backup` as child processes on localhost):
//!
//! - Table 1: each corpus workload's FT/non-FT performance and the logging bandwidth it needs;
//! - Table 2: a guest receiving a stream of frames as fast as it can, and one transmitting;
//! - the Output Rule's added latency per request, p50 and p99, and per stage;
//! - a backup held to half a CPU: the execution lag the primary's throttle keeps;
//! - failover time for kill -9 and host loss; replay speed against record speed.
//!
//! It writes `report.md` (the tables), `report.json` and three SVG plots (a latency CDF FT against non-FT,
//! execution lag over time, logging bandwidth over time) into the output directory. Figures are measured, never
//! asserted: the goals are listed with what was measured against them.

pub mod cgroup;
pub mod cpu;
mod markdown;
pub mod measure;
pub mod net;
mod plots;
pub mod redis;
pub mod reprotect;
pub mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::demo::{self, DemoOptions, FailureMode};
use crate::error::CliError;
use crate::machine::{GuestImage, MachineKind};
use crate::report::{self, ReportOptions};
use measure::{Latency, NetworkRow, SlowBackup, WorkloadRow};

/// What `ftvm bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub kvm_path: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    /// How long each loaded run (services, streams, latency) lasts, FT and non-FT each.
    pub duration: Duration,
    /// Failover trials of each kind.
    pub failover_trials: u32,
    /// Frames of the network guests' recordings for replay against record.
    pub replay_frames: u64,
    /// The backup's CPU limit in the slow-backup run (a percentage of one CPU).
    pub slow_backup_cpu_percent: u32,
    /// The throttle's lag target in the slow-backup run (the node's default if None).
    pub lag_target_ms: Option<u64>,
    /// Primary on CPU 0, backup and clients on CPU 1 (two hosts), where the machine has two CPUs or more.
    pub pin: bool,
    /// Clones of the write-heavy guest per memory size (re-protection's pause).
    pub reprotect_clones: u32,
}

/// The guest memory sizes re-protection is measured at, in MiB.
pub const REPROTECT_MEMORY_MIB: [u64; 2] = [16, 256];

/// A failover figure of one kind of failure.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Failover {
    pub mode: String,
    pub trials: usize,
    pub ms: Vec<f64>,
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    pub requests_lost: u64,
    pub divergent_outputs: u64,
    pub split_brain: bool,
}

/// Replay against record of one guest (recorded to a file, replayed from it).
#[derive(Clone, Debug, Serialize)]
pub struct ReplayRow {
    pub guest: String,
    pub record_s: f64,
    pub replay_s: f64,
    /// Replay speed over record speed (at least 1: the backup keeps up).
    pub replay_over_record_speed: f64,
    pub same_state: bool,
}

/// A goal of the issue and what was measured against it.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// Everything `ftvm bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub seed: u64,
    /// Primary on CPU 0, backup and clients on CPU 1.
    pub pinned: bool,
    pub duration_ms: u64,
    pub machine: String,
    pub table1: Vec<WorkloadRow>,
    pub table2: Vec<NetworkRow>,
    pub latency: Latency,
    /// None where no cgroup CPU controller can hold the backup back (`slow_backup_skipped` says why).
    pub slow_backup: Option<SlowBackup>,
    pub slow_backup_skipped: Option<String>,
    pub failover: Vec<Failover>,
    pub replay: Vec<ReplayRow>,
    pub reprotect: Vec<reprotect::ReprotectRow>,
    /// Table 1's redis row (`bench::redis`); `skipped` says why where it could not run.
    pub redis: redis::RedisBench,
    pub goals: Vec<Goal>,
}

fn failover(options: &BenchOptions, mode: FailureMode) -> Result<Failover, CliError> {
    let demo = DemoOptions {
        machine: MachineKind::Kvm,
        trials: options.failover_trials,
        seed: options.seed,
        kill_after_ms: (200, 600),
        mode,
        failures: 1,
        failure_timeout_ms: 150,
        clients: 4,
        in_flight: 4,
    };
    let mut out = Failover { mode: mode.name().into(), ..Failover::default() };
    for index in 0..options.failover_trials {
        let trial = demo::trial(&demo, index)?;
        out.ms.extend(trial.failover_ms);
        out.requests_lost += trial.requests_lost;
        out.divergent_outputs += trial.divergent_outputs;
        out.split_brain |= trial.split_brain;
        if trial.failed() {
            return Err(CliError::CheckFailed(format!(
                "bench: {} failover trial {} (seed {}) failed its checks: {:?}",
                mode.name(),
                index + 1,
                trial.seed,
                trial.errors
            )));
        }
    }
    let mut sorted = out.ms.clone();
    sorted.sort_by(f64::total_cmp);
    out.trials = sorted.len();
    out.min_ms = sorted.first().copied().unwrap_or(f64::NAN);
    out.median_ms = measure::percentile(&sorted, 0.5);
    out.max_ms = sorted.last().copied().unwrap_or(f64::NAN);
    Ok(out)
}

fn replay(options: &BenchOptions, guests: &[&str]) -> Result<Vec<ReplayRow>, CliError> {
    let report_options = ReportOptions {
        kvm_path: options.kvm_path.clone(),
        guests: Vec::new(),
        requests: 200,
        seed: options.seed,
        timeout: None,
        repeat: 1,
    };
    let mut rows = Vec::new();
    for guest in guests {
        let requests = if guest.starts_with("net") { options.replay_frames } else { 200 };
        let report_options = ReportOptions { requests, ..report_options.clone() };
        let log = options.out.join(format!("{guest}.ftlog"));
        let row = report::measure_guest(&report_options, guest, &log);
        let _ = std::fs::remove_file(&log);
        let row = row?;
        rows.push(ReplayRow {
            guest: guest.to_string(),
            record_s: row.record.as_secs_f64(),
            replay_s: row.replay.as_secs_f64(),
            replay_over_record_speed: 1.0 / row.replay_over_record(),
            same_state: row.hashes_match,
        });
    }
    Ok(rows)
}

type LoadedRuns = (Vec<WorkloadRow>, Vec<NetworkRow>, Latency, Option<SlowBackup>);

/// Tables 1 and 2, the latency and the slow backup: the runs on a pair (or a primary alone) under load.
fn loaded_runs(options: &BenchOptions, setup: &measure::Setup) -> Result<LoadedRuns, CliError> {
    let duration = options.duration;
    let mut table1 = Vec::new();
    for guest in ["cpu", "timer"] {
        say(&format!("Table 1: {guest}, non-FT then FT"));
        table1.push(measure::ending_guest(guest, setup)?);
    }
    for guest in ["kv", "kvq"] {
        say(&format!("Table 1: {guest} under 4 clients x 4 requests in flight, non-FT then FT"));
        table1.push(measure::service_guest(guest, setup, (4, 4), duration)?);
    }
    let mut table2 = Vec::new();
    for guest in ["netrx", "nettx"] {
        say(&format!("Table 2: {guest}, non-FT then FT"));
        table2.push(measure::network(guest, setup, duration)?);
    }
    say("the Output Rule's latency: kv, one client, one request at a time");
    let latency = measure::latency("kv", setup, duration)?;
    let slow_backup = match cgroup::unavailable() {
        Some(why) => {
            say(&format!("lag with a slow backup: not measured: {why}"));
            None
        }
        None => {
            say(&format!("lag: cpu with its backup held to {} % of a CPU", options.slow_backup_cpu_percent));
            Some(measure::slow_backup("cpu", setup, options.slow_backup_cpu_percent, options.lag_target_ms)?)
        }
    };
    Ok((table1, table2, latency, slow_backup))
}

fn say(what: &str) {
    eprintln!("ftvm bench: {what}");
}

/// Runs every measurement, writes the report files into `options.out`, and returns the figures.
pub fn run(options: &BenchOptions) -> Result<BenchReport, CliError> {
    crate::machine::check_kvm(&options.kvm_path)?;
    // The corpus must be there before anything is measured.
    for guest in ["cpu", "timer", "kv", "kvq", "netrx", "nettx", "dirty"] {
        GuestImage::resolve(guest)?;
    }
    std::fs::create_dir_all(&options.out).map_err(|error| CliError::io(options.out.display().to_string(), &error))?;
    let cpus = options.pin.then(crate::pair::two_cpus).flatten();
    let pin = cpus.is_some();
    let setup = measure::Setup { machine: MachineKind::Kvm, seed: options.seed, cpus };
    // The clients (this process's threads) go with the backup, as on a third host would be better still.
    let affinity = crate::pair::affinity().ok();
    if let Some((_, backup_cpu)) = cpus {
        crate::pair::pin_to(backup_cpu)
            .map_err(|error| CliError::io("pinning the clients to the backup's CPU", &error))?;
    }
    let measured = loaded_runs(options, &setup);
    if let Some(set) = &affinity {
        crate::pair::restore_affinity(set);
    }
    let (table1, table2, latency, slow_backup) = measured?;
    let mut failovers = Vec::new();
    for mode in [FailureMode::Kill, FailureMode::HostLoss] {
        say(&format!("failover: {} x {}", options.failover_trials, mode.name()));
        failovers.push(failover(options, mode)?);
    }
    say("replay against record");
    let replay = replay(options, &["cpu", "timer", "kv", "kvq", "netrx", "nettx"])?;
    let reprotect = REPROTECT_MEMORY_MIB
        .iter()
        .map(|memory_mib| reprotect::measure(options.seed, *memory_mib, options.reprotect_clones))
        .collect::<Result<Vec<_>, _>>()?;
    let redis = redis::measure(&options.kvm_path, options.seed, options.failover_trials)?;
    let mut report = BenchReport {
        seed: options.seed,
        pinned: pin,
        duration_ms: options.duration.as_millis() as u64,
        machine: machine_words(cpus),
        table1,
        table2,
        latency,
        slow_backup_skipped: if slow_backup.is_none() { cgroup::unavailable() } else { None },
        slow_backup,
        failover: failovers,
        replay,
        reprotect,
        redis,
        goals: Vec::new(),
    };
    report.goals = markdown::goals(&report);
    write_files(&options.out, &report)?;
    Ok(report)
}

/// The host, as the report states it: CPUs and kernel.
fn machine_words(cpus: Option<(usize, usize)>) -> String {
    let count = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let placement = match cpus {
        Some((primary, backup)) => format!(
            "primary pinned to CPU {primary}, backup and clients to CPU {backup}, over loopback (two hosts, as far \
             as one machine goes)"
        ),
        None => "primary, backup and clients sharing every CPU, over loopback".to_string(),
    };
    format!("{count} CPUs, Linux {}; {placement}", kernel.trim())
}

fn write_files(out: &Path, report: &BenchReport) -> Result<(), CliError> {
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|error| CliError::io(path.display().to_string(), &error))
    };
    write("report.md", markdown::render(report))?;
    let json = serde_json::to_string_pretty(report).map_err(|error| CliError::Protocol(error.to_string()))?;
    write("report.json", json + "\n")?;
    write("latency-cdf.svg", plots::latency_cdf(&report.latency)?)?;
    write("lag.svg", plots::lag(report)?)?;
    write("bandwidth.svg", plots::bandwidth(report)?)?;
    Ok(())
}
