//! The machine contract: exact instruction targets, exact interrupt positions, determinism, snapshots.

use ft::abi;
use ft::{Exit, Guest, GuestError};
use proptest::prelude::*;

use super::super::{mix64, ModelGuest, Workload, HANDLER_INSTRUCTIONS, MEMORY_BYTES};
use super::harness::Platform;

/// Runs to exactly `target` instructions, answering every `IN` with a value derived from the position.
fn run_to(guest: &mut ModelGuest, target: u64) {
    loop {
        match guest.run(Some(target)).unwrap() {
            Exit::InstructionLimit => break,
            Exit::PortIn { .. } => guest.complete_port_in(mix64(guest.position().instructions) as u32),
            Exit::Shutdown => panic!("shutdown before instruction {target}"),
            _ => {}
        }
    }
    assert_eq!(guest.position().instructions, target);
}

#[test]
fn run_stops_exactly_at_the_instruction_target() {
    let mut guest = ModelGuest::new(Workload::Cpu);
    assert!(guest.counts_instructions());
    assert_eq!(guest.run(Some(0)).unwrap(), Exit::InstructionLimit);
    assert_eq!(guest.position(), ft::Position::ZERO);
    // The first instruction of Cpu is plain, so the limit comes first and is not an exit.
    assert_eq!(guest.run(Some(1)).unwrap(), Exit::InstructionLimit);
    assert_eq!(guest.position().instructions, 1);
    assert_eq!(guest.position().exits, 0);
    let mut exits = 0;
    for target in [2, 3, 999, 1000, 1001, 1002, 5000, 5001] {
        loop {
            match guest.run(Some(target)).unwrap() {
                Exit::InstructionLimit => break,
                exit => {
                    assert_eq!(exit, Exit::PortOut { port: abi::YIELD, size: 4, value: 0 });
                    exits += 1;
                    assert_eq!(guest.position().exits, exits);
                }
            }
        }
        assert_eq!(guest.position().instructions, target);
        // A target at or before the position returns at once and changes nothing.
        let hash = guest.state_hash().unwrap();
        assert_eq!(guest.run(Some(target)).unwrap(), Exit::InstructionLimit);
        assert_eq!(guest.run(Some(target - 1)).unwrap(), Exit::InstructionLimit);
        assert_eq!(guest.state_hash().unwrap(), hash);
    }
    assert_eq!(exits, 5, "one yield per 1000 instructions");
}

#[test]
fn interrupt_position_changes_the_state_hash() {
    for workload in [Workload::Cpu, Workload::Timer { ticks_max: None }] {
        for delivery in [1, 2, 57, 999, 1000, 1001, 1002, 4321] {
            let hash_at = |delivery: u64| {
                let mut guest = ModelGuest::new(workload);
                run_to(&mut guest, delivery);
                guest.inject_interrupt(abi::VECTOR_NET).unwrap();
                run_to(&mut guest, 6000);
                guest.state_hash().unwrap()
            };
            assert_ne!(hash_at(delivery), hash_at(delivery + 1), "{workload} delivered at {delivery}");
        }
    }
}

#[test]
fn interrupt_runs_the_handler_with_interrupts_disabled() {
    let mut guest = ModelGuest::new(Workload::Cpu);
    run_to(&mut guest, 100);
    let program_pc = guest.pc();
    guest.inject_interrupt(abi::VECTOR_TIMER).unwrap();
    guest.inject_interrupt(abi::VECTOR_DISK).unwrap();
    assert!(guest.interrupt_pending());
    run_to(&mut guest, 101);
    assert!(guest.pc() >= super::super::program::HANDLER_PC);
    assert!(!guest.interrupts_enabled());
    // The disk vector (higher) went first; the timer waits until the return.
    assert!(guest.interrupt_pending());
    run_to(&mut guest, 100 + u64::from(HANDLER_INSTRUCTIONS));
    assert!(guest.interrupts_enabled());
    assert_eq!(guest.pc(), program_pc, "the handler returns where the program was interrupted");
    run_to(&mut guest, 100 + 2 * u64::from(HANDLER_INSTRUCTIONS));
    assert!(!guest.interrupt_pending());
    assert_eq!(guest.pc(), program_pc);
}

