//! A simulated FT host: runs one protocol node (`ft::driver::run`) over turmoil sockets, applies the faults that
//! live inside a host (heartbeat damage, a crash aimed at a protocol edge), and reports what it does to the
//! world (`observe.rs`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ft::driver::{
    Arbiter, BlockStorage, Clock, Datagrams, GuestExits, Observation, Observer, Outside, StorageError, WriteStamp,
};
use ft::log::{DiskTarget, Output, OutputKind};
use ft::{ArbiterOutcome, Config, EntropySource, Node, Role};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use turmoil::net::{TcpListener, TcpStream, UdpSocket};

use crate::channel::SimChannel;
use crate::hashtap::HashTap;
use crate::model::{ModelGuest, Workload};
use crate::plan::{Edge, HeartbeatFault};
use crate::storage_host::{self, DISK_SECTORS};
use crate::world::{NodeId, SharedWorld};

/// Builds the guest a node runs: the model guest, or (in tests that have KVM) a real one.
pub type GuestFactory = Rc<dyn Fn() -> Box<dyn ft::Guest>>;

/// The factory of the model guest running `workload`.
pub fn model_guests(workload: Workload) -> GuestFactory {
    Rc::new(move || Box::new(ModelGuest::new(workload)))
}

pub const SERVICE_PORT: u16 = 7000;
pub const HEARTBEAT_PORT: u16 = 7001;
pub const CHANNEL_PORT: u16 = 7002;
/// Where a live primary without a backup takes a restarted node that rejoins as its backup.
pub const JOIN_PORT: u16 = 7003;
/// A restarted node's pause between two attempts to join.
const REJOIN_RETRY_MS: u64 = 100;
/// Simulated CPU time of a guest slice on a live primary.
pub const PRIMARY_SLICE_NS: u64 = 1_000_000;

pub struct SimEntropy(pub ChaCha8Rng);

impl EntropySource for SimEntropy {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
}

/// What a node host needs to know of its scenario.
#[derive(Clone)]
pub struct NodeSetup {
    pub config: Config,
    pub guests: GuestFactory,
    pub seed: u64,
    /// Simulated CPU time of one guest slice on this host.
    pub slice_ns: u64,
    pub storage_timeout: Duration,
    /// The network device's Ethernet mode: frames are raw Ethernet frames, exchanged with the TCP clients' host
    /// (`crate::tcp_client`) as datagrams on `SERVICE_PORT`, instead of kv datagrams bridged to frames.
    pub ethernet: bool,
}

pub struct SimHost {
    pub(crate) id: NodeId,
    pub(crate) world: SharedWorld,
    heartbeat: UdpSocket,
    service: UdpSocket,
    /// Ethernet mode: where the guest's frames go (the simulated link to the TCP clients).
    ethernet_link: Option<SocketAddr>,
    peer_heartbeat: SocketAddr,
    own_heartbeat: SocketAddr,
    storage: storage_host::Client,
    slice_ns: u64,
    pub(crate) buffered_max: usize,
    /// Died at its crash point: nothing more leaves this host (the scenario loop crashes it at the next step).
    pub(crate) dead: Rc<Cell<bool>>,
    /// Reissued disk requests left to count after this node went live (for `Edge::DuringReissue`).
    pub(crate) reissues_left: Cell<u64>,
    /// Joiners connect here once this node is a live primary without a backup.
    joiners: TcpListener,
}

pub fn now_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

impl SimHost {
    /// Counts one arrival at `edge`; true if this node must die here (its crash point).
    pub(crate) fn reached(&self, edge: Edge) -> bool {
        let mut world = self.world.borrow_mut();
        let Some(point) = world.faults.crash_point.filter(|p| p.node == self.id && p.edge == edge) else {
            return false;
        };
        let count = &mut world.faults.edge_count[self.id.index()];
        *count += 1;
        *count == point.nth
    }

