//! Replays a recording: the frames of the log file go to a fresh backup with a fresh guest, which replays every
//! entry at its logged position, checks every output digest and checkpoint, and stops with a named divergence
//! when the guest does not do what the log says.
//!
//! The backup runs under `ft::driver::run_until`, the driver loop of the deployment and the simulator; its
//! logging channel is the file, read once (and checked whole) before replay starts.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ft::backup::Backup;
use ft::driver::{
    Arbiter, BlockStorage, Clock, Datagrams, GuestExits, Observation, Observer, Outside, StorageError, WriteStamp,
};
use ft::log::{DiskTarget, Entry, Output};
use ft::wire::{self, Message, StreamDecoder};
use ft::{Action, ArbiterOutcome, Config, Event, Node, Position, Stopped};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::CliError;
use crate::machine::{self, GuestImage};
use crate::tap::ConsoleTap;
use crate::timer::WallClock;

/// Longest sleep of the replay's driver: `run_until` asks whether replay is done at least this often.
const LOOK_PERIOD: Duration = Duration::from_millis(10);
/// Bytes handed to the driver per read of the file.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The recording's "primary" cannot fail: the backup must never give up on it.
const REPLAY_FAILURE_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

pub struct ReplayOptions {
    pub kvm_path: PathBuf,
    pub image: GuestImage,
    pub log: PathBuf,
}

pub struct ReplayResult {
    pub state_hash: u64,
    pub exits: u64,
    /// What the guest printed during replay (suppressed as output, copied from its exits).
    pub console: Vec<u8>,
    pub entries: u64,
    pub checkpoints: u64,
    pub powered_off: Option<u32>,
    /// The guest failed (triple fault, MMIO, emulation failure) where the recorded one did: its power-off status
    /// is then `u32::MAX`, and this is why.
    pub failure: Option<String>,
    pub elapsed: Duration,
}

/// A checked log file: the frames the primary sent (hello, log entries, release notices, goodbye), and what they
/// hold.
pub struct LogFile {
    pair_id: u64,
    image_digest: u64,
    /// Bytes of the frames the primary sent: the file without its end-of-recording frame.
    channel_bytes: usize,
    /// Per log entry, in order: its position and hash if it is a checkpoint.
    checkpoints: Vec<Option<(Position, u64)>>,
}

/// Largest log replayed: it is read whole (and decoded into memory) before replay starts.
pub const LOG_BYTES_MAX: u64 = 1 << 30;

fn log_error(path: &Path, what: impl Into<String>) -> CliError {
    CliError::Log { path: path.display().to_string(), what: what.into() }
}

/// Checks every frame of a recording (the bytes of a log file): any damage is an error naming the frame. The
/// decoder of `ftvm replay`'s outside input, public for the fuzzer (fuzz/fuzz_targets/recording.rs).
pub fn parse_log(bytes: &[u8]) -> Result<LogFile, String> {
    let mut decoder = StreamDecoder::new();
    decoder.feed(bytes);
    let mut messages = Vec::new();
    let mut offset = 0usize;
    for frame in 0.. {
        let message = match decoder.next_message() {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(error) => return Err(format!("frame {frame} at byte {offset}: {error}")),
        };
        // The decoder accepted a whole frame here, so its header (and length field) is within `bytes`.
        let length = u32::from_le_bytes([bytes[offset + 4], bytes[offset + 5], bytes[offset + 6], bytes[offset + 7]]);
        messages.push((frame, offset, message));
        offset += wire::HEADER_BYTES + length as usize;
    }
    if let Err(error) = decoder.finish() {
        return Err(format!("frame {} at byte {offset}: {error}: the log is truncated", messages.len()));
    }
    let mut messages = messages.into_iter();
    let (pair_id, image_digest) = match messages.next() {
        Some((_, _, Message::Hello { pair_id, image_digest, .. })) => (pair_id, image_digest),
        Some((_, _, other)) => return Err(format!("frame 0 is {other:?}, not a hello")),
        None => return Err("empty: no hello frame".into()),
    };
    let mut checkpoints = Vec::new();
    let mut end = None;
    for (frame, offset_of, message) in messages {
        if end.is_some() {
            return Err(format!("frame {frame}: {message:?} after the end of the recording"));
        }
        match &message {
            Message::Log { entry: Entry::Checkpoint { position, hash }, .. } => {
                checkpoints.push(Some((*position, *hash)))
            }
            Message::Log { .. } => checkpoints.push(None),
            Message::Released { .. } | Message::Goodbye { .. } => {}
            Message::EndOfRecording { entries } => end = Some((*entries, offset_of)),
            other => return Err(format!("frame {frame}: unexpected {other:?} in a log")),
        }
    }
    // A recording that died (or a file cut at a frame boundary) has no end marker: replaying it would verify a
    // prefix and report a state that no complete run ends in.
    match end {
        None => Err(format!(
            "the log is truncated: it ends after {} entries without its end-of-recording frame (the recording \
             stopped before it finished)",
            checkpoints.len()
        )),
        Some((entries, _)) if entries != checkpoints.len() as u64 => {
            Err(format!("the recording says it holds {entries} entries, the file has {}", checkpoints.len()))
        }
        Some((_, channel_bytes)) => Ok(LogFile { pair_id, image_digest, channel_bytes, checkpoints }),
    }
}

