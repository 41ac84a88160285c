//! Failing-first tests for defects found by review (issue 7): each one failed on the code before its fix.

mod common;

use common::{config, drain, events, log_of, primary, sent, Script, Zero};
use ft::abi;
use ft::backup::Backup;
use ft::log::{Entry, Input};
use ft::primary::Primary;
use ft::storage::StorageRequest;
use ft::wire::{Message, Role as WireRole};
use ft::{Action, ArbiterOutcome, Config, Event, Exit, Node, Position, Role};

const MS: u64 = 1_000_000;

fn backup_with(config: Config, script: Script) -> Node<Script> {
    let mut node = Node::Backup(Box::new(Backup::new(config, script, 64, 0)));
    node.handle_message(0, Message::Hello { pair_id: 3, epoch: 1, image_digest: 9 });
    drain(&mut node);
    node
}

fn backup(script: Script) -> Node<Script> {
    backup_with(config(), script)
}

/// Before: `Backup::handle_message` asserted its buffer bound, so a peer (or a driver) that sent one entry too
/// many panicked the backup. Input from the peer must never trip an assert.
#[test]
fn log_beyond_the_buffer_bound_is_a_protocol_error_not_a_panic() {
    let config = Config { log_entries_buffered_max: 4, ..config() };
    let mut node = backup_with(config, Script::new([]));
    for index in 1..=6 {
        let entry =
            Entry::Input { position: Position { exits: 100 + index, instructions: 0 }, pc: 0, input: Input::Timer };
        node.handle_message(index, Message::Log { index, entry });
    }
    let actions = drain(&mut node);
    let violation = events(&actions).into_iter().find_map(|e| match e {
        Event::ProtocolViolation(what) => Some(what),
        _ => None,
    });
    assert!(violation.is_some_and(|what| what.contains("buffer")), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::CloseChannel)));
}

/// Before: the backup took the channel closing after a clean power-off for a failure of the primary, won the
/// test-and-set and went live. Power-off is a control operation: both sides stop and nobody goes live.
#[test]
fn a_clean_power_off_stops_the_backup_without_a_test_and_set() {
    let script = Script::console_then_power_off;
    let mut primary = primary(script());
    primary.run_guest(2, &mut Zero);
    let log = log_of(&drain(&mut primary));
    assert_eq!(log.len(), 3, "an output, the power-off and the final checkpoint: {log:?}");
    let mut backup = backup(script());
    for message in log {
        backup.handle_message(3, message);
    }
    drain(&mut backup);
    primary.handle_message(4, Message::Ack { received: 3, replayed: 0, position: Position::ZERO });
    let mut actions = drain(&mut primary);
    primary.run_guest(4, &mut Zero);
    actions.extend(drain(&mut primary));
    assert!(actions.iter().any(|a| matches!(a, Action::Release { .. })));
    assert!(actions.iter().any(|a| matches!(a, Action::CloseChannel)));
    assert!(matches!(primary.stopped(), Some(ft::Stopped::PoweredOff { status: 0 })));
    for message in sent(&actions) {
        backup.handle_message(5, message);
    }
    // The primary closes the channel before the backup has replayed the power-off entry.
    backup.handle_channel_closed(6, "logging channel closed");
    let mut actions = drain(&mut backup);
    backup.run_guest(7, &mut Zero);
    actions.extend(drain(&mut backup));
    assert!(!actions.iter().any(|a| matches!(a, Action::TestAndSet { .. })), "nobody goes live: {actions:?}");
    assert!(matches!(backup.stopped(), Some(ft::Stopped::PoweredOff { status: 0 })), "{actions:?}");
    assert!(events(&actions).iter().any(|e| matches!(e, Event::Checkpoint { .. })), "the final state is verified");
}

