//! A simulated FT host: runs one protocol node over turmoil sockets and reports to the world.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ft::driver::{Arbiter, BlockStorage, Clock, Datagrams, Observation, Observer, Outside, StorageError, WriteStamp};
use ft::log::{DiskTarget, Entry, Output, OutputKind};
use ft::storage::StorageRequest;
use ft::wire::Message;
use ft::{Action, ArbiterOutcome, Config, EntropySource, Event, Node, Role};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use turmoil::net::{TcpListener, TcpStream, UdpSocket};

use crate::check;
use crate::model::{ModelGuest, Workload};

/// Builds the guest a node runs: the model guest, or (in tests that have KVM) a real one.
pub type GuestFactory = Rc<dyn Fn() -> Box<dyn ft::Guest>>;

/// The factory of the model guest running `workload`.
pub fn model_guests(workload: Workload) -> GuestFactory {
    Rc::new(move || Box::new(ModelGuest::new(workload)))
}
use crate::storage_host::{self, DISK_SECTORS};
use crate::world::{NodeId, Release, SharedWorld};

pub const SERVICE_PORT: u16 = 7000;
pub const HEARTBEAT_PORT: u16 = 7001;
pub const CHANNEL_PORT: u16 = 7002;
/// Simulated CPU time of one guest slice.
const GUEST_SLICE_NS: u64 = 1_000_000;

pub struct SimEntropy(pub ChaCha8Rng);

impl EntropySource for SimEntropy {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
}

struct SimHost {
    id: NodeId,
    world: SharedWorld,
    heartbeat: UdpSocket,
    service: UdpSocket,
    peer_heartbeat: SocketAddr,
    buffered_max: usize,
}

pub fn now_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

impl Clock for SimHost {
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    fn guest_slice_ns(&self) -> u64 {
        GUEST_SLICE_NS
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
    async fn send_heartbeat(&self, frame: Vec<u8>) {
        let _ = self.heartbeat.send_to(&frame, self.peer_heartbeat).await;
    }

    async fn recv_heartbeat(&self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; 256];
        let (length, _) = self.heartbeat.recv_from(&mut buffer).await.ok()?;
        buffer.truncate(length);
        Some(buffer)
    }
}

impl BlockStorage for SimHost {
    async fn storage_read(&self, epoch: u64, target: DiskTarget) -> Result<Vec<u8>, StorageError> {
        storage_host::read(epoch, target).await
    }

    async fn storage_write(&self, stamp: WriteStamp, target: DiskTarget, data: Vec<u8>) -> Result<(), StorageError> {
        storage_host::write(stamp, target, data).await
    }
}

impl Arbiter for SimHost {
    async fn test_and_set(&self, expected_epoch: u64) -> ArbiterOutcome {
        storage_host::test_and_set(expected_epoch, self.id).await
    }
}

impl Outside for SimHost {
    fn release(&self, _epoch: u64, output: &Output) {
        if output.kind != OutputKind::NetTransmit {
            return;
        }
        if let Some((target, payload)) = ft::kv::datagram_from_frame(&output.bytes) {
            // try_send_to: a datagram to a partitioned client is simply lost, as on a real network.
            let _ = self.service.try_send_to(payload, SocketAddr::V4(target));
        }
    }

    async fn recv_frame(&self) -> Option<Vec<u8>> {
        let mut buffer = vec![0u8; ft::abi::NET_FRAME_BYTES_MAX];
        loop {
            let (length, from) = self.service.recv_from(&mut buffer).await.ok()?;
            let SocketAddr::V4(from) = from else { continue };
            return Some(ft::kv::frame_from_datagram(from, &buffer[..length]));
        }
    }
}

impl Observer for SimHost {
    fn observe(&self, now_ns: u64, observation: Observation) {
        let mut world = self.world.borrow_mut();
        world.now_ns = now_ns;
        let who = self.id.host();
        match observation {
            Observation::Action(Action::Notify(event)) => record_event(&mut world, self.id, event),
            Observation::Action(Action::Release { output, log_index }) => {
                let epoch = world.role_epoch[self.id.index()];
                let release = Release {
                    at_ns: now_ns,
                    node: self.id,
                    epoch,
                    seq: output.seq,
                    kind: output.kind,
                    digest: output.digest(),
                    log_index: *log_index,
                };
                check::output_rule::on_release(&mut world, &release);
                if output.kind == OutputKind::Console {
                    let line = String::from_utf8_lossy(&output.bytes).trim_end().to_string();
                    world.log(who, format!("console #{}: {line}", output.seq));
                }
                world.releases.push(release);
            }
            Observation::Action(Action::Storage {
                epoch,
                request: StorageRequest::Write { output_seq, log_index, data, .. },
            }) => {
                let release = Release {
                    at_ns: now_ns,
                    node: self.id,
                    epoch: *epoch,
                    seq: *output_seq,
                    kind: OutputKind::DiskWrite,
                    digest: xxhash_rust::xxh3::xxh3_64(data),
                    log_index: *log_index,
                };
                check::output_rule::on_release(&mut world, &release);
                world.releases.push(release);
            }
            Observation::Received(Message::Log { index, entry }) => {
                check::replay::on_log_received(&mut world, *index);
                if let Entry::Output { record, .. } = entry {
                    if record.kind != OutputKind::DiskWrite {
                        world.logged_outputs.insert(record.seq, record.kind);
                    }
                }
            }
            Observation::Received(Message::Ack { received, replayed, .. }) => {
                check::replay::on_ack(&mut world, *received, *replayed, self.buffered_max);
            }
            Observation::ChannelError(reason) => {
                world.counts.channel_errors += 1;
                world.log(who, format!("channel: {reason}"));
            }
            _ => {}
        }
    }
}

