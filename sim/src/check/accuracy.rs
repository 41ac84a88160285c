//! S6 on failure detection, the other way round: with timeouts an operator would choose, nobody declares its
//! peer failed before anything has gone wrong. The evidence is storage's: a test-and-set reaching the arbiter is a
//! node saying its peer failed, and before the first fault of the plan (or its crash point firing) that is a
//! spurious failover, which halves the pair's protection for nothing.

use crate::plan::{Fault, Plan};
use crate::world::World;

/// Slack in the failure timeout for the slowest simulated slices on both sides, in ms.
const SLICES_SLACK_MS: u64 = 5;

/// Whether the plan's failure timeout leaves room for what a healthy pair needs: three heartbeats, and an ack's
/// round trip plus a heartbeat interval (the longest a healthy peer is quiet: the primary may log its first
/// entry in a while just before the next heartbeat would have refreshed the detector). Below that a healthy peer
/// can be failed by correct code, and the check would accuse it of a bug it does not have.
pub fn timeouts_sane(plan: &Plan) -> bool {
    let quiet_ms = 2 * plan.latency_max_ms + plan.heartbeat_interval_ms + SLICES_SLACK_MS;
    plan.failure_timeout_ms >= (3 * plan.heartbeat_interval_ms).max(quiet_ms)
}

pub fn check(world: &mut World, plan: &Plan) {
    if !timeouts_sane(plan) {
        return;
    }
    let planned_ns = plan.faults.iter().map(|(at_ms, _)| at_ms * 1_000_000).min();
    let first_fault_ns = [planned_ns, world.crash_point_fired_ns].into_iter().flatten().min().unwrap_or(u64::MAX);
    let spurious = world.test_and_sets.iter().find(|(at_ns, _)| *at_ns < first_fault_ns).copied();
    if let Some((at_ns, node)) = spurious {
        world.violation(
            "S6 accuracy",
            format!(
                "{} declared its peer failed at {} ms, before any fault (failure timeout {} ms, heartbeat {} ms, latency up to {} ms)",
                node.host(),
                at_ns / 1_000_000,
                plan.failure_timeout_ms,
                plan.heartbeat_interval_ms,
                plan.latency_max_ms
            ),
        );
    }
}

/// Whether the plan's one node loss may be the pair's second failure: with a failure timeout too tight for the
/// network (not `timeouts_sane`), a healthy peer can be failed legitimately (late or corrupted heartbeats), and
/// when that failover made the node the plan then loses the only live one, liveness and detection are not owed.
/// A loss of the other node (the one that lost the race) still owes them. With sane timeouts the accuracy check
/// above already calls such a failover a bug.
pub fn redundancy_spent_before_loss(world: &World, plan: &Plan) -> bool {
    if timeouts_sane(plan) {
        return false;
    }
    let planned = plan.faults.iter().find_map(|(at_ms, fault)| match fault {
        Fault::Crash(node) | Fault::Bounce(node) | Fault::Freeze(node) => Some((at_ms * 1_000_000, *node)),
        _ => None,
    });
    let fired = world.crash_point_fired_ns.zip(plan.crash_point.map(|point| point.node));
    let Some((loss_ns, lost)) = [planned, fired].into_iter().flatten().min_by_key(|(at_ns, _)| *at_ns) else {
        return false;
    };
    let holder = world.grants.iter().rfind(|grant| grant.at_ns < loss_ns);
    holder.is_some_and(|grant| grant.epoch >= 2 && grant.node == lost)
}