    /// Dies at the crash point: from now on the host sends nothing, and the scenario loop crashes it.
    pub(crate) fn die(&self, edge: Edge) {
        if self.dead.replace(true) {
            return;
        }
        match edge {
            Edge::AfterAck => cov_mark::hit!(crash_after_ack),
            Edge::AfterRelease => cov_mark::hit!(crash_after_release),
            Edge::DuringTestAndSet => cov_mark::hit!(crash_during_test_and_set),
            Edge::DuringReissue => cov_mark::hit!(crash_during_reissue),
            Edge::DuringPowerOff => cov_mark::hit!(crash_during_power_off),
            Edge::DuringClone => cov_mark::hit!(crash_during_clone),
        }
        let mut world = self.world.borrow_mut();
        world.now_ns = now_ns();
        world.crashed[self.id.index()] = true;
        let fired_ns = world.now_ns;
        world.crash_point_fired_ns.get_or_insert(fired_ns);
        world.losses.push((fired_ns, self.id));
        world.crash_requests.push(self.id);
        world.counts.crash_points += 1;
        world.log("NEMESIS", format!("crash {} {edge:?}", self.id.host()));
    }
}

impl Clock for SimHost {
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    /// A slow host is slow while it replays (a CPU-starved backup); once live it runs at the primary's pace, so
    /// that liveness measures the protocol, not an overloaded machine.
    fn guest_slice_ns(&self) -> u64 {
        let replaying = self.world.borrow().role[self.id.index()] == Some(Role::Backup);
        if replaying {
            self.slice_ns
        } else {
            self.slice_ns.min(PRIMARY_SLICE_NS)
        }
    }

    async fn sleep_until_ns(&self, deadline_ns: u64) {
        let now = now_ns();
        if deadline_ns == u64::MAX {
            return std::future::pending().await;
        }
        tokio::time::sleep(Duration::from_nanos(deadline_ns.saturating_sub(now))).await;
    }
}

impl Datagrams for SimHost {
    async fn send_heartbeat(&self, mut frame: Vec<u8>) {
        if self.dead.get() {
            return;
        }
        let fault = {
            let mut world = self.world.borrow_mut();
            world.last_heartbeat[self.id.index()] = Some(frame.clone());
            world.faults.heartbeats[self.id.index()]
        };
        match fault {
            Some(HeartbeatFault::Corrupt) => {
                let mut world = self.world.borrow_mut();
                let at = world.rng.random_range(0..frame.len());
                frame[at] ^= 1 << world.rng.random_range(0..8u8);
            }
            Some(HeartbeatFault::Reflect) => {
                let _ = self.heartbeat.send_to(&frame, self.own_heartbeat).await;
            }
            Some(HeartbeatFault::Replay) | None => {}
        }
        let _ = self.heartbeat.send_to(&frame, self.peer_heartbeat).await;
    }

    async fn recv_heartbeat(&self) -> Option<Vec<u8>> {
        // The driver makes this future anew on every turn of its loop: a buffer on the stack, not the heap.
        let mut buffer = [0u8; 256];
        let (length, _) = self.heartbeat.recv_from(&mut buffer).await.ok()?;
        Some(buffer[..length].to_vec())
    }
}

impl BlockStorage for SimHost {
    async fn storage_read(&self, epoch: u64, target: DiskTarget) -> Result<Vec<u8>, StorageError> {
        if self.dead.get() {
            return std::future::pending().await;
        }
        self.storage.read(epoch, target).await
    }

    async fn storage_write(&self, stamp: WriteStamp, target: DiskTarget, data: Vec<u8>) -> Result<(), StorageError> {
        if self.dead.get() {
            return std::future::pending().await;
        }
        self.storage.write(stamp, target, data).await
    }
}

impl Arbiter for SimHost {
    async fn test_and_set(&self, expected_epoch: u64) -> ArbiterOutcome {
        if self.dead.get() {
            return std::future::pending().await;
        }
        let outcome = self.storage.test_and_set(expected_epoch).await;
        if outcome != ArbiterOutcome::Unreachable && self.reached(Edge::DuringTestAndSet) {
            // Storage did it; the answer never reaches the node.
            self.die(Edge::DuringTestAndSet);
            return std::future::pending().await;
        }
        outcome
    }
}

impl ft::driver::Joiners for SimHost {
    async fn accept_joiner(&self) -> Box<dyn ft::driver::ChannelStream> {
        loop {
            if self.dead.get() {
                return std::future::pending().await;
            }
            if let Ok((stream, _)) = self.joiners.accept().await {
                let channel = SimChannel::new(stream, self.id, self.world.clone(), self.dead.clone());
                return Box::new(channel);
            }
        }
    }
}

