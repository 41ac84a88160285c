//! What goes in and out of a node: the actions it asks of its driver, the events it reports, the outcomes and
//! completions the driver hands back, and its stats. A leaf module: the primary, the backup and `Node` use it,
//! and it uses neither of them, so the protocol's modules import in one direction only (node -> backup ->
//! primary -> events).

use crate::abi::DiskStatus;
use crate::log::{LogIndex, Output};
use crate::platform::InputKind;
use crate::position::Position;
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
    Release { output: Output, log_index: Option<LogIndex> },
    /// Perform a disk request against shared storage, fenced with `epoch`, and report with
    /// `Node::handle_storage_done`.
    Storage { epoch: u64, request: StorageRequest },
    /// Atomically move the arbiter record from `expected_epoch` to `expected_epoch + 1`; report with
    /// `Node::handle_arbiter`.
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
    /// The lag throttle changed the primary's CPU share (thousandths), at this execution lag.
    CpuShare {
        permille: u64,
        lag_ms: u64,
    },
    Stalled {
        unacked: usize,
    },
    /// Re-protection: the arbiter recorded node `node` as the backup of `epoch`, and the clone begins.
    CloneStarted {
        epoch: u64,
        node: u64,
        memory_bytes: u64,
    },
    /// Re-protection: pre-copy pass `pass` sent `pages` pages while the guest ran on.
    ClonePass {
        pass: u32,
        pages: u64,
    },
    /// Re-protection: the cut. The guest was paused for `pause_ns` while the last `pages` pages and its CPU and
    /// device state were taken; the clone took `total_ns` and `bytes` in all. From here on the pair is protected.
    CloneCut {
        epoch: u64,
        /// The new backup.
        node: u64,
        passes: u32,
        pages: u64,
        pause_ns: u64,
        total_ns: u64,
        bytes: u64,
    },
    /// The joiner restored the cut, its state hash matches the primary's, and it replays from here on.
    Cloned {
        epoch: u64,
        position: Position,
        pages: u64,
    },
    /// A clone was given up (either side); the primary runs on unprotected.
    CloneAbandoned {
        reason: String,
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
            Event::CloneStarted { epoch, node, memory_bytes } => write!(
                f,
                "re-protecting onto node {node:#x} in epoch {epoch}: cloning {} KiB of guest memory",
                memory_bytes >> 10
            ),
            Event::ClonePass { pass, pages } => write!(f, "re-protecting: pre-copy pass {pass} sent {pages} pages"),
            Event::CloneCut { epoch, node, passes, pages, pause_ns, total_ns, bytes } => write!(
                f,
                "protected by node {node:#x} in epoch {epoch}: the cut after {passes} passes sent {pages} pages with the guest \
                 paused {} us; the clone took {} ms and {} KiB",
                pause_ns / 1_000,
                total_ns / 1_000_000,
                bytes >> 10
            ),
            Event::Cloned { epoch, position, pages } => {
                write!(f, "cloned in epoch {epoch} at {position} ({pages} pages): replaying from here")
            }
            Event::CloneAbandoned { reason } => write!(f, "re-protection abandoned: {reason}"),
            Event::CpuShare { permille, lag_ms } => {
                write!(
                    f,
                    "lag throttle: the guest's CPU share is {}.{}% (execution lag {lag_ms} ms)",
                    permille / 10,
                    permille % 10
                )
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
            Stopped::JoinFailed(reason) => write!(f, "joining the pair failed: {reason}"),
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
    LostRace {
        epoch: u64,
    },
    Diverged(Divergence),
    PoweredOff {
        status: u32,
    },
    GuestFailed(String),
    /// A joiner gave up before its clone was complete (refused, timed out, the channel broke, a state mismatch):
    /// it holds no state worth keeping, and may try again with a fresh guest.
    JoinFailed(String),
}

/// Whether more guest work is ready right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The guest ran; call `run_guest` again after handling I/O.
    Ran,
    /// Nothing to run until an input, a message or a timeout.
    Idle,
    /// The guest runs on its own vCPU thread: call `guest_exited` when the driver's host says a run ended.
    Running,
}

/// The driver's view of a node's role, for status and for routing client traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Primary waiting for its backup, or protected by one.
    Primary,
    /// Live with no backup: "not protected".
    Unprotected,
    Backup,
    /// Joining a live primary as its new backup: receiving the clone.
    Joining,
    Stopped,
}

/// Figures for `ftvm status` and the metrics endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub log_entries: u64,
    pub log_bytes: u64,
    pub acked: u64,
    pub execution_lag_ns: u64,
    /// The primary's CPU share under the lag throttle, in thousandths (1000: not throttled).
    pub cpu_share_permille: u64,
    pub outputs_held: usize,
    pub oldest_output_held_ns: u64,
    pub stalls: u64,
    /// Heartbeats dropped: another pair's, another epoch's, the node's own reflected back, or replayed.
    pub heartbeats_ignored: u64,
    /// A clone under way (on the primary or the joiner), for `ftvm status`.
    pub clone: Option<CloneProgress>,
}

/// How far a clone has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloneProgress {
    pub pass: u32,
    /// Pages sent (or received) in all passes so far, and the guest's pages.
    pub pages_done: u64,
    pub pages_total: u64,
    /// Pages dirtied since the current pass began, as of the last look.
    pub dirty_pages: u64,
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

/// The log entry that a guest's last exit calls for (the backup's replay waits for it; a backup that goes live
/// with one pending finishes that exit as a primary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Input(InputKind),
    Output(Output),
    PowerOff { status: u32 },
}
