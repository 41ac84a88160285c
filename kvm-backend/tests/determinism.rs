//! The `ft::Guest` contract on KVM: the same calls give the same exits and hashes, on fresh and restored VMs.

mod common;

use std::time::Instant;

use ft::{Exit, Guest, GuestError};
use kvm_backend::testkit::{Bench, Stop};
use kvm_backend::{KvmConfig, KvmGuest};

/// Steps both benches `exits` times, comparing every exit and (every `hash_every` exits) the state hashes.
fn step_in_lockstep(left: &mut Bench, right: &mut Bench, exits: usize, hash_every: usize) -> Option<Stop> {
    for index in 0..exits {
        let stop_left = left.step().expect("left steps");
        let stop_right = right.step().expect("right steps");
        assert_eq!(left.trace.last(), right.trace.last(), "exit {index} differs");
        assert_eq!(stop_left, stop_right);
        if index % hash_every == 0 || stop_left.is_some() {
            assert_eq!(left.guest.state_hash().expect("hash"), right.guest.state_hash().expect("hash"), "at {index}");
        }
        if stop_left.is_some() {
            return stop_left;
        }
    }
    None
}

#[test]
fn two_fresh_vms_given_the_same_calls_behave_identically() {
    let (Some(mut left), Some(mut right)) = (common::bench("timer"), common::bench("timer")) else { return };
    let stop = step_in_lockstep(&mut left, &mut right, 100_000, 97);
    assert_eq!(stop, Some(Stop::PowerOff(0)));
    assert_eq!(left.trace, right.trace);
    assert_eq!(left.devices, right.devices);
    assert_eq!(left.guest.position(), right.guest.position());
}

fn restored(snapshot: &[u8]) -> Option<KvmGuest> {
    common::guest("timer")?;
    Some(KvmGuest::from_snapshot(&KvmConfig::default(), snapshot).expect("restores"))
}

/// Runs a timer guest to `exits`, stopping before answering that exit if it is a port read; snapshots there.
fn snapshot_and_continue(exits: usize, want: fn(&Exit) -> bool) {
    let Some(mut original) = common::bench("timer") else { return };
    let mut exit = original.next_exit().expect("runs");
    while original.trace.len() < exits || !want(&exit) {
        original.handle(exit).expect("handles");
        exit = original.next_exit().expect("runs");
    }
    let started = Instant::now();
    let snapshot = original.guest.snapshot().expect("snapshot");
    let snapshot_time = started.elapsed();
    let Some(guest) = restored(&snapshot) else { return };
    let restore_time = started.elapsed() - snapshot_time;
    let mut copy = Bench { guest, devices: original.devices.clone(), trace: original.trace.clone() };
    assert_eq!(original.guest.state_hash().expect("hash"), copy.guest.state_hash().expect("hash"));
    assert_eq!(original.guest.pc(), copy.guest.pc());
    assert_eq!(original.guest.position(), copy.guest.position());
    // Answer the exit the snapshot was taken at on both, then continue in lockstep.
    let stop_original = original.handle(exit).expect("handles");
    let stop_copy = copy.handle(exit).expect("handles");
    assert_eq!(stop_original, stop_copy);
    assert_eq!(original.guest.state_hash().expect("hash"), copy.guest.state_hash().expect("hash"));
    let stop = step_in_lockstep(&mut original, &mut copy, 2_000, 10);
    assert_eq!(original.trace, copy.trace);
    eprintln!(
        "snapshot at {exit:?} (exit {exits}+): {} bytes, snapshot {snapshot_time:?}, restore into a fresh VM {restore_time:?}; then {stop:?}",
        snapshot.len()
    );
}

#[test]
fn snapshot_at_a_pending_port_read_restores_identically() {
    snapshot_and_continue(50, |exit| matches!(exit, Exit::PortIn { .. }));
}

#[test]
fn snapshot_at_a_port_write_restores_identically() {
    snapshot_and_continue(1, |exit| matches!(exit, Exit::PortOut { .. }));
}

