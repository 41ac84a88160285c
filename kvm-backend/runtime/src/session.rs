//! Runs a guest as a primary on this host, either plain (no backup: nothing logged, outputs released at once) or
//! recording (the "backup" is a log file: every frame the primary sends on the logging channel is written to it,
//! and an ideal backup at the far end of an in-memory channel answers `Welcome` at once and an `Ack` for every
//! entry).
//!
//! The primary runs under `ft::driver::run_until`, the driver loop of the deployment and the simulator, with a
//! host of its own: the wall clock, an in-memory disk, a scripted client load as the outside world, no heartbeats.
//! A plain run is a primary whose backup never came: it has no channel and wins the arbiter, which leaves it live
//! and unprotected. Both modes run the same code on the same devices, so their times compare the cost of logging
//! and of the Output Rule and nothing else.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ft::primary::Primary;
use ft::{Config, Node, Stopped};
use kvm_backend::{GuestHandle, ThreadedGuest};

use crate::error::CliError;
use crate::machine::{self, Disk, GuestImage, OsEntropy};
use crate::session_host::{file_backup, Recorded, SessionHost};
use crate::workload::Workload;

/// Bytes the in-memory logging channel of a recording holds before the primary's writes wait.
const CHANNEL_BUFFER_BYTES: usize = 1 << 20;
/// Epoch of a recorded pair (a plain run goes live at the next one).
const EPOCH: u64 = 1;
/// How long a session that has what it wanted waits for the guest's run to end at an exit of its own, before it
/// interrupts it between two (a CPU-bound guest).
const SETTLE: Duration = Duration::from_millis(200);
/// The log file is a channel to a backup that never fails: the primary's failure detector must not fire while a
/// slice of a CPU-bound guest runs for a long time between acks.
const RECORD_FAILURE_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

/// What to run and how.
pub struct SessionOptions {
    pub kvm_path: PathBuf,
    pub image: GuestImage,
    pub disk: Disk,
    pub workload: Option<Workload>,
    pub timeout: Option<Duration>,
    /// Print released console output to stdout as it comes.
    pub echo_console: bool,
    /// Kick the running guest this often (a test of determinism: a kick must change nothing the log records).
    pub kick_every: Option<Duration>,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The guest wrote `POWER_OFF` with this status.
    PoweredOff { status: u32 },
    /// The guest cannot go on (triple fault, MMIO, emulation failure): `Exit::Shutdown`, which the protocol sees
    /// as a power-off with status `u32::MAX`, named here from the KVM exit.
    GuestFailed { reason: String },
    /// The workload got every response.
    WorkloadDone,
    /// The guest waits for something that will never come (no timer, no frames).
    Idle,
    /// `--timeout-ms` passed (the guest may have been kicked out of `KVM_RUN` between two exits).
    TimedOut,
}

pub struct SessionResult {
    pub ending: Ending,
    /// The final state's hash; None when a timeout stopped the guest between two exits, a state no replay can
    /// reach (the recording then ends at the last exit, and replay verifies everything up to it).
    pub state_hash: Option<u64>,
    pub exits: u64,
    /// Released console output.
    pub console: Vec<u8>,
    pub responses: u64,
    pub log_entries: u64,
    pub log_bytes: u64,
    pub elapsed: Duration,
    /// Runs a kick cut short between two exits (`kick_every`).
    pub runs_kicked: u64,
}

/// Where the frames of a recording go: the bytes the primary sent, as they were sent, then the frames the
/// session itself adds at the end (in the same numbering).
pub(crate) struct LogWriter {
    path: PathBuf,
    file: BufWriter<File>,
    pub(crate) bytes: u64,
}

impl LogWriter {
    fn create(path: &Path) -> Result<LogWriter, CliError> {
        let file = File::create(path).map_err(|error| log_error(path, &error))?;
        Ok(LogWriter { path: path.to_path_buf(), file: BufWriter::new(file), bytes: 0 })
    }

