//! `ftvm demo --guest redis` as a user runs it: the redis guest (smoltcp, RESP) as a pair in network namespaces,
//! redis-benchmark with 50 connections and pipelining in a third, the primary killed (and, in the second test, its
//! host's link cut) in the middle. The client's TCP connections must survive (no reset, no reconnect), every
//! acknowledged SET must read back, no split brain; and the demo leaves no namespace behind.
//!
//! Needs root, network namespaces, /dev/net/tun, KVM and redis-tools: skipped with a printed reason otherwise
//! (FT_REQUIRE_NETNS=1 and FT_REQUIRE_KVM=1, which `.ci/run` sets, turn the skips into failures).

use std::process::Command;

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");

fn required(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|value| value == "1")
}

/// Whether the demo can run here; prints why not, or fails where the environment says it must run.
fn runnable() -> bool {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        assert!(!required("FT_REQUIRE_KVM"), "FT_REQUIRE_KVM=1 but /dev/kvm is unusable");
        eprintln!("SKIPPED: /dev/kvm unusable");
        return false;
    }
    let reason = ft_host::netlab::missing_prerequisite().or_else(|| {
        ["redis-benchmark", "redis-cli"]
            .into_iter()
            .find(|tool| Command::new(tool).arg("--version").output().is_err())
            .map(|tool| format!("{tool} is not installed (redis-tools)"))
    });
    if let Some(reason) = reason {
        assert!(!required("FT_REQUIRE_NETNS"), "FT_REQUIRE_NETNS=1 but {reason}");
        eprintln!("SKIPPED: {reason}");
        return false;
    }
    true
}

fn namespaces() -> String {
    let output = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn demo(extra: &[&str]) -> serde_json::Value {
    let child = Command::new(FTVM)
        .args(["demo", "--guest", "redis", "--json", "--requests", "40000", "--kill-after-ms", "300-600"])
        .args(extra)
        .env_remove("FTVM_KVM_PATH")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ftvm demo starts");
    let pid = child.id();
    let output = child.wait_with_output().expect("ftvm demo ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ours: Vec<String> = ["s", "a", "b", "c"].iter().map(|host| format!("ftr{pid}{host}")).collect();
    let leftovers: Vec<String> = namespaces()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| ours.iter().any(|our| our == name))
        .map(String::from)
        .collect();
    assert!(leftovers.is_empty(), "the demo left namespaces behind: {leftovers:?}");
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {stdout}\n{stderr}"));
    assert!(output.status.success(), "the demo failed: {report:#}\n{stderr}");
    report
}

fn check(report: &serde_json::Value, mode: &str) {
    assert_eq!(report["mode"], mode);
    assert_eq!(report["client"], "redis-benchmark");
    assert_eq!(report["failovers"], 1, "{report:#}");
    assert_eq!(report["requests_lost"], 0, "{report:#}");
    assert_eq!(report["tcp_connections_reset"], 0, "{report:#}");
    assert_eq!(report["split_brain"], false, "{report:#}");
    assert_eq!(report["benchmark_exit_ok"], true, "{report:#}");
    let tests: Vec<&str> =
        report["benchmark"].as_array().expect("lines").iter().filter_map(|line| line["test"].as_str()).collect();
    assert_eq!(tests, ["SET", "GET"], "{report:#}");
    assert!(report["writer_sets_acknowledged"].as_u64().is_some_and(|sets| sets > 0), "{report:#}");
    assert!(report["requests_ok"].as_u64().is_some_and(|ok| ok >= 80_000), "{report:#}");
    // The writer saw the failover as a silence: longer than a heartbeat, shorter than the demo's deadlines.
    assert!(report["failover_ms"].as_f64().is_some_and(|ms| ms > 5.0 && ms < 30_000.0), "{report:#}");
}

#[test]
fn redis_benchmark_keeps_its_connections_when_the_primary_is_killed() {
    if !runnable() {
        return;
    }
    check(&demo(&["--seed", "11"]), "kill");
}

#[test]
fn redis_benchmark_keeps_its_connections_when_the_primary_host_is_lost() {
    if !runnable() {
        return;
    }
    check(&demo(&["--seed", "12", "--host-loss"]), "host-loss");
}

#[test]
fn without_kvm_the_redis_demo_says_so_and_fails() {
    let output = Command::new(FTVM)
        .args(["demo", "--guest", "redis"])
        .env("FTVM_KVM_PATH", "/nonexistent/kvm")
        .output()
        .expect("ftvm demo runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot run here"), "{stderr}");
}

/// The guest rebuilds its data from its append log when it boots: writes acknowledged before both hosts are
/// lost (a SET, an INCR, a DEL, and enough SETs that the log spans many sectors and group commits) read back
/// after a cold start of the guest on the same disk.
#[test]
fn the_redis_guest_rebuilds_its_data_from_the_disk_after_both_hosts_are_lost() {
    if !runnable() {
        return;
    }
    ft_host::pair::use_node_executable(FTVM.into());
    let mut pair = ft_host::demo::redis_pair::RedisPair::start(21, 300, true).expect("the pair comes up");
    let mut commands = String::from("SET gone x\nINCR counter\nINCR counter\nDEL gone\n");
    for key in 0..3000 {
        commands.push_str(&format!("SET key:{key} {}\n", "v".repeat(key % 97 + 1)));
    }
    let answers = pair.redis_cli(&commands).expect("redis-cli");
    assert_eq!(answers.lines().filter(|line| *line == "OK").count(), 3001, "every SET acknowledged");
    pair.cold_restart().expect("the guest cold-starts from its disk");
    let mut reads = String::from("GET counter\nEXISTS gone\nDBSIZE\n");
    for key in 0..3000 {
        reads.push_str(&format!("GET key:{key}\n"));
    }
    let read = pair.redis_cli(&reads).expect("redis-cli");
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(&lines[..3], ["2", "0", "3001"], "the counter, the deleted key and the key count");
    for key in 0..3000 {
        assert_eq!(lines[3 + key], "v".repeat(key % 97 + 1), "key:{key} after the cold start");
    }
}
