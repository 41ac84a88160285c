//! S4 the backup receives and applies the log in order, without gaps or duplicates, and its buffer stays within
//! its bound.

use crate::world::World;

pub fn on_log_received(world: &mut World, index: u64) {
    if index != world.backup_received_max + 1 {
        world.violation("S4 in-order replay", format!("log index {index} after {}", world.backup_received_max));
    }
    world.backup_received_max = world.backup_received_max.max(index);
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
