//! S2 on the disk: after the run, every kv record sector holds the newest version that ever landed on it. A
//! write that overtook a newer one and stayed (a late attempt, a reissue out of order) leaves an older version.
//! (Within one epoch, storage checks every landing as it happens: `storage_host::write`.)

use crate::storage_host::record_version;
use crate::world::World;

pub fn check(world: &mut World) {
    let mut problems = Vec::new();
    for (sector, newest) in &world.record_max {
        let now = world.sectors.get(sector).and_then(|bytes| record_version(bytes));
        if now != Some(*newest) {
            problems.push(format!("sector {sector} holds record version {now:?}, but version {newest} landed there"));
        }
    }
    for problem in problems {
        world.violation("S2 disk order", problem);
    }
}