    pub(crate) fn write_raw(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.bytes += bytes.len() as u64;
        self.file.write_all(bytes).map_err(|error| log_error(&self.path, &error))
    }

    pub(crate) fn finish(mut self) -> Result<u64, CliError> {
        // Flushed, not synced: a recording is not a database, and an fsync would cost more than all the logging.
        self.file.flush().map_err(|error| log_error(&self.path, &error))?;
        Ok(self.bytes)
    }
}

pub(crate) fn log_error(path: &Path, error: &std::io::Error) -> CliError {
    CliError::Log { path: path.display().to_string(), what: crate::error::io_reason(error) }
}

/// Kicks the guest from a thread of its own: once, for good, when the timeout passes (a guest that never exits
/// would otherwise run on), or one run in every period (`kick_every`, a test of determinism). Dropping it cancels
/// the kicks.
struct KickTimer {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KickTimer {
    fn start(handle: GuestHandle, timeout: Duration) -> KickTimer {
        KickTimer::spawn("ftvm-timeout", move |cancelled| {
            if cancelled.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                handle.kick();
            }
        })
    }

    /// Interrupts one run every `period` until dropped or `stop` is set.
    fn every(handle: GuestHandle, period: Duration, stop: Arc<AtomicBool>) -> KickTimer {
        KickTimer::spawn("ftvm-kicks", move |cancelled| {
            while cancelled.recv_timeout(period) == Err(mpsc::RecvTimeoutError::Timeout) && !stop.load(Ordering::SeqCst)
            {
                handle.interrupt();
            }
        })
    }

    fn spawn(name: &str, body: impl FnOnce(mpsc::Receiver<()>) + Send + 'static) -> KickTimer {
        let (cancel, cancelled) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || body(cancelled)).ok();
        KickTimer { cancel: Some(cancel), thread }
    }
}

