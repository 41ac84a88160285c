//! Tests written for mutants that survived `cargo mutants` on `ft` (README: "Measuring the tests"): each one
//! fails on the mutant named in its comment.

mod common;

use common::{config, drain, events, log_of, primary, sent, Script, Zero};
use ft::abi;
use ft::backup::Backup;
use ft::log::{Entry, Input};
use ft::primary::Primary;
use ft::wire::Message;
use ft::{Event, Exit, Node, Position};

const MS: u64 = 1_000_000;

/// with no lag samples kept (`LAG_SAMPLES_MAX` of 0) every test still passed, because none
/// looked at a lag that should be positive. An entry the backup received but has not replayed is lag.
#[test]
fn execution_lag_counts_from_the_oldest_entry_not_yet_replayed() {
    let mut primary = primary(Script::console_then_halt());
    primary.run_guest(2 * MS, &mut Zero);
    drain(&mut primary);
    primary.handle_message(3 * MS, Message::Ack { received: 1, replayed: 0, position: Position::default() });
    drain(&mut primary);
    assert_eq!(primary.stats(500 * MS).execution_lag_ns, 498 * MS, "received is not replayed");
    assert_eq!(primary.stats(500 * MS).acked, 1, "what the backup received");
    primary.handle_message(501 * MS, Message::Ack { received: 1, replayed: 1, position: Position::default() });
    assert_eq!(primary.stats(502 * MS).execution_lag_ns, 0);
}

/// `Primary::state_hash` and `Backup::state_hash` (what `ftvm` prints and compares) could
/// return a constant and no test of `ft` noticed. They must be the hash checkpoints carry.
#[test]
fn state_hashes_are_the_ones_checkpoints_carry() {
    let mut primary = Primary::new(config(), Script::console_then_halt(), 64, 1, 0);
    primary.handle_message(1, Message::Welcome { pair_id: 3, epoch: 1 });
    primary.take_actions();
    primary.checkpoint_now(2).unwrap();
    let checkpoint = sent(&Vec::from(primary.take_actions())).into_iter().find_map(|m| match m {
        Message::Log { entry: Entry::Checkpoint { hash, .. }, .. } => Some(hash),
        _ => None,
    });
    let hash = checkpoint.expect("a checkpoint entry");
    assert_eq!(primary.state_hash().unwrap(), hash);
    let mut backup = Backup::new(config(), Script::console_then_halt(), 64, 0);
    assert_eq!(backup.state_hash().unwrap(), hash, "the same guest at the same position");
}

/// a stopped timer (period 0) armed for "now" went unnoticed. A guest that stops its timer
/// gets no more timer interrupts.
#[test]
fn a_stopped_timer_raises_no_interrupts() {
    let set = |us| Exit::PortOut { port: abi::TIMER_PERIOD_US, size: 4, value: us };
    let mut node = primary(Script::new([set(1_000), set(0)]));
    let mut log = Vec::new();
    for ms in 2..50 {
        node.run_guest(ms * MS, &mut Zero);
        log.extend(log_of(&drain(&mut node)));
    }
    let timers =
        log.iter().filter(|m| matches!(m, Message::Log { entry: Entry::Input { input: Input::Timer, .. }, .. }));
    assert_eq!(timers.count(), 0, "{log:?}");
}

/// a `Welcome` of another pair or epoch brought the channel up like the right one.
#[test]
fn a_welcome_of_another_pair_or_epoch_is_refused() {
    for (pair_id, epoch) in [(4, 1), (3, 2)] {
        let mut node = Node::Primary(Box::new(Primary::new(config(), Script::new([]), 64, 1, 0)));
        drain(&mut node);
        node.handle_message(MS, Message::Welcome { pair_id, epoch });
        let events = events(&drain(&mut node));
        assert!(!events.iter().any(|e| matches!(e, Event::ChannelUp { .. })), "{events:?}");
        assert!(events.iter().any(|e| matches!(e, Event::ProtocolViolation(_))), "{events:?}");
    }
}

