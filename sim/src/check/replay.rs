//! S4 the backup receives and applies the log in order, without gaps or duplicates, and its buffer stays within
//! its bound.

use crate::world::World;

/// A backup received entry `index` of the log of `lineage` (each re-protection starts a log of its own).
pub fn on_log_received(world: &mut World, lineage: u64, index: u64) {
    let received = world.backup_received_max.get(&lineage).copied().unwrap_or(0);
    if index != received + 1 {
        world.violation("S4 in-order replay", format!("log index {index} after {received} (lineage {lineage})"));
    }
    world.backup_received_max.insert(lineage, received.max(index));
}

pub fn on_ack(world: &mut World, received: u64, replayed: u64, buffered_max: usize) {
    if replayed > received {
        world.violation("S4 in-order replay", format!("replayed {replayed} beyond received {received}"));
    }
    if (received - replayed.min(received)) as usize > buffered_max {
        world.violation(
            "S4 in-order replay",
            format!("lag of {} entries beyond the buffer bound {buffered_max}", received - replayed),
        );
    }
}
