//! S6 liveness: after the faults heal, exactly one live primary among the nodes still running, and the service
//! answers again. Not owed when both nodes may be lost (a second failure aimed at the survivor). A guest that
//! powered off owes the opposite: nobody live at the end.

use crate::check::Expectations;
use crate::world::World;

/// Time after healing within which service must have resumed.
pub const RESUME_WITHIN_NS: u64 = 2_000_000_000;

pub fn check(world: &mut World, expectations: &Expectations) {
    let live: Vec<_> = world
        .role
        .iter()
        .enumerate()
        .filter(|(index, role)| {
            !world.crashed[*index] && matches!(role, Some(ft::Role::Primary) | Some(ft::Role::Unprotected))
        })
        .map(|(index, _)| index)
        .collect();
    if world.powered_off.iter().any(|off| *off) {
        if !live.is_empty() {
            world.violation("S6 liveness", "the guest powered off, yet a node is still live");
        }
        return;
    }
    if !expectations.liveness {
        return;
    }
    if live.len() != 1 {
        world.violation("S6 liveness", format!("{} live primaries at the end, expected 1", live.len()));
    }
    let deadline_ns = expectations.heal_ns + RESUME_WITHIN_NS;
    let resumed = if expectations.kv_workload {
        world
            .history
            .iter()
            .any(|op| op.ok && op.completed_ns.is_some_and(|at| at > expectations.heal_ns && at <= deadline_ns))
    } else {
        world.releases.iter().any(|r| r.at_ns > expectations.heal_ns && r.at_ns <= deadline_ns)
    };
    if !resumed {
        world.violation("S6 liveness", format!("no service within {} ms of healing", RESUME_WITHIN_NS / 1_000_000));
    }
}
