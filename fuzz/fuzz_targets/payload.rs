//! The payload and entry decoders behind the checksum: the input is a kind byte and a payload, sealed into a
//! frame with a valid header and checksum so that the fuzzer reaches the decoders instead of the CRC. A payload
//! that decodes must encode back to exactly the same frame (one encoding per message).
#![no_main]

use ft::wire::{self, HEADER_BYTES, MAGIC, VERSION};

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let Some((&kind, payload)) = input.split_first() else { return };
    let seq = 7u64;
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.push(VERSION);
    frame.push(kind);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    let checksum = crc32c(&frame[..16], payload);
    frame.extend_from_slice(&checksum.to_le_bytes());
    frame.extend_from_slice(payload);
    if let Ok((decoded_seq, message)) = wire::decode(&frame) {
        assert_eq!(decoded_seq, seq);
        assert_eq!(wire::encode(&message, seq), frame, "{message:?} has a second encoding");
    }
});

/// CRC-32C (Castagnoli), bitwise: the fuzz target computes it itself rather than trust the code under test.
fn crc32c(header: &[u8], payload: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in header.iter().chain(payload) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}
