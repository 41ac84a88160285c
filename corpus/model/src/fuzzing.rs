//! What the `model_snapshot` fuzz target does with its input, here so that the inputs it once crashed on replay
//! on stable through the very same steps (`tests/fuzz_regressions.rs`).

use ft::{Exit, Guest};

use crate::snapshot::{CHECKSUM_BYTES, CORE_BYTES, CPU_BYTES, HEADER_BYTES};
use crate::{ModelGuest, Workload};

/// The input's first byte picks the workload; the rest replaces the core (registers, interrupt and counter
/// state) of a real snapshot, which is re-sealed with a valid checksum so that the field checks are reached. A
/// snapshot that restores must then run without a panic (a crafted state must not reach an assert).
pub fn restore_and_run(input: &[u8]) {
    let Some((workload, core)) = split(input) else { return };
    let mut guest = ModelGuest::new(workload);
    let snapshot = resealed(guest.snapshot().expect("a snapshot of a fresh guest"), core);
    if guest.restore(&snapshot).is_ok() {
        run_briefly(&mut guest);
    }
}

/// What the `model_cpu_state` fuzz target does: a clone's CPU state from outside (the cut a joiner restores),
/// made as `restore_and_run` makes its snapshot, restored into a fresh guest, which must then run without a panic.
pub fn restore_cpu_and_run(input: &[u8]) {
    let Some((workload, core)) = split(input) else { return };
    let cpu = ModelGuest::new(workload).save_cpu().expect("the CPU state of a fresh guest");
    assert_eq!(cpu.len(), CPU_BYTES);
    let mut joiner = ModelGuest::new(workload);
    if joiner.restore_cpu(&resealed(cpu, core)).is_ok() {
        run_briefly(&mut joiner);
    }
}

/// The workload the first byte picks, and the rest.
fn split(input: &[u8]) -> Option<(Workload, &[u8])> {
    let (&workload, core) = input.split_first()?;
    let workloads = [Workload::Kv, Workload::KvPipelined, Workload::Timer { ticks_max: None }, Workload::Cpu];
    Some((workloads[usize::from(workload) % 4], core))
}

/// `sealed` (a snapshot or CPU state: header, core, ..., checksum) with its core replaced by `core` (as much of
/// it as fits) and its checksum made valid again.
fn resealed(mut sealed: Vec<u8>, core: &[u8]) -> Vec<u8> {
    let take = core.len().min(CORE_BYTES);
    sealed[HEADER_BYTES..HEADER_BYTES + take].copy_from_slice(&core[..take]);
    let body = sealed.len() - CHECKSUM_BYTES;
    let checksum = xxhash_rust::xxh3::xxh3_64(&sealed[..body]);
    sealed[body..].copy_from_slice(&checksum.to_le_bytes());
    sealed
}

/// Runs a restored guest for a while, answering its port reads with 0.
fn run_briefly(guest: &mut ModelGuest) {
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
