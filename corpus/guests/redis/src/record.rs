//! The append log's records (`aof.rs` writes and reads them): `0xA5, op (1 SET, 2 DEL, 3 FLUSHALL), key length
//! u32, value length u32, key, value, FNV-1a u32` of everything from `op` on, little-endian. Pure functions, so
//! that host tests can take this file as it is (`tests/tests/redis_guest_code.rs`).

use alloc::vec::Vec;

use crate::store::Change;

const RECORD_MARK: u8 = 0xa5;
pub const RECORD_OVERHEAD_BYTES: usize = 1 + 1 + 4 + 4 + 4;
/// The largest record: one chunk of the boot reader (128 sectors; `is_end` ends the log at a longer one).
pub const RECORD_BYTES_MAX: usize = 128 * 512;

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

pub fn encode(change: &Change) -> Vec<u8> {
    let (op, key, value): (u8, &[u8], &[u8]) = match change {
        Change::Set(key, value) => (1, key, value),
        Change::Delete(key) => (2, key, &[]),
        Change::FlushAll => (3, &[], &[]),
    };
    let mut record = Vec::with_capacity(RECORD_OVERHEAD_BYTES + key.len() + value.len());
    record.push(RECORD_MARK);
    record.push(op);
    record.extend_from_slice(&(key.len() as u32).to_le_bytes());
    record.extend_from_slice(&(value.len() as u32).to_le_bytes());
    record.extend_from_slice(key);
    record.extend_from_slice(value);
    let checksum = fnv1a(&record[1..]);
    record.extend_from_slice(&checksum.to_le_bytes());
    record
}

/// The record at the start of `bytes`: the change and its length; `None` at the log's end or a torn record.
pub fn decode(bytes: &[u8]) -> Option<(Change, usize)> {
    if bytes.len() < RECORD_OVERHEAD_BYTES || bytes[0] != RECORD_MARK {
        return None;
    }
    let key_length = u32::from_le_bytes(bytes[2..6].try_into().ok()?) as usize;
    let value_length = u32::from_le_bytes(bytes[6..10].try_into().ok()?) as usize;
    let body_end = 10usize.checked_add(key_length)?.checked_add(value_length)?;
    if bytes.len() < body_end + 4 {
        return None;
    }
    let checksum = u32::from_le_bytes(bytes[body_end..body_end + 4].try_into().ok()?);
    if checksum != fnv1a(&bytes[1..body_end]) {
        return None;
    }
    let key = bytes[10..10 + key_length].to_vec();
    let change = match bytes[1] {
        1 => Change::Set(key, bytes[10 + key_length..body_end].to_vec()),
        2 => Change::Delete(key),
        3 => Change::FlushAll,
        _ => return None,
    };
    Some((change, body_end + 4))
}

/// Whether the bytes after the last whole record show the log's end (zeros, anything that is not the start of a
/// record, a record longer than any the log writes, or one read whole that did not decode: torn or corrupt)
/// rather than a record cut by the end of what was read so far.
pub fn is_end(rest: &[u8]) -> bool {
    match rest.first() {
        None => false,
        Some(&byte) if byte != RECORD_MARK => true,
        Some(_) if rest.len() < 10 => false,
        Some(_) => {
            let key = u64::from(u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]));
            let value = u64::from(u32::from_le_bytes([rest[6], rest[7], rest[8], rest[9]]));
            let length = RECORD_OVERHEAD_BYTES as u64 + key + value;
            length > RECORD_BYTES_MAX as u64 || rest.len() as u64 >= length
        }
    }
}
