//! Runs a guest as a primary on this host, either plain (no backup: nothing logged, outputs released at once) or
//! recording (the "backup" is a log file: every frame the primary sends on the logging channel is written to it,
//! and the driver answers as an ideal backup would: `Welcome` at once, and an `Ack` for every entry).
//!
//! Both modes run the same `ft::primary::Primary` code on the same devices, so their times compare the cost of
//! logging and of the Output Rule and nothing else. A plain run is a primary whose backup never came: its channel
//! is closed at once and it wins the arbiter, which leaves it live and unprotected.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ft::log::{Entry, LogIndex, Output, OutputKind};
use ft::primary::Primary;
use ft::wire::{Message, StreamEncoder};
use ft::{Action, ArbiterOutcome, Config, Event, Progress, Stopped, StorageDone};
use kvm_backend::{GuestHandle, ThreadedGuest};

use crate::error::CliError;
use crate::machine::{self, Clock, Disk, GuestImage, OsEntropy};
use crate::workload::Workload;

/// Epoch of a recorded pair (a plain run goes live at the next one).
const EPOCH: u64 = 1;
/// Longest sleep while the guest waits: short enough to notice `--timeout-ms` promptly.
const IDLE_SLEEP_MAX: Duration = Duration::from_millis(50);
/// Runs `settle` lets a guest make towards an exit of its own before it kicks it between two.
const SETTLE_RUNS_MAX: usize = 4;
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

/// Where the frames of a recording go.
struct LogWriter {
    path: PathBuf,
    file: BufWriter<File>,
    encoder: StreamEncoder,
    bytes: u64,
}

impl LogWriter {
    fn create(path: &Path) -> Result<LogWriter, CliError> {
        let file = File::create(path).map_err(|error| log_error(path, &error))?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            encoder: StreamEncoder::default(),
            bytes: 0,
        })
    }

    fn write(&mut self, message: &Message) -> Result<(), CliError> {
        let frame = self.encoder.encode(message);
        self.bytes += frame.len() as u64;
        self.file.write_all(&frame).map_err(|error| log_error(&self.path, &error))
    }

    fn finish(mut self) -> Result<u64, CliError> {
        // Flushed, not synced: a recording is not a database, and an fsync would cost more than all the logging.
        self.file.flush().map_err(|error| log_error(&self.path, &error))?;
        Ok(self.bytes)
    }
}

fn log_error(path: &Path, error: &std::io::Error) -> CliError {
    CliError::Log { path: path.display().to_string(), what: crate::error::io_reason(error) }
}