impl GuestExits for SimHost {
    /// Simulated guests run on the driver's thread (`RunStart::Done`): no run ever goes on in the background.
    async fn guest_exit(&self) {
        std::future::pending::<()>().await;
    }
}

impl Outside for SimHost {
    fn release(&self, _epoch: u64, output: &Output) {
        if self.dead.get() || output.kind != OutputKind::NetTransmit {
            return;
        }
        if let Some(link) = self.ethernet_link {
            let _ = self.service.try_send_to(&output.bytes, link);
        } else if let Some((target, payload)) = ft::kv::datagram_from_frame(&output.bytes) {
            // try_send_to: a datagram to a partitioned client is simply lost, as on a real network.
            let _ = self.service.try_send_to(payload, SocketAddr::V4(target));
        }
        if self.reached(Edge::AfterRelease) {
            self.die(Edge::AfterRelease);
        }
    }

    async fn recv_frame(&self) -> Option<Vec<u8>> {
        // Made anew on every turn of the driver's loop: a buffer on the stack, not the heap.
        let mut buffer = [0u8; ft::abi::NET_FRAME_BYTES_MAX];
        loop {
            let (length, from) = self.service.recv_from(&mut buffer).await.ok()?;
            if self.ethernet_link.is_some() {
                return Some(buffer[..length].to_vec());
            }
            let SocketAddr::V4(from) = from else { continue };
            return Some(ft::kv::frame_from_datagram(from, &buffer[..length]));
        }
    }
}

impl Observer for SimHost {
    fn observe(&self, now_ns: u64, observation: Observation) {
        if !self.dead.get() {
            crate::observe::observe(self, now_ns, observation);
        }
    }
}

/// The body of a node host. A restarted (bounced) host comes back without its VM and rejoins the pair: it
/// asks the live primary for a clone, and becomes its backup (re-protection), as often as it takes.
pub async fn node_main(id: NodeId, world: SharedWorld, setup: NodeSetup) -> turmoil::Result {
    let restarted = std::mem::replace(&mut world.borrow_mut().started[id.index()], true);
    let config = setup.config.clone();
    let peer = id.other().host();
    let joiners = TcpListener::bind(("0.0.0.0", JOIN_PORT)).await?;
    let host = Rc::new(SimHost {
        id,
        world: world.clone(),
        heartbeat: UdpSocket::bind(("0.0.0.0", HEARTBEAT_PORT)).await?,
        service: UdpSocket::bind(("0.0.0.0", SERVICE_PORT)).await?,
        ethernet_link: setup
            .ethernet
            .then(|| SocketAddr::new(turmoil::lookup(crate::tcp_client::HOST), crate::tcp_client::LINK_PORT)),
        peer_heartbeat: SocketAddr::new(turmoil::lookup(peer), HEARTBEAT_PORT),
        own_heartbeat: SocketAddr::new(turmoil::lookup(id.host()), HEARTBEAT_PORT),
        storage: storage_host::Client { node: id, timeout: setup.storage_timeout },
        slice_ns: setup.slice_ns,
        buffered_max: config.log_entries_buffered_max,
        dead: world.borrow().dead[id.index()].clone(),
        reissues_left: Cell::new(0),
        joiners,
    });
    let mut entropy = SimEntropy(ChaCha8Rng::seed_from_u64(setup.seed ^ (0x5eed_0000 + id as u64)));
    if restarted {
        {
            let mut world = world.borrow_mut();
            world.crashed[id.index()] = false;
            world.restarts[id.index()] += 1;
            world.log(id.host(), "restarted without its VM: rejoining the pair");
        }
        return rejoin(id, world, setup, host, entropy).await;
    }
    let guest: Box<dyn ft::Guest> = Box::new(HashTap::new((setup.guests)(), id, world.clone()));
    let now = now_ns();
    let (node, stream) = match id {
        NodeId::A => {
            world.borrow_mut().role[0] = Some(Role::Primary);
            world.borrow_mut().role_epoch[0] = 1;
            let node = Node::Primary(Box::new(ft::primary::Primary::new(config.clone(), guest, DISK_SECTORS, 1, now)));
            (node, connect(peer, CHANNEL_PORT, config.startup_timeout_ms).await)
        }
        NodeId::B => {
            world.borrow_mut().role[1] = Some(Role::Backup);
            world.borrow_mut().role_epoch[1] = 1;
            let node = Node::Backup(Box::new(ft::backup::Backup::new(config.clone(), guest, DISK_SECTORS, now)));
            (node, accept(config.startup_timeout_ms).await)
        }
    };
    let channel = stream.map(|inner| SimChannel::new(inner, id, world.clone(), host.dead.clone()));
    let stopped = ft::driver::run(host.clone(), node, channel, &mut entropy).await;
    stopped_for_good(&host, &world, id, &stopped);
    std::future::pending().await
}

