//! Re-protection in the core, without a driver: a live primary clones itself onto a joiner, message by message,
//! and the joiner refuses what is not a clone of its pair.

mod common;

use common::{config, drain, sent, Script, Zero};
use ft::join::Joiner;
use ft::wire::Message;
use ft::{Action, ArbiterOutcome, Event, Node, Role, Stopped, StorageDone};

/// A primary whose backup never came: it won epoch 2 and runs alone. Every page of its guest's memory differs
/// from the others, so that a page cloned to the wrong place shows in the state hash.
fn unprotected_primary() -> Node<Script> {
    let mut script = Script::new([]);
    for (page, bytes) in script.memory.chunks_mut(ft::guest::PAGE_BYTES).enumerate() {
        bytes.fill(page as u8 + 1);
    }
    let mut node = Node::Primary(Box::new(ft::primary::Primary::new(config(), script, 64, 1, 0)));
    node.handle_channel_closed(1, "no logging channel");
    node.handle_arbiter(2, ArbiterOutcome::Won { epoch: 2 });
    drain(&mut node);
    assert_eq!(node.role(), Role::Unprotected);
    node
}

fn joiner() -> Node<Script> {
    Node::Joining(Box::new(Joiner::new(config(), Script::new([]), 64, 0xb, 0)))
}

/// Hands every channel message of `actions` to `to`; returns whether any went.
fn deliver(actions: &[Action], to: &mut Node<Script>, now_ns: u64) -> bool {
    let messages = sent(actions);
    for message in &messages {
        to.handle_message(now_ns, message.clone());
    }
    !messages.is_empty()
}

#[test]
fn a_primary_clones_onto_a_joiner_and_is_protected_from_the_cut() {
    let mut primary = unprotected_primary();
    let mut joiner = joiner();
    assert!(primary.accepts_joiner());
    primary.handle_joiner(10);
    assert!(!primary.accepts_joiner(), "one joiner at a time");
    deliver(&drain(&mut joiner), &mut primary, 11);
    let actions = drain(&mut primary);
    assert!(actions.contains(&Action::TestAndSet { expected_epoch: 2 }), "the arbiter records the joiner first");
    primary.handle_arbiter(12, ArbiterOutcome::Won { epoch: 3 });
    assert_eq!(primary.epoch(), 3);
    // Passes and acks until the cut: the script dirties every page every time, so the passes run out.
    let mut now_ns = 13;
    let mut joiner_events = Vec::new();
    for _ in 0..20 {
        now_ns += 1;
        primary.run_guest(now_ns, &mut Zero);
        let from_primary = drain(&mut primary);
        deliver(&from_primary, &mut joiner, now_ns);
        if joiner.role() == Role::Joining {
            assert_eq!(joiner.epoch(), 3, "receiving the clone of epoch 3");
            let progress = joiner.stats(now_ns).clone.expect("the joiner's progress");
            // Each pass ends with all 16 pages (the script dirties every page every time).
            assert_eq!(progress.pages_total, 16);
            assert_eq!(progress.pages_done, 16 * u64::from(progress.pass - 1), "{progress:?}");
        }
        let from_joiner = drain(&mut joiner);
        joiner_events.extend(common::events(&from_joiner));
        deliver(&from_joiner, &mut primary, now_ns);
        if joiner.role() == Role::Backup {
            break;
        }
    }
    assert!(
        joiner_events.iter().any(|event| matches!(event, Event::Cloned { epoch: 3, pages, .. } if *pages >= 16)),
        "the joiner says it is cloned: {joiner_events:?}"
    );
    assert_eq!(joiner.role(), Role::Backup, "the joiner restored the cut and replays from it");
    assert_eq!(joiner.epoch(), 3);
    assert_eq!(primary.role(), Role::Primary, "protected again");
    assert_eq!(joiner.position(), primary.position());
}

