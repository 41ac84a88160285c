//! Authentication of the logging channel and the heartbeats with the pair's pre-shared key (HMAC-SHA256).
//!
//! Handshake, three messages before any protocol frame (docs/log-format.md has the layout):
//!
//! 1. `Hello`, primary to backup: pair id, the primary's epoch, a fresh nonce and the primary's name, tagged under
//!    the key. The backup checks the tag (wrong key, tampered), the pair id (unknown peer) and the epoch (not older
//!    than the arbiter's). A recorded hello passes these checks: it proves nothing yet.
//! 2. `Welcome`, backup to primary: the backup's fresh nonce and name, tagged over both nonces and both names.
//!    The primary checks it, and that the backup does not claim its own name.
//! 3. `Confirm`, primary to backup: a tag over both nonces and both names. Only a primary that holds the key and
//!    saw this backup's nonce can make it, so the backup commits to a session only now: a replayed hello never
//!    gets one. The backup then checks that the primary does not claim its name either.
//!
//! Both derive a session key from the key, the pair id, the epoch, both nonces and both names. Then every
//! `ft::wire` frame travels followed by a 16-byte tag under the session key over (direction, pair id, epoch, frame
//! counter, the frame); the frame carries its own sequence number, checked by the decoder, so replayed, reordered
//! or dropped frames fail either the tag or the sequence check. A frame that fails, or a connection that is reset,
//! is never passed on and closes the channel at once, with the reason as the error the driver reads. Heartbeat
//! datagrams are tagged under the session key too, with their direction and a per-session counter: heartbeats of
//! another session, reflected ones and replayed ones are refused, and none is accepted before a session exists.
//! Every tag is compared in constant time (`Mac::verify_truncated_left`).

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
#[cfg(test)]
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"FTAU";
/// Version 2: the three-message handshake with names. Version 1 had two messages, and its hello could be replayed.
const VERSION: u8 = 2;
const NONCE_BYTES: usize = 16;
const FULL_TAG_BYTES: usize = 32;
/// Bytes of the tag after every frame and heartbeat (truncated HMAC-SHA256, as in RFC 2104 section 5).
pub const TAG_BYTES: usize = 16;
/// Longest node name on the wire (the config allows fewer, see `config::NAME_BYTES_MAX`).
pub const NAME_BYTES_MAX: usize = 64;
/// The hello up to its name: magic, version, pair id, epoch, nonce, name length.
const HELLO_HEAD_BYTES: usize = 4 + 1 + 8 + 8 + NONCE_BYTES + 1;
/// The welcome up to its name: magic, nonce, name length.
const WELCOME_HEAD_BYTES: usize = 4 + NONCE_BYTES + 1;
const CONFIRM_BYTES: usize = 4 + FULL_TAG_BYTES;
/// Bytes of a heartbeat's counter, between the frame and the tag.
const COUNTER_BYTES: usize = 8;
/// Largest frame payload the wire format accepts (1 MiB).
const PAYLOAD_BYTES_MAX: usize = 1 << 20;
const FROM_PRIMARY: u8 = 1;
const FROM_BACKUP: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: bad handshake tag (wrong key, or tampered)")]
    BadTag,
    #[error(
        "authentication failed: bad confirmation (a replayed hello, or a peer without the key that cannot \
         answer this backup's fresh nonce)"
    )]
    BadConfirm,
    #[error("unknown peer: pair {got}, this node is of pair {expected}")]
    UnknownPair { got: u64, expected: u64 },
    #[error("stale epoch {got}: the arbiter is at epoch {current}")]
    StaleEpoch { got: u64, current: u64 },
    #[error("the arbiter is unreachable, its epoch cannot be checked: {0}")]
    ArbiterUnreachable(String),
    #[error(
        "both nodes of the pair are named {0:?}: every node needs a name of its own (`name` in its config; the \
         arbiter records the winner by it)"
    )]
    SameName(String),
    #[error("not an ftvm logging channel (bad magic or version; this is version {VERSION})")]
    NotFtvm,
    #[error("the peer refused the logging channel or closed it during the handshake (wrong key or another pair?)")]
    Refused,
    #[error("handshake: {0}")]
    Io(#[from] io::Error),
}