/// Before: go-live reissued the in-flight disk requests in tag order, so two overlapping writes submitted as
/// tag 5 then tag 2 were written in the opposite order, leaving the older data on the disk.
#[test]
fn go_live_reissues_overlapping_writes_in_submission_order() {
    let script = || {
        let mut script = Script::new([]);
        script.memory[0x2000..0x2200].fill(0xaa);
        script.memory[0x3000..0x3200].fill(0xbb);
        let first = script.disk_request(0x400, abi::DISK_OP_WRITE, 5, 10, 0x2000);
        let second = script.disk_request(0x440, abi::DISK_OP_WRITE, 2, 10, 0x3000);
        script.exits.extend([first, second]);
        script
    };
    let mut primary = primary(script());
    primary.run_guest(2, &mut Zero);
    let log = log_of(&drain(&mut primary));
    assert_eq!(log.len(), 2, "two disk-write outputs: {log:?}");
    let mut backup = backup(script());
    for message in log {
        backup.handle_message(3, message);
    }
    backup.run_guest(4, &mut Zero);
    drain(&mut backup);
    // The primary dies before either write was acknowledged, let alone completed.
    backup.handle_channel_closed(5, "logging channel closed");
    assert!(drain(&mut backup).iter().any(|a| matches!(a, Action::TestAndSet { expected_epoch: 1 })));
    backup.handle_arbiter(6, ArbiterOutcome::Won { epoch: 2 });
    backup.run_guest(7, &mut Zero);
    let issued: Vec<(u32, u8)> = drain(&mut backup)
        .into_iter()
        .filter_map(|a| match a {
            Action::Storage { request: StorageRequest::Write { target, data, .. }, .. } => Some((target.tag, data[0])),
            _ => None,
        })
        .collect();
    assert_eq!(issued, vec![(5, 0xaa)], "the first submitted goes first; the second waits behind it");
    backup.handle_storage_done(8, ft::StorageDone { tag: 5, status: abi::DiskStatus::Ok, data: Vec::new() });
    let issued: Vec<u32> = drain(&mut backup)
        .into_iter()
        .filter_map(|a| match a {
            Action::Storage { request: StorageRequest::Write { target, .. }, .. } => Some(target.tag),
            _ => None,
        })
        .collect();
    assert_eq!(issued, vec![2]);
}

fn heartbeat(role: WireRole, epoch: u64, sent_ms: u64, log_index: u64) -> Message {
    Message::Heartbeat { pair_id: 3, epoch, role, sent_ms, log_index }
}

fn tested_and_set(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::TestAndSet { .. }))
}

/// Before: a node counted any heartbeat of its pair as a sign of life of its peer, its own reflected back
/// included, so a reflector kept a dead peer "alive" forever.
#[test]
fn reflected_heartbeats_do_not_keep_a_dead_peer_alive() {
    let mut node = primary(Script::new([]));
    let mut actions = Vec::new();
    for ms in 2..400 {
        node.handle_message(ms * MS, heartbeat(WireRole::Primary, 1, ms, 0));
        node.handle_timeout(ms * MS);
        actions.extend(drain(&mut node));
    }
    assert!(tested_and_set(&actions), "the primary's own heartbeats are no sign of its backup");
    let mut node = backup(Script::new([]));
    let mut actions = Vec::new();
    for ms in 2..400 {
        node.handle_message(ms * MS, heartbeat(WireRole::Backup, 1, ms, 0));
        node.handle_timeout(ms * MS);
        actions.extend(drain(&mut node));
    }
    assert!(tested_and_set(&actions), "the backup's own heartbeats are no sign of its primary");
}

