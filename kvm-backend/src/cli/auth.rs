//! Authentication of the logging channel and the heartbeats with the pair's pre-shared key (HMAC-SHA256).
//!
//! Handshake, before any protocol frame: the primary sends `Hello` (pair id, its epoch, a fresh nonce, a tag under
//! the key); the backup checks the tag (wrong key, tampered), the pair id (unknown peer) and the epoch (not older
//! than the arbiter's), and answers with its own nonce and a tag over both nonces. Both derive a session key from
//! the pair id, the epoch and both nonces, so a recording of an old session is worthless in a new one. Then every
//! `ft::wire` frame travels followed by a 16-byte tag over (direction, pair id, epoch, frame counter, the frame);
//! the frame carries its own sequence number, checked by the decoder, so replayed, reordered or dropped frames
//! fail either the tag or the sequence check. A frame that fails is never passed on: the error is logged and the
//! channel closed, which the node treats as a failed peer.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"FTAU";
const VERSION: u8 = 1;
const NONCE_BYTES: usize = 16;
const FULL_TAG_BYTES: usize = 32;
/// Bytes of the tag after every frame (truncated HMAC-SHA256, as in RFC 2104 section 5).
pub const TAG_BYTES: usize = 16;
const HELLO_BYTES: usize = 4 + 1 + 8 + 8 + NONCE_BYTES + FULL_TAG_BYTES;
const WELCOME_BYTES: usize = 4 + NONCE_BYTES + FULL_TAG_BYTES;
/// Largest frame payload the wire format accepts (1 MiB).
const PAYLOAD_BYTES_MAX: usize = 1 << 20;
const FROM_PRIMARY: u8 = 1;
const FROM_BACKUP: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: bad handshake tag (wrong key, or tampered)")]
    BadTag,
    #[error("unknown peer: pair {got}, this node is of pair {expected}")]
    UnknownPair { got: u64, expected: u64 },
    #[error("stale epoch {got}: the arbiter is at epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
    #[error("not an ftvm logging channel (bad magic or version)")]
    NotFtvm,
    #[error("the peer refused the logging channel or closed it during the handshake (wrong key or another pair?)")]
    Refused,
    #[error("handshake: {0}")]
    Io(#[from] io::Error),
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn nonce() -> [u8; NONCE_BYTES] {
    let mut bytes = [0u8; NONCE_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .expect("/dev/urandom is readable");
    bytes
}

/// The keys of one authenticated session.
#[derive(Clone)]
pub struct Session {
    key: Vec<u8>,
    pub pair_id: u64,
    pub epoch: u64,
}

impl Session {
    fn derive(key: &[u8], pair_id: u64, epoch: u64, primary_nonce: &[u8], backup_nonce: &[u8]) -> Session {
        let mut m = mac(key);
        m.update(b"ftvm session v1");
        m.update(&pair_id.to_le_bytes());
        m.update(&epoch.to_le_bytes());
        m.update(primary_nonce);
        m.update(backup_nonce);
        Session { key: m.finalize().into_bytes().to_vec(), pair_id, epoch }
    }

    fn tag(&self, direction: u8, counter: u64, frame: &[u8]) -> [u8; TAG_BYTES] {
        let mut m = mac(&self.key);
        m.update(&[direction]);
        m.update(&self.pair_id.to_le_bytes());
        m.update(&self.epoch.to_le_bytes());
        m.update(&counter.to_le_bytes());
        m.update(frame);
        let full = m.finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }
}

fn hello_tag(key: &[u8], pair_id: u64, epoch: u64, nonce: &[u8]) -> Vec<u8> {
    let mut m = mac(key);
    m.update(b"ftvm hello v1");
    m.update(&pair_id.to_le_bytes());
    m.update(&epoch.to_le_bytes());
    m.update(nonce);
    m.finalize().into_bytes().to_vec()
}

fn welcome_mac(key: &[u8], pair_id: u64, epoch: u64, primary_nonce: &[u8], backup_nonce: &[u8]) -> HmacSha256 {
    let mut m = mac(key);
    m.update(b"ftvm welcome v1");
    m.update(&pair_id.to_le_bytes());
    m.update(&epoch.to_le_bytes());
    m.update(primary_nonce);
    m.update(backup_nonce);
    m
}

/// The primary's side of the handshake.
pub async fn handshake_as_primary(
    stream: &mut TcpStream,
    key: &[u8],
    pair_id: u64,
    epoch: u64,
) -> Result<Session, AuthError> {
    let ours = nonce();
    let mut hello = Vec::with_capacity(HELLO_BYTES);
    hello.extend_from_slice(MAGIC);
    hello.push(VERSION);
    hello.extend_from_slice(&pair_id.to_le_bytes());
    hello.extend_from_slice(&epoch.to_le_bytes());
    hello.extend_from_slice(&ours);
    hello.extend_from_slice(&hello_tag(key, pair_id, epoch, &ours));
    stream.write_all(&hello).await?;
    let mut welcome = [0u8; WELCOME_BYTES];
    match stream.read_exact(&mut welcome).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Err(AuthError::Refused),
        Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return Err(AuthError::Refused),
        Err(error) => return Err(error.into()),
    }
    if &welcome[..4] != MAGIC {
        return Err(AuthError::NotFtvm);
    }
    let theirs = &welcome[4..4 + NONCE_BYTES];
    welcome_mac(key, pair_id, epoch, &ours, theirs)
        .verify_slice(&welcome[4 + NONCE_BYTES..])
        .map_err(|_| AuthError::BadTag)?;
    Ok(Session::derive(key, pair_id, epoch, &ours, theirs))
}

/// The backup's side: refuses (with the reason) anything but an authenticated primary of `pair_id` whose epoch is
/// not older than `arbiter_epoch`.
pub async fn handshake_as_backup(
    stream: &mut TcpStream,
    key: &[u8],
    pair_id: u64,
    arbiter_epoch: u64,
) -> Result<Session, AuthError> {
    let mut hello = [0u8; HELLO_BYTES];
    stream.read_exact(&mut hello).await?;
    if &hello[..4] != MAGIC || hello[4] != VERSION {
        return Err(AuthError::NotFtvm);
    }
    let their_pair = u64::from_le_bytes(hello[5..13].try_into().expect("8 bytes"));
    let epoch = u64::from_le_bytes(hello[13..21].try_into().expect("8 bytes"));
    let theirs = &hello[21..21 + NONCE_BYTES];
    let mut m = mac(key);
    m.update(b"ftvm hello v1");
    m.update(&their_pair.to_le_bytes());
    m.update(&epoch.to_le_bytes());
    m.update(theirs);
    m.verify_slice(&hello[21 + NONCE_BYTES..]).map_err(|_| AuthError::BadTag)?;
    if their_pair != pair_id {
        return Err(AuthError::UnknownPair { got: their_pair, expected: pair_id });
    }
    if epoch < arbiter_epoch {
        return Err(AuthError::StaleEpoch { got: epoch, current: arbiter_epoch });
    }
    let ours = nonce();
    let mut welcome = Vec::with_capacity(WELCOME_BYTES);
    welcome.extend_from_slice(MAGIC);
    welcome.extend_from_slice(&ours);
    welcome.extend_from_slice(&welcome_mac(key, pair_id, epoch, theirs, &ours).finalize().into_bytes());
    stream.write_all(&welcome).await?;
    Ok(Session::derive(key, pair_id, epoch, theirs, &ours))
}

/// Bytes of the logging channel, counted on the wire (frames and tags), for the status endpoint.
#[derive(Default)]
pub struct ChannelCounters {
    pub bytes_sent: Cell<u64>,
    pub bytes_received: Cell<u64>,
}

/// Wraps an authenticated TCP stream: returns the stream the driver reads and writes plain `ft::wire` frames on,
/// while two local tasks tag outgoing frames and verify incoming ones. Must be called inside a `LocalSet`.
pub fn secure(stream: TcpStream, session: Session, primary: bool, counters: Rc<ChannelCounters>) -> DuplexStream {
    let _ = stream.set_nodelay(true);
    let (driver_side, our_side) = tokio::io::duplex(1 << 20);
    let (tcp_read, tcp_write) = stream.into_split();
    let (plain_read, plain_write) = tokio::io::split(our_side);
    let (send_dir, recv_dir) = if primary { (FROM_PRIMARY, FROM_BACKUP) } else { (FROM_BACKUP, FROM_PRIMARY) };
    tokio::task::spawn_local(seal(plain_read, tcp_write, session.clone(), send_dir, counters.clone()));
    tokio::task::spawn_local(async move {
        if let Err(error) = open(tcp_read, plain_write, session, recv_dir, counters).await {
            tracing::error!("logging channel refused: {error}; closing it (nothing of that frame was applied)");
        }
    });
    driver_side
}

/// Length of the complete frame at the start of `bytes`, if it is all there.
fn frame_length(bytes: &[u8]) -> io::Result<Option<usize>> {
    if bytes.len() < ft::wire::HEADER_BYTES {
        return Ok(None);
    }
    let payload = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    if payload > PAYLOAD_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {payload} bytes")));
    }
    let total = ft::wire::HEADER_BYTES + payload;
    Ok((bytes.len() >= total).then_some(total))
}