/// The backup's accessors (`epoch`, `buffered`, `stats`) returned constants, its entry count multiplied instead
/// of adding, and traffic after the goodbye was let through: none of it failed a test. What `ftvm status` and the
/// simulator read from a backup must be true.
#[test]
fn a_backup_reports_its_epoch_buffer_and_counts_and_refuses_traffic_after_the_goodbye() {
    let mut backup = Backup::new(config(), Script::new([]), 64, 0);
    backup.handle_message(0, Message::Hello { pair_id: 3, epoch: 5, image_digest: 9 });
    assert_eq!(backup.epoch(), 5);
    for index in 1..=3 {
        let entry =
            Entry::Input { position: Position { exits: 100 + index, instructions: 0 }, pc: 0, input: Input::Timer };
        backup.handle_message(index, Message::Log { index, entry });
    }
    assert_eq!(backup.buffered(), 3);
    assert_eq!(backup.stats().log_entries, 3);
    assert_eq!(backup.stats().acked, 0, "received, none replayed");
    let buffered = backup.buffered();
    backup.take_actions();
    backup.handle_message(4, Message::Goodbye { status: 0 });
    let entry = Entry::Input { position: Position { exits: 200, instructions: 0 }, pc: 0, input: Input::Timer };
    backup.handle_message(5, Message::Log { index: 4, entry });
    let actions = Vec::from(backup.take_actions());
    assert!(events(&actions).iter().any(|e| matches!(e, Event::ProtocolViolation(_))), "{actions:?}");
    assert_eq!(backup.buffered(), buffered, "nothing after the goodbye is taken");
}

/// `Backup::stats` reported the entries it replayed as `acked`; without that field the count was 0.
#[test]
fn a_backup_counts_what_it_replayed() {
    let mut primary = primary(Script::console_then_halt());
    primary.run_guest(2 * MS, &mut Zero);
    let log = log_of(&drain(&mut primary));
    let mut backup = Backup::new(config(), Script::console_then_halt(), 64, 0);
    backup.handle_message(0, Message::Hello { pair_id: 3, epoch: 1, image_digest: 9 });
    for message in log {
        backup.handle_message(3 * MS, message);
    }
    assert_eq!(backup.run_guest(4 * MS), ft::Progress::Ran, "it replayed, then ran out of log");
    assert_eq!(backup.buffered(), 0);
    assert_eq!(backup.stats().acked, 1, "{:?}", backup.stats());
}

/// A heartbeat's `sent_ms` multiplied instead of divided went unnoticed (still increasing, so still "fresh"),
/// though it overflows after five hours of uptime. Both sides stamp heartbeats with their clock in ms.
#[test]
fn heartbeats_carry_the_sender_clock_in_ms() {
    let stamps = |actions: &[ft::Action]| -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                ft::Action::Heartbeat(Message::Heartbeat { sent_ms, .. }) => Some(*sent_ms),
                _ => None,
            })
            .collect()
    };
    let mut node = primary(Script::new([]));
    drain(&mut node);
    node.handle_timeout(7_000 * MS);
    assert_eq!(stamps(&drain(&mut node)), vec![7_000]);
    let mut backup = Node::Backup(Box::new(Backup::new(config(), Script::new([]), 64, 0)));
    backup.handle_message(0, Message::Hello { pair_id: 3, epoch: 1, image_digest: 9 });
    drain(&mut backup);
    backup.handle_timeout(7_000 * MS);
    assert_eq!(stamps(&drain(&mut backup)), vec![7_000]);
}

/// An arbiter answer that does not move the epoch forward is refused and asked again after `arbiter_retry_ms`,
/// not at once (the retry delay divided instead of multiplied went unnoticed).
#[test]
fn a_grant_that_does_not_move_the_epoch_is_asked_again_after_the_retry_delay() {
    let retry_ns = config().arbiter_retry_ms * MS;
    let mut backup = Node::Backup(Box::new(Backup::new(config(), Script::new([]), 64, 0)));
    backup.handle_message(0, Message::Hello { pair_id: 3, epoch: 1, image_digest: 9 });
    backup.handle_channel_closed(MS, "gone");
    drain(&mut backup);
    backup.handle_arbiter(2 * MS, ft::ArbiterOutcome::Won { epoch: 1 });
    let actions = drain(&mut backup);
    assert!(events(&actions).iter().any(|e| matches!(e, Event::ProtocolViolation(_))), "{actions:?}");
    backup.handle_timeout(2 * MS + retry_ns - MS);
    assert!(!drain(&mut backup).iter().any(|a| matches!(a, ft::Action::TestAndSet { .. })), "too early");
    backup.handle_timeout(2 * MS + retry_ns);
    assert!(drain(&mut backup).iter().any(|a| matches!(a, ft::Action::TestAndSet { expected_epoch: 1 })));
}

