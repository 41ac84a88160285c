//! The shared-storage host: block storage plus the arbiter record, served over TCP so that partitions can cut a
//! node off from it. Requests of an epoch older than the arbiter's are refused (fencing), and a write attempt
//! older than one that already landed on its sectors is superseded (`ft::driver::WriteStamp`).
//!
//! Storage is also where the checkers look for ground truth: it logs every grant of the arbiter, and it checks
//! that within one epoch the kv record written to a sector never goes back to an older version (the guests
//! number their puts), which is what a reordered, lost or late write does.

use std::time::Duration;

use ft::bytes::{Reader, Writer};
use ft::driver::{StorageError, WriteStamp};
use ft::log::DiskTarget;
use ft::ArbiterOutcome;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

use crate::plan::RequestFault;
use crate::world::{Grant, NodeId, SharedWorld, World};

pub const STORAGE_HOST: &str = "storage";
pub const STORAGE_PORT: u16 = 9000;
/// Disk size the guests see.
pub const DISK_SECTORS: u64 = 4096;
const REQUEST_BYTES_MAX: usize = 1 << 20;

enum Request {
    Read { epoch: u64, sector: u64, sectors: u32 },
    Write { stamp: WriteStamp, sector: u64, data: Vec<u8> },
    TestAndSet { expected_epoch: u64 },
}

/// Status byte of a response.
const OK: u8 = 0;
const FENCED: u8 = 1;
const WON: u8 = 2;
const LOST: u8 = 3;
const BAD: u8 = 4;

pub async fn serve(world: SharedWorld) -> turmoil::Result {
    let listener = TcpListener::bind(("0.0.0.0", STORAGE_PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let world = world.clone();
        tokio::task::spawn_local(async move {
            let _ = serve_one(world, stream).await;
        });
    }
}

/// What the per-request fault of the requesting node makes of this request.
enum Treatment {
    Normal,
    Delay(Duration),
    LoseReply,
}

fn treatment(world: &mut World, node: NodeId, is_write: bool, timeout: Duration) -> Treatment {
    let count = world.storage_requests[node.index()];
    world.storage_requests[node.index()] += 1;
    match world.faults.requests[node.index()] {
        None => Treatment::Normal,
        Some(RequestFault::LateLanding) if count.is_multiple_of(3) => {
            let extra_ms = world.rng.random_range(1..=100);
            Treatment::Delay(timeout + Duration::from_millis(extra_ms))
        }
        Some(RequestFault::Reorder { jitter_ms }) => {
            Treatment::Delay(Duration::from_millis(world.rng.random_range(0..=jitter_ms)))
        }
        Some(RequestFault::LostReply) if is_write && count.is_multiple_of(2) => Treatment::LoseReply,
        Some(_) => Treatment::Normal,
    }
}

async fn serve_one(world: SharedWorld, mut stream: TcpStream) -> std::io::Result<()> {
    let bytes = read_frame(&mut stream).await?;
    let Some((node, timeout, request)) = decode(&bytes) else {
        return write_frame(&mut stream, &[BAD]).await;
    };
    let delay_ms = world.borrow().faults.storage_delay_ms;
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let is_write = matches!(request, Request::Write { .. });
    let treatment = treatment(&mut world.borrow_mut(), node, is_write, timeout);
    if let Treatment::Delay(delay) = treatment {
        tokio::time::sleep(delay).await;
    }
    let response = execute(&world, node, request);
    if let Treatment::LoseReply = treatment {
        // Done, but the answer never arrives: the node times out and writes again.
        return Ok(());
    }
    write_frame(&mut stream, &response).await
}

fn execute(world: &SharedWorld, node: NodeId, request: Request) -> Vec<u8> {
    let mut world = world.borrow_mut();
    let mut out = Writer::default();
    match request {
        Request::Read { epoch, .. } | Request::Write { stamp: WriteStamp { epoch, .. }, .. }
            if epoch < world.arbiter_epoch =>
        {
            if matches!(request, Request::Write { .. }) {
                cov_mark::hit!(deposed_write_fenced);
            }
            out.u8(FENCED);
            out.u64(world.arbiter_epoch);
        }
        Request::Read { sector, sectors, .. } => {
            out.u8(OK);
            let mut data = Vec::with_capacity(sectors as usize * ft::abi::SECTOR_BYTES);
            for s in sector..sector + u64::from(sectors) {
                match world.sectors.get(&s) {
                    Some(bytes) => data.extend_from_slice(bytes),
                    None => data.resize(data.len() + ft::abi::SECTOR_BYTES, 0),
                }
            }
            out.blob(&data);
        }
        Request::Write { stamp, sector, data } => {
            write(&mut world, node, stamp, sector, &data);
            out.u8(OK);
        }
        Request::TestAndSet { expected_epoch } => {
            let at_ns = world.now_ns;
            world.test_and_sets.push((at_ns, node));
            // Idempotent for the winner: a retry after a lost reply must not turn a win into a loss.
            let won_already = world.arbiter_epoch == expected_epoch + 1 && world.arbiter_owner == Some(node);
            if world.arbiter_epoch == expected_epoch {
                world.arbiter_epoch = expected_epoch + 1;
                world.arbiter_owner = Some(node);
                let at_ns = world.now_ns;
                world.grants.push(Grant { epoch: expected_epoch + 1, node, at_ns });
                out.u8(WON);
            } else if won_already {
                out.u8(WON);
            } else {
                out.u8(LOST);
            }
            out.u64(world.arbiter_epoch);
        }
    }
    out.bytes
}

/// Lands a write unless a newer attempt already landed on one of its sectors, and checks the kv records it
/// carries against what the sectors held before.
fn write(world: &mut World, node: NodeId, stamp: WriteStamp, sector: u64, data: &[u8]) {
    let sectors = sector..sector + data.len().div_ceil(ft::abi::SECTOR_BYTES) as u64;
    // An attempt older than a write that already landed here (it timed out and was retried, and newer writes
    // followed) is superseded: dropped, and answered as done, since a newer write of the lineage covers it.
    if sectors.clone().any(|s| world.stamps.get(&s).is_some_and(|newest| *newest > stamp)) {
        cov_mark::hit!(stale_write_superseded);
        world.counts.writes_superseded += 1;
        return;
    }
    for (i, chunk) in data.chunks(ft::abi::SECTOR_BYTES).enumerate() {
        let at = sector + i as u64;
        if let Some(version) = record_version(chunk) {
            let before = world.record_versions.get(&at).copied();
            if let Some((epoch, older)) = before.filter(|(epoch, older)| *epoch == stamp.epoch && *older > version) {
                world.violation(
                    "S2 disk order",
                    format!(
                        "sector {at}: {} wrote record version {version} over version {older} in epoch {epoch}: \
                         a write overtook a newer one",
                        node.host()
                    ),
                );
            }
            world.record_versions.insert(at, (stamp.epoch, version));
            let newest = world.record_max.entry(at).or_default();
            *newest = (*newest).max(version);
        }
        world.sectors.insert(at, chunk.to_vec());
        world.stamps.insert(at, stamp);
    }
}

/// The version of the kv record a sector holds (layout: magic u32, reserved u32, key u64, value u64, version u64).
pub fn record_version(sector: &[u8]) -> Option<u64> {
    let magic = u32::from_le_bytes(sector.get(0..4)?.try_into().ok()?);
    (magic == ft::kv::MAGIC).then(|| u64::from_le_bytes(sector[24..32].try_into().unwrap_or([0; 8])))
}

fn decode(bytes: &[u8]) -> Option<(NodeId, Duration, Request)> {
    let mut r = Reader::new(bytes);
    let kind = r.u8().ok()?;
    let node = if r.u8().ok()? == 0 { NodeId::A } else { NodeId::B };
    let timeout = Duration::from_millis(r.u64().ok()?);
    let request = match kind {
        1 => Request::Read { epoch: r.u64().ok()?, sector: r.u64().ok()?, sectors: r.u32().ok()? },
        2 => Request::Write {
            stamp: WriteStamp { epoch: r.u64().ok()?, attempt: r.u64().ok()? },
            sector: r.u64().ok()?,
            data: r.blob().ok()?.to_vec(),
        },
        3 => Request::TestAndSet { expected_epoch: r.u64().ok()? },
        _ => return None,
    };
    Some((node, timeout, request))
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let length = stream.read_u32_le().await? as usize;
    if length > REQUEST_BYTES_MAX {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "oversized storage frame"));
    }
    let mut bytes = vec![0u8; length];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

