//! The wire format of the logging channel and of heartbeats: framed, versioned, checksummed and sequenced.
//!
//! Frame = header (20 bytes) || payload. Header, little-endian: magic `u16` (0x4654, "FT"), version `u8`,
//! kind `u8`, payload length `u32`, sequence `u64`, crc32c `u32` over the first 16 header bytes and the payload.
//! Sequences start at 0 and grow by one per frame in each direction of a stream. Any malformed frame is an error
//! that ends the connection; nothing from it is applied. docs/log-format.md is the full specification.

use crate::abi::DiskStatus;
use crate::bytes::{Reader, Truncated, Writer};
use crate::log::{Control, DiskTarget, Entry, Input, LogIndex, OutputKind, OutputRecord};
use crate::position::Position;

pub const MAGIC: u16 = 0x4654;
pub const VERSION: u8 = 2;
pub const HEADER_BYTES: usize = 20;
/// Largest payload: a 64 KiB disk completion plus headroom. Larger lengths are rejected before buffering.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// Which side sends a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary = 1,
    Backup = 2,
}

/// Everything that crosses the logging channel or the heartbeat socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Primary to backup, first on a new channel.
    Hello { pair_id: u64, epoch: u64, image_digest: u64 },
    /// Backup to primary: the channel is accepted.
    Welcome { pair_id: u64, epoch: u64 },
    /// Primary to backup: one log entry.
    Log { index: LogIndex, entry: Entry },
    /// Backup to primary: entries up to `received` are buffered, up to `replayed` applied; the backup's guest is
    /// at `position`.
    Ack { received: LogIndex, replayed: LogIndex, position: Position },
    /// Primary to backup: outputs up to and including `output_seq` reached the outside world.
    Released { output_seq: u64 },
    /// Liveness, over datagrams. `log_index` is the last entry the primary sent, or the last the backup
    /// received, so that each side can tell a live peer behind a dead logging channel.
    Heartbeat { pair_id: u64, epoch: u64, role: Role, sent_ms: u64, log_index: LogIndex },
    /// Primary to backup, the last message of a pair whose guest powered off: the power-off entry is
    /// acknowledged, every output reached the outside and every disk write is done. The backup stops too.
    Goodbye { status: u32 },
    /// The last frame of a recording file (`ftvm record`), never sent on a channel: the recording is whole and
    /// holds `entries` log entries. A log file without it was cut short.
    EndOfRecording { entries: u64 },
    /// Joiner to primary, first on a re-protection channel: node `node` asks to become the pair's backup.
    Join { pair_id: u64, image_digest: u64, node: u64 },
    /// Primary to joiner: the arbiter records the joiner as the backup of `epoch`; a guest memory of
    /// `memory_bytes` follows in pre-copy passes, then the cut.
    CloneBegin { pair_id: u64, epoch: u64, memory_bytes: u64 },
    /// Primary to joiner: whole pages (number, [`crate::guest::PAGE_BYTES`] bytes) of pre-copy pass `pass`.
    ClonePages { pass: u32, pages: Vec<(u64, Vec<u8>)> },
    /// Primary to joiner: pass `pass` is complete with `pages` pages; the joiner answers `CloneAck`.
    ClonePassEnd { pass: u32, pages: u64 },
    /// Joiner to primary: every page of `pass` is in place.
    CloneAck { pass: u32 },
    /// Joiner to primary, after every `ClonePages`: `pages` pages of `pass` are in place so far. The primary
    /// keeps a bounded window of pages unacknowledged (flow control), and hears from the joiner while a large
    /// pass goes across.
    ClonePagesAck { pass: u32, pages: u64 },
    /// Primary to joiner, at the cut: a disk write in flight, whose data a go-live would reissue.
    CloneWrite { seq: u64, target: DiskTarget, data: Vec<u8> },
    /// Primary to joiner: the cut. With the pages of the last pass already sent, the guest's CPU and device
    /// state at `position`; the joiner's state must hash to `hash` before it replays the log that follows.
    CloneCut { position: Position, cpu: Vec<u8>, platform: Vec<u8>, halted: bool, hash: u64 },
}