/// Kicks the guest out of `KVM_RUN` when the timeout passes, from a thread of its own: a guest that never exits
/// keeps the driver's thread inside `KVM_RUN`, where no check between slices would ever run. Dropping it cancels
/// the kick.
struct KickTimer {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KickTimer {
    fn start(handle: GuestHandle, timeout: Duration) -> KickTimer {
        let (cancel, cancelled) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ftvm-timeout".into())
            .spawn(move || {
                if cancelled.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                    handle.kick();
                }
            })
            .ok();
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

/// The driver's state between the primary and the outside.
struct Driver {
    guest_name: String,
    /// Kicks the guest and says why it stopped, from outside the primary that owns it.
    handle: GuestHandle,
    primary: Box<Primary<ThreadedGuest>>,
    /// A message per run of the guest that ended on its vCPU thread.
    guest_exits: mpsc::Receiver<()>,
    /// A run goes on on the vCPU thread.
    running: bool,
    kick_every: Option<Duration>,
    runs_kicked: u64,
    /// The primary's stop was taken: it is not polled again.
    stopped_taken: bool,
    clock: Clock,
    entropy: OsEntropy,
    disk: Disk,
    log: Option<LogWriter>,
    workload: Option<Workload>,
    echo_console: bool,
    console: Vec<u8>,
    /// The fake backup's answers, given to the primary after the actions are drained.
    welcome: Option<Message>,
    log_last: LogIndex,
    acked: LogIndex,
    storage_done: Vec<StorageDone>,
    /// Whether the last drain gave the primary anything new to work on.
    delivered: bool,
    stopped: Option<Stopped>,
    log_entries: u64,
    /// The hash of the last checkpoint written to the log, and where.
    last_checkpoint: Option<(u64, u64)>,
}

/// Runs the guest plainly (`log` = None) or recording into `log`.
pub fn run(options: SessionOptions, log: Option<&Path>) -> Result<SessionResult, CliError> {
    machine::check_kvm(&options.kvm_path)?;
    let guest = machine::new_guest(&options.kvm_path, &options.image)?;
    let handle = guest.handle();
    let (exit_tx, guest_exits) = mpsc::channel();
    let waker: kvm_backend::Waker = Arc::new(move || {
        // The receiver goes with the driver; a run that ends after it has nobody to tell.
        let _ = exit_tx.send(());
    });
    let guest = ThreadedGuest::spawn(guest, waker)
        .map_err(|error| CliError::GuestFailed { guest: options.image.name.clone(), reason: error.to_string() })?;
    let log = log.map(LogWriter::create).transpose()?;
    let recording = log.is_some();
    let config = Config {
        pair_id: machine::recording_pair_id(options.disk.sectors()),
        image_digest: options.image.digest(),
        failure_timeout_ms: RECORD_FAILURE_TIMEOUT_MS,
        ..Config::default()
    };
    let clock = Clock::start();
    let primary = Box::new(Primary::new(config, guest, options.disk.sectors(), EPOCH, clock.now_ns()));
    let mut driver = Driver {
        guest_name: options.image.name.clone(),
        handle,
        primary,
        guest_exits,
        running: false,
        kick_every: options.kick_every,
        runs_kicked: 0,
        stopped_taken: false,
        clock,
        entropy: OsEntropy::open()?,
        disk: options.disk,
        log,
        workload: options.workload,
        echo_console: options.echo_console,
        console: Vec::new(),
        welcome: None,
        log_last: 0,
        acked: 0,
        storage_done: Vec::new(),
        delivered: false,
        stopped: None,
        log_entries: 0,
        last_checkpoint: None,
    };
    if !recording {
        driver.go_unprotected()?;
    }
    let started = Instant::now();
    let ending = driver.run_to_end(options.timeout)?;
    driver.finish(ending, started)
}

impl Driver {
    /// No backup: the channel is gone at once, the arbiter is won, and the primary runs unprotected.
    fn go_unprotected(&mut self) -> Result<(), CliError> {
        let now_ns = self.clock.now_ns();
        self.primary.handle_channel_closed(now_ns, "no backup: a plain run");
        self.primary.handle_arbiter(now_ns, ArbiterOutcome::Won { epoch: EPOCH + 1 });
        if self.primary.is_protected_or_connecting() {
            return Err(CliError::Protocol("the primary did not go live without a backup".into()));
        }
        while let Some(action) = self.primary.poll_action() {
            if let Action::Notify(event) = &action {
                tracing::debug!(?event, "going unprotected");
            }
        }
        Ok(())
    }

    fn run_to_end(&mut self, timeout: Option<Duration>) -> Result<Ending, CliError> {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let _kick = timeout.map(|timeout| KickTimer::start(self.handle.clone(), timeout));
        if let Some(frame) = self.workload.as_mut().and_then(Workload::next_frame) {
            self.primary.handle_net_frame(self.clock.now_ns(), frame);
        }
        let ending = self.run_loop(deadline);
        self.settle()?;
        ending
    }

    /// Brings the guest back from its vCPU thread, at an exit if it comes to one soon, so that it can be hashed
    /// or checkpointed: a guest that served its last request halts, which leaves a state that replay reaches
    /// (a run cut short by `kick_every` is resumed to its exit). Only a guest that keeps running is kicked
    /// between two exits. A primary that stopped is drained already and is not polled again (it would say
    /// goodbye twice).
    fn settle(&mut self) -> Result<(), CliError> {
        if self.stopped_taken {
            return Ok(());
        }
        for _ in 0..SETTLE_RUNS_MAX {
            if !self.running {
                if self.primary.at_position() || self.handle.kicked() {
                    break;
                }
                let progress = self.primary.run_guest(self.clock.now_ns(), &mut self.entropy);
                self.running = progress == Progress::Running;
            }
            let _ = self.guest_exits.recv_timeout(IDLE_SLEEP_MAX);
            let progress = self.primary.guest_exited(self.clock.now_ns(), &mut self.entropy);
            self.running = progress == Progress::Running;
        }
        while self.running {
            self.handle.interrupt();
            let _ = self.guest_exits.recv_timeout(IDLE_SLEEP_MAX);
            let progress = self.primary.guest_exited(self.clock.now_ns(), &mut self.entropy);
            self.running = progress == Progress::Running;
        }
        self.drain()
    }

