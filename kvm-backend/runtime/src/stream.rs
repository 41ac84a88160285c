//! The network benchmark guests' messages (`corpus/guests/netrx` and `nettx`, the paper's Table 2) and the
//! scripted loads that `ftvm record`/`run` give them. The UDP loads of `ftvm bench` use the same messages.
//!
//! netrx takes `NetRxData || filler` frames and, when a frame asks for it, acknowledges the totals so far, so a
//! sender keeps a window of frames in flight as a TCP sender does. nettx answers a `NetTxRequest` with a burst of
//! `NetTxData || pattern` frames and an end frame with its totals. All fields are little-endian.

use ft::kv::PEER_BYTES;
use ft::log::Output;

use crate::error::CliError;

pub const NETRX_MAGIC: u32 = 0x3158_524e; // "NRX1"
pub const NETRX_ACK_MAGIC: u32 = 0x4158_524e; // "NRXA"
pub const NETRX_FLAG_ACK: u32 = 1;
pub const NETTX_REQUEST_MAGIC: u32 = 0x5158_544e; // "NTXQ"
pub const NETTX_DATA_MAGIC: u32 = 0x4458_544e; // "NTXD"
pub const NETTX_END_MAGIC: u32 = 0x4558_544e; // "NTXE"
/// The most frames nettx sends in one burst (`FRAMES_MAX` in corpus/guests/nettx/main.c): a larger request is cut
/// to this.
pub const NETTX_FRAMES_MAX: u64 = 1 << 24;
/// Payload bytes of a benchmark frame: an Ethernet MTU's worth, as in the paper's TCP streams.
pub const PAYLOAD_BYTES: usize = 1400;
const NETRX_ACK_BYTES: usize = 40;
const NETTX_END_BYTES: usize = 24;
const NETTX_DATA_HEADER_BYTES: usize = 16;

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// A netrx data payload of `payload_bytes` (at least its 16-byte header) with frame number `sequence`.
pub fn netrx_data(sequence: u64, ack: bool, payload_bytes: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(payload_bytes.max(16));
    payload.extend_from_slice(&NETRX_MAGIC.to_le_bytes());
    payload.extend_from_slice(&(if ack { NETRX_FLAG_ACK } else { 0 }).to_le_bytes());
    payload.extend_from_slice(&sequence.to_le_bytes());
    // Filler that differs per frame, so a frame replayed out of place changes the guest's digest.
    payload.extend((16..payload_bytes).map(|at| (at as u64 ^ sequence) as u8));
    payload
}

/// What netrx acknowledged: the sequence of the frame that asked, and its totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRxAck {
    pub sequence: u64,
    pub frames: u64,
    pub bytes: u64,
    pub digest: u64,
}

impl NetRxAck {
    pub fn decode(payload: &[u8]) -> Option<NetRxAck> {
        if payload.len() != NETRX_ACK_BYTES || u32_at(payload, 0)? != NETRX_ACK_MAGIC {
            return None;
        }
        Some(NetRxAck {
            sequence: u64_at(payload, 8)?,
            frames: u64_at(payload, 16)?,
            bytes: u64_at(payload, 24)?,
            digest: u64_at(payload, 32)?,
        })
    }
}

/// A request for a burst of `frames` frames of `payload_bytes` each, numbered `burst`.
pub fn nettx_request(frames: u32, payload_bytes: u32, burst: u32) -> Vec<u8> {
    [NETTX_REQUEST_MAGIC, frames, payload_bytes, burst].iter().flat_map(|word| word.to_le_bytes()).collect()
}

/// A frame nettx sent: data (burst, sequence, payload bytes) or the end of a burst (burst, frames, bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetTxFrame {
    Data { burst: u32, sequence: u64, bytes: usize },
    End { burst: u32, frames: u64, bytes: u64 },
}

