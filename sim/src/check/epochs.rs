//! S3 at most one live primary per epoch, and only through the test-and-set.

use crate::world::{NodeId, World};

pub fn on_went_live(world: &mut World, node: NodeId, epoch: u64) {
    let live = world.live.get(&epoch).map_or(0, Vec::len);
    if live > 1 {
        world.violation("S3 one primary per epoch", format!("{} nodes went live in epoch {epoch}", live));
    }
    if world.arbiter_epoch != epoch || world.arbiter_owner != Some(node) {
        world.violation(
            "S3 one primary per epoch",
            format!(
                "{} went live in epoch {epoch} but the arbiter holds {} for {:?}",
                node.host(),
                world.arbiter_epoch,
                world.arbiter_owner
            ),
        );
    }
}
