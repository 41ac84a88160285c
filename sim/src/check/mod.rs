//! The invariants, one module per family (names after docs/architecture.md). Each believes the outside world
//! (the arbiter's grants, what storage wrote, what clients were answered, the guests' own state) rather than
//! what a node says about itself.
//!
//! S1 Output Rule, S2 output consistency (outputs, client history, disk), S3 one live primary per epoch, S4
//! in-order replay, S5 state hashes, S6 liveness (with detection: a lost node is replaced in time; accuracy: a
//! healthy one is not failed), S7 re-protection (a clone equals its primary at the cut; a restarted node
//! protects the pair again).

pub mod accuracy;
pub mod clones;
pub mod detection;
pub mod disk;
pub mod epochs;
pub mod history;
pub mod liveness;
pub mod output_rule;
pub mod outputs;
pub mod replay;
pub mod states;

use crate::world::World;

/// What the end-of-run checkers need to know about the scenario.
pub struct Expectations {
    pub heal_ns: u64,
    pub end_ns: u64,
    pub crashed: Option<crate::world::NodeId>,
    /// Whether the plan owes liveness (at most one node lost).
    pub liveness: bool,
    pub kv_workload: bool,
}

/// Runs every end-of-run checker; violations are appended to the world.
pub fn at_end(world: &mut World, expectations: &Expectations) {
    outputs::check(world);
    history::check(world);
    epochs::check(world);
    states::check(world);
    if expectations.liveness {
        disk::check(world);
    }
    liveness::check(world, expectations);
    clones::check(world, expectations);
}
