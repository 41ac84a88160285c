//! Every scenario in corpus/regressions/ once found a bug; each must now run clean.
//!
//! `plans/*.json` are pinned: seed and whole plan, replayed as stored, and each must still reach the coverage
//! marks it names (so a change elsewhere cannot quietly make it stop testing what it was pinned for).
//! `sim.seeds` holds older seeds, from before plans were pinned: they run under the current generator, which
//! makes them different scenarios from the ones that failed, but still ones worth running.

use ft_sim::node_host::model_guests;
use ft_sim::regression::Pinned;
use ft_sim::scenario;

fn directory() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/regressions")
}

#[test]
fn pinned_plans_stay_fixed_and_reach_their_marks() {
    let mut paths: Vec<_> = std::fs::read_dir(directory().join("plans"))
        .expect("corpus/regressions/plans exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no pinned plans");
    for path in paths {
        let pinned = Pinned::load(&path).unwrap_or_else(|error| panic!("{error}"));
        let report = scenario::run_plan(pinned.seed, pinned.plan.clone(), model_guests(pinned.plan.workload));
        let reproduce = format!("cargo run --release --bin ftsim -- run --plan {}", path.display());
        assert!(report.violations.is_empty(), "{}: {:?}\n  reproduce: {reproduce}", path.display(), report.violations);
        for mark in &pinned.marks {
            let hits = report.marks.get(mark.as_str()).copied().unwrap_or(0);
            assert!(hits > 0, "{}: no longer reaches mark {mark}\n  reproduce: {reproduce}", path.display());
        }
    }
}

#[test]
fn old_regression_seeds_run_clean() {
    let path = directory().join("sim.seeds");
    let text = std::fs::read_to_string(&path).expect("readable seed file");
    let seeds: Vec<u64> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split_whitespace().next().unwrap_or_default())
        .map(|seed| seed.parse().unwrap_or_else(|_| panic!("{}: bad seed {seed:?}", path.display())))
        .collect();
    assert!(!seeds.is_empty());
    for seed in seeds {
        let report = scenario::run(seed);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\n  reproduce: {}",
            report.violations,
            report.reproduce()
        );
    }
}