#[test]
fn pending_interrupt_is_state() {
    let mut guest = ModelGuest::new(Workload::Kv);
    let before = guest.state_hash().unwrap();
    guest.inject_interrupt(abi::VECTOR_TIMER).unwrap();
    assert_ne!(guest.state_hash().unwrap(), before);
    let snapshot = guest.snapshot().unwrap();
    let mut restored = ModelGuest::new(Workload::Cpu);
    restored.restore(&snapshot).unwrap();
    assert!(restored.interrupt_pending());
    assert_eq!(restored.workload(), Workload::Kv);
    assert_eq!(restored.state_hash().unwrap(), guest.state_hash().unwrap());
}

#[test]
fn memory_access_out_of_range_is_an_error() {
    let mut guest = ModelGuest::new(Workload::Kv);
    let mut buffer = [0u8; 16];
    let end = MEMORY_BYTES as u64;
    assert_eq!(guest.read_memory(end - 16, &mut buffer), Ok(()));
    assert_eq!(guest.read_memory(end - 15, &mut buffer), Err(GuestError::MemoryOutOfRange { gpa: end - 15, len: 16 }));
    assert!(guest.read_memory(u64::MAX, &mut buffer).is_err());
    assert!(guest.write_memory(u64::MAX - 3, &buffer).is_err());
    assert!(guest.write_memory(end, &[]).is_ok(), "an empty access at the end is in range");
    assert!(guest.write_memory(end, &[1]).is_err());
    guest.write_memory(0x1234, &[7, 8, 9]).unwrap();
    let mut read = [0u8; 3];
    guest.read_memory(0x1234, &mut read).unwrap();
    assert_eq!(read, [7, 8, 9]);
}

#[test]
fn snapshot_restore_continues_identically() {
    let mut platform = Platform::new();
    let mut guest = ModelGuest::new(Workload::Timer { ticks_max: Some(60) });
    platform.run_until(&mut guest, 50_000, |_| false);
    let snapshot = guest.snapshot().unwrap();
    let mut restored = ModelGuest::new(Workload::Kv);
    restored.restore(&snapshot).unwrap();
    assert_eq!(restored.snapshot().unwrap(), snapshot, "restore then snapshot is the identity");
    assert_eq!(restored.position(), guest.position());
    assert_eq!(restored.pc(), guest.pc());

    let mut platform_copy = platform.clone();
    platform.run_until(&mut guest, u64::MAX, |_| false);
    platform_copy.run_until(&mut restored, u64::MAX, |_| false);
    assert_eq!(platform.power_off, Some(0));
    assert_eq!(platform.trace, platform_copy.trace);
    assert_eq!(platform.console, platform_copy.console);
    assert_eq!(guest.state_hash().unwrap(), restored.state_hash().unwrap());
}

/// Copies the pages `pages` of `from` into `to`.
fn copy_pages(from: &ModelGuest, to: &mut ModelGuest, pages: &[u64]) {
    let mut page = vec![0u8; ft::guest::PAGE_BYTES];
    for number in pages {
        let gpa = number * ft::guest::PAGE_BYTES as u64;
        from.read_memory(gpa, &mut page).unwrap();
        to.write_memory(gpa, &page).unwrap();
    }
}

#[test]
fn a_clone_by_dirty_pages_and_cpu_state_equals_the_original_and_runs_on_identically() {
    let mut platform = Platform::new();
    let mut guest = ModelGuest::new(Workload::Timer { ticks_max: Some(60) });
    platform.run_until(&mut guest, 20_000, |_| false);
    let mut clone = ModelGuest::new(Workload::Timer { ticks_max: Some(60) });
    let first = guest.take_dirty_pages().unwrap();
    assert_eq!(first.len() as u64, guest.memory_bytes() / ft::guest::PAGE_BYTES as u64, "every page at first");
    copy_pages(&guest, &mut clone, &first);
    // Pre-copy rounds while the guest runs on: each sends what the guest (and the host's DMA) wrote since.
    for round in 1..4u64 {
        platform.run_until(&mut guest, 20_000 + round * 10_000, |_| false);
        let dirty = guest.take_dirty_pages().unwrap();
        assert!(!dirty.is_empty() && dirty.len() < first.len(), "round {round}: {dirty:?}");
        copy_pages(&guest, &mut clone, &dirty);
    }
    guest.write_memory(0x9000, &[7; 3]).unwrap();
    // The cut: the last dirty pages (the host's write included) and the CPU.
    let last = guest.take_dirty_pages().unwrap();
    assert!(last.contains(&(0x9000 / ft::guest::PAGE_BYTES as u64)), "a host write is dirty: {last:?}");
    copy_pages(&guest, &mut clone, &last);
    assert!(guest.take_dirty_pages().unwrap().is_empty(), "taken: clean until the next write");
    let cpu = guest.save_cpu().unwrap();
    clone.restore_cpu(&cpu).unwrap();
    assert_eq!(clone.state_hash().unwrap(), guest.state_hash().unwrap());
    assert_eq!(clone.position(), guest.position());
    let mut platform_copy = platform.clone();
    platform.run_until(&mut guest, u64::MAX, |_| false);
    platform_copy.run_until(&mut clone, u64::MAX, |_| false);
    assert_eq!(platform.trace, platform_copy.trace);
    assert_eq!(guest.state_hash().unwrap(), clone.state_hash().unwrap());
}

