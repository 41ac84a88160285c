//! One benchmark run: a guest on a localhost pair (FT) or on a primary alone (non-FT), as child processes, with
//! the primary's status sampled over time (execution lag, log bytes, CPU share) for the plots.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu::{self, ThreadCpu};
use crate::error::CliError;
use crate::machine::MachineKind;
use crate::pair::{localhost_pair, log_tail, status_json, wait_for, write_config, PairConfigs, Scratch};

/// How often the sampler reads the primary's status.
const SAMPLE_PERIOD: Duration = Duration::from_millis(20);
/// Failure timeout of the benchmark pairs: long enough that a loaded 2-core machine never fails a node over.
const FAILURE_TIMEOUT_MS: u64 = 2_000;
/// How long a pair gets to come up, and a guest that ends to finish.
const START_DEADLINE: Duration = Duration::from_secs(20);
const FINISH_DEADLINE: Duration = Duration::from_secs(120);

/// One reading of the primary's status.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Since the run started.
    pub at_ms: f64,
    pub execution_lag_ms: f64,
    pub channel_bytes_sent: u64,
    pub cpu_share_percent: f64,
    /// CPU time so far of the primary's and the backup's threads (None: not running, or gone).
    pub primary_cpu: Option<ThreadCpu>,
    pub backup_cpu: Option<ThreadCpu>,
}

/// Reads the status of `addr` every `SAMPLE_PERIOD` on a thread of its own until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(addr: Option<SocketAddr>, pids: (u32, Option<u32>), t0: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let (mut primary, mut backup) = (cpu::ProcessCpu::new(pids.0), pids.1.map(cpu::ProcessCpu::new));
            while !stopping.load(Ordering::Relaxed) {
                if let Some(status) = status_json(addr) {
                    let (primary_cpu, backup_cpu) = (primary.read(), backup.as_mut().and_then(cpu::ProcessCpu::read));
                    samples.push(Sample {
                        primary_cpu,
                        backup_cpu,
                        at_ms: t0.elapsed().as_secs_f64() * 1e3,
                        execution_lag_ms: status["execution_lag_ms"].as_f64().unwrap_or(0.0),
                        channel_bytes_sent: status["channel_bytes_sent"].as_u64().unwrap_or(0),
                        cpu_share_percent: status["cpu_share_percent"].as_f64().unwrap_or(100.0),
                    });
                }
                std::thread::sleep(SAMPLE_PERIOD);
            }
            samples
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// How the pair of a run is set up.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub guest: String,
    /// With a backup (FT) or a primary alone (non-FT: outputs released at once).
    pub ft: bool,
    pub seed: u64,
    pub machine: MachineKind,
    /// Hold the backup to this share of one CPU (a cgroup), to make it slower than the primary.
    pub backup_cpu_percent: Option<u32>,
    /// The throttle's lag target, if not the default.
    pub lag_target_ms: Option<u64>,
    /// The primary's CPU and the backup's, as two hosts (the clients run on the backup's too); None: shared.
    pub cpus: Option<(usize, usize)>,
}

/// A run in progress.
pub struct Run {
    scratch: Scratch,
    configs: PairConfigs,
    ft: bool,
    t0: Instant,
    sampler: Option<Sampler>,
    _cgroup: Option<super::cgroup::CpuLimit>,
}

impl Run {
    /// Starts the nodes and waits until the primary serves (protected by its backup, for FT).
    pub fn start(spec: &RunSpec) -> Result<Run, CliError> {
        let mut scratch = Scratch::new("bench")?;
        let mut configs = localhost_pair(&scratch.dir, spec.seed, FAILURE_TIMEOUT_MS, &spec.machine)?;
        for (config, name) in [(&mut configs.a, "a"), (&mut configs.b, "b")] {
            config.guest = Some(spec.guest.clone());
            config.write_journal = Some(false);
            config.lag_target_ms = spec.lag_target_ms;
            config.status_file = Some(scratch.dir.join(format!("{name}-status.json")));
        }
        if !spec.ft {
            // Alone: the primary gives up on a backup at once and runs unprotected.
            configs.a.startup_timeout_ms = Some(100);
        }
        let mut cgroup = None;
        let mut backup_pid = None;
        if spec.ft {
            let b_path = write_config(&scratch.dir, "b", &configs.b)?;
            let pid = scratch.spawn_on("b", "backup", &b_path, spec.cpus.map(|cpus| cpus.1))?;
            backup_pid = Some(pid);
            if let Some(percent) = spec.backup_cpu_percent {
                cgroup = Some(super::cgroup::CpuLimit::apply(pid, percent)?);
            }
        }
        let a_path = write_config(&scratch.dir, "a", &configs.a)?;
        let primary_pid = scratch.spawn_on("a", "primary", &a_path, spec.cpus.map(|cpus| cpus.0))?;
        let t0 = Instant::now();
        let sampler = Some(Sampler::start(configs.a.status, (primary_pid, backup_pid), t0));
        let mut run = Run { scratch, configs, ft: spec.ft, t0, sampler, _cgroup: cgroup };
        run.wait_up(&spec.guest)?;
        Ok(run)
    }