impl Message {
    /// The message's name, for errors about it (its Debug form may carry megabytes of pages).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Log { .. } => "Log",
            Message::Ack { .. } => "Ack",
            Message::Released { .. } => "Released",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::Goodbye { .. } => "Goodbye",
            Message::EndOfRecording { .. } => "EndOfRecording",
            Message::Join { .. } => "Join",
            Message::CloneBegin { .. } => "CloneBegin",
            Message::ClonePages { .. } => "ClonePages",
            Message::ClonePassEnd { .. } => "ClonePassEnd",
            Message::CloneAck { .. } => "CloneAck",
            Message::ClonePagesAck { .. } => "ClonePagesAck",
            Message::CloneWrite { .. } => "CloneWrite",
            Message::CloneCut { .. } => "CloneCut",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => 1,
            Message::Welcome { .. } => 2,
            Message::Log { .. } => 3,
            Message::Ack { .. } => 4,
            Message::Released { .. } => 5,
            Message::Heartbeat { .. } => 6,
            Message::Goodbye { .. } => 7,
            Message::EndOfRecording { .. } => 8,
            Message::Join { .. } => 9,
            Message::CloneBegin { .. } => 10,
            Message::ClonePages { .. } => 11,
            Message::ClonePassEnd { .. } => 12,
            Message::CloneAck { .. } => 13,
            Message::CloneWrite { .. } => 14,
            Message::CloneCut { .. } => 15,
            Message::ClonePagesAck { .. } => 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("payload of {0} bytes exceeds the {PAYLOAD_BYTES_MAX}-byte limit")]
    Oversized(usize),
    #[error("checksum mismatch: frame says {expected:#010x}, computed {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("out of order: expected sequence {expected}, got {actual}")]
    OutOfOrder { expected: u64, actual: u64 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("stream ended inside a frame ({0} bytes left over)")]
    TruncatedStream(usize),
    #[error(transparent)]
    Truncated(#[from] Truncated),
}

