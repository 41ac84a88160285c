//! S6 on failure detection: a node lost in a run with no other fault between the two nodes is detected within
//! the failure timeout, and its peer is live soon after, while the faults are still on. Replayed or reflected
//! heartbeats that kept a dead peer "alive" would only show after the heal otherwise, when everything recovers.

use crate::plan::{Cut, Fault, Plan};
use crate::world::World;

/// Time beyond the failure timeout allowed for the test-and-set and the replay of a backlog.
pub const GO_LIVE_SLACK_NS: u64 = 1_000_000_000;

pub fn check(world: &mut World, plan: &Plan) {
    if plan.double_failure() || crate::check::accuracy::redundancy_spent_before_loss(world, plan) {
        return;
    }
    let lost = plan.faults.iter().find_map(|(at_ms, fault)| match fault {
        Fault::Crash(node) | Fault::Bounce(node) | Fault::Freeze(node) => Some((*at_ms, *node)),
        _ => None,
    });
    let Some((at_ms, node)) = lost else { return };
    // Storage or clients cut, or slow, can delay the test-and-set legitimately.
    let delayed = plan.faults.iter().any(|(_, fault)| {
        matches!(
            fault,
            Fault::SlowStorage { .. }
                | Fault::StorageRequests { .. }
                | Fault::Partition { cut: Cut::Storage(_) | Cut::Isolate(_), .. }
        )
    });
    if delayed || plan.powers_off() {
        return;
    }
    let deadline_ns = at_ms * 1_000_000 + plan.failure_timeout_ms * 1_000_000 + GO_LIVE_SLACK_NS;
    if deadline_ns >= plan.heal_ms * 1_000_000 {
        return;
    }
    let survivor = node.other();
    let went_live = world.grants.iter().any(|grant| grant.node == survivor && grant.at_ns <= deadline_ns);
    if !went_live {
        world.violation(
            "S6 liveness",
            format!(
                "{} was lost at {at_ms} ms, and {} had not won the arbiter {} ms later (failure timeout {} ms)",
                node.host(),
                survivor.host(),
                (deadline_ns / 1_000_000).saturating_sub(at_ms),
                plan.failure_timeout_ms
            ),
        );
    }
}
