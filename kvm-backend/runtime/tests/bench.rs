//! `ftvm bench` as a user runs it, briefly: every table and plot is written, the figures are there and sane (a
//! ratio is positive and finite, every replay reproduced its recording, no failover lost a request), and the JSON
//! on stdout is the report's. Speed is the report's business, never a check here.

mod common;

use std::path::Path;
use std::time::Duration;

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");

fn finite_positive(value: &serde_json::Value, what: &str) -> f64 {
    let number = value.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {value}"));
    assert!(number.is_finite() && number > 0.0, "{what}: {number}");
    number
}

#[test]
fn a_short_bench_writes_every_table_and_plot() {
    if !common::kvm_usable() {
        return;
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ftvm-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut command = std::process::Command::new(FTVM);
    command.args(["bench", "--json", "--duration-ms", "400", "--trials", "1", "--clones", "2", "--out"]).arg(&out);
    let output = common::output_within(&mut command, Duration::from_secs(300)).expect("the bench finishes");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json")).expect("JSON");
    assert_eq!(report, written, "stdout and report.json say the same");
    let guests: Vec<&str> =
        report["table1"].as_array().unwrap().iter().map(|row| row["guest"].as_str().unwrap()).collect();
    assert_eq!(guests, ["cpu", "timer", "kv", "kvq"]);
    for row in report["table1"].as_array().unwrap().iter().chain(report["table2"].as_array().unwrap()) {
        finite_positive(&row["ratio"], &format!("ratio of {row}"));
        finite_positive(&row["log_mbit_per_s"], &format!("logging bandwidth of {row}"));
    }
    let directions: Vec<&str> =
        report["table2"].as_array().unwrap().iter().map(|row| row["direction"].as_str().unwrap()).collect();
    assert_eq!(directions, ["receive", "transmit"]);
    // Receive puts every frame into the log: its logging bandwidth is at least most of what it received.
    let receive = &report["table2"][0];
    assert!(
        receive["log_mbit_per_s"].as_f64().unwrap() > 0.5 * receive["ft_mbit_per_s"].as_f64().unwrap(),
        "{receive}"
    );
    assert!(report["latency"]["requests_ft"].as_u64().unwrap() > 0, "{}", report["latency"]);
    finite_positive(&report["latency"]["ft_p50_us"], "FT latency");
    for failover in report["failover"].as_array().unwrap() {
        assert_eq!(failover["trials"], 1, "{failover}");
        assert_eq!(failover["requests_lost"], 0, "{failover}");
        assert_eq!(failover["split_brain"], false, "{failover}");
    }
    for row in report["replay"].as_array().unwrap() {
        assert_eq!(row["same_state"], true, "{row}");
    }
    // Table 1's redis row needs root, namespaces and redis-tools; where they are missing it says so.
    let redis = &report["redis"];
    if redis["skipped"].is_null() {
        let rows: Vec<(&str, u64)> = redis["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| (row["test"].as_str().unwrap(), row["pipeline"].as_u64().unwrap()))
            .collect();
        assert_eq!(rows, [("SET", 1), ("GET", 1), ("SET", 16), ("GET", 16)], "{redis}");
        for row in redis["rows"].as_array().unwrap() {
            finite_positive(&row["ratio"], &format!("redis ratio of {row}"));
            finite_positive(&row["log_mbit_per_s"], &format!("redis logging bandwidth of {row}"));
        }
        assert_eq!(redis["failover"]["trials"], 1, "{redis}");
        assert_eq!(redis["failover"]["trials_with_a_reset"], 0, "{redis}");
        assert_eq!(redis["failover"]["requests_lost"], 0, "{redis}");
    } else {
        assert!(std::env::var("FT_REQUIRE_NETNS").map_or(true, |value| value != "1"), "redis skipped: {redis}");
        eprintln!("the redis row was skipped: {}", redis["skipped"]);
    }
    let sizes: Vec<u64> =
        report["reprotect"].as_array().unwrap().iter().map(|row| row["memory_mib"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [16, 256]);
    for row in report["reprotect"].as_array().unwrap() {
        assert_eq!(row["clones"], 2, "{row}");
        finite_positive(&row["pause_ms_p99"], &format!("pause of {row}"));
        // A clone sends the memory at least once.
        assert!(row["bytes_over_memory"].as_f64().unwrap() >= 1.0, "{row}");
    }
    assert!(report["goals"].as_array().unwrap().len() >= 8, "every goal is listed");
    let markdown = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for heading in [
        "## Table 1",
        "## Table 2",
        "## The Output Rule's latency",
        "## Failover",
        "## Replay",
        "## Re-protection",
        "## Goals",
    ] {
        assert!(markdown.contains(heading), "{heading} in report.md");
    }
    for plot in ["latency-cdf.svg", "lag.svg", "bandwidth.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).expect(plot);
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{plot} holds a drawing");
    }
    let _ = std::fs::remove_dir_all(&out);
}
