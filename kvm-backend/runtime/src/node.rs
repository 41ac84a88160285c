//! `ftvm primary` and `ftvm backup`: one node of a real pair. The protocol is `ft::driver::run`, the same code
//! the simulator runs; this is its `Host` over real sockets and files: a wall clock, UDP heartbeats, the shared
//! disk image and arbiter of [`SharedStorage`], the authenticated logging channel of [`auth`], and the guest's
//! service address, bound by the live primary only.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft::driver::{
    Arbiter, BlockStorage, Clock, Datagrams, GuestExits, Observation, Observer, Outside, StorageError, WriteStamp,
};
use ft::log::{DiskTarget, Output, OutputKind};
use ft::{Action, ArbiterOutcome, Event, Node};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::auth::{self, ChannelCounters};
use crate::config::{NodeConfig, NodeSettings, Side};
use crate::error::CliError;
use crate::machine::{self, GuestImage, OsEntropy};
use crate::status::{self, Board, SharedBoard};
use crate::storage::{SharedStorage, StorageProblem};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAs {
    Primary,
    Backup,
    /// `ftvm backup --join`: become the backup of the live primary by cloning its running VM.
    Join,
}

/// The owner this node writes into the arbiter record when it wins a test-and-set: its name and a random id of
/// this process, so that two nodes configured with the same name can never both win (the record's idempotence
/// for the winner's retry is keyed on the owner), while a retry of this process still finds its own win.
pub fn arbiter_identity(name: &str) -> String {
    let mut id = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut file| std::io::Read::read_exact(&mut file, &mut id));
    if random.is_err() {
        // Still distinct between processes: the pid and the time.
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        id = (since.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
    }
    format!("{name}/{:016x}", u64::from_le_bytes(id))
}

/// The `tracing` target of the lines that tell a failover's story (detection, the arbiter, going live, the service
/// address, stopping), as sentences: `ftvm demo` puts them on its timeline.
pub const TIMELINE: &str = "ftvm::timeline";

/// Outputs released while the service address is not bound yet (a backup going live while the port is still
/// held, or its IP still moving), sent once it is: the paper's "re-send what may not have been sent" must reach
/// the outside. Beyond this many the oldest are dropped (and counted), as a full NIC queue would.
const SERVICE_QUEUE_MAX: usize = 1024;
/// Period of the retries of a busy service address.
const SERVICE_RETRY: Duration = Duration::from_millis(5);
/// Period of the warning that says what a node waits for while its service address is busy.
const SERVICE_WAIT_WARNING: Duration = Duration::from_secs(1);

/// The bound service address: tokio's socket for receiving, and a clone of the descriptor for sending at once
/// from `Outside::release` (tokio's `try_send_to` reports a fresh socket as not writable until its reactor has
/// turned, which would drop exactly the outputs re-sent at go-live).
struct ServiceSocket {
    receive: Rc<UdpSocket>,
    send: std::net::UdpSocket,
}

struct NetHost {
    start: Instant,
    /// This host itself, for the tasks it starts (binding the service address at go-live).
    me: Weak<NetHost>,
    name: String,
    /// Who this node is in the arbiter record.
    identity: String,
    heartbeat: UdpSocket,
    peer_heartbeat: SocketAddr,
    /// Where the session's authenticated heartbeats come from: heartbeats go back there, so that a primary
    /// protected by a node on another address (a joiner, a spare) reaches it without a new config.
    heartbeat_from: Cell<Option<SocketAddr>>,
    /// The heartbeat keys of the logging channel's session: no heartbeat is sent or accepted before one exists.
    heartbeats: RefCell<Option<auth::HeartbeatKeys>>,
    /// Refused heartbeats since the last warning about them, and when that was (the warnings are rate-limited).
    heartbeats_refused: Cell<(u64, Option<Instant>)>,
    /// Datagram mode's service address (unused in Ethernet mode).
    service_addr: SocketAddr,
    service: RefCell<Option<ServiceSocket>>,
    /// Ethernet mode: the guest's TAP device; on the bridge once this node is live (`service_bound`).
    tap: Option<crate::ethernet::TapPort>,
    /// Datagrams released before the service address was bound, oldest first, and how many were dropped.
    service_queue: RefCell<VecDeque<(SocketAddrV4, Vec<u8>)>>,
    service_queue_dropped: Cell<u64>,
    /// Whether a task is binding the service address.
    service_binding: Cell<bool>,
    /// Wakes `recv_frame` once the service address is bound.
    service_bound: tokio::sync::Notify,
    /// Run (with `sh -c`) when this node goes live, before it binds the service: moves the service IP and
    /// announces it (gratuitous ARP) in a deployment where the two hosts have their own addresses.
    go_live_command: Option<String>,
    storage: Arc<SharedStorage>,
    storage_timeout: Duration,
    /// The precise sleeps' timerfds, kept for reuse.
    timers: crate::timer::Timers,
    /// Storage requests that timed out and may still run: later requests wait for them (see `blocking`).
    stuck_storage: StuckRequests,
    board: SharedBoard,
    counters: Rc<ChannelCounters>,
    /// Notified from the vCPU thread when a run of the guest ends.
    guest_exit: Arc<tokio::sync::Notify>,
    /// The live primary's joiners (its `join_listen` and `spares`), if it takes any.
    desk: Option<crate::join::JoinDesk>,
    /// The primary: the identity of the joiner whose `Join` arrived, for the arbiter record of the new epoch.
    enlisting: RefCell<Option<String>>,
    /// A joining node: its own identity (the arbiter record must name it), and the switch that cuts its channel
    /// when the record does not.
    joining: Option<(String, crate::join::Revoked)>,
}

