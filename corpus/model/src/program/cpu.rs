//! A CPU-bound program: a sieve of Eratosthenes below [`LIMIT`], one memory operation per instruction, with an
//! `OUT YIELD` every [`YIELD_EVERY_INSTRUCTIONS`] so pending interrupts get a chance. Prints
//! "cpu: 3512 primes below 32768, checksum=<hex>" and powers off with status 0 (about 105 000 instructions).

use ft::abi;

use super::super::machine::Registers;
use super::super::memory::Memory;
use super::super::mix64;
use super::{console_line, die, out, Effect, BOOT, DEAD};

const SIEVE: usize = 0x4000; // one byte per number: 1 = composite
const LIMIT: u64 = 32_768;
const YIELD_EVERY_INSTRUCTIONS: u64 = 1_000;

const _: () = assert!(SIEVE + LIMIT as usize <= super::super::memory::MEMORY_BYTES);

// Labels.
const OUTER: u32 = BOOT + 1;
const MARK: u32 = BOOT + 2;
const COUNT: u32 = BOOT + 3;
const PRINT: u32 = BOOT + 4;
const OFF: u32 = BOOT + 5;

// Registers.
const PRIME_REGISTER: usize = 0;
const MULTIPLE_REGISTER: usize = 1;
const COUNT_REGISTER: usize = 2;
const CHECKSUM_REGISTER: usize = 3;
const SINCE_YIELD_REGISTER: usize = 4;
const LINE_REGISTER: usize = 5;

pub(crate) fn step(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if matches!(registers.label, OUTER | MARK | COUNT) {
        registers.r[SINCE_YIELD_REGISTER] = registers.r[SINCE_YIELD_REGISTER].wrapping_add(1);
        if registers.r[SINCE_YIELD_REGISTER] >= YIELD_EVERY_INSTRUCTIONS {
            // This instruction is the yield; the label's own instruction runs next.
            registers.r[SINCE_YIELD_REGISTER] = 0;
            return out(abi::YIELD, 0);
        }
    }
    match registers.label {
        BOOT => {
            registers.r[PRIME_REGISTER] = 2;
            registers.goto(OUTER);
        }
        OUTER => outer(registers, memory),
        MARK => {
            let multiple = registers.r[MULTIPLE_REGISTER];
            memory.set_u8(SIEVE.wrapping_add(multiple as usize), 1);
            let next = multiple.wrapping_add(registers.r[PRIME_REGISTER]);
            registers.r[MULTIPLE_REGISTER] = next;
            if next >= LIMIT {
                registers.r[PRIME_REGISTER] = prime_next(registers);
                registers.goto(OUTER);
            }
        }
        COUNT => count(registers, memory),
        PRINT => return print(registers, memory),
        OFF => {
            registers.goto(DEAD);
            return out(abi::POWER_OFF, 0);
        }
        _ => return die(registers),
    }
    Effect::Continue
}

fn outer(registers: &mut Registers, memory: &Memory) {
    let prime = registers.r[PRIME_REGISTER];
    if prime.saturating_mul(prime) >= LIMIT {
        registers.r[MULTIPLE_REGISTER] = 2;
        registers.goto(COUNT);
    } else if memory.u8(SIEVE.wrapping_add(prime as usize)) == 0 {
        registers.r[MULTIPLE_REGISTER] = prime * prime;
        registers.goto(MARK);
    } else {
        registers.r[PRIME_REGISTER] = prime_next(registers);
    }
}

fn prime_next(registers: &Registers) -> u64 {
    registers.r[PRIME_REGISTER].wrapping_add(1)
}

fn count(registers: &mut Registers, memory: &Memory) {
    let number = registers.r[MULTIPLE_REGISTER];
    if memory.u8(SIEVE.wrapping_add(number as usize)) == 0 {
        registers.r[COUNT_REGISTER] = registers.r[COUNT_REGISTER].wrapping_add(1);
        registers.r[CHECKSUM_REGISTER] = mix64(registers.r[CHECKSUM_REGISTER] ^ number);
    }
    registers.r[MULTIPLE_REGISTER] = number.wrapping_add(1);
    if number.wrapping_add(1) >= LIMIT {
        registers.goto(PRINT);
    }
}

fn print(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step == 0 {
        let count = registers.r[COUNT_REGISTER];
        let checksum = registers.r[CHECKSUM_REGISTER];
        let line = format_args!("cpu: {count} primes below {LIMIT}, checksum={checksum:016x}\n");
        registers.r[LINE_REGISTER] = u64::from(console_line(memory, line));
        registers.step = 1;
        return Effect::Continue;
    }
    registers.goto(OFF);
    out(abi::CONSOLE_WRITE, registers.r[LINE_REGISTER] as u32)
}
