//! Targeted scenarios of the primary and backup state machines with a scripted guest: the Output Rule, named
//! divergences, refused handshakes, peer protocol errors, and the arbiter rules.

use std::collections::VecDeque;

use ft::abi;
use ft::backup::Backup;
use ft::log::{Entry, OutputKind};
use ft::primary::Primary;
use ft::wire::Message;
use ft::{Action, ArbiterOutcome, Config, EntropySource, Event, Exit, Guest, GuestError, Node, Position, Role};

/// A guest that makes a fixed sequence of exits and has a little memory for DMA.
struct Script {
    exits: VecDeque<Exit>,
    position: Position,
    memory: Vec<u8>,
}

impl Script {
    /// Writes "hi\n" to the console through CONSOLE_WRITE, then halts.
    fn console_then_halt() -> Script {
        let mut memory = vec![0u8; 4096];
        memory[0x100..0x104].copy_from_slice(&3u32.to_le_bytes());
        memory[0x104..0x107].copy_from_slice(b"hi\n");
        let exits = [Exit::PortOut { port: abi::CONSOLE_WRITE, size: 4, value: 0x100 }, Exit::Halt];
        Script { exits: exits.into_iter().collect(), position: Position::ZERO, memory }
    }
}

impl Guest for Script {
    fn run(&mut self, _instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        let exit = self.exits.pop_front().unwrap_or(Exit::Halt);
        self.position.exits += 1;
        Ok(exit)
    }
    fn position(&self) -> Position {
        self.position
    }
    fn pc(&self) -> u64 {
        0x1000 + self.position.exits
    }
    fn counts_instructions(&self) -> bool {
        false
    }
    fn complete_port_in(&mut self, _value: u32) {}
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let start = gpa as usize;
        let bytes =
            self.memory.get(start..start + buf.len()).ok_or(GuestError::MemoryOutOfRange { gpa, len: buf.len() })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        let start = gpa as usize;
        let len = data.len();
        self.memory.get_mut(start..start + len).ok_or(GuestError::MemoryOutOfRange { gpa, len })?.copy_from_slice(data);
        Ok(())
    }
    fn inject_interrupt(&mut self, _vector: u8) -> Result<(), GuestError> {
        Ok(())
    }
    fn state_hash(&mut self) -> Result<u64, GuestError> {
        Ok(self.position.exits)
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), GuestError> {
        Ok(())
    }
}

struct Zero;
impl EntropySource for Zero {
    fn next_u32(&mut self) -> u32 {
        0
    }
}

fn drain<G: Guest>(node: &mut Node<G>) -> Vec<Action> {
    std::iter::from_fn(|| node.poll_action()).collect()
}

fn config() -> Config {
    Config { pair_id: 3, image_digest: 9, ..Config::default() }
}

fn welcomed_primary() -> Node<Script> {
    let mut node = Node::Primary(Box::new(Primary::new(config(), Script::console_then_halt(), 64, 1, 0)));
    let hello = drain(&mut node);
    assert!(hello.iter().any(|a| matches!(a, Action::Send(Message::Hello { pair_id: 3, epoch: 1, .. }))));
    node.handle_message(1, Message::Welcome { pair_id: 3, epoch: 1 });
    node
}

#[test]
fn output_waits_for_the_ack_of_its_entry_while_execution_goes_on() {
    let mut node = welcomed_primary();
    node.run_guest(2, &mut Zero);
    let actions = drain(&mut node);
    let logged: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Message::Log { index, entry: Entry::Output { .. } }) => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(logged, vec![1], "the console write is logged as entry 1");
    assert!(!actions.iter().any(|a| matches!(a, Action::Release { .. })), "nothing leaves before the ack");
    assert_eq!(node.position().map(|p| p.exits), Some(2), "the guest ran on to its HLT meanwhile");
    assert_eq!(node.stats(3).outputs_held, 1);
    node.handle_message(4, Message::Ack { received: 1, replayed: 0, position: Position::ZERO });
    let released: Vec<_> = drain(&mut node)
        .into_iter()
        .filter_map(|a| match a {
            Action::Release { output, log_index } => Some((output, log_index)),
            _ => None,
        })
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].0.kind, OutputKind::Console);
    assert_eq!(released[0].0.bytes, b"hi\n");
    assert_eq!(released[0].1, Some(1));
}