impl NetTxFrame {
    /// Decodes and checks a payload: a data frame's pattern must be the one its burst and offsets give.
    pub fn decode(payload: &[u8]) -> Option<NetTxFrame> {
        let burst = u32_at(payload, 4)?;
        match u32_at(payload, 0)? {
            NETTX_DATA_MAGIC if payload.len() >= NETTX_DATA_HEADER_BYTES => {
                let pattern_ok = payload
                    .iter()
                    .enumerate()
                    .skip(NETTX_DATA_HEADER_BYTES)
                    .all(|(at, byte)| *byte == (at as u32).wrapping_mul(7).wrapping_add(burst) as u8);
                pattern_ok.then_some(NetTxFrame::Data { burst, sequence: u64_at(payload, 8)?, bytes: payload.len() })
            }
            NETTX_END_MAGIC if payload.len() == NETTX_END_BYTES => {
                Some(NetTxFrame::End { burst, frames: u64_at(payload, 8)?, bytes: u64_at(payload, 16)? })
            }
            _ => None,
        }
    }
}

/// The client's address in the frames of a scripted load (10.0.0.3:9000).
const PEER: [u8; PEER_BYTES] = [10, 0, 0, 3, 0x23, 0x28];
/// Frames a netrx sender keeps unacknowledged (about 90 KB, like a TCP receive window), and how often it asks
/// for an ack: the scripted load here and `ftvm bench`'s UDP stream alike.
pub const WINDOW_FRAMES: u64 = 64;
pub const ACK_EVERY_FRAMES: u64 = 16;

fn addressed(payload: &[u8]) -> Vec<u8> {
    let mut frame = PEER.to_vec();
    frame.extend_from_slice(payload);
    frame
}

fn payload_of(output: &Output) -> Result<&[u8], CliError> {
    match output.bytes.split_at_checked(PEER_BYTES) {
        Some((peer, payload)) if peer == PEER => Ok(payload),
        _ => Err(CliError::Protocol(format!("a frame of {} bytes not addressed to the client", output.bytes.len()))),
    }
}

/// `frames_total` frames to netrx with a window, each ack checked against what was sent.
pub struct NetRxLoad {
    frames_total: u64,
    sent: u64,
    acked: u64,
    bytes_sent: u64,
}

impl NetRxLoad {
    pub fn new(frames_total: u64) -> NetRxLoad {
        NetRxLoad { frames_total, sent: 0, acked: 0, bytes_sent: 0 }
    }

    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.sent == self.frames_total || self.sent - self.acked >= WINDOW_FRAMES {
            return None;
        }
        self.sent += 1;
        let ack = self.sent.is_multiple_of(ACK_EVERY_FRAMES) || self.sent == self.frames_total;
        let payload = netrx_data(self.sent, ack, PAYLOAD_BYTES);
        self.bytes_sent += payload.len() as u64;
        Some(addressed(&payload))
    }

    pub fn released(&mut self, output: &Output) -> Result<(), CliError> {
        let ack = NetRxAck::decode(payload_of(output)?)
            .ok_or_else(|| CliError::Protocol("netrx: a frame that is not an ack".into()))?;
        // Frames are delivered in order and none is lost here: the ack must count exactly what was sent.
        if ack.frames != ack.sequence || ack.sequence > self.sent || ack.sequence <= self.acked {
            return Err(CliError::Protocol(format!("netrx: {ack:?} after {} frames sent", self.sent)));
        }
        if ack.frames == self.sent && ack.bytes != self.bytes_sent {
            return Err(CliError::Protocol(format!("netrx counted {} bytes of {} sent", ack.bytes, self.bytes_sent)));
        }
        self.acked = ack.frames;
        Ok(())
    }

    pub fn done(&self) -> bool {
        self.acked == self.frames_total
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }
}

/// One burst of `frames_total` frames from nettx, checked frame by frame.
pub struct NetTxLoad {
    frames_total: u32,
    requested: bool,
    received: u64,
    ended: bool,
}

