//! Architecture set-up done by the VMM before the first instruction.

pub mod x86_64;
