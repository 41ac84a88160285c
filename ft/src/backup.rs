//! The backup: buffers and acknowledges log entries on receipt, replays them strictly in order at their logged
//! positions with outputs suppressed, stalls when the buffer is empty, and stops with a named divergence when
//! its guest does not do what the log says. When the primary fails it races for the arbiter; if it wins it
//! replays everything it received and then goes live.

use std::collections::{BTreeMap, VecDeque};

use crate::config::{Config, NS_PER_MS};
use crate::detector::Detector;
use crate::events::{
    Action, ArbiterOutcome, Divergence, EntropySource, Event, Expect, FailureCause, Progress, Stats, Stopped,
};
use crate::guest::{Exit, Guest, GuestError, RunStart};
use crate::log::{Control, Entry, Input, LogIndex, Output, OutputKind, OutputRecord};
use crate::platform::{ExitAction, InputKind};
use crate::position::Position;
use crate::primary::{Inheritance, Primary};
use crate::vm::Vm;
use crate::wire::{self, Message};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Waiting for a primary's `Hello`.
    Listening {
        deadline_ns: u64,
    },
    Replaying,
    /// The primary is declared failed; a test-and-set is under way. Replay goes on meanwhile.
    Arbitrating {
        retry_at_ns: Option<u64>,
    },
    /// Won the arbiter at `epoch`: replay the rest of the buffer, then turn into a primary.
    GoingLive {
        epoch: u64,
    },
    /// The primary said goodbye (its guest powered off cleanly) and closed the channel: replay up to the
    /// power-off and stop. Nobody goes live.
    Draining,
}

enum Step {
    Progressed,
    NeedLog,
    /// The guest must run (to this instruction target) to reach the next logged position.
    Run {
        target: Option<u64>,
    },
}

pub struct Backup<G: Guest> {
    config: Config,
    vm: Vm<G>,
    epoch: u64,
    mode: Mode,
    stopped: Option<Stopped>,
    detector: Detector,
    /// Heard from when log arrives or the primary's heartbeat shows nothing is missing (see the primary's).
    channel_detector: Detector,
    heartbeat_next_ns: u64,
    /// `sent_ms` of the last primary heartbeat accepted: a heartbeat not newer than it is a replay.
    heartbeat_heard_ms: Option<u64>,
    /// The primary's `Goodbye`: its guest powered off and everything it produced has left.
    goodbye: Option<u32>,
    /// Replay reached the guest's power-off entry (with this status): the guest runs no further.
    powered_off: Option<u32>,
    buffer: VecDeque<(LogIndex, Entry)>,
    received: LogIndex,
    replayed: LogIndex,
    acked: (LogIndex, LogIndex),
    /// The latest time the driver gave (replay itself knows no time), and when an ack last reported replay
    /// progress: progress is reported at least every `REPLAY_ACK_NS`.
    now_seen_ns: u64,
    replay_acked_ns: u64,
    expect: Option<Expect>,
    /// Console and network outputs produced in replay and not yet confirmed released by the primary.
    unreleased: VecDeque<Output>,
    released_seq: Option<u64>,
    /// Disk writes produced in replay whose completion has not been replayed, by tag.
    pending_writes: BTreeMap<u32, Output>,
    actions: VecDeque<Action>,
    stats: Stats,
}

/// Bound on unconfirmed outputs kept for go-live; the primary's unacked-log bound keeps the real number far lower.
const UNRELEASED_MAX: usize = 1 << 16;
/// While entries wait for replay, the backup acknowledges replay progress (for the primary's execution lag)
/// at least every this many replayed entries, and at least every `REPLAY_ACK_NS` (a guest with sparse entries
/// replays few in a long time); receipt is acknowledged at once, as the Output Rule needs.
const REPLAY_ACK_ENTRIES: u64 = 64;
pub const REPLAY_ACK_NS: u64 = 2_000_000;

impl<G: Guest> Backup<G> {
    pub fn new(config: Config, guest: G, disk_sectors: u64, now_ns: u64) -> Backup<G> {
        Backup::with_vm(config, Vm::new(guest, disk_sectors), now_ns)
    }

