//! Table 1's redis row: the `redis` guest (smoltcp TCP/IP over a TAP, RESP, an append log on the disk) on two
//! hosts made of network namespaces, `redis-benchmark -c 50 -t set,get` at pipelining 1 and 16, FT (a protected
//! pair) against non-FT (the primary alone, unprotected: the same runtime, outputs released at once, nothing
//! logged), with the logging bandwidth; then failover trials (`ftvm demo --guest redis`, kill -9 of the primary
//! with the benchmark running), the failover a client sees (the longest silence between two replies on one
//! connection) and whether any connection was reset. Skipped, with the reason, where root, namespaces, TAP or
//! redis-tools are missing.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::say;
use crate::demo::redis::{self, BenchmarkLine, RedisOptions, RedisSummary};
use crate::demo::redis_pair::RedisPair;
use crate::demo::{trial_seed, FailureMode};
use crate::error::CliError;
use crate::netlab::Host;

const CONNECTIONS: u32 = 50;
const PIPELINES: [u32; 2] = [1, 16];

/// One test (SET or GET) at one pipelining depth, FT against non-FT.
#[derive(Clone, Debug, Serialize)]
pub struct RedisRow {
    pub test: String,
    pub connections: u32,
    pub pipeline: u32,
    pub ft_requests_per_s: f64,
    pub plain_requests_per_s: f64,
    pub ratio: f64,
    pub ft_p50_ms: f64,
    pub ft_p99_ms: f64,
    pub plain_p50_ms: f64,
    pub plain_p99_ms: f64,
    /// Logging-channel bytes both ways over the FT run of this depth (SET and GET together), in Mbit/s.
    pub log_mbit_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisBench {
    pub rows: Vec<RedisRow>,
    pub failover: Option<RedisSummary>,
    pub skipped: Option<String>,
}

/// The FT runs' lines with their logging bandwidth, or the plain runs' lines.
fn runs(seed: u64, protected: bool) -> Result<Vec<(u32, Vec<BenchmarkLine>, f64)>, CliError> {
    let pair = RedisPair::start(seed, 150, protected)?;
    let mut out = Vec::new();
    for pipeline in PIPELINES {
        let requests = if pipeline == 1 { 20_000 } else { 200_000 };
        let bytes = || {
            pair.status(Host::A).map_or(0, |status| {
                status["channel_bytes_sent"].as_u64().unwrap_or(0)
                    + status["channel_bytes_received"].as_u64().unwrap_or(0)
            })
        };
        let (before, start) = (bytes(), Instant::now());
        let lines = pair.benchmark(CONNECTIONS, pipeline, requests)?;
        let seconds = start.elapsed().as_secs_f64();
        let mbit = (bytes().saturating_sub(before)) as f64 * 8.0 / seconds / 1e6;
        out.push((pipeline, lines, mbit));
    }
    Ok(out)
}

pub fn measure(kvm_path: &Path, seed: u64, trials: u32) -> Result<RedisBench, CliError> {
    if let Some(reason) = redis::missing_prerequisite(kvm_path) {
        say(&format!("redis: skipped ({reason})"));
        return Ok(RedisBench { skipped: Some(reason), ..RedisBench::default() });
    }
    // A redis run that fails says why in the report instead of failing the whole benchmark.
    say("redis: redis-benchmark, FT");
    let ft = match runs(seed, true) {
        Ok(ft) => ft,
        Err(error) => {
            return Ok(RedisBench { skipped: Some(format!("the FT run failed: {error}")), ..RedisBench::default() })
        }
    };
    say("redis: redis-benchmark, non-FT");
    let plain = match runs(seed, false) {
        Ok(plain) => plain,
        Err(error) => {
            return Ok(RedisBench { skipped: Some(format!("the non-FT run failed: {error}")), ..RedisBench::default() })
        }
    };
    let mut rows = Vec::new();
    for ((pipeline, ft_lines, mbit), (_, plain_lines, _)) in ft.iter().zip(&plain) {
        for (ft_line, plain_line) in ft_lines.iter().zip(plain_lines) {
            rows.push(RedisRow {
                test: ft_line.test.clone(),
                connections: CONNECTIONS,
                pipeline: *pipeline,
                ft_requests_per_s: ft_line.requests_per_s,
                plain_requests_per_s: plain_line.requests_per_s,
                ratio: ft_line.requests_per_s / plain_line.requests_per_s,
                ft_p50_ms: ft_line.p50_ms,
                ft_p99_ms: ft_line.p99_ms,
                plain_p50_ms: plain_line.p50_ms,
                plain_p99_ms: plain_line.p99_ms,
                log_mbit_per_s: *mbit,
            });
        }
    }
    say(&format!("redis: {trials} failover trials"));
    let mut reports = Vec::new();
    for index in 0..trials {
        let seed = trial_seed(seed, index);
        let options = RedisOptions {
            seed,
            mode: FailureMode::Kill,
            requests: 40_000,
            kill_after_ms: 300 + seed % 300,
            ..RedisOptions::default()
        };
        match redis::run(&options, kvm_path) {
            Ok(report) => reports.push(report),
            Err(error) => reports.push(redis::RedisReport { errors: vec![error.to_string()], ..Default::default() }),
        }
    }
    Ok(RedisBench { rows, failover: Some(redis::summary(&reports)), skipped: None })
}
