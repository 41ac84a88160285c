//! Disk requests on their way to shared storage.
//!
//! Two of the paper's disk-IO rules live here. Requests that touch a common sector are issued one at a time, in
//! the guest's order, so that storage never sees a racing pair whose outcome depends on timing. Writes are held
//! until the backup has acknowledged the log entry that produced them (the Output Rule), and a later read of the
//! same sectors queues behind the held write instead of overtaking it.

use std::collections::{BTreeMap, VecDeque};

use crate::log::{DiskTarget, LogIndex};
use crate::platform::DiskOp;

/// A request for the driver to perform against shared storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageRequest {
    Read { target: DiskTarget },
    Write { target: DiskTarget, data: Vec<u8>, output_seq: u64, log_index: Option<LogIndex> },
}

#[derive(Debug)]
struct Queued {
    op: DiskOp,
    target: DiskTarget,
    data: Vec<u8>,
    output_seq: u64,
    /// The entry that produced the write, if it was logged.
    log_index: Option<LogIndex>,
    /// The write may not leave before this log index is acknowledged.
    held_until: Option<LogIndex>,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    queue: VecDeque<Queued>,
    issued: BTreeMap<u32, DiskTarget>,
}

/// Bounds the queue: the platform refuses more than `DISK_IN_FLIGHT_MAX` requests in flight, and every queued
/// request is in flight there.
const QUEUED_MAX: usize = crate::abi::DISK_IN_FLIGHT_MAX;

fn overlap(a: &DiskTarget, b: &DiskTarget) -> bool {
    a.sector < b.sector + u64::from(b.sectors) && b.sector < a.sector + u64::from(a.sectors)
}

impl Scheduler {
    pub fn submit_read(&mut self, target: DiskTarget) {
        self.push(Queued {
            op: DiskOp::Read,
            target,
            data: Vec::new(),
            output_seq: 0,
            log_index: None,
            held_until: None,
        });
    }

    pub fn submit_write(&mut self, target: DiskTarget, data: Vec<u8>, output_seq: u64, held_until: Option<LogIndex>) {
        self.push(Queued { op: DiskOp::Write, target, data, output_seq, log_index: held_until, held_until });
    }

    fn push(&mut self, queued: Queued) {
        assert!(self.queue.len() < QUEUED_MAX, "more disk requests queued than tags in flight");
        self.queue.push_back(queued);
    }

    /// The backup acknowledged everything up to `acked`: writes logged at or before it may go.
    pub fn acked(&mut self, acked: LogIndex) {
        for queued in &mut self.queue {
            if queued.held_until.is_some_and(|index| index <= acked) {
                queued.held_until = None;
            }
        }
    }

    /// No backup any more: nothing is held.
    pub fn release_all(&mut self) {
        for queued in &mut self.queue {
            queued.held_until = None;
        }
    }

    /// Writes still held by the Output Rule.
    pub fn held(&self) -> usize {
        self.queue.iter().filter(|queued| queued.held_until.is_some()).count()
    }

    /// The next request that may be issued: not held, and overlapping nothing issued or queued before it.
    pub fn poll_issue(&mut self) -> Option<StorageRequest> {
        let ready = (0..self.queue.len()).find(|&i| {
            let candidate = &self.queue[i];
            candidate.held_until.is_none()
                && !self.issued.values().any(|busy| overlap(busy, &candidate.target))
                && !self.queue.iter().take(i).any(|earlier| overlap(&earlier.target, &candidate.target))
        })?;
        let queued = self.queue.remove(ready)?;
        self.issued.insert(queued.target.tag, queued.target);
        Some(match queued.op {
            DiskOp::Read => StorageRequest::Read { target: queued.target },
            DiskOp::Write => {
                let (target, data, output_seq, log_index) =
                    (queued.target, queued.data, queued.output_seq, queued.log_index);
                StorageRequest::Write { target, data, output_seq, log_index }
            }
        })
    }

    /// Puts an issued request back at the head of the queue (storage refused it; it will go again later).
    pub fn reissue(&mut self, request: StorageRequest) {
        let (op, target, data, output_seq, log_index) = match request {
            StorageRequest::Read { target } => (DiskOp::Read, target, Vec::new(), 0, None),
            StorageRequest::Write { target, data, output_seq, log_index } => {
                (DiskOp::Write, target, data, output_seq, log_index)
            }
        };
        if self.issued.remove(&target.tag).is_some() {
            self.queue.push_front(Queued { op, target, data, output_seq, log_index, held_until: None });
        }
    }

    /// Storage answered for `tag`; returns false for an answer nobody is waiting for (a stale reply).
    pub fn completed(&mut self, tag: u32) -> bool {
        self.issued.remove(&tag).is_some()
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.issued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(tag: u32, sector: u64) -> DiskTarget {
        DiskTarget { tag, sector, sectors: 1 }
    }

    #[test]
    fn read_waits_behind_held_write_of_same_sector() {
        let mut scheduler = Scheduler::default();
        scheduler.submit_write(target(1, 5), vec![1; 512], 0, Some(3));
        scheduler.submit_read(target(2, 5));
        scheduler.submit_read(target(3, 6));
        assert_eq!(scheduler.poll_issue(), Some(StorageRequest::Read { target: target(3, 6) }));
        assert_eq!(scheduler.poll_issue(), None, "the write is held and the read of sector 5 is behind it");
        scheduler.acked(2);
        assert_eq!(scheduler.poll_issue(), None, "index 3 is not acknowledged yet");
        scheduler.acked(3);
        assert!(matches!(scheduler.poll_issue(), Some(StorageRequest::Write { .. })));
        assert_eq!(scheduler.poll_issue(), None, "the read must wait for the write to complete");
        assert!(scheduler.completed(1));
        assert_eq!(scheduler.poll_issue(), Some(StorageRequest::Read { target: target(2, 5) }));
        assert!(!scheduler.completed(99), "a stale completion is refused");
    }
}