/// Asks the other node for a clone until one succeeds; the node then runs as a backup (and perhaps later as a
/// primary) until it stops for good.
async fn rejoin(
    id: NodeId,
    world: SharedWorld,
    setup: NodeSetup,
    host: Rc<SimHost>,
    mut entropy: SimEntropy,
) -> turmoil::Result {
    let config = setup.config.clone();
    loop {
        world.borrow_mut().role[id.index()] = Some(Role::Joining);
        let Some(stream) = connect(id.other().host(), JOIN_PORT, config.startup_timeout_ms).await else {
            tokio::time::sleep(Duration::from_millis(REJOIN_RETRY_MS)).await;
            continue;
        };
        let guest: Box<dyn ft::Guest> = Box::new(HashTap::new((setup.guests)(), id, world.clone()));
        let joiner = ft::join::Joiner::new(config.clone(), guest, DISK_SECTORS, id as u64 + 0xa, now_ns());
        let channel = SimChannel::new(stream, id, world.clone(), host.dead.clone());
        let stopped = ft::driver::run(host.clone(), Node::Joining(Box::new(joiner)), Some(channel), &mut entropy).await;
        if matches!(stopped, ft::Stopped::JoinFailed(_)) && !host.dead.get() {
            world.borrow_mut().log(id.host(), format!("{stopped}: trying again"));
            tokio::time::sleep(Duration::from_millis(REJOIN_RETRY_MS)).await;
            continue;
        }
        stopped_for_good(&host, &world, id, &stopped);
        return std::future::pending().await;
    }
}

fn stopped_for_good(host: &SimHost, world: &SharedWorld, id: NodeId, stopped: &ft::Stopped) {
    if !host.dead.get() {
        let mut world = world.borrow_mut();
        world.now_ns = now_ns();
        world.role[id.index()] = Some(Role::Stopped);
        world.log(id.host(), format!("stopped: {stopped}"));
    }
}

async fn connect(peer: &str, port: u16, timeout_ms: u64) -> Option<TcpStream> {
    let deadline = now_ns() + timeout_ms * 1_000_000;
    while now_ns() < deadline {
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(100), TcpStream::connect((peer, port))).await
        {
            return Some(stream);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn accept(timeout_ms: u64) -> Option<TcpStream> {
    let listener = TcpListener::bind(("0.0.0.0", CHANNEL_PORT)).await.ok()?;
    let accepted = tokio::time::timeout(Duration::from_millis(timeout_ms), listener.accept()).await;
    accepted.ok()?.ok().map(|(stream, _)| stream)
}

/// The network replaying recorded heartbeats (`HeartbeatFault::Replay`): every few milliseconds, the last
/// heartbeat a node sent reaches its peer again, also after the node died. Runs on the storage host, which
/// never crashes.
pub async fn replay_heartbeats(world: SharedWorld) {
    let Ok(socket) = UdpSocket::bind(("0.0.0.0", HEARTBEAT_PORT)).await else { return };
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let replays: Vec<(NodeId, Vec<u8>)> = {
            let world = world.borrow();
            NodeId::ALL
                .into_iter()
                .filter(|node| world.faults.heartbeats[node.index()] == Some(HeartbeatFault::Replay))
                .filter_map(|node| Some((node, world.last_heartbeat[node.index()].clone()?)))
                .collect()
        };
        for (node, frame) in replays {
            let peer = SocketAddr::new(turmoil::lookup(node.other().host()), HEARTBEAT_PORT);
            let _ = socket.send_to(&frame, peer).await;
        }
    }
}