impl NetHost {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs `work` on the blocking pool; a request that errs at the OS level or does not finish in time means
    /// the storage is unreachable. A request that timed out may still be running (a hung mount): no other
    /// request starts until it has finished, so a retry can never be overtaken by the attempt it replaced.
    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&SharedStorage) -> T + Send + 'static) -> Option<T> {
        stuck_wait(&self.stuck_storage).await;
        let storage = self.storage.clone();
        let task = tokio::task::spawn_blocking(move || work(&storage));
        timed(&self.stuck_storage, self.storage_timeout, task).await
    }

    /// Binds the service address once: on success the datagrams released meanwhile leave, in order, and
    /// `recv_frame` starts serving.
    fn try_bind_service(&self) -> std::io::Result<()> {
        if let Some(tap) = &self.tap {
            if self.board.borrow().snapshot.service_bound {
                return Ok(());
            }
            tap.go_live()?;
            let ethernet = tap.settings();
            tracing::info!(
                target: TIMELINE,
                "{}: TAP {} live{}; announced {} at {} (gratuitous ARP)",
                self.name,
                ethernet.tap,
                ethernet.bridge.as_ref().map(|bridge| format!(" on bridge {bridge}")).unwrap_or_default(),
                ethernet.guest_ip,
                crate::ethernet::format_mac(ethernet.guest_mac)
            );
            self.board.borrow_mut().snapshot.service_bound = true;
            self.service_bound.notify_one();
            return Ok(());
        }
        if self.service.borrow().is_some() {
            return Ok(());
        }
        let socket = std::net::UdpSocket::bind(self.service_addr)?;
        socket.set_nonblocking(true)?;
        let send = socket.try_clone()?;
        let receive = Rc::new(UdpSocket::from_std(socket)?);
        tracing::info!(target: TIMELINE, "{}: service address {} bound", self.name, self.service_addr);
        let queued: Vec<_> = self.service_queue.borrow_mut().drain(..).collect();
        if !queued.is_empty() {
            tracing::info!(
                "{}: sending {} outputs released before the service address was bound",
                self.name,
                queued.len()
            );
        }
        let dropped = self.service_queue_dropped.replace(0);
        if dropped > 0 {
            tracing::warn!(
                "{}: {dropped} outputs released before the service address was bound were dropped",
                self.name
            );
        }
        for (target, payload) in queued {
            let _ = send.send_to(&payload, SocketAddr::V4(target));
        }
        *self.service.borrow_mut() = Some(ServiceSocket { receive, send });
        self.board.borrow_mut().snapshot.service_bound = true;
        self.service_bound.notify_one();
        Ok(())
    }

    /// Binds the service address, retrying while it is busy (an old primary on this host still holds it, or the
    /// moved IP is not there yet) and saying every second what it waits for; gives up at `deadline`, if any.
    async fn bind_service(&self, deadline: Option<Instant>) -> std::io::Result<()> {
        let mut warned: Option<Instant> = None;
        loop {
            let error = match self.try_bind_service() {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            // A TAP that cannot join its bridge yet (the bridge is still being made, or was deleted and comes
            // back) is retried like a busy address: a live node without its network would serve nobody.
            let busy = self.tap.is_some()
                || matches!(error.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable);
            if !busy || deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(error);
            }
            if warned.is_none_or(|at| at.elapsed() >= SERVICE_WAIT_WARNING) {
                warned = Some(Instant::now());
                if let Some(tap) = &self.tap {
                    let ethernet = tap.settings();
                    tracing::warn!(
                        "{}: waiting to put the TAP {} on the bridge {:?} ({})",
                        self.name,
                        ethernet.tap,
                        ethernet.bridge,
                        crate::error::io_reason(&error)
                    );
                    tokio::time::sleep(SERVICE_RETRY).await;
                    continue;
                }
                tracing::warn!(
                    "{}: waiting for the service address {} ({}): held by another process (an old primary?) or not \
                     on this host yet; {} outputs wait for it",
                    self.name,
                    self.service_addr,
                    crate::error::io_reason(&error),
                    self.service_queue.borrow().len()
                );
            }
            tokio::time::sleep(SERVICE_RETRY).await;
        }
    }

    /// At go-live: bind the service address now if it is free, else in a task that retries until it is.
    fn take_service_address(&self) {
        if self.service.borrow().is_some() || self.service_binding.get() {
            return;
        }
        if self.try_bind_service().is_ok() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        self.service_binding.set(true);
        tokio::task::spawn_local(async move {
            if let Err(error) = me.bind_service(None).await {
                match &me.tap {
                    Some(tap) => {
                        tracing::error!("{}: cannot put the TAP {} on its bridge: {error}", me.name, tap.settings().tap)
                    }
                    None => {
                        tracing::error!("{}: cannot bind the service address {}: {error}", me.name, me.service_addr)
                    }
                }
            }
            me.service_binding.set(false);
        });
    }

    /// Counts a refused heartbeat, and says so at most once a second.
    fn heartbeat_refused(&self, from: SocketAddr, why: &str) {
        let (count, warned) = self.heartbeats_refused.get();
        let count = count + 1;
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(
                "{}: heartbeat from {from} refused: {why} ({count} refused since the last warning)",
                self.name
            );
            self.heartbeats_refused.set((0, Some(Instant::now())));
        } else {
            self.heartbeats_refused.set((count, warned));
        }
    }
}

impl Clock for NetHost {
    fn now_ns(&self) -> u64 {
        self.now()
    }

    fn guest_slice_ns(&self) -> u64 {
        0
    }

    async fn sleep_until_ns(&self, deadline_ns: u64) {
        if deadline_ns == u64::MAX {
            return std::future::pending().await;
        }
        let now = self.now();
        if deadline_ns <= now {
            // More guest work is ready: let the other branches be polled once, without a timer.
            tokio::task::yield_now().await;
            return;
        }
        // Precisely: tokio's timers have millisecond resolution, which made every tick of a guest's 1 ms timer
        // up to a millisecond late.
        self.timers.sleep_until(self.start + Duration::from_nanos(deadline_ns)).await;
    }
}

impl Datagrams for NetHost {
    async fn send_heartbeat(&self, frame: Vec<u8>) {
        // Heartbeats are tagged under the channel's session key: without a session there is nobody to send to.
        let Some(datagram) = self.heartbeats.borrow().as_ref().map(|keys| keys.seal(frame)) else { return };
        let to = self.heartbeat_from.get().unwrap_or(self.peer_heartbeat);
        let _ = self.heartbeat.send_to(&datagram, to).await;
    }

