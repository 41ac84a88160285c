//! The primary: runs the guest, records every input with its position, and holds outputs until the backup has
//! acknowledged the log entry that produced them (the Output Rule). Execution never waits for acks; only outputs
//! do, and the guest stalls only when the unacknowledged log reaches its bound (flow control).
//!
//! `record` runs the guest and logs; `golive` builds a primary out of a backup that won the arbiter.

mod clone;
mod golive;
mod record;
pub mod throttle;

pub use golive::Inheritance;
pub use throttle::Throttle;
use throttle::SHARE_FULL_PERMILLE;

use std::collections::VecDeque;

use crate::config::{Config, NS_PER_MS, NS_PER_US};
use crate::detector::Detector;
use crate::events::{Action, ArbiterOutcome, Event, FailureCause, Stats, Stopped, StorageDone};
use crate::guest::Guest;
use crate::log::{Entry, LogIndex, Output};
use crate::position::Position;
use crate::storage::Scheduler;
use crate::vm::Vm;
use crate::wire::{self, Message};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Waiting for the backup's `Welcome`; the guest has not started.
    Connecting { deadline_ns: u64 },
    /// Every input is logged; outputs wait for acks.
    Protected,
    /// The backup is declared failed and a test-and-set is under way; outputs stay held until it is won.
    Arbitrating { retry_at_ns: Option<u64> },
    /// Live without a backup ("not protected"): nothing is logged or held.
    Unprotected,
    /// Unprotected, with a joiner's channel connected: waiting for its `Join` (re-protection, `clone`).
    AwaitingJoin { deadline_ns: u64 },
    /// Unprotected, asking the arbiter to record joiner `node` as the backup of the next epoch.
    Enlisting { node: u64, retry_at_ns: Option<u64>, channel_open: bool },
    /// Unprotected, sending the clone (pre-copy passes, then the cut).
    Cloning,
}

/// The guest powered off: the node stops once the power-off entry (`index`, if logged) is acknowledged, every
/// output is released and every disk write is done. Failure handling goes on meanwhile: if the backup fails
/// during the power-off, the test-and-set still decides who finishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PowerOff {
    status: u32,
    index: Option<LogIndex>,
}

pub struct Primary<G: Guest> {
    config: Config,
    vm: Vm<G>,
    epoch: u64,
    mode: Mode,
    power_off: Option<PowerOff>,
    stopped: Option<Stopped>,
    detector: Detector,
    /// Heard from when an ack arrives, or when an entry goes out with nothing awaiting an ack; checked only while
    /// entries are outstanding. A live backup behind a dead logging channel (a stream that lost data and went
    /// quiet) fails this one.
    channel_detector: Detector,
    heartbeat_next_ns: u64,
    /// `sent_ms` of the last backup heartbeat accepted: a heartbeat not newer than it is a replay.
    heartbeat_heard_ms: Option<u64>,
    log_index_next: LogIndex,
    acked: LogIndex,
    replayed: LogIndex,
    backup_position: Position,
    /// (index, time logged) of entries the backup has not replayed, for the execution lag.
    logged_at_ns: VecDeque<(LogIndex, u64)>,
    held: VecDeque<(LogIndex, u64, Output)>,
    released_seq: Option<u64>,
    released_sent: Option<u64>,
    scheduler: Scheduler,
    timer_period_us: u32,
    timer_deadline_ns: Option<u64>,
    net_frames: VecDeque<Vec<u8>>,
    disk_done: VecDeque<StorageDone>,
    /// Guest time is `now - clock_origin_ns`, never below `clock_floor_ns`: monotonic across failover.
    clock_origin_ns: u64,
    clock_floor_ns: u64,
    exits_at_checkpoint: u64,
    actions: VecDeque<Action>,
    stats: Stats,
    /// The guest is held back by flow control (reported once per stall).
    stalled: bool,
    /// Lowers the guest's CPU share while the backup lags.
    throttle: Throttle,
    /// The powered-off guest's stop was reported (goodbye, power-off, close): once only.
    said_goodbye: bool,
    /// A clone onto a joiner under way (`Mode::Cloning`).
    cloning: Option<clone::Cloning>,
}