fn record_event(world: &mut crate::world::World, id: NodeId, event: &Event) {
    let who = id.host();
    match event {
        Event::Checkpoint { .. } => {
            world.counts.checkpoints_verified += 1;
            return;
        }
        Event::WentLive { epoch, reissued_outputs, reissued_disk_requests, .. } => {
            world.live.entry(*epoch).or_default().push(id);
            world.role[id.index()] = Some(Role::Unprotected);
            world.role_epoch[id.index()] = *epoch;
            world.went_live_ns.get_or_insert(world.now_ns);
            if id == NodeId::B {
                world.counts.failovers += 1;
            } else {
                world.counts.unprotected += 1;
            }
            world.counts.outputs_reissued += *reissued_outputs as u64;
            world.counts.disk_reissued += *reissued_disk_requests as u64;
            check::epochs::on_went_live(world, id, *epoch);
        }
        Event::LostRace { .. } => {
            world.counts.lost_races += 1;
            world.role[id.index()] = Some(Role::Stopped);
        }
        Event::ArbiterUnreachable => world.counts.arbiter_unreachable += 1,
        Event::Stalled { .. } => world.counts.stalls += 1,
        Event::Diverged(divergence) => world.violation("S5 state hashes", format!("{who} {divergence}")),
        Event::PoweredOff { .. } | Event::GuestStopped { .. } => world.role[id.index()] = Some(Role::Stopped),
        Event::ProtocolViolation(what) => world.log(who, format!("protocol violation: {what}")),
        _ => {}
    }
    world.log(who, describe(event));
}

fn describe(event: &Event) -> String {
    match event {
        Event::ChannelUp { epoch } => format!("logging channel up (epoch {epoch})"),
        Event::PeerFailed { silent_ms, cause } => {
            format!("declaring the peer failed after {silent_ms} ms without word: {cause}")
        }
        Event::TestAndSetStarted { expected_epoch } => format!("test-and-set on epoch {expected_epoch}"),
        Event::ArbiterUnreachable => "arbiter unreachable, will retry".into(),
        Event::WentLive { epoch, replayed_entries, reissued_disk_requests, reissued_outputs } => format!(
            "LIVE epoch {epoch} (replayed {replayed_entries} entries, reissued {reissued_disk_requests} disk requests and {reissued_outputs} outputs)"
        ),
        Event::LostRace { epoch } => format!("lost the go-live race (epoch {epoch}): halting"),
        Event::Diverged(divergence) => format!("DIVERGED: {divergence}"),
        Event::PoweredOff { status } => format!("powered off ({status})"),
        Event::GuestStopped { reason } => format!("guest stopped: {reason}"),
        Event::ProtocolViolation(what) => format!("protocol violation: {what}"),
        Event::Checkpoint { position, hash } => format!("checkpoint {hash:016x} at {position}"),
        Event::Stalled { unacked } => format!("flow control: guest stalled with {unacked} entries unacknowledged"),
    }
}

/// The body of a node host. Restarted (bounced) hosts come back without their VM and stay out: bringing them
/// back as a backup is re-protection, which is not implemented.
pub async fn node_main(
    id: NodeId,
    world: SharedWorld,
    config: Config,
    guests: GuestFactory,
    seed: u64,
) -> turmoil::Result {
    let restarted = std::mem::replace(&mut world.borrow_mut().started[id.index()], true);
    if restarted {
        world.borrow_mut().log(id.host(), "restarted without its VM: stays out (re-protection not implemented)");
        world.borrow_mut().role[id.index()] = Some(Role::Stopped);
        return std::future::pending().await;
    }
    let peer = id.other().host();
    let peer_ip = turmoil::lookup(peer);
    let host = Rc::new(SimHost {
        id,
        world: world.clone(),
        heartbeat: UdpSocket::bind(("0.0.0.0", HEARTBEAT_PORT)).await?,
        service: UdpSocket::bind(("0.0.0.0", SERVICE_PORT)).await?,
        peer_heartbeat: SocketAddr::new(peer_ip, HEARTBEAT_PORT),
        buffered_max: config.log_entries_buffered_max,
    });
    let guest = guests();
    let now = now_ns();
    let (node, channel) = match id {
        NodeId::A => {
            world.borrow_mut().role[0] = Some(Role::Primary);
            world.borrow_mut().role_epoch[0] = 1;
            let node = Node::Primary(Box::new(ft::primary::Primary::new(config.clone(), guest, DISK_SECTORS, 1, now)));
            (node, connect(peer, config.startup_timeout_ms).await)
        }
        NodeId::B => {
            world.borrow_mut().role[1] = Some(Role::Backup);
            world.borrow_mut().role_epoch[1] = 1;
            let node = Node::Backup(Box::new(ft::backup::Backup::new(config.clone(), guest, DISK_SECTORS, now)));
            (node, accept(config.startup_timeout_ms).await)
        }
    };
    let mut entropy = SimEntropy(ChaCha8Rng::seed_from_u64(seed ^ (0x5eed_0000 + id as u64)));
    let stopped = ft::driver::run(host, node, channel, &mut entropy).await;
    {
        let mut world = world.borrow_mut();
        world.now_ns = now_ns();
        world.role[id.index()] = Some(Role::Stopped);
        world.log(id.host(), format!("stopped: {stopped:?}"));
    }
    std::future::pending().await
}

async fn connect(peer: &str, timeout_ms: u64) -> Option<TcpStream> {
    let deadline = now_ns() + timeout_ms * 1_000_000;
    while now_ns() < deadline {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(100), TcpStream::connect((peer, CHANNEL_PORT))).await
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
