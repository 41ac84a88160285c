//! The thin async driver: runs a [`Node`] against a [`Host`] (clock, heartbeat socket, shared storage, arbiter,
//! the outside world) and a logging-channel stream. The same code runs over turmoil in the simulator and over
//! real sockets in `ftvm`; everything single-threaded, on a tokio `LocalSet`.

use std::future::Future;
use std::rc::Rc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::abi::DiskStatus;
use crate::guest::Guest;
use crate::log::{DiskTarget, Output};
use crate::node::{Action, ArbiterOutcome, EntropySource, Node, Progress, Stopped, StorageDone};
use crate::storage::StorageRequest;
use crate::wire::{self, Message, StreamDecoder, StreamEncoder, WireError};

/// Why shared storage did not do a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// No answer (partition, storage down): the request is retried.
    #[error("storage unreachable")]
    Unreachable,
    /// A newer epoch went live; requests of older epochs are refused.
    #[error("fenced: storage is at epoch {0}")]
    Fenced(u64),
    /// The storage failed the request; the guest sees an IO error.
    #[error("storage error: {0}")]
    Io(String),
}

/// What the driver reports to its host, for timelines, status and checkers.
#[derive(Debug)]
pub enum Observation<'a> {
    Action(&'a Action),
    Received(&'a Message),
    /// The log entries up to this index have been written to the channel (and flushed): what remains of their
    /// wait for an ack is the network and the backup.
    Written {
        log_index: u64,
    },
    ChannelError(&'a str),
}

/// The node's clock. Time is read only here; in the simulator it is simulated time.
#[allow(async_fn_in_trait)]
pub trait Clock {
    fn now_ns(&self) -> u64;
    /// Simulated CPU time a guest slice takes (0 on real hardware, where running the guest takes real time).
    fn guest_slice_ns(&self) -> u64;
    async fn sleep_until_ns(&self, deadline_ns: u64);
}

/// The datagram side of the network, for heartbeats. (The logging channel, the ordered reliable side, is any
/// tokio `AsyncRead + AsyncWrite` stream handed to [`run`].)
#[allow(async_fn_in_trait)]
pub trait Datagrams {
    async fn send_heartbeat(&self, frame: Vec<u8>);
    /// The next heartbeat datagram; `None` when the socket is gone.
    async fn recv_heartbeat(&self) -> Option<Vec<u8>>;
}

/// Which attempt of which write this is: storage refuses a write older than the newest one that landed on any
/// of its sectors. Within an epoch only one node writes, and it issues overlapping writes one at a time, so a
/// newer stamp means a later write; a timed-out attempt that lands late (after its retry and after newer writes
/// to the same sectors) is refused instead of overwriting them. Fencing orders epochs; this orders attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteStamp {
    pub epoch: u64,
    /// Counts the writer's attempts, from 1.
    pub attempt: u64,
}

/// The shared disk. Requests carry the node's epoch; storage refuses older epochs (fencing).
pub trait BlockStorage {
    fn storage_read(&self, epoch: u64, target: DiskTarget) -> impl Future<Output = Result<Vec<u8>, StorageError>>;
    /// Writes unless the arbiter is past `stamp.epoch` (fenced) or a newer stamp already landed on one of the
    /// sectors (superseded: reported as success, since a newer write of the same lineage covers it).
    fn storage_write(
        &self,
        stamp: WriteStamp,
        target: DiskTarget,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), StorageError>>;
}

/// The atomic test-and-set on shared storage that decides who goes live.
pub trait Arbiter {
    /// Moves the record from `expected_epoch` to `expected_epoch + 1` for this node if it is still at
    /// `expected_epoch` (or already moved for this node: a retry after a lost reply must still win).
    fn test_and_set(&self, expected_epoch: u64) -> impl Future<Output = ArbiterOutcome>;
}

/// The outside world the guest serves.
#[allow(async_fn_in_trait)]
pub trait Outside {
    /// Delivers a released console line or frame.
    fn release(&self, epoch: u64, output: &Output);
    /// The next frame from the outside for the guest's network device (dropped by a node that is not live).
    async fn recv_frame(&self) -> Option<Vec<u8>>;
}

/// Where the driver reports what happens, for timelines, status and checkers.
pub trait Observer {
    fn observe(&self, now_ns: u64, observation: Observation);
}

/// Where the driver learns that a run of a guest with its own vCPU thread (`RunStart::Started`) has ended.
#[allow(async_fn_in_trait)]
pub trait GuestExits {
    /// Resolves when a run may have ended (a spurious wake is harmless: the driver asks the guest). A host whose
    /// guests run on the driver's thread never resolves.
    async fn guest_exit(&self);
}

/// A logging channel: any reliable ordered byte stream.
pub trait ChannelStream: AsyncRead + AsyncWrite + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> ChannelStream for T {}

/// Where a live primary without a backup takes the channel of a node that wants to join as its new backup
/// (re-protection). The driver asks only while the node `accepts_joiner`.
#[allow(async_fn_in_trait)]
pub trait Joiners {
    /// The next joiner's channel, connected. A host that takes no joiners never resolves.
    async fn accept_joiner(&self) -> Box<dyn ChannelStream> {
        std::future::pending().await
    }
}

/// Everything a node's environment provides.
pub trait Host:
    Clock + Datagrams + BlockStorage + Arbiter + Outside + Observer + GuestExits + Joiners + 'static
{
}

impl<T: Clock + Datagrams + BlockStorage + Arbiter + Outside + Observer + GuestExits + Joiners + 'static> Host for T {}

/// Delay before retrying a storage request that found storage unreachable.
const STORAGE_RETRY_NS: u64 = 20_000_000;
/// Bytes read from the channel per read call.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// After a Goodbye, how long the channel is kept open (reading and discarding) for the peer to close it.
const LINGER_NS: u64 = 1_000_000_000;

/// The clean end of a channel. Dropping a socket with unread data (the backup's last acks) resets the
/// connection, and a reset can overtake the Goodbye still on its way: the backup would take the reset for a
/// failure and go live after a clean power-off (found by reverting the Goodbye fix in the simulator). So after
/// a Goodbye the reader keeps reading until the peer closes, or `LINGER_NS` passes.
#[derive(Default)]
struct Linger {
    goodbye_sent: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

enum Completion {
    Storage(StorageDone),
    Fenced(u64, StorageRequest),
    Arbiter(ArbiterOutcome),
    /// The writer of channel `generation` failed (a replaced channel's late failure is not the current one's).
    ChannelWriteFailed(u64, String),
}

/// Runs `node` until it stops. `channel` is the logging channel (already connected), or `None` if it could not be
/// established, which the node treats as a failed peer.
pub async fn run<H, G, S>(
    host: Rc<H>,
    mut node: Node<G>,
    channel: Option<S>,
    entropy: &mut dyn EntropySource,
) -> Stopped
where
    H: Host,
    G: Guest,
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    match run_until(host, &mut node, channel, entropy, |_| false).await {
        Some(stopped) => stopped,
        None => unreachable!("`until` never asked to return"),
    }
}

/// Runs `node` until it stops (`Some`), or until `until` says the host has what it wanted (`None`): a recording
/// whose load got its answers, a replay at the end of its file. `until` is asked at the top of every turn of the
/// loop, before the guest's next run starts, so a node handed back with its guest not running is at an exit (or
/// where a kick left it); it may act on the node (log a last checkpoint), whose actions then stay queued for the
/// caller. Before returning, what was queued for the channel is written and the writer shut down,
/// so the peer sees the end of the stream.
pub async fn run_until<H, G, S>(
    host: Rc<H>,
    node: &mut Node<G>,
    channel: Option<S>,
    entropy: &mut dyn EntropySource,
    mut until: impl FnMut(&mut Node<G>) -> bool,
) -> Option<Stopped>
where
    H: Host,
    G: Guest,
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
    let mut channel_out: Option<mpsc::UnboundedSender<Frame>> = None;
    let mut writer = None;
    let mut reader = None;
    // Which channel is the current one: a joiner's stream replaces a closed one, whose writer may fail late.
    let mut generation = 0u64;
    if let Some(stream) = channel {
        let stream: Box<dyn ChannelStream> = Box::new(stream);
        (reader, channel_out, writer) = open_channel(stream, &done_tx, &host, generation);
    } else {
        node.handle_channel_closed(host.now_ns(), "no logging channel");
    }
    let mut encoder = StreamEncoder::default();
    let mut decoder = StreamDecoder::new();
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut heartbeats_open = true;
    let mut frames_open = true;
    let writes = WriteAttempts::default();
    let mut linger = Linger::default();
    // Frames read but not yet handed to the node, because it wanted no more log (flow control, per frame).
    let mut frames_waiting = false;
    loop {
        let now_ns = host.now_ns();
        node.handle_timeout(now_ns);
        if until(node) {
            // The writer sends what is queued and shuts its side down once the sender is gone.
            drop(channel_out);
            if let Some(writer) = writer {
                let _ = writer.await;
            }
            return None;
        }
        if frames_waiting && node.wants_log() {
            frames_waiting = match drain_messages(&host, node, &mut decoder, now_ns) {
                Ok(waiting) => waiting,
                Err(error) => {
                    channel_lost(&host, node, &mut reader, &mut channel_out, now_ns, &error.to_string());
                    false
                }
            };
        }
        // A guest on its own vCPU thread runs on while the driver handles acks, timers and I/O; the next run
        // starts once the last one's exit is handled.
        let progress = if node.guest_running() { Progress::Running } else { node.run_guest(now_ns, entropy) };
        while let Some(action) = node.poll_action() {
            host.observe(now_ns, Observation::Action(&action));
            let channel = (&mut encoder, &mut channel_out, &mut reader, &mut linger);
            perform(&host, node, action, channel, &done_tx, &writes);
        }
        node.kick_guest_if_wanted();
        if let Some(stopped) = node.stopped() {
            if let Some(task) = linger.task.take() {
                let _ = task.await;
            }
            return Some(stopped.clone());
        }
        let run_again_ns = (progress == Progress::Ran).then(|| now_ns + host.guest_slice_ns());
        let wake_ns = [run_again_ns, node.poll_timeout()].into_iter().flatten().min().unwrap_or(u64::MAX);
        // Stop reading while frames wait or the node wants no more log: TCP then pushes back on the primary.
        let reading = reader.is_some() && !frames_waiting && node.wants_log();
        tokio::select! {
            read = async { reader.as_mut().expect("guarded by `reading`").read(&mut buffer).await }, if reading => {
                let now_ns = host.now_ns();
                match read {
                    Ok(0) => {
                        let reason = match decoder.finish() {
                            Ok(()) => "logging channel closed".to_string(),
                            Err(error) => error.to_string(),
                        };
                        channel_lost(&host, node, &mut reader, &mut channel_out, now_ns, &reason);
                    }
                    Ok(length) => {
                        decoder.feed(&buffer[..length]);
                        match drain_messages(&host, node, &mut decoder, now_ns) {
                            Ok(waiting) => frames_waiting = waiting,
                            Err(error) => {
                                channel_lost(&host, node, &mut reader, &mut channel_out, now_ns, &error.to_string());
                            }
                        }
                    }
                    Err(error) => {
                        channel_lost(&host, node, &mut reader, &mut channel_out, now_ns, &error.to_string());
                    }
                }
            }
            datagram = host.recv_heartbeat(), if heartbeats_open => match datagram {
                Some(frame) => match wire::decode(&frame) {
                    Ok((_, message @ Message::Heartbeat { .. })) => {
                        host.observe(host.now_ns(), Observation::Received(&message));
                        node.handle_message(host.now_ns(), message);
                    }
                    Ok((_, other)) => host.observe(host.now_ns(), Observation::ChannelError(&format!("not a heartbeat: {other:?}"))),
                    Err(error) => host.observe(host.now_ns(), Observation::ChannelError(&format!("bad heartbeat: {error}"))),
                },
                None => heartbeats_open = false,
            },
            completion = done_rx.recv() => {
                let now_ns = host.now_ns();
                match completion.expect("the driver holds a sender") {
                    Completion::Storage(done) => node.handle_storage_done(now_ns, done),
                    Completion::Fenced(epoch, request) => node.handle_fenced(now_ns, epoch, request),
                    Completion::Arbiter(outcome) => node.handle_arbiter(now_ns, outcome),
                    Completion::ChannelWriteFailed(failed, _) if failed != generation => {}
                    Completion::ChannelWriteFailed(_, reason) => {
                        channel_lost(&host, node, &mut reader, &mut channel_out, now_ns, &reason);
                    }
                }
            }
            // Frames are read even when not live: a backup drops them, as its hypervisor drops the backup VM's
            // network input, instead of letting them pile up until it goes live.
            frame = host.recv_frame(), if frames_open => match frame {
                Some(frame) => node.handle_net_frame(host.now_ns(), frame),
                None => frames_open = false,
            },
            _ = host.guest_exit(), if progress == Progress::Running => {
                node.guest_exited(host.now_ns(), entropy);
            }
            stream = host.accept_joiner(), if node.accepts_joiner() && reader.is_none() && channel_out.is_none() => {
                // A fresh stream: its own frame sequences, nothing left of the last channel (whose writer, still
                // sending what was queued for a joiner that went away, stops now).
                if let Some(old) = writer.take() {
                    old.abort();
                }
                generation += 1;
                (reader, channel_out, writer) = open_channel(stream, &done_tx, &host, generation);
                encoder = StreamEncoder::default();
                decoder = StreamDecoder::new();
                frames_waiting = false;
                linger = Linger::default();
                node.handle_joiner(host.now_ns());
            }
            _ = host.sleep_until_ns(wake_ns) => {}
        }
    }
}

