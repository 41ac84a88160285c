//! Failure detection: the peer is failed after `failure_timeout_ms` without hearing anything from it.
//!
//! Heartbeats and the log/ack traffic both count, as in the paper: the log is never quiet for long because the
//! guest's timer interrupts are logged.

use crate::config::NS_PER_MS;

#[derive(Clone, Debug)]
pub struct Detector {
    last_heard_ns: u64,
    timeout_ns: u64,
}

impl Detector {
    pub fn new(now_ns: u64, failure_timeout_ms: u64) -> Detector {
        assert!(failure_timeout_ms > 0);
        Detector { last_heard_ns: now_ns, timeout_ns: failure_timeout_ms * NS_PER_MS }
    }

    pub fn heard(&mut self, now_ns: u64) {
        self.last_heard_ns = self.last_heard_ns.max(now_ns);
    }

    pub fn deadline_ns(&self) -> u64 {
        self.last_heard_ns + self.timeout_ns
    }

    pub fn failed(&self, now_ns: u64) -> bool {
        now_ns >= self.deadline_ns()
    }

    pub fn silent_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.last_heard_ns)
    }
}
