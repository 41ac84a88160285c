//! `ftvm demo` tells the truth about failover: a backup and a primary of the pipelined key-value guest `kvq` as
//! processes on localhost, several clients each keeping several requests in flight, and the primary killed
//! (kill -9) or its host lost (SIGSTOP: no FIN, no RST, detection by the failure timeout) at a random moment,
//! with outputs held and disk IO pending. Over a hundred trials: no acknowledged put lost, no two answers to one
//! request id that differ, no read the guest found inconsistent, and no split brain in what the shared storage
//! saw (its write journal).
//!
//! The demo runs the guest on KVM where /dev/kvm is usable and on the model guest otherwise (it says which);
//! with FT_REQUIRE_KVM=1 an unusable /dev/kvm fails the tests instead. The demo kills its nodes and removes its
//! files on every path (its children die with it, PR_SET_PDEATHSIG). One demo runs at a time in this binary, so
//! that two pairs do not starve each other's heartbeats on a 2-core machine. The time limits are guards against a
//! hang, never speed checks.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");
/// How long one demo of 25 trials may take before it counts as hung (not a speed check).
const GUARD: Duration = Duration::from_secs(300);
/// Trials per test (FT_PAIR_TRIALS overrides): four tests of 25 make the hundred.
const TRIALS_DEFAULT: u32 = 25;
/// The pair's failure timeout in these tests (the default): a host loss is detected by it, a kill is not.
const FAILURE_TIMEOUT_MS: f64 = 150.0;
/// The demo pair's heartbeat period.
const HEARTBEAT_INTERVAL_MS: f64 = 20.0;

/// One demo at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn trials() -> u32 {
    std::env::var("FT_PAIR_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(TRIALS_DEFAULT)
}

/// Fails the test where KVM is required but unusable; otherwise the demo picks KVM or the model guest.
fn machine_checked() {
    if std::env::var("FT_REQUIRE_KVM").is_ok_and(|value| value == "1") {
        assert!(common::kvm_usable(), "KVM is required");
    }
}

/// Runs `ftvm ARGS` (under the guard), one at a time; returns its stdout and stderr and whether it succeeded.
fn ftvm(args: &[&str]) -> (bool, String, String) {
    machine_checked();
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let start = Instant::now();
    let output =
        common::output_within(Command::new(FTVM).args(args).env_remove("FTVM_KVM_PATH").env("FTVM_LOG", "warn"), GUARD)
            .unwrap_or_else(|hang| panic!("ftvm {args:?}: {hang}"));
    eprintln!("ftvm {} took {:.1} s", args.join(" "), start.elapsed().as_secs_f64());
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stdout, stderr)
}

