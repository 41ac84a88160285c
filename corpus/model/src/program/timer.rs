//! A timer, clock and entropy heavy program.
//!
//! A 1 ms periodic timer; between ticks, compute chunks of [`CHUNK_INSTRUCTIONS`] each followed by `OUT YIELD`.
//! Each tick reads the clock (both halves) and entropy, folds them into a digest, and draws how many chunks to
//! run before sleeping until the next tick (1 to 4), so the guest alternates between CPU-bound and idle.
//! Prints "tick N digest=<hex>" every [`PRINT_EVERY_TICKS`] ticks; powers off after `ticks_max` ticks, if given.

use ft::abi;

use super::super::machine::Registers;
use super::super::memory::{Memory, EVENT_TIMER, PROGRAM_VARIABLES};
use super::super::mix64;
use super::{console_line, die, out, take_events, wait_for, Effect, BOOT, DEAD};

const TICKS: usize = PROGRAM_VARIABLES; // u64
const DIGEST: usize = PROGRAM_VARIABLES + 0x08; // u64
const BUDGET: usize = PROGRAM_VARIABLES + 0x10; // u64: chunks left before sleeping
const SCRATCH: usize = 0x1000;
const SCRATCH_WORDS: usize = 1024;

const _: () = assert!(SCRATCH + SCRATCH_WORDS * 8 <= super::super::memory::MEMORY_BYTES);

const TIMER_PERIOD_US: u32 = 1_000;
/// Compute instructions between two `OUT YIELD`s.
pub(crate) const CHUNK_INSTRUCTIONS: u32 = 500;
const PRINT_EVERY_TICKS: u64 = 100;
const COMPUTE_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

// Labels.
const CHUNK: u32 = BOOT + 1;
const CHECK: u32 = BOOT + 2;
const TICK_ACK: u32 = BOOT + 3;
const TICK: u32 = BOOT + 4;
const PRINT: u32 = BOOT + 5;
const OFF: u32 = BOOT + 6;

// Registers.
const COMPUTE_REGISTER: usize = 0;
const CLOCK_REGISTER: usize = 1;
const LINE_REGISTER: usize = 2;

pub(crate) fn step(registers: &mut Registers, memory: &mut Memory, ticks_max: Option<u64>) -> Effect {
    match registers.label {
        BOOT => {
            memory.set_u64(BUDGET, 1);
            // A xorshift state of zero stays zero.
            registers.r[COMPUTE_REGISTER] = COMPUTE_SEED;
            registers.goto(CHUNK);
            out(abi::TIMER_PERIOD_US, TIMER_PERIOD_US)
        }
        CHUNK => chunk(registers, memory),
        CHECK => check(registers, memory),
        TICK_ACK => {
            let next = if take_events(memory, EVENT_TIMER) != 0 { TICK } else { CHECK };
            registers.goto(next);
            Effect::Continue
        }
        TICK => tick(registers, memory, ticks_max),
        PRINT => print(registers, memory, ticks_max),
        OFF => {
            registers.goto(DEAD);
            out(abi::POWER_OFF, 0)
        }
        _ => die(registers),
    }
}

/// One word of a xorshift-and-mix walk over the scratch array per instruction, then `OUT YIELD`.
fn chunk(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step >= CHUNK_INSTRUCTIONS {
        registers.goto(CHECK);
        return out(abi::YIELD, 0);
    }
    registers.r[COMPUTE_REGISTER] = chunk_word(memory, registers.step, registers.r[COMPUTE_REGISTER]);
    registers.step = registers.step.wrapping_add(1);
    Effect::Continue
}

#[inline(always)]
fn chunk_word(memory: &mut Memory, step: u32, compute: u64) -> u64 {
    let at = SCRATCH + (step as usize % SCRATCH_WORDS) * 8;
    let mut value = compute ^ memory.u64(at);
    value ^= value << 13;
    value ^= value >> 7;
    value ^= value << 17;
    memory.set_u64(at, value);
    value
}

/// Up to `instructions_max` compute instructions of a chunk at once, exactly as many single steps would run
/// them; returns how many retired (0 outside a chunk's compute part).
pub(crate) fn burst(registers: &mut Registers, memory: &mut Memory, instructions_max: u64) -> u64 {
    if registers.label != CHUNK || registers.step >= CHUNK_INSTRUCTIONS {
        return 0;
    }
    let count = u64::from(CHUNK_INSTRUCTIONS - registers.step).min(instructions_max);
    let mut compute = registers.r[COMPUTE_REGISTER];
    let mut step = registers.step;
    for _ in 0..count {
        compute = chunk_word(memory, step, compute);
        step += 1;
    }
    registers.r[COMPUTE_REGISTER] = compute;
    registers.step = step;
    assert!(registers.step <= CHUNK_INSTRUCTIONS);
    count
}

/// After a chunk: serve a tick if one came, else run another chunk or sleep until the next tick.
fn check(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if take_events(memory, EVENT_TIMER) != 0 {
        registers.goto(TICK);
        return Effect::Continue;
    }
    let budget = memory.u64(BUDGET).saturating_sub(1);
    memory.set_u64(BUDGET, budget);
    if budget > 0 {
        registers.goto(CHUNK);
    } else {
        wait_for(registers, EVENT_TIMER, TICK_ACK);
    }
    Effect::Continue
}

fn tick(registers: &mut Registers, memory: &mut Memory, ticks_max: Option<u64>) -> Effect {
    match registers.step {
        0 => {
            memory.set_u64(TICKS, memory.u64(TICKS).wrapping_add(1));
            registers.step = 1;
            Effect::In { port: abi::CLOCK_LO }
        }
        1 => {
            registers.r[CLOCK_REGISTER] = u64::from(registers.input);
            registers.step = 2;
            Effect::In { port: abi::CLOCK_HI }
        }
        2 => {
            registers.r[CLOCK_REGISTER] |= u64::from(registers.input) << 32;
            registers.step = 3;
            Effect::In { port: abi::ENTROPY }
        }
        _ => {
            let entropy = u64::from(registers.input);
            let digest = memory.u64(DIGEST) ^ registers.r[CLOCK_REGISTER] ^ registers.r[COMPUTE_REGISTER];
            memory.set_u64(DIGEST, mix64(mix64(digest) ^ entropy));
            memory.set_u64(BUDGET, 1 + entropy % 4);
            registers.r[COMPUTE_REGISTER] ^= entropy << 1 | 1;
            if memory.u64(TICKS).is_multiple_of(PRINT_EVERY_TICKS) {
                registers.goto(PRINT);
            } else {
                finish_tick(registers, memory, ticks_max);
            }
            Effect::Continue
        }
    }
}

fn finish_tick(registers: &mut Registers, memory: &Memory, ticks_max: Option<u64>) {
    let done = ticks_max.is_some_and(|ticks_max| memory.u64(TICKS) >= ticks_max);
    registers.goto(if done { OFF } else { CHUNK });
}

fn print(registers: &mut Registers, memory: &mut Memory, ticks_max: Option<u64>) -> Effect {
    if registers.step == 0 {
        let ticks = memory.u64(TICKS);
        let digest = memory.u64(DIGEST);
        let line = console_line(memory, format_args!("tick {ticks} digest={digest:016x}\n"));
        registers.r[LINE_REGISTER] = u64::from(line);
        registers.step = 1;
        return Effect::Continue;
    }
    finish_tick(registers, memory, ticks_max);
    out(abi::CONSOLE_WRITE, registers.r[LINE_REGISTER] as u32)
}