async fn seal<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut plain: R,
    mut tcp: W,
    session: Session,
    direction: u8,
    counters: Rc<ChannelCounters>,
) {
    let mut pending = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut counter = 0u64;
    loop {
        let length = match plain.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(length) => length,
        };
        pending.extend_from_slice(&buffer[..length]);
        let mut out = Vec::with_capacity(pending.len() + TAG_BYTES);
        let mut at = 0;
        loop {
            match frame_length(&pending[at..]) {
                Ok(Some(total)) => {
                    let frame = &pending[at..at + total];
                    out.extend_from_slice(frame);
                    out.extend_from_slice(&session.tag(direction, counter, frame));
                    counter += 1;
                    at += total;
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::error!("refusing to send a malformed frame: {error}");
                    let _ = tcp.shutdown().await;
                    return;
                }
            }
        }
        pending.drain(..at);
        if tcp.write_all(&out).await.is_err() {
            return;
        }
        counters.bytes_sent.set(counters.bytes_sent.get() + out.len() as u64);
    }
    let _ = tcp.shutdown().await;
}

async fn open<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut tcp: R,
    mut plain: W,
    session: Session,
    direction: u8,
    counters: Rc<ChannelCounters>,
) -> io::Result<()> {
    let mut raw = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut counter = 0u64;
    loop {
        let length = tcp.read(&mut buffer).await?;
        if length == 0 {
            if !raw.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the channel ended inside a frame"));
            }
            let _ = plain.shutdown().await;
            return Ok(());
        }
        counters.bytes_received.set(counters.bytes_received.get() + length as u64);
        raw.extend_from_slice(&buffer[..length]);
        let mut at = 0;
        let mut verified = Vec::new();
        while let Some(total) = frame_length(&raw[at..])? {
            if raw.len() - at < total + TAG_BYTES {
                break;
            }
            let frame = &raw[at..at + total];
            let tag = &raw[at + total..at + total + TAG_BYTES];
            let expected = session.tag(direction, counter, frame);
            // Constant-time comparison.
            if tag.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
                // The good frames before it are passed on; this one and everything after never are.
                let _ = plain.write_all(&verified).await;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame {counter}: bad tag (tampered, replayed, reordered or forged)"),
                ));
            }
            verified.extend_from_slice(frame);
            counter += 1;
            at += total + TAG_BYTES;
        }
        raw.drain(..at);
        if !verified.is_empty() && plain.write_all(&verified).await.is_err() {
            return Ok(());
        }
    }
}

