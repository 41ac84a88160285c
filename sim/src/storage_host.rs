//! The shared-storage host: block storage plus the arbiter record, served over TCP so that partitions can cut a
//! node off from it. Requests of an epoch older than the arbiter's are refused (fencing), so a deposed primary's
//! late writes can never land on top of its successor's.

use std::time::Duration;

use ft::bytes::{Reader, Writer};
use ft::driver::WriteStamp;
use ft::log::DiskTarget;
use ft::ArbiterOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

use crate::world::{NodeId, SharedWorld};

pub const STORAGE_HOST: &str = "storage";
pub const STORAGE_PORT: u16 = 9000;
/// Disk size the guests see.
pub const DISK_SECTORS: u64 = 4096;
/// A node gives up on a storage request after this long and calls storage unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(100);
const REQUEST_BYTES_MAX: usize = 1 << 20;

enum Request {
    Read { epoch: u64, sector: u64, sectors: u32 },
    Write { stamp: WriteStamp, sector: u64, data: Vec<u8> },
    TestAndSet { expected_epoch: u64, node: NodeId },
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

async fn serve_one(world: SharedWorld, mut stream: TcpStream) -> std::io::Result<()> {
    let request = read_frame(&mut stream).await?;
    let delay_ms = world.borrow().storage_delay_ms;
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let response = match decode(&request) {
        Some(request) => execute(&world, request),
        None => vec![BAD],
    };
    write_frame(&mut stream, &response).await
}

fn execute(world: &SharedWorld, request: Request) -> Vec<u8> {
    let mut world = world.borrow_mut();
    let mut out = Writer::default();
    match request {
        Request::Read { epoch, .. } | Request::Write { stamp: WriteStamp { epoch, .. }, .. }
            if epoch < world.arbiter_epoch =>
        {
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
            let sectors = sector..sector + data.len().div_ceil(ft::abi::SECTOR_BYTES) as u64;
            // An attempt older than a write that already landed here (it timed out and was retried, and newer
            // writes followed) is superseded: dropped, and answered as done, since a newer write covers it.
            let superseded = sectors.clone().any(|s| world.stamps.get(&s).is_some_and(|newest| *newest > stamp));
            if !superseded {
                for (i, chunk) in data.chunks(ft::abi::SECTOR_BYTES).enumerate() {
                    world.sectors.insert(sector + i as u64, chunk.to_vec());
                    world.stamps.insert(sector + i as u64, stamp);
                }
            }
            out.u8(OK);
        }
        Request::TestAndSet { expected_epoch, node } => {
            // Idempotent for the winner: a retry after a lost reply must not turn a win into a loss.
            let won_already = world.arbiter_epoch == expected_epoch + 1 && world.arbiter_owner == Some(node);
            if world.arbiter_epoch == expected_epoch || won_already {
                world.arbiter_epoch = expected_epoch + 1;
                world.arbiter_owner = Some(node);
                out.u8(WON);
            } else {
                out.u8(LOST);
            }
            out.u64(world.arbiter_epoch);
        }
    }
    out.bytes
}

fn decode(bytes: &[u8]) -> Option<Request> {
    let mut r = Reader::new(bytes);
    let request = match r.u8().ok()? {
        1 => Request::Read { epoch: r.u64().ok()?, sector: r.u64().ok()?, sectors: r.u32().ok()? },
        2 => Request::Write {
            stamp: WriteStamp { epoch: r.u64().ok()?, attempt: r.u64().ok()? },
            sector: r.u64().ok()?,
            data: r.blob().ok()?.to_vec(),
        },
        3 => Request::TestAndSet {
            expected_epoch: r.u64().ok()?,
            node: if r.u8().ok()? == 0 { NodeId::A } else { NodeId::B },
        },
        _ => return None,
    };
    Some(request)
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

async fn call(request: Vec<u8>) -> Option<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect((STORAGE_HOST, STORAGE_PORT)).await?;
        write_frame(&mut stream, &request).await?;
        read_frame(&mut stream).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.ok()?.ok()
}

/// The node side of the storage protocol.
pub async fn read(epoch: u64, target: DiskTarget) -> Result<Vec<u8>, ft::driver::StorageError> {
    let mut w = Writer::default();
    w.u8(1);
    w.u64(epoch);
    w.u64(target.sector);
    w.u32(target.sectors);
    let response = call(w.bytes).await.ok_or(ft::driver::StorageError::Unreachable)?;
    let mut r = Reader::new(&response);
    match r.u8() {
        Ok(OK) => r.blob().map(<[u8]>::to_vec).map_err(|e| ft::driver::StorageError::Io(e.to_string())),
        Ok(FENCED) => Err(ft::driver::StorageError::Fenced(r.u64().unwrap_or(0))),
        _ => Err(ft::driver::StorageError::Io("bad storage response".into())),
    }
}

pub async fn write(stamp: WriteStamp, target: DiskTarget, data: Vec<u8>) -> Result<(), ft::driver::StorageError> {
    let mut w = Writer::default();
    w.u8(2);
    w.u64(stamp.epoch);
    w.u64(stamp.attempt);
    w.u64(target.sector);
    w.blob(&data);
    let response = call(w.bytes).await.ok_or(ft::driver::StorageError::Unreachable)?;
    let mut r = Reader::new(&response);
    match r.u8() {
        Ok(OK) => Ok(()),
        Ok(FENCED) => Err(ft::driver::StorageError::Fenced(r.u64().unwrap_or(0))),
        _ => Err(ft::driver::StorageError::Io("bad storage response".into())),
    }
}

pub async fn test_and_set(expected_epoch: u64, node: NodeId) -> ArbiterOutcome {
    let mut w = Writer::default();
    w.u8(3);
    w.u64(expected_epoch);
    w.u8(node as u8);
    let Some(response) = call(w.bytes).await else {
        return ArbiterOutcome::Unreachable;
    };
    let mut r = Reader::new(&response);
    match (r.u8(), r.u64()) {
        (Ok(WON), Ok(epoch)) => ArbiterOutcome::Won { epoch },
        (Ok(LOST), Ok(epoch)) => ArbiterOutcome::Lost { epoch },
        _ => ArbiterOutcome::Unreachable,
    }
}
