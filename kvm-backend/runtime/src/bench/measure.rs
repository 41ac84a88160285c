//! The measurements of `ftvm bench`, each FT against non-FT in the same run: guests that end (run time), the
//! key-value services and the network guests under load (throughput), the Output Rule's latency per request,
//! a backup held to half a CPU (lag), failover, and replay against record.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::net::{self, StreamResult};
use super::run::{guest_run_ms, CpuUse, Run, RunSpec, Sample};
use crate::error::CliError;
pub use crate::figures::percentile;
use crate::load::Load;
use crate::machine::MachineKind;

/// A Table 1 row: a corpus workload under FT against non-FT.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadRow {
    pub guest: String,
    /// What `ft` and `plain` are: "run s" (lower is better) or "requests/s" (higher is better).
    pub measure: String,
    pub ft: f64,
    pub plain: f64,
    /// FT performance over non-FT performance (1 = FT costs nothing).
    pub ratio: f64,
    /// Logging channel, primary to backup, over the FT run.
    pub log_mbit_per_s: f64,
    /// Where the CPU went, non-FT and FT.
    pub cpu_plain: CpuUse,
    pub cpu_ft: CpuUse,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// A Table 2 row: a network stream under FT against non-FT.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkRow {
    pub direction: String,
    pub guest: String,
    pub ft: StreamResult,
    pub plain: StreamResult,
    pub ft_mbit_per_s: f64,
    pub plain_mbit_per_s: f64,
    pub ratio: f64,
    pub log_mbit_per_s: f64,
    pub cpu_plain: CpuUse,
    pub cpu_ft: CpuUse,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// The Output Rule's cost per request: one client, one request at a time, FT against non-FT.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub guest: String,
    pub requests_ft: usize,
    pub requests_plain: usize,
    pub ft_p50_us: f64,
    pub ft_p99_us: f64,
    pub plain_p50_us: f64,
    pub plain_p99_us: f64,
    pub added_p50_us: f64,
    pub added_p99_us: f64,
    /// The primary's hold per output and its stages, and the backup's receipt-to-ack (from their status).
    pub stages_us: Vec<(String, f64, f64)>,
    /// A TCP round trip over loopback between the primary's CPU and the backup's, p50 and p99: the floor of a
    /// hold on this machine.
    pub tcp_round_trip_us: (f64, f64),
    #[serde(skip)]
    pub ft_us: Vec<f64>,
    #[serde(skip)]
    pub plain_us: Vec<f64>,
}

/// The CPU-bound guest with its backup held to half a CPU: the lag the throttle keeps.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SlowBackup {
    pub guest: String,
    pub backup_cpu_percent: u32,
    pub run_ms: f64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    pub cpu_share_min_percent: f64,
    pub flow_control_stalls: u64,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// Where the runs happen: the machine, the seed, and the CPUs of the primary and the backup if they are pinned.
#[derive(Clone, Debug)]
pub struct Setup {
    pub machine: MachineKind,
    pub seed: u64,
    pub cpus: Option<(usize, usize)>,
}

fn spec(guest: &str, ft: bool, setup: &Setup) -> RunSpec {
    RunSpec {
        guest: guest.into(),
        ft,
        seed: setup.seed,
        machine: setup.machine.clone(),
        backup_cpu_percent: None,
        lag_target_ms: None,
        cpus: setup.cpus,
    }
}

/// Log bytes per second between the first and the last sample, in Mbit/s.
fn sampled_mbit_per_s(samples: &[Sample]) -> f64 {
    match (samples.first(), samples.last()) {
        (Some(first), Some(last)) if last.at_ms > first.at_ms => {
            last.channel_bytes_sent.saturating_sub(first.channel_bytes_sent) as f64 * 8.0
                / 1e3
                / (last.at_ms - first.at_ms)
        }
        _ => 0.0,
    }
}