/// Encodes one frame.
pub fn encode(message: &Message, seq: u64) -> Vec<u8> {
    let mut writer = Writer::with_capacity(HEADER_BYTES + 64 + bulk_bytes(message));
    writer.u16(MAGIC);
    writer.u8(VERSION);
    writer.u8(message.kind());
    writer.u32(0); // length, patched below
    writer.u64(seq);
    writer.u32(0); // checksum, patched below
    encode_payload(message, &mut writer);
    let mut bytes = writer.bytes;
    let length = (bytes.len() - HEADER_BYTES) as u32;
    bytes[4..8].copy_from_slice(&length.to_le_bytes());
    let checksum = crc32c::crc32c_append(crc32c::crc32c(&bytes[..16]), &bytes[HEADER_BYTES..]);
    bytes[16..20].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Bytes of frame or disk data a message carries, so encoding allocates once.
fn bulk_bytes(message: &Message) -> usize {
    match message {
        Message::Log { entry: Entry::Input { input: Input::NetReceive { frame }, .. }, .. } => frame.len(),
        Message::Log { entry: Entry::Input { input: Input::DiskComplete { data, .. }, .. }, .. } => data.len(),
        Message::ClonePages { pages, .. } => pages.len() * (12 + crate::guest::PAGE_BYTES),
        Message::CloneWrite { data, .. } => data.len(),
        Message::CloneCut { cpu, platform, .. } => cpu.len() + platform.len(),
        _ => 0,
    }
}

fn encode_payload(message: &Message, w: &mut Writer) {
    match message {
        Message::Hello { pair_id, epoch, image_digest } => {
            w.u64(*pair_id);
            w.u64(*epoch);
            w.u64(*image_digest);
        }
        Message::Welcome { pair_id, epoch } => {
            w.u64(*pair_id);
            w.u64(*epoch);
        }
        Message::Log { index, entry } => {
            w.u64(*index);
            encode_entry(entry, w);
        }
        Message::Ack { received, replayed, position } => {
            w.u64(*received);
            w.u64(*replayed);
            encode_position(position, w);
        }
        Message::Released { output_seq } => w.u64(*output_seq),
        Message::Heartbeat { pair_id, epoch, role, sent_ms, log_index } => {
            w.u64(*pair_id);
            w.u64(*epoch);
            w.u8(*role as u8);
            w.u64(*sent_ms);
            w.u64(*log_index);
        }
        Message::Goodbye { status } => w.u32(*status),
        Message::EndOfRecording { entries } => w.u64(*entries),
        Message::Join { pair_id, image_digest, node } => {
            w.u64(*pair_id);
            w.u64(*image_digest);
            w.u64(*node);
        }
        Message::CloneBegin { pair_id, epoch, memory_bytes } => {
            w.u64(*pair_id);
            w.u64(*epoch);
            w.u64(*memory_bytes);
        }
        Message::ClonePages { pass, pages } => {
            w.u32(*pass);
            w.u32(pages.len() as u32);
            for (number, bytes) in pages {
                w.u64(*number);
                w.blob(bytes);
            }
        }
        Message::ClonePassEnd { pass, pages } => {
            w.u32(*pass);
            w.u64(*pages);
        }
        Message::CloneAck { pass } => w.u32(*pass),
        Message::ClonePagesAck { pass, pages } => {
            w.u32(*pass);
            w.u64(*pages);
        }
        Message::CloneWrite { seq, target, data } => {
            w.u64(*seq);
            w.u32(target.tag);
            w.u64(target.sector);
            w.u32(target.sectors);
            w.blob(data);
        }
        Message::CloneCut { position, cpu, platform, halted, hash } => {
            encode_position(position, w);
            w.blob(cpu);
            w.blob(platform);
            w.u8(u8::from(*halted));
            w.u64(*hash);
        }
    }
}

/// Pages in one `ClonePages` message: 256 KiB, well inside the payload limit.
pub const CLONE_PAGES_PER_MESSAGE: usize = 64;

fn encode_position(position: &Position, w: &mut Writer) {
    w.u64(position.exits);
    w.u64(position.instructions);
}

fn encode_entry(entry: &Entry, w: &mut Writer) {
    match entry {
        Entry::Input { position, pc, input } => {
            w.u8(1);
            encode_position(position, w);
            w.u64(*pc);
            match input {
                Input::Clock { ns } => {
                    w.u8(1);
                    w.u64(*ns);
                }
                Input::Entropy { value } => {
                    w.u8(2);
                    w.u32(*value);
                }
                Input::Timer => w.u8(3),
                Input::NetReceive { frame } => {
                    w.u8(4);
                    w.blob(frame);
                }
                Input::DiskComplete { tag, status, data } => {
                    w.u8(5);
                    w.u32(*tag);
                    w.u32(*status as u32);
                    w.blob(data);
                }
            }
        }
        Entry::Output { position, pc, record } => {
            w.u8(2);
            encode_position(position, w);
            w.u64(*pc);
            w.u64(record.seq);
            w.u8(record.kind as u8);
            w.u32(record.length_bytes);
            w.u64(record.digest);
        }
        Entry::Control { position, pc, control } => {
            w.u8(3);
            encode_position(position, w);
            w.u64(*pc);
            match control {
                Control::PowerOff { status } => {
                    w.u8(1);
                    w.u32(*status);
                }
            }
        }
        Entry::Checkpoint { position, hash } => {
            w.u8(4);
            encode_position(position, w);
            w.u64(*hash);
        }
    }
}

/// Decodes one whole frame (a datagram, or a frame cut from a stream) and checks it. Sequence order is the
/// caller's business ([`StreamDecoder`] checks it for streams).
pub fn decode(bytes: &[u8]) -> Result<(u64, Message), WireError> {
    let (seq, kind, payload) = check_frame(bytes)?;
    let message = decode_payload(kind, payload)?;
    Ok((seq, message))
}

/// Validates the header and checksum; returns (sequence, kind, payload).
fn check_frame(bytes: &[u8]) -> Result<(u64, u8, &[u8]), WireError> {
    let mut header = Reader::new(bytes);
    let magic = header.u16()?;
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = header.u8()?;
    if version != VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let kind = header.u8()?;
    let length = header.u32()? as usize;
    if length > PAYLOAD_BYTES_MAX {
        return Err(WireError::Oversized(length));
    }
    let seq = header.u64()?;
    let expected = header.u32()?;
    let payload = header.take(length)?;
    if header.remaining() != 0 {
        return Err(WireError::Malformed(format!("{} bytes after the frame", header.remaining())));
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&bytes[..16]), payload);
    if actual != expected {
        return Err(WireError::Checksum { expected, actual });
    }
    Ok((seq, kind, payload))
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader::new(payload);
    let message = match kind {
        1 => Message::Hello { pair_id: r.u64()?, epoch: r.u64()?, image_digest: r.u64()? },
        2 => Message::Welcome { pair_id: r.u64()?, epoch: r.u64()? },
        3 => Message::Log { index: r.u64()?, entry: decode_entry(&mut r)? },
        4 => Message::Ack { received: r.u64()?, replayed: r.u64()?, position: decode_position(&mut r)? },
        5 => Message::Released { output_seq: r.u64()? },
        6 => Message::Heartbeat {
            pair_id: r.u64()?,
            epoch: r.u64()?,
            role: match r.u8()? {
                1 => Role::Primary,
                2 => Role::Backup,
                other => return Err(WireError::Malformed(format!("role {other}"))),
            },
            sent_ms: r.u64()?,
            log_index: r.u64()?,
        },
        7 => Message::Goodbye { status: r.u32()? },
        8 => Message::EndOfRecording { entries: r.u64()? },
        9 => Message::Join { pair_id: r.u64()?, image_digest: r.u64()?, node: r.u64()? },
        10 => Message::CloneBegin { pair_id: r.u64()?, epoch: r.u64()?, memory_bytes: r.u64()? },
        11 => {
            let pass = r.u32()?;
            let count = r.u32()? as usize;
            if count > CLONE_PAGES_PER_MESSAGE {
                return Err(WireError::Malformed(format!("{count} pages in one message")));
            }
            let mut pages = Vec::with_capacity(count);
            for _ in 0..count {
                let number = r.u64()?;
                let bytes = r.blob()?;
                if bytes.len() != crate::guest::PAGE_BYTES {
                    return Err(WireError::Malformed(format!("a page of {} bytes", bytes.len())));
                }
                pages.push((number, bytes.to_vec()));
            }
            Message::ClonePages { pass, pages }
        }
        12 => Message::ClonePassEnd { pass: r.u32()?, pages: r.u64()? },
        13 => Message::CloneAck { pass: r.u32()? },
        16 => Message::ClonePagesAck { pass: r.u32()?, pages: r.u64()? },
        14 => Message::CloneWrite {
            seq: r.u64()?,
            target: DiskTarget { tag: r.u32()?, sector: r.u64()?, sectors: r.u32()? },
            data: r.blob()?.to_vec(),
        },
        15 => Message::CloneCut {
            position: decode_position(&mut r)?,
            cpu: r.blob()?.to_vec(),
            platform: r.blob()?.to_vec(),
            halted: match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(WireError::Malformed(format!("halted flag {other}"))),
            },
            hash: r.u64()?,
        },
        other => return Err(WireError::UnknownKind(other)),
    };
    if r.remaining() != 0 {
        return Err(WireError::Malformed(format!("{} trailing payload bytes", r.remaining())));
    }
    Ok(message)
}