#[test]
fn backup_names_the_exit_where_the_log_and_the_guest_disagree() {
    let mut primary = welcomed_primary();
    primary.run_guest(2, &mut Zero);
    let mut log: Vec<Message> =
        drain(&mut primary).into_iter().filter_map(|a| if let Action::Send(m) = a { Some(m) } else { None }).collect();
    // Tamper with the output record's digest: the backup's guest will produce the real bytes.
    for message in &mut log {
        if let Message::Log { entry: Entry::Output { record, .. }, .. } = message {
            record.digest ^= 1;
        }
    }
    let mut backup = Node::Backup(Box::new(Backup::new(config(), Script::console_then_halt(), 64, 0)));
    backup.handle_message(0, Message::Hello { pair_id: 3, epoch: 1, image_digest: 9 });
    for message in log.into_iter().filter(|m| matches!(m, Message::Log { .. })) {
        backup.handle_message(1, message);
    }
    backup.run_guest(2, &mut Zero);
    let events: Vec<Event> =
        drain(&mut backup).into_iter().filter_map(|a| if let Action::Notify(e) = a { Some(e) } else { None }).collect();
    let divergence = events
        .iter()
        .find_map(|e| if let Event::Diverged(d) = e { Some(d.to_string()) } else { None })
        .expect("the backup must diverge");
    assert!(divergence.starts_with("divergence at exit 1:"), "{divergence}");
    assert_eq!(backup.role(), Role::Stopped, "a diverged backup never goes live");
}

#[test]
fn backup_refuses_a_primary_of_another_pair_and_keeps_waiting() {
    let mut backup = Node::Backup(Box::new(Backup::new(config(), Script::console_then_halt(), 64, 0)));
    backup.handle_message(0, Message::Hello { pair_id: 4, epoch: 1, image_digest: 9 });
    let actions = drain(&mut backup);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify(Event::ProtocolViolation(_)))));
    assert!(actions.iter().any(|a| matches!(a, Action::CloseChannel)));
    assert!(!actions.iter().any(|a| matches!(a, Action::Send(Message::Welcome { .. }))));
    backup.handle_message(1, Message::Hello { pair_id: 3, epoch: 1, image_digest: 9 });
    assert!(drain(&mut backup).iter().any(|a| matches!(a, Action::Send(Message::Welcome { pair_id: 3, epoch: 1 }))));
}

#[test]
fn an_ack_beyond_the_log_is_a_protocol_violation_and_fails_the_peer() {
    let mut node = welcomed_primary();
    drain(&mut node);
    node.handle_message(2, Message::Ack { received: 99, replayed: 0, position: Position::ZERO });
    let actions = drain(&mut node);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify(Event::ProtocolViolation(_)))));
    assert!(actions.iter().any(|a| matches!(a, Action::TestAndSet { expected_epoch: 1 })));
}

#[test]
fn a_backup_that_never_paired_cannot_win_and_a_lost_race_halts() {
    let mut backup = Node::Backup(Box::new(Backup::new(config(), Script::console_then_halt(), 64, 0)));
    let startup_ns = config().startup_timeout_ms * 1_000_000;
    backup.handle_timeout(startup_ns);
    let actions = drain(&mut backup);
    assert!(
        actions.iter().any(|a| matches!(a, Action::TestAndSet { expected_epoch: 0 })),
        "it can only ask for the epoch before any pairing, which the arbiter never holds: {actions:?}"
    );
    backup.handle_arbiter(startup_ns + 1, ArbiterOutcome::Lost { epoch: 1 });
    backup.run_guest(startup_ns + 2, &mut Zero);
    assert_eq!(backup.role(), Role::Stopped);
}

#[test]
fn a_primary_whose_backup_fails_goes_on_unprotected_with_its_outputs() {
    let mut node = welcomed_primary();
    node.run_guest(2, &mut Zero);
    drain(&mut node);
    let silent_ns = 2 + config().failure_timeout_ms * 1_000_000;
    node.handle_timeout(silent_ns);
    assert!(drain(&mut node).iter().any(|a| matches!(a, Action::TestAndSet { expected_epoch: 1 })));
    node.handle_arbiter(silent_ns + 1, ArbiterOutcome::Won { epoch: 2 });
    let actions = drain(&mut node);
    assert!(actions.iter().any(|a| matches!(a, Action::Release { output, .. } if output.bytes == b"hi\n")));
    assert_eq!(node.role(), Role::Unprotected);
    assert_eq!(node.epoch(), 2);
}
