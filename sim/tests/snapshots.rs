//! Pinned traces: a change that alters protocol behaviour shows up here as a reviewed snapshot diff.
//! Seed 1: the primary crashes and the backup goes live. Seed 58: the logging channel loses data; the primary
//! wins the test-and-set and the backup halts. Seed 13: the backup crashes; the primary runs unprotected.

use ft_sim::scenario;

fn pinned(seed: u64) -> String {
    let report = scenario::run(seed);
    assert!(report.violations.is_empty(), "seed {seed}: {:?}", report.violations);
    let mut text = report.trace.join("\n");
    text.push_str(&format!("\ntrace-hash={:016x}\n", report.trace_hash));
    text
}

#[test]
fn seed_1_primary_crash_failover() {
    insta::assert_snapshot!(pinned(1));
}

#[test]
fn seed_58_channel_loss_primary_wins() {
    insta::assert_snapshot!(pinned(58));
}

#[test]
fn seed_13_backup_crash_unprotected() {
    insta::assert_snapshot!(pinned(13));
}