#[test]
fn a_joiner_refuses_another_pairs_clone_pages_out_of_range_and_a_state_that_does_not_match() {
    let stopped = |node: &mut Node<Script>| {
        let actions = drain(node);
        assert!(actions.iter().any(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. }))), "{actions:?}");
        assert!(actions.contains(&Action::CloseChannel));
        matches!(node.stopped(), Some(Stopped::JoinFailed(_)))
    };
    let mut foreign = joiner();
    drain(&mut foreign);
    foreign.handle_message(1, Message::CloneBegin { pair_id: 99, epoch: 3, memory_bytes: 64 * 1024 });
    assert!(stopped(&mut foreign), "another pair's clone");

    let mut beyond = joiner();
    drain(&mut beyond);
    beyond.handle_message(1, Message::CloneBegin { pair_id: config().pair_id, epoch: 3, memory_bytes: 64 * 1024 });
    beyond.handle_message(2, Message::ClonePages { pass: 1, pages: vec![(16, vec![0; ft::guest::PAGE_BYTES])] });
    assert!(stopped(&mut beyond), "page 16 of a 16-page guest");

    let mut other_size = joiner();
    drain(&mut other_size);
    other_size.handle_message(1, Message::CloneBegin { pair_id: config().pair_id, epoch: 3, memory_bytes: 1 << 30 });
    assert!(stopped(&mut other_size), "a clone of another memory size");

    let mut mismatch = joiner();
    drain(&mut mismatch);
    mismatch.handle_message(1, Message::CloneBegin { pair_id: config().pair_id, epoch: 3, memory_bytes: 64 * 1024 });
    let platform = ft::platform::Platform::new(64).encode();
    let mut cpu = 5u64.to_le_bytes().to_vec();
    cpu.extend_from_slice(&0u64.to_le_bytes());
    let position = ft::Position { exits: 5, instructions: 0 };
    let cut = Message::CloneCut { position, cpu, platform, halted: false, hash: 0xdead };
    {
        cov_mark::check!(clone_state_mismatch);
        mismatch.handle_message(2, cut);
    }
    assert!(stopped(&mut mismatch), "a state hash that is not the primary's");
    assert_eq!(mismatch.role(), Role::Stopped, "never a backup");
}

#[test]
fn a_joiner_that_hears_nothing_gives_up_and_a_primary_whose_joiner_goes_quiet_runs_on_alone() {
    let mut quiet = joiner();
    drain(&mut quiet);
    let deadline = quiet.poll_timeout().expect("waits for the primary");
    quiet.handle_timeout(deadline - 1);
    assert!(drain(&mut quiet).is_empty(), "not before the startup timeout");
    quiet.handle_timeout(deadline);
    let actions = drain(&mut quiet);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. }))), "{actions:?}");
    assert!(matches!(quiet.stopped(), Some(Stopped::JoinFailed(_))));

    let mut primary = unprotected_primary();
    primary.handle_joiner(10);
    let deadline = primary.poll_timeout().expect("waits for the Join");
    primary.handle_timeout(deadline);
    let actions = drain(&mut primary);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. }))));
    assert_eq!(primary.role(), Role::Unprotected);
    assert!(primary.accepts_joiner(), "ready for the next joiner");
}

/// The joiner's life before the cut: no epoch until the clone begins; a clone of epoch 0 is no clone; the primary
/// must speak within the failure timeout once the clone runs; a broken channel ends the attempt, once; and a
/// stopped joiner takes nothing more.
#[test]
fn a_joiner_waits_within_its_timeouts_and_stops_once() {
    let mut zero = joiner();
    drain(&mut zero);
    assert_eq!(zero.epoch(), 0, "no epoch before the clone begins");
    zero.handle_message(1, Message::CloneBegin { pair_id: config().pair_id, epoch: 0, memory_bytes: 64 * 1024 });
    drain(&mut zero);
    assert!(matches!(zero.stopped(), Some(Stopped::JoinFailed(reason)) if reason.contains("epoch 0")));

    let mut slow = joiner();
    drain(&mut slow);
    let begin = Message::CloneBegin { pair_id: config().pair_id, epoch: 3, memory_bytes: 64 * 1024 };
    // Seconds into the run, so that the silence the reason gives is its own, not the clock's.
    let (begun_ns, heard_ns) = (7_000_000_000, 8_000_000_000);
    slow.handle_message(begun_ns, begin);
    let failure_ns = config().failure_timeout_ms * 1_000_000;
    assert_eq!(slow.poll_timeout(), Some(begun_ns + failure_ns), "the failure timeout from the last word");
    slow.handle_message(heard_ns, Message::ClonePages { pass: 1, pages: vec![(0, vec![1; ft::guest::PAGE_BYTES])] });
    assert_eq!(slow.poll_timeout(), Some(heard_ns + failure_ns));
    slow.handle_timeout(heard_ns + failure_ns - 1);
    drain(&mut slow);
    assert!(slow.stopped().is_none());
    slow.handle_timeout(heard_ns + failure_ns);
    drain(&mut slow);
    let Some(Stopped::JoinFailed(reason)) = slow.stopped() else { panic!("stopped by the timeout") };
    assert!(reason.contains(&format!("for {} ms", config().failure_timeout_ms)), "{reason}");
    assert_eq!(slow.poll_timeout(), None, "a stopped joiner waits for nothing");

    let mut cut_off = joiner();
    drain(&mut cut_off);
    cut_off.handle_channel_closed(5, "reset by peer");
    let actions = drain(&mut cut_off);
    let abandoned = |actions: &[Action]| {
        actions.iter().filter(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. }))).count()
    };
    assert_eq!(abandoned(&actions), 1, "{actions:?}");
    assert!(matches!(cut_off.stopped(), Some(Stopped::JoinFailed(reason)) if reason.contains("reset by peer")));
    // Once stopped: nothing more is taken, and nothing more said.
    cut_off.handle_channel_closed(6, "again");
    cut_off.handle_message(7, Message::CloneBegin { pair_id: config().pair_id, epoch: 3, memory_bytes: 64 * 1024 });
    cut_off.handle_timeout(u64::MAX / 2);
    assert_eq!(abandoned(&drain(&mut cut_off)), 0);
    assert_eq!(cut_off.epoch(), 0, "the late clone was not taken");
}