    /// The next heartbeat of the session's peer. The transport checks the tag (session, direction, counter);
    /// the protocol core checks role, epoch and freshness (`sent_ms`) itself.
    async fn recv_heartbeat(&self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 512];
        loop {
            let (length, from) = self.heartbeat.recv_from(&mut buffer).await.ok()?;
            let opened = self.heartbeats.borrow().as_ref().map(|keys| keys.open(&buffer[..length]));
            match opened {
                Some(Ok(frame)) => {
                    self.heartbeat_from.set(Some(from));
                    return Some(frame);
                }
                Some(Err(refused)) => self.heartbeat_refused(from, &refused.to_string()),
                None => self.heartbeat_refused(from, "no logging channel session yet"),
            }
        }
    }
}

impl BlockStorage for NetHost {
    async fn storage_read(&self, epoch: u64, target: DiskTarget) -> Result<Vec<u8>, StorageError> {
        self.blocking(move |storage| storage.read(epoch, target)).await.unwrap_or(Err(StorageError::Unreachable))
    }

    async fn storage_write(&self, stamp: WriteStamp, target: DiskTarget, data: Vec<u8>) -> Result<(), StorageError> {
        // Attempts never overlap here (`blocking`), so the epoch's fencing is all the file needs.
        let epoch = stamp.epoch;
        self.blocking(move |storage| storage.write(epoch, target, &data))
            .await
            .unwrap_or(Err(StorageError::Unreachable))
    }
}

impl Arbiter for NetHost {
    async fn test_and_set(&self, expected_epoch: u64) -> ArbiterOutcome {
        let me = self.identity.clone();
        // A primary enlisting a joiner records it as the new epoch's backup; any other test-and-set records none.
        let backup = self.enlisting.borrow().clone();
        let enlisting =
            move |storage: &SharedStorage| storage.test_and_set_enlisting(expected_epoch, &me, backup.as_deref());
        match self.blocking(enlisting).await {
            Some(Ok(outcome)) => {
                match outcome {
                    ArbiterOutcome::Won { epoch } => {
                        tracing::info!(target: TIMELINE, "{}: the arbiter granted epoch {epoch} to {}", self.name, self.identity)
                    }
                    ArbiterOutcome::Lost { epoch } => tracing::info!(
                        target: TIMELINE,
                        "{}: the arbiter refused: it is at epoch {epoch} already, somebody else went live",
                        self.name
                    ),
                    ArbiterOutcome::Unreachable => {
                        tracing::warn!(target: TIMELINE, "{}: the arbiter did not answer", self.name)
                    }
                }
                outcome
            }
            Some(Err(error)) => {
                tracing::warn!("{}: arbiter unreachable: {error}", self.name);
                ArbiterOutcome::Unreachable
            }
            None => {
                tracing::warn!("{}: arbiter unreachable: no answer within {:?}", self.name, self.storage_timeout);
                ArbiterOutcome::Unreachable
            }
        }
    }
}