    fn wait_up(&mut self, guest: &str) -> Result<(), CliError> {
        let (status, ft) = (self.configs.a.status, self.ft);
        let mut ended = false;
        let up = wait_for(START_DEADLINE, || {
            // A guest that ends (cpu, timer) may be done before a look finds it serving.
            ended = self.scratch.wait_exit("a", Duration::ZERO).is_some();
            ended
                || status_json(status).is_some_and(|s| {
                    s["service_bound"] == true
                        && if ft { s["channel_up"] == true } else { s["role"] == "live, not protected" }
                })
        });
        if up {
            return Ok(());
        }
        Err(CliError::Protocol(format!(
            "bench: {guest} ({}) did not come up within {START_DEADLINE:?}; a's log ends: {}; b's log ends: {}",
            if ft { "FT" } else { "non-FT" },
            log_tail(&self.scratch.dir.join("a.log")),
            log_tail(&self.scratch.dir.join("b.log"))
        )))
    }

    pub fn service(&self) -> Result<SocketAddr, CliError> {
        self.configs.a.service.ok_or_else(|| CliError::Usage("no service address".into()))
    }

    /// The primary's status now.
    pub fn primary_status(&self) -> Option<serde_json::Value> {
        status_json(self.configs.a.status)
    }

    /// The backup's status now.
    pub fn backup_status(&self) -> Option<serde_json::Value> {
        status_json(self.configs.b.status)
    }

    /// For a guest that powers off: waits for the primary (and the backup) to stop, and returns the primary's
    /// last status, from its status file.
    pub fn wait_finished(&mut self) -> Result<serde_json::Value, CliError> {
        let exited = self.scratch.wait_exit("a", FINISH_DEADLINE);
        if self.ft {
            let _ = self.scratch.wait_exit("b", FINISH_DEADLINE);
        }
        let path = self.scratch.dir.join("a-status.json");
        let text = std::fs::read_to_string(&path).map_err(|error| {
            CliError::Protocol(format!(
                "bench: the primary left no status file ({}; exit {exited:?}); its log ends: {}",
                crate::error::io_reason(&error),
                log_tail(&self.scratch.dir.join("a.log"))
            ))
        })?;
        serde_json::from_str(&text).map_err(|error| CliError::Protocol(format!("bench: {}: {error}", path.display())))
    }

    /// Stops sampling; the samples, in order.
    pub fn samples(&mut self) -> Vec<Sample> {
        self.sampler.take().map(Sampler::finish).unwrap_or_default()
    }

    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(sampler) = self.sampler.take() {
            sampler.finish();
        }
    }
}

/// A guest's run time between its first run and its power-off, from a status (ms).
pub fn guest_run_ms(status: &serde_json::Value) -> Option<f64> {
    let start = status["guest_started_at_ms"].as_f64()?;
    let end = status["powered_off_at_ms"].as_f64()?;
    (end > start).then_some(end - start)
}

/// The share of one CPU each kind of thread used between the first and the last sample that saw the process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUse {
    /// The lowest CPU share the primary's lag throttle left the guest (100: never throttled), and the execution
    /// lag's p99 over the samples, which says why.
    pub cpu_share_min_percent: f64,
    pub lag_p99_ms: f64,
    pub primary_runtime_percent: f64,
    pub primary_vcpu_percent: f64,
    pub backup_runtime_percent: f64,
    pub backup_vcpu_percent: f64,
}

impl CpuUse {
    pub fn of(samples: &[Sample]) -> CpuUse {
        let share = |cpu: fn(&Sample) -> Option<ThreadCpu>| {
            let seen: Vec<(f64, ThreadCpu)> = samples.iter().filter_map(|s| Some((s.at_ms, cpu(s)?))).collect();
            match (seen.first(), seen.last()) {
                (Some((t0, first)), Some((t1, last))) if t1 > t0 => {
                    let used = last.since(first);
                    (used.runtime_ms * 100.0 / (t1 - t0), used.vcpu_ms * 100.0 / (t1 - t0))
                }
                _ => (0.0, 0.0),
            }
        };
        let (primary_runtime_percent, primary_vcpu_percent) = share(|s| s.primary_cpu);
        let (backup_runtime_percent, backup_vcpu_percent) = share(|s| s.backup_cpu);
        let cpu_share_min_percent = samples.iter().map(|sample| sample.cpu_share_percent).fold(100.0, f64::min);
        let lags: Vec<f64> = samples.iter().map(|sample| sample.execution_lag_ms).collect();
        let lag_p99_ms = if lags.is_empty() { 0.0 } else { crate::figures::percentile(&lags, 0.99) };
        CpuUse {
            cpu_share_min_percent,
            lag_p99_ms,
            primary_runtime_percent,
            primary_vcpu_percent,
            backup_runtime_percent,
            backup_vcpu_percent,
        }
    }
}
