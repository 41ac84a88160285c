//! The interrupt controller and the handler every program shares.
//!
//! Pending vectors are a 256-bit request register, like the local APIC's IRR: raising a vector that is already
//! pending coalesces, and the highest vector is delivered first. Delivery happens at an instruction boundary
//! where interrupts are enabled and no handler is running; the handler then retires
//! [`HANDLER_INSTRUCTIONS`] instructions with interrupts disabled, so a run can stop in the middle of it.

use super::machine::Core;
use super::memory::{event_bit, Memory, IRQ_ACCUMULATOR, IRQ_COUNT, IRQ_EVENTS};
use super::mix64;

/// Instructions retired by the interrupt handler, from delivery to the return that re-enables interrupts.
pub const HANDLER_INSTRUCTIONS: u8 = 4;

/// Vectors raised but not yet delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) words: [u64; 4],
}

impl Pending {
    pub(crate) fn raise(&mut self, vector: u8) {
        self.words[usize::from(vector / 64)] |= 1 << (vector % 64);
        assert!(self.any());
    }

    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.words != [0; 4]
    }

    /// Removes and returns the highest pending vector.
    fn take_highest(&mut self) -> Option<u8> {
        for (index, word) in self.words.iter_mut().enumerate().rev() {
            if *word != 0 {
                let bit = 63 - word.leading_zeros();
                *word &= !(1 << bit);
                let vector = index * 64 + bit as usize;
                return Some(u8::try_from(vector).expect("a 256-bit register holds vectors 0..=255"));
            }
        }
        None
    }
}

/// The handler in progress, if any. While `active`, interrupts are disabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Handler {
    pub(crate) active: bool,
    pub(crate) vector: u8,
    /// Next handler instruction, `0..HANDLER_INSTRUCTIONS`.
    pub(crate) step: u8,
}

/// Delivers the highest pending vector: disables interrupts and points execution at the handler. Retires no
/// instruction itself; the handler's first instruction runs next, at the same instruction count.
pub(crate) fn deliver(core: &mut Core) {
    assert!(!core.handler.active);
    assert!(core.registers.interrupts_enabled);
    let Some(vector) = core.pending.take_highest() else {
        return;
    };
    core.handler = Handler { active: true, vector, step: 0 };
    core.registers.interrupts_enabled = false;
}

/// Retires one handler instruction. The caller counts it.
pub(crate) fn step(core: &mut Core, memory: &mut Memory) {
    assert!(core.handler.active);
    assert!(!core.registers.interrupts_enabled);
    let vector = core.handler.vector;
    match core.handler.step {
        0 => {
            // The exact delivery position goes into guest state: replay must deliver at the same instruction.
            let accumulator = memory.u64(IRQ_ACCUMULATOR);
            let delivery = mix64(core.instructions ^ (u64::from(vector) << 56));
            memory.set_u64(IRQ_ACCUMULATOR, mix64(accumulator ^ delivery));
        }
        1 => memory.set_u64(IRQ_COUNT, memory.u64(IRQ_COUNT).wrapping_add(1)),
        2 => memory.set_u32(IRQ_EVENTS, memory.u32(IRQ_EVENTS) | event_bit(vector)),
        _ => {
            // The return from interrupt.
            core.handler = Handler::default();
            core.registers.interrupts_enabled = true;
            return;
        }
    }
    core.handler.step += 1;
    assert!(core.handler.step < HANDLER_INSTRUCTIONS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_coalesces_and_delivers_highest_first() {
        let mut pending = Pending::default();
        assert!(!pending.any());
        pending.raise(0x20);
        pending.raise(0x22);
        pending.raise(0x22);
        pending.raise(0xff);
        pending.raise(0);
        assert_eq!(pending.take_highest(), Some(0xff));
        assert_eq!(pending.take_highest(), Some(0x22));
        assert_eq!(pending.take_highest(), Some(0x20));
        assert_eq!(pending.take_highest(), Some(0));
        assert_eq!(pending.take_highest(), None);
        assert!(!pending.any());
    }
}
