//! Disk requests on their way to shared storage.
//!
//! Two of the paper's disk-IO rules live here. Requests that touch a common sector are issued one at a time, in
//! the guest's order, so that storage never sees a racing pair whose outcome depends on timing. Writes are held
//! until the backup has acknowledged the log entry that produced them (the Output Rule), and a later read of the
//! same sectors queues behind the held write instead of overtaking it.
//!
//! A third rule keeps go-live's reissue sound: a write waits until the backup has acknowledged the completion of
//! every earlier overlapping read. Otherwise the primary could die after the write landed and before the
//! backup had the read's data; the new primary would reissue the read and get the write's data, which comes
//! after the read in the guest's execution (a read that sees the future; found by the simulator).

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
    /// Requests at storage, with a write's data and output sequence: a clone's cut carries them, because the
    /// new backup must be able to reissue them if it goes live.
    issued: BTreeMap<u32, (DiskOp, DiskTarget, Vec<u8>, u64)>,
    /// Reads done at storage whose completion the backup has not acknowledged (the log index of the completion
    /// once it is logged): overlapping writes wait for them.
    reads_unacked: Vec<(u32, DiskTarget, Option<LogIndex>)>,
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

    /// The backup acknowledged everything up to `acked`: writes logged at or before it may go, and reads whose
    /// completion is at or before it no longer hold writes back.
    pub fn acked(&mut self, acked: LogIndex) {
        for queued in &mut self.queue {
            if queued.held_until.is_some_and(|index| index <= acked) {
                queued.held_until = None;
            }
        }
        self.reads_unacked.retain(|(_, _, logged)| logged.is_none_or(|index| index > acked));
    }

    /// The completion of read `tag` went into the log at `index` (`None`: no backup, nothing to wait for).
    pub fn read_logged(&mut self, tag: u32, index: Option<LogIndex>) {
        match index {
            Some(index) => {
                for read in self.reads_unacked.iter_mut().filter(|(t, _, logged)| *t == tag && logged.is_none()) {
                    read.2 = Some(index);
                }
            }
            None => self.reads_unacked.retain(|(t, _, logged)| *t != tag || logged.is_some()),
        }
    }

    /// No backup any more: nothing is held.
    pub fn release_all(&mut self) {
        for queued in &mut self.queue {
            queued.held_until = None;
        }
        self.reads_unacked.clear();
    }

    /// Whether a request could be issued now (what `poll_issue` would return), without issuing it.
    pub fn issuable(&self) -> bool {
        self.ready(false).is_some()
    }

    /// Writes still held by the Output Rule.
    pub fn held(&self) -> usize {
        self.queue.iter().filter(|queued| queued.held_until.is_some()).count()
    }

    /// The first queued request that may be issued: not held, and overlapping nothing issued or queued before it.
    /// `mark`: count the waits on the coverage marks (once per look that issues, not for a mere question).
    fn ready(&self, mark: bool) -> Option<usize> {
        (0..self.queue.len()).find(|&i| {
            let candidate = &self.queue[i];
            let unacked_read = candidate.op == DiskOp::Write
                && self.reads_unacked.iter().any(|(_, read, _)| overlap(read, &candidate.target));
            // Marked only when the read is what holds the write (not the Output Rule as well).
            if mark && unacked_read && candidate.held_until.is_none() {
                cov_mark::hit!(write_waits_for_read_completion);
            }
            let blocked = unacked_read
                || self.issued.values().any(|(_, busy, _, _)| overlap(busy, &candidate.target))
                || self.queue.iter().take(i).any(|earlier| overlap(&earlier.target, &candidate.target));
            if mark && blocked && candidate.held_until.is_none() {
                cov_mark::hit!(overlapping_request_waits);
            }
            candidate.held_until.is_none() && !blocked
        })
    }

    /// The next request that may be issued: not held, and overlapping nothing issued or queued before it.
    pub fn poll_issue(&mut self) -> Option<StorageRequest> {
        let ready = self.ready(true)?;
        let queued = self.queue.remove(ready)?;
        let kept = if queued.op == DiskOp::Write { queued.data.clone() } else { Vec::new() };
        self.issued.insert(queued.target.tag, (queued.op, queued.target, kept, queued.output_seq));
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

    /// Storage answered for `tag`; returns false for an answer nobody is waiting for (a stale reply). A read
    /// keeps holding overlapping writes back until its completion is logged and acknowledged (`read_logged`).
    pub fn completed(&mut self, tag: u32) -> bool {
        match self.issued.remove(&tag) {
            Some((DiskOp::Read, target, _, _)) => {
                // Not bounded by the tags: the guest reuses a tag once its completion is delivered, long before
                // the backup acks it. The bound is the tags plus the log's unacked bound (flow control).
                self.reads_unacked.push((tag, target, None));
                true
            }
            Some((DiskOp::Write, ..)) => true,
            None => false,
        }
    }

    /// Every write not yet completed (queued or at storage): its output sequence, target and data.
    pub fn writes_in_flight(&self) -> Vec<(u64, DiskTarget, Vec<u8>)> {
        let queued = self.queue.iter().filter(|queued| queued.op == DiskOp::Write);
        let queued = queued.map(|queued| (queued.output_seq, queued.target, queued.data.clone()));
        let issued = self.issued.values().filter(|(op, ..)| *op == DiskOp::Write);
        queued.chain(issued.map(|(_, target, data, seq)| (*seq, *target, data.clone()))).collect()
    }

    /// Nothing queued or at storage (reads waiting for their completion's ack hold nothing up but writes).
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

    /// An issued write keeps its data, for go-live to reissue it (mutation testing found this unchecked).
    #[test]
    fn an_issued_write_keeps_its_data_for_a_reissue() {
        let mut scheduler = Scheduler::default();
        scheduler.submit_write(target(1, 3), vec![7; 512], 1, None);
        assert!(matches!(scheduler.poll_issue(), Some(StorageRequest::Write { .. })));
        let in_flight = scheduler.writes_in_flight();
        assert_eq!(in_flight.len(), 1);
        assert_eq!(in_flight[0].2, vec![7; 512]);
    }

    /// `issuable` answers what `poll_issue` would do, and changes nothing: a write the Output Rule holds is not
    /// issuable, a free read is, and asking twice issues nothing.
    #[test]
    fn issuable_says_what_poll_issue_would_do_without_issuing() {
        let mut scheduler = Scheduler::default();
        assert!(!scheduler.issuable(), "nothing queued");
        scheduler.submit_write(target(1, 0), vec![0; 512], 1, Some(5));
        assert!(!scheduler.issuable(), "held by the Output Rule");
        scheduler.submit_read(target(2, 9));
        assert!(scheduler.issuable() && scheduler.issuable(), "a free read");
        assert!(matches!(scheduler.poll_issue(), Some(StorageRequest::Read { .. })));
        assert!(!scheduler.issuable(), "the read is out; the write still held");
        scheduler.acked(5);
        assert!(scheduler.issuable(), "the ack released the write");
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

    #[test]
    fn a_write_waits_for_the_acknowledged_completion_of_an_earlier_read() {
        let mut scheduler = Scheduler::default();
        scheduler.submit_read(target(1, 5));
        scheduler.submit_write(target(2, 5), vec![1; 512], 0, Some(1));
        scheduler.acked(1);
        assert_eq!(scheduler.poll_issue(), Some(StorageRequest::Read { target: target(1, 5) }));
        assert_eq!(scheduler.poll_issue(), None, "the read is at storage");
        assert!(scheduler.completed(1));
        assert_eq!(scheduler.poll_issue(), None, "its completion is not logged yet");
        scheduler.read_logged(1, Some(4));
        scheduler.acked(3);
        assert_eq!(scheduler.poll_issue(), None, "nor acknowledged");
        scheduler.acked(4);
        assert!(matches!(scheduler.poll_issue(), Some(StorageRequest::Write { .. })));
        let mut alone = Scheduler::default();
        alone.submit_read(target(1, 5));
        alone.submit_write(target(2, 5), vec![1; 512], 0, None);
        assert!(alone.poll_issue().is_some());
        assert!(alone.completed(1));
        alone.read_logged(1, None);
        assert!(matches!(alone.poll_issue(), Some(StorageRequest::Write { .. })), "without a backup nothing waits");
    }
}