    /// The backup a joiner becomes at the cut of a clone (`crate::join`): its VM is the primary's at the cut,
    /// it replays the log that follows from index 1 in `epoch`, and `pending_writes` are the disk writes that
    /// were in flight at the cut (a go-live reissues them).
    pub fn cloned(config: Config, vm: Vm<G>, epoch: u64, pending_writes: Vec<Output>, now_ns: u64) -> Backup<G> {
        let mut backup = Backup::with_vm(config, vm, now_ns);
        backup.epoch = epoch;
        backup.mode = Mode::Replaying;
        for output in pending_writes {
            if let Some(target) = output.disk {
                backup.pending_writes.insert(target.tag, output);
            }
        }
        backup
    }

    fn with_vm(config: Config, vm: Vm<G>, now_ns: u64) -> Backup<G> {
        if let Err(error) = config.validate() {
            panic!("the driver must validate the config first: {error}");
        }
        Backup {
            detector: Detector::new(now_ns, config.failure_timeout_ms),
            channel_detector: Detector::new(now_ns, config.failure_timeout_ms),
            heartbeat_next_ns: now_ns,
            heartbeat_heard_ms: None,
            goodbye: None,
            powered_off: None,
            mode: Mode::Listening { deadline_ns: now_ns + config.startup_timeout_ms * NS_PER_MS },
            config,
            vm,
            epoch: 0,
            stopped: None,
            buffer: VecDeque::new(),
            received: 0,
            replayed: 0,
            acked: (0, 0),
            now_seen_ns: now_ns,
            replay_acked_ns: now_ns,
            expect: None,
            unreleased: VecDeque::new(),
            released_seq: None,
            pending_writes: BTreeMap::new(),
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn position(&self) -> Position {
        self.vm.position()
    }

    /// Digest of guest and device state, as checkpoints compare it.
    pub fn state_hash(&mut self) -> Result<crate::guest::StateHash, crate::platform::PlatformError> {
        self.vm.state_hash()
    }

    /// Entries received and not yet replayed.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub(crate) fn vm(&self) -> &Vm<G> {
        &self.vm
    }

    /// The node has stopped for good and waits only for its guest to come back from the vCPU thread.
    pub(crate) fn stopping(&self) -> bool {
        self.stopped.is_some()
    }

    pub fn take_stopped(&mut self) -> Option<Stopped> {
        self.stopped.take()
    }

    /// Actions queued and not yet polled (handed over when the node changes state).
    pub fn take_actions(&mut self) -> VecDeque<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Puts the actions of the node this backup was (a joiner) before its own.
    pub fn prepend_actions(&mut self, mut earlier: VecDeque<Action>) {
        earlier.append(&mut self.actions);
        self.actions = earlier;
    }

    pub fn wants_log(&self) -> bool {
        self.buffer.len() < self.config.log_entries_buffered_max
    }

    pub fn stats(&self) -> Stats {
        Stats { acked: self.replayed, ..self.stats }
    }

    // ---- inputs from the driver -------------------------------------------------------------------------------

    pub fn handle_message(&mut self, now_ns: u64, message: Message) {
        self.now_seen_ns = self.now_seen_ns.max(now_ns);
        if self.stopped.is_some() || matches!(self.mode, Mode::GoingLive { .. } | Mode::Draining) {
            return;
        }
        match message {
            Message::Hello { pair_id, epoch, image_digest } => self.handle_hello(now_ns, pair_id, epoch, image_digest),
            Message::Heartbeat { pair_id, epoch, role, sent_ms, log_index } => {
                self.handle_heartbeat(now_ns, pair_id, epoch, role, sent_ms, log_index)
            }
            _ if matches!(self.mode, Mode::Listening { .. }) => {
                self.violation(now_ns, "log traffic before a hello".into());
            }
            _ if self.goodbye.is_some() => self.violation(now_ns, "traffic after the primary's goodbye".into()),
            Message::Log { index, entry } => self.handle_log(now_ns, index, entry),
            Message::Released { output_seq } => {
                self.detector.heard(now_ns);
                self.released_seq = Some(self.released_seq.map_or(output_seq, |seq| seq.max(output_seq)));
                while self.unreleased.front().is_some_and(|output| output.seq <= output_seq) {
                    self.unreleased.pop_front();
                }
            }
            Message::Goodbye { status } => {
                self.detector.heard(now_ns);
                self.goodbye = Some(status);
                self.check_power_off();
            }
            other => self.violation(now_ns, format!("unexpected message from primary: {other:?}")),
        }
    }

    fn handle_log(&mut self, now_ns: u64, index: LogIndex, entry: Entry) {
        self.detector.heard(now_ns);
        self.channel_detector.heard(now_ns);
        if index != self.received + 1 {
            self.violation(now_ns, format!("log index {index} after {}", self.received));
            return;
        }
        // The driver stops reading while `wants_log` is false, so only a misbehaving peer (or driver) gets here:
        // a protocol error, never a panic, and nothing of the entry is kept.
        let bound = self.config.log_entries_buffered_max;
        if self.buffer.len() >= bound {
            self.violation(now_ns, format!("log entry {index} beyond the buffer bound of {bound} entries"));
            return;
        }
        self.received = index;
        self.stats.log_entries += 1;
        self.buffer.push_back((index, entry));
        assert!(self.buffer.len() <= bound);
    }

    /// Only a heartbeat of this pair's primary, in this epoch, newer than the last one counts: reflected,
    /// replayed or stale heartbeats are no sign that the primary lives. A bad one is ignored, never an error.
    fn handle_heartbeat(
        &mut self,
        now_ns: u64,
        pair_id: u64,
        epoch: u64,
        role: wire::Role,
        sent_ms: u64,
        log_index: LogIndex,
    ) {
        let ours = pair_id == self.config.pair_id && epoch == self.epoch && role == wire::Role::Primary;
        let fresh = self.heartbeat_heard_ms.is_none_or(|heard| sent_ms > heard);
        if !ours || !fresh || self.mode != Mode::Replaying {
            if pair_id == self.config.pair_id && self.mode == Mode::Replaying {
                cov_mark::hit!(heartbeat_ignored);
            }
            self.stats.heartbeats_ignored += 1;
            return;
        }
        self.heartbeat_heard_ms = Some(sent_ms);
        self.detector.heard(now_ns);
        if log_index <= self.received {
            self.channel_detector.heard(now_ns);
        }
    }

    fn handle_hello(&mut self, now_ns: u64, pair_id: u64, epoch: u64, image_digest: u64) {
        let Mode::Listening { .. } = self.mode else {
            self.violation(now_ns, "a second hello".into());
            return;
        };
        if epoch == u64::MAX {
            // No epoch comes after it: a pair there could never fail over. Only a broken or hostile peer says so.
            self.actions.push_back(Action::Notify(Event::ProtocolViolation(format!("hello with epoch {epoch}"))));
            self.actions.push_back(Action::CloseChannel);
            return;
        }
        if pair_id != self.config.pair_id || image_digest != self.config.image_digest {
            // Not our primary: refuse this connection and keep waiting for the right one.
            self.actions.push_back(Action::Notify(Event::ProtocolViolation(format!(
                "hello from pair {pair_id} image {image_digest:#x}, expected pair {} image {:#x}",
                self.config.pair_id, self.config.image_digest
            ))));
            self.actions.push_back(Action::CloseChannel);
            return;
        }
        self.epoch = epoch;
        self.mode = Mode::Replaying;
        self.detector.heard(now_ns);
        self.channel_detector.heard(now_ns);
        self.actions.push_back(Action::Send(Message::Welcome { pair_id, epoch }));
        self.actions.push_back(Action::Notify(Event::ChannelUp { epoch }));
    }

    /// The primary broke the protocol: the channel is dropped and, once paired, the primary is failed at once
    /// (a broken channel is as good as a dead primary).
    fn violation(&mut self, now_ns: u64, what: String) {
        self.actions.push_back(Action::Notify(Event::ProtocolViolation(what.clone())));
        self.actions.push_back(Action::CloseChannel);
        if self.mode == Mode::Replaying && self.goodbye.is_some() {
            // The primary already powered off cleanly: whatever it sends after is no reason to take over.
            self.mode = Mode::Draining;
            self.check_power_off();
        } else if self.mode == Mode::Replaying {
            self.peer_failed(now_ns, FailureCause::ProtocolViolation(what));
        }
    }

    /// The channel closed, reset or failed a check. After the primary's goodbye that is the end of a clean
    /// power-off; otherwise the primary is failed at once, without waiting for the failure timeout.
    pub fn handle_channel_closed(&mut self, now_ns: u64, reason: &str) {
        if self.mode != Mode::Replaying {
            return;
        }
        if self.goodbye.is_some() {
            self.mode = Mode::Draining;
            self.check_power_off();
        } else {
            self.peer_failed(now_ns, FailureCause::ChannelLost(reason.to_string()));
        }
    }

    fn peer_failed(&mut self, now_ns: u64, cause: FailureCause) {
        // How long the detector that fired heard nothing: a stalled channel is timed by its own detector.
        let detector = if cause == FailureCause::ChannelStalled { &self.channel_detector } else { &self.detector };
        let silent_ms = detector.silent_ns(now_ns) / NS_PER_MS;
        self.actions.push_back(Action::Notify(Event::PeerFailed { silent_ms, cause }));
        self.actions.push_back(Action::CloseChannel);
        self.mode = Mode::Arbitrating { retry_at_ns: None };
        self.test_and_set();
    }

    fn test_and_set(&mut self) {
        self.actions.push_back(Action::Notify(Event::TestAndSetStarted { expected_epoch: self.epoch }));
        self.actions.push_back(Action::TestAndSet { expected_epoch: self.epoch });
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.now_seen_ns = self.now_seen_ns.max(now_ns);
        // One heartbeat per interval however late this call (a burst would carry equal `sent_ms` values).
        if self.mode == Mode::Replaying && self.heartbeat_next_ns <= now_ns {
            self.heartbeat_next_ns = now_ns + self.config.heartbeat_interval_ms * NS_PER_MS;
            self.actions.push_back(Action::Heartbeat(Message::Heartbeat {
                pair_id: self.config.pair_id,
                epoch: self.epoch,
                role: wire::Role::Backup,
                sent_ms: now_ns / NS_PER_MS,
                log_index: self.received,
            }));
        }
        match self.mode {
            Mode::Listening { deadline_ns } if now_ns >= deadline_ns => {
                self.peer_failed(now_ns, FailureCause::NeverConnected)
            }
            // After the goodbye the pair is over: a silent primary (it froze before its close reached us) is
            // the end of a clean power-off, as a close would be, never a failure to take over from.
            Mode::Replaying
                if self.goodbye.is_some() && (self.detector.failed(now_ns) || self.channel_detector.failed(now_ns)) =>
            {
                self.mode = Mode::Draining;
                self.check_power_off();
            }
            Mode::Replaying if self.detector.failed(now_ns) || self.channel_detector.failed(now_ns) => {
                let cause =
                    if self.detector.failed(now_ns) { FailureCause::Silent } else { FailureCause::ChannelStalled };
                self.peer_failed(now_ns, cause)
            }
            Mode::Arbitrating { retry_at_ns: Some(at) } if now_ns >= at => {
                self.mode = Mode::Arbitrating { retry_at_ns: None };
                self.test_and_set();
            }
            _ => {}
        }
    }

    pub fn handle_arbiter(&mut self, now_ns: u64, outcome: ArbiterOutcome) {
        let Mode::Arbitrating { .. } = self.mode else {
            return;
        };
        match outcome {
            ArbiterOutcome::Won { epoch } if epoch > self.epoch => {
                if !self.buffer.is_empty() {
                    cov_mark::hit!(golive_with_backlog);
                }
                self.mode = Mode::GoingLive { epoch };
            }
            ArbiterOutcome::Won { epoch } => {
                // Epochs only move forward: a grant that does not is nonsense, so ask again.
                self.actions.push_back(Action::Notify(Event::ProtocolViolation(format!(
                    "arbiter granted epoch {epoch}, not after {}",
                    self.epoch
                ))));
                self.mode = Mode::Arbitrating { retry_at_ns: Some(now_ns + self.config.arbiter_retry_ms * NS_PER_MS) };
            }
            ArbiterOutcome::Lost { epoch } => {
                self.actions.push_back(Action::Notify(Event::LostRace { epoch }));
                self.stopped = Some(Stopped::LostRace { epoch });
            }
            ArbiterOutcome::Unreachable => {
                self.actions.push_back(Action::Notify(Event::ArbiterUnreachable));
                self.mode = Mode::Arbitrating { retry_at_ns: Some(now_ns + self.config.arbiter_retry_ms * NS_PER_MS) };
            }
        }
    }

    // ---- replay -----------------------------------------------------------------------------------------------

    pub fn run_guest(&mut self, now_ns: u64) -> Progress {
        self.now_seen_ns = self.now_seen_ns.max(now_ns);
        if self.stopped.is_some() || self.vm.running() || matches!(self.mode, Mode::Listening { .. }) {
            return Progress::Idle;
        }
        let start = self.vm.position();
        let mut steps = 0u64;
        loop {
            let position = self.vm.position();
            let slice_done = position.exits - start.exits >= self.config.slice_exits_max
                || position.instructions - start.instructions >= self.config.slice_instructions;
            if slice_done || self.stopped.is_some() {
                return Progress::Ran;
            }
            let step = match self.step() {
                Ok(Step::Run { target }) => match self.vm.start_run(target) {
                    RunStart::Done(result) => self.after_run(result),
                    RunStart::Started => return Progress::Running,
                },
                other => other,
            };
            match step {
                Ok(Step::Progressed | Step::Run { .. }) => steps += 1,
                Ok(Step::NeedLog) => return if steps > 0 { Progress::Ran } else { Progress::Idle },
                Err(divergence) => {
                    self.diverge(divergence);
                    return Progress::Idle;
                }
            }
        }
    }

    /// Takes the result of a replay run on the vCPU thread, if it has ended.
    pub fn guest_exited(&mut self, now_ns: u64) -> Progress {
        self.now_seen_ns = self.now_seen_ns.max(now_ns);
        let Some(result) = self.vm.finish_run() else { return Progress::Running };
        match self.after_run(result) {
            Ok(_) => Progress::Ran,
            Err(divergence) => {
                self.diverge(divergence);
                Progress::Idle
            }
        }
    }

    fn diverge(&mut self, divergence: Divergence) {
        self.actions.push_back(Action::Notify(Event::Diverged(divergence.clone())));
        self.actions.push_back(Action::CloseChannel);
        self.stopped = Some(Stopped::Diverged(divergence));
    }

    fn diverged(&self, expected: String, actual: String) -> Divergence {
        Divergence { position: self.vm.position(), expected, actual }
    }

    fn step(&mut self) -> Result<Step, Divergence> {
        if let Some(expect) = self.expect.take() {
            return self.satisfy(expect);
        }
        let Some((_, entry)) = self.buffer.front() else {
            return Ok(Step::NeedLog);
        };
        let position = self.vm.position();
        let logged = entry.position();
        if logged == position {
            // The backup runs the guest only towards an entry ahead of it, so a kick cannot leave it past one.
            assert!(self.vm.at_position(), "a kicked replay stopped at a logged position");
            return self.apply_unprompted();
        }
        if self.powered_off.is_some() {
            return Err(self.diverged(format!("{} at {logged}", entry.describe()), "the guest powered off".into()));
        }
        if logged < position {
            return Err(self.diverged(format!("{} at {logged}", entry.describe()), "the guest ran past it".into()));
        }
        if self.vm.halted {
            return Err(self.diverged(format!("{} at {logged}", entry.describe()), "the guest halted here".into()));
        }
        let target = self.vm.guest.counts_instructions().then(|| {
            let slice_end = position.instructions + self.config.slice_instructions;
            if logged.exits == position.exits {
                logged.instructions.min(slice_end)
            } else {
                slice_end
            }
        });
        Ok(Step::Run { target })
    }

    /// Handles how a replay run ended: an exit calls for the log entry it must find next.
    fn after_run(&mut self, result: Result<Exit, GuestError>) -> Result<Step, Divergence> {
        let exit = result.map_err(|e| self.diverged("the guest to run".into(), e.to_string()))?;
        if matches!(exit, Exit::InstructionLimit | Exit::Kicked) {
            return Ok(Step::Progressed);
        }
        let action = self
            .vm
            .platform
            .handle_exit(exit, &mut self.vm.guest)
            .map_err(|e| self.diverged(format!("{exit:?} to be handled"), e.to_string()))?;
        self.expect = match action {
            ExitAction::Continue | ExitAction::DiskRead(_) => None,
            ExitAction::Halt => {
                self.vm.halted = true;
                None
            }
            ExitAction::NeedsInput(kind) => Some(Expect::Input(kind)),
            ExitAction::Output(output) => Some(Expect::Output(output)),
            ExitAction::PowerOff { status } => Some(Expect::PowerOff { status }),
            ExitAction::Shutdown => Some(Expect::PowerOff { status: u32::MAX }),
        };
        Ok(Step::Progressed)
    }

    /// The guest's last exit calls for a specific entry; the next one in the log must be it.
    fn satisfy(&mut self, expect: Expect) -> Result<Step, Divergence> {
        let Some((index, entry)) = self.buffer.front().cloned() else {
            self.expect = Some(expect);
            return Ok(Step::NeedLog);
        };
        let position = self.vm.position();
        let pc = self.vm.guest.pc();
        let wanted = describe_expect(&expect);
        match (&expect, &entry) {
            (Expect::Input(kind), Entry::Input { position: at, pc: logged_pc, input })
                if *at == position && input_kind(input) == Some(*kind) =>
            {
                self.vm.platform.apply(input, &mut self.vm.guest).map_err(|e| self.diverged(wanted, e.to_string()))?;
                if *logged_pc != self.vm.guest.pc() {
                    return Err(self.diverged(entry.describe(), format!("pc {:#x}", self.vm.guest.pc())));
                }
            }
            (Expect::Output(output), Entry::Output { position: at, pc: logged_pc, record })
                if *at == position && *logged_pc == pc && *record == OutputRecord::of(output) =>
            {
                self.keep_output(output.clone());
            }
            (
                Expect::PowerOff { status },
                Entry::Control { position: at, control: Control::PowerOff { status: s }, .. },
            ) if *at == position && s == status => self.powered_off = Some(*status),
            _ => {
                let logged = format!("{} at {}", entry.describe(), entry.position());
                return Err(self.diverged(logged, format!("{wanted} at pc {pc:#x}")));
            }
        }
        self.buffer.pop_front();
        self.replayed = index;
        self.check_power_off();
        Ok(Step::Progressed)
    }

    /// Once replay has reached the power-off entry: with the primary's goodbye the pair is over and the backup
    /// stops, without a test-and-set. Without it the backup waits: for the goodbye, or for the primary's failure
    /// (then the test-and-set decides who finishes the power-off: a backup that wins goes live to re-send what
    /// may not have left, then powers off).
    fn check_power_off(&mut self) {
        let (Some(status), Some(_)) = (self.powered_off, self.goodbye) else { return };
        // Entries at the power-off's position (its final checkpoint) are still verified first.
        if self.buffer.is_empty() && self.stopped.is_none() && !matches!(self.mode, Mode::GoingLive { .. }) {
            cov_mark::hit!(power_off_with_live_backup);
            self.actions.push_back(Action::Notify(Event::PoweredOff { status }));
            self.actions.push_back(Action::CloseChannel);
            self.stopped = Some(Stopped::PoweredOff { status });
        }
    }

    /// An entry at the current position that no exit asked for: an asynchronous input or a checkpoint.
    fn apply_unprompted(&mut self) -> Result<Step, Divergence> {
        let (index, entry) = self.buffer.front().cloned().expect("caller saw an entry");
        match &entry {
            Entry::Input { input, pc, .. } if input_kind(input).is_none() => {
                self.vm
                    .platform
                    .apply(input, &mut self.vm.guest)
                    .map_err(|e| self.diverged(entry.describe(), e.to_string()))?;
                self.vm.halted = false;
                if let Input::DiskComplete { tag, .. } = input {
                    self.pending_writes.remove(tag);
                }
                if *pc != self.vm.guest.pc() {
                    return Err(self.diverged(entry.describe(), format!("pc {:#x}", self.vm.guest.pc())));
                }
            }
            Entry::Checkpoint { hash, position } => {
                let actual = self.vm.state_hash().map_err(|e| self.diverged(entry.describe(), e.to_string()))?;
                if actual != *hash {
                    return Err(self.diverged(format!("state hash {hash:016x}"), format!("state hash {actual:016x}")));
                }
                self.actions.push_back(Action::Notify(Event::Checkpoint { position: *position, hash: actual }));
            }
            _ => {
                return Err(
                    self.diverged(format!("{} at {}", entry.describe(), entry.position()), "no exit here".into())
                )
            }
        }
        self.buffer.pop_front();
        self.replayed = index;
        self.check_power_off();
        Ok(Step::Progressed)
    }

    fn keep_output(&mut self, output: Output) {
        match (output.kind, output.disk) {
            (OutputKind::DiskWrite, Some(target)) => {
                self.pending_writes.insert(target.tag, output);
            }
            _ if self.released_seq.is_some_and(|released| output.seq <= released) => {}
            _ => {
                if self.unreleased.len() == UNRELEASED_MAX {
                    self.unreleased.pop_front();
                }
                self.unreleased.push_back(output);
            }
        }
    }

    // ---- go-live ----------------------------------------------------------------------------------------------

    /// Won the race and replayed everything received.
    pub fn ready_to_go_live(&self) -> bool {
        matches!(self.mode, Mode::GoingLive { .. }) && self.buffer.is_empty() && self.stopped.is_none()
    }

    pub fn go_live(self, now_ns: u64, entropy: &mut dyn EntropySource) -> Primary<G> {
        let Mode::GoingLive { epoch } = self.mode else {
            panic!("go_live called before the arbiter was won");
        };
        assert!(self.buffer.is_empty(), "go-live replays the whole buffer first");
        let replayed_entries = self.replayed;
        let pending_exit = match self.powered_off {
            // The primary died during its power-off: the new primary finishes it.
            Some(status) => Some(Expect::PowerOff { status }),
            None => self.expect,
        };
        let inheritance = Inheritance {
            clock_latched_ns: self.vm.platform.clock_latched_ns(),
            unreleased_outputs: self.unreleased.into_iter().collect(),
            pending_writes: self.pending_writes.into_values().collect(),
            pending_exit,
        };
        let reissued_outputs = inheritance.unreleased_outputs.len();
        let reissued_disk_requests = self.vm.platform.disk_in_flight().len();
        let went_live = Event::WentLive { epoch, replayed_entries, reissued_disk_requests, reissued_outputs };
        let mut pending = self.actions;
        pending.push_back(Action::Notify(went_live));
        Primary::go_live(self.config, self.vm, epoch, inheritance, now_ns, entropy, pending)
    }

    // ---- outputs to the driver --------------------------------------------------------------------------------

    pub fn poll_action(&mut self) -> Option<Action> {
        let (received_acked, replayed_acked) = self.acked;
        let receipt = self.received > received_acked;
        // Replay progress matters for the execution lag, but only to the throttle's slow loop: it rides on the
        // next receipt ack, or goes alone every `REPLAY_ACK_NS` or `REPLAY_ACK_ENTRIES`. An ack of its own each
        // time the buffer drained doubled the acks of a guest with sparse entries (a read and a write of 10 to
        // 30 µs each on a nested host, on both runtime threads, for every timer tick).
        let replay = self.replayed > replayed_acked
            && (self.replayed - replayed_acked >= REPLAY_ACK_ENTRIES
                || self.now_seen_ns >= self.replay_acked_ns + REPLAY_ACK_NS);
        let paired = matches!(self.mode, Mode::Replaying | Mode::Arbitrating { .. });
        if self.actions.is_empty() && paired && (receipt || replay) {
            if self.replayed > replayed_acked {
                self.replay_acked_ns = self.now_seen_ns;
            }
            self.acked = (self.received, self.replayed);
            self.actions.push_back(Action::Send(Message::Ack {
                received: self.received,
                replayed: self.replayed,
                position: self.vm.position(),
            }));
        }
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        match self.mode {
            Mode::Listening { deadline_ns } => Some(deadline_ns),
            Mode::Replaying => {
                // Replay progress not yet reported is, at the latest, when `REPLAY_ACK_NS` has passed.
                let progress =
                    if self.replayed > self.acked.1 { self.replay_acked_ns + REPLAY_ACK_NS } else { u64::MAX };
                let detectors = self.detector.deadline_ns().min(self.channel_detector.deadline_ns());
                Some(self.heartbeat_next_ns.min(detectors).min(progress))
            }
            Mode::Arbitrating { retry_at_ns } => retry_at_ns,
            Mode::GoingLive { .. } | Mode::Draining => None,
        }
    }
}

fn input_kind(input: &Input) -> Option<InputKind> {
    match input {
        Input::Clock { .. } => Some(InputKind::Clock),
        Input::Entropy { .. } => Some(InputKind::Entropy),
        _ => None,
    }
}

fn describe_expect(expect: &Expect) -> String {
    match expect {
        Expect::Input(kind) => format!("{kind:?} read"),
        Expect::Output(output) => format!("output #{} {:?} {} bytes", output.seq, output.kind, output.bytes.len()),
        Expect::PowerOff { status } => format!("power-off {status}"),
    }
}