    /// Runs the guest, or waits for its run on the vCPU thread to end, and handles the exit.
    fn step_guest(&mut self, now_ns: u64) -> Progress {
        if !self.running {
            let progress = self.primary.run_guest(now_ns, &mut self.entropy);
            self.running = progress == Progress::Running;
            return progress;
        }
        let wait = self.kick_every.unwrap_or(IDLE_SLEEP_MAX);
        if self.guest_exits.recv_timeout(wait).is_err() && self.kick_every.is_some() {
            self.handle.interrupt();
            let _ = self.guest_exits.recv_timeout(IDLE_SLEEP_MAX);
        }
        let progress = self.primary.guest_exited(self.clock.now_ns(), &mut self.entropy);
        if progress != Progress::Running && !self.primary.at_position() {
            self.runs_kicked += 1;
        }
        self.running = progress == Progress::Running;
        progress
    }

    fn run_loop(&mut self, deadline: Option<Instant>) -> Result<Ending, CliError> {
        loop {
            let now_ns = self.clock.now_ns();
            self.primary.handle_timeout(now_ns);
            let progress = self.step_guest(now_ns);
            self.drain()?;
            self.answer();
            if let Some(stopped) = self.stopped.take() {
                return match stopped {
                    // A shutdown reaches the platform as a power-off with status u32::MAX; the KVM exit says why.
                    Stopped::PoweredOff { status } => match self.handle.failure() {
                        Some(reason) => Ok(Ending::GuestFailed { reason }),
                        None => Ok(Ending::PoweredOff { status }),
                    },
                    Stopped::GuestFailed(reason) => Err(CliError::GuestFailed {
                        guest: self.guest_name.clone(),
                        reason: format!("{reason} (at exit {})", self.primary.position().exits),
                    }),
                    other => Err(CliError::Protocol(format!("the primary stopped: {other:?}"))),
                };
            }
            if self.workload.as_ref().is_some_and(Workload::done) {
                return Ok(Ending::WorkloadDone);
            }
            if self.handle.kicked() || deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(Ending::TimedOut);
            }
            if progress == Progress::Idle && !self.delivered && !self.running {
                let Some(wake_ns) = self.primary.poll_timeout() else {
                    return Ok(Ending::Idle);
                };
                let wait = Duration::from_nanos(wake_ns.saturating_sub(self.clock.now_ns())).min(IDLE_SLEEP_MAX);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Performs every action the primary asks for.
    fn drain(&mut self) -> Result<(), CliError> {
        while let Some(action) = self.primary.poll_action() {
            match action {
                Action::Send(message) => self.send(message)?,
                // Heartbeats are datagrams, not channel traffic: a file has no use for them.
                Action::Heartbeat(_) | Action::CloseChannel => {}
                Action::Release { output, .. } => self.release(&output)?,
                Action::Storage { request, .. } => {
                    let done = self.disk.perform(&request);
                    self.storage_done.push(done);
                }
                Action::TestAndSet { expected_epoch } => {
                    return Err(CliError::Protocol(format!("the primary asked the arbiter (epoch {expected_epoch})")));
                }
                Action::Notify(event) => self.notify(event)?,
            }
        }
        if let Some(stopped) = self.primary.take_stopped() {
            self.stopped = Some(stopped);
            self.stopped_taken = true;
        }
        Ok(())
    }

    fn send(&mut self, message: Message) -> Result<(), CliError> {
        let Some(log) = self.log.as_mut() else { return Ok(()) };
        log.write(&message)?;
        match message {
            Message::Hello { pair_id, epoch, .. } => self.welcome = Some(Message::Welcome { pair_id, epoch }),
            Message::Log { index, entry } => {
                self.log_last = index;
                self.log_entries += 1;
                if let Entry::Checkpoint { position, hash } = entry {
                    self.last_checkpoint = Some((position.exits, hash));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn release(&mut self, output: &Output) -> Result<(), CliError> {
        match output.kind {
            OutputKind::Console => {
                self.console.extend_from_slice(&output.bytes);
                if self.echo_console {
                    let mut stdout = std::io::stdout().lock();
                    // A closed stdout (a pipe whose reader left) must not stop the guest.
                    let _ = stdout.write_all(&output.bytes).and_then(|()| stdout.flush());
                }
            }
            OutputKind::NetTransmit => {
                if let Some(workload) = self.workload.as_mut() {
                    workload.released(output)?;
                }
            }
            OutputKind::DiskWrite => {}
        }
        Ok(())
    }

    fn notify(&mut self, event: Event) -> Result<(), CliError> {
        match event {
            Event::ProtocolViolation(what) => Err(CliError::Protocol(what)),
            Event::PeerFailed { silent_ms, cause } if self.log.is_some() => Err(CliError::Protocol(format!(
                "the primary declared its log file failed after {silent_ms} ms: {cause}"
            ))),
            event => {
                tracing::debug!(?event);
                Ok(())
            }
        }
    }

    fn guest_error(&self, reason: String) -> CliError {
        CliError::Guest { guest: self.guest_name.clone(), reason }
    }

    /// The fake backup answers, storage completes, and the workload sends its next request.
    fn answer(&mut self) {
        self.delivered = false;
        let now_ns = self.clock.now_ns();
        if let Some(welcome) = self.welcome.take() {
            self.primary.handle_message(now_ns, welcome);
            self.delivered = true;
        }
        if self.log_last > self.acked {
            self.acked = self.log_last;
            let position = self.primary.position();
            self.primary.handle_message(now_ns, Message::Ack { received: self.acked, replayed: self.acked, position });
            self.delivered = true;
        }
        for done in self.storage_done.drain(..) {
            self.primary.handle_storage_done(now_ns, done);
            self.delivered = true;
        }
        if let Some(frame) = self.workload.as_mut().and_then(Workload::next_frame) {
            self.primary.handle_net_frame(now_ns, frame);
            self.delivered = true;
        }
    }

    /// The ideal backup acknowledges everything logged so far, so the outputs logged at the last exits are
    /// released before the session ends: a session that stopped when the workload got its last answer used to
    /// drop the console line the guest printed after it, which the log holds and replay prints.
    fn acknowledge_the_rest(&mut self) -> Result<(), CliError> {
        // A stopped primary released everything before its goodbye and is not polled again.
        while !self.stopped_taken && self.log_last > self.acked {
            self.acked = self.log_last;
            let position = self.primary.position();
            let ack = Message::Ack { received: self.acked, replayed: self.acked, position };
            self.primary.handle_message(self.clock.now_ns(), ack);
            self.drain()?;
        }
        Ok(())
    }

    /// Ends a recording with a checkpoint of the final state, so that replay verifies it (a guest that powered
    /// off has logged one already), and the end-of-recording frame, without which a log is truncated.
    fn finish(mut self, ending: Ending, started: Instant) -> Result<SessionResult, CliError> {
        let exits = self.primary.position().exits;
        let state_hash = if !self.primary.at_position() {
            // Kicked between two exits: no checkpoint of this state could be replayed; the log ends at the last
            // exit.
            None
        } else if self.log.is_some() {
            // A power-off (and a failed guest's shutdown) logged its checkpoint already.
            if !matches!(ending, Ending::PoweredOff { .. } | Ending::GuestFailed { .. }) {
                let now_ns = self.clock.now_ns();
                let result = self.primary.checkpoint_now(now_ns);
                result.map_err(|error| self.guest_error(error.to_string()))?;
                self.drain()?;
            }
            self.acknowledge_the_rest()?;
            match self.last_checkpoint {
                // The hash the log ends with is the final state's: no need to hash all of memory again.
                Some((at, hash)) if at == exits => Some(hash),
                _ => return Err(CliError::Protocol("the final checkpoint was not logged".into())),
            }
        } else {
            let result = self.primary.state_hash();
            Some(result.map_err(|error| self.guest_error(error.to_string()))?)
        };
        let log_bytes = match self.log.take() {
            Some(mut log) => {
                log.write(&Message::EndOfRecording { entries: self.log_entries })?;
                log.finish()?
            }
            None => 0,
        };
        let elapsed = started.elapsed();
        Ok(SessionResult {
            ending,
            state_hash,
            exits,
            console: self.console,
            responses: self.workload.as_ref().map_or(0, Workload::responses),
            log_entries: self.log_entries,
            log_bytes,
            elapsed,
            runs_kicked: self.runs_kicked,
        })
    }
}