type ChannelHalves = (
    Option<tokio::io::ReadHalf<Box<dyn ChannelStream>>>,
    Option<mpsc::UnboundedSender<Frame>>,
    Option<tokio::task::JoinHandle<()>>,
);

/// Splits a connected channel into the reader the loop polls and the writer task that sends its frames.
fn open_channel<H: Host>(
    stream: Box<dyn ChannelStream>,
    done_tx: &mpsc::UnboundedSender<Completion>,
    host: &Rc<H>,
    generation: u64,
) -> ChannelHalves {
    let (read_half, write_half) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::task::spawn_local(write_frames(write_half, rx, (done_tx.clone(), generation), host.clone()));
    (Some(read_half), Some(tx), Some(writer))
}

/// Hands decoded frames to the node one at a time while it wants log; returns whether complete frames may still
/// wait in the decoder (the node's buffer is full).
fn drain_messages<H: Host, G: Guest>(
    host: &Rc<H>,
    node: &mut Node<G>,
    decoder: &mut StreamDecoder,
    now_ns: u64,
) -> Result<bool, WireError> {
    loop {
        if !node.wants_log() {
            cov_mark::hit!(backup_buffer_full);
            return Ok(true);
        }
        let Some(message) = decoder.next_message()? else { return Ok(false) };
        host.observe(now_ns, Observation::Received(&message));
        node.handle_message(now_ns, message);
    }
}

