//! Replays a recording: the frames of the log file go to a fresh backup with a fresh guest, which replays every
//! entry at its logged position, checks every output digest and checkpoint, and stops with a named divergence
//! when the guest does not do what the log says.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ft::backup::Backup;
use ft::log::Entry;
use ft::node::Divergence;
use ft::wire::{self, Message, StreamDecoder};
use ft::{Action, Config, Event, Position, Progress, Stopped};
use kvm_backend::KvmGuest;

use crate::error::CliError;
use crate::machine::{self, Clock, GuestImage};
use crate::tap::ConsoleTap;

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

/// A decoded log file: the hello, then log entries and release notices in channel order.
pub struct LogFile {
    pair_id: u64,
    image_digest: u64,
    /// (frame number, message) of everything after the hello.
    messages: Vec<(usize, Message)>,
    /// Per log entry, in order: its position and hash if it is a checkpoint.
    checkpoints: Vec<Option<(Position, u64)>>,
}

/// Largest log replayed: it is read whole (and decoded into memory) before replay starts.
pub const LOG_BYTES_MAX: u64 = 1 << 30;

fn log_error(path: &Path, what: impl Into<String>) -> CliError {
    CliError::Log { path: path.display().to_string(), what: what.into() }
}

/// Reads and checks every frame of `path`; any damage is an error naming the path and the frame.
fn read_log(path: &Path) -> Result<LogFile, CliError> {
    let bytes =
        kvm_backend::files::read_bounded(path, LOG_BYTES_MAX).map_err(|error| log_error(path, error.to_string()))?;
    parse_log(&bytes).map_err(|what| log_error(path, what))
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
        offset += wire::HEADER_BYTES + length as usize;
        messages.push((frame, message));
    }
    if let Err(error) = decoder.finish() {
        return Err(format!("frame {} at byte {offset}: {error}: the log is truncated", messages.len()));
    }
    let mut messages = messages.into_iter();
    let (pair_id, image_digest) = match messages.next() {
        Some((_, Message::Hello { pair_id, image_digest, .. })) => (pair_id, image_digest),
        Some((_, other)) => return Err(format!("frame 0 is {other:?}, not a hello")),
        None => return Err("empty: no hello frame".into()),
    };
    let mut checkpoints = Vec::new();
    let mut rest = Vec::new();
    let mut end = None;
    for (frame, message) in messages {
        if end.is_some() {
            return Err(format!("frame {frame}: {message:?} after the end of the recording"));
        }
        match &message {
            Message::Log { entry: Entry::Checkpoint { position, hash }, .. } => {
                checkpoints.push(Some((*position, *hash)))
            }
            Message::Log { .. } => checkpoints.push(None),
            Message::Released { .. } | Message::Goodbye { .. } => {}
            Message::EndOfRecording { entries } => {
                end = Some(*entries);
                continue;
            }
            other => return Err(format!("frame {frame}: unexpected {other:?} in a log")),
        }
        rest.push((frame, message));
    }
    // A recording that died (or a file cut at a frame boundary) has no end marker: replaying it would verify a
    // prefix and report a state that no complete run ends in.
    match end {
        None => Err(format!(
            "the log is truncated: it ends after {} entries without its end-of-recording frame (the recording \
             stopped before it finished)",
            checkpoints.len()
        )),
        Some(entries) if entries != checkpoints.len() as u64 => {
            Err(format!("the recording says it holds {entries} entries, the file has {}", checkpoints.len()))
        }
        Some(_) => Ok(LogFile { pair_id, image_digest, messages: rest, checkpoints }),
    }
}