/// A guest that powers off by itself (cpu, timer): its run time, FT and non-FT.
pub fn ending_guest(guest: &str, setup: &Setup) -> Result<WorkloadRow, CliError> {
    let mut plain_run = Run::start(&spec(guest, false, setup))?;
    let plain_status = plain_run.wait_finished()?;
    let cpu_plain = CpuUse::of(&plain_run.samples());
    drop(plain_run);
    let mut ft_run = Run::start(&spec(guest, true, setup))?;
    let ft_status = ft_run.wait_finished()?;
    let samples = ft_run.samples();
    let missing = |what: &str| CliError::Protocol(format!("bench: {guest} ({what}) did not report its run time"));
    let plain_ms = guest_run_ms(&plain_status).ok_or_else(|| missing("non-FT"))?;
    let ft_ms = guest_run_ms(&ft_status).ok_or_else(|| missing("FT"))?;
    let bytes = ft_status["channel_bytes_sent"].as_f64().unwrap_or(0.0);
    Ok(WorkloadRow {
        guest: guest.into(),
        measure: "run s".into(),
        ft: ft_ms / 1e3,
        plain: plain_ms / 1e3,
        ratio: plain_ms / ft_ms,
        log_mbit_per_s: bytes * 8.0 / 1e3 / ft_ms,
        cpu_plain,
        cpu_ft: CpuUse::of(&samples),
        samples,
    })
}

/// Requests per second of a key-value guest under `clients` x `depth` requests in flight for `duration`, and the
/// latency of each request (µs); with the primary's samples and its last status.
fn load_run(
    run: &mut Run,
    clients: u32,
    depth: u32,
    seed: u64,
    duration: Duration,
) -> Result<(f64, Vec<f64>, Vec<Sample>), CliError> {
    let start = Instant::now();
    let load = Load::start(run.service()?, clients, depth, seed, start)?;
    std::thread::sleep(duration);
    let answered = load.answered();
    let elapsed = start.elapsed();
    let samples = run.samples();
    let end_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    let mut latencies = Vec::new();
    for client in load.stop()? {
        let answered_in_time = client.latencies.iter().filter(|(_, received)| *received < end_ns);
        latencies.extend(answered_in_time.map(|(sent, received)| received.saturating_sub(*sent) as f64 / 1e3));
    }
    Ok((answered as f64 / elapsed.as_secs_f64(), latencies, samples))
}

/// A key-value guest (kv, kvq) under a closed-loop load: requests per second, FT against non-FT.
pub fn service_guest(
    guest: &str,
    setup: &Setup,
    load: (u32, u32),
    duration: Duration,
) -> Result<WorkloadRow, CliError> {
    let ((clients, depth), seed) = (load, setup.seed);
    let (plain_rps, _, plain_samples) =
        load_run(&mut Run::start(&spec(guest, false, setup))?, clients, depth, seed, duration)?;
    let mut ft_run = Run::start(&spec(guest, true, setup))?;
    let (ft_rps, _, samples) = load_run(&mut ft_run, clients, depth, seed, duration)?;
    Ok(WorkloadRow {
        guest: guest.into(),
        measure: "requests/s".into(),
        ft: ft_rps,
        plain: plain_rps,
        ratio: ft_rps / plain_rps.max(1e-9),
        log_mbit_per_s: sampled_mbit_per_s(&samples),
        cpu_plain: CpuUse::of(&plain_samples),
        cpu_ft: CpuUse::of(&samples),
        samples,
    })
}

/// A network stream (netrx: receive, nettx: transmit) for `duration`, FT against non-FT.
pub fn network(guest: &str, setup: &Setup, duration: Duration) -> Result<NetworkRow, CliError> {
    let stream = |run: &Run| match guest {
        "netrx" => net::receive_stream(run.service()?, duration),
        _ => net::transmit_stream(run.service()?, duration),
    };
    let mut plain_run = Run::start(&spec(guest, false, setup))?;
    let plain = stream(&plain_run)?;
    let cpu_plain = CpuUse::of(&plain_run.samples());
    let mut ft_run = Run::start(&spec(guest, true, setup))?;
    let ft = stream(&ft_run)?;
    let samples = ft_run.samples();
    Ok(NetworkRow {
        direction: if guest == "netrx" { "receive" } else { "transmit" }.into(),
        guest: guest.into(),
        ft_mbit_per_s: ft.mbit_per_s(),
        plain_mbit_per_s: plain.mbit_per_s(),
        ratio: ft.mbit_per_s() / plain.mbit_per_s().max(1e-9),
        log_mbit_per_s: sampled_mbit_per_s(&samples),
        ft,
        plain,
        cpu_plain,
        cpu_ft: CpuUse::of(&samples),
        samples,
    })
}