/// Numbers the node's write attempts for their [`WriteStamp`]s (shared by the storage tasks; one thread).
#[derive(Clone, Default)]
struct WriteAttempts {
    last: Rc<std::cell::Cell<u64>>,
}

impl WriteAttempts {
    fn next(&self, epoch: u64) -> WriteStamp {
        let attempt = self.last.get() + 1;
        self.last.set(attempt);
        WriteStamp { epoch, attempt }
    }
}

fn channel_lost<H: Host, G: Guest, R>(
    host: &Rc<H>,
    node: &mut Node<G>,
    reader: &mut Option<R>,
    channel_out: &mut Option<mpsc::UnboundedSender<Frame>>,
    now_ns: u64,
    reason: &str,
) {
    if reader.is_none() && channel_out.is_none() {
        return;
    }
    host.observe(now_ns, Observation::ChannelError(reason));
    *reader = None;
    *channel_out = None;
    node.handle_channel_closed(now_ns, reason);
}

/// The driver's side of the logging channel, as `perform` needs it.
type ChannelParts<'a, R> =
    (&'a mut StreamEncoder, &'a mut Option<mpsc::UnboundedSender<Frame>>, &'a mut Option<R>, &'a mut Linger);

/// An encoded frame for the writer, and the log index it carries, if it is a log entry.
struct Frame {
    bytes: Vec<u8>,
    log_index: Option<u64>,
}