/// Before: one recorded heartbeat, replayed over and over, kept a dead peer alive; and a heartbeat of another
/// epoch counted too.
#[test]
fn replayed_and_stale_epoch_heartbeats_do_not_keep_a_dead_peer_alive() {
    let mut node = primary(Script::new([]));
    node.handle_message(2 * MS, heartbeat(WireRole::Backup, 1, 2, 0));
    let mut actions = Vec::new();
    for ms in 3..400 {
        node.handle_message(ms * MS, heartbeat(WireRole::Backup, 1, 2, 0));
        node.handle_timeout(ms * MS);
        actions.extend(drain(&mut node));
    }
    assert!(tested_and_set(&actions), "a replayed heartbeat is no sign of life");
    let mut node = backup(Script::new([]));
    let mut actions = Vec::new();
    for ms in 2..400 {
        node.handle_message(ms * MS, heartbeat(WireRole::Primary, 7, ms, 0));
        node.handle_timeout(ms * MS);
        actions.extend(drain(&mut node));
    }
    assert!(tested_and_set(&actions), "a heartbeat of another epoch is no sign of this primary");
}

/// Before: the backup acknowledged only when it received entries, so the primary never heard that the last
/// ones were replayed and its execution lag grew for as long as the guest was idle.
#[test]
fn execution_lag_is_zero_once_the_backup_has_replayed_everything() {
    let mut primary = primary(Script::console_then_halt());
    primary.run_guest(2 * MS, &mut Zero);
    let log = log_of(&drain(&mut primary));
    let mut backup = backup(Script::console_then_halt());
    for message in log {
        backup.handle_message(3 * MS, message);
    }
    let mut acks = sent(&drain(&mut backup));
    backup.run_guest(4 * MS, &mut Zero);
    acks.extend(sent(&drain(&mut backup)));
    assert!(acks.iter().any(|m| matches!(m, Message::Ack { received: 1, replayed: 1, .. })), "{acks:?}");
    for ack in acks {
        primary.handle_message(5 * MS, ack);
    }
    drain(&mut primary);
    assert_eq!(primary.stats(7_000 * MS).execution_lag_ns, 0, "an idle pair has no lag");
    assert_eq!(primary.role(), Role::Primary);
}

/// Found by the simulator (seed 991, pipelined kv guest, lossy channel): a write was issued as soon as an
/// earlier overlapping read completed, before the backup had the read's completion. The primary died, the new
/// primary reissued the read, and it returned the data of the write that came after it in the guest: a read
/// that saw the future. A write must wait until the log has the completion of every earlier overlapping read.
#[test]
fn a_write_waits_until_the_backup_has_the_completion_of_an_earlier_overlapping_read() {
    let mut script = Script::new([]);
    let read = script.disk_request(0x400, abi::DISK_OP_READ, 1, 5, 0x2000);
    let write = script.disk_request(0x440, abi::DISK_OP_WRITE, 2, 5, 0x3000);
    script.exits.extend([read, write]);
    let mut primary = primary(script);
    primary.run_guest(2, &mut Zero);
    let actions = drain(&mut primary);
    let write_index = log_of(&actions)
        .iter()
        .find_map(|m| match m {
            Message::Log { index, entry: Entry::Output { .. } } => Some(*index),
            _ => None,
        })
        .expect("the write is logged");
    assert!(actions.iter().any(|a| matches!(a, Action::Storage { request: StorageRequest::Read { .. }, .. })));
    primary.handle_message(3, Message::Ack { received: write_index, replayed: 0, position: Position::ZERO });
    assert!(drain(&mut primary).iter().all(|a| !matches!(a, Action::Storage { .. })), "the read is still out");
    let data = vec![7u8; abi::SECTOR_BYTES];
    primary.handle_storage_done(4, ft::StorageDone { tag: 1, status: abi::DiskStatus::Ok, data });
    primary.run_guest(5, &mut Zero);
    let actions = drain(&mut primary);
    let completion_index = log_of(&actions)
        .iter()
        .find_map(|m| match m {
            Message::Log { index, entry: Entry::Input { input: Input::DiskComplete { tag: 1, .. }, .. } } => {
                Some(*index)
            }
            _ => None,
        })
        .expect("the read's completion is logged");
    let writes = |actions: &[Action]| {
        actions.iter().filter(|a| matches!(a, Action::Storage { request: StorageRequest::Write { .. }, .. })).count()
    };
    assert_eq!(writes(&actions), 0, "the backup does not have the read's completion yet");
    primary.handle_message(6, Message::Ack { received: completion_index, replayed: 0, position: Position::ZERO });
    assert_eq!(writes(&drain(&mut primary)), 1, "now the write may go");
}

