//! A guest on a vCPU thread of its own (`RunStart::Started`): the core goes on handling acks while the guest runs,
//! and a kick, which stops the guest between two exits, delivers nothing there.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{drain, log_of, primary, Script, Zero};
use ft::guest::RunStart;
use ft::log::{Entry, Input};
use ft::wire::Message;
use ft::{abi, Action, Exit, Guest, GuestError, Node, Position, Progress, StorageDone};

/// What the test does to the "vCPU thread": let the run end at its next exit, or kick it.
#[derive(Default)]
struct Thread {
    exit_ready: bool,
    kicked: bool,
}

/// A scripted guest whose runs start on a pretend vCPU thread and end when the test says so.
struct OnThread {
    script: Script,
    thread: Rc<RefCell<Thread>>,
    running: bool,
}

impl Guest for OnThread {
    fn run(&mut self, target: Option<u64>) -> Result<Exit, GuestError> {
        self.script.run(target)
    }
    fn start_run(&mut self, _target: Option<u64>) -> RunStart {
        assert!(!self.running, "one run at a time");
        self.running = true;
        RunStart::Started
    }
    fn finish_run(&mut self) -> Option<Result<Exit, GuestError>> {
        let mut thread = self.thread.borrow_mut();
        let result = if std::mem::take(&mut thread.kicked) {
            Ok(Exit::Kicked)
        } else if std::mem::take(&mut thread.exit_ready) {
            self.script.run(None)
        } else {
            return None;
        };
        self.running = false;
        Some(result)
    }
    fn kick(&self) {
        self.thread.borrow_mut().kicked = true;
    }
    fn position(&self) -> Position {
        self.script.position()
    }
    fn pc(&self) -> u64 {
        self.script.pc()
    }
    fn counts_instructions(&self) -> bool {
        false
    }
    fn complete_port_in(&mut self, value: u32) {
        self.script.complete_port_in(value)
    }
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        assert!(!self.running, "DMA out of a running guest");
        self.script.read_memory(gpa, buf)
    }
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        assert!(!self.running, "DMA into a running guest");
        self.script.write_memory(gpa, data)
    }
    fn inject_interrupt(&mut self, vector: u8) -> Result<(), GuestError> {
        assert!(!self.running, "an interrupt into a running guest");
        self.script.inject_interrupt(vector)
    }
    fn state_hash(&mut self) -> Result<u64, GuestError> {
        assert!(!self.running, "a hash of a running guest");
        self.script.state_hash()
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        self.script.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), GuestError> {
        self.script.restore(snapshot)
    }
}

/// A welcomed primary over `script` on a pretend vCPU thread.
fn threaded_primary(script: Script) -> (Node<OnThread>, Rc<RefCell<Thread>>) {
    let thread = Rc::new(RefCell::new(Thread::default()));
    let guest = OnThread { script, thread: thread.clone(), running: false };
    let mut node = Node::Primary(Box::new(ft::primary::Primary::new(common::config(), guest, 64, 1, 0)));
    drain(&mut node);
    node.handle_message(1, Message::Welcome { pair_id: 3, epoch: 1 });
    (node, thread)
}

/// Lets the run in progress end at its next exit and hands the result to the node.
fn exit(node: &mut Node<OnThread>, thread: &Rc<RefCell<Thread>>, now_ns: u64) -> Progress {
    thread.borrow_mut().exit_ready = true;
    node.guest_exited(now_ns, &mut Zero)
}