/// Bound on entries kept for the lag estimate; past it the oldest are forgotten (the lag reads low, never high).
const LAG_SAMPLES_MAX: usize = 1 << 16;

impl<G: Guest> Primary<G> {
    /// A primary of a new pair at `epoch`; it says hello to the backup and starts the guest once welcomed.
    pub fn new(config: Config, guest: G, disk_sectors: u64, epoch: u64, now_ns: u64) -> Primary<G> {
        let hello = Message::Hello { pair_id: config.pair_id, epoch, image_digest: config.image_digest };
        let mut primary = Primary::with_mode(
            config.clone(),
            Vm::new(guest, disk_sectors),
            epoch,
            Mode::Connecting { deadline_ns: now_ns + config.startup_timeout_ms * NS_PER_MS },
            now_ns,
        );
        primary.actions.push_back(Action::Send(hello));
        primary
    }

    fn with_mode(config: Config, vm: Vm<G>, epoch: u64, mode: Mode, now_ns: u64) -> Primary<G> {
        let throttle = Throttle::new(&config, now_ns);
        if let Err(error) = config.validate() {
            panic!("the driver must validate the config first: {error}");
        }
        Primary {
            detector: Detector::new(now_ns, config.failure_timeout_ms),
            channel_detector: Detector::new(now_ns, config.failure_timeout_ms),
            heartbeat_next_ns: now_ns,
            heartbeat_heard_ms: None,
            timer_period_us: vm.platform.timer_period_us(),
            config,
            vm,
            epoch,
            mode,
            power_off: None,
            stopped: None,
            log_index_next: 1,
            acked: 0,
            replayed: 0,
            backup_position: Position::ZERO,
            logged_at_ns: VecDeque::new(),
            held: VecDeque::new(),
            released_seq: None,
            released_sent: None,
            scheduler: Scheduler::default(),
            timer_deadline_ns: None,
            net_frames: VecDeque::new(),
            disk_done: VecDeque::new(),
            clock_origin_ns: now_ns,
            clock_floor_ns: 0,
            exits_at_checkpoint: 0,
            actions: VecDeque::new(),
            stats: Stats::default(),
            stalled: false,
            throttle,
            said_goodbye: false,
            cloning: None,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn position(&self) -> Position {
        self.vm.position()
    }

    /// Digest of guest and device state (what checkpoints carry).
    pub fn state_hash(&mut self) -> Result<crate::guest::StateHash, crate::platform::PlatformError> {
        self.vm.state_hash()
    }

    /// Logs a checkpoint at the current position now, e.g. as the last entry of a recording.
    pub fn checkpoint_now(&mut self, now_ns: u64) -> Result<(), crate::platform::PlatformError> {
        if !self.logging() {
            return Ok(());
        }
        let position = self.vm.position();
        self.exits_at_checkpoint = position.exits;
        let hash = self.vm.state_hash()?;
        self.append(now_ns, Entry::Checkpoint { position, hash });
        Ok(())
    }

    /// Whether a run of the guest goes on on its vCPU thread.
    pub fn guest_running(&self) -> bool {
        self.vm.running()
    }

    /// Whether the guest waits for an interrupt (it halted) and nothing can raise one by itself: no timer is set
    /// and no disk request is in flight. Only something from outside (a frame) can wake it.
    pub fn guest_waits_for_the_outside(&self) -> bool {
        self.vm.halted && self.timer_deadline_ns.is_none() && self.scheduler.is_idle()
    }

    /// The guest powered off; the primary finishes its outputs and writes before it stops.
    pub fn powering_off(&self) -> bool {
        self.power_off.is_some()
    }

    pub fn is_protected_or_connecting(&self) -> bool {
        matches!(self.mode, Mode::Connecting { .. } | Mode::Protected | Mode::Arbitrating { .. })
    }

    pub(crate) fn vm(&self) -> &Vm<G> {
        &self.vm
    }

    /// Whether the guest stands at a position (an exit), not on its vCPU thread or cut short there by a kick:
    /// only there can it be hashed or checkpointed.
    pub fn at_position(&self) -> bool {
        self.vm.at_position()
    }

    /// The core wants a run on the vCPU thread to end: the node has stopped for good, or the throttle's share
    /// of this period is spent.
    pub(crate) fn wants_guest_back(&self) -> bool {
        self.stopped.is_some() || self.throttled() || self.clone_wants_guest()
    }

    pub fn take_stopped(&mut self) -> Option<Stopped> {
        self.stopped.take()
    }

    /// Actions queued and not yet polled (handed over when the node changes state).
    pub fn take_actions(&mut self) -> VecDeque<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The backup's execution lag: how long ago the oldest entry it has not replayed was logged.
    fn execution_lag_ns(&self, now_ns: u64) -> u64 {
        self.logged_at_ns.front().map_or(0, |(_, at)| now_ns.saturating_sub(*at))
    }

    /// Brings the throttle to `now_ns`; without a backup to wait for, the guest has the whole CPU.
    pub(super) fn tick_throttle(&mut self, now_ns: u64) {
        let before = self.throttle.share_permille();
        let lag_ns = self.execution_lag_ns(now_ns);
        if self.logging() {
            self.throttle.tick(now_ns, lag_ns);
        } else {
            self.throttle.release();
        }
        let permille = self.throttle.share_permille();
        if permille != before {
            self.actions.push_back(Action::Notify(Event::CpuShare { permille, lag_ms: lag_ns / NS_PER_MS }));
        }
    }

    /// Whether the throttle holds the guest back now (as of the last tick).
    pub(super) fn throttled(&self) -> bool {
        self.logging() && !self.throttle.may_run()
    }

    fn logging(&self) -> bool {
        matches!(self.mode, Mode::Protected | Mode::Arbitrating { .. })
    }

    fn guest_clock_ns(&mut self, now_ns: u64) -> u64 {
        let ns = now_ns.saturating_sub(self.clock_origin_ns).max(self.clock_floor_ns);
        self.clock_floor_ns = ns;
        ns
    }

    fn restart_timer(&mut self, now_ns: u64) {
        self.timer_period_us = self.vm.platform.timer_period_us();
        self.timer_deadline_ns =
            (self.timer_period_us > 0).then(|| now_ns + u64::from(self.timer_period_us) * NS_PER_US);
    }

    // ---- inputs from the driver -------------------------------------------------------------------------------

    pub fn handle_message(&mut self, now_ns: u64, message: Message) {
        match message {
            Message::Heartbeat { pair_id, epoch, role, sent_ms, .. } => {
                self.handle_heartbeat(now_ns, pair_id, epoch, role, sent_ms)
            }
            Message::Welcome { pair_id, epoch } if pair_id == self.config.pair_id && epoch == self.epoch => {
                self.detector.heard(now_ns);
                if let Mode::Connecting { .. } = self.mode {
                    self.mode = Mode::Protected;
                    self.actions.push_back(Action::Notify(Event::ChannelUp { epoch }));
                }
            }
            Message::Ack { received, replayed, position } => {
                self.detector.heard(now_ns);
                self.handle_ack(now_ns, received, replayed, position)
            }
            Message::Join { pair_id, image_digest, node } if matches!(self.mode, Mode::AwaitingJoin { .. }) => {
                self.handle_join(pair_id, image_digest, node)
            }
            Message::CloneAck { pass } => self.handle_clone_ack(now_ns, pass),
            Message::ClonePagesAck { pass, pages } => self.handle_clone_pages_ack(now_ns, pass, pages),
            other => self.violation(now_ns, format!("unexpected message from the backup: {}", other.name())),
        }
    }

    /// Only a heartbeat of this pair's backup, in this epoch, newer than the last one counts: reflected,
    /// replayed or stale heartbeats are no sign that the backup lives. Heartbeats are datagrams from outside,
    /// so a bad one is ignored, never an error.
    fn handle_heartbeat(&mut self, now_ns: u64, pair_id: u64, epoch: u64, role: wire::Role, sent_ms: u64) {
        let ours = pair_id == self.config.pair_id && epoch == self.epoch && role == wire::Role::Backup;
        let fresh = self.heartbeat_heard_ms.is_none_or(|heard| sent_ms > heard);
        if !ours || !fresh || !self.logging() {
            if pair_id == self.config.pair_id && self.logging() {
                cov_mark::hit!(heartbeat_ignored);
            }
            self.stats.heartbeats_ignored += 1;
            return;
        }
        self.heartbeat_heard_ms = Some(sent_ms);
        self.detector.heard(now_ns);
    }

    /// Only acks prove the channel, and only while entries await one: the wait starts when the oldest of them
    /// went out (`append`) or at the last ack, whichever is later. With nothing outstanding it cannot stall.
    fn channel_deadline_ns(&self) -> Option<u64> {
        (self.logged_unacked() > 0).then(|| self.channel_detector.deadline_ns())
    }

    fn channel_stalled(&self, now_ns: u64) -> bool {
        self.channel_deadline_ns().is_some_and(|deadline_ns| now_ns >= deadline_ns)
    }

    fn handle_ack(&mut self, now_ns: u64, received: LogIndex, replayed: LogIndex, position: Position) {
        if received >= self.log_index_next || replayed > received || received < self.acked {
            self.violation(now_ns, format!("ack {received}/{replayed} outside the log (next {})", self.log_index_next));
            return;
        }
        self.channel_detector.heard(now_ns);
        if received > self.acked {
            // The newest entry this ack covers went out when it was logged, and the backup acknowledges receipt at
            // once: a round trip of the link.
            if let Ok(at) = self.logged_at_ns.binary_search_by_key(&received, |(index, _)| *index) {
                self.throttle.link_sample(now_ns, now_ns.saturating_sub(self.logged_at_ns[at].1));
            }
        }
        self.acked = received;
        self.replayed = self.replayed.max(replayed);
        self.backup_position = position;
        while self.logged_at_ns.front().is_some_and(|(index, _)| *index <= self.replayed) {
            self.logged_at_ns.pop_front();
        }
        self.scheduler.acked(self.acked);
    }

    fn violation(&mut self, now_ns: u64, what: String) {
        self.actions.push_back(Action::Notify(Event::ProtocolViolation(what.clone())));
        match self.mode {
            Mode::Connecting { .. } | Mode::Protected => {
                self.actions.push_back(Action::CloseChannel);
                self.peer_failed(now_ns, FailureCause::ProtocolViolation(what));
            }
            Mode::AwaitingJoin { .. } | Mode::Cloning => self.abandon_clone(format!("the joiner: {what}")),
            Mode::Enlisting { node, retry_at_ns, channel_open: true } => {
                self.actions.push_back(Action::CloseChannel);
                self.mode = Mode::Enlisting { node, retry_at_ns, channel_open: false };
            }
            Mode::Enlisting { .. } | Mode::Arbitrating { .. } | Mode::Unprotected => {}
        }
    }

    /// The logging channel closed, reset or failed a check: the backup is failed at once, without waiting for
    /// the failure timeout.
    pub fn handle_channel_closed(&mut self, now_ns: u64, reason: &str) {
        match self.mode {
            Mode::AwaitingJoin { .. } | Mode::Cloning => {
                self.abandon_clone(format!("the joiner's channel failed: {reason}"));
                return;
            }
            Mode::Enlisting { node, retry_at_ns, .. } => {
                self.mode = Mode::Enlisting { node, retry_at_ns, channel_open: false };
                return;
            }
            _ => {}
        }
        if matches!(self.mode, Mode::Connecting { .. } | Mode::Protected) {
            self.actions.push_back(Action::CloseChannel);
            let cause = match self.mode {
                Mode::Connecting { .. } => FailureCause::NeverConnected,
                _ => FailureCause::ChannelLost(reason.to_string()),
            };
            self.peer_failed(now_ns, cause);
        }
    }

    fn peer_failed(&mut self, now_ns: u64, cause: FailureCause) {
        // How long the detector that fired heard nothing: a stalled channel is timed by its own detector.
        let detector = if cause == FailureCause::ChannelStalled { &self.channel_detector } else { &self.detector };
        let silent_ms = detector.silent_ns(now_ns) / NS_PER_MS;
        self.actions.push_back(Action::Notify(Event::PeerFailed { silent_ms, cause }));
        self.mode = Mode::Arbitrating { retry_at_ns: None };
        self.test_and_set();
    }

    fn test_and_set(&mut self) {
        self.actions.push_back(Action::Notify(Event::TestAndSetStarted { expected_epoch: self.epoch }));
        self.actions.push_back(Action::TestAndSet { expected_epoch: self.epoch });
    }

    pub fn handle_arbiter(&mut self, now_ns: u64, outcome: ArbiterOutcome) {
        if let Mode::Enlisting { node, channel_open, .. } = self.mode {
            match outcome {
                ArbiterOutcome::Won { epoch } if epoch > self.epoch => self.enlisted(now_ns, epoch, node, channel_open),
                ArbiterOutcome::Won { .. } | ArbiterOutcome::Unreachable => {
                    // Ask again: a grant whose reply was lost must not leave storage an epoch ahead of this node,
                    // whose writes it would then fence.
                    let retry_at_ns = Some(now_ns + self.config.arbiter_retry_ms * NS_PER_MS);
                    self.mode = Mode::Enlisting { node, retry_at_ns, channel_open };
                }
                ArbiterOutcome::Lost { epoch } => {
                    self.actions.push_back(Action::Notify(Event::LostRace { epoch }));
                    self.actions.push_back(Action::CloseChannel);
                    self.stopped = Some(Stopped::LostRace { epoch });
                }
            }
            return;
        }
        let Mode::Arbitrating { .. } = self.mode else {
            return;
        };
        match outcome {
            ArbiterOutcome::Won { epoch } if epoch <= self.epoch => {
                // The arbiter answered nonsense (epochs only move forward): ask again rather than trust it.
                self.actions.push_back(Action::Notify(Event::ProtocolViolation(format!(
                    "arbiter granted epoch {epoch}, not after {}",
                    self.epoch
                ))));
                self.mode = Mode::Arbitrating { retry_at_ns: Some(now_ns + self.config.arbiter_retry_ms * NS_PER_MS) };
            }
            ArbiterOutcome::Won { epoch } => {
                self.epoch = epoch;
                self.mode = Mode::Unprotected;
                self.actions.push_back(Action::CloseChannel);
                self.actions.push_back(Action::Notify(Event::WentLive {
                    epoch,
                    replayed_entries: 0,
                    reissued_disk_requests: 0,
                    reissued_outputs: 0,
                }));
                // No backup any more: what was held for its acknowledgement goes out now.
                self.scheduler.release_all();
                while let Some((_, _, output)) = self.held.pop_front() {
                    self.release(output, None);
                }
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

    /// Storage fenced a request at `epoch`. A request issued under this node's previous epoch is sent again. While a test-and-set is under way that may be this node's own win
    /// whose reply was lost: the request waits and the test-and-set is asked again at once (it is idempotent for
    /// the winner). Otherwise a newer primary exists and this one stops, as a lost race would.
    pub fn handle_fenced(&mut self, now_ns: u64, epoch: u64, request: crate::storage::StorageRequest) {
        if epoch <= self.epoch {
            // Issued before this node's own epoch moved on: simply send it again under the new epoch.
            self.scheduler.reissue(request);
            return;
        }
        if let Mode::Arbitrating { .. } = self.mode {
            self.scheduler.reissue(request);
            self.mode = Mode::Arbitrating { retry_at_ns: Some(now_ns) };
            return;
        }
        if let Mode::Enlisting { .. } = self.mode {
            // Most likely this node's own grant, whose answer is on its way: the request goes again after it.
            self.scheduler.reissue(request);
            return;
        }
        if self.stopped.is_none() {
            self.actions.push_back(Action::Notify(Event::LostRace { epoch }));
            self.stopped = Some(Stopped::LostRace { epoch });
        }
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.tick_throttle(now_ns);
        // One heartbeat per interval, however late this call: a burst would carry equal `sent_ms` values, which
        // the backup must treat as replays.
        if (self.logging() || matches!(self.mode, Mode::Connecting { .. })) && self.heartbeat_next_ns <= now_ns {
            self.heartbeat_next_ns = now_ns + self.config.heartbeat_interval_ms * NS_PER_MS;
            self.actions.push_back(Action::Heartbeat(Message::Heartbeat {
                pair_id: self.config.pair_id,
                epoch: self.epoch,
                role: wire::Role::Primary,
                sent_ms: now_ns / NS_PER_MS,
                log_index: self.log_index_next - 1,
            }));
        }
        match self.mode {
            Mode::Connecting { deadline_ns } if now_ns >= deadline_ns => {
                self.actions.push_back(Action::CloseChannel);
                self.peer_failed(now_ns, FailureCause::NeverConnected)
            }
            Mode::Protected if self.detector.failed(now_ns) || self.channel_stalled(now_ns) => {
                let cause =
                    if self.detector.failed(now_ns) { FailureCause::Silent } else { FailureCause::ChannelStalled };
                self.actions.push_back(Action::CloseChannel);
                self.peer_failed(now_ns, cause);
            }
            Mode::Arbitrating { retry_at_ns: Some(at) } if now_ns >= at => {
                self.mode = Mode::Arbitrating { retry_at_ns: None };
                self.test_and_set();
            }
            Mode::Enlisting { node, retry_at_ns: Some(at), channel_open } if now_ns >= at => {
                self.mode = Mode::Enlisting { node, retry_at_ns: None, channel_open };
                self.actions.push_back(Action::TestAndSet { expected_epoch: self.epoch });
            }
            Mode::AwaitingJoin { deadline_ns } if now_ns >= deadline_ns => {
                self.abandon_clone("the joiner did not ask to join within the startup timeout".into());
            }
            Mode::Cloning if self.clone_deadline_ns().is_some_and(|deadline_ns| now_ns >= deadline_ns) => {
                self.abandon_clone("the joiner did not acknowledge a pre-copy pass within the failure timeout".into());
            }
            _ => {}
        }
    }

    pub fn handle_net_frame(&mut self, _now_ns: u64, frame: Vec<u8>) {
        if self.net_frames.len() < self.config.net_frames_queued_max && frame.len() <= crate::abi::NET_FRAME_BYTES_MAX {
            self.net_frames.push_back(frame);
        }
    }

    pub fn handle_storage_done(&mut self, _now_ns: u64, done: StorageDone) {
        if self.scheduler.completed(done.tag) {
            self.disk_done.push_back(done);
        }
    }

    // ---- outputs to the driver --------------------------------------------------------------------------------

    /// Moves acknowledged outputs and ready disk requests into the action queue.
    fn flush(&mut self) {
        while self.held.front().is_some_and(|(index, _, _)| *index <= self.acked) {
            let (index, _, output) = self.held.pop_front().expect("front exists");
            self.release(output, Some(index));
        }
        // While the arbiter moves this node's epoch on, requests wait for the new one (the old is being fenced).
        if matches!(self.mode, Mode::Enlisting { .. }) && self.scheduler.issuable() {
            cov_mark::hit!(disk_waits_while_enlisting);
        }
        while !matches!(self.mode, Mode::Enlisting { .. }) {
            let Some(request) = self.scheduler.poll_issue() else { break };
            self.actions.push_back(Action::Storage { epoch: self.epoch, request });
        }
        if self.logging() && self.released_seq > self.released_sent {
            self.released_sent = self.released_seq;
            let output_seq = self.released_seq.expect("greater than something");
            self.actions.push_back(Action::Send(Message::Released { output_seq }));
        }
        self.maybe_powered_off();
    }

    /// Stops a powered-off guest once nothing it did is pending: the power-off entry acknowledged (or no backup
    /// to wait for), every output released, every disk write done. A protected primary says goodbye, so that
    /// its backup stops too instead of taking the closed channel for a failure.
    fn maybe_powered_off(&mut self) {
        let Some(PowerOff { status, index }) = self.power_off else { return };
        let acknowledged = match self.mode {
            Mode::Protected => index.is_none_or(|index| self.acked >= index),
            Mode::Unprotected => true,
            // A clone of a powered-off guest is given up at the power-off; an arbiter's answer is awaited.
            Mode::Connecting { .. } | Mode::Arbitrating { .. } | Mode::Enlisting { .. } => false,
            Mode::AwaitingJoin { .. } | Mode::Cloning => false,
        };
        // `said_goodbye` as well as `stopped`: a driver may take the stop and poll again, and nothing follows the
        // goodbye.
        if !acknowledged
            || !self.held.is_empty()
            || !self.scheduler.is_idle()
            || self.stopped.is_some()
            || self.said_goodbye
        {
            return;
        }
        self.said_goodbye = true;
        if self.mode == Mode::Protected {
            self.actions.push_back(Action::Send(Message::Goodbye { status }));
        }
        self.actions.push_back(Action::Notify(Event::PoweredOff { status }));
        self.actions.push_back(Action::CloseChannel);
        self.stopped = Some(Stopped::PoweredOff { status });
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            self.flush();
        }
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        let heartbeat =
            (self.logging() || matches!(self.mode, Mode::Connecting { .. })).then_some(self.heartbeat_next_ns);
        let mode = match self.mode {
            Mode::Connecting { deadline_ns } | Mode::AwaitingJoin { deadline_ns } => Some(deadline_ns),
            Mode::Protected => Some(self.detector.deadline_ns().min(self.channel_deadline_ns().unwrap_or(u64::MAX))),
            Mode::Arbitrating { retry_at_ns } | Mode::Enlisting { retry_at_ns, .. } => retry_at_ns,
            Mode::Cloning => self.clone_deadline_ns(),
            Mode::Unprotected => None,
        };
        // The guest's timer matters only while the guest may run; a stalled or waiting guest is woken by the
        // message that unblocks it, and a past deadline here would spin the driver.
        let runnable = self.stopped.is_none()
            && self.power_off.is_none()
            && !matches!(self.mode, Mode::Connecting { .. })
            && !self.flow_controlled();
        // A throttled guest is woken by the throttle's next change, not by a timer it cannot take yet; a guest
        // out on its vCPU thread takes its timer at the run's next exit, which wakes the driver anyway (a past
        // deadline offered meanwhile spun the driver beside every CPU-bound guest with a timer).
        let timer = self.timer_deadline_ns.filter(|_| runnable && !self.throttled() && !self.vm().running());
        let throttle = self.throttle.next_change_ns().filter(|_| runnable && self.logging());
        [heartbeat, mode, timer, throttle].into_iter().flatten().min()
    }

    pub fn stats(&self, now_ns: u64) -> Stats {
        let oldest_held = self.held.front().map(|(_, at, _)| now_ns.saturating_sub(*at)).unwrap_or(0);
        Stats {
            acked: self.acked,
            execution_lag_ns: self.execution_lag_ns(now_ns),
            cpu_share_permille: if self.logging() { self.throttle.share_permille() } else { SHARE_FULL_PERMILLE },
            outputs_held: self.held.len() + self.scheduler.held(),
            oldest_output_held_ns: oldest_held,
            clone: self.clone_progress(),
            ..self.stats
        }
    }
}