/// Found by the simulator (seed 7203628992, 10 ms latency, 31 ms failure timeout): the primary measured the
/// wait for an ack from the last ack (or from when it was created), not from when the oldest unacknowledged
/// entry was sent. A channel that came up late, or a log that had been idle, was "stalled" the moment the next
/// entry went out: the primary failed a healthy backup "after 1 ms without word".
#[test]
fn the_wait_for_an_ack_starts_when_the_entry_is_sent() {
    let timeout_ns = config().failure_timeout_ms * MS;
    let heartbeat_ns = config().heartbeat_interval_ms * MS;
    // (when the channel comes up, when the guest first runs): late after creation, or late after heartbeats.
    for (up_ns, idle_ns) in [(timeout_ns - MS, 0), (MS, 10 * timeout_ns + heartbeat_ns - MS)] {
        let mut node = Node::Primary(Box::new(Primary::new(config(), Script::console_then_halt(), 64, 1, 0)));
        drain(&mut node);
        node.handle_message(up_ns, Message::Welcome { pair_id: 3, epoch: 1 });
        let mut actions = drain(&mut node);
        let mut now_ns = up_ns;
        let mut sent_ms = 0;
        while now_ns + heartbeat_ns <= up_ns + idle_ns {
            now_ns += heartbeat_ns;
            sent_ms += 1;
            node.handle_message(now_ns, heartbeat(WireRole::Backup, 1, sent_ms, 0));
            node.handle_timeout(now_ns);
            actions.extend(drain(&mut node));
        }
        let logged_at_ns = up_ns + idle_ns;
        node.run_guest(logged_at_ns, &mut Zero);
        assert!(node.stats(logged_at_ns).log_entries > 0, "the guest logged nothing");
        // The backup acks just inside the failure timeout; its heartbeats keep coming meanwhile.
        let ack_at_ns = logged_at_ns + timeout_ns - 2 * MS;
        for now_ns in (logged_at_ns..=ack_at_ns).step_by(MS as usize) {
            if now_ns % heartbeat_ns == 0 {
                sent_ms += 1;
                node.handle_message(now_ns, heartbeat(WireRole::Backup, 1, sent_ms, 1));
            }
            if now_ns == ack_at_ns {
                node.handle_message(now_ns, Message::Ack { received: 1, replayed: 1, position: Position::default() });
            }
            node.handle_timeout(now_ns);
            actions.extend(drain(&mut node));
        }
        assert!(
            !tested_and_set(&actions),
            "up at {up_ns} ns: a backup that acks in time was failed: {:?}",
            events(&actions)
        );
    }
    // Seed 9500003922: nothing logged yet, the channel up late, the backup's first heartbeat not in yet.
    let mut node = Node::Primary(Box::new(Primary::new(config(), Script::new([]), 64, 1, 0)));
    drain(&mut node);
    node.handle_message(timeout_ns - MS, Message::Welcome { pair_id: 3, epoch: 1 });
    node.handle_timeout(timeout_ns + MS);
    let actions = drain(&mut node);
    assert!(!tested_and_set(&actions), "a channel with nothing outstanding cannot be stalled: {:?}", events(&actions));
}

