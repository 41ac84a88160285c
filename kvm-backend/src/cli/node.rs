//! `ftvm primary` and `ftvm backup`: one node of a real pair. The protocol is `ft::driver::run`, the same code
//! the simulator runs; this is its `Host` over real sockets and files: a wall clock, UDP heartbeats, the shared
//! disk image and arbiter of [`SharedStorage`], the authenticated logging channel of [`auth`], and the guest's
//! service address, bound by the live primary only.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft::driver::{Arbiter, BlockStorage, Clock, Datagrams, Observation, Observer, Outside, StorageError, WriteStamp};
use ft::log::{DiskTarget, Output, OutputKind};
use ft::{Action, ArbiterOutcome, Event, Node};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::cli::auth::{self, ChannelCounters};
use crate::cli::config::{NodeConfig, DISK_SECTORS_DEFAULT, STORAGE_TIMEOUT_MS_DEFAULT};
use crate::cli::error::CliError;
use crate::cli::machine::{self, GuestImage, OsEntropy};
use crate::cli::status::{self, Board, SharedBoard};
use crate::cli::storage::SharedStorage;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAs {
    Primary,
    Backup,
}

struct NetHost {
    start: Instant,
    name: String,
    key: Vec<u8>,
    pair_id: u64,
    heartbeat: UdpSocket,
    peer_heartbeat: SocketAddr,
    /// `sent_ms` of the newest heartbeat accepted: older or repeated ones are replays (or reordered) and dropped.
    heartbeat_last_ms: std::cell::Cell<Option<u64>>,
    service_addr: SocketAddr,
    service: RefCell<Option<Rc<UdpSocket>>>,
    /// Run (with `sh -c`) when this node goes live, before it binds the service: moves the service IP and
    /// announces it (gratuitous ARP) in a deployment where the two hosts have their own addresses.
    go_live_command: Option<String>,
    storage: Arc<SharedStorage>,
    storage_timeout: Duration,
    /// Storage requests that timed out and may still run: later requests wait for them (see `blocking`).
    stuck_storage: StuckRequests,
    board: SharedBoard,
    counters: Rc<ChannelCounters>,
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

    /// The service socket, bound (with retries) once this node is live.
    async fn bind_service(&self) -> Option<Rc<UdpSocket>> {
        if let Some(socket) = self.service.borrow().clone() {
            return Some(socket);
        }
        if !self.board.borrow().is_live() {
            return None;
        }
        match UdpSocket::bind(self.service_addr).await {
            Ok(socket) => {
                tracing::info!("{}: service address {} bound", self.name, self.service_addr);
                let socket = Rc::new(socket);
                *self.service.borrow_mut() = Some(socket.clone());
                self.board.borrow_mut().snapshot.service_bound = true;
                Some(socket)
            }
            Err(error) => {
                tracing::debug!("{}: binding service address {}: {error}; retrying", self.name, self.service_addr);
                None
            }
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
            // More guest work is ready: let the other branches be polled once, without a timer (tokio's timers
            // have millisecond resolution, which would add up to 1 ms to every guest slice).
            tokio::task::yield_now().await;
            return;
        }
        tokio::time::sleep(Duration::from_nanos(deadline_ns - now)).await;
    }
}

impl Datagrams for NetHost {
    async fn send_heartbeat(&self, frame: Vec<u8>) {
        let datagram = auth::seal_heartbeat(&self.key, self.pair_id, frame);
        let _ = self.heartbeat.send_to(&datagram, self.peer_heartbeat).await;
    }