impl NetTxLoad {
    pub fn new(frames_total: u32) -> NetTxLoad {
        NetTxLoad { frames_total, requested: false, received: 0, ended: false }
    }

    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.requested {
            return None;
        }
        self.requested = true;
        Some(addressed(&nettx_request(self.frames_total, PAYLOAD_BYTES as u32, 1)))
    }

    pub fn released(&mut self, output: &Output) -> Result<(), CliError> {
        let bad = |what: String| Err(CliError::Protocol(format!("nettx: {what}")));
        match NetTxFrame::decode(payload_of(output)?) {
            Some(NetTxFrame::Data { burst: 1, sequence, bytes: PAYLOAD_BYTES }) if sequence == self.received => {
                self.received += 1;
                Ok(())
            }
            Some(NetTxFrame::End { burst: 1, frames, bytes })
                if frames == self.received
                    && frames == u64::from(self.frames_total)
                    && bytes == frames * PAYLOAD_BYTES as u64 =>
            {
                self.ended = true;
                Ok(())
            }
            other => bad(format!("{other:?} after {} frames", self.received)),
        }
    }

    pub fn done(&self) -> bool {
        self.ended
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ft::log::OutputKind;

    fn frame_output(payload: &[u8]) -> Output {
        Output { seq: 0, kind: OutputKind::NetTransmit, bytes: addressed(payload), disk: None }
    }

    fn ack(sequence: u64, frames: u64, bytes: u64) -> Vec<u8> {
        let mut payload = NETRX_ACK_MAGIC.to_le_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_le_bytes());
        for word in [sequence, frames, bytes, 0] {
            payload.extend_from_slice(&word.to_le_bytes());
        }
        payload
    }

    #[test]
    fn the_netrx_load_keeps_a_window_and_checks_the_totals() {
        let mut load = NetRxLoad::new(WINDOW_FRAMES + 8);
        let sent: Vec<_> = std::iter::from_fn(|| load.next_frame()).collect();
        assert_eq!(sent.len() as u64, WINDOW_FRAMES, "a window's worth, then it waits");
        let asks: Vec<bool> = sent.iter().map(|frame| u32_at(&frame[PEER_BYTES..], 4) == Some(1)).collect();
        assert_eq!(asks.iter().filter(|ask| **ask).count() as u64, WINDOW_FRAMES / ACK_EVERY_FRAMES);
        let bytes = ACK_EVERY_FRAMES * PAYLOAD_BYTES as u64;
        let first = ACK_EVERY_FRAMES;
        assert!(
            load.released(&frame_output(&ack(first, first, bytes + 1))).is_ok(),
            "bytes are checked only at the end"
        );
        assert!(load.released(&frame_output(&ack(first, first, bytes))).is_err(), "the same ack twice");
        assert!(load.released(&frame_output(&ack(99, 99, 0))).is_err(), "beyond what was sent");
        assert!(load.next_frame().is_some(), "the window moved");
        assert!(!load.done());
    }

    #[test]
    fn the_nettx_load_checks_order_pattern_and_totals() {
        let mut load = NetTxLoad::new(2);
        let request = load.next_frame().expect("a request");
        assert_eq!(u32_at(&request[PEER_BYTES..], 0), Some(NETTX_REQUEST_MAGIC));
        assert!(load.next_frame().is_none(), "one request");
        let data = |sequence: u64| {
            let mut payload = NETTX_DATA_MAGIC.to_le_bytes().to_vec();
            payload.extend_from_slice(&1u32.to_le_bytes());
            payload.extend_from_slice(&sequence.to_le_bytes());
            payload.extend((16..PAYLOAD_BYTES).map(|at| (at as u32 * 7 + 1) as u8));
            payload
        };
        assert!(load.released(&frame_output(&data(1))).is_err(), "out of order");
        load.released(&frame_output(&data(0))).expect("frame 0");
        let mut bent = data(1);
        bent[100] ^= 1;
        assert!(load.released(&frame_output(&bent)).is_err(), "a bad pattern");
        load.released(&frame_output(&data(1))).expect("frame 1");
        let mut end = NETTX_END_MAGIC.to_le_bytes().to_vec();
        end.extend_from_slice(&1u32.to_le_bytes());
        end.extend_from_slice(&2u64.to_le_bytes());
        end.extend_from_slice(&(2 * PAYLOAD_BYTES as u64).to_le_bytes());
        load.released(&frame_output(&end)).expect("the end");
        assert!(load.done());
    }
}
