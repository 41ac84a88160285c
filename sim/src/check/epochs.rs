//! S3 at most one live primary per epoch, and only through the test-and-set: the arbiter's grants are the
//! ground truth. A node that claims to go live must hold the grant of that epoch, no epoch is claimed twice,
//! and the outputs that left unlogged in one epoch all came from one node.

use std::collections::BTreeMap;

use crate::world::{NodeId, World};

pub fn on_went_live(world: &mut World, node: NodeId, epoch: u64) {
    let claims = world.live.get(&epoch).map_or(0, Vec::len);
    if claims > 1 {
        world.violation("S3 one primary per epoch", format!("{claims} nodes went live in epoch {epoch}"));
    }
    if !world.grants.iter().any(|grant| grant.epoch == epoch && grant.node == node) {
        world.violation(
            "S3 one primary per epoch",
            format!("{} went live in epoch {epoch}, which the arbiter never granted it", node.host()),
        );
    }
}

/// Outputs that left without a log entry, grouped by the epoch that was newest when they left; and no grant
/// after the backup had the primary's goodbye (a clean power-off leaves nobody to go live).
pub fn check(world: &mut World) {
    if let Some(goodbye_ns) = world.goodbye_received_ns {
        let late: Vec<_> = world.grants.iter().filter(|grant| grant.at_ns > goodbye_ns).copied().collect();
        for grant in late {
            world.violation(
                "S3 one primary per epoch",
                format!(
                    "the arbiter granted epoch {} to {} after the backup had the primary's goodbye: a clean \
                     power-off was taken for a failure",
                    grant.epoch,
                    grant.node.host()
                ),
            );
        }
    }
    let mut sources: BTreeMap<u64, Vec<NodeId>> = BTreeMap::new();
    for release in world.releases.iter().filter(|release| release.log_index.is_none()) {
        let epoch = world.grants.iter().rev().find(|grant| grant.at_ns <= release.at_ns).map_or(1, |g| g.epoch);
        let nodes = sources.entry(epoch).or_default();
        if !nodes.contains(&release.node) {
            nodes.push(release.node);
        }
    }
    for (epoch, nodes) in sources {
        if nodes.len() > 1 {
            world.violation(
                "S3 one primary per epoch",
                format!("unprotected outputs from {} nodes while epoch {epoch} was the newest", nodes.len()),
            );
        }
    }
}