impl Drop for KickTimer {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where the session is: running, or ending (it has what it wanted, and waits for the guest's run to end).
#[derive(Clone, Copy, Debug)]
enum Phase {
    Running,
    Ending { by: EndedBy, since_ns: u64, interrupted: bool },
}

/// What ends a session that `run_until` hands back (a power-off or a failed guest is a stop of the node instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndedBy {
    WorkloadDone,
    Idle,
    TimedOut,
}

/// What the session learns of the node as the driver runs it: where the guest is, and the final state's hash
/// of a guest that powered off without a log (the node drops its guest when it stops).
#[derive(Default)]
struct Watch {
    exits: std::cell::Cell<u64>,
    powered_off_hash: std::cell::Cell<Option<u64>>,
}

/// Runs the guest plainly (`log` = None) or recording into `log`.
pub fn run(options: SessionOptions, log: Option<&Path>) -> Result<SessionResult, CliError> {
    machine::check_kvm(&options.kvm_path)?;
    let guest = machine::new_guest(&options.kvm_path, &options.image)?;
    let handle = guest.handle();
    let guest_exit = Arc::new(tokio::sync::Notify::new());
    let notify = guest_exit.clone();
    let waker: kvm_backend::Waker = Arc::new(move || notify.notify_one());
    let guest = ThreadedGuest::spawn(guest, waker)
        .map_err(|error| CliError::GuestFailed { guest: options.image.name.clone(), reason: error.to_string() })?;
    let log = log.map(LogWriter::create).transpose()?;
    let config = Config {
        pair_id: machine::recording_pair_id(options.disk.sectors()),
        image_digest: options.image.digest(),
        failure_timeout_ms: RECORD_FAILURE_TIMEOUT_MS,
        ..Config::default()
    };
    let (runtime, local) = crate::local_runtime()?;
    local.block_on(&runtime, drive(options, config, guest, handle, guest_exit, log))
}

async fn drive(
    options: SessionOptions,
    config: Config,
    guest: ThreadedGuest,
    handle: GuestHandle,
    guest_exit: Arc<tokio::sync::Notify>,
    log: Option<LogWriter>,
) -> Result<SessionResult, CliError> {
    let started = Instant::now();
    let sectors = options.disk.sectors();
    let recording = log.is_some();
    let host = Rc::new(SessionHost::new(options.disk, options.workload, options.echo_console, guest_exit));
    let mut node = Node::Primary(Box::new(Primary::new(config, guest, sectors, EPOCH, host.now_ns())));
    let (channel, backup) = match log {
        Some(log) => {
            let (ours, theirs) = tokio::io::duplex(CHANNEL_BUFFER_BYTES);
            (Some(ours), Some(tokio::task::spawn_local(file_backup(theirs, log))))
        }
        None => (None, None),
    };
    let _timeout = options.timeout.map(|timeout| KickTimer::start(handle.clone(), timeout));
    let kicks_stop = Arc::new(AtomicBool::new(false));
    let _kicks = options.kick_every.map(|period| KickTimer::every(handle.clone(), period, kicks_stop.clone()));
    let phase = std::cell::Cell::new(Phase::Running);
    let watch = Watch::default();
    let session =
        Session { host: &host, handle: &handle, phase: &phase, kicks_stop: &kicks_stop, watch: &watch, recording };
    let mut entropy = OsEntropy::open()?;
    let stopped =
        ft::driver::run_until(host.clone(), &mut node, channel, &mut entropy, |node| session.ended(node)).await;
    if let Some(error) = host.take_error() {
        return Err(error);
    }
    let recorded = match backup {
        Some(task) => Some(task.await.map_err(|error| CliError::Protocol(format!("the log writer: {error}")))??),
        None => None,
    };
    let exits = watch.exits.get();
    let ending = match (stopped, phase.get()) {
        (Some(Stopped::PoweredOff { status }), _) => match handle.failure() {
            // A shutdown reaches the platform as a power-off with status u32::MAX; the KVM exit says why.
            Some(reason) => Ending::GuestFailed { reason },
            None => Ending::PoweredOff { status },
        },
        (Some(Stopped::GuestFailed(reason)), _) => {
            let reason = format!("{reason} (at exit {exits})");
            return Err(CliError::GuestFailed { guest: options.image.name.clone(), reason });
        }
        (Some(other), _) => return Err(CliError::Protocol(format!("the primary stopped: {other:?}"))),
        (None, Phase::Ending { by: EndedBy::WorkloadDone, .. }) => Ending::WorkloadDone,
        (None, Phase::Ending { by: EndedBy::Idle, .. }) => Ending::Idle,
        (None, Phase::Ending { by: EndedBy::TimedOut, .. } | Phase::Running) => Ending::TimedOut,
    };
    let tail =
        Tail { host: &host, guest_name: &options.image.name, exits, powered_off_hash: watch.powered_off_hash.get() };
    let (state_hash, log_entries, log_bytes) = tail.finish(node, recorded)?;
    // The last outputs the tail released went to the load too, which may have found them wrong.
    if let Some(error) = host.take_error() {
        return Err(error);
    }
    Ok(SessionResult {
        ending,
        state_hash,
        exits,
        console: host.take_console(),
        responses: host.responses(),
        log_entries,
        log_bytes,
        elapsed: started.elapsed(),
        runs_kicked: handle.runs_kicked(),
    })
}

/// What `run_until` asks the session at the top of every turn of its loop.
struct Session<'a> {
    host: &'a SessionHost,
    handle: &'a GuestHandle,
    phase: &'a std::cell::Cell<Phase>,
    kicks_stop: &'a AtomicBool,
    watch: &'a Watch,
    recording: bool,
}

