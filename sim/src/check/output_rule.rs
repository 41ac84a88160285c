//! S1 Output Rule: no output reaches the outside before the backup acknowledged the entry that produced it. A
//! release without a log entry is allowed only from a primary that won the arbiter and runs without a backup.

use crate::world::{Release, World};

pub fn on_release(world: &mut World, release: &Release) {
    let live_alone = world.role[release.node.index()] == Some(ft::Role::Unprotected)
        && release.epoch == world.arbiter_epoch
        && world.arbiter_owner == Some(release.node);
    if live_alone {
        return;
    }
    match release.log_index {
        Some(index) if index > world.backup_received_max => world.violation(
            "S1 output rule",
            format!(
                "{} released output #{} (log index {index}) but the backup has received only up to {}",
                release.node.host(),
                release.seq,
                world.backup_received_max
            ),
        ),
        Some(_) => {}
        None => {
            world.violation(
                "S1 output rule",
                format!(
                    "{} released output #{} unlogged while not the live primary of epoch {} (holds {})",
                    release.node.host(),
                    release.seq,
                    world.arbiter_epoch,
                    release.epoch
                ),
            );
        }
    }
}