#[test]
fn an_ack_releases_outputs_while_the_guest_runs_on() {
    let mut script = Script::new([Exit::PortOut { port: abi::CONSOLE_WRITE, size: 4, value: 0x100 }]);
    script.put_buffer(0x100, b"hi\n");
    let (mut node, thread) = threaded_primary(script);
    assert_eq!(node.run_guest(2, &mut Zero), Progress::Running);
    assert_eq!(node.guest_exited(3, &mut Zero), Progress::Running, "the run has not ended yet");
    assert_eq!(exit(&mut node, &thread, 4), Progress::Ran);
    let logged = log_of(&drain(&mut node));
    assert!(matches!(logged.as_slice(), [Message::Log { index: 1, entry: Entry::Output { .. } }]), "{logged:?}");
    // The next run starts, and goes on while the ack of the console line comes in.
    assert_eq!(node.run_guest(5, &mut Zero), Progress::Running);
    node.handle_message(6, Message::Ack { received: 1, replayed: 1, position: Position { exits: 1, instructions: 0 } });
    let released = drain(&mut node);
    assert!(node.guest_running(), "the guest is still out on its vCPU thread");
    assert!(
        released.iter().any(|action| matches!(action, Action::Release { log_index: Some(1), .. })),
        "the ack released the console line without waiting for an exit: {released:?}"
    );
}

#[test]
fn after_a_kick_inputs_wait_for_the_next_exit() {
    let mut script = Script::new([]);
    let read = script.disk_request(0x400, abi::DISK_OP_READ, 1, 5, 0x2000);
    script.exits.extend([read, Exit::PortOut { port: 0x7f, size: 1, value: 0 }]);
    let (mut node, thread) = threaded_primary(script);
    assert_eq!(node.run_guest(2, &mut Zero), Progress::Running);
    assert_eq!(exit(&mut node, &thread, 3), Progress::Ran);
    assert!(drain(&mut node).iter().any(|action| matches!(action, Action::Storage { .. })));
    // The guest runs on; the read completes meanwhile; then a kick stops the guest between two exits.
    assert_eq!(node.run_guest(4, &mut Zero), Progress::Running);
    node.handle_storage_done(5, StorageDone { tag: 1, status: abi::DiskStatus::Ok, data: vec![7; abi::SECTOR_BYTES] });
    {
        cov_mark::check!(guest_kicked_between_exits);
        thread.borrow_mut().kicked = true;
        assert_eq!(node.guest_exited(6, &mut Zero), Progress::Ran);
    }
    {
        // Where the kick left the guest is no position: the completion is not delivered there.
        cov_mark::check!(inputs_wait_for_an_exit_after_a_kick);
        assert_eq!(node.run_guest(7, &mut Zero), Progress::Running);
    }
    assert!(log_of(&drain(&mut node)).is_empty(), "nothing is logged between two exits");
    assert_eq!(exit(&mut node, &thread, 8), Progress::Ran);
    assert_eq!(node.run_guest(9, &mut Zero), Progress::Running);
    let logged = log_of(&drain(&mut node));
    let completion = logged.iter().find_map(|message| match message {
        Message::Log { entry: Entry::Input { position, input: Input::DiskComplete { .. }, .. }, .. } => Some(*position),
        _ => None,
    });
    assert_eq!(completion, Some(Position { exits: 2, instructions: 0 }), "delivered at the exit after the kick");
}

#[test]
fn a_stopping_node_kicks_its_running_guest_and_stops_once_it_is_back() {
    let (mut node, thread) = threaded_primary(Script::new([]));
    assert_eq!(node.run_guest(2, &mut Zero), Progress::Running);
    // The backup won the arbiter meanwhile: this primary must halt.
    node.handle_channel_closed(3, "cut");
    node.handle_arbiter(4, ft::ArbiterOutcome::Lost { epoch: 2 });
    node.kick_guest_if_wanted();
    assert!(thread.borrow().kicked, "the run was kicked");
    assert!(node.stopped().is_none(), "not stopped while the guest is out");
    node.guest_exited(5, &mut Zero);
    drain(&mut node);
    assert!(matches!(node.stopped(), Some(ft::Stopped::LostRace { epoch: 2 })), "{:?}", node.stopped());
}

#[test]
fn a_guest_on_the_callers_thread_runs_as_before() {
    let mut node = primary(Script::console_then_halt());
    assert_eq!(node.run_guest(2, &mut Zero), Progress::Ran);
    assert!(!node.guest_running());
}