impl AuthError {
    /// Whether the pair is misconfigured beyond a retry (the node stops with this error).
    pub fn is_fatal(&self) -> bool {
        matches!(self, AuthError::SameName(_))
    }
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

/// What both sides of a handshake put under their tags: the pair, the epoch, both nonces, both names.
struct Transcript<'a> {
    pair_id: u64,
    epoch: u64,
    primary_nonce: &'a [u8],
    backup_nonce: &'a [u8],
    primary_name: &'a [u8],
    backup_name: &'a [u8],
}

impl Transcript<'_> {
    fn mac(&self, key: &[u8], label: &[u8]) -> HmacSha256 {
        let mut m = mac(key);
        m.update(label);
        m.update(&self.pair_id.to_le_bytes());
        m.update(&self.epoch.to_le_bytes());
        m.update(self.primary_nonce);
        m.update(self.backup_nonce);
        for name in [self.primary_name, self.backup_name] {
            m.update(&[name.len() as u8]);
            m.update(name);
        }
        m
    }

    /// The session's keys; `primary` says which side we are (the other one's name is the session's peer).
    fn session(&self, key: &[u8], primary: bool) -> Session {
        let key = self.mac(key, b"ftvm session v2").finalize().into_bytes().to_vec();
        let peer = if primary { self.backup_name } else { self.primary_name };
        let peer_name = String::from_utf8_lossy(peer).into_owned();
        Session { key, pair_id: self.pair_id, epoch: self.epoch, peer_name }
    }
}

/// The keys of one authenticated session.
#[derive(Clone)]
pub struct Session {
    key: Vec<u8>,
    pub pair_id: u64,
    pub epoch: u64,
    /// The other side's name, as its handshake message (under the tag) gave it.
    pub peer_name: String,
}

impl Session {
    #[cfg(test)]
    fn derive(key: &[u8], pair_id: u64, epoch: u64, primary_nonce: &[u8], backup_nonce: &[u8]) -> Session {
        let transcript =
            Transcript { pair_id, epoch, primary_nonce, backup_nonce, primary_name: b"p", backup_name: b"b" };
        transcript.session(key, true)
    }

    fn mac(&self, label: &[u8], direction: u8, counter: u64, bytes: &[u8]) -> HmacSha256 {
        let mut m = mac(&self.key);
        m.update(label);
        m.update(&[direction]);
        m.update(&self.pair_id.to_le_bytes());
        m.update(&self.epoch.to_le_bytes());
        m.update(&counter.to_le_bytes());
        m.update(bytes);
        m
    }

