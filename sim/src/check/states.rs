//! S5 the two guests are in the same state at the same position. The checker hashes both guests itself (see
//! `hashtap.rs`) instead of trusting the backup's verdict on the primary's checkpoints. Positions after the
//! backup went live belong to its own execution, no longer to the old primary's, and are not compared.

use crate::world::{NodeId, World};

pub fn check(world: &mut World) {
    let limit = world.went_live_at[NodeId::B.index()].map_or(u64::MAX, |position| position.exits);
    let mut compared = 0;
    let mut first_difference = None;
    for (exits, [a, b]) in world.hashes.range(..=limit) {
        let (Some(a), Some(b)) = (a, b) else { continue };
        compared += 1;
        if a != b && first_difference.is_none() {
            first_difference = Some((*exits, *a, *b));
        }
    }
    world.counts.hashes_compared += compared;
    if let Some((exits, (a_position, a_hash), (b_position, b_hash))) = first_difference {
        world.violation(
            "S5 state hashes",
            format!(
                "at exit {exits} the guests differ: host-a at {a_position} has {a_hash:016x}, host-b at {b_position} has {b_hash:016x}"
            ),
        );
    }
}
