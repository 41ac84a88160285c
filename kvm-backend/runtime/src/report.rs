//! `ftvm report`: per guest, a plain run, a recording and its replay in the same process, and what each costs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::CliError;
use crate::machine::{Disk, GuestImage};
use crate::replay::{self, ReplayOptions};
use crate::session::{self, SessionOptions};
use crate::workload::Workload;

#[derive(Clone)]
pub struct ReportOptions {
    pub kvm_path: PathBuf,
    pub guests: Vec<String>,
    pub requests: u64,
    pub seed: u64,
    pub timeout: Option<Duration>,
    /// Each phase runs this many times and the fastest counts (the host is shared and noisy).
    pub repeat: u32,
}

/// One guest's measurements.
pub struct Row {
    pub guest: String,
    pub exits: u64,
    pub run: Duration,
    pub record: Duration,
    pub replay: Duration,
    pub log_bytes: u64,
    pub hashes_match: bool,
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64().max(1e-9)
}

impl Row {
    /// Recording speed relative to a plain run (1.0 = logging costs nothing).
    pub fn record_speed(&self) -> f64 {
        seconds(self.run) / seconds(self.record)
    }

    /// Replay time relative to recording time (at most 1.0: the backup keeps up).
    pub fn replay_over_record(&self) -> f64 {
        seconds(self.replay) / seconds(self.record)
    }
}

fn session_options(options: &ReportOptions, image: GuestImage) -> SessionOptions {
    let workload = Workload::for_guest(image.corpus_name(), options.requests, options.seed);
    SessionOptions {
        kvm_path: options.kvm_path.clone(),
        image,
        disk: Disk::zeroed(crate::machine::DISK_SECTORS_DEFAULT),
        workload,
        timeout: options.timeout,
        echo_console: false,
        kick_every: None,
    }
}

fn measure_once(options: &ReportOptions, guest: &str, log: &Path) -> Result<Row, CliError> {
    let plain = session::run(session_options(options, GuestImage::resolve(guest)?), None)?;
    let recorded = session::run(session_options(options, GuestImage::resolve(guest)?), Some(log))?;
    let replay_options = ReplayOptions {
        kvm_path: options.kvm_path.clone(),
        image: GuestImage::resolve(guest)?,
        log: log.to_path_buf(),
    };
    let replayed = replay::run(replay_options)?;
    tracing::info!(guest, plain_exits = plain.exits, recorded_exits = recorded.exits, "measured");
    Ok(Row {
        guest: guest.to_string(),
        exits: recorded.exits,
        run: plain.elapsed,
        record: recorded.elapsed,
        replay: replayed.elapsed,
        log_bytes: recorded.log_bytes,
        hashes_match: recorded.state_hash == Some(replayed.state_hash) && recorded.console == replayed.console,
    })
}

/// The fastest of `options.repeat` measurements of each phase (exits and log size from the fastest recording).
pub fn measure_guest(options: &ReportOptions, guest: &str, log: &Path) -> Result<Row, CliError> {
    let mut best = measure_once(options, guest, log)?;
    for _ in 1..options.repeat {
        let row = measure_once(options, guest, log)?;
        best.run = best.run.min(row.run);
        best.replay = best.replay.min(row.replay);
        best.hashes_match &= row.hashes_match;
        if row.record < best.record {
            (best.record, best.exits, best.log_bytes) = (row.record, row.exits, row.log_bytes);
        }
    }
    Ok(best)
}

/// Measures every guest in `options.guests` and prints the table.
pub fn run(options: &ReportOptions) -> Result<Vec<Row>, CliError> {
    let mut rows = Vec::new();
    for guest in &options.guests {
        let log = std::env::temp_dir().join(format!("ftvm-report-{}-{guest}.log", std::process::id()));
        let row = measure_guest(options, guest, &log);
        // The log is scratch: a failed removal leaves a file in the temporary directory, nothing worse.
        let _ = std::fs::remove_file(&log);
        rows.push(row?);
    }
    print_table(&rows);
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<8} {:>8} {:>8} {:>9} {:>9} {:>11} {:>13} {:>10} {:>11} {:>6}",
        "guest",
        "exits",
        "run s",
        "record s",
        "replay s",
        "record/run",
        "replay/record",
        "exits/s",
        "log KiB/s",
        "same"
    );
    for row in rows {
        let record_s = seconds(row.record);
        println!(
            "{:<8} {:>8} {:>8.3} {:>9.3} {:>9.3} {:>11.3} {:>13.3} {:>10.0} {:>11.1} {:>6}",
            row.guest,
            row.exits,
            seconds(row.run),
            record_s,
            seconds(row.replay),
            row.record_speed(),
            row.replay_over_record(),
            row.exits as f64 / record_s,
            row.log_bytes as f64 / 1024.0 / record_s,
            if row.hashes_match { "yes" } else { "NO" },
        );
    }
    println!("record/run = run time / record time (speed while recording, 1 = free); replay/record = replay time / record time;");
    println!(
        "exits/s and log KiB/s are while recording; same = replay reproduced the console and the final state hash."
    );
}
