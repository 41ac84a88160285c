//! Inputs that crashed a fuzz target (`fuzz/`, nightly), replayed on stable through the same steps as the
//! target. Each file in `fuzz_inputs/` is named after its target and what it found.

use ft::{Exit, Guest};

use super::super::{ModelGuest, Workload, MEMORY_BYTES};

const HEADER_BYTES: usize = 8;
const CHECKSUM_BYTES: usize = 8;

/// What `fuzz/fuzz_targets/model_snapshot.rs` does with its input: it replaces the core of a real snapshot,
/// reseals it, restores it and runs the guest. None of it may panic.
fn model_snapshot(input: &[u8]) {
    let Some((&workload, core)) = input.split_first() else { return };
    let workload = [Workload::Kv, Workload::KvPipelined, Workload::Timer { ticks_max: None }, Workload::Cpu]
        [usize::from(workload) % 4];
    let mut guest = ModelGuest::new(workload);
    let mut snapshot = guest.snapshot().expect("a snapshot");
    let core_bytes = snapshot.len() - HEADER_BYTES - MEMORY_BYTES - CHECKSUM_BYTES;
    let take = core.len().min(core_bytes);
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

/// A restored boot step far beyond the boot reads made the kvq program compute a descriptor address above
/// 4 GiB, and turning it into a port value panicked ("guest memory is smaller than 4 GiB").
#[test]
fn model_snapshot_boot_step_overflow() {
    model_snapshot(include_bytes!("fuzz_inputs/model_snapshot-boot-step-overflow.bin"));
}

/// A restored instruction count next to `u64::MAX` overflowed the next run's target (`start + slice`), as it
/// would in the primary's slice arithmetic; no guest gets there, so such a snapshot is refused.
#[test]
fn model_snapshot_counter_near_overflow() {
    model_snapshot(include_bytes!("fuzz_inputs/model_snapshot-counter-near-overflow.bin"));
}