#[test]
fn corrupt_or_foreign_cpu_states_are_rejected() {
    let mut guest = ModelGuest::new(Workload::Kv);
    run_to(&mut guest, 300);
    let cpu = guest.save_cpu().unwrap();
    let hash = guest.state_hash().unwrap();
    let rejected =
        |guest: &mut ModelGuest, bytes: &[u8]| matches!(guest.restore_cpu(bytes), Err(GuestError::BadSnapshot(_)));
    assert!(rejected(&mut guest, &[]));
    assert!(rejected(&mut guest, &cpu[..cpu.len() - 1]));
    assert!(rejected(&mut guest, &vec![0u8; cpu.len()]));
    for at in [0, 5, 20, cpu.len() - 1] {
        let mut flipped = cpu.clone();
        flipped[at] ^= 1;
        assert!(rejected(&mut guest, &flipped), "a flipped bit at byte {at}");
    }
    let snapshot = guest.snapshot().unwrap();
    assert!(rejected(&mut guest, &snapshot), "a whole snapshot is not a CPU state");
    let mut other = ModelGuest::new(Workload::Cpu);
    assert!(rejected(&mut other, &cpu), "another workload's CPU");
    assert_eq!(guest.state_hash().unwrap(), hash, "nothing of a refused state is applied");
}

#[test]
fn corrupt_snapshots_are_rejected() {
    let mut guest = ModelGuest::new(Workload::Kv);
    run_to(&mut guest, 300);
    let snapshot = guest.snapshot().unwrap();
    let hash = guest.state_hash().unwrap();
    let rejected =
        |guest: &mut ModelGuest, bytes: &[u8]| matches!(guest.restore(bytes), Err(GuestError::BadSnapshot(_)));

    assert!(rejected(&mut guest, &[]));
    assert!(rejected(&mut guest, &snapshot[..snapshot.len() - 1]));
    let mut longer = snapshot.clone();
    longer.push(0);
    assert!(rejected(&mut guest, &longer));
    for at in [0, 5, 20, 100, snapshot.len() / 2, snapshot.len() - 1] {
        let mut flipped = snapshot.clone();
        flipped[at] ^= 0x40;
        assert!(rejected(&mut guest, &flipped), "flipped byte {at}");
    }
    // A checksum that matches does not make a bad field acceptable.
    let mut bad_version = snapshot.clone();
    bad_version[4] = 9;
    reseal(&mut bad_version);
    assert!(rejected(&mut guest, &bad_version));
    let mut bad_flag = snapshot.clone();
    bad_flag[9] = 2; // the ticks_max flag
    reseal(&mut bad_flag);
    assert!(rejected(&mut guest, &bad_flag));

    assert_eq!(guest.state_hash().unwrap(), hash, "a rejected restore leaves the guest untouched");
    guest.restore(&snapshot).unwrap();
    assert_eq!(guest.state_hash().unwrap(), hash);
}

fn reseal(snapshot: &mut [u8]) {
    let body = snapshot.len() - 8;
    let checksum = xxhash_rust::xxh3::xxh3_64(&snapshot[..body]);
    snapshot[body..].copy_from_slice(&checksum.to_le_bytes());
}