/// Found by review: a read's completion holds overlapping writes back until the backup acknowledges it, and the
/// scheduler asserted that no more than 256 such reads could wait, the number of tags. A guest reuses a tag as
/// soon as its completion is delivered, so a backup that acks slowly made the primary panic at the 257th.
#[test]
fn many_reads_completed_before_an_ack_do_not_panic_the_primary() {
    let mut script = Script::new([]);
    for _ in 0..300 {
        let read = script.disk_request(0x400, abi::DISK_OP_READ, 1, 5, 0x2000);
        script.exits.push_back(read);
        script.exits.push_back(Exit::Halt);
    }
    let mut node = primary(script);
    for step in 0..300u64 {
        node.run_guest(2 + step, &mut Zero);
        drain(&mut node);
        let data = vec![0u8; abi::SECTOR_BYTES];
        node.handle_storage_done(2 + step, ft::StorageDone { tag: 1, status: abi::DiskStatus::Ok, data });
    }
    node.run_guest(400, &mut Zero);
    drain(&mut node);
    assert_eq!(node.role(), Role::Primary);
}

/// Found by review: after the guest powered off, finished reads were never logged (the guest runs no more), so
/// a later overlapping write waited for a read completion that would never be acknowledged: no goodbye, and the
/// primary stayed up, heartbeating, for ever.
#[test]
fn a_power_off_with_a_read_and_an_overlapping_write_in_flight_finishes() {
    let mut script = Script::new([]);
    let read = script.disk_request(0x400, abi::DISK_OP_READ, 1, 5, 0x2000);
    let write = script.disk_request(0x440, abi::DISK_OP_WRITE, 2, 5, 0x3000);
    script.exits.extend([read, write, Script::power_off(0)]);
    let mut node = primary(script);
    node.run_guest(2, &mut Zero);
    let mut actions = drain(&mut node);
    let logged = log_of(&actions).len() as u64;
    node.handle_message(3, Message::Ack { received: logged, replayed: logged, position: Position::ZERO });
    let data = vec![0u8; abi::SECTOR_BYTES];
    node.handle_storage_done(4, ft::StorageDone { tag: 1, status: abi::DiskStatus::Ok, data });
    for ms in 5..20 {
        node.run_guest(ms, &mut Zero);
        let step = drain(&mut node);
        for action in &step {
            if let Action::Storage { request: StorageRequest::Write { target, .. }, .. } = action {
                node.handle_storage_done(
                    ms,
                    ft::StorageDone { tag: target.tag, status: abi::DiskStatus::Ok, data: Vec::new() },
                );
            }
        }
        actions.extend(step);
    }
    assert!(actions.iter().any(|a| matches!(a, Action::Storage { request: StorageRequest::Write { .. }, .. })));
    assert!(matches!(node.stopped(), Some(ft::Stopped::PoweredOff { status: 0 })), "{:?}", events(&actions));
}

/// Found by review: a backup that had the primary's goodbye but not yet the channel's close (the primary froze
/// right after sending it) still failed the primary after the timeout and went live after a clean power-off.
#[test]
fn a_backup_with_the_goodbye_never_goes_live() {
    let script = Script::console_then_power_off;
    let mut primary = primary(script());
    primary.run_guest(2, &mut Zero);
    let log = log_of(&drain(&mut primary));
    primary.handle_message(3, Message::Ack { received: 3, replayed: 0, position: Position::ZERO });
    let mut actions = drain(&mut primary);
    primary.run_guest(4, &mut Zero);
    actions.extend(drain(&mut primary));
    let goodbye: Vec<Message> = sent(&actions).into_iter().filter(|m| matches!(m, Message::Goodbye { .. })).collect();
    assert_eq!(goodbye.len(), 1, "{actions:?}");
    let mut backup = backup(script());
    for message in log.into_iter().chain(goodbye) {
        backup.handle_message(5, message);
    }
    // Nor after stray traffic following it (found by a second review): a protocol error then ends the pair too.
    backup.handle_message(6, Message::Released { output_seq: 9 });
    let mut actions = drain(&mut backup);
    for ms in [200, 400, 1_000] {
        backup.handle_timeout(ms * MS);
        actions.extend(drain(&mut backup));
    }
    assert!(!tested_and_set(&actions), "nobody goes live after a goodbye: {:?}", events(&actions));
    backup.run_guest(1_001 * MS, &mut Zero);
    drain(&mut backup);
    assert!(matches!(backup.stopped(), Some(ft::Stopped::PoweredOff { status: 0 })));
}

