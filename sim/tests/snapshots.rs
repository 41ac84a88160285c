//! Pinned traces of three stories, each a pinned plan in `sim/tests/plans/` (so a change to the plan generator
//! cannot turn a story into another): a change that alters protocol behaviour shows up here as a reviewed
//! snapshot diff. Console lines are left out: they are the guest's, not the protocol's.

use ft_sim::node_host::model_guests;
use ft_sim::regression::Pinned;
use ft_sim::scenario;

fn pinned(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans").join(format!("{name}.json"));
    let pinned = Pinned::load(&path).unwrap_or_else(|error| panic!("{error}"));
    let report = scenario::run_plan(pinned.seed, pinned.plan.clone(), model_guests(pinned.plan.workload));
    assert!(report.violations.is_empty(), "{name}: {:?}", report.violations);
    let mut text: String =
        report.trace.iter().filter(|line| !line.contains(" console #")).map(|line| format!("{line}\n")).collect();
    text.push_str(&format!("trace-hash={:016x}\n", report.trace_hash));
    text
}

#[test]
fn primary_crash_failover() {
    insta::assert_snapshot!(pinned("primary-crash-failover"));
}

#[test]
fn channel_cut_one_wins() {
    insta::assert_snapshot!(pinned("channel-cut-one-wins"));
}

#[test]
fn backup_crash_unprotected() {
    insta::assert_snapshot!(pinned("backup-crash-unprotected"));
}