/// A primary whose backup is declared failed, waiting for the arbiter.
fn arbitrating_primary() -> Node<Script> {
    let mut node = primary(Script::new([]));
    node.handle_channel_closed(2 * MS, "gone");
    assert!(drain(&mut node).iter().any(|a| matches!(a, ft::Action::TestAndSet { expected_epoch: 1 })));
    node
}

fn tests_and_sets(node: &mut Node<Script>) -> bool {
    drain(node).iter().any(|a| matches!(a, ft::Action::TestAndSet { .. }))
}

/// The primary's arbiter handling: a grant that does not move the epoch is refused (its guard removed, it went
/// live); after it, and after an unreachable arbiter, the next attempt waits `arbiter_retry_ms` (an addition
/// instead of a multiplication retried after a millisecond).
#[test]
fn the_primary_refuses_a_grant_that_does_not_move_the_epoch_and_retries_after_the_delay() {
    let retry_ns = config().arbiter_retry_ms * MS;
    for outcome in [ft::ArbiterOutcome::Won { epoch: 1 }, ft::ArbiterOutcome::Unreachable] {
        let mut node = arbitrating_primary();
        node.handle_arbiter(3 * MS, outcome);
        let events = events(&drain(&mut node));
        assert!(!events.iter().any(|e| matches!(e, Event::WentLive { .. })), "{outcome:?}: {events:?}");
        node.handle_timeout(3 * MS + retry_ns - MS);
        assert!(!tests_and_sets(&mut node), "{outcome:?}: asked again too early");
        node.handle_timeout(3 * MS + retry_ns);
        assert!(tests_and_sets(&mut node), "{outcome:?}: never asked again");
    }
}

/// A channel that closes before the backup welcomed the primary is "never connected", not a lost channel (the
/// arm deleted, the cause was wrong).
#[test]
fn a_channel_closed_before_the_welcome_is_never_connected() {
    let mut node = Node::Primary(Box::new(Primary::new(config(), Script::new([]), 64, 1, 0)));
    drain(&mut node);
    node.handle_channel_closed(MS, "refused");
    let events = events(&drain(&mut node));
    assert!(
        events.iter().any(|e| matches!(e, Event::PeerFailed { cause: ft::FailureCause::NeverConnected, .. })),
        "{events:?}"
    );
}

/// Acks outside the log are protocol violations: one that says more replayed than received, and one that goes
/// back (an `||` turned `&&` accepted both).
#[test]
fn acks_outside_the_log_are_violations() {
    for (received, replayed) in [(1, 2), (0, 0)] {
        let mut node = primary(Script::console_then_halt());
        node.run_guest(2 * MS, &mut Zero);
        drain(&mut node);
        node.handle_message(3 * MS, Message::Ack { received: 1, replayed: 0, position: Position::default() });
        drain(&mut node);
        node.handle_message(4 * MS, Message::Ack { received, replayed, position: Position::default() });
        let events = events(&drain(&mut node));
        let violation = events.iter().any(|e| matches!(e, Event::ProtocolViolation(_)));
        assert!(violation, "ack {received}/{replayed}: {events:?}");
    }
}

