//! Every seed in corpus/regressions/ once found a bug; each must now run clean.

use ft_sim::scenario;

#[test]
fn regression_seeds_stay_fixed() {
    let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpus/regressions");
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(directory).expect("corpus/regressions exists") {
        let path = entry.expect("readable directory").path();
        if path.extension().is_none_or(|extension| extension != "seeds") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable seed file");
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
            let seed = line.split_whitespace().next().unwrap_or_default();
            seeds.push(seed.parse::<u64>().unwrap_or_else(|_| panic!("{}: bad seed line {line:?}", path.display())));
        }
    }
    assert!(!seeds.is_empty(), "no regression seeds found in {directory}");
    for seed in seeds {
        let report = scenario::run(seed);
        assert!(
            report.violations.is_empty(),
            "regression seed {seed}: {:?}\n  reproduce: {}",
            report.violations,
            report.reproduce()
        );
    }
}
