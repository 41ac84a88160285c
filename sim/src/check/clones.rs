//! S7 re-protection: a joiner's guest, restored at a clone's cut, is the primary's guest at the cut (the checker
//! hashes both itself, `hashtap.rs`, instead of trusting the joiner's comparison); and after the faults heal, a
//! pair that lost a node to a restart is protected again (the restarted node is the live primary's backup).

use crate::check::Expectations;
use crate::world::World;

pub fn check(world: &mut World, expectations: &Expectations) {
    for restore in world.clone_restores.clone() {
        if !world.cut_restored_by(&restore) {
            world.violation(
                "S7 clone state",
                format!(
                    "{} restored a cut at {} with state {:016x}, which no primary had at a cut",
                    restore.node.host(),
                    restore.position,
                    restore.hash
                ),
            );
        }
    }
    let restarted = world.restarts.iter().any(|count| *count > 0);
    let powered_off = world.powered_off.iter().any(|off| *off);
    // A node lost for good at a crash point cannot come back to protect the pair.
    let lost_for_good = world.crash_point_fired_ns.is_some();
    if !expectations.liveness || !restarted || powered_off || lost_for_good {
        return;
    }
    let roles: Vec<_> =
        world.role.iter().enumerate().filter(|(index, _)| !world.crashed[*index]).map(|(_, r)| *r).collect();
    let protected = roles.contains(&Some(ft::Role::Primary)) && roles.contains(&Some(ft::Role::Backup));
    if !protected {
        world.violation(
            "S7 protected again",
            format!(
                "a node was restarted, yet {} ms after healing the pair is not protected (roles {roles:?})",
                (expectations.end_ns - expectations.heal_ns) / 1_000_000
            ),
        );
    }
}