/// Found by review: the backup took any epoch from the hello, and `u64::MAX` made its first failure report
/// overflow (`epoch + 1`). The last epoch can never be moved on from, so a hello claiming it is refused.
#[test]
fn a_hello_with_the_last_epoch_is_refused() {
    let mut node = Node::Backup(Box::new(Backup::new(config(), Script::new([]), 64, 0)));
    node.handle_message(0, Message::Hello { pair_id: 3, epoch: u64::MAX, image_digest: 9 });
    node.handle_timeout(10_000 * MS);
    let events = events(&drain(&mut node));
    let lines: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    assert!(!events.iter().any(|e| matches!(e, Event::ChannelUp { .. })), "{lines:?}");
}

/// The other side of the heartbeat tests above (found by review: a node that ignored every heartbeat passed
/// them): a peer's fresh heartbeats alone keep it alive, for as long as they come.
#[test]
fn fresh_heartbeats_keep_an_idle_peer_alive() {
    let mut node = primary(Script::new([]));
    let mut actions = Vec::new();
    for ms in 2..400 {
        node.handle_message(ms * MS, heartbeat(WireRole::Backup, 1, ms, 0));
        node.handle_timeout(ms * MS);
        actions.extend(drain(&mut node));
    }
    assert!(!tested_and_set(&actions), "{:?}", events(&actions));
    let mut node = backup(Script::new([]));
    let mut actions = Vec::new();
    for ms in 2..400 {
        node.handle_message(ms * MS, heartbeat(WireRole::Primary, 1, ms, 0));
        node.handle_timeout(ms * MS);
        actions.extend(drain(&mut node));
    }
    assert!(!tested_and_set(&actions), "{:?}", events(&actions));
}

/// Found by `ftvm record`'s tests (the vCPU-thread change): a driver that took a powered-off primary's stop and
/// then drained it once more got a second goodbye, which replay refuses as traffic after the goodbye. Nothing
/// follows the goodbye, however often the primary is polled.
#[test]
fn a_primary_says_goodbye_once_however_often_it_is_polled() {
    let mut primary = Primary::new(config(), Script::console_then_power_off(), 64, 1, 0);
    let mut actions: Vec<Action> = std::iter::from_fn(|| primary.poll_action()).collect();
    primary.handle_message(1, Message::Welcome { pair_id: 3, epoch: 1 });
    primary.run_guest(2, &mut Zero);
    actions.extend(std::iter::from_fn(|| primary.poll_action()));
    primary.handle_message(3, Message::Ack { received: 3, replayed: 3, position: Position::ZERO });
    actions.extend(std::iter::from_fn(|| primary.poll_action()));
    assert!(matches!(primary.take_stopped(), Some(ft::Stopped::PoweredOff { status: 0 })), "{actions:?}");
    actions.extend(std::iter::from_fn(|| primary.poll_action()));
    let goodbyes = sent(&actions).into_iter().filter(|m| matches!(m, Message::Goodbye { .. })).count();
    assert_eq!(goodbyes, 1, "{actions:?}");
}

/// Eight console lines, one exit each, as a primary logs them with one exit per slice; and a fresh backup of the
/// same guest with the same one-exit slices, welcomed, that has received nothing yet.
fn eight_console_lines() -> (Vec<Message>, Node<Script>) {
    console_lines(8)
}

/// `lines` console lines, one exit each, as [`eight_console_lines`].
fn console_lines(lines: usize) -> (Vec<Message>, Node<Script>) {
    let console = Exit::PortOut { port: abi::CONSOLE_WRITE, size: 4, value: 0x100 };
    let script = || {
        let mut script = Script::new(std::iter::repeat_n(console, lines));
        script.put_buffer(0x100, b"hi\n");
        script
    };
    let one_exit_slices = Config { slice_exits_max: 1, ..config() };
    let mut primary = Node::Primary(Box::new(Primary::new(one_exit_slices.clone(), script(), 64, 1, 0)));
    drain(&mut primary);
    primary.handle_message(1, Message::Welcome { pair_id: 3, epoch: 1 });
    let mut log = Vec::new();
    for step in 0..lines as u64 {
        primary.run_guest(2 + step, &mut Zero);
        log.extend(log_of(&drain(&mut primary)));
    }
    assert_eq!(log.len(), lines, "{log:?}");
    (log, backup_with(one_exit_slices, script()))
}