/// A write that storage completed before the cut, whose completion the guest had not been given yet: the cut
/// gives it to the guest first (the primary runs unprotected until the cut), so the new backup neither holds a
/// write it has no data for nor waits for a completion that will never be logged. Before, the new backup that
/// went live after the primary died at the cut panicked ("in-flight write tag 7 has no data from replay"). Found
/// by review.
#[test]
fn a_write_completed_at_storage_but_not_yet_delivered_at_the_cut_is_delivered_first() {
    let mut script = Script::new([]);
    let submit = script.disk_request(0x2000, ft::abi::DISK_OP_WRITE, 7, 3, 0x3000);
    script.exits.push_back(submit);
    let mut primary = Node::Primary(Box::new(ft::primary::Primary::new(config(), script, 64, 1, 0)));
    primary.handle_channel_closed(1, "no logging channel");
    primary.handle_arbiter(2, ArbiterOutcome::Won { epoch: 2 });
    drain(&mut primary);
    primary.run_guest(3, &mut Zero);
    assert!(drain(&mut primary).iter().any(|a| matches!(a, Action::Storage { .. })), "the write is issued");
    let mut joiner = joiner();
    primary.handle_joiner(10);
    deliver(&drain(&mut joiner), &mut primary, 11);
    drain(&mut primary);
    primary.handle_arbiter(12, ArbiterOutcome::Won { epoch: 3 });
    deliver(&drain(&mut primary), &mut joiner, 13);
    // The write completes at storage before the joiner's ack makes the primary cut.
    primary.handle_storage_done(14, StorageDone { tag: 7, status: ft::abi::DiskStatus::Ok, data: vec![] });
    deliver(&drain(&mut joiner), &mut primary, 15);
    let mut now_ns = 16;
    for _ in 0..20 {
        now_ns += 1;
        primary.run_guest(now_ns, &mut Zero);
        // The primary dies right after the cut: nothing after CloneCut reaches the joiner.
        for message in sent(&drain(&mut primary)) {
            let cut = matches!(message, Message::CloneCut { .. });
            joiner.handle_message(now_ns, message);
            if cut {
                break;
            }
        }
        if joiner.role() == Role::Backup {
            break;
        }
        deliver(&drain(&mut joiner), &mut primary, now_ns);
    }
    assert_eq!(joiner.role(), Role::Backup);
    joiner.handle_channel_closed(now_ns + 1, "the primary died");
    drain(&mut joiner);
    joiner.handle_arbiter(now_ns + 2, ArbiterOutcome::Won { epoch: 4 });
    drain(&mut joiner);
    for step in 0..20 {
        joiner.run_guest(now_ns + 3 + step, &mut Zero);
        drain(&mut joiner);
    }
    assert_eq!(joiner.role(), Role::Unprotected, "the clone went live: {:?}", joiner.stopped());
}

/// A pass larger than the window goes a window at a time: the primary never has more pages unacknowledged than
/// `clone_window_pages`, and refills as the joiner acknowledges.
#[test]
fn a_large_pass_goes_a_window_at_a_time() {
    let config = ft::Config { clone_window_pages: 4, ..config() };
    let (mut primary, mut joiner) = enlisted_pair(&config);
    let first = sent(&drain(&mut primary));
    assert_eq!(pages_sent(&first), 4, "one window of the 16 pages");
    assert!(!first.iter().any(|m| matches!(m, Message::ClonePassEnd { .. })), "the pass is not over");
    // The joiner acknowledges; each ack makes room for more, until the pass ends.
    let mut now_ns = 13;
    let mut total = pages_sent(&first);
    let mut pending = first;
    while !pending.iter().any(|m| matches!(m, Message::ClonePassEnd { .. })) {
        now_ns += 1;
        for message in pending {
            joiner.handle_message(now_ns, message);
        }
        deliver(&drain(&mut joiner), &mut primary, now_ns);
        pending = sent(&drain(&mut primary));
        let more = pages_sent(&pending);
        assert!(more <= 4, "never more than the window");
        assert!(more > 0, "an ack makes room");
        total += more;
        assert!(now_ns < 100, "the pass never ended");
    }
    assert_eq!(total, 16, "every page once");
}