/// Replays the log at `options.log`.
pub fn run(options: ReplayOptions) -> Result<ReplayResult, CliError> {
    machine::check_kvm(&options.kvm_path)?;
    let path = options.log.as_path();
    let bytes =
        kvm_backend::files::read_bounded(path, LOG_BYTES_MAX).map_err(|error| log_error(path, error.to_string()))?;
    let log = parse_log(&bytes).map_err(|what| log_error(path, what))?;
    let Some(disk_sectors) = machine::recording_disk_sectors(log.pair_id) else {
        return Err(log_error(path, format!("pair id {:#x} is not one of an ftvm recording", log.pair_id)));
    };
    if log.image_digest != options.image.digest() {
        return Err(log_error(
            path,
            format!(
                "recorded from another guest image (digest {:#018x}, {} has {:#018x})",
                log.image_digest,
                options.image.name,
                options.image.digest()
            ),
        ));
    }
    let guest = machine::new_guest(&options.kvm_path, &options.image)?;
    let handle = guest.handle();
    let (guest, console) = ConsoleTap::new(guest);
    let config = Config {
        pair_id: log.pair_id,
        image_digest: log.image_digest,
        failure_timeout_ms: REPLAY_FAILURE_TIMEOUT_MS,
        ..Config::default()
    };
    let (runtime, local) = crate::local_runtime()?;
    let started = Instant::now();
    let host = Rc::new(ReplayHost::new());
    let mut node = Node::Backup(Box::new(Backup::new(config, guest, disk_sectors, host.now_ns())));
    let mut bytes = bytes;
    bytes.truncate(log.channel_bytes);
    let channel = LogStream { bytes, at: 0, fed: host.fed.clone() };
    let entries = log.checkpoints.len() as u64;
    let stopped = local.block_on(&runtime, async {
        // Done once every entry is replayed (a log that ends in a power-off stops the backup instead). The
        // backup never runs its guest past the last entry, so nothing is done after it.
        let until = |node: &mut Node<ConsoleTap<kvm_backend::KvmGuest>>| {
            let Node::Backup(backup) = node else { return false };
            host.has_error() || (host.fed.get() && backup.stats().acked >= entries)
        };
        let mut entropy = NoEntropy;
        ft::driver::run_until(host.clone(), &mut node, Some(channel), &mut entropy, until).await
    });
    if let Some(error) = host.error.borrow_mut().take() {
        return Err(error.into_cli(path));
    }
    let finish = Finish { path, checkpoints: &log.checkpoints, verified: host.checkpoints.get(), started };
    let mut result = finish.result(node, stopped, console.borrow().clone())?;
    result.failure = handle.failure();
    Ok(result)
}

/// A backup's guest reads no entropy: replayed values come from the log (only a backup that went live would
/// draw on this, and a replay's never does: its arbiter always refuses).
struct NoEntropy;

impl ft::EntropySource for NoEntropy {
    fn next_u32(&mut self) -> u32 {
        0
    }
}

/// What went wrong in a replay, as the driver's host saw it.
enum ReplayError {
    Diverged(ft::node::Divergence),
    Log(String),
}

impl ReplayError {
    fn into_cli(self, path: &Path) -> CliError {
        match self {
            ReplayError::Diverged(divergence) => CliError::Diverged(divergence),
            ReplayError::Log(what) => log_error(path, what),
        }
    }
}

/// The backup's world in a replay: the wall clock, a file for a primary, and nothing else (no heartbeats, no
/// storage, no outside world: a backup suppresses its outputs, and its "primary" never fails).
struct ReplayHost {
    clock: WallClock,
    /// The whole file has been handed to the driver.
    fed: Rc<Cell<bool>>,
    checkpoints: Cell<u64>,
    error: RefCell<Option<ReplayError>>,
}

impl ReplayHost {
    fn new() -> ReplayHost {
        ReplayHost {
            clock: WallClock::new(LOOK_PERIOD),
            fed: Rc::new(Cell::new(false)),
            checkpoints: Cell::new(0),
            error: RefCell::new(None),
        }
    }

    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    fn has_error(&self) -> bool {
        self.error.borrow().is_some()
    }

    fn fail(&self, error: ReplayError) {
        self.error.borrow_mut().get_or_insert(error);
    }
}

impl Clock for ReplayHost {
    fn now_ns(&self) -> u64 {
        ReplayHost::now_ns(self)
    }

    fn guest_slice_ns(&self) -> u64 {
        0
    }

    async fn sleep_until_ns(&self, deadline_ns: u64) {
        self.clock.sleep_until_ns(deadline_ns).await;
    }
}