/// Found by `ftvm bench` (a backup held to half a CPU, the `cpu` guest, one entry every 4 ms): a backup with
/// entries waiting acknowledged replay progress only every 64 entries or when its buffer drained, so for a guest
/// with sparse entries the primary heard nothing of the replay for a quarter of a second, saw its execution lag
/// grow by a millisecond per millisecond, and throttled its guest to 5 % while the backup was in fact catching
/// up. Replay progress must be reported within `REPLAY_ACK_NS` however few entries it covers.
#[test]
fn replay_progress_is_acknowledged_in_time_while_entries_still_wait() {
    let (log, mut backup) = eight_console_lines();
    for message in log {
        backup.handle_message(2 * MS, message);
    }
    let mut acks = sent(&drain(&mut backup));
    // One entry replayed per slice, a slice every REPLAY_ACK_NS: the buffer never drains in the first slices.
    for slice in 1..=3 {
        let now_ns = 2 * MS + slice * ft::backup::REPLAY_ACK_NS;
        backup.handle_timeout(now_ns);
        backup.run_guest(now_ns, &mut Zero);
        acks.extend(sent(&drain(&mut backup)));
    }
    let progress: Vec<u64> = acks
        .iter()
        .filter_map(|message| match message {
            Message::Ack { received: 8, replayed, .. } if *replayed < 8 => Some(*replayed),
            _ => None,
        })
        .filter(|replayed| *replayed > 0)
        .collect();
    assert!(progress.len() >= 2, "progress reported while entries wait: {acks:?}");
}

/// The timing of replay-progress acks (mutation testing found both unchecked): progress waits at most
/// `REPLAY_ACK_NS` after the last report of progress, the backup asks to be woken for it, and an ack that reports
/// only receipt does not restart that wait.
#[test]
fn replay_progress_waits_at_most_replay_ack_ns_after_the_last_progress_report() {
    let (log, mut backup) = eight_console_lines();
    let (first, rest) = log.split_at(4);
    for message in first.iter().cloned() {
        backup.handle_message(2 * MS, message);
    }
    drain(&mut backup);
    let replayed_in = |acks: &[Message]| {
        acks.iter()
            .filter_map(|m| match m {
                Message::Ack { replayed, .. } => Some(*replayed),
                _ => None,
            })
            .max()
    };
    let step = ft::backup::REPLAY_ACK_NS;
    // One exit per slice: a slice replays the entry of the last exit and runs to the next.
    backup.run_guest(10 * MS, &mut Zero);
    let first_ns = 10 * MS + step / 20;
    backup.run_guest(first_ns, &mut Zero);
    assert_eq!(replayed_in(&sent(&drain(&mut backup))), Some(1), "the first progress is reported at once");
    backup.run_guest(first_ns + step / 4, &mut Zero);
    backup.handle_timeout(first_ns + step / 4);
    assert_eq!(replayed_in(&sent(&drain(&mut backup))), None, "not again within REPLAY_ACK_NS");
    // Heartbeats and failure detection wake the backup later than that: the progress must have its own wake-up.
    let due = backup.poll_timeout().expect("a deadline");
    assert!(due <= first_ns + step, "woken for the progress by {}, not {due}", first_ns + step);
    // New entries arrive: their receipt is acknowledged with the progress so far, which restarts the wait...
    let reported_ns = first_ns + step / 2;
    backup.handle_message(reported_ns, rest[0].clone());
    assert_eq!(replayed_in(&sent(&drain(&mut backup))), Some(2));
    // ...but a receipt alone, with no new progress in it, does not.
    let receipt_ns = reported_ns + step * 9 / 10;
    backup.handle_message(receipt_ns, rest[1].clone());
    assert_eq!(replayed_in(&sent(&drain(&mut backup))), Some(2), "a receipt-only ack");
    backup.run_guest(reported_ns + step + step / 20, &mut Zero);
    assert_eq!(
        replayed_in(&sent(&drain(&mut backup))),
        Some(3),
        "REPLAY_ACK_NS since the last report of progress has passed: reported at once"
    );
}