fn perform<H: Host, G: Guest, R: AsyncRead + Unpin + 'static>(
    host: &Rc<H>,
    node: &Node<G>,
    action: Action,
    (encoder, channel_out, reader, linger): ChannelParts<'_, R>,
    done_tx: &mpsc::UnboundedSender<Completion>,
    writes: &WriteAttempts,
) {
    match action {
        Action::Send(message) => {
            if matches!(message, Message::Goodbye { .. }) {
                linger.goodbye_sent = true;
            }
            if let Some(out) = channel_out {
                let log_index = match &message {
                    Message::Log { index, .. } => Some(*index),
                    _ => None,
                };
                // A closed writer shows up as ChannelWriteFailed; nothing to do here.
                let _ = out.send(Frame { bytes: encoder.encode(&message), log_index });
            }
        }
        Action::Heartbeat(message) => {
            let host = host.clone();
            let frame = wire::encode(&message, 0);
            tokio::task::spawn_local(async move { host.send_heartbeat(frame).await });
        }
        Action::Release { output, .. } => host.release(node.epoch(), &output),
        Action::Storage { epoch, request } => {
            tokio::task::spawn_local(storage_request(host.clone(), epoch, request, done_tx.clone(), writes.clone()));
        }
        Action::TestAndSet { expected_epoch } => {
            let host = host.clone();
            let done_tx = done_tx.clone();
            tokio::task::spawn_local(async move {
                let outcome = host.test_and_set(expected_epoch).await;
                let _ = done_tx.send(Completion::Arbiter(outcome));
            });
        }
        Action::CloseChannel => {
            // The writer task sends what is queued, then shuts its side down.
            *channel_out = None;
            match reader.take() {
                Some(reader) if linger.goodbye_sent => {
                    linger.task = Some(tokio::task::spawn_local(read_until_closed(reader, host.clone())));
                }
                _ => {}
            }
        }
        Action::Notify(_) => {}
    }
}