fn decode_position(r: &mut Reader) -> Result<Position, WireError> {
    Ok(Position { exits: r.u64()?, instructions: r.u64()? })
}

fn decode_entry(r: &mut Reader) -> Result<Entry, WireError> {
    let tag = r.u8()?;
    let position = decode_position(r)?;
    let entry = match tag {
        1 => {
            let pc = r.u64()?;
            let input = match r.u8()? {
                1 => Input::Clock { ns: r.u64()? },
                2 => Input::Entropy { value: r.u32()? },
                3 => Input::Timer,
                4 => Input::NetReceive { frame: r.blob()?.to_vec() },
                5 => {
                    let tag = r.u32()?;
                    let status = r.u32()?;
                    let status = DiskStatus::from_u32(status)
                        .ok_or_else(|| WireError::Malformed(format!("disk status {status}")))?;
                    Input::DiskComplete { tag, status, data: r.blob()?.to_vec() }
                }
                other => return Err(WireError::Malformed(format!("input kind {other}"))),
            };
            Entry::Input { position, pc, input }
        }
        2 => {
            let pc = r.u64()?;
            let seq = r.u64()?;
            let kind = match r.u8()? {
                1 => OutputKind::Console,
                2 => OutputKind::NetTransmit,
                3 => OutputKind::DiskWrite,
                other => return Err(WireError::Malformed(format!("output kind {other}"))),
            };
            let record = OutputRecord { seq, kind, length_bytes: r.u32()?, digest: r.u64()? };
            Entry::Output { position, pc, record }
        }
        3 => {
            let pc = r.u64()?;
            let control = match r.u8()? {
                1 => Control::PowerOff { status: r.u32()? },
                other => return Err(WireError::Malformed(format!("control kind {other}"))),
            };
            Entry::Control { position, pc, control }
        }
        4 => Entry::Checkpoint { position, hash: r.u64()? },
        other => return Err(WireError::Malformed(format!("entry kind {other}"))),
    };
    Ok(entry)
}

