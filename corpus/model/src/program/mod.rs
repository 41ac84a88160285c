//! The model guest's programs, as step functions over registers and memory, and the routines they share.
//!
//! A program is a set of labels (states). `step` runs the instruction at `(label, step)`, updates the registers
//! to point at the next one, and returns its effect on the machine. One call is one instruction, and an `IN` or
//! `OUT` instruction is the exit itself: its result (`registers.input`) is read by the next instruction.

mod cpu;
mod kv;
mod kvq;
mod timer;

use std::fmt;

use super::machine::Registers;
use super::memory::{Memory, CONSOLE_BUFFER, CONSOLE_LINE_BYTES_MAX, IRQ_EVENTS};
use super::workload::Workload;

/// What an instruction asks of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// An ordinary instruction.
    Continue,
    /// `OUT port, value` (4 bytes).
    Out { port: u16, value: u32 },
    /// `IN port` (4 bytes); the value arrives in `registers.input`.
    In { port: u16 },
    /// `STI; HLT`: interrupts are enabled and the machine waits for one.
    Halt,
    /// The machine is dead (powered off, or in a state no program defines).
    Shutdown,
}

/// The label of a machine that can run no further.
pub(crate) const DEAD: u32 = 1;
/// The shared wait routine: sleeps until one of `registers.wait_events` is set, then jumps to `registers.ret`.
pub(crate) const WAIT: u32 = 2;
/// Every program starts here; program labels are `BOOT..`.
pub(crate) const BOOT: u32 = 10;
/// `pc()` inside the interrupt handler starts here (no label reaches it).
pub(crate) const HANDLER_PC: u64 = 1 << 48;

pub(crate) fn step(workload: Workload, registers: &mut Registers, memory: &mut Memory) -> Effect {
    match registers.label {
        WAIT => wait(registers, memory),
        DEAD => Effect::Shutdown,
        _ => match workload {
            Workload::Kv => kv::step(registers, memory),
            Workload::KvPipelined => kvq::step(registers, memory),
            Workload::Timer { ticks_max } => timer::step(registers, memory, ticks_max),
            Workload::Cpu => cpu::step(registers, memory),
        },
    }
}

/// Runs up to `instructions_max` plain instructions (no exit, no interrupt check) at once where a program has a
/// tight compute loop; returns how many retired, 0 if the current instruction has no burst form. The caller
/// guarantees that no interrupt can be taken meanwhile, so the result equals that many single steps.
pub(crate) fn burst(workload: Workload, registers: &mut Registers, memory: &mut Memory, instructions_max: u64) -> u64 {
    match workload {
        Workload::Kv => kv::burst(registers, memory, instructions_max),
        Workload::KvPipelined => 0,
        Workload::Timer { .. } => timer::burst(registers, memory, instructions_max),
        Workload::Cpu => 0,
    }
}

/// Enters the shared wait routine.
pub(crate) fn wait_for(registers: &mut Registers, events: u32, ret: u32) {
    assert_ne!(events, 0);
    registers.wait_events = events;
    registers.ret = ret;
    registers.goto(WAIT);
}

/// Step 0 disables interrupts and tests the events; step 1 is `STI; HLT`. Testing with interrupts disabled
/// closes the race in which an event arrives between the test and the halt and the guest sleeps through it.
fn wait(registers: &mut Registers, memory: &Memory) -> Effect {
    if registers.step == 0 {
        if memory.u32(IRQ_EVENTS) & registers.wait_events != 0 {
            registers.interrupts_enabled = true;
            registers.goto(registers.ret);
            return Effect::Continue;
        }
        registers.interrupts_enabled = false;
        registers.step = 1;
        return Effect::Continue;
    }
    registers.interrupts_enabled = true;
    registers.step = 0;
    Effect::Halt
}

/// Tests and clears event bits in one instruction (atomic, since interrupts arrive only between instructions).
pub(crate) fn take_events(memory: &mut Memory, events: u32) -> u32 {
    let set = memory.u32(IRQ_EVENTS);
    memory.set_u32(IRQ_EVENTS, set & !events);
    set & events
}

/// Any label a program does not define: the machine is dead from now on.
pub(crate) fn die(registers: &mut Registers) -> Effect {
    registers.goto(DEAD);
    Effect::Shutdown
}

pub(crate) fn out(port: u16, value: u32) -> Effect {
    Effect::Out { port, value }
}

/// Formats a console line into [`CONSOLE_BUFFER`] (truncated to its capacity) and returns the buffer's address
/// for `OUT CONSOLE_WRITE`. One instruction, like a `rep movsb`.
pub(crate) fn console_line(memory: &mut Memory, args: fmt::Arguments<'_>) -> u32 {
    let mut line = Line { bytes: [0u8; CONSOLE_LINE_BYTES_MAX], len: 0 };
    // Line never fails: it truncates instead.
    let _ = fmt::write(&mut line, args);
    let len = u32::try_from(line.len).expect("a console line fits in u32");
    memory.set_u32(CONSOLE_BUFFER, len);
    memory.write(CONSOLE_BUFFER + 4, &line.bytes[..line.len]);
    gpa(CONSOLE_BUFFER)
}

/// A guest-physical address of the program's layout, as a port value. Addresses derive from guest state, which a
/// restored snapshot (or a corrupt peer, through the platform) can set to anything: one beyond 4 GiB becomes
/// `u32::MAX`, outside guest memory, which the platform refuses like any bad address instead of a panic here.
pub(crate) fn gpa(address: usize) -> u32 {
    u32::try_from(address).unwrap_or(u32::MAX)
}

struct Line {
    bytes: [u8; CONSOLE_LINE_BYTES_MAX],
    len: usize,
}

impl fmt::Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let room = self.bytes.len() - self.len;
        let taken = text.len().min(room);
        self.bytes[self.len..self.len + taken].copy_from_slice(&text.as_bytes()[..taken]);
        self.len += taken;
        Ok(())
    }
}
