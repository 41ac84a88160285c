//! S5 the two guests are in the same state at the same position. The checker hashes both guests itself (see
//! `hashtap.rs`) instead of trusting the backup's verdict on the primary's checkpoints. Hashes are compared
//! within a lineage (the log a pair shares): a backup that goes live starts a lineage of its own, and so does
//! a re-protected pair, so positions of different executions are never compared.

use crate::world::World;

pub fn check(world: &mut World) {
    let mut compared = 0;
    let mut first_difference = None;
    for ((lineage, exits), [a, b]) in &world.hashes {
        let (Some(a), Some(b)) = (a, b) else { continue };
        compared += 1;
        if a != b && first_difference.is_none() {
            first_difference = Some((*lineage, *exits, *a, *b));
        }
    }
    world.counts.hashes_compared += compared;
    if let Some((lineage, exits, (a_position, a_hash), (b_position, b_hash))) = first_difference {
        world.violation(
            "S5 state hashes",
            format!(
                "at exit {exits} of lineage {lineage} the guests differ: host-a at {a_position} has {a_hash:016x}, host-b at {b_position} has {b_hash:016x}"
            ),
        );
    }
}
