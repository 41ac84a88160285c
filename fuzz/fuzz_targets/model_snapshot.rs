//! A model-guest snapshot from outside: the fuzz input replaces the core (registers, interrupt and counter
//! state) of a real snapshot, which is then re-sealed with a valid checksum so the fuzzer reaches the field
//! checks. A snapshot that restores must then run without a panic (a crafted state must not reach an assert).
#![no_main]

use ft::Guest;
use model_guest::{ModelGuest, Workload, MEMORY_BYTES};

const HEADER_BYTES: usize = 8;
const CHECKSUM_BYTES: usize = 8;

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
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
            Ok(ft::Exit::PortIn { .. }) => guest.complete_port_in(0),
            Ok(ft::Exit::InstructionLimit | ft::Exit::Shutdown) | Err(_) => break,
            Ok(_) => {}
        }
    }
});