    fn tag(&self, direction: u8, counter: u64, frame: &[u8]) -> [u8; TAG_BYTES] {
        let full = self.mac(b"ftvm frame v2", direction, counter, frame).finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    /// Whether `tag` is the tag of `frame`, compared in constant time.
    fn verify(&self, direction: u8, counter: u64, frame: &[u8], tag: &[u8]) -> bool {
        self.mac(b"ftvm frame v2", direction, counter, frame).verify_truncated_left(tag).is_ok()
    }

    /// The heartbeat keys of this session, for the primary's side or the backup's.
    pub fn heartbeats(&self, primary: bool) -> HeartbeatKeys {
        let (send, receive) = if primary { (FROM_PRIMARY, FROM_BACKUP) } else { (FROM_BACKUP, FROM_PRIMARY) };
        HeartbeatKeys { session: self.clone(), send, receive, sent: Cell::new(0), received: Cell::new(None) }
    }
}

fn name_bytes(name: &str) -> io::Result<&[u8]> {
    match name.len() {
        1..=NAME_BYTES_MAX => Ok(name.as_bytes()),
        length => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a node name of {length} bytes"))),
    }
}

/// Reads a name of `length` bytes, refusing what is not one.
async fn read_name<S: AsyncRead + Unpin>(stream: &mut S, length: u8) -> Result<Vec<u8>, AuthError> {
    if length == 0 || usize::from(length) > NAME_BYTES_MAX {
        return Err(AuthError::NotFtvm);
    }
    let mut name = vec![0u8; usize::from(length)];
    stream.read_exact(&mut name).await?;
    Ok(name)
}

/// A read of the peer's answer during the handshake: an end or a reset is the peer refusing us.
async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S, bytes: &mut [u8]) -> Result<(), AuthError> {
    match stream.read_exact(bytes).await {
        Ok(_) => Ok(()),
        Err(error) if matches!(error.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => {
            Err(AuthError::Refused)
        }
        Err(error) => Err(error.into()),
    }
}

/// The primary's side of the handshake: hello, welcome, confirm.
pub async fn handshake_as_primary<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &[u8],
    pair_id: u64,
    epoch: u64,
    name: &str,
) -> Result<Session, AuthError> {
    let ours = nonce();
    let our_name = name_bytes(name)?;
    let mut hello = Vec::with_capacity(HELLO_HEAD_BYTES + our_name.len() + FULL_TAG_BYTES);
    hello.extend_from_slice(MAGIC);
    hello.push(VERSION);
    hello.extend_from_slice(&pair_id.to_le_bytes());
    hello.extend_from_slice(&epoch.to_le_bytes());
    hello.extend_from_slice(&ours);
    hello.push(our_name.len() as u8);
    hello.extend_from_slice(our_name);
    let mut m = mac(key);
    m.update(b"ftvm hello v2");
    m.update(&hello[4..]);
    hello.extend_from_slice(&m.finalize().into_bytes());
    stream.write_all(&hello).await?;

    let mut head = [0u8; WELCOME_HEAD_BYTES];
    read_answer(stream, &mut head).await?;
    if &head[..4] != MAGIC {
        return Err(AuthError::NotFtvm);
    }
    let theirs = head[4..4 + NONCE_BYTES].to_vec();
    let their_name = read_name(stream, head[WELCOME_HEAD_BYTES - 1]).await?;
    let mut tag = [0u8; FULL_TAG_BYTES];
    read_answer(stream, &mut tag).await?;
    let transcript = Transcript {
        pair_id,
        epoch,
        primary_nonce: &ours,
        backup_nonce: &theirs,
        primary_name: our_name,
        backup_name: &their_name,
    };
    transcript.mac(key, b"ftvm welcome v2").verify_slice(&tag).map_err(|_| AuthError::BadTag)?;
    // Confirm even to a backup of our name: it then knows the hello was fresh, and refuses the pair too.
    let mut confirm = Vec::with_capacity(CONFIRM_BYTES);
    confirm.extend_from_slice(MAGIC);
    confirm.extend_from_slice(&transcript.mac(key, b"ftvm confirm v2").finalize().into_bytes());
    stream.write_all(&confirm).await?;
    if their_name == our_name {
        return Err(AuthError::SameName(name.to_string()));
    }
    Ok(transcript.session(key, true))
}

/// The backup's side: refuses (with the reason) anything but an authenticated primary of `pair_id` whose epoch is
/// not older than the arbiter's, read (by `arbiter_epoch`) only once the hello's tag checks out, and commits
/// only when the primary's confirmation proves the hello fresh.
pub async fn handshake_as_backup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &[u8],
    pair_id: u64,
    name: &str,
    arbiter_epoch: impl std::future::Future<Output = Result<u64, String>>,
) -> Result<Session, AuthError> {
    let our_name = name_bytes(name)?;
    let mut head = [0u8; HELLO_HEAD_BYTES];
    stream.read_exact(&mut head).await?;
    if &head[..4] != MAGIC || head[4] != VERSION {
        return Err(AuthError::NotFtvm);
    }
    let their_pair = u64::from_le_bytes(head[5..13].try_into().expect("8 bytes"));
    let epoch = u64::from_le_bytes(head[13..21].try_into().expect("8 bytes"));
    let theirs = head[21..21 + NONCE_BYTES].to_vec();
    let their_name = read_name(stream, head[HELLO_HEAD_BYTES - 1]).await?;
    let mut tag = [0u8; FULL_TAG_BYTES];
    stream.read_exact(&mut tag).await?;
    let mut m = mac(key);
    m.update(b"ftvm hello v2");
    m.update(&head[4..]);
    m.update(&their_name);
    m.verify_slice(&tag).map_err(|_| AuthError::BadTag)?;
    if their_pair != pair_id {
        return Err(AuthError::UnknownPair { got: their_pair, expected: pair_id });
    }
    let current = arbiter_epoch.await.map_err(AuthError::ArbiterUnreachable)?;
    if epoch < current {
        return Err(AuthError::StaleEpoch { got: epoch, current });
    }
    let ours = nonce();
    let transcript = Transcript {
        pair_id,
        epoch,
        primary_nonce: &theirs,
        backup_nonce: &ours,
        primary_name: &their_name,
        backup_name: our_name,
    };
    let mut welcome = Vec::with_capacity(WELCOME_HEAD_BYTES + our_name.len() + FULL_TAG_BYTES);
    welcome.extend_from_slice(MAGIC);
    welcome.extend_from_slice(&ours);
    welcome.push(our_name.len() as u8);
    welcome.extend_from_slice(our_name);
    welcome.extend_from_slice(&transcript.mac(key, b"ftvm welcome v2").finalize().into_bytes());
    stream.write_all(&welcome).await?;
    let mut confirm = [0u8; CONFIRM_BYTES];
    read_answer(stream, &mut confirm).await?;
    if &confirm[..4] != MAGIC {
        return Err(AuthError::NotFtvm);
    }
    transcript.mac(key, b"ftvm confirm v2").verify_slice(&confirm[4..]).map_err(|_| AuthError::BadConfirm)?;
    if their_name == our_name {
        return Err(AuthError::SameName(name.to_string()));
    }
    Ok(transcript.session(key, false))
}