/// Replays the log at `options.log`.
pub fn run(options: ReplayOptions) -> Result<ReplayResult, CliError> {
    machine::check_kvm(&options.kvm_path)?;
    let path = options.log.as_path();
    let log = read_log(path)?;
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
    let config = Config { pair_id: log.pair_id, image_digest: log.image_digest, ..Config::default() };
    let clock = Clock::start();
    let started = Instant::now();
    let backup = Box::new(Backup::new(config, guest, disk_sectors, clock.now_ns()));
    let mut replay = Replay { path, backup, console, checkpoints: 0, powered_off: None };
    let hello = Message::Hello { pair_id: log.pair_id, epoch: 1, image_digest: log.image_digest };
    replay.backup.handle_message(clock.now_ns(), hello);
    replay.drain()?;
    let mut messages = log.messages.into_iter().peekable();
    loop {
        let mut fed = false;
        while replay.backup.wants_log() {
            let Some((_, message)) = messages.next() else { break };
            replay.backup.handle_message(clock.now_ns(), message);
            fed = true;
        }
        let progress = replay.backup.run_guest(clock.now_ns());
        replay.drain()?;
        if replay.powered_off.is_some() || (progress == Progress::Idle && !fed && messages.peek().is_none()) {
            break;
        }
    }
    let mut result = replay.finish(&log.checkpoints, started)?;
    result.failure = handle.failure();
    Ok(result)
}

struct Replay<'a> {
    path: &'a Path,
    backup: Box<Backup<ConsoleTap<KvmGuest>>>,
    console: Rc<RefCell<Vec<u8>>>,
    checkpoints: u64,
    powered_off: Option<u32>,
}

impl Replay<'_> {
    fn drain(&mut self) -> Result<(), CliError> {
        while let Some(action) = self.backup.poll_action() {
            match action {
                Action::Notify(Event::Diverged(divergence)) => return Err(CliError::Diverged(divergence)),
                Action::Notify(Event::ProtocolViolation(what)) => return Err(log_error(self.path, what)),
                Action::Notify(Event::Checkpoint { .. }) => self.checkpoints += 1,
                Action::Notify(event) => tracing::debug!(?event),
                // Welcome and acks go to a primary that is only a file; nothing else is expected without timeouts.
                _ => {}
            }
        }
        match self.backup.take_stopped() {
            None => Ok(()),
            Some(Stopped::PoweredOff { status }) => {
                self.powered_off = Some(status);
                Ok(())
            }
            Some(Stopped::Diverged(divergence)) => Err(CliError::Diverged(divergence)),
            Some(other) => Err(log_error(self.path, format!("replay stopped: {other:?}"))),
        }
    }

    /// At the end of the log: every entry must have been replayed, except checkpoints logged after the power-off
    /// (the backup stops at the power-off entry), which are checked here against the final state.
    fn finish(mut self, checkpoints: &[Option<(Position, u64)>], started: Instant) -> Result<ReplayResult, CliError> {
        let entries = checkpoints.len() as u64;
        let replayed = self.backup.stats().acked.min(entries);
        let position = self.backup.position();
        let state_hash = match self.backup.state_hash() {
            Ok(hash) => hash,
            Err(error) => return Err(CliError::Guest { guest: "replay".into(), reason: error.to_string() }),
        };
        for trailing in &checkpoints[replayed as usize..] {
            let stalled = || format!("replay stopped after entry {replayed} of {entries}, at {position}");
            match (self.powered_off, trailing) {
                (Some(_), Some((at, hash))) if *at == position => {
                    if *hash != state_hash {
                        let expected = format!("state hash {hash:016x}");
                        return Err(CliError::Diverged(Divergence {
                            position,
                            expected,
                            actual: format!("state hash {state_hash:016x}"),
                        }));
                    }
                    self.checkpoints += 1;
                }
                _ => return Err(log_error(self.path, stalled())),
            }
        }
        let console = self.console.borrow().clone();
        Ok(ReplayResult {
            state_hash,
            exits: position.exits,
            console,
            entries,
            checkpoints: self.checkpoints,
            powered_off: self.powered_off,
            failure: None,
            elapsed: started.elapsed(),
        })
    }
}