/// Reads and discards until the peer closes the channel (or it fails), for at most `LINGER_NS`.
async fn read_until_closed<R: AsyncRead + Unpin, H: Host>(mut reader: R, host: Rc<H>) {
    let deadline_ns = host.now_ns().saturating_add(LINGER_NS);
    let mut buffer = vec![0u8; 4096];
    loop {
        tokio::select! {
            read = reader.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = host.sleep_until_ns(deadline_ns) => return,
        }
    }
}

/// Performs one storage request, retrying while storage is unreachable (the guest's IO simply takes longer).
/// Each write attempt gets a fresh stamp, so an attempt that timed out but lands later cannot overwrite what
/// its retry, or a newer write, put there.
async fn storage_request<H: Host>(
    host: Rc<H>,
    epoch: u64,
    request: StorageRequest,
    done_tx: mpsc::UnboundedSender<Completion>,
    writes: WriteAttempts,
) {
    loop {
        let (target, result) = match &request {
            StorageRequest::Read { target } => (*target, host.storage_read(epoch, *target).await),
            StorageRequest::Write { target, data, .. } => {
                let stamp = writes.next(epoch);
                (*target, host.storage_write(stamp, *target, data.clone()).await.map(|()| Vec::new()))
            }
        };
        let done = match result {
            Ok(data) => StorageDone { tag: target.tag, status: DiskStatus::Ok, data },
            Err(StorageError::Unreachable) => {
                host.sleep_until_ns(host.now_ns() + STORAGE_RETRY_NS).await;
                continue;
            }
            Err(StorageError::Fenced(epoch)) => {
                let _ = done_tx.send(Completion::Fenced(epoch, request));
                return;
            }
            Err(StorageError::Io(_)) => StorageDone { tag: target.tag, status: DiskStatus::IoError, data: Vec::new() },
        };
        let _ = done_tx.send(Completion::Storage(done));
        return;
    }
}

async fn write_frames<W: AsyncWrite + Unpin, H: Host>(
    mut writer: W,
    mut frames: mpsc::UnboundedReceiver<Frame>,
    (done_tx, generation): (mpsc::UnboundedSender<Completion>, u64),
    host: Rc<H>,
) {
    while let Some(first) = frames.recv().await {
        // What is queued goes out in one write (the entries of one exit, or of everything since the last
        // write), then a flush: the Output Rule waits on the ack, so latency matters more than syscalls.
        let (mut batch, mut log_index) = (first.bytes, first.log_index);
        while let Ok(frame) = frames.try_recv() {
            batch.extend_from_slice(&frame.bytes);
            log_index = frame.log_index.or(log_index);
        }
        if let Err(error) = writer.write_all(&batch).await {
            let _ = done_tx.send(Completion::ChannelWriteFailed(generation, error.to_string()));
            return;
        }
        if let Err(error) = writer.flush().await {
            let _ = done_tx.send(Completion::ChannelWriteFailed(generation, error.to_string()));
            return;
        }
        if let Some(log_index) = log_index {
            host.observe(host.now_ns(), Observation::Written { log_index });
        }
    }
    let _ = writer.shutdown().await;
}
