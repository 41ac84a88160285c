//! The world of `ftvm run`/`record` as `ft::driver` sees it: the wall clock, an in-memory disk, a scripted client
//! load as the outside world, no heartbeats, and an arbiter a lone primary always wins. A recording's logging
//! channel leads to [`file_backup`], an ideal backup that writes what it receives to the log file.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use ft::driver::{
    Arbiter, BlockStorage, Clock, Datagrams, GuestExits, Observation, Observer, Outside, StorageError, WriteStamp,
};
use ft::log::{DiskTarget, Entry, Output, OutputKind};
use ft::primary::Primary;
use ft::storage::StorageRequest;
use ft::wire::{Message, StreamDecoder, StreamEncoder};
use ft::{Action, ArbiterOutcome, Event, Position};
use kvm_backend::ThreadedGuest;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::error::CliError;
use crate::machine::Disk;
use crate::session::LogWriter;
use crate::timer::WallClock;
use crate::workload::Workload;

/// Longest sleep of the driver: `run_until` asks the session whether it is done at least this often.
const LOOK_PERIOD: Duration = Duration::from_millis(10);
/// A guest that has not run, logged, released or been sent anything for this long, with no timer set, waits
/// for nothing that will come.
const QUIET_FOR: Duration = Duration::from_millis(50);

pub(crate) struct SessionHost {
    clock: WallClock,
    disk: RefCell<Disk>,
    workload: RefCell<Option<Workload>>,
    /// No more frames: the session is ending.
    load_stopped: Cell<bool>,
    /// Wakes `recv_frame` when the load may have a frame to send (an answer was released).
    load_turn: tokio::sync::Notify,
    /// The first thing that went wrong outside the protocol core: it ends the session.
    error: RefCell<Option<CliError>>,
    console: RefCell<Vec<u8>>,
    echo_console: bool,
    guest_exit: Arc<tokio::sync::Notify>,
    /// When something last happened (an action other than a heartbeat, a frame given), for idleness.
    last_activity_ns: Cell<u64>,
}

impl SessionHost {
    pub(crate) fn new(
        disk: Disk,
        workload: Option<Workload>,
        echo_console: bool,
        guest_exit: Arc<tokio::sync::Notify>,
    ) -> SessionHost {
        SessionHost {
            clock: WallClock::new(LOOK_PERIOD),
            disk: RefCell::new(disk),
            workload: RefCell::new(workload),
            load_stopped: Cell::new(false),
            load_turn: tokio::sync::Notify::new(),
            error: RefCell::new(None),
            console: RefCell::new(Vec::new()),
            echo_console,
            guest_exit,
            last_activity_ns: Cell::new(0),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    pub(crate) fn fail(&self, error: CliError) {
        self.error.borrow_mut().get_or_insert(error);
    }

    pub(crate) fn has_error(&self) -> bool {
        self.error.borrow().is_some()
    }

    pub(crate) fn take_error(&self) -> Option<CliError> {
        self.error.borrow_mut().take()
    }

    pub(crate) fn workload_done(&self) -> bool {
        self.workload.borrow().as_ref().is_some_and(Workload::done)
    }

    pub(crate) fn responses(&self) -> u64 {
        self.workload.borrow().as_ref().map_or(0, Workload::responses)
    }

    pub(crate) fn stop_load(&self) {
        self.load_stopped.set(true);
    }

    /// Nothing has happened for `QUIET_FOR`.
    pub(crate) fn quiet(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_activity_ns.get()) >= QUIET_FOR.as_nanos() as u64
    }

    pub(crate) fn take_console(&self) -> Vec<u8> {
        std::mem::take(&mut self.console.borrow_mut())
    }

    fn active(&self) {
        self.last_activity_ns.set(self.now_ns());
    }

    /// A released output: console to stdout (and kept), frames to the load, which checks them.
    pub(crate) fn deliver(&self, output: &Output) {
        self.active();
        match output.kind {
            OutputKind::Console => {
                self.console.borrow_mut().extend_from_slice(&output.bytes);
                if self.echo_console {
                    use std::io::Write;
                    let mut stdout = std::io::stdout().lock();
                    // A closed stdout (a pipe whose reader left) must not stop the guest.
                    let _ = stdout.write_all(&output.bytes).and_then(|()| stdout.flush());
                }
            }
            OutputKind::NetTransmit => {
                let result = self.workload.borrow_mut().as_mut().map(|load| load.released(output));
                if let Some(Err(error)) = result {
                    self.fail(error);
                }
                self.load_turn.notify_one();
            }
            OutputKind::DiskWrite => {}
        }
    }

    /// Performs a storage request on the in-memory disk at once.
    pub(crate) fn perform(&self, request: &StorageRequest) -> ft::StorageDone {
        self.active();
        self.disk.borrow_mut().perform(request)
    }
}

impl Clock for SessionHost {
    fn now_ns(&self) -> u64 {
        SessionHost::now_ns(self)
    }