impl Datagrams for ReplayHost {
    async fn send_heartbeat(&self, _frame: Vec<u8>) {}

    async fn recv_heartbeat(&self) -> Option<Vec<u8>> {
        std::future::pending().await
    }
}

impl BlockStorage for ReplayHost {
    async fn storage_read(&self, _epoch: u64, _target: DiskTarget) -> Result<Vec<u8>, StorageError> {
        Err(StorageError::Io("a replay has no storage".into()))
    }

    async fn storage_write(&self, _stamp: WriteStamp, _target: DiskTarget, _data: Vec<u8>) -> Result<(), StorageError> {
        Err(StorageError::Io("a replay has no storage".into()))
    }
}

impl Arbiter for ReplayHost {
    async fn test_and_set(&self, expected_epoch: u64) -> ArbiterOutcome {
        // The backup of a replay never goes live: the recording's primary is the one that was.
        ArbiterOutcome::Lost { epoch: expected_epoch + 1 }
    }
}

impl Outside for ReplayHost {
    fn release(&self, _epoch: u64, _output: &Output) {}

    async fn recv_frame(&self) -> Option<Vec<u8>> {
        None
    }
}

impl GuestExits for ReplayHost {
    async fn guest_exit(&self) {
        // The replayed guest runs on the driver's thread.
        std::future::pending().await
    }
}

/// A recording or a replay has no pair to re-protect: no joiner is ever taken.
impl ft::driver::Joiners for ReplayHost {}

impl Observer for ReplayHost {
    fn observe(&self, _now_ns: u64, observation: Observation) {
        match observation {
            Observation::Action(Action::Notify(Event::Checkpoint { .. })) => {
                self.checkpoints.set(self.checkpoints.get() + 1);
            }
            Observation::Action(Action::Notify(Event::Diverged(divergence))) => {
                self.fail(ReplayError::Diverged(divergence.clone()));
            }
            Observation::Action(Action::Notify(Event::ProtocolViolation(what))) => {
                self.fail(ReplayError::Log(what.clone()));
            }
            Observation::Action(Action::Notify(event)) => tracing::debug!(?event),
            _ => {}
        }
    }
}

/// The recording as the backup's logging channel: the file's frames, then silence (never an end, which the
/// backup would take for its primary's failure). What the backup sends back (welcome, acks) is dropped.
struct LogStream {
    bytes: Vec<u8>,
    at: usize,
    fed: Rc<Cell<bool>>,
}

impl AsyncRead for LogStream {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let at = self.at;
        if at >= self.bytes.len() {
            self.fed.set(true);
            // Nothing more will come, and nothing needs waking: the session ends from `run_until`.
            return Poll::Pending;
        }
        let length = (self.bytes.len() - at).min(buf.remaining()).min(READ_CHUNK_BYTES);
        buf.put_slice(&self.bytes[at..at + length]);
        self.at += length;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LogStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The end of a replay: every entry must have been replayed, and the final state is the last checkpoint's.
struct Finish<'a> {
    path: &'a Path,
    checkpoints: &'a [Option<(Position, u64)>],
    verified: u64,
    started: Instant,
}

impl Finish<'_> {
    fn result(
        self,
        node: Node<ConsoleTap<kvm_backend::KvmGuest>>,
        stopped: Option<Stopped>,
        console: Vec<u8>,
    ) -> Result<ReplayResult, CliError> {
        let entries = self.checkpoints.len() as u64;
        let (state_hash, exits, powered_off) = match (stopped, node) {
            // The backup stops at a power-off only once everything after it (the final checkpoint) is verified:
            // the final state is that checkpoint's.
            (Some(Stopped::PoweredOff { status }), _) => match self.checkpoints.iter().rev().flatten().next() {
                Some((position, hash)) => (*hash, position.exits, Some(status)),
                None => return Err(log_error(self.path, "the recording has no checkpoint of its final state")),
            },
            (Some(Stopped::Diverged(divergence)), _) => return Err(CliError::Diverged(divergence)),
            (Some(other), _) => return Err(log_error(self.path, format!("replay stopped: {other:?}"))),
            (None, Node::Backup(mut backup)) => {
                let replayed = backup.stats().acked.min(entries);
                let position = backup.position();
                if replayed < entries {
                    return Err(log_error(
                        self.path,
                        format!("replay stopped after entry {replayed} of {entries}, at {position}"),
                    ));
                }
                let hash = backup
                    .state_hash()
                    .map_err(|error| CliError::Guest { guest: "replay".into(), reason: error.to_string() })?;
                (hash, position.exits, None)
            }
            (None, _) => return Err(log_error(self.path, "the backup went live during a replay")),
        };
        Ok(ReplayResult {
            state_hash,
            exits,
            console,
            entries,
            checkpoints: self.verified,
            powered_off,
            failure: None,
            elapsed: self.started.elapsed(),
        })
    }
}