/// `ftvm demo --json` with a seed from the clock (printed, and in the JSON), `trials` trials and a short load
/// before each kill; the summary, after the checks every demo must pass.
fn demo(mode_flags: &[&str], trials: u32) -> serde_json::Value {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let (seed, trials) = (seed.to_string(), trials.to_string());
    let mut args = vec!["demo", "--json", "--trials", &trials, "--seed", &seed, "--kill-after-ms", "50-300"];
    args.extend_from_slice(mode_flags);
    let (ok, stdout, stderr) = ftvm(&args);
    assert!(ok, "demo failed (seed {seed}):\n{stdout}\n{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("JSON summary: {error}\n{stdout}\n{stderr}"));
    assert_eq!(summary["seed"].as_u64().map(|s| s.to_string()), Some(seed.clone()), "{stdout}");
    assert!(summary["guest"].as_str().is_some_and(|guest| guest.starts_with("kvq")), "{stdout}");
    for field in ["requests_lost", "divergent_outputs", "inconsistent_reads"] {
        assert_eq!(summary[field], 0, "{field} (seed {seed}): {stdout}");
    }
    assert_eq!(summary["split_brain"], false, "seed {seed}: {stdout}");
    assert_eq!(summary["split_brain_evidence"].as_array().map(Vec::len), Some(0), "{stdout}");
    assert_eq!(summary["disk_consistent"], true, "{stdout}");
    assert_eq!(summary["errors"].as_array().map(Vec::len), Some(0), "{stdout}");
    let trials: usize = trials.parse().unwrap();
    assert_eq!(summary["trial_seeds"].as_array().map(Vec::len), Some(trials), "{stdout}");
    let failovers = summary["failover_ms_all"].as_array().expect("failover_ms_all");
    assert_eq!(failovers.len(), trials, "{stdout}");
    assert!(failovers.iter().all(|ms| ms.as_f64().is_some()), "every trial failed over: {stdout}");
    // Requests in flight at every kill: the clients keep several each, so the kill lands amid held outputs and
    // pending disk IO, not between two requests.
    let in_flight = summary["requests_in_flight_at_kill_all"].as_array().expect("requests_in_flight_at_kill_all");
    assert_eq!(in_flight.len(), trials, "{stdout}");
    assert!(in_flight.iter().all(|n| n.as_u64().is_some_and(|n| n >= 2)), "requests in flight at each kill: {stdout}");
    assert!(summary["requests_in_flight_at_kill"].as_u64().is_some_and(|n| n >= 2 * trials as u64), "{stdout}");
    // The storage saw the writes (the journal is the split-brain evidence: it must not be empty).
    assert!(summary["journal_writes"].as_u64().is_some_and(|n| n > 0), "{stdout}");
    assert!(summary["requests_ok"].as_u64().is_some_and(|n| n > 0), "{stdout}");
    summary
}

fn kill_trials() {
    let summary = demo(&[], trials());
    assert_eq!(summary["mode"], "kill", "{summary}");
    // A killed process's kernel closes its channel: the backup hears of it at once, not by the timeout.
    for cause in summary["detected_by_all"].as_array().expect("detected_by_all") {
        assert!(cause.as_str().is_some_and(|c| c.contains("logging channel")), "{summary}");
    }
}

fn host_loss_trials() {
    let summary = demo(&["--host-loss"], trials());
    assert_eq!(summary["mode"], "host-loss", "{summary}");
    // A frozen host sends nothing, not even a FIN: only the failure timeout's silence can tell (of everything, or
    // of the channel while the last heartbeats were still fresh).
    // Silence of everything says how long it lasted: at least the failure timeout. (A stalled channel is the
    // channel's silence for the timeout; its sentence gives the heartbeats', which stopped a little later.)
    for detection in summary["detected_by_all"].as_array().expect("detected_by_all") {
        let detection = detection.as_str().unwrap_or_default();
        let silent = detection.contains("no word from it") || detection.contains("the logging channel is stalled");
        assert!(silent, "{detection:?}: {summary}");
        if detection.contains("no word from it") {
            let silent_ms = detection
                .strip_prefix("after ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|ms| ms.parse::<f64>().ok());
            assert!(silent_ms.is_some_and(|ms| ms >= FAILURE_TIMEOUT_MS), "{detection:?}: {summary}");
        }
    }
    // Its silence began with the last message before the freeze, at most a heartbeat period earlier.
    for ms in summary["failover_ms_all"].as_array().expect("failovers") {
        let bound = FAILURE_TIMEOUT_MS - HEARTBEAT_INTERVAL_MS;
        assert!(ms.as_f64().is_some_and(|ms| ms >= bound), "detection took the timeout: {summary}");
    }
}

#[test]
fn kill_9_with_requests_in_flight_loses_nothing_1() {
    kill_trials();
}

#[test]
fn kill_9_with_requests_in_flight_loses_nothing_2() {
    kill_trials();
}

#[test]
fn host_loss_with_requests_in_flight_loses_nothing_1() {
    host_loss_trials();
}

#[test]
fn host_loss_with_requests_in_flight_loses_nothing_2() {
    host_loss_trials();
}

/// The JSON summary of a plain `ftvm demo --json`: the mode, the seed, the guest and the requests in flight at the
/// kill (before: the `kv` guest, one request at a time, and no seed, mode or in-flight count).
#[test]
fn the_demo_summary_names_mode_seed_and_requests_in_flight() {
    let (ok, stdout, stderr) = ftvm(&["demo", "--json", "--seed", "5"]);
    assert!(ok, "{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(summary["seed"], 5, "{stdout}");
    assert_eq!(summary["mode"], "kill", "{stdout}");
    assert!(summary["guest"].as_str().is_some_and(|guest| guest.starts_with("kvq")), "{stdout}");
    assert_eq!(summary["inconsistent_reads"], 0, "{stdout}");
    assert!(summary["requests_in_flight_at_kill"].as_u64().is_some_and(|n| n >= 2), "{stdout}");
}

/// The timeline is sentences: the seed to repeat it with, the kill with what was in flight, the backup's own
/// account of detection, the arbiter and going live, and no Rust Debug output (before: `PeerFailed { silent_ms:
/// 0, cause: ChannelLost(...) }`, `Won { epoch: 2 }`, and no seed).
#[test]
fn the_demo_timeline_is_sentences_and_names_its_seed() {
    let (ok, stdout, stderr) = ftvm(&["demo", "--seed", "11"]);
    assert!(ok, "{stdout}\n{stderr}");
    for wanted in [
        "seed 11",
        "requests in flight",
        "b: declaring the peer failed",
        "b: the arbiter granted epoch 2 to b/",
        "b: LIVE in epoch 2",
        "first answer from the new primary",
        "storage journal:",
    ] {
        assert!(stdout.contains(wanted), "{wanted:?} in:\n{stdout}");
    }
    for debug in [" { ", "Some(", "Won {", "PeerFailed", "ChannelLost(", "WentLive"] {
        assert!(!stdout.contains(debug), "Debug output {debug:?} in the timeline:\n{stdout}");
    }
    // The node's lines come without their log prefix (time, level, module).
    assert!(!stdout.contains("INFO") && !stdout.contains("kvm_backend::") && !stdout.contains("ft_host::"), "{stdout}");
}

/// `ftvm report-failover` gives kill and host-loss failover figures, and keeps its latency and throughput lines
/// (before: only one kind of failover per run).
#[test]
fn report_failover_gives_kill_and_host_loss_figures() {
    let (ok, stdout, stderr) = ftvm(&["report-failover", "--trials", "1"]);
    assert!(ok, "{stdout}\n{stderr}");
    for prefix in [
        "failover-ms kill min=",
        "failover-ms host-loss min=",
        "output-rule-added-us p50=",
        "requests-per-s ft=",
        "seed=",
    ] {
        let line = stdout.lines().find(|line| line.starts_with(prefix));
        assert!(line.is_some(), "{prefix:?} in:\n{stdout}");
    }
    let host_loss = stdout.lines().find(|line| line.starts_with("failover-ms host-loss")).unwrap();
    assert!(host_loss.contains(" median=") && host_loss.contains(" max="), "{host_loss}");
}

/// `ftvm demo --failures 3`: the primary fails three times in a row, each time after a fresh node re-protected the
/// live one by cloning its running VM; nothing acknowledged is lost and nothing diverges (the checks of `demo`),
/// and the JSON has a pause, a clone time and bytes for every re-protection.
fn failures_after_re_protection(mode_flags: &[&str], trials: u32) {
    let mut flags = vec!["--failures", "3"];
    flags.extend_from_slice(mode_flags);
    let summary = demo(&flags, trials);
    assert_eq!(summary["failures_per_trial"], 3, "{summary}");
    assert_eq!(summary["failovers"], 3 * trials, "{summary}");
    assert_eq!(summary["reprotections"], 2 * trials, "{summary}");
    for field in ["reprotect_pause_ms", "reprotect_total_ms", "reprotect_bytes", "protected_again_ms"] {
        let values = summary[field].as_array().unwrap_or_else(|| panic!("{field}: {summary}"));
        assert_eq!(values.len(), 2 * trials as usize, "{field}: {summary}");
        assert!(values.iter().all(|value| value.as_f64().is_some_and(|v| v > 0.0)), "{field}: {summary}");
    }
    // A clone sends at least the guest's memory once.
    for bytes in summary["reprotect_bytes"].as_array().expect("bytes") {
        assert!(bytes.as_u64().is_some_and(|bytes| bytes >= 1 << 20), "{summary}");
    }
}

#[test]
fn three_kills_each_after_a_re_protection_lose_nothing() {
    failures_after_re_protection(&[], 3);
}

#[test]
fn three_host_losses_each_after_a_re_protection_lose_nothing() {
    failures_after_re_protection(&["--host-loss"], 1);
}
