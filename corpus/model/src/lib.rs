//! The model guest: a small deterministic machine that implements [`ft::Guest`] and counts instructions.
//!
//! The simulator needs a guest that runs hundreds of scenarios a minute, that can stop at any instruction (so an
//! interrupt lands at an exact position, as the paper's branch counter allows), and that speaks the same guest
//! ABI ([`ft::abi`]) as the KVM guests, so the platform layer that emulates devices is shared by both.
//!
//! The machine is a register file, [`MEMORY_BYTES`] of byte-addressed memory, and an interrupt controller with a
//! pending bitmask. Programs are Rust step functions: one call retires one instruction. All program state lives
//! in the registers and in guest memory, so a snapshot is exactly "registers + pending + memory", and the state
//! hash covers everything that could make two replicas diverge.
//!
//! Taking an interrupt runs a four-instruction handler (interrupts disabled) whose first instruction mixes the
//! exact instruction count and the vector into an accumulator in memory: delivering at instruction N or N + 1
//! gives different state hashes, so an off-by-one in the protocol's delivery position cannot go unnoticed.

#[doc(hidden)]
pub mod fuzzing;
mod interrupt;
mod machine;
mod memory;
mod program;
mod snapshot;
mod workload;

#[cfg(test)]
mod tests;

pub use interrupt::HANDLER_INSTRUCTIONS;
pub use machine::ModelGuest;
pub use memory::MEMORY_BYTES;
pub use workload::Workload;

/// A 64-bit finaliser (MurmurHash3's `fmix64`): every input bit flips about half of the output bits, so folding
/// an instruction count through it makes an off-by-one visible in the state hash.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}