impl Outside for NetHost {
    fn release(&self, _epoch: u64, output: &Output) {
        match output.kind {
            OutputKind::NetTransmit if self.tap.is_some() => {
                if let Some(tap) = &self.tap {
                    tap.send(&output.bytes);
                }
            }
            OutputKind::NetTransmit => {
                let Some((target, payload)) = ft::kv::datagram_from_frame(&output.bytes) else { return };
                if let Some(socket) = self.service.borrow().as_ref() {
                    // Non-blocking: a full socket buffer drops the datagram, as a congested network would.
                    let _ = socket.send.send_to(payload, SocketAddr::V4(target));
                    return;
                }
                // Not bound yet (going live while the port is busy): the output leaves once it is.
                let mut queue = self.service_queue.borrow_mut();
                if queue.len() == SERVICE_QUEUE_MAX {
                    queue.pop_front();
                    self.service_queue_dropped.set(self.service_queue_dropped.get() + 1);
                }
                queue.push_back((target, payload.to_vec()));
            }
            OutputKind::Console => {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&output.bytes);
                let _ = stdout.flush();
            }
            _ => {}
        }
    }

    async fn recv_frame(&self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; ft::abi::NET_FRAME_BYTES_MAX];
        if let Some(tap) = &self.tap {
            // A backup's TAP is off the bridge: what it holds is not the guest's traffic.
            while !self.board.borrow().snapshot.service_bound {
                self.service_bound.notified().await;
            }
            loop {
                match tap.receive(&mut buffer).await {
                    Ok(length) => {
                        buffer.truncate(length);
                        return Some(buffer);
                    }
                    // A read error of the TAP (the device gone down, a frame the kernel refused) is not the end of
                    // the guest's network: say so and read on.
                    Err(error) => {
                        tracing::warn!("{}: reading the TAP {}: {error}", self.name, tap.settings().tap);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        loop {
            let socket = self.service.borrow().as_ref().map(|socket| socket.receive.clone());
            let Some(socket) = socket else {
                // Only a live node binds the service address (at start, or when the observer sees it go live).
                self.service_bound.notified().await;
                continue;
            };
            let (length, from) = socket.recv_from(&mut buffer).await.ok()?;
            let SocketAddr::V4(from) = from else { continue };
            return Some(ft::kv::frame_from_datagram(from, &buffer[..length]));
        }
    }
}

impl GuestExits for NetHost {
    async fn guest_exit(&self) {
        self.guest_exit.notified().await;
    }
}

impl NetHost {
    /// Starts a session with a peer: heartbeats under its keys, to wherever its heartbeats come from.
    fn begin_session(&self, session: &crate::auth::Session, primary: bool) {
        *self.heartbeats.borrow_mut() = Some(session.heartbeats(primary));
        self.heartbeat_from.set(None);
        let mut board = self.board.borrow_mut();
        board.peer_name = Some(session.peer_name.clone());
        board.snapshot.peer = session.peer_name.clone();
    }

    /// The joiner's authorisation, when its clone begins: the arbiter record must name it the backup of `epoch`.
    fn check_enlisted(&self, epoch: u64) {
        let Some((identity, revoked)) = &self.joining else { return };
        match crate::join::check_enlisted(&self.storage, epoch, identity, self.storage_timeout) {
            Ok(()) => tracing::info!(
                target: TIMELINE,
                "{}: the arbiter record names this node the backup of epoch {epoch}: taking the clone",
                self.name
            ),
            Err(reason) => {
                tracing::error!(target: TIMELINE, "{}: refusing the clone: {reason}", self.name);
                *revoked.borrow_mut() = Some(format!("refused the clone: {reason}"));
            }
        }
    }
}

/// A live primary without a backup takes joiners from its desk (`join_listen`, `spares`).
impl ft::driver::Joiners for NetHost {
    async fn accept_joiner(&self) -> Box<dyn ft::driver::ChannelStream> {
        let Some(desk) = &self.desk else { return std::future::pending().await };
        let (stream, session) = desk.next().await;
        self.board.borrow_mut().joiner_busy = true;
        self.begin_session(&session, true);
        Box::new(auth::secure(stream, session, true, self.counters.clone()))
    }
}

impl Observer for NetHost {
    fn observe(&self, _now_ns: u64, observation: Observation) {
        // The clock now, not the driver's `now_ns` (taken before the guest slice that produced the action): the
        // hold and ack-delay figures measure when things really happen.
        let now_ns = self.now();
        match observation {
            Observation::Action(action) => {
                // The board's borrow ends here: going live below updates it too.
                self.board.borrow_mut().observe_action(now_ns, action);
                if let Action::Notify(event) = action {
                    match event {
                        Event::CloneStarted { .. } => {
                            self.enlisting.borrow_mut().take();
                            self.board.borrow_mut().clone_bytes_sent_at_start = self.counters.bytes_sent.get();
                            tracing::info!(target: TIMELINE, "{}: {event}", self.name);
                        }
                        Event::CloneAbandoned { .. } => {
                            self.enlisting.borrow_mut().take();
                            tracing::warn!(target: TIMELINE, "{}: {event}", self.name);
                        }
                        Event::Checkpoint { .. } => {}
                        Event::WentLive { .. } => {
                            tracing::warn!(target: TIMELINE, "{}: {event}", self.name);
                            if let Some(command) = &self.go_live_command {
                                run_go_live_command(&self.name, command);
                            }
                            // Before the outputs the new primary re-sends, which follow this notice: they leave
                            // now, or from the queue once the address is free.
                            self.take_service_address();
                        }
                        // Flow control comes and goes with the load: not part of the story.
                        Event::Stalled { .. } => tracing::info!("{}: {event}", self.name),
                        Event::CpuShare { .. } => tracing::debug!("{}: {event}", self.name),
                        _ => tracing::info!(target: TIMELINE, "{}: {event}", self.name),
                    }
                }
            }
            Observation::Received(message) => {
                self.board.borrow_mut().observe_received(now_ns, message);
                match message {
                    ft::wire::Message::Join { node, .. } => {
                        let joiner = self.board.borrow().peer_name.clone().unwrap_or_default();
                        *self.enlisting.borrow_mut() = Some(format!("{joiner}/{node:016x}"));
                    }
                    ft::wire::Message::CloneBegin { epoch, .. } => self.check_enlisted(*epoch),
                    _ => {}
                }
            }
            Observation::Written { log_index } => self.board.borrow_mut().observe_written(now_ns, log_index),
            Observation::ChannelError(reason) => tracing::warn!("{}: logging channel: {reason}", self.name),
        }
    }
}

/// Blocking storage tasks that outlived their timeout.
pub type StuckRequests = RefCell<Vec<tokio::task::JoinHandle<()>>>;

/// Waits until every storage task that timed out has finished.
async fn stuck_wait(stuck: &StuckRequests) {
    loop {
        let Some(task) = stuck.borrow_mut().pop() else { return };
        let _ = task.await;
    }
}

/// Awaits `task` up to `timeout`; a task still running then is kept in `stuck` (and `None` returned).
async fn timed<T: Send + 'static>(
    stuck: &StuckRequests,
    timeout: Duration,
    task: tokio::task::JoinHandle<T>,
) -> Option<T> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        let _ = done_tx.send(task.await);
    });
    match tokio::time::timeout(timeout, done_rx).await {
        Ok(Ok(Ok(value))) => Some(value),
        Ok(_) => None,
        Err(_) => {
            stuck.borrow_mut().push(waiter);
            None
        }
    }
}

fn run_go_live_command(name: &str, command: &str) {
    match std::process::Command::new("sh").arg("-c").arg(command).status() {
        Ok(status) if status.success() => tracing::info!(target: TIMELINE, "{name}: the go-live command succeeded"),
        Ok(status) => tracing::error!("{name}: go-live command {command:?} failed: {status}"),
        Err(error) => tracing::error!("{name}: go-live command {command:?}: {error}"),
    }
}

/// Longest a backup waits for one connection's handshake (each connection has its own clock).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshakes a backup runs at once; a connection beyond this evicts the oldest pending one, so idle or slow
/// connections can never keep the real primary out.
const HANDSHAKES_PENDING_MAX: usize = 64;

/// The sockets a node listens on, bound at startup before any storage activity: a busy port is an error that
/// names the address and the key.
struct Listeners {
    heartbeat: UdpSocket,
    channel: Option<TcpListener>,
    join: Option<TcpListener>,
    status: Option<TcpListener>,
    metrics: Option<TcpListener>,
}

async fn bind_listeners(settings: &NodeSettings, side: Side) -> Result<Listeners, CliError> {
    let busy = |what: &str, key: &str, addr: SocketAddr, error: std::io::Error| {
        CliError::io(format!("{what} address {addr} (`{key}`)"), &error)
    };
    let addr = settings.heartbeat_listen;
    let heartbeat = UdpSocket::bind(addr).await.map_err(|error| busy("heartbeat", "heartbeat_listen", addr, error))?;
    let channel_listening = side == Side::Backup || (side == Side::Joiner && settings.join_peers.is_empty());
    let channel = match channel_listening {
        true => Some(
            TcpListener::bind(settings.channel)
                .await
                .map_err(|error| busy("logging channel", "channel_listen", settings.channel, error))?,
        ),
        false => None,
    };
    let join = match settings.join_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|error| busy("join", "join_listen", addr, error))?),
        None => None,
    };
    let mut tcp = Vec::new();
    for (key, addr) in [("status", settings.status), ("metrics", settings.metrics)] {
        let listener = match addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|error| busy(key, key, addr, error))?),
            None => None,
        };
        tcp.push(listener);
    }
    let metrics = tcp.pop().flatten();
    let status = tcp.pop().flatten();
    Ok(Listeners { heartbeat, channel, join, status, metrics })
}

