//! S1 Output Rule: no output reaches the outside before the backup acknowledged the log entry that produced it.
//! Both halves come from the backup's driver: the index at which it received the output's record and the acks it
//! sent; the releasing node's own idea of the index is not believed. An output the backup never received may leave
//! only from a primary alone: the node that holds the arbiter's newest grant, won by a test-and-set, and that
//! has not sent a clone's cut in that epoch (from the cut on, the re-protected pair's backup must have it).
//!
//! Logs come in lineages: the pair's first (epoch 1), and one per re-protection (the epoch of its enlisting
//! grant). A release is checked against the lineage of the releasing node's newest grant. A disk write from
//! before a cut, which the cut carried to the new backup (`CloneWrite`), needs no ack: it was produced alone.

use crate::world::{Release, World};

pub fn on_release(world: &mut World, release: &Release) {
    let newest = world.newest_grant();
    let own = world.grants.iter().rev().find(|grant| grant.node == release.node && grant.at_ns <= release.at_ns);
    let lineage = own.map_or(1, |grant| grant.epoch);
    let cut_sent =
        world.cuts_sent.get(&lineage).is_some_and(|(node, at_ns)| *node == release.node && *at_ns <= release.at_ns);
    // A primary that won the arbiter runs alone until it sends a cut: what it held leaves now, logged or not.
    let alone = newest.node == release.node && newest.epoch >= 2 && lineage == newest.epoch && !cut_sent;
    // A disk write from before the cut, which the cut carried to the new backup, leaves when storage takes it.
    if alone || world.clone_writes.contains(&(lineage, release.seq)) {
        return;
    }
    let acked = world.backup_acked_max.get(&lineage).copied().unwrap_or(0);
    match world.backup_logged_index.get(&(lineage, release.seq)).copied() {
        Some(index) if index > acked => world.violation(
            "S1 output rule",
            format!(
                "{} released output #{} (log index {index} of lineage {lineage}) but the backup has acknowledged only up to {acked}",
                release.node.host(),
                release.seq,
            ),
        ),
        Some(_) => {}
        None => world.violation(
            "S1 output rule",
            format!(
                "{} released output #{}, which the backup of lineage {lineage} never received, but the arbiter's newest grant is epoch {} to {}{}",
                release.node.host(),
                release.seq,
                newest.epoch,
                newest.node.host(),
                if cut_sent { " and a clone's cut made the pair protected again" } else { "" }
            ),
        ),
    }
}
