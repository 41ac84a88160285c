//! Aggregation over many seeds, and the "sometimes" assertions: across a sweep, every interesting event must
//! have happened and every coverage mark must have been hit at least once, or the faults are not reaching the
//! code they are meant to test.

use std::collections::BTreeMap;

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
    totals.hashes_compared += counts.hashes_compared;
    totals.outputs_reissued += counts.outputs_reissued;
    totals.disk_reissued += counts.disk_reissued;
    totals.duplicate_outputs += counts.duplicate_outputs;
    totals.channel_errors += counts.channel_errors;
    totals.writes_superseded += counts.writes_superseded;
    totals.crash_points += counts.crash_points;
    totals.power_offs += counts.power_offs;
    totals.reprotections += counts.reprotections;
    totals.clones_abandoned += counts.clones_abandoned;
    totals.requests_ok += counts.requests_ok;
    totals.requests_indeterminate += counts.requests_indeterminate;
}

pub fn add_marks(totals: &mut BTreeMap<&'static str, usize>, marks: &BTreeMap<&'static str, usize>) {
    for (mark, hits) in marks {
        *totals.entry(mark).or_default() += hits;
    }
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
        ("state hashes compared", totals.hashes_compared),
        ("output reissued at go-live", totals.outputs_reissued),
        ("disk IO reissued at go-live", totals.disk_reissued),
        ("duplicate output", totals.duplicate_outputs),
        ("late write superseded", totals.writes_superseded),
        ("crash at a protocol edge", totals.crash_points),
        ("power-off", totals.power_offs),
        ("re-protection", totals.reprotections),
        ("request ok", totals.requests_ok),
    ];
    checks.iter().filter(|(_, count)| *count == 0).map(|(name, _)| *name).collect()
}
