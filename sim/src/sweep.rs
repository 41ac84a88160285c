//! Aggregation over many seeds, and the "sometimes" assertions: across a sweep, every interesting event must
//! have happened at least once, or the faults are not reaching the code they are meant to test.

use crate::world::Counts;

/// Sweeps smaller than this do not check the sometimes-assertions.
pub const SOMETIMES_SEEDS_MIN: u64 = 200;

pub fn add(totals: &mut Counts, counts: &Counts) {
    totals.failovers += counts.failovers;
    totals.unprotected += counts.unprotected;
    totals.lost_races += counts.lost_races;
    totals.arbiter_unreachable += counts.arbiter_unreachable;
    totals.stalls += counts.stalls;
    totals.checkpoints_verified += counts.checkpoints_verified;
    totals.outputs_reissued += counts.outputs_reissued;
    totals.disk_reissued += counts.disk_reissued;
    totals.duplicate_outputs += counts.duplicate_outputs;
    totals.channel_errors += counts.channel_errors;
    totals.requests_ok += counts.requests_ok;
    totals.requests_indeterminate += counts.requests_indeterminate;
}

/// Names of the interesting events that never happened.
pub fn never_happened(totals: &Counts) -> Vec<&'static str> {
    let checks = [
        ("failover", totals.failovers),
        ("primary unprotected", totals.unprotected),
        ("lost go-live race", totals.lost_races),
        ("arbiter unreachable", totals.arbiter_unreachable),
        ("flow-control stall", totals.stalls),
        ("checkpoint verified", totals.checkpoints_verified),
        ("output reissued at go-live", totals.outputs_reissued),
        ("disk IO reissued at go-live", totals.disk_reissued),
        ("duplicate output", totals.duplicate_outputs),
        ("request ok", totals.requests_ok),
    ];
    checks.iter().filter(|(_, count)| *count == 0).map(|(name, _)| *name).collect()
}
