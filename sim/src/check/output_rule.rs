//! S1 Output Rule: no output reaches the outside before the backup acknowledged the log entry that produced it
//! (what the backup's driver sent, not what the primary believes). An output without a log entry may leave
//! only from the node that holds the arbiter's newest grant, won by a test-and-set (a primary alone).

use crate::world::{Release, World};

pub fn on_release(world: &mut World, release: &Release) {
    let grant = world.newest_grant();
    // A primary that won the arbiter runs alone: what it held for its backup leaves now, logged or not.
    let alone = grant.node == release.node && grant.epoch >= 2;
    match release.log_index {
        _ if alone => {}
        Some(index) if index > world.backup_acked_max => world.violation(
            "S1 output rule",
            format!(
                "{} released output #{} (log index {index}) but the backup has acknowledged only up to {}",
                release.node.host(),
                release.seq,
                world.backup_acked_max
            ),
        ),
        Some(_) => {}
        None => world.violation(
            "S1 output rule",
            format!(
                "{} released output #{} unlogged, but the arbiter's newest grant is epoch {} to {}",
                release.node.host(),
                release.seq,
                grant.epoch,
                grant.node.host()
            ),
        ),
    }
}