/// The driver looks at `stopped()` right after draining a node's actions, and otherwise sleeps until something
/// wakes it. A primary without a backup has no channel and no timers, and its guest's power-off exit came from
/// the vCPU thread: so after that exit and the drain, the node must say it stopped, or nothing ever wakes the
/// driver again (found by `ftvm bench`: the cpu guest alone powered off and its node never exited).
#[test]
fn an_unprotected_primary_whose_guest_powers_off_is_stopped_after_the_drain() {
    let thread = Rc::new(RefCell::new(Thread::default()));
    let guest = OnThread { script: Script::new([Script::power_off(0)]), thread: thread.clone(), running: false };
    let mut node = Node::Primary(Box::new(ft::primary::Primary::new(common::config(), guest, 64, 1, 0)));
    node.handle_channel_closed(1, "no backup");
    node.handle_arbiter(2, ft::ArbiterOutcome::Won { epoch: 2 });
    drain(&mut node);
    assert_eq!(node.run_guest(3, &mut Zero), Progress::Running);
    exit(&mut node, &thread, 4);
    let actions = drain(&mut node);
    assert!(common::events(&actions).contains(&ft::Event::PoweredOff { status: 0 }), "{actions:?}");
    assert!(matches!(node.stopped(), Some(ft::Stopped::PoweredOff { status: 0 })), "{:?}", node.stopped());
}

/// While the guest runs on its vCPU thread, its timer can only be delivered at the run's next exit, and the
/// exit wakes the driver: a timer deadline that passed meanwhile must not be offered as a wake-up. It was, and
/// the driver spun at 100 % of a CPU beside every CPU-bound guest with a timer (found by `ftvm bench`: pinned to
/// one CPU with its runtime, the `cpu` guest ran at half speed).
#[test]
fn a_running_guest_s_past_timer_deadline_is_no_wake_up() {
    let script = Script::new([Exit::PortOut { port: abi::TIMER_PERIOD_US, size: 4, value: 1_000 }]);
    let (mut node, thread) = threaded_primary(script);
    node.handle_message(1, Message::Ack { received: 0, replayed: 0, position: Position::ZERO });
    assert_eq!(node.run_guest(2, &mut Zero), Progress::Running);
    assert_eq!(exit(&mut node, &thread, 3), Progress::Ran);
    drain(&mut node);
    assert_eq!(node.run_guest(4, &mut Zero), Progress::Running);
    // 5 ms later the 1 ms timer is long due, and the guest is still out on its thread.
    let now_ns = 5_000_000;
    node.handle_timeout(now_ns);
    drain(&mut node);
    assert!(node.guest_running());
    let wake_ns = node.poll_timeout();
    assert!(wake_ns.is_none_or(|wake_ns| wake_ns > now_ns), "a wake-up in the past: {wake_ns:?} at {now_ns}");
}

/// `ftvm run`/`record` end a guest that waits for nothing that can come: halted, with no timer set and no disk
/// request in flight. A guest still running, one with a timer, or one waiting for its disk is not idle.
#[test]
fn a_guest_waits_for_the_outside_only_when_halted_with_no_timer_and_no_disk_request() {
    let waits = |node: &Node<Script>| match node {
        Node::Primary(primary) => primary.guest_waits_for_the_outside(),
        _ => unreachable!("a primary"),
    };
    let mut halts = primary(Script::new([Exit::Halt]));
    assert!(!waits(&halts), "not halted yet");
    halts.run_guest(2, &mut Zero);
    drain(&mut halts);
    assert!(waits(&halts), "halted, nothing set");
    let mut timed =
        primary(Script::new([Exit::PortOut { port: abi::TIMER_PERIOD_US, size: 4, value: 1_000 }, Exit::Halt]));
    timed.run_guest(2, &mut Zero);
    drain(&mut timed);
    assert!(!waits(&timed), "halted, but its timer will wake it");
    let mut script = Script::new([]);
    let read = script.disk_request(0x400, abi::DISK_OP_READ, 1, 5, 0x2000);
    script.exits.extend([read, Exit::Halt]);
    let mut reading = primary(script);
    reading.run_guest(2, &mut Zero);
    drain(&mut reading);
    assert!(!waits(&reading), "halted, but its disk read will complete");
}
