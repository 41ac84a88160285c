//! Re-protection in the core, without a driver: a live primary clones itself onto a joiner, message by message,
//! and the joiner refuses what is not a clone of its pair.

mod common;

use common::{config, drain, sent, Script, Zero};
use ft::join::Joiner;
use ft::wire::Message;
use ft::{Action, ArbiterOutcome, Event, Node, Role, Stopped};

/// A primary whose backup never came: it won epoch 2 and runs alone.
fn unprotected_primary() -> Node<Script> {
    let mut node = Node::Primary(Box::new(ft::primary::Primary::new(config(), Script::new([]), 64, 1, 0)));
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
    for _ in 0..20 {
        now_ns += 1;
        primary.run_guest(now_ns, &mut Zero);
        let from_primary = drain(&mut primary);
        deliver(&from_primary, &mut joiner, now_ns);
        let from_joiner = drain(&mut joiner);
        deliver(&from_joiner, &mut primary, now_ns);
        if joiner.role() == Role::Backup {
            break;
        }
    }
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
