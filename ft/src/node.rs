//! What a node asks of its driver, what it reports, and the `Node` that is a primary, a backup, or stopped.
//!
//! The contract, after quinn-proto: the driver feeds inputs through `handle_*` with the current time, lets the
//! guest run through `run_guest`, then drains `poll_action` until it returns `None` and sleeps until
//! `poll_timeout` or the next input. Time never goes backwards. Errors caused by the peer are values (reported as
//! events); misuse by the driver is an `assert!`.

use std::collections::VecDeque;

use crate::abi::DiskStatus;
use crate::backup::Backup;
use crate::guest::Guest;
use crate::log::Output;
use crate::position::Position;
use crate::primary::Primary;
use crate::storage::StorageRequest;
use crate::wire::Message;

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write a message to the logging channel (a reliable ordered stream).
    Send(Message),
    /// Send a heartbeat datagram to the peer.
    Heartbeat(Message),
    /// Deliver a console line or a network frame to the outside world. `log_index` is the entry that produced it
    /// (none when unprotected), for the Output Rule checker.
    Release { output: Output, log_index: Option<crate::log::LogIndex> },
    /// Perform a disk request against shared storage, fenced with `epoch`, and report with
    /// [`Node::handle_storage_done`].
    Storage { epoch: u64, request: StorageRequest },
    /// Atomically move the arbiter record from `expected_epoch` to `expected_epoch + 1`; report with
    /// [`Node::handle_arbiter`].
    TestAndSet { expected_epoch: u64 },
    /// Close the logging channel (the pair is over).
    CloseChannel,
    /// Something worth a line in the timeline.
    Notify(Event),
}

/// The answer of the arbiter to a test-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArbiterOutcome {
    /// The record moved to the new epoch: this node is the live primary of that epoch.
    Won { epoch: u64 },
    /// The record had moved on already: somebody else went live.
    Lost { epoch: u64 },
    /// Storage did not answer; retry later.
    Unreachable,
}

/// Why the backup stopped replaying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub position: Position,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "divergence at {}: expected {}, actual {}", self.position, self.expected, self.actual)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    ChannelUp {
        epoch: u64,
    },
    /// The peer is declared failed: `silent_ms` since anything was heard from it, and why.
    PeerFailed {
        silent_ms: u64,
        cause: FailureCause,
    },
    TestAndSetStarted {
        expected_epoch: u64,
    },
    ArbiterUnreachable,
    WentLive {
        epoch: u64,
        replayed_entries: u64,
        reissued_disk_requests: usize,
        reissued_outputs: usize,
    },
    LostRace {
        epoch: u64,
    },
    Diverged(Divergence),
    PoweredOff {
        status: u32,
    },
    GuestStopped {
        reason: String,
    },
    /// The peer broke the protocol (bad handshake, unexpected message); the channel is dropped.
    ProtocolViolation(String),
    Checkpoint {
        position: Position,
        hash: u64,
    },
    /// Flow control: the primary's guest waits because `unacked` entries are unacknowledged.
    Stalled {
        unacked: usize,
    },
}

/// A timeline sentence, for logs, status pages and the simulator's trace (never Rust debug output).
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::ChannelUp { epoch } => write!(f, "the logging channel is up (epoch {epoch})"),
            Event::PeerFailed { silent_ms, cause } => {
                write!(f, "declaring the peer failed after {silent_ms} ms without word: {cause}")
            }
            Event::TestAndSetStarted { expected_epoch } => {
                write!(
                    f,
                    "asking the arbiter to move from epoch {expected_epoch} to {}",
                    expected_epoch.saturating_add(1)
                )
            }
            Event::ArbiterUnreachable => write!(f, "the arbiter did not answer; asking again later"),
            Event::WentLive { epoch, replayed_entries, reissued_disk_requests, reissued_outputs } => write!(
                f,
                "LIVE in epoch {epoch}: replayed {replayed_entries} entries, reissued {reissued_disk_requests} \
                 disk requests and {reissued_outputs} outputs"
            ),
            Event::LostRace { epoch } => {
                write!(f, "lost the go-live race (the arbiter is at epoch {epoch}): halting")
            }
            Event::Diverged(divergence) => write!(f, "DIVERGED: {divergence}"),
            Event::PoweredOff { status } => write!(f, "the guest powered off with status {status}"),
            Event::GuestStopped { reason } => write!(f, "the guest stopped: {reason}"),
            Event::ProtocolViolation(what) => write!(f, "the peer broke the protocol: {what}"),
            Event::Checkpoint { position, hash } => write!(f, "checkpoint {hash:016x} at {position} verified"),
            Event::Stalled { unacked } => {
                write!(f, "flow control: the guest waits, {unacked} entries unacknowledged")
            }
        }
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::LostRace { epoch } => write!(f, "lost the go-live race at epoch {epoch}"),
            Stopped::Diverged(divergence) => write!(f, "diverged: {divergence}"),
            Stopped::PoweredOff { status } => write!(f, "the guest powered off ({status})"),
            Stopped::GuestFailed(reason) => write!(f, "the guest failed: {reason}"),
        }
    }
}

