//! Where in a guest's execution something happened.
//!
//! Without a PMU (see docs/architecture.md) the only deterministic clock a KVM guest has is the count of
//! guest-initiated exits, so that is the primary coordinate. Machines that can count instructions (the model
//! guest, or a future PMU-backed backend) add an instruction count, which lets an interrupt land between two
//! exits exactly as the paper's branch-counter positioning does.

use serde::{Deserialize, Serialize};

/// A point in a guest's deterministic execution. Ordered by exits, then instructions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Guest-initiated exits completed so far.
    pub exits: u64,
    /// Instructions retired so far, or 0 on machines that cannot count them.
    pub instructions: u64,
}

impl Position {
    pub const ZERO: Position = Position { exits: 0, instructions: 0 };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.instructions == 0 {
            write!(f, "exit {}", self.exits)
        } else {
            write!(f, "exit {}+{} insns", self.exits, self.instructions)
        }
    }
}