async fn write_frame(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_u32_le(bytes.len() as u32).await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// The node side of the storage protocol: one connection per request, given up after `timeout`.
#[derive(Clone, Copy)]
pub struct Client {
    pub node: NodeId,
    pub timeout: Duration,
}

impl Client {
    fn header(&self, kind: u8) -> Writer {
        let mut w = Writer::default();
        w.u8(kind);
        w.u8(self.node as u8);
        w.u64(self.timeout.as_millis() as u64);
        w
    }

    async fn call(&self, request: Vec<u8>) -> Option<Vec<u8>> {
        let exchange = async {
            let mut stream = TcpStream::connect((STORAGE_HOST, STORAGE_PORT)).await?;
            write_frame(&mut stream, &request).await?;
            read_frame(&mut stream).await
        };
        tokio::time::timeout(self.timeout, exchange).await.ok()?.ok()
    }

    pub async fn read(&self, epoch: u64, target: DiskTarget) -> Result<Vec<u8>, StorageError> {
        let mut w = self.header(1);
        w.u64(epoch);
        w.u64(target.sector);
        w.u32(target.sectors);
        let response = self.call(w.bytes).await.ok_or(StorageError::Unreachable)?;
        let mut r = Reader::new(&response);
        match r.u8() {
            Ok(OK) => r.blob().map(<[u8]>::to_vec).map_err(|e| StorageError::Io(e.to_string())),
            Ok(FENCED) => Err(StorageError::Fenced(r.u64().unwrap_or(0))),
            _ => Err(StorageError::Io("bad storage response".into())),
        }
    }

    pub async fn write(&self, stamp: WriteStamp, target: DiskTarget, data: Vec<u8>) -> Result<(), StorageError> {
        let mut w = self.header(2);
        w.u64(stamp.epoch);
        w.u64(stamp.attempt);
        w.u64(target.sector);
        w.blob(&data);
        let response = self.call(w.bytes).await.ok_or(StorageError::Unreachable)?;
        let mut r = Reader::new(&response);
        match r.u8() {
            Ok(OK) => Ok(()),
            Ok(FENCED) => Err(StorageError::Fenced(r.u64().unwrap_or(0))),
            _ => Err(StorageError::Io("bad storage response".into())),
        }
    }

    pub async fn test_and_set(&self, expected_epoch: u64) -> ArbiterOutcome {
        let mut w = self.header(3);
        w.u64(expected_epoch);
        let Some(response) = self.call(w.bytes).await else {
            return ArbiterOutcome::Unreachable;
        };
        let mut r = Reader::new(&response);
        match (r.u8(), r.u64()) {
            (Ok(WON), Ok(epoch)) => ArbiterOutcome::Won { epoch },
            (Ok(LOST), Ok(epoch)) => ArbiterOutcome::Lost { epoch },
            _ => ArbiterOutcome::Unreachable,
        }
    }
}