/// Why a node declared its peer failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// Nothing (heartbeat, log or ack) heard within the failure timeout.
    Silent,
    /// The peer's heartbeats arrive but the logging channel carries nothing: acks (or log) stopped.
    ChannelStalled,
    /// The logging channel closed, reset or failed a check (its error).
    ChannelLost(String),
    /// The peer broke the protocol.
    ProtocolViolation(String),
    /// No peer connected within the startup timeout.
    NeverConnected,
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureCause::Silent => write!(f, "no word from it within the failure timeout"),
            FailureCause::ChannelStalled => write!(f, "its heartbeats arrive but the logging channel is stalled"),
            FailureCause::ChannelLost(reason) => write!(f, "the logging channel failed: {reason}"),
            FailureCause::ProtocolViolation(what) => write!(f, "it broke the protocol: {what}"),
            FailureCause::NeverConnected => write!(f, "it never connected within the startup timeout"),
        }
    }
}

/// Why a node stopped for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    LostRace { epoch: u64 },
    Diverged(Divergence),
    PoweredOff { status: u32 },
    GuestFailed(String),
}

/// Whether more guest work is ready right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The guest ran; call `run_guest` again after handling I/O.
    Ran,
    /// Nothing to run until an input, a message or a timeout.
    Idle,
}

/// The driver's view of a node's role, for status and for routing client traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Primary waiting for its backup, or protected by one.
    Primary,
    /// Live with no backup: "not protected".
    Unprotected,
    Backup,
    Stopped,
}

/// Figures for `ftvm status` and the metrics endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub log_entries: u64,
    pub log_bytes: u64,
    pub acked: u64,
    pub execution_lag_ns: u64,
    pub outputs_held: usize,
    pub oldest_output_held_ns: u64,
    pub stalls: u64,
    /// Heartbeats dropped: another pair's, another epoch's, the node's own reflected back, or replayed.
    pub heartbeats_ignored: u64,
}

/// A disk request finished at storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageDone {
    pub tag: u32,
    pub status: DiskStatus,
    /// Read data; empty for writes.
    pub data: Vec<u8>,
}

/// Entropy for the guest's `IN ENTROPY`; the simulator passes a seeded generator, production the OS.
pub trait EntropySource {
    fn next_u32(&mut self) -> u32;
}

pub enum Node<G: Guest> {
    Primary(Box<Primary<G>>),
    Backup(Box<Backup<G>>),
    /// Stopped for good; the actions it queued before stopping are still drained.
    Stopped(Stopped, VecDeque<Action>),
}

impl<G: Guest> Node<G> {
    pub fn role(&self) -> Role {
        match self {
            Node::Primary(primary) if primary.is_protected_or_connecting() => Role::Primary,
            Node::Primary(_) => Role::Unprotected,
            Node::Backup(_) => Role::Backup,
            Node::Stopped(..) => Role::Stopped,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            Node::Primary(primary) => primary.epoch(),
            Node::Backup(backup) => backup.epoch(),
            Node::Stopped(..) => 0,
        }
    }

    pub fn handle_message(&mut self, now_ns: u64, message: Message) {
        match self {
            Node::Primary(primary) => primary.handle_message(now_ns, message),
            Node::Backup(backup) => backup.handle_message(now_ns, message),
            Node::Stopped(..) => {}
        }
    }

    /// The logging channel closed or broke (including a corrupt frame, reported here with its error).
    pub fn handle_channel_closed(&mut self, now_ns: u64, reason: &str) {
        match self {
            Node::Primary(primary) => primary.handle_channel_closed(now_ns, reason),
            Node::Backup(backup) => backup.handle_channel_closed(now_ns, reason),
            Node::Stopped(..) => {}
        }
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        match self {
            Node::Primary(primary) => primary.handle_timeout(now_ns),
            Node::Backup(backup) => backup.handle_timeout(now_ns),
            Node::Stopped(..) => {}
        }
    }

