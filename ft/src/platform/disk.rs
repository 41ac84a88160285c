//! The block device: request descriptors, requests in flight, and the completion queue.

use std::collections::{BTreeMap, VecDeque};

use crate::abi::{self, DiskStatus};
use crate::bytes::{Reader, Writer};
use crate::guest::{Guest, GuestError};
use crate::log::DiskTarget;

/// A request the guest submitted and that has not completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRequest {
    pub op: DiskOp,
    pub target: DiskTarget,
    pub buffer_gpa: u64,
    /// Submission order: tags are the guest's to reuse in any order, so only this says which of two
    /// overlapping requests came first (go-live reissues in this order).
    pub submitted: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    Read,
    Write,
}

impl DiskRequest {
    pub fn length_bytes(&self) -> usize {
        self.target.sectors as usize * abi::SECTOR_BYTES
    }

    /// Whether two requests touch a common sector (such requests must not be in flight together).
    pub fn overlaps(&self, other: &DiskTarget) -> bool {
        let end = self.target.sector + u64::from(self.target.sectors);
        let other_end = other.sector + u64::from(other.sectors);
        self.target.sector < other_end && other.sector < end
    }
}

/// Device state that is a pure function of the guest's writes and the logged completions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disk {
    pub sectors: u64,
    pub in_flight: BTreeMap<u32, DiskRequest>,
    pub completed: VecDeque<(u32, DiskStatus)>,
    pub last_status: u32,
    /// Requests accepted so far (the next one's `submitted`).
    pub submissions: u64,
}

/// How a submission went.
pub enum Submitted {
    Accepted(DiskRequest),
    /// Malformed: completed at once with `BadRequest` (deterministic, so not logged).
    Rejected,
}

/// Bounds the completion queue so a guest that never pops cannot grow host memory.
const COMPLETIONS_QUEUED_MAX: usize = 1024;

impl Disk {
    pub fn new(sectors: u64) -> Disk {
        Disk { sectors, ..Disk::default() }
    }

    /// Parses the descriptor at `descriptor_gpa` and tracks the request.
    pub fn submit<G: Guest>(&mut self, guest: &G, descriptor_gpa: u64) -> Result<Submitted, GuestError> {
        let mut raw = [0u8; abi::DISK_REQUEST_BYTES];
        guest.read_memory(descriptor_gpa, &mut raw)?;
        let mut reader = Reader::new(&raw);
        // The descriptor is exactly DISK_REQUEST_BYTES long, so these reads cannot run out.
        let op = reader.u32().unwrap_or(0);
        let tag = reader.u32().unwrap_or(0);
        let sector = reader.u64().unwrap_or(0);
        let sectors = reader.u32().unwrap_or(0);
        let _reserved = reader.u32().unwrap_or(0);
        let buffer_gpa = reader.u64().unwrap_or(0);
        let op = match op {
            abi::DISK_OP_READ => Some(DiskOp::Read),
            abi::DISK_OP_WRITE => Some(DiskOp::Write),
            _ => None,
        };
        let in_range = sectors > 0
            && sectors <= abi::DISK_REQUEST_SECTORS_MAX
            && sector.checked_add(u64::from(sectors)).is_some_and(|end| end <= self.sectors);
        let room = self.in_flight.len() < abi::DISK_IN_FLIGHT_MAX;
        let (Some(op), true, false, true) = (op, in_range, self.in_flight.contains_key(&tag), room) else {
            self.complete(tag, DiskStatus::BadRequest);
            return Ok(Submitted::Rejected);
        };
        let request =
            DiskRequest { op, target: DiskTarget { tag, sector, sectors }, buffer_gpa, submitted: self.submissions };
        self.submissions += 1;
        self.in_flight.insert(tag, request.clone());
        Ok(Submitted::Accepted(request))
    }

    pub fn complete(&mut self, tag: u32, status: DiskStatus) {
        if self.completed.len() < COMPLETIONS_QUEUED_MAX {
            self.completed.push_back((tag, status));
        }
    }

    /// Requests in flight, oldest submission first.
    pub fn in_flight_in_submission_order(&self) -> Vec<&DiskRequest> {
        let mut requests: Vec<&DiskRequest> = self.in_flight.values().collect();
        requests.sort_by_key(|request| request.submitted);
        requests
    }

    pub fn pop_completion(&mut self) -> u32 {
        match self.completed.pop_front() {
            Some((tag, status)) => {
                self.last_status = status as u32;
                tag
            }
            None => abi::DISK_NONE,
        }
    }

    pub fn encode(&self, writer: &mut Writer) {
        writer.u64(self.sectors);
        writer.u32(self.last_status);
        writer.u64(self.submissions);
        writer.u32(self.in_flight.len() as u32);
        for request in self.in_flight.values() {
            writer.u8(request.op as u8);
            writer.u32(request.target.tag);
            writer.u64(request.target.sector);
            writer.u32(request.target.sectors);
            writer.u64(request.buffer_gpa);
            writer.u64(request.submitted);
        }
        writer.u32(self.completed.len() as u32);
        for (tag, status) in &self.completed {
            writer.u32(*tag);
            writer.u32(*status as u32);
        }
    }

    pub fn decode(reader: &mut Reader) -> Result<Disk, String> {
        let err = |e: crate::bytes::Truncated| e.to_string();
        let mut disk = Disk::new(reader.u64().map_err(err)?);
        disk.last_status = reader.u32().map_err(err)?;
        disk.submissions = reader.u64().map_err(err)?;
        let in_flight = reader.u32().map_err(err)?;
        for _ in 0..in_flight {
            let op = match reader.u8().map_err(err)? {
                0 => DiskOp::Read,
                1 => DiskOp::Write,
                other => return Err(format!("bad disk op {other}")),
            };
            let tag = reader.u32().map_err(err)?;
            let sector = reader.u64().map_err(err)?;
            let sectors = reader.u32().map_err(err)?;
            let buffer_gpa = reader.u64().map_err(err)?;
            let submitted = reader.u64().map_err(err)?;
            let target = DiskTarget { tag, sector, sectors };
            disk.in_flight.insert(tag, DiskRequest { op, target, buffer_gpa, submitted });
        }
        let completed = reader.u32().map_err(err)?;
        for _ in 0..completed.min(COMPLETIONS_QUEUED_MAX as u32) {
            let tag = reader.u32().map_err(err)?;
            let status = DiskStatus::from_u32(reader.u32().map_err(err)?).ok_or("bad disk status")?;
            disk.completed.push_back((tag, status));
        }
        Ok(disk)
    }
}