/// One call on the guest in a determinism script.
#[derive(Clone, Debug)]
enum Call {
    Run {
        instructions: u16,
    },
    Inject {
        vector: u8,
    },
    /// DMA of arbitrary bytes anywhere: the programs must survive any memory contents.
    Write {
        gpa: u16,
        bytes: Vec<u8>,
    },
    Snapshot,
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        6 => (1u16..3000).prop_map(|instructions| Call::Run { instructions }),
        3 => prop_oneof![Just(0x20u8), Just(0x21), Just(0x22), any::<u8>()].prop_map(|vector| Call::Inject { vector }),
        1 => (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(gpa, bytes)| Call::Write { gpa, bytes }),
        1 => Just(Call::Snapshot),
    ]
}

fn workload() -> impl Strategy<Value = Workload> {
    prop_oneof![Just(Workload::Kv), Just(Workload::Cpu), Just(Workload::Timer { ticks_max: Some(3) })]
}

/// Applies a call; returns what it observed (exit, position, pc, hash) for comparison.
fn apply(guest: &mut ModelGuest, call: &Call, input: u32) -> (Option<Exit>, ft::Position, u64, u64) {
    let mut exit = None;
    match call {
        Call::Run { instructions } => {
            let target = guest.position().instructions + u64::from(*instructions);
            let ran = guest.run(Some(target)).unwrap();
            if let Exit::PortIn { .. } = ran {
                guest.complete_port_in(input);
            }
            exit = Some(ran);
        }
        Call::Inject { vector } => guest.inject_interrupt(*vector).unwrap(),
        Call::Write { gpa, bytes } => {
            let result = guest.write_memory(u64::from(*gpa), bytes);
            assert_eq!(result.is_ok(), usize::from(*gpa) + bytes.len() <= MEMORY_BYTES);
        }
        Call::Snapshot => {
            let snapshot = guest.snapshot().unwrap();
            guest.restore(&snapshot).unwrap();
        }
    }
    (exit, guest.position(), guest.pc(), guest.state_hash().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn same_calls_give_same_exits_positions_and_hashes(
        workload in workload(),
        calls in proptest::collection::vec((call(), any::<u32>()), 1..60),
        restore_at in 0usize..60,
    ) {
        let mut first = ModelGuest::new(workload);
        let mut second = ModelGuest::new(workload);
        let mut restored: Option<ModelGuest> = None;
        for (index, (call, input)) in calls.iter().enumerate() {
            let observed = apply(&mut first, call, *input);
            prop_assert_eq!(observed, apply(&mut second, call, *input));
            if let Some(restored) = restored.as_mut() {
                prop_assert_eq!(observed, apply(restored, call, *input));
            }
            if index == restore_at {
                let mut copy = ModelGuest::new(Workload::Cpu);
                copy.restore(&first.snapshot().unwrap()).unwrap();
                restored = Some(copy);
            }
        }
    }

    #[test]
    fn restore_of_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), resealed in any::<bool>()) {
        let mut guest = ModelGuest::new(Workload::Kv);
        let mut snapshot = guest.snapshot().unwrap();
        // Overwrite the core with garbage, optionally with a valid checksum, so field validation is reached.
        let len = bytes.len().min(snapshot.len());
        snapshot[..len].copy_from_slice(&bytes[..len]);
        if resealed {
            reseal(&mut snapshot);
        }
        let _ = guest.restore(&snapshot);
        let _ = guest.restore(&bytes);
    }
}

/// Bursts (several compute instructions per call, used when no interrupt can be taken) must equal single steps.
#[test]
fn single_steps_and_long_runs_agree() {
    for workload in [Workload::Kv, Workload::Cpu, Workload::Timer { ticks_max: None }] {
        let mut stepped = ModelGuest::new(workload);
        let mut bulk = ModelGuest::new(workload);
        for checkpoint in (1..=20u64).map(|index| index * 997) {
            while stepped.position().instructions < checkpoint {
                let target = stepped.position().instructions + 1;
                run_to(&mut stepped, target);
            }
            run_to(&mut bulk, checkpoint);
            assert_eq!(stepped.state_hash().unwrap(), bulk.state_hash().unwrap(), "{workload} at {checkpoint}");
            assert_eq!(stepped.position(), bulk.position());
            let vector = if checkpoint % 3 == 0 { abi::VECTOR_NET } else { abi::VECTOR_TIMER };
            stepped.inject_interrupt(vector).unwrap();
            bulk.inject_interrupt(vector).unwrap();
        }
    }
}