impl Session<'_> {
    /// Whether the session has what it wanted: the load got its answers, the guest waits for nothing that can
    /// come, or the timeout kicked it. Then it lets the run in progress end at an exit of its own (interrupting it
    /// after `SETTLE`), so that the final state can be hashed, and a recording logs a checkpoint of it.
    fn ended(&self, node: &mut Node<ThreadedGuest>) -> bool {
        let Node::Primary(primary) = node else { return false };
        if primary.at_position() {
            self.watch.exits.set(primary.position().exits);
            if !self.recording && primary.powering_off() && self.watch.powered_off_hash.get().is_none() {
                // Without a log the node keeps no checkpoint of the last state, and drops its guest at the stop.
                self.watch.powered_off_hash.set(primary.state_hash().ok());
            }
        }
        if self.host.has_error() {
            return true;
        }
        if primary.powering_off() {
            // The guest powered off: the primary finishes (its outputs, its disk writes, its goodbye) and stops.
            return false;
        }
        let now_ns = self.host.now_ns();
        let (by, since_ns, interrupted) = match self.phase.get() {
            Phase::Ending { by, since_ns, interrupted } => (by, since_ns, interrupted),
            Phase::Running => {
                let by = if self.handle.kicked() {
                    EndedBy::TimedOut
                } else if self.host.workload_done() {
                    EndedBy::WorkloadDone
                } else if !primary.guest_running() && primary.guest_waits_for_the_outside() && self.host.quiet(now_ns) {
                    EndedBy::Idle
                } else {
                    return false;
                };
                self.host.stop_load();
                self.kicks_stop.store(true, Ordering::SeqCst);
                self.phase.set(Phase::Ending { by, since_ns: now_ns, interrupted: false });
                (by, now_ns, false)
            }
        };
        let running = primary.guest_running();
        if !running && primary.at_position() {
            if self.recording {
                // The last entry of a recording: replay verifies the final state.
                if let Err(error) = primary.checkpoint_now(now_ns) {
                    self.host.fail(CliError::Guest { guest: "record".into(), reason: error.to_string() });
                }
            }
            return true;
        }
        if !running && (self.handle.kicked() || interrupted) {
            // Cut short between two exits: no state a replay can reach, so no checkpoint (the log ends at the
            // last exit).
            return true;
        }
        let late = now_ns.saturating_sub(since_ns) > SETTLE.as_nanos() as u64;
        if late && !interrupted {
            self.handle.interrupt();
        }
        self.phase.set(Phase::Ending { by, since_ns, interrupted: interrupted || late });
        false
    }
}

/// The end of a session after the driver handed the node back: for a recording, the ideal backup acknowledges
/// what is left (a checkpoint the session logged, outputs that waited for their ack), and the log gets its
/// end-of-recording frame.
struct Tail<'a> {
    host: &'a SessionHost,
    guest_name: &'a str,
    exits: u64,
    powered_off_hash: Option<u64>,
}

impl Tail<'_> {
    /// The final state's hash (None where a kick left the guest between two exits), the log's entries and bytes.
    fn finish(
        self,
        mut node: Node<ThreadedGuest>,
        recorded: Option<Recorded>,
    ) -> Result<(Option<u64>, u64, u64), CliError> {
        let Some(mut recorded) = recorded else {
            let state_hash =
                match &mut node {
                    Node::Primary(primary) if primary.at_position() => Some(primary.state_hash().map_err(|error| {
                        CliError::Guest { guest: self.guest_name.into(), reason: error.to_string() }
                    })?),
                    Node::Primary(_) => None,
                    _ => self.powered_off_hash,
                };
            return Ok((state_hash, 0, 0));
        };
        if let Node::Primary(primary) = &mut node {
            recorded.acknowledge_the_rest(primary, self.host)?;
        }
        let state_hash = match recorded.last_checkpoint {
            // The hash the log ends with is the final state's.
            Some((at, hash)) if at == self.exits => Some(hash),
            _ if matches!(&node, Node::Primary(primary) if !primary.at_position()) => None,
            _ => return Err(CliError::Protocol("the final checkpoint was not logged".into())),
        };
        let entries = recorded.entries;
        let bytes = recorded.finish()?;
        Ok((state_hash, entries, bytes))
    }
}
