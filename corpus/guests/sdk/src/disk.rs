//! The disk: asynchronous requests by DMA descriptor, completions popped by tag.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;

use crate::abi::{self, DISK_REQUEST_SECTORS_MAX, SECTOR_BYTES};

/// A `DiskRequest` descriptor (32 bytes, docs/guest-abi.md).
#[repr(C)]
struct Descriptor {
    op: u32,
    tag: u32,
    sector: u64,
    sectors: u32,
    reserved: u32,
    buffer_gpa: u64,
}

const OP_READ: u32 = 1;
const OP_WRITE: u32 = 2;

/// A request's outcome (the `DISK_STATUS` of its tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    IoError,
    Other(u32),
}

impl Status {
    fn from_port(value: u32) -> Status {
        match value {
            0 => Status::Ok,
            1 => Status::BadRequest,
            2 => Status::IoError,
            other => Status::Other(other),
        }
    }
}

/// A finished request, with its buffer back (a read's data is in it).
pub struct Completion {
    pub tag: u32,
    pub status: Status,
    pub buffer: Box<[u8]>,
}

/// Why a request was not submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The buffer is empty, not whole sectors, or more than 128 sectors.
    BadLength,
    /// A request with this tag is in flight.
    TagInUse,
    /// A blocking request while others are in flight.
    Busy,
}

/// The disk device. Descriptors and buffers of requests in flight are owned here, so that nothing the device
/// may still read or write moves or is freed before its completion.
#[derive(Default)]
pub struct Disk {
    in_flight: BTreeMap<u32, (Box<Descriptor>, Box<[u8]>)>,
}

impl Drop for Disk {
    /// Requests in flight keep their descriptors and buffers: the device may still read or write them.
    fn drop(&mut self) {
        core::mem::forget(core::mem::take(&mut self.in_flight));
    }
}

impl Disk {
    pub fn new() -> Disk {
        Disk::default()
    }

    /// Capacity in sectors (the device reports 32 bits).
    pub fn sectors(&self) -> u64 {
        u64::from(crate::inl(abi::DISK_SECTORS))
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Reads `buffer.len()` bytes (whole sectors) from `sector` on; the data comes back with the completion.
    pub fn read(&mut self, tag: u32, sector: u64, buffer: Box<[u8]>) -> Result<(), SubmitError> {
        self.submit(OP_READ, tag, sector, buffer)
    }

    /// Writes `buffer` (whole sectors) at `sector`.
    pub fn write(&mut self, tag: u32, sector: u64, buffer: Box<[u8]>) -> Result<(), SubmitError> {
        self.submit(OP_WRITE, tag, sector, buffer)
    }

    fn submit(&mut self, op: u32, tag: u32, sector: u64, buffer: Box<[u8]>) -> Result<(), SubmitError> {
        let sectors = buffer.len() / SECTOR_BYTES;
        if buffer.is_empty()
            || !buffer.len().is_multiple_of(SECTOR_BYTES)
            || sectors > DISK_REQUEST_SECTORS_MAX as usize
        {
            return Err(SubmitError::BadLength);
        }
        if self.in_flight.contains_key(&tag) {
            return Err(SubmitError::TagInUse);
        }
        let descriptor = Box::new(Descriptor {
            op,
            tag,
            sector,
            sectors: sectors as u32,
            reserved: 0,
            buffer_gpa: u64::from(crate::gpa_of(buffer.as_ptr())),
        });
        crate::outl(abi::DISK_SUBMIT, crate::gpa_of(&*descriptor as *const Descriptor));
        self.in_flight.insert(tag, (descriptor, buffer));
        Ok(())
    }

    /// The next completed request, if any.
    pub fn poll(&mut self) -> Option<Completion> {
        loop {
            let tag = crate::inl(abi::DISK_COMPLETION);
            if tag == abi::DISK_NONE {
                return None;
            }
            let status = Status::from_port(crate::inl(abi::DISK_STATUS));
            // A tag this program never submitted cannot come back from a correct device: skip it.
            if let Some((_, buffer)) = self.in_flight.remove(&tag) {
                return Some(Completion { tag, status, buffer });
            }
        }
    }

    /// Submits a read and waits for it: at boot, with nothing else in flight (refused otherwise, since other
    /// completions would have nowhere to go). Leaves the interrupt bits alone.
    pub fn read_blocking(&mut self, tag: u32, sector: u64, buffer: Box<[u8]>) -> Result<Completion, SubmitError> {
        if !self.in_flight.is_empty() {
            return Err(SubmitError::Busy);
        }
        self.read(tag, sector, buffer)?;
        loop {
            while let Some(completion) = self.poll() {
                if completion.tag == tag {
                    return Ok(completion);
                }
            }
            crate::wait_for_interrupt();
        }
    }
}