/// Bytes of the logging channel, counted on the wire (frames and tags), for the status endpoint.
#[derive(Default)]
pub struct ChannelCounters {
    pub bytes_sent: Cell<u64>,
    pub bytes_received: Cell<u64>,
}

/// Why the verifying side of a channel gave up, for the driver's next read.
type Failure = Rc<RefCell<Option<(io::ErrorKind, String)>>>;

/// The stream the driver reads and writes plain `ft::wire` frames on. When the connection is reset or a frame
/// fails its tag, the stream ends at once and the read that finds the end returns the reason as its error, so
/// the node learns it (`FailureCause::ChannelLost`).
pub struct SecureChannel {
    inner: DuplexStream,
    failure: Failure,
}

impl AsyncRead for SecureChannel {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining());
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            // Nothing read into room for something: the end of the stream.
            if room > 0 && buf.filled().len() == before {
                if let Some((kind, reason)) = self.failure.borrow().clone() {
                    return Poll::Ready(Err(io::Error::new(kind, reason)));
                }
            }
        }
        result
    }
}

impl AsyncWrite for SecureChannel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Wraps an authenticated TCP stream: returns the stream the driver reads and writes plain `ft::wire` frames on,
/// while two local tasks tag outgoing frames and verify incoming ones. Must be called inside a `LocalSet`.
pub fn secure(stream: TcpStream, session: Session, primary: bool, counters: Rc<ChannelCounters>) -> SecureChannel {
    let _ = stream.set_nodelay(true);
    let (driver_side, our_side) = tokio::io::duplex(1 << 20);
    let (tcp_read, tcp_write) = stream.into_split();
    let (plain_read, mut plain_write) = tokio::io::split(our_side);
    let (send_dir, recv_dir) = if primary { (FROM_PRIMARY, FROM_BACKUP) } else { (FROM_BACKUP, FROM_PRIMARY) };
    let sealing = tokio::task::spawn_local(seal(plain_read, tcp_write, session.clone(), send_dir, counters.clone()));
    let failure = Failure::default();
    let failed = failure.clone();
    tokio::task::spawn_local(async move {
        if let Err(error) = open(tcp_read, &mut plain_write, session, recv_dir, counters).await {
            tracing::error!("logging channel refused: {error}; closing it (nothing of that frame was applied)");
            *failed.borrow_mut() =
                Some((error.kind(), format!("logging channel failed: {}", crate::error::io_reason(&error))));
            // Close both directions now: the driver's next read finds the end (and the reason), and the TCP
            // connection goes with the sealing task, which would otherwise keep the stream open.
            sealing.abort();
            let _ = plain_write.shutdown().await;
        }
    });
    SecureChannel { inner: driver_side, failure }
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
    plain: &mut W,
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
            if !session.verify(direction, counter, frame, tag) {
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

/// The heartbeat keys of one side of a session: datagrams are `frame || counter u64 || tag`, the tag (16 bytes,
/// under the session key) over the direction, pair id, epoch, counter and frame. A side accepts only the other
/// side's direction (a reflected heartbeat is refused) and only counters beyond the last it accepted (a replayed
/// or reordered one is refused).
pub struct HeartbeatKeys {
    session: Session,
    send: u8,
    receive: u8,
    /// Counter of the next heartbeat sent.
    sent: Cell<u64>,
    /// Counter of the newest heartbeat accepted.
    received: Cell<Option<u64>>,
}

/// Why a heartbeat datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatRefused {
    #[error("too short to be a heartbeat")]
    Short,
    #[error("bad tag (wrong key, another session, reflected or tampered)")]
    BadTag,
    #[error("counter {got} is not after {last}: replayed or reordered")]
    Replayed { got: u64, last: u64 },
}

impl HeartbeatKeys {
    /// `frame` with its counter and tag.
    pub fn seal(&self, mut frame: Vec<u8>) -> Vec<u8> {
        let counter = self.sent.get();
        self.sent.set(counter + 1);
        let full = self.session.mac(b"ftvm heartbeat v2", self.send, counter, &frame).finalize().into_bytes();
        frame.extend_from_slice(&counter.to_le_bytes());
        frame.extend_from_slice(&full[..TAG_BYTES]);
        frame
    }

    /// The heartbeat frame of `datagram`, if its tag (compared in constant time) and counter check out.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, HeartbeatRefused> {
        let split = datagram.len().checked_sub(COUNTER_BYTES + TAG_BYTES).ok_or(HeartbeatRefused::Short)?;
        let (frame, rest) = datagram.split_at(split);
        let (counter, tag) = rest.split_at(COUNTER_BYTES);
        let counter = u64::from_le_bytes(counter.try_into().expect("8 bytes"));
        let m = self.session.mac(b"ftvm heartbeat v2", self.receive, counter, frame);
        m.verify_truncated_left(tag).map_err(|_| HeartbeatRefused::BadTag)?;
        if let Some(last) = self.received.get().filter(|last| counter <= *last) {
            return Err(HeartbeatRefused::Replayed { got: counter, last });
        }
        self.received.set(Some(counter));
        Ok(frame.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::cell::RefCell;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A stream that keeps a copy of everything written to it: a recording of one side of a handshake.
    struct Recorder<S> {
        inner: S,
        written: Rc<RefCell<Vec<u8>>>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            let result = Pin::new(&mut self.inner).poll_write(cx, data);
            if let Poll::Ready(Ok(written)) = result {
                self.written.borrow_mut().extend_from_slice(&data[..written]);
            }
            result
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// Everything a primary sent in a successful handshake, replayed to a fresh backup, never yields a session:
    /// the backup commits only once the primary has proved it saw the backup's fresh nonce (before: the recorded
    /// hello alone got a session).
    #[test]
    fn a_replayed_hello_never_gets_a_session() {
        runtime().block_on(async {
            let recorded = Rc::new(RefCell::new(Vec::new()));
            let (primary_end, mut backup_end) = tokio::io::duplex(1 << 16);
            let mut primary_end = Recorder { inner: primary_end, written: recorded.clone() };
            let (primary, backup) = tokio::join!(
                handshake_as_primary(&mut primary_end, KEY, 7, 3, "a"),
                handshake_as_backup(&mut backup_end, KEY, 7, "b", async { Ok(1) })
            );
            assert!(primary.is_ok() && backup.is_ok(), "the real handshake works");
            let replay = recorded.borrow().clone();
            let (mut attacker, mut victim) = tokio::io::duplex(1 << 16);
            attacker.write_all(&replay).await.unwrap();
            let handshake = handshake_as_backup(&mut victim, KEY, 7, "b", async { Ok(1) });
            let attempt = tokio::time::timeout(Duration::from_secs(5), handshake).await;
            assert!(!matches!(attempt, Ok(Ok(_))), "a replayed hello got a session");
            assert!(
                matches!(attempt, Ok(Err(AuthError::BadConfirm))),
                "refused as a replay: {:?}",
                attempt.map(|r| r.err())
            );
            drop(attacker);
        });
    }

    fn session(nonce: u8) -> Session {
        Session::derive(KEY, 9, 2, &[1; 16], &[nonce; 16])
    }

    fn heartbeat(sent_ms: u64) -> Vec<u8> {
        let role = ft::wire::Role::Primary;
        let message = ft::wire::Message::Heartbeat { pair_id: 9, epoch: 2, role, sent_ms, log_index: 0 };
        ft::wire::encode(&message, 0)
    }

    /// Heartbeat tags are bound to the channel's session and direction: one from another session, one reflected
    /// back at its sender and a tampered one are refused (before: the tag covered the pair id and the datagram
    /// under the long-term key, so all three were accepted).
    #[test]
    fn heartbeats_of_another_session_reflected_or_tampered_are_refused() {
        let (ours, theirs) = (session(2), session(3));
        let primary = ours.heartbeats(true);
        let backup = ours.heartbeats(false);
        let sealed = primary.seal(heartbeat(10));
        assert_eq!(backup.open(&sealed).ok(), Some(heartbeat(10)), "the peer of this session accepts it");
        assert_eq!(theirs.heartbeats(false).open(&primary.seal(heartbeat(11))).ok(), None, "another session's");
        assert_eq!(primary.open(&primary.seal(heartbeat(12))).ok(), None, "reflected: our own direction");
        let mut tampered = primary.seal(heartbeat(13));
        tampered[30] ^= 1;
        assert_eq!(backup.open(&tampered).ok(), None, "tampered");
        let mut tag_flipped = primary.seal(heartbeat(14));
        *tag_flipped.last_mut().unwrap() ^= 1;
        assert_eq!(backup.open(&tag_flipped).ok(), None, "a wrong tag");
        // Within the session, the counter refuses a replay and lets the next one through.
        assert_eq!(backup.open(&sealed), Err(HeartbeatRefused::Replayed { got: 0, last: 0 }), "replayed");
        assert_eq!(backup.open(&primary.seal(heartbeat(15))).ok(), Some(heartbeat(15)));
        assert_eq!(backup.open(&[1, 2, 3]), Err(HeartbeatRefused::Short));
    }

    /// A reset of the TCP connection, or a frame that fails its tag, closes the channel the driver reads at once,
    /// with the reason as the error (before: the verifying task gave up silently while the sealing task kept the
    /// stream open, so the driver saw nothing until the failure timeout).
    #[test]
    fn a_reset_or_a_bad_tag_closes_the_channel_at_once_with_the_reason() {
        use std::os::fd::AsRawFd;
        for damage in ["reset", "bad tag"] {
            let runtime = runtime();
            let local = tokio::task::LocalSet::new();
            let failure = local.block_on(&runtime, async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let mut peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
                let (ours, _) = listener.accept().await.unwrap();
                let counters = Rc::new(ChannelCounters::default());
                let mut channel = secure(ours, session(2), false, counters);
                if damage == "reset" {
                    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                    // SAFETY: setsockopt reads `linger`, a valid struct of the size passed, on our own socket.
                    let result = unsafe {
                        libc::setsockopt(
                            peer.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&linger as *const libc::linger).cast(),
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        )
                    };
                    assert_eq!(result, 0);
                    drop(peer);
                } else {
                    let frame = ft::wire::encode(&ft::wire::Message::Released { output_seq: 1 }, 0);
                    peer.write_all(&frame).await.unwrap();
                    peer.write_all(&[0u8; TAG_BYTES]).await.unwrap();
                    std::mem::forget(peer);
                }
                let mut buffer = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(10), channel.read(&mut buffer)).await {
                    Ok(Err(error)) => error.to_string(),
                    Ok(Ok(length)) => format!("read {length} bytes instead of an error"),
                    Err(_) => "the channel stayed open".to_string(),
                }
            });
            let wanted = if damage == "reset" { "reset" } else { "bad tag" };
            assert!(failure.contains(wanted), "{damage}: {failure}");
        }
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
            let (mut verified_in, mut verified_out) = tokio::io::duplex(1 << 20);
            let result = open(tcp_out, &mut verified_in, session, FROM_PRIMARY, counters).await;
            drop(verified_in);
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