    fn guest_slice_ns(&self) -> u64 {
        0
    }

    async fn sleep_until_ns(&self, deadline_ns: u64) {
        self.clock.sleep_until_ns(deadline_ns).await;
    }
}

impl Datagrams for SessionHost {
    async fn send_heartbeat(&self, _frame: Vec<u8>) {}

    async fn recv_heartbeat(&self) -> Option<Vec<u8>> {
        // Nothing but the log file is at the other end: no heartbeat will come.
        std::future::pending().await
    }
}

fn storage_result(done: ft::StorageDone) -> Result<Vec<u8>, StorageError> {
    match done.status {
        ft::abi::DiskStatus::Ok => Ok(done.data),
        status => Err(StorageError::Io(format!("{status:?}"))),
    }
}

impl BlockStorage for SessionHost {
    async fn storage_read(&self, _epoch: u64, target: DiskTarget) -> Result<Vec<u8>, StorageError> {
        storage_result(self.perform(&StorageRequest::Read { target }))
    }

    async fn storage_write(&self, _stamp: WriteStamp, target: DiskTarget, data: Vec<u8>) -> Result<(), StorageError> {
        storage_result(self.perform(&StorageRequest::Write { target, data, output_seq: 0, log_index: None })).map(drop)
    }
}

impl Arbiter for SessionHost {
    async fn test_and_set(&self, expected_epoch: u64) -> ArbiterOutcome {
        // A plain run's primary has no backup: it is alone, and wins. (A recording's never asks: its log file
        // cannot fail.)
        ArbiterOutcome::Won { epoch: expected_epoch + 1 }
    }
}

impl Outside for SessionHost {
    fn release(&self, _epoch: u64, output: &Output) {
        self.deliver(output);
    }

    async fn recv_frame(&self) -> Option<Vec<u8>> {
        loop {
            if !self.load_stopped.get() {
                let frame = self.workload.borrow_mut().as_mut().and_then(Workload::next_frame);
                if let Some(frame) = frame {
                    self.active();
                    return Some(frame);
                }
            }
            self.load_turn.notified().await;
        }
    }
}

impl GuestExits for SessionHost {
    async fn guest_exit(&self) {
        self.guest_exit.notified().await;
    }
}

/// A recording or a replay has no pair to re-protect: no joiner is ever taken.
impl ft::driver::Joiners for SessionHost {}

impl Observer for SessionHost {
    fn observe(&self, _now_ns: u64, observation: Observation) {
        match observation {
            Observation::Action(Action::Heartbeat(_)) => {}
            Observation::Action(Action::Notify(Event::ProtocolViolation(what))) => {
                self.fail(CliError::Protocol(what.clone()));
            }
            Observation::Action(action) => {
                self.active();
                tracing::debug!(?action);
            }
            Observation::ChannelError(reason) => self.fail(CliError::Protocol(format!("the log channel: {reason}"))),
            Observation::Received(_) | Observation::Written { .. } => {}
        }
    }
}

/// What the ideal backup wrote, and where the log stands: the session's tail goes on from here.
pub(crate) struct Recorded {
    log: LogWriter,
    /// Frames in the log so far: the next one the session adds takes this number.
    frames: u64,
    pub(crate) entries: u64,
    /// The last entry logged, and the last the ideal backup acknowledged (sent, not necessarily read yet).
    last_index: u64,
    acked: u64,
    /// Where and what the last checkpoint entry was.
    pub(crate) last_checkpoint: Option<(u64, u64)>,
}

impl Recorded {
    fn record(&mut self, message: &Message) {
        self.frames += 1;
        if let Message::Log { index, entry } = message {
            self.entries += 1;
            self.last_index = *index;
            if let Entry::Checkpoint { position, hash } = entry {
                self.last_checkpoint = Some((position.exits, *hash));
            }
        }
    }

