//! The append log on the disk: every change is a record appended after the last, and a reply that depends on a
//! change leaves only once the record is on the disk. Writes are group commits: one request in flight at a
//! time, carrying every record appended since the last one, so that pipelined writes share a disk write.
//!
//! Layout: sector 0 holds the header (`FTREDIS1`); records follow from sector 1 on, back to back:
//! `0xA5, op (1 SET, 2 DEL, 3 FLUSHALL), key length u32, value length u32, key, value, FNV-1a u32` of everything
//! from `op` on, little-endian. The first byte that is not a valid record ends the log (a fresh disk is zeros).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use ftvm_guest::abi::{DISK_REQUEST_SECTORS_MAX, SECTOR_BYTES};
use ftvm_guest::disk::{Disk, Status};

use crate::record::{decode, encode, is_end, RECORD_BYTES_MAX};
use crate::store::{Change, Store};

const MAGIC: &[u8; 8] = b"FTREDIS1";
const CHUNK_BYTES: usize = DISK_REQUEST_SECTORS_MAX as usize * SECTOR_BYTES;
const SECTOR: u64 = SECTOR_BYTES as u64;
/// The tag of the log's one write in flight, and of the boot reads.
const WRITE_TAG: u32 = 1;
const READ_TAG: u32 = 2;

pub struct Log {
    /// Bytes the disk holds for records (after the header sector).
    capacity_bytes: u64,
    /// End of the records accepted, in log bytes (0 is the start of sector 1).
    end: u64,
    /// End of the records known to be on the disk.
    durable: u64,
    /// The log's bytes from `tail_start` (the start of the sector holding `durable`) to `end`.
    tail: Vec<u8>,
    tail_start: u64,
    /// The end of the write in flight, if one is.
    writing: Option<u64>,
    pub write_errors: u64,
    pub writes: u64,
}

#[derive(Debug)]
pub enum LogError {
    /// The disk is smaller than a header and a sector of records.
    TooSmall,
    Disk(#[allow(dead_code, reason = "shown through Debug in the boot message")] Status),
}

impl Log {
    /// Reads the log from the disk, applying its records to `store`; formats a fresh disk.
    pub fn load(disk: &mut Disk, store: &mut Store) -> Result<(Log, u64), LogError> {
        let sectors = disk.sectors();
        if sectors < 2 {
            return Err(LogError::TooSmall);
        }
        let capacity_bytes = (sectors - 1) * SECTOR;
        let header = read(disk, 0, SECTOR_BYTES)?;
        if &header[..MAGIC.len()] != MAGIC {
            let mut fresh = vec![0u8; SECTOR_BYTES].into_boxed_slice();
            fresh[..MAGIC.len()].copy_from_slice(MAGIC);
            write(disk, 0, fresh)?;
            // Sector 1 may hold an older, unrelated log: zero it so that it ends at once.
            write(disk, 1, vec![0u8; SECTOR_BYTES].into_boxed_slice())?;
            let log = Log::at(capacity_bytes, 0, Vec::new());
            return Ok((log, 0));
        }
        // Records in a window of chunks read one after the other; a record may straddle two chunks.
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = 0u64;
        let mut read_to = 0u64;
        let mut records = 0u64;
        // The window starts at a sector boundary, so that the tail kept at the end starts at one too.
        let mut at = 0usize;
        loop {
            while let Some((change, length)) = decode(&window[at..]) {
                store.apply(&change);
                records += 1;
                at += length;
            }
            let end = window_start + at as u64;
            if is_end(&window[at..]) || read_to >= capacity_bytes {
                let tail_from = (end - end % SECTOR - window_start) as usize;
                return Ok((Log::at(capacity_bytes, end, window[tail_from..at].to_vec()), records));
            }
            let length = (capacity_bytes - read_to).min(CHUNK_BYTES as u64) as usize;
            let chunk = read(disk, 1 + read_to / SECTOR, length)?;
            read_to += length as u64;
            let keep_from = end - end % SECTOR;
            window.drain(..(keep_from - window_start) as usize);
            at = (end - keep_from) as usize;
            window_start = keep_from;
            window.extend_from_slice(&chunk);
        }
    }

    fn at(capacity_bytes: u64, end: u64, tail: Vec<u8>) -> Log {
        Log {
            capacity_bytes,
            end,
            durable: end,
            tail,
            tail_start: end - end % SECTOR,
            writing: None,
            write_errors: 0,
            writes: 0,
        }
    }

    /// Appends a change; returns the log position a reply depending on it must wait for, or `None` when the
    /// disk is full.
    pub fn append(&mut self, change: &Change) -> Option<u64> {
        let record = encode(change);
        if self.end + record.len() as u64 > self.capacity_bytes || record.len() > RECORD_BYTES_MAX {
            return None;
        }
        self.tail.extend_from_slice(&record);
        self.end += record.len() as u64;
        Some(self.end)
    }

    /// Bytes left for records.
    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes - self.end
    }

    /// The position a reply must wait for when it depends on everything accepted so far (a read).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The position up to which the log is on the disk.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Starts the next group commit if none is in flight and records wait.
    pub fn pump(&mut self, disk: &mut Disk) {
        if self.writing.is_some() || self.durable == self.end {
            return;
        }
        // One chunk less a sector, and a zero sector past the records written: the log always ends in zeros on the
        // disk, so a record of an older log (or an unacknowledged write) beyond it is never read back as this one's.
        let length = self.tail.len().min(CHUNK_BYTES - SECTOR_BYTES);
        let room_sectors = (self.capacity_bytes - self.tail_start) / SECTOR;
        let sectors = (length.div_ceil(SECTOR_BYTES) + 1).min(room_sectors as usize);
        let sectors_bytes = sectors * SECTOR_BYTES;
        let mut buffer = vec![0u8; sectors_bytes].into_boxed_slice();
        buffer[..length].copy_from_slice(&self.tail[..length]);
        if disk.write(WRITE_TAG, 1 + self.tail_start / SECTOR, buffer).is_ok() {
            self.writing = Some(self.tail_start + length as u64);
            self.writes += 1;
        }
    }

    /// Takes a disk completion; returns whether it was the log's.
    pub fn complete(&mut self, tag: u32, status: Status) -> bool {
        if tag != WRITE_TAG {
            return false;
        }
        let Some(written_to) = self.writing.take() else { return true };
        if status != Status::Ok {
            // Written again by the next pump.
            self.write_errors += 1;
            return true;
        }
        self.durable = written_to;
        let keep_from = self.durable - self.durable % SECTOR;
        self.tail.drain(..(keep_from - self.tail_start) as usize);
        self.tail_start = keep_from;
        true
    }
}

fn read(disk: &mut Disk, sector: u64, length: usize) -> Result<Box<[u8]>, LogError> {
    let completion = disk
        .read_blocking(READ_TAG, sector, vec![0u8; length].into_boxed_slice())
        .map_err(|_| LogError::Disk(Status::BadRequest))?;
    match completion.status {
        Status::Ok => Ok(completion.buffer),
        status => Err(LogError::Disk(status)),
    }
}

fn write(disk: &mut Disk, sector: u64, buffer: Box<[u8]>) -> Result<(), LogError> {
    disk.write(READ_TAG, sector, buffer).map_err(|_| LogError::Disk(Status::BadRequest))?;
    loop {
        while let Some(completion) = disk.poll() {
            if completion.tag == READ_TAG {
                return match completion.status {
                    Status::Ok => Ok(()),
                    status => Err(LogError::Disk(status)),
                };
            }
        }
        ftvm_guest::wait_for_interrupt();
    }
}
