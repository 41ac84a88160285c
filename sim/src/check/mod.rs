//! The invariants, one module per family (names after docs/architecture.md): S1 Output Rule, S2 output
//! consistency (with the client history), S3 one live primary per epoch, S4 in-order replay, S5 state hashes
//! (reported by the backup as divergences), S6 liveness.

pub mod epochs;
pub mod history;
pub mod liveness;
pub mod output_rule;
pub mod outputs;
pub mod replay;

use crate::world::World;

/// What the end-of-run checkers need to know about the scenario.
pub struct Expectations {
    pub heal_ns: u64,
    pub end_ns: u64,
    pub crashed: Option<crate::world::NodeId>,
    pub kv_workload: bool,
}

/// Runs every end-of-run checker; violations are appended to the world.
pub fn at_end(world: &mut World, expectations: &Expectations) {
    outputs::check(world);
    history::check(world);
    liveness::check(world, expectations);
}