    pub fn handle_arbiter(&mut self, now_ns: u64, outcome: ArbiterOutcome) {
        match self {
            Node::Primary(primary) => primary.handle_arbiter(now_ns, outcome),
            Node::Backup(backup) => backup.handle_arbiter(now_ns, outcome),
            Node::Stopped(..) => {}
        }
    }

    /// A frame arrived for the guest's network device. Only a live primary takes it; others drop it.
    pub fn handle_net_frame(&mut self, now_ns: u64, frame: Vec<u8>) {
        if let Node::Primary(primary) = self {
            primary.handle_net_frame(now_ns, frame);
        }
    }

    /// Storage refused `request` because the arbiter is at a newer `epoch`. Either another node went live (this
    /// one is superseded), or this node's own test-and-set took effect and only its reply was lost.
    pub fn handle_fenced(&mut self, now_ns: u64, epoch: u64, request: crate::storage::StorageRequest) {
        if let Node::Primary(primary) = self {
            primary.handle_fenced(now_ns, epoch, request);
        }
        self.transition_stopped();
    }

    fn take_actions(&mut self) -> VecDeque<Action> {
        match self {
            Node::Primary(primary) => primary.take_actions(),
            Node::Backup(backup) => backup.take_actions(),
            Node::Stopped(_, actions) => std::mem::take(actions),
        }
    }

    fn transition_stopped(&mut self) {
        let stopped = match self {
            Node::Primary(primary) => primary.take_stopped(),
            Node::Backup(backup) => backup.take_stopped(),
            Node::Stopped(..) => None,
        };
        if let Some(stopped) = stopped {
            let actions = self.take_actions();
            *self = Node::Stopped(stopped, actions);
        }
    }

    pub fn handle_storage_done(&mut self, now_ns: u64, done: StorageDone) {
        if let Node::Primary(primary) = self {
            primary.handle_storage_done(now_ns, done);
        }
    }

    /// Runs (or replays) the guest for one slice. A backup that won the go-live race turns into a primary here.
    pub fn run_guest(&mut self, now_ns: u64, entropy: &mut dyn EntropySource) -> Progress {
        let progress = match self {
            Node::Primary(primary) => primary.run_guest(now_ns, entropy),
            Node::Backup(backup) => backup.run_guest(now_ns),
            Node::Stopped(..) => Progress::Idle,
        };
        self.transition(now_ns, entropy);
        progress
    }

    fn transition(&mut self, now_ns: u64, entropy: &mut dyn EntropySource) {
        let next = match self {
            Node::Primary(primary) => {
                primary.take_stopped().map(|stopped| Node::Stopped(stopped, primary.take_actions()))
            }
            Node::Backup(backup) => {
                if let Some(stopped) = backup.take_stopped() {
                    Some(Node::Stopped(stopped, backup.take_actions()))
                } else if backup.ready_to_go_live() {
                    let Node::Backup(backup) =
                        std::mem::replace(self, Node::Stopped(Stopped::LostRace { epoch: 0 }, VecDeque::new()))
                    else {
                        unreachable!("matched a backup above")
                    };
                    Some(Node::Primary(Box::new(backup.go_live(now_ns, entropy))))
                } else {
                    None
                }
            }
            Node::Stopped(..) => None,
        };
        if let Some(next) = next {
            *self = next;
        }
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        match self {
            Node::Primary(primary) => primary.poll_action(),
            Node::Backup(backup) => backup.poll_action(),
            Node::Stopped(_, actions) => actions.pop_front(),
        }
    }

    /// The earliest time at which `handle_timeout` has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        match self {
            Node::Primary(primary) => primary.poll_timeout(),
            Node::Backup(backup) => backup.poll_timeout(),
            Node::Stopped(..) => None,
        }
    }

    /// Whether the backup wants more log (flow control towards the channel).
    pub fn wants_log(&self) -> bool {
        match self {
            Node::Backup(backup) => backup.wants_log(),
            _ => true,
        }
    }

    pub fn stats(&self, now_ns: u64) -> Stats {
        match self {
            Node::Primary(primary) => primary.stats(now_ns),
            Node::Backup(backup) => backup.stats(),
            Node::Stopped(..) => Stats::default(),
        }
    }

    pub fn stopped(&self) -> Option<&Stopped> {
        match self {
            Node::Stopped(stopped, actions) if actions.is_empty() => Some(stopped),
            Node::Stopped(..) => None,
            _ => None,
        }
    }

    pub fn position(&self) -> Option<Position> {
        match self {
            Node::Primary(primary) => Some(primary.position()),
            Node::Backup(backup) => Some(backup.position()),
            Node::Stopped(..) => None,
        }
    }
}