/// Found with `perf trace` on `ftvm bench`'s `timer` guest: a backup whose buffer drained acknowledged replay
/// progress at once, in an ack of its own after the receipt ack of the same entry, so a guest whose entries come
/// a millisecond apart cost two acks per entry (a write on the backup, a read on the primary, each 10 to 30 µs on
/// a nested host). Progress now rides on the next receipt ack, and goes alone only `REPLAY_ACK_NS` after the
/// last report: one ack per entry, and the last replay is still reported in time (an idle pair shows no lag).
#[test]
fn replay_progress_of_entries_a_millisecond_apart_rides_on_the_next_receipt_ack() {
    let (log, mut backup) = eight_console_lines();
    let mut acks = Vec::new();
    let mut now_ns = 2 * MS;
    // As the driver does: the entry is handed over and its receipt acknowledged, then the guest replays all it
    // can, with what it queues sent after each slice.
    for message in log {
        now_ns += MS;
        backup.handle_timeout(now_ns);
        backup.handle_message(now_ns, message);
        acks.extend(sent(&drain(&mut backup)));
        while backup.run_guest(now_ns, &mut Zero) == ft::Progress::Ran {
            acks.extend(sent(&drain(&mut backup)));
        }
        acks.extend(sent(&drain(&mut backup)));
    }
    let acks: Vec<(u64, u64)> = acks
        .iter()
        .filter_map(|message| match message {
            Message::Ack { received, replayed, .. } => Some((*received, *replayed)),
            _ => None,
        })
        .collect();
    // The first replay is reported alone (nothing was for longer than REPLAY_ACK_NS); then one ack per entry.
    assert_eq!(acks.len(), 9, "one ack per entry, not two (16 before): {acks:?}");
    for (received, replayed) in &acks[2..] {
        assert_eq!(*replayed, received - 1, "each receipt ack carries the replay of the entry before: {acks:?}");
    }
    let due_ns = backup.poll_timeout().expect("the last replay's report is due");
    assert!(due_ns <= now_ns + ft::backup::REPLAY_ACK_NS, "due at {due_ns}, after {now_ns}");
    backup.handle_timeout(due_ns);
    let last = sent(&drain(&mut backup));
    assert!(last.iter().any(|m| matches!(m, Message::Ack { received: 8, replayed: 8, .. })), "{last:?}");
}

/// A backup with a long buffer reports replay progress every `REPLAY_ACK_ENTRIES` (64) replayed entries while time
/// stands still, not at every entry (mutation testing found the count unchecked).
#[test]
fn replay_progress_of_a_long_buffer_is_reported_every_64_entries() {
    let (log, mut backup) = console_lines(150);
    let now_ns = 2 * MS;
    for message in log {
        backup.handle_message(now_ns, message);
    }
    drain(&mut backup);
    let mut reported = Vec::new();
    while backup.run_guest(now_ns, &mut Zero) == ft::Progress::Ran {
        for message in sent(&drain(&mut backup)) {
            if let Message::Ack { replayed, .. } = message {
                reported.push(replayed);
            }
        }
    }
    // The first replay is reported at once (nothing was for REPLAY_ACK_NS), then every 64 entries.
    assert_eq!(reported, [1, 65, 129], "progress every 64 entries while entries wait, at one instant");
}