/// A joiner that stops acknowledging pages is given up after the failure timeout; the primary runs on alone.
#[test]
fn a_joiner_that_stops_acknowledging_pages_is_given_up() {
    let config = ft::Config { clone_window_pages: 4, ..config() };
    let (mut primary, _joiner) = enlisted_pair(&config);
    assert_eq!(pages_sent(&sent(&drain(&mut primary))), 4);
    let deadline = primary.poll_timeout().expect("waits for the joiner's acks");
    assert_eq!(deadline, 12 + config.failure_timeout_ms * 1_000_000, "from the window's sending");
    primary.handle_timeout(deadline - 1);
    assert_eq!(primary.role(), Role::Unprotected);
    assert!(!drain(&mut primary).iter().any(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. }))));
    primary.handle_timeout(deadline);
    let actions = drain(&mut primary);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. }))), "{actions:?}");
    assert!(primary.accepts_joiner(), "the primary runs on alone, ready for another joiner");
}

/// An unprotected primary (its guest 16 pages) that enlisted a joiner at 12 ns: its first window is queued.
fn enlisted_pair(config: &ft::Config) -> (Node<Script>, Node<Script>) {
    let mut primary = Node::Primary(Box::new(ft::primary::Primary::new(config.clone(), Script::new([]), 64, 1, 0)));
    primary.handle_channel_closed(1, "no logging channel");
    primary.handle_arbiter(2, ArbiterOutcome::Won { epoch: 2 });
    drain(&mut primary);
    let mut joiner = Node::Joining(Box::new(Joiner::new(config.clone(), Script::new([]), 64, 0xb, 0)));
    primary.handle_joiner(10);
    deliver(&drain(&mut joiner), &mut primary, 11);
    drain(&mut primary);
    primary.handle_arbiter(12, ArbiterOutcome::Won { epoch: 3 });
    (primary, joiner)
}

fn pages_sent(messages: &[Message]) -> usize {
    messages.iter().map(|m| if let Message::ClonePages { pages, .. } = m { pages.len() } else { 0 }).sum()
}

/// What the primary takes from a joiner is checked: a pages ack of another pass, for pages never sent, or going
/// back is a protocol violation that ends the clone (never the primary); so is a `Join` of another image; and a
/// joiner whose channel closes while the arbiter records it is given up once the arbiter answers.
#[test]
fn a_primary_gives_up_joiners_that_break_the_protocol_and_runs_on() {
    let config = ft::Config { clone_window_pages: 4, ..config() };
    let violated = |node: &mut Node<Script>| {
        let actions = drain(node);
        let violation = actions.iter().any(|a| matches!(a, Action::Notify(Event::ProtocolViolation(_))));
        let abandoned = actions.iter().any(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. })));
        violation && abandoned && node.role() == Role::Unprotected && node.accepts_joiner()
    };
    for (pass, pages) in [(2, 1), (1, 5), (1, 0)] {
        let (mut primary, _joiner) = enlisted_pair(&config);
        assert_eq!(pages_sent(&sent(&drain(&mut primary))), 4);
        if pages == 0 {
            // Back from 3 pages acknowledged to none.
            primary.handle_message(13, Message::ClonePagesAck { pass: 1, pages: 3 });
            assert!(!violated(&mut primary), "a fair ack");
        }
        primary.handle_message(14, Message::ClonePagesAck { pass, pages });
        assert!(violated(&mut primary), "a pages ack for {pages} pages of pass {pass}");
    }

    let mut primary = unprotected_primary();
    primary.handle_joiner(10);
    let deadline = primary.poll_timeout().expect("waits for the Join");
    assert_eq!(deadline, 10 + config.startup_timeout_ms * 1_000_000, "the startup timeout from the channel");
    let join = Message::Join { pair_id: config.pair_id, image_digest: config.image_digest + 1, node: 0xb };
    primary.handle_message(11, join);
    let actions = drain(&mut primary);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. }))), "another image");
    assert!(!actions.iter().any(|a| matches!(a, Action::TestAndSet { .. })), "the arbiter is not asked");

    let mut primary = unprotected_primary();
    primary.handle_joiner(20);
    primary.handle_message(21, Message::Join { pair_id: config.pair_id, image_digest: config.image_digest, node: 7 });
    assert!(drain(&mut primary).contains(&Action::TestAndSet { expected_epoch: 2 }));
    primary.handle_channel_closed(22, "the joiner went away");
    primary.handle_arbiter(23, ArbiterOutcome::Won { epoch: 3 });
    let actions = drain(&mut primary);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify(Event::CloneAbandoned { .. }))), "{actions:?}");
    assert!(!sent(&actions).iter().any(|m| matches!(m, Message::CloneBegin { .. })), "no clone begins");
    assert_eq!((primary.role(), primary.epoch()), (Role::Unprotected, 3), "alone, in the epoch it won");
}
