//! S1 Output Rule: no output reaches the outside before the backup acknowledged the log entry that produced it.
//! Both halves come from the backup's driver: the index at which it received the output's record and the acks it
//! sent; the releasing node's own idea of the index is not believed. An output the backup never received may leave
//! only from the node that holds the arbiter's newest grant, won by a test-and-set (a primary alone).

use crate::world::{Release, World};

pub fn on_release(world: &mut World, release: &Release) {
    let grant = world.newest_grant();
    // A primary that won the arbiter runs alone: what it held for its backup leaves now, logged or not.
    let alone = grant.node == release.node && grant.epoch >= 2;
    match world.backup_logged_index.get(&release.seq).copied() {
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
                "{} released output #{}, which the backup never received, but the arbiter's newest grant is epoch {} to {}",
                release.node.host(),
                release.seq,
                grant.epoch,
                grant.node.host()
            ),
        ),
    }
}