/// A divergence names what the guest did against what the log has (the guest's side emptied, operators would
/// read "actual  at pc").
#[test]
fn a_divergence_names_what_the_guest_did() {
    let mut backup = Backup::new(config(), Script::console_then_halt(), 64, 0);
    backup.handle_message(0, Message::Hello { pair_id: 3, epoch: 1, image_digest: 9 });
    let record = ft::log::OutputRecord { seq: 0, kind: ft::log::OutputKind::Console, length_bytes: 3, digest: 1 };
    let entry = Entry::Output { position: Position { exits: 1, instructions: 0 }, pc: 0, record };
    backup.handle_message(MS, Message::Log { index: 1, entry });
    backup.run_guest(2 * MS);
    let divergence = events(&Vec::from(backup.take_actions())).into_iter().find_map(|e| match e {
        Event::Diverged(divergence) => Some(divergence),
        _ => None,
    });
    let divergence = divergence.expect("other console bytes than the log's diverge");
    assert!(divergence.expected.contains("output #0"), "{divergence}");
    assert!(divergence.actual.contains("output #0 Console 3 bytes"), "{divergence}");
}

/// A power-off waits for the disk writes before it: with the scheduler always "idle" the primary stopped with
/// a write still at storage.
#[test]
fn a_power_off_waits_for_its_disk_writes() {
    let mut script = Script::new([]);
    let write = script.disk_request(0x440, abi::DISK_OP_WRITE, 2, 5, 0x3000);
    script.exits.extend([write, Exit::PortOut { port: abi::POWER_OFF, size: 4, value: 0 }]);
    let mut node = primary(script);
    node.run_guest(2 * MS, &mut Zero);
    let logged = log_of(&drain(&mut node)).len() as u64;
    node.handle_message(3 * MS, Message::Ack { received: logged, replayed: logged, position: Position::ZERO });
    node.run_guest(4 * MS, &mut Zero);
    let actions = drain(&mut node);
    assert!(actions.iter().any(|a| matches!(a, ft::Action::Storage { .. })), "{actions:?}");
    assert!(node.stopped().is_none(), "stopped with its write still at storage");
    node.handle_storage_done(5 * MS, ft::StorageDone { tag: 2, status: abi::DiskStatus::Ok, data: Vec::new() });
    node.run_guest(6 * MS, &mut Zero);
    let actions = drain(&mut node);
    assert!(events(&actions).contains(&Event::PoweredOff { status: 0 }), "{actions:?}");
}

/// `oldest_output_held_ns` (what `ftvm status` shows of the Output Rule) read 0 with the field deleted.
#[test]
fn stats_show_how_long_the_oldest_output_has_been_held() {
    let mut node = primary(Script::console_then_halt());
    node.run_guest(2 * MS, &mut Zero);
    drain(&mut node);
    assert_eq!(node.stats(102 * MS).oldest_output_held_ns, 100 * MS);
    assert_eq!(node.stats(102 * MS).outputs_held, 1);
}

/// Checkpoints come every `checkpoint_interval_exits` exits exactly (one exit later went unnoticed).
#[test]
fn checkpoints_come_every_interval_exactly() {
    let config = ft::Config { checkpoint_interval_exits: 4, ..config() };
    let yield_ = Exit::PortOut { port: abi::YIELD, size: 4, value: 0 };
    let mut node = Node::Primary(Box::new(Primary::new(config, Script::new([yield_; 9]), 64, 1, 0)));
    drain(&mut node);
    node.handle_message(1, Message::Welcome { pair_id: 3, epoch: 1 });
    node.run_guest(2 * MS, &mut Zero);
    let at: Vec<u64> = log_of(&drain(&mut node))
        .into_iter()
        .filter_map(|m| match m {
            Message::Log { entry: Entry::Checkpoint { position, .. }, .. } => Some(position.exits),
            _ => None,
        })
        .collect();
    assert_eq!(at, vec![4, 8], "checkpoints at these exits");
}

/// `Vm::state_hash` returning a constant survived: primary and backup then always "agree". The hash covers the
/// guest, the devices and the halted flag.
#[test]
fn the_vm_state_hash_tells_guest_and_halt_states_apart() {
    let mut one = ft::vm::Vm::new(Script::new([]), 64);
    let mut other = ft::vm::Vm::new(Script::new([]), 64);
    let same = one.state_hash().expect("hash");
    assert_eq!(same, other.state_hash().expect("hash"), "equal machines hash equal");
    other.guest.position.exits = 1;
    assert_ne!(same, other.state_hash().expect("hash"), "a guest that moved");
    one.halted = true;
    assert_ne!(same, one.state_hash().expect("hash"), "a halted guest");
}
