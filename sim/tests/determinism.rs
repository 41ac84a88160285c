//! Same seed, same world: the whole trace (and so its hash) must repeat exactly.

use ft_sim::scenario;

#[test]
fn same_seed_gives_the_same_trace() {
    for seed in [1, 58, 4242] {
        let first = scenario::run(seed);
        let second = scenario::run(seed);
        assert_eq!(first.trace, second.trace, "seed {seed} is not deterministic; reproduce: {}", first.reproduce());
        assert_eq!(first.trace_hash, second.trace_hash);
    }
}

#[test]
fn different_seeds_give_different_traces() {
    assert_ne!(scenario::run(1).trace_hash, scenario::run(2).trace_hash);
}
