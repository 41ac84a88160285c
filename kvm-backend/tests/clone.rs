//! A clone of a running KVM guest by pre-copy (re-protection's memory transfer): pages in passes from KVM's dirty
//! log and the host's own writes, then the CPU state at an exit; the copy hashes as the original and runs on in
//! lockstep with it.

mod common;

use ft::{Exit, Guest, GuestError};
use kvm_backend::testkit::Bench;
use kvm_backend::KvmGuest;

const PAGE_BYTES: u64 = ft::guest::PAGE_BYTES as u64;

/// Copies `pages` of `from` into `to`, as a pre-copy pass does.
fn copy_pages(from: &KvmGuest, to: &mut Bench, pages: &[u64]) {
    let mut page = vec![0u8; PAGE_BYTES as usize];
    for &number in pages {
        from.read_memory(number * PAGE_BYTES, &mut page).expect("reads a page");
        to.guest.write_memory(number * PAGE_BYTES, &page).expect("writes a page");
    }
}

/// Runs `bench` until `exits` exits have passed and it stands at a port read, unanswered.
fn run_to_port_read(bench: &mut Bench, exits: usize) -> Exit {
    loop {
        let exit = bench.next_exit().expect("runs");
        if bench.trace.len() >= exits && matches!(exit, Exit::PortIn { .. }) {
            return exit;
        }
        assert_eq!(bench.handle(exit).expect("handles"), None, "the timer guest runs on");
    }
}

#[test]
fn a_guest_cloned_by_precopy_equals_the_original_and_runs_on_in_lockstep() {
    let (Some(mut original), Some(mut copy), Some(mut stale)) =
        (common::bench("timer"), common::bench("timer"), common::bench("timer"))
    else {
        return;
    };
    let memory_bytes = original.guest.memory_bytes();
    let pages_total = memory_bytes / PAGE_BYTES;
    assert!(memory_bytes > 0 && memory_bytes.is_multiple_of(PAGE_BYTES));
    let exit = original.next_exit().expect("runs");
    original.handle(exit).expect("handles");

    // Pass 1: every page, and dirty tracking from here on.
    let all = original.guest.take_dirty_pages().expect("first call");
    assert_eq!(all.len() as u64, pages_total, "the first call reports every page");
    copy_pages(&original.guest, &mut copy, &all);
    copy_pages(&original.guest, &mut stale, &all);

    // The guest runs on and the host writes a page of its own (DMA): pass 2 has both, and not every page.
    original.run(300).expect("runs");
    let host_page = pages_total - 1;
    original.guest.write_memory(host_page * PAGE_BYTES + 8, &[0xa5; 16]).expect("host write");
    let dirty = original.guest.take_dirty_pages().expect("pass 2");
    assert!(dirty.contains(&host_page), "a host write is dirty: {dirty:?}");
    assert!(dirty.iter().any(|page| *page != host_page), "the guest's own writes are dirty (its stack, at least)");
    assert!((dirty.len() as u64) < pages_total / 4, "{} of {pages_total} pages dirty", dirty.len());
    assert!(dirty.windows(2).all(|pair| pair[0] < pair[1]), "ascending, without repeats");
    copy_pages(&original.guest, &mut copy, &dirty);

    // The cut, at an exit: the last dirty pages and the CPU.
    let exit = run_to_port_read(&mut original, 700);
    let last = original.guest.take_dirty_pages().expect("cut");
    copy_pages(&original.guest, &mut copy, &last);
    copy_pages(&original.guest, &mut stale, &last);
    let cpu = original.guest.save_cpu().expect("save cpu");
    copy.guest.restore_cpu(&cpu).expect("restore cpu");
    stale.guest.restore_cpu(&cpu).expect("restore cpu");
    assert!(cpu.len() < 64 << 10, "a CPU state carries no memory: {} bytes", cpu.len());
    let hash = original.guest.state_hash().expect("hash");
    assert_eq!(copy.guest.state_hash().expect("hash"), hash, "the clone equals the original at the cut");
    // A clone that missed pass 2 (dirty tracking that lost pages) does not.
    assert_ne!(stale.guest.state_hash().expect("hash"), hash, "a pass left out shows in the hash");
    assert_eq!(copy.guest.position(), original.guest.position());
    assert_eq!(copy.guest.pc(), original.guest.pc());

    // Both answer the pending read and run on identically.
    copy.devices = original.devices.clone();
    copy.trace = original.trace.clone();
    let stop_original = original.handle(exit).expect("handles");
    assert_eq!(copy.handle(exit).expect("handles"), stop_original);
    for index in 0..2_000 {
        let (left, right) = (original.step().expect("steps"), copy.step().expect("steps"));
        assert_eq!(original.trace.last(), copy.trace.last(), "exit {index} differs");
        assert_eq!(left, right);
        if left.is_some() {
            break;
        }
    }
    assert_eq!(original.guest.state_hash().expect("hash"), copy.guest.state_hash().expect("hash"));
}

#[test]
fn a_cpu_state_and_a_snapshot_are_not_taken_for_each_other() {
    let (Some(mut guest), Some(mut other)) = (common::bench("timer"), common::bench("timer")) else { return };
    guest.run(20).expect("runs");
    let cpu = guest.guest.save_cpu().expect("save cpu");
    let snapshot = guest.guest.snapshot().expect("snapshot");
    assert!(matches!(other.guest.restore(&cpu), Err(GuestError::BadSnapshot(_))), "a CPU state is no snapshot");
    assert!(matches!(other.guest.restore_cpu(&snapshot), Err(GuestError::BadSnapshot(_))), "nor the reverse");
    let mut corrupt = cpu.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 1;
    assert!(matches!(other.guest.restore_cpu(&corrupt), Err(GuestError::BadSnapshot(_))), "checksummed");
    assert!(matches!(other.guest.restore_cpu(&cpu[..cpu.len() - 1]), Err(GuestError::BadSnapshot(_))));
    other.guest.restore_cpu(&cpu).expect("the intact state restores");
    assert_eq!(other.guest.position(), guest.guest.position());
}

/// A cut taken once the port read it stands at was answered (the runtime answers a read before the clone reads
/// the CPU): the clone's pc is the primary's, the address of the IN, as the log's next entries say. Before, the
/// restored pc was KVM's RIP, past the IN, and the new backup diverged at its first entry (`ftvm demo
/// --failures 3` found it: "expected disk completion ... at pc 0x101b8d, actual pc 0x101b8e").
#[test]
fn a_cut_after_an_answered_port_read_keeps_the_pc_of_the_read() {
    let (Some(mut original), Some(mut copy)) = (common::bench("timer"), common::bench("timer")) else { return };
    let exit = run_to_port_read(&mut original, 50);
    assert_eq!(original.handle(exit).expect("answers"), None);
    let pages = original.guest.take_dirty_pages().expect("every page");
    copy_pages(&original.guest, &mut copy, &pages);
    let cpu = original.guest.save_cpu().expect("save cpu");
    copy.guest.restore_cpu(&cpu).expect("restore cpu");
    assert_eq!(copy.guest.pc(), original.guest.pc(), "the pc of the answered read");
    assert_eq!(copy.guest.state_hash().expect("hash"), original.guest.state_hash().expect("hash"));
    copy.devices = original.devices.clone();
    for index in 0..500 {
        let (left, right) = (original.step().expect("steps"), copy.step().expect("steps"));
        assert_eq!(original.trace.last(), copy.trace.last(), "exit {index} differs");
        assert_eq!(left, right);
    }
}