    /// After the driver: the ideal backup acknowledges what is left, so outputs logged at the last exits are
    /// released (a session that stopped at its load's last answer used to drop the console line the guest
    /// printed after it), and the frames this produces go on into the log.
    pub(crate) fn acknowledge_the_rest(
        &mut self,
        primary: &mut Primary<ThreadedGuest>,
        host: &SessionHost,
    ) -> Result<(), CliError> {
        let mut encoder = StreamEncoder::continuing(self.frames);
        loop {
            while let Some(action) = primary.poll_action() {
                match action {
                    Action::Send(message) => {
                        self.log.write_raw(&encoder.encode(&message))?;
                        self.record(&message);
                    }
                    Action::Release { output, .. } => host.deliver(&output),
                    Action::Storage { request, .. } => drop(host.perform(&request)),
                    _ => {}
                }
            }
            // What the primary has taken in, not what the backup task sent: its last acks may still be in the
            // channel, unread, when the driver handed the node back.
            if primary.stats(host.now_ns()).acked >= self.last_index {
                return Ok(());
            }
            self.acked = self.last_index;
            let ack = Message::Ack { received: self.acked, replayed: self.acked, position: Position::ZERO };
            primary.handle_message(host.now_ns(), ack);
        }
    }

    /// Ends the log with its end-of-recording frame; the bytes written.
    pub(crate) fn finish(mut self) -> Result<u64, CliError> {
        let end = StreamEncoder::continuing(self.frames).encode(&Message::EndOfRecording { entries: self.entries });
        self.log.write_raw(&end)?;
        self.log.finish()
    }
}

fn channel_error(what: impl std::fmt::Display) -> CliError {
    CliError::Protocol(format!("the recording's channel: {what}"))
}

/// The far end of a recording's channel: an ideal backup that welcomes the primary, acknowledges every entry as
/// it arrives, and writes every byte the primary sent to the log, as sent. Returns when the primary closes the
/// channel (its goodbye, or the session's end).
pub(crate) async fn file_backup(stream: DuplexStream, log: LogWriter) -> Result<Recorded, CliError> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut recorded = Recorded { log, frames: 0, entries: 0, last_index: 0, acked: 0, last_checkpoint: None };
    let mut decoder = StreamDecoder::new();
    let mut answers = StreamEncoder::default();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let length = reader.read(&mut buffer).await.map_err(channel_error)?;
        if length == 0 {
            decoder.finish().map_err(channel_error)?;
            return Ok(recorded);
        }
        recorded.log.write_raw(&buffer[..length])?;
        decoder.feed(&buffer[..length]);
        let mut reply = Vec::new();
        while let Some(message) = decoder.next_message().map_err(channel_error)? {
            recorded.record(&message);
            if let Message::Hello { pair_id, epoch, .. } = message {
                reply.extend(answers.encode(&Message::Welcome { pair_id, epoch }));
            }
        }
        if recorded.last_index > recorded.acked {
            recorded.acked = recorded.last_index;
            let (received, replayed) = (recorded.acked, recorded.acked);
            reply.extend(answers.encode(&Message::Ack { received, replayed, position: Position::ZERO }));
        }
        // The primary may have closed its side already (after its goodbye): it wants no more answers.
        if !reply.is_empty() && writer.write_all(&reply).await.is_err() {
            continue;
        }
    }
}