/// The figures of the Output Rule's hold from the nodes' status: (stage, p50, p99) in µs.
fn stages(primary: &serde_json::Value, backup: &serde_json::Value) -> Vec<(String, f64, f64)> {
    let pair = |status: &serde_json::Value, key: &str| {
        let value = |p: &str| status[format!("{key}_{p}_us")].as_f64().unwrap_or(f64::NAN);
        (value("p50"), value("p99"))
    };
    [
        ("hold (log to release)", pair(primary, "output_hold")),
        ("log to write (primary's queue)", pair(primary, "hold_log_to_write")),
        ("write to ack (network + backup)", pair(primary, "hold_write_to_ack")),
        ("  of which the backup's receipt to ack", pair(backup, "ack_delay")),
        ("ack to release (primary)", pair(primary, "hold_ack_to_release")),
    ]
    .into_iter()
    .map(|(stage, (p50, p99))| (stage.to_string(), p50, p99))
    .collect()
}

/// One client with one request at a time against `guest`: what FT adds to each request.
pub fn latency(guest: &str, setup: &Setup, duration: Duration) -> Result<Latency, CliError> {
    let seed = setup.seed;
    let (_, plain_us, _) = load_run(&mut Run::start(&spec(guest, false, setup))?, 1, 1, seed, duration)?;
    let mut ft_run = Run::start(&spec(guest, true, setup))?;
    let (_, ft_us, _) = load_run(&mut ft_run, 1, 1, seed, duration)?;
    let primary = ft_run.primary_status().unwrap_or_default();
    let backup = ft_run.backup_status().unwrap_or_default();
    let (ft_p50_us, ft_p99_us) = (percentile(&ft_us, 0.5), percentile(&ft_us, 0.99));
    let (plain_p50_us, plain_p99_us) = (percentile(&plain_us, 0.5), percentile(&plain_us, 0.99));
    Ok(Latency {
        guest: guest.into(),
        requests_ft: ft_us.len(),
        requests_plain: plain_us.len(),
        ft_p50_us,
        ft_p99_us,
        plain_p50_us,
        plain_p99_us,
        added_p50_us: ft_p50_us - plain_p50_us,
        added_p99_us: ft_p99_us - plain_p99_us,
        stages_us: stages(&primary, &backup),
        tcp_round_trip_us: net::tcp_round_trip_us(2_000, setup.cpus)?,
        ft_us,
        plain_us,
    })
}

/// The CPU-bound guest with its backup held to `backup_cpu_percent` of one CPU: the lag the primary's throttle
/// keeps, and whether flow control's buffer bound was ever reached.
pub fn slow_backup(
    guest: &str,
    setup: &Setup,
    backup_cpu_percent: u32,
    lag_target_ms: Option<u64>,
) -> Result<SlowBackup, CliError> {
    let spec = RunSpec { backup_cpu_percent: Some(backup_cpu_percent), lag_target_ms, ..spec(guest, true, setup) };
    let mut run = Run::start(&spec)?;
    let status = run.wait_finished()?;
    let samples = run.samples();
    let lags: Vec<f64> = samples.iter().map(|sample| sample.execution_lag_ms).collect();
    Ok(SlowBackup {
        guest: guest.into(),
        backup_cpu_percent,
        run_ms: guest_run_ms(&status).unwrap_or(f64::NAN),
        lag_p50_ms: percentile(&lags, 0.5),
        lag_p99_ms: percentile(&lags, 0.99),
        lag_max_ms: lags.iter().copied().fold(0.0, f64::max),
        cpu_share_min_percent: samples.iter().map(|sample| sample.cpu_share_percent).fold(100.0, f64::min),
        flow_control_stalls: status["flow_control_stalls"].as_u64().unwrap_or(0),
        samples,
    })
}