    async fn recv_heartbeat(&self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 512];
        loop {
            let (length, from) = self.heartbeat.recv_from(&mut buffer).await.ok()?;
            match auth::open_heartbeat(&self.key, self.pair_id, &buffer[..length]) {
                Some(frame) => {
                    if let Ok((_, ft::wire::Message::Heartbeat { sent_ms, .. })) = ft::wire::decode(&frame) {
                        if self.heartbeat_last_ms.get().is_some_and(|last| sent_ms <= last) {
                            tracing::debug!("{}: heartbeat from {from} dropped: replayed or reordered", self.name);
                            continue;
                        }
                        self.heartbeat_last_ms.set(Some(sent_ms));
                    }
                    return Some(frame);
                }
                None => tracing::warn!("{}: heartbeat from {from} refused: bad tag (wrong key or tampered)", self.name),
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
        let me = self.name.clone();
        match self.blocking(move |storage| storage.test_and_set(expected_epoch, &me)).await {
            Some(Ok(outcome)) => {
                tracing::info!("{}: test-and-set on epoch {expected_epoch}: {outcome:?}", self.name);
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
            OutputKind::NetTransmit => {
                if let (Some((target, payload)), Some(socket)) =
                    (ft::kv::datagram_from_frame(&output.bytes), self.service.borrow().as_ref())
                {
                    let _ = socket.try_send_to(payload, SocketAddr::V4(target));
                }
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
        loop {
            let Some(socket) = self.bind_service().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let (length, from) = socket.recv_from(&mut buffer).await.ok()?;
            let SocketAddr::V4(from) = from else { continue };
            return Some(ft::kv::frame_from_datagram(from, &buffer[..length]));
        }
    }
}

impl Observer for NetHost {
    fn observe(&self, _now_ns: u64, observation: Observation) {
        // The clock now, not the driver's `now_ns` (taken before the guest slice that produced the action): the
        // hold and ack-delay figures measure when things really happen.
        let now_ns = self.now();
        let mut board = self.board.borrow_mut();
        match observation {
            Observation::Action(action) => {
                board.observe_action(now_ns, action);
                if let Action::Notify(event) = action {
                    match event {
                        Event::Checkpoint { .. } => {}
                        Event::WentLive { .. } => {
                            tracing::warn!("{}: {event:?}", self.name);
                            if let Some(command) = &self.go_live_command {
                                run_go_live_command(&self.name, command);
                            }
                        }
                        _ => tracing::info!("{}: {event:?}", self.name),
                    }
                }
            }
            Observation::Received(message) => board.observe_received(now_ns, message),
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
        Ok(status) if status.success() => tracing::info!("{name}: go-live command succeeded"),
        Ok(status) => tracing::error!("{name}: go-live command {command:?} failed: {status}"),
        Err(error) => tracing::error!("{name}: go-live command {command:?}: {error}"),
    }
}

/// `ftvm primary` / `ftvm backup`.
pub fn run(kvm_path: &Path, config: NodeConfig, start_as: StartAs) -> Result<(), CliError> {
    let guest_spec = NodeConfig::required(&config.guest, "guest")?.clone();
    let image = GuestImage::resolve(&guest_spec)?;
    if config.machine.as_deref() != Some("model") {
        machine::check_kvm(kvm_path)?;
    }
    let key = config.key()?;
    let storage = Arc::new(SharedStorage {
        disk: NodeConfig::required(&config.disk, "disk")?.clone(),
        arbiter: NodeConfig::required(&config.arbiter, "arbiter")?.clone(),
        sync_writes: config.sync_writes.unwrap_or(true),
    });
    let protocol = config.protocol(image.digest());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::io("tokio runtime", &error))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let name = config.name.clone().unwrap_or_else(|| format!("{start_as:?}").to_lowercase());
        let start = Instant::now();
        // Storage may be unreachable at start: wait for it (nothing can go live without it anyway).
        let sectors = config.disk_sectors.unwrap_or(DISK_SECTORS_DEFAULT);
        let record = loop {
            let result = storage.create_if_missing(sectors).and_then(|()| storage.record());
            match result {
                Ok(record) => break record,
                Err(error) => {
                    tracing::warn!("{name}: shared storage unreachable ({error}); waiting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if start_as == StartAs::Primary && record.owner != crate::cli::storage::NOBODY {
            // Somebody went live in this pair already: a fresh primary would start its guest from the disk image
            // and race the live one. Re-protection (cloning the live VM to a new backup) is not implemented.
            return Err(CliError::Usage(format!(
                "the pair already failed over (arbiter {}: epoch {}, owner {}); re-protection is not implemented: \
                 to cold-start the guest from the disk image, stop every node and remove the arbiter file",
                storage.arbiter.display(),
                record.epoch,
                record.owner
            )));
        }
        let disk_sectors = storage.disk_sectors().map_err(|error| CliError::io("disk image", &error))?;
        let heartbeat_listen = *NodeConfig::required(&config.heartbeat_listen, "heartbeat_listen")?;
        let heartbeat = UdpSocket::bind(heartbeat_listen)
            .await
            .map_err(|error| CliError::io(format!("heartbeat address {heartbeat_listen}"), &error))?;
        let service_addr = *NodeConfig::required(&config.service, "service")?;
        let peer = match start_as {
            StartAs::Primary => config.channel_peer.map(|a| a.to_string()).unwrap_or_default(),
            StartAs::Backup => config.heartbeat_peer.map(|a| a.to_string()).unwrap_or_default(),
        };
        let mut board = Board::default();
        board.snapshot.name = name.clone();
        board.snapshot.role = match start_as {
            StartAs::Primary => "primary".into(),
            StartAs::Backup => "backup".into(),
        };
        board.snapshot.epoch = record.epoch;
        board.snapshot.peer = peer;
        board.snapshot.service = service_addr.to_string();
        let board = Rc::new(RefCell::new(board));
        let host = Rc::new(NetHost {
            start,
            name: name.clone(),
            key: key.clone(),
            pair_id: protocol.pair_id,
            heartbeat,
            peer_heartbeat: *NodeConfig::required(&config.heartbeat_peer, "heartbeat_peer")?,
            heartbeat_last_ms: std::cell::Cell::new(None),
            service_addr,
            service: RefCell::new(None),
            go_live_command: config.go_live_command.clone(),
            storage: storage.clone(),
            storage_timeout: Duration::from_millis(config.storage_timeout_ms.unwrap_or(STORAGE_TIMEOUT_MS_DEFAULT)),
            stuck_storage: StuckRequests::default(),
            board: board.clone(),
            counters: Rc::new(ChannelCounters::default()),
        });
        serve_status(&host, config.status, config.metrics).await?;
        let (guest, guest_handle) = machine::new_node_guest(kvm_path, &image, config.machine.as_deref())?;
        let mut entropy = OsEntropy::open()?;
        let startup = Duration::from_millis(protocol.startup_timeout_ms);
        let (node, channel) = match start_as {
            StartAs::Primary => {
                let epoch = record.epoch;
                // The primary is live from the start: it takes the service address (its go-live command, if any,
                // moves the IP here) and binds it, waiting while an old primary still holds it.
                if let Some(command) = &config.go_live_command {
                    run_go_live_command(&name, command);
                }
                while host.bind_service().await.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let peer = *NodeConfig::required(&config.channel_peer, "channel_peer")?;
                let channel = connect(&name, peer, &key, protocol.pair_id, epoch, startup).await;
                tracing::info!("{name}: primary of pair {} at epoch {epoch}, guest {}", protocol.pair_id, image.name);
                let primary = ft::primary::Primary::new(protocol.clone(), guest, disk_sectors, epoch, host.now());
                (Node::Primary(Box::new(primary)), channel)
            }
            StartAs::Backup => {
                let listen = *NodeConfig::required(&config.channel_listen, "channel_listen")?;
                let listener = TcpListener::bind(listen)
                    .await
                    .map_err(|error| CliError::io(format!("logging channel address {listen}"), &error))?;
                tracing::info!("{name}: backup of pair {}, waiting for the primary on {listen}", protocol.pair_id);
                let channel = accept(&name, &listener, &key, protocol.pair_id, &storage, startup).await;
                let backup = ft::backup::Backup::new(protocol.clone(), guest, disk_sectors, host.now());
                (Node::Backup(Box::new(backup)), channel)
            }
        };
        let channel = channel.map(|(stream, session)| {
            board.borrow_mut().snapshot.epoch = session.epoch;
            auth::secure(stream, session, start_as == StartAs::Primary, host.counters.clone())
        });
        let stopped = ft::driver::run(host.clone(), node, channel, &mut entropy).await;
        {
            let mut board = board.borrow_mut();
            board.snapshot.role = "stopped".into();
            board.snapshot.stopped = Some(format!("{stopped:?}"));
        }
        tracing::warn!("{name}: stopped: {stopped:?}");
        let failure = guest_handle.as_ref().and_then(kvm_backend::GuestHandle::failure);
        match stopped {
            // A shutdown (triple fault, MMIO, emulation failure) reaches the platform as a power-off with status
            // u32::MAX; the KVM exit says why.
            ft::Stopped::PoweredOff { .. } if failure.is_some() => {
                Err(CliError::GuestFailed { guest: guest_spec.clone(), reason: failure.unwrap_or_default() })
            }
            ft::Stopped::PoweredOff { status: 0 } => Ok(()),
            ft::Stopped::PoweredOff { status } => Err(CliError::GuestStatus { guest: guest_spec.clone(), status }),
            ft::Stopped::GuestFailed(reason) => Err(CliError::GuestFailed { guest: guest_spec.clone(), reason }),
            ft::Stopped::Diverged(divergence) => Err(CliError::Diverged(divergence)),
            other => Err(CliError::Protocol(format!("{name} stopped: {other:?}"))),
        }
    })
}

async fn serve_status(
    host: &Rc<NetHost>,
    status_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
) -> Result<(), CliError> {
    for (addr, prometheus) in [(status_addr, false), (metrics_addr, true)] {
        let Some(addr) = addr else { continue };
        let listener =
            TcpListener::bind(addr).await.map_err(|error| CliError::io(format!("status address {addr}"), &error))?;
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
    Ok(())
}

/// The primary's side of the logging channel: connect (retrying until `startup`) and authenticate.
async fn connect(
    name: &str,
    peer: SocketAddr,
    key: &[u8],
    pair_id: u64,
    epoch: u64,
    startup: Duration,
) -> Option<(TcpStream, auth::Session)> {
    let deadline = Instant::now() + startup;
    while Instant::now() < deadline {
        let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(peer)).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handshake = auth::handshake_as_primary(&mut stream, key, pair_id, epoch);
        match tokio::time::timeout_at(deadline.into(), handshake).await {
            Ok(Ok(session)) => {
                tracing::info!("{name}: logging channel to {peer} authenticated (epoch {epoch})");
                return Some((stream, session));
            }
            // Refused (wrong key, another pair) or cut during the handshake: retry until the deadline, since the
            // backup may still be starting; then run without it.
            Ok(Err(error)) => tracing::error!("{name}: logging channel to {peer} refused: {error}"),
            Err(_) => tracing::error!("{name}: logging channel to {peer}: handshake timed out"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("{name}: no backup at {peer} within {startup:?}; running without a backup");
    None
}

/// The backup's side: accept until an authenticated primary of this pair connects, refusing (and logging)
/// everything else, until `startup` runs out.
async fn accept(
    name: &str,
    listener: &TcpListener,
    key: &[u8],
    pair_id: u64,
    storage: &Arc<SharedStorage>,
    startup: Duration,
) -> Option<(TcpStream, auth::Session)> {
    let deadline = tokio::time::Instant::now() + startup;
    loop {
        let accepted = tokio::time::timeout_at(deadline, listener.accept()).await;
        let Ok(Ok((mut stream, from))) = accepted else {
            tracing::warn!("{name}: no authenticated primary within {startup:?}");
            return None;
        };
        let _ = stream.set_nodelay(true);
        let storage = storage.clone();
        let arbiter_epoch =
            tokio::task::spawn_blocking(move || storage.record().map(|r| r.epoch)).await.ok().and_then(Result::ok);
        let Some(arbiter_epoch) = arbiter_epoch else {
            tracing::error!("{name}: refused logging channel from {from}: arbiter unreachable, cannot check its epoch");
            continue;
        };
        let handshake = auth::handshake_as_backup(&mut stream, key, pair_id, arbiter_epoch);
        match tokio::time::timeout(Duration::from_secs(2), handshake).await {
            Ok(Ok(session)) => {
                tracing::info!("{name}: logging channel from {from} authenticated (epoch {})", session.epoch);
                return Some((stream, session));
            }
            Ok(Err(error)) => tracing::error!("{name}: refused logging channel from {from}: {error}"),
            Err(_) => tracing::error!("{name}: refused logging channel from {from}: handshake timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
