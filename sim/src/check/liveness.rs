//! S6 liveness: after the faults heal, exactly one live primary among the nodes still running, and the service
//! answers again. Not owed when both nodes may be lost (a second failure aimed at the survivor). A guest that
//! powered off owes the opposite: nobody live at the end. Nor owed when, as the world saw it, both copies of the
//! guest were gone at once (`guest_survived`): a node lost while the other had no copy (it was restarted and had
//! not yet restored a clone) takes the guest with it, as a host lost while unprotected does in the paper.

use crate::check::Expectations;
use crate::world::{NodeId, World};

/// Whether some node held a copy of the guest at every moment, judged from what the world saw: both nodes start
/// with one; a node loses its copy when the nemesis crashes, bounces or freezes it (or a crash point fires), and
/// gets one back when it restores a clone's cut that a primary saved (hashes compared by `check::clones`).
pub fn guest_survived(world: &World) -> bool {
    // (time, 0 = a copy restored, 1 = a copy lost): at the same instant a restore comes first.
    let mut events: Vec<(u64, u8, NodeId)> = world.losses.iter().map(|(at_ns, node)| (*at_ns, 1, *node)).collect();
    events.extend(
        world
            .clone_restores
            .iter()
            .filter(|restore| world.cut_restored_by(restore))
            .map(|restore| (restore.at_ns, 0, restore.node)),
    );
    events.sort();
    let mut holds = [true, true];
    for (_, kind, node) in events {
        holds[node.index()] = kind == 0;
        if !holds.iter().any(|holds| *holds) {
            return false;
        }
    }
    true
}

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