/// Runs `work` on the blocking pool under `timeout`: None if it did not answer in time (a hung mount).
pub(crate) async fn storage_call<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await.ok().and_then(Result::ok)
}

/// `ftvm primary` / `ftvm backup`. In this order: KVM (unless the model guest runs); every setting, the guest
/// image and the key file (errors name the key or the path); the shared storage's directories and existing
/// files, read-only (a wrong file is an error, storage that does not answer is waited for, and a primary refuses
/// a pair that failed over); this node's ports (a busy one is an error naming it); and only then is shared
/// storage created or used, the service address taken (waiting for it until the startup timeout) and the peer
/// contacted.
pub fn run(kvm_path: &Path, config: NodeConfig, start_as: StartAs) -> Result<(), CliError> {
    let side = match start_as {
        StartAs::Primary => Side::Primary,
        StartAs::Backup => Side::Backup,
        StartAs::Join => Side::Joiner,
    };
    // A node on KVM needs it before anything else makes sense.
    if config.machine.as_deref().is_none_or(|machine| machine == "kvm") {
        machine::check_kvm(kvm_path)?;
    }
    let mut settings = config.settings(side)?;
    let image = GuestImage::resolve(&settings.guest)?;
    settings.protocol.image_digest = image.digest();
    if settings.machine == "model" {
        machine::check_model_guest(&image)?;
    }
    let storage = Arc::new(SharedStorage {
        disk: settings.disk.clone(),
        arbiter: settings.arbiter.clone(),
        sync_writes: settings.sync_writes,
        journal: settings.write_journal.then(|| crate::storage::journal_path(&settings.disk)),
    });
    let (runtime, local) = crate::local_runtime()?;
    local.block_on(&runtime, async move {
        let name = settings.name.clone();
        let start = Instant::now();
        let storage_timeout = Duration::from_millis(settings.storage_timeout_ms);
        // The files first, read-only. Storage that does not answer at all (a hung mount) is waited for: nothing
        // can go live without it anyway.
        let existing = loop {
            let (checked, sectors, exact) = (storage.clone(), settings.disk_sectors, settings.disk_sectors_given);
            match storage_call(storage_timeout, move || checked.check(sectors, exact)).await {
                Some(Ok(record)) => break record,
                Some(Err(StorageProblem::Bad(reason))) => {
                    return Err(CliError::Usage(format!("shared storage: {reason}")))
                }
                Some(Err(StorageProblem::Unreachable(reason))) => {
                    tracing::warn!("{name}: shared storage unreachable ({reason}); waiting")
                }
                None => {
                    tracing::warn!("{name}: shared storage unreachable (no answer within {storage_timeout:?}); waiting")
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(record) = existing.filter(|_| start_as == StartAs::Primary) {
            refuse_failed_over_pair(&storage, &record)?;
        }
        let listeners = bind_listeners(&settings, side).await?;
        // Now storage may be written: the files the check found missing are created. A path that existed at the
        // check and is gone now is a mount that went away: waited for.
        let record = loop {
            let (prepared, sectors) = (storage.clone(), settings.disk_sectors);
            let result = storage_call(storage_timeout, move || {
                prepared.create_if_missing(sectors).and_then(|()| prepared.record())
            })
            .await;
            match result {
                Some(Ok(record)) => break record,
                Some(Err(error)) => tracing::warn!("{name}: shared storage unreachable ({error}); waiting"),
                None => {
                    tracing::warn!("{name}: shared storage unreachable (no answer within {storage_timeout:?}); waiting")
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if start_as == StartAs::Primary {
            refuse_failed_over_pair(&storage, &record)?;
        }
        let disk_sectors = storage.disk_sectors().map_err(|error| CliError::io("disk image", &error))?;
        let peer = match start_as {
            StartAs::Primary | StartAs::Join => settings.channel.to_string(),
            StartAs::Backup => settings.heartbeat_peer.to_string(),
        };
        let mut board = Board::default();
        board.snapshot.name = name.clone();
        board.snapshot.role = match start_as {
            StartAs::Primary => "primary".into(),
            StartAs::Backup => "backup".into(),
            StartAs::Join => "joining".into(),
        };
        board.snapshot.epoch = record.epoch;
        board.snapshot.cpu_share_percent = 100.0;
        board.snapshot.peer = peer;
        board.snapshot.service = settings.network.to_string();
        let board = Rc::new(RefCell::new(board));
        let desk = crate::join::JoinDesk::start(crate::join::DeskSetup {
            name: name.clone(),
            key: settings.key.clone(),
            pair_id: settings.protocol.pair_id,
            listener: listeners.join,
            spares: settings.spares.clone(),
            board: board.clone(),
        });
        // Opened at start on every node, so that a missing /dev/net/tun or capability stops a backup now rather
        // than at its go-live.
        let tap = match &settings.network {
            crate::config::Network::Ethernet(ethernet) => Some(crate::ethernet::TapPort::open(ethernet)?),
            crate::config::Network::Datagram(_) => None,
        };
        let identity = arbiter_identity(&name);
        let joining = (start_as == StartAs::Join).then(|| (identity.clone(), crate::join::Revoked::default()));
        let host = Rc::new_cyclic(|me| NetHost {
            start,
            me: me.clone(),
            name: name.clone(),
            identity: identity.clone(),
            heartbeat: listeners.heartbeat,
            peer_heartbeat: settings.heartbeat_peer,
            heartbeat_from: Cell::new(None),
            heartbeats: RefCell::new(None),
            heartbeats_refused: Cell::new((0, None)),
            service_addr: match &settings.network {
                crate::config::Network::Datagram(addr) => *addr,
                crate::config::Network::Ethernet(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            },
            service: RefCell::new(None),
            tap,
            service_queue: RefCell::new(VecDeque::new()),
            service_queue_dropped: Cell::new(0),
            service_binding: Cell::new(false),
            service_bound: tokio::sync::Notify::new(),
            go_live_command: settings.go_live_command.clone(),
            storage: storage.clone(),
            storage_timeout,
            timers: crate::timer::Timers::default(),
            stuck_storage: StuckRequests::default(),
            board: board.clone(),
            counters: Rc::new(ChannelCounters::default()),
            guest_exit: Arc::new(tokio::sync::Notify::new()),
            desk,
            enlisting: RefCell::new(None),
            joining,
        });
        serve_status(&host, listeners.status, listeners.metrics);
        let exit_notify = host.guest_exit.clone();
        let waker: kvm_backend::Waker = Arc::new(move || exit_notify.notify_one());
        let mut entropy = OsEntropy::open()?;
        let protocol = settings.protocol.clone();
        let startup = Duration::from_millis(protocol.startup_timeout_ms);
        let key = settings.key.clone();
        if start_as == StartAs::Join {
            let joined = Joining { kvm_path, image: &image, settings: &settings, storage: &storage, disk_sectors };
            let (stopped, guest_handle) = run_joiner(&host, joined, listeners.channel, waker, &mut entropy).await?;
            return finish(&host, &settings, stopped, guest_handle);
        }
        let (guest, guest_handle) = node_guest(&host, kvm_path, &image, &settings, waker)?;
        let (node, channel) = match start_as {
            StartAs::Join => unreachable!("joined above"),
            StartAs::Primary => {
                let epoch = record.epoch;
                // The primary is live from the start: it takes the service address (its go-live command, if any,
                // moves the IP here) and binds it, waiting (and saying so) while an old primary still holds it,
                // until its startup timeout.
                if let Some(command) = &settings.go_live_command {
                    run_go_live_command(&name, command);
                }
                host.bind_service(Some(Instant::now() + startup)).await.map_err(|error| match &settings.network {
                    crate::config::Network::Datagram(addr) => {
                        CliError::io(format!("service address {addr} (`service`)"), &error)
                    }
                    crate::config::Network::Ethernet(ethernet) => CliError::io(
                        format!("TAP {} on bridge {:?} (`ethernet`)", ethernet.tap, ethernet.bridge),
                        &error,
                    ),
                })?;
                let channel = connect(&name, settings.channel, &key, protocol.pair_id, epoch, startup).await?;
                tracing::info!("{name}: primary of pair {} at epoch {epoch}, guest {}", protocol.pair_id, image.name);
                let primary = ft::primary::Primary::new(protocol.clone(), guest, disk_sectors, epoch, host.now());
                (Node::Primary(Box::new(primary)), channel)
            }
            StartAs::Backup => {
                let listener = listeners.channel.expect("a backup binds its channel address");
                tracing::info!(
                    "{name}: backup of pair {}, waiting for the primary on {}",
                    protocol.pair_id,
                    settings.channel
                );
                let gate =
                    Gate { name: &name, key: &key, pair_id: protocol.pair_id, storage: &storage, storage_timeout };
                let channel = accept(&gate, &listener, startup).await?;
                let backup = ft::backup::Backup::new(protocol.clone(), guest, disk_sectors, host.now());
                (Node::Backup(Box::new(backup)), channel)
            }
        };
        let channel = channel.map(|(stream, session)| {
            board.borrow_mut().snapshot.epoch = session.epoch;
            // From now on heartbeats are tagged under this session's key, and only its peer's are accepted.
            host.begin_session(&session, start_as == StartAs::Primary);
            auth::secure(stream, session, start_as == StartAs::Primary, host.counters.clone())
        });
        board.borrow_mut().snapshot.guest_started_at_ms = Some(host.now() / 1_000_000);
        let stopped = ft::driver::run(host.clone(), node, channel, &mut entropy).await;
        finish(&host, &settings, stopped, guest_handle)
    })
}

/// The node's guest, its cut pauses measured into the status board.
fn node_guest(
    host: &NetHost,
    kvm_path: &Path,
    image: &GuestImage,
    settings: &NodeSettings,
    waker: kvm_backend::Waker,
) -> Result<(Box<dyn ft::Guest>, Option<kvm_backend::GuestHandle>), CliError> {
    let (guest, handle) =
        machine::new_node_guest(kvm_path, image, Some(&settings.machine), Some(waker), settings.memory_bytes)?;
    let pauses = host.board.borrow().pauses.clone();
    Ok((Box::new(crate::pause::PauseMeter::new(guest, pauses)), handle))
}

/// What a joining node needs to build its guest and find the live primary.
struct Joining<'a> {
    kvm_path: &'a Path,
    image: &'a GuestImage,
    settings: &'a NodeSettings,
    storage: &'a Arc<SharedStorage>,
    disk_sectors: u64,
}

/// Attempts at joining before a joining node gives up (each with a fresh guest).
const JOIN_ATTEMPTS_MAX: u32 = 5;
/// Pause between two attempts.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// `ftvm backup --join`: find the live primary (calling its `join_peers`, or waiting as a spare), take its clone,
/// and run on as its backup. A clone that fails before its cut is tried again with a fresh guest, up to
/// `JOIN_ATTEMPTS_MAX` times.
async fn run_joiner(
    host: &Rc<NetHost>,
    joining: Joining<'_>,
    listener: Option<TcpListener>,
    waker: kvm_backend::Waker,
    entropy: &mut OsEntropy,
) -> Result<(ft::Stopped, Option<kvm_backend::GuestHandle>), CliError> {
    let Joining { kvm_path, image, settings, storage, disk_sectors } = joining;
    let name = settings.name.clone();
    let protocol = settings.protocol.clone();
    let startup = Duration::from_millis(protocol.startup_timeout_ms);
    let storage_timeout = Duration::from_millis(settings.storage_timeout_ms);
    let node_id = host.identity.rsplit('/').next().and_then(|id| u64::from_str_radix(id, 16).ok()).unwrap_or(0);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let found = if settings.join_peers.is_empty() {
            let listener = listener.as_ref().expect("a spare binds its channel address");
            tracing::info!(
                "{name}: spare of pair {}, waiting on {} for a live primary",
                protocol.pair_id,
                settings.channel
            );
            let gate = Gate { name: &name, key: &settings.key, pair_id: protocol.pair_id, storage, storage_timeout };
            // A spare waits as long as it takes.
            let mut found = None;
            while found.is_none() {
                found = accept(&gate, listener, startup).await?.map(|(stream, session)| {
                    let peer = stream.peer_addr().unwrap_or(settings.channel);
                    (stream, session, peer)
                });
            }
            found
        } else {
            tracing::info!(
                "{name}: joining pair {} by cloning its live primary ({:?})",
                protocol.pair_id,
                settings.join_peers
            );
            let deadline = tokio::time::Instant::now() + startup;
            let peers = &settings.join_peers;
            crate::join::call_primary(peers, &name, &settings.key, protocol.pair_id, storage, storage_timeout, deadline)
                .await
        };
        let Some((stream, session, peer)) = found else {
            return Err(CliError::Protocol(format!(
                "no live primary without a backup took {name} at {:?} within {startup:?} (is the pair protected \
                 already, or is `join_peers` the primary's `join_listen`?)",
                settings.join_peers
            )));
        };
        tracing::info!(
            target: TIMELINE,
            "{name}: joining {} at {peer} (epoch {}): cloning its VM",
            session.peer_name,
            session.epoch
        );
        let (guest, guest_handle) = node_guest(host, kvm_path, image, settings, waker.clone())?;
        let revoked = host.joining.as_ref().map(|(_, revoked)| revoked.clone()).unwrap_or_default();
        *revoked.borrow_mut() = None;
        host.begin_session(&session, false);
        {
            let mut board = host.board.borrow_mut();
            board.snapshot.role = "joining".into();
            board.snapshot.epoch = session.epoch;
        }
        let channel = crate::join::Revocable::new(auth::secure(stream, session, false, host.counters.clone()), revoked);
        let joiner = ft::join::Joiner::new(protocol.clone(), guest, disk_sectors, node_id, host.now());
        host.board.borrow_mut().snapshot.guest_started_at_ms = Some(host.now() / 1_000_000);
        let stopped = ft::driver::run(host.clone(), Node::Joining(Box::new(joiner)), Some(channel), entropy).await;
        match stopped {
            ft::Stopped::JoinFailed(reason) if attempt < JOIN_ATTEMPTS_MAX => {
                tracing::warn!(
                    target: TIMELINE,
                    "{name}: the clone failed ({reason}); trying again ({attempt} of {JOIN_ATTEMPTS_MAX} attempts made)"
                );
                tokio::time::sleep(JOIN_RETRY).await;
            }
            stopped => return Ok((stopped, guest_handle)),
        }
    }
}

/// What a node leaves behind when it stops: its last status (`status_file`), a last line, and the exit status.
fn finish(
    host: &Rc<NetHost>,
    settings: &NodeSettings,
    stopped: ft::Stopped,
    guest_handle: Option<kvm_backend::GuestHandle>,
) -> Result<(), CliError> {
    let name = &settings.name;
    let board = &host.board;
    {
        let mut board = board.borrow_mut();
        board.snapshot.role = "stopped".into();
        board.snapshot.stopped = Some(stopped.to_string());
    }
    if let Some(path) = &settings.status_file {
        let snapshot = board.borrow().snapshot(host.now(), &host.counters);
        let json = serde_json::to_string_pretty(&snapshot).expect("serialisable");
        // The node has stopped either way: a status file that cannot be written is said, not fatal.
        if let Err(error) = std::fs::write(path, json + "\n") {
            tracing::error!("{name}: status file {} (`status_file`): {error}", path.display());
        }
    }
    tracing::warn!(target: TIMELINE, "{name}: stopped: {stopped}");
    let failure = guest_handle.as_ref().and_then(kvm_backend::GuestHandle::failure);
    let guest_spec = settings.guest.clone();
    match stopped {
        // A shutdown (triple fault, MMIO, emulation failure) reaches the platform as a power-off with status
        // u32::MAX; the KVM exit says why.
        ft::Stopped::PoweredOff { .. } if failure.is_some() => {
            Err(CliError::GuestFailed { guest: guest_spec, reason: failure.unwrap_or_default() })
        }
        ft::Stopped::PoweredOff { status: 0 } => Ok(()),
        ft::Stopped::PoweredOff { status } => Err(CliError::GuestStatus { guest: guest_spec, status }),
        ft::Stopped::GuestFailed(reason) => Err(CliError::GuestFailed { guest: guest_spec, reason }),
        ft::Stopped::Diverged(divergence) => Err(CliError::Diverged(divergence)),
        other => Err(CliError::Protocol(format!("{name} stopped: {other}"))),
    }
}

/// A primary refuses to start if somebody went live in this pair already: a fresh primary would start its guest
/// from the disk image and race the live one. A node that should protect the live one joins it instead
/// (`ftvm backup --join`).
fn refuse_failed_over_pair(storage: &SharedStorage, record: &crate::storage::Record) -> Result<(), CliError> {
    if record.owner == crate::storage::NOBODY {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "the pair already failed over (arbiter {}: epoch {}, owner {}): to protect the live primary, start this \
         node with `ftvm backup --join`; to cold-start the guest from the disk image, stop every node and remove \
         the arbiter file",
        storage.arbiter.display(),
        record.epoch,
        record.owner
    )))
}

/// Serves the status and metrics endpoints on their listeners (bound at startup).
fn serve_status(host: &Rc<NetHost>, status: Option<TcpListener>, metrics: Option<TcpListener>) {
    for (listener, prometheus) in [(status, false), (metrics, true)] {
        let Some(listener) = listener else { continue };
        let host = host.clone();
        let render = Rc::new(move |path: &str| {
            let snapshot = host.board.borrow().snapshot(host.now(), &host.counters);
            if prometheus || path == "/metrics" {
                (snapshot.prometheus(), "text/plain; version=0.0.4")
            } else if path == "/json" {
                (serde_json::to_string(&snapshot).expect("serialisable"), "application/json")
            } else {
                (snapshot.text(), "text/plain")
            }
        });
        tokio::task::spawn_local(status::serve(listener, render));
    }
}

/// A handshake error that ends the node (a misconfigured pair), or None for one worth a retry.
fn fatal(error: &auth::AuthError) -> Option<CliError> {
    error.is_fatal().then(|| CliError::Usage(error.to_string()))
}

/// The primary's side of the logging channel: connect (retrying until `startup`) and authenticate.
async fn connect(
    name: &str,
    peer: SocketAddr,
    key: &[u8],
    pair_id: u64,
    epoch: u64,
    startup: Duration,
) -> Result<Option<(TcpStream, auth::Session)>, CliError> {
    let deadline = Instant::now() + startup;
    while Instant::now() < deadline {
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(peer)).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handshake = auth::handshake_as_primary(&mut stream, key, pair_id, epoch, name);
        match tokio::time::timeout_at(deadline.into(), handshake).await {
            Ok(Ok(session)) => {
                tracing::info!("{name}: logging channel to {peer} authenticated (epoch {epoch})");
                return Ok(Some((stream, session)));
            }
            Ok(Err(error)) => {
                tracing::error!("{name}: logging channel to {peer} refused: {error}");
                if let Some(fatal) = fatal(&error) {
                    return Err(fatal);
                }
            }
            // Refused (wrong key, another pair) or cut during the handshake: retry until the deadline, since the
            // backup may still be starting; then run without it.
            Err(_) => tracing::error!("{name}: logging channel to {peer}: handshake timed out"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("{name}: no backup at {peer} within {startup:?}; running without a backup");
    Ok(None)
}

/// What a backup checks a primary's handshake against.
struct Gate<'a> {
    name: &'a str,
    key: &'a [u8],
    pair_id: u64,
    storage: &'a Arc<SharedStorage>,
    storage_timeout: Duration,
}

/// One connection's handshake, with its own timeout; the arbiter's epoch is read only once the hello's tag
/// checks out.
async fn handshake_from(
    mut stream: TcpStream,
    name: String,
    key: Vec<u8>,
    pair_id: u64,
    storage: Arc<SharedStorage>,
    storage_timeout: Duration,
) -> Result<(TcpStream, auth::Session), auth::AuthError> {
    let _ = stream.set_nodelay(true);
    let handshake =
        auth::handshake_as_backup(&mut stream, &key, pair_id, &name, arbiter_epoch(storage, storage_timeout));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(session)) => Ok((stream, session)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(auth::AuthError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))),
    }
}

/// The arbiter record's epoch, as the backup's side of a handshake reads it (only once the hello's tag checks
/// out): an error says why storage did not tell.
pub(crate) async fn arbiter_epoch(storage: Arc<SharedStorage>, storage_timeout: Duration) -> Result<u64, String> {
    match storage_call(storage_timeout, move || storage.record().map(|record| record.epoch)).await {
        Some(Ok(epoch)) => Ok(epoch),
        Some(Err(error)) => Err(error.to_string()),
        None => Err(format!("no answer within {storage_timeout:?}")),
    }
}

/// The backup's side: accepts connections until an authenticated primary of this pair completes its handshake,
/// refusing (and logging) everything else, until `startup` runs out. Handshakes run side by side, each with its
/// own timeout, and the first to complete wins: idle or slow connections cannot keep the real primary waiting.
async fn accept(
    gate: &Gate<'_>,
    listener: &TcpListener,
    startup: Duration,
) -> Result<Option<(TcpStream, auth::Session)>, CliError> {
    let name = gate.name;
    let deadline = tokio::time::Instant::now() + startup;
    let mut pending = tokio::task::JoinSet::new();
    let mut order: VecDeque<tokio::task::AbortHandle> = VecDeque::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    order.retain(|handle| !handle.is_finished());
                    if order.len() >= HANDSHAKES_PENDING_MAX {
                        if let Some(oldest) = order.pop_front() {
                            tracing::warn!("{name}: {HANDSHAKES_PENDING_MAX} handshakes pending: dropping the oldest");
                            oldest.abort();
                        }
                    }
                    let task = handshake_from(
                        stream,
                        name.to_string(),
                        gate.key.to_vec(),
                        gate.pair_id,
                        gate.storage.clone(),
                        gate.storage_timeout,
                    );
                    order.push_back(pending.spawn_local(async move { (from, task.await) }));
                }
                Err(error) => {
                    // Out of descriptors, or the like: let the pending handshakes go on, then accept again.
                    tracing::warn!("{name}: accepting a logging channel: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(done) = pending.join_next(), if !pending.is_empty() => match done {
                Ok((from, Ok((stream, session)))) => {
                    tracing::info!("{name}: logging channel from {from} authenticated (epoch {})", session.epoch);
                    // The other handshakes end with `pending`.
                    return Ok(Some((stream, session)));
                }
                Ok((from, Err(error))) => {
                    tracing::error!("{name}: refused logging channel from {from}: {error}");
                    if let Some(fatal) = fatal(&error) {
                        return Err(fatal);
                    }
                }
                Err(_) => {} // evicted
            },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!("{name}: no authenticated primary within {startup:?}");
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes configured with the same name (two processes, each with its own identity) cannot both win the
    /// arbiter; the winner's retry within its process still wins (before: the idempotence was keyed on the
    /// name, so the second node named alike won the epoch the first had won).
    #[test]
    fn two_nodes_named_alike_cannot_both_win_the_arbiter() {
        let storage = crate::storage::scratch("identity");
        let dir = storage.disk.parent().expect("a scratch directory").to_path_buf();
        let (first, second) = (arbiter_identity("a"), arbiter_identity("a"));
        assert_eq!(storage.test_and_set(1, &first).unwrap(), ArbiterOutcome::Won { epoch: 2 });
        assert_eq!(storage.test_and_set(1, &second).unwrap(), ArbiterOutcome::Lost { epoch: 2 }, "the other 'a'");
        assert_eq!(storage.test_and_set(1, &first).unwrap(), ArbiterOutcome::Won { epoch: 2 }, "the winner's retry");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A storage request that timed out must finish before the next one starts: otherwise a retried write can
    /// be overtaken by its first attempt landing late (issue 7).
    #[test]
    fn a_timed_out_storage_request_finishes_before_the_next_starts() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        runtime.block_on(async {
            let stuck = StuckRequests::default();
            let first = order.clone();
            let slow = tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(200));
                first.lock().unwrap().push("first attempt lands");
            });
            assert_eq!(timed(&stuck, Duration::from_millis(20), slow).await, None, "it timed out");
            stuck_wait(&stuck).await;
            let second = order.clone();
            let retry = tokio::task::spawn_blocking(move || second.lock().unwrap().push("retry"));
            assert_eq!(timed(&stuck, Duration::from_secs(5), retry).await, Some(()));
        });
        assert_eq!(*order.lock().unwrap(), vec!["first attempt lands", "retry"]);
    }
}