/// Cuts frames out of a byte stream and checks that their sequence numbers have no gap, repeat or reordering.
#[derive(Default)]
pub struct StreamDecoder {
    buffer: Vec<u8>,
    consumed: usize,
    seq_expected: u64,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        // Compact once per feed, never per frame: per-frame compaction is quadratic in a large feed.
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held: fed and not yet consumed, plus consumed bytes until the next feed compacts them.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete message, `None` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let available = &self.buffer[self.consumed..];
        if available.len() < HEADER_BYTES {
            return Ok(None);
        }
        let mut header = Reader::new(available);
        let magic = header.u16()?;
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let length = u32::from_le_bytes([available[4], available[5], available[6], available[7]]) as usize;
        if length > PAYLOAD_BYTES_MAX {
            return Err(WireError::Oversized(length));
        }
        if available.len() < HEADER_BYTES + length {
            return Ok(None);
        }
        let (seq, message) = decode(&available[..HEADER_BYTES + length])?;
        if seq != self.seq_expected {
            return Err(WireError::OutOfOrder { expected: self.seq_expected, actual: seq });
        }
        self.seq_expected += 1;
        self.consumed += HEADER_BYTES + length;
        Ok(Some(message))
    }

    /// Called at end of stream: leftover bytes mean the peer stopped inside a frame.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.buffer.len() - self.consumed {
            0 => Ok(()),
            left => Err(WireError::TruncatedStream(left)),
        }
    }
}

/// Numbers outgoing frames of one stream.
#[derive(Default)]
pub struct StreamEncoder {
    seq_next: u64,
}

impl StreamEncoder {
    /// An encoder that goes on after `frames_sent` frames of another (a stream taken over by a new writer).
    pub fn continuing(frames_sent: u64) -> StreamEncoder {
        StreamEncoder { seq_next: frames_sent }
    }

    pub fn encode(&mut self, message: &Message) -> Vec<u8> {
        let frame = encode(message, self.seq_next);
        self.seq_next += 1;
        frame
    }
}