#[test]
fn snapshot_at_a_halt_with_interrupts_pending_restores_identically() {
    let Some(mut original) = common::bench("timer") else { return };
    while original.next_exit().expect("runs") != Exit::Halt {
        let exit = *original.trace.last().map(|entry| &entry.exit).expect("an exit");
        original.handle(exit).expect("handles");
    }
    // Three vectors at once: one is injected at the next entry, the others through interrupt windows.
    for vector in [ft::abi::VECTOR_TIMER, ft::abi::VECTOR_NET, ft::abi::VECTOR_DISK] {
        original.guest.inject_interrupt(vector).expect("injects");
    }
    let snapshot = original.guest.snapshot().expect("snapshot");
    let Some(guest) = restored(&snapshot) else { return };
    let mut copy = Bench { guest, devices: original.devices.clone(), trace: original.trace.clone() };
    assert_eq!(original.guest.state_hash().expect("hash"), copy.guest.state_hash().expect("hash"));
    step_in_lockstep(&mut original, &mut copy, 3_000, 7);
    assert_eq!(original.trace, copy.trace);
}

#[test]
fn interrupt_windows_are_deterministic() {
    // The same burst of interrupts at the same exits, ten times over: identical traces and hashes.
    let mut reference: Option<(Vec<kvm_backend::testkit::TraceEntry>, u64)> = None;
    for _ in 0..10 {
        let Some(mut bench) = common::bench("timer") else { return };
        for _ in 0..300 {
            let exit = bench.next_exit().expect("runs");
            if bench.trace.len() % 5 == 0 {
                for vector in [ft::abi::VECTOR_NET, ft::abi::VECTOR_DISK, 0x23] {
                    bench.guest.inject_interrupt(vector).expect("injects");
                }
            }
            if bench.handle(exit).expect("handles").is_some() {
                break;
            }
        }
        let outcome = (bench.trace.clone(), bench.guest.state_hash().expect("hash"));
        match &reference {
            None => reference = Some(outcome),
            Some(expected) => assert_eq!(&outcome, expected),
        }
    }
}

#[test]
fn corrupt_or_foreign_snapshots_are_rejected() {
    let Some(mut bench) = common::bench("timer") else { return };
    bench.run(20).expect("runs");
    let snapshot = bench.guest.snapshot().expect("snapshot");
    let hash = bench.guest.state_hash().expect("hash");
    let Some(mut other) = common::guest("cpu") else { return };
    for corrupt in [
        Vec::new(),
        snapshot[..snapshot.len() / 2].to_vec(),
        b"FTVMKVM\0garbage garbage garbage garbage".to_vec(),
        {
            let mut flipped = snapshot.clone();
            flipped[snapshot.len() - 1] ^= 1;
            flipped
        },
        {
            let mut version = snapshot.clone();
            version[8] = 99;
            version
        },
    ] {
        assert!(matches!(other.restore(&corrupt), Err(GuestError::BadSnapshot(_))));
    }
    let small = KvmConfig { memory_bytes: 4 << 20, ..KvmConfig::default() };
    let error = KvmGuest::from_snapshot(&small, &snapshot).err().expect("size mismatch");
    assert!(matches!(error, GuestError::BadSnapshot(_)), "{error}");
    // A failed restore leaves the target usable; a good one makes it the snapshotted guest.
    other.restore(&snapshot).expect("restores");
    assert_eq!(other.state_hash().expect("hash"), hash);
}

#[test]
fn hash_and_snapshot_costs() {
    let Some(mut bench) = common::bench("kv") else { return };
    bench.run(1_000).expect("runs");
    let started = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        bench.guest.state_hash().expect("hash");
    }
    let hash_time = started.elapsed() / rounds;
    let started = Instant::now();
    let snapshot = bench.guest.snapshot().expect("snapshot");
    let snapshot_time = started.elapsed();
    let started = Instant::now();
    bench.guest.restore(&snapshot).expect("restore");
    let restore_time = started.elapsed();
    eprintln!(
        "{} MiB guest: state_hash {hash_time:?}, snapshot {snapshot_time:?} ({} bytes), restore {restore_time:?}",
        bench.guest.memory_bytes() >> 20,
        snapshot.len()
    );
}
