//! What the `model_snapshot` fuzz target does with its input, here so that the inputs it once crashed on replay
//! on stable through the very same steps (`tests/fuzz_regressions.rs`).

use ft::{Exit, Guest};

use crate::snapshot::{CHECKSUM_BYTES, CORE_BYTES, CPU_BYTES, HEADER_BYTES};
use crate::{ModelGuest, Workload};

/// The input's first byte picks the workload; the rest replaces the core (registers, interrupt and counter
/// state) of a real snapshot, which is re-sealed with a valid checksum so that the field checks are reached. A
/// snapshot that restores must then run without a panic (a crafted state must not reach an assert).
pub fn restore_and_run(input: &[u8]) {
    let Some((&workload, core)) = input.split_first() else { return };
    let workload = [Workload::Kv, Workload::KvPipelined, Workload::Timer { ticks_max: None }, Workload::Cpu]
        [usize::from(workload) % 4];
    let mut guest = ModelGuest::new(workload);
    let mut snapshot = guest.snapshot().expect("a snapshot of a fresh guest");
    let take = core.len().min(CORE_BYTES);
    snapshot[HEADER_BYTES..HEADER_BYTES + take].copy_from_slice(&core[..take]);
    let body = snapshot.len() - CHECKSUM_BYTES;
    let checksum = xxhash_rust::xxh3::xxh3_64(&snapshot[..body]);
    snapshot[body..].copy_from_slice(&checksum.to_le_bytes());
    if guest.restore(&snapshot).is_err() {
        return;
    }
    if guest.pending_port_in().is_some() {
        guest.complete_port_in(0);
    }
    let start = guest.position().instructions;
    for _ in 0..64 {
        match guest.run(Some(start + 10_000)) {
            Ok(Exit::PortIn { .. }) => guest.complete_port_in(0),
            Ok(Exit::InstructionLimit | Exit::Shutdown) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// What the `model_cpu_state` fuzz target does: a clone's CPU state from outside (the cut a joiner restores). The
/// input's first byte picks the workload; the rest replaces the core of a real CPU state, re-sealed with a valid
/// checksum so that the field checks are reached. A state that restores must then run without a panic.
pub fn restore_cpu_and_run(input: &[u8]) {
    let Some((&workload, core)) = input.split_first() else { return };
    let workload = [Workload::Kv, Workload::KvPipelined, Workload::Timer { ticks_max: None }, Workload::Cpu]
        [usize::from(workload) % 4];
    let mut guest = ModelGuest::new(workload);
    let mut cpu = guest.save_cpu().expect("the CPU state of a fresh guest");
    assert_eq!(cpu.len(), CPU_BYTES);
    let take = core.len().min(CORE_BYTES);
    cpu[HEADER_BYTES..HEADER_BYTES + take].copy_from_slice(&core[..take]);
    let body = cpu.len() - CHECKSUM_BYTES;
    let checksum = xxhash_rust::xxh3::xxh3_64(&cpu[..body]);
    cpu[body..].copy_from_slice(&checksum.to_le_bytes());
    let mut joiner = ModelGuest::new(workload);
    if joiner.restore_cpu(&cpu).is_err() {
        return;
    }
    if joiner.pending_port_in().is_some() {
        joiner.complete_port_in(0);
    }
    let start = joiner.position().instructions;
    for _ in 0..64 {
        match joiner.run(Some(start + 10_000)) {
            Ok(Exit::PortIn { .. }) => joiner.complete_port_in(0),
            Ok(Exit::InstructionLimit | Exit::Shutdown) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