/// Appends the heartbeat tag (over the pair id and the datagram) to a heartbeat datagram.
pub fn seal_heartbeat(key: &[u8], pair_id: u64, mut frame: Vec<u8>) -> Vec<u8> {
    let tag = heartbeat_tag(key, pair_id, &frame);
    frame.extend_from_slice(&tag);
    frame
}

/// The heartbeat without its tag, or None if the tag is wrong.
pub fn open_heartbeat(key: &[u8], pair_id: u64, datagram: &[u8]) -> Option<Vec<u8>> {
    let split = datagram.len().checked_sub(TAG_BYTES)?;
    let (frame, tag) = datagram.split_at(split);
    (heartbeat_tag(key, pair_id, frame) == tag).then(|| frame.to_vec())
}

fn heartbeat_tag(key: &[u8], pair_id: u64, frame: &[u8]) -> [u8; TAG_BYTES] {
    let mut m = mac(key);
    m.update(b"ftvm heartbeat v1");
    m.update(&pair_id.to_le_bytes());
    m.update(frame);
    let full = m.finalize().into_bytes();
    let mut tag = [0u8; TAG_BYTES];
    tag.copy_from_slice(&full[..TAG_BYTES]);
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_tags_bind_key_and_pair() {
        let sealed = seal_heartbeat(b"0123456789abcdef", 1, vec![1, 2, 3]);
        assert_eq!(open_heartbeat(b"0123456789abcdef", 1, &sealed), Some(vec![1, 2, 3]));
        assert_eq!(open_heartbeat(b"0123456789abcdeX", 1, &sealed), None);
        assert_eq!(open_heartbeat(b"0123456789abcdef", 2, &sealed), None);
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert_eq!(open_heartbeat(b"0123456789abcdef", 1, &tampered), None);
    }

    /// Seals `frames` as the primary would, lets `damage` change the bytes on the wire, and returns what the
    /// backup passes on, or the error that closed the channel.
    fn through_the_wire(frames: &[Vec<u8>], damage: impl FnOnce(&mut Vec<u8>)) -> Result<Vec<u8>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let session = Session::derive(b"0123456789abcdef", 9, 3, &[1; 16], &[2; 16]);
            let counters = Rc::new(ChannelCounters::default());
            // Seal into a buffer.
            let (mut plain_in, plain_out) = tokio::io::duplex(1 << 20);
            let (wire_in, mut wire_out) = tokio::io::duplex(1 << 20);
            for frame in frames {
                plain_in.write_all(frame).await.unwrap();
            }
            drop(plain_in);
            seal(plain_out, wire_in, session.clone(), FROM_PRIMARY, counters.clone()).await;
            let mut wire = Vec::new();
            wire_out.read_to_end(&mut wire).await.unwrap();
            damage(&mut wire);
            // Open it.
            let (mut tcp_in, tcp_out) = tokio::io::duplex(1 << 20);
            tcp_in.write_all(&wire).await.unwrap();
            drop(tcp_in);
            let (verified_in, mut verified_out) = tokio::io::duplex(1 << 20);
            let result = open(tcp_out, verified_in, session, FROM_PRIMARY, counters).await;
            let mut passed = Vec::new();
            verified_out.read_to_end(&mut passed).await.unwrap();
            match result {
                Ok(()) => Ok(passed),
                Err(error) => Err(format!("{error} (passed on {} bytes)", passed.len())),
            }
        })
    }

    #[test]
    fn tampered_replayed_and_reordered_frames_are_refused() {
        let one = ft::wire::encode(&ft::wire::Message::Released { output_seq: 1 }, 0);
        let two = ft::wire::encode(&ft::wire::Message::Released { output_seq: 2 }, 1);
        let both = [one.clone(), two.clone()].concat();
        assert_eq!(through_the_wire(&[one.clone(), two.clone()], |_| {}), Ok(both.clone()), "intact");
        let frame_bytes = one.len() + TAG_BYTES;
        // A flipped bit in the second frame: the first is passed on, the second never.
        let tampered = through_the_wire(&[one.clone(), two.clone()], |wire| wire[frame_bytes + 30] ^= 1);
        assert!(tampered.as_ref().is_err_and(|e| e.contains("frame 1: bad tag")), "{tampered:?}");
        assert!(tampered.unwrap_err().contains(&format!("passed on {} bytes", one.len())));
        // The first frame replayed in place of the second.
        let replayed = through_the_wire(&[one.clone(), two.clone()], |wire| {
            let first = wire[..frame_bytes].to_vec();
            wire.truncate(frame_bytes);
            wire.extend_from_slice(&first);
        });
        assert!(replayed.is_err_and(|e| e.contains("bad tag")));
        // Swapped frames.
        let swapped = through_the_wire(&[one, two], |wire| {
            let (first, second) = wire.split_at(frame_bytes);
            *wire = [second, first].concat();
        });
        assert!(swapped.is_err_and(|e| e.contains("frame 0: bad tag")));
    }

    #[test]
    fn frame_tags_depend_on_direction_counter_and_epoch() {
        let session = Session::derive(b"k", 1, 5, &[1; 16], &[2; 16]);
        let other_epoch = Session::derive(b"k", 1, 4, &[1; 16], &[2; 16]);
        let frame = b"frame bytes";
        assert_ne!(session.tag(FROM_PRIMARY, 0, frame), session.tag(FROM_BACKUP, 0, frame));
        assert_ne!(session.tag(FROM_PRIMARY, 0, frame), session.tag(FROM_PRIMARY, 1, frame));
        assert_ne!(session.tag(FROM_PRIMARY, 0, frame), other_epoch.tag(FROM_PRIMARY, 0, frame));
    }
}
