//! The test suite's sweep: 256 seeds in four parallel quarters, and the sometimes-assertions over all of them.
//! `.ci/run` runs a larger, time-boxed sweep with the release `ftsim` binary.

use std::sync::Mutex;

use ft_sim::scenario;
use ft_sim::world::Counts;

const SEEDS: u64 = 256;
const QUARTER: u64 = SEEDS / 4;

static TOTALS: Mutex<(u64, Option<Counts>)> = Mutex::new((0, None));

fn sweep_quarter(quarter: u64) {
    let mut failures = Vec::new();
    let mut counts = Counts::default();
    for seed in quarter * QUARTER..(quarter + 1) * QUARTER {
        let report = scenario::run(seed);
        ft_sim::sweep::add(&mut counts, &report.counts);
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {}\n  reproduce: {}",
                report.violations.join("; "),
                report.reproduce()
            ));
        }
    }
    assert!(failures.is_empty(), "{} failing seeds:\n{}", failures.len(), failures.join("\n"));
    let mut totals = TOTALS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    totals.0 += 1;
    let finished = totals.0;
    let all = totals.1.get_or_insert_with(Counts::default);
    ft_sim::sweep::add(all, &counts);
    // The last quarter to finish checks that the faults reached every interesting path.
    if finished == 4 {
        let never = ft_sim::sweep::never_happened(all);
        assert!(never.is_empty(), "over {SEEDS} seeds these never happened: {never:?} (counts {all:?})");
    }
}

#[test]
fn sweep_seeds_0_to_63() {
    sweep_quarter(0);
}

#[test]
fn sweep_seeds_64_to_127() {
    sweep_quarter(1);
}

#[test]
fn sweep_seeds_128_to_191() {
    sweep_quarter(2);
}

#[test]
fn sweep_seeds_192_to_255() {
    sweep_quarter(3);
}
