//! A recording file (`ftvm replay --log`) from outside: any bytes, and frames with valid checksums whose kinds
//! and payloads the fuzzer chooses, must be refused with an error naming the frame, never a panic.
#![no_main]

use ft::wire::{self, Message, StreamEncoder};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = ft_host::replay::parse_log(bytes);
    // The same bytes read as a sequence of (kind, payload length, payload) turned into checksummed frames
    // after a valid hello, so the fuzzer also reaches the recording rules behind the framing.
    let mut encoder = StreamEncoder::default();
    let mut log = encoder.encode(&Message::Hello { pair_id: 0x4654_5652_0000_0080, epoch: 1, image_digest: 7 });
    let mut seq = 1u64;
    let mut rest = bytes;
    while let [kind, length, tail @ ..] = rest {
        let take = usize::from(*length).min(tail.len());
        let (payload, next) = tail.split_at(take);
        log.extend_from_slice(&sealed(*kind, payload, seq));
        seq += 1;
        rest = next;
    }
    let _ = ft_host::replay::parse_log(&log);
});

fn sealed(kind: u8, payload: &[u8], seq: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(wire::HEADER_BYTES + payload.len());
    frame.extend_from_slice(&wire::MAGIC.to_le_bytes());
    frame.push(wire::VERSION);
    frame.push(kind);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    let mut crc = !0u32;
    for &byte in frame[..16].iter().chain(payload) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    frame.extend_from_slice(&(!crc).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}
