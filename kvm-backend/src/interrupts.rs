//! Interrupts raised but not yet delivered: a FIFO of vectors, part of guest state (hash and snapshot).
//!
//! A vector already waiting is not queued twice (like an interrupt-request register bit), which also bounds
//! the queue at 256 entries. KVM's userspace interrupt controller takes one vector per entry, so the head is
//! injected when the vCPU can take it and the rest wait for the next interrupt window.

use std::collections::VecDeque;

/// Most vectors that can wait at once.
pub(crate) const PENDING_MAX: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PendingInterrupts {
    queue: VecDeque<u8>,
}

impl PendingInterrupts {
    pub(crate) fn raise(&mut self, vector: u8) {
        if !self.queue.contains(&vector) {
            self.queue.push_back(vector);
        }
        debug_assert!(self.queue.len() <= PENDING_MAX);
    }

    pub(crate) fn head(&self) -> Option<u8> {
        self.queue.front().copied()
    }

    pub(crate) fn pop(&mut self) -> Option<u8> {
        self.queue.pop_front()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Encodes as a little-endian `u16` count followed by the vectors in order.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.queue.len() as u16).to_le_bytes());
        out.extend(self.queue.iter().copied());
    }

    /// Inverse of `encode`; rejects duplicates and oversize queues.
    pub(crate) fn decode(vectors: &[u8]) -> Result<PendingInterrupts, String> {
        if vectors.len() > PENDING_MAX {
            return Err(format!("{} pending interrupts, at most {PENDING_MAX}", vectors.len()));
        }
        let mut pending = PendingInterrupts::default();
        for &vector in vectors {
            if pending.queue.contains(&vector) {
                return Err(format!("vector {vector:#x} pending twice"));
            }
            pending.queue.push_back(vector);
        }
        Ok(pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_without_duplicates() {
        let mut pending = PendingInterrupts::default();
        pending.raise(0x22);
        pending.raise(0x20);
        pending.raise(0x22);
        assert_eq!(pending.head(), Some(0x22));
        let mut encoded = Vec::new();
        pending.encode(&mut encoded);
        assert_eq!(encoded, vec![2, 0, 0x22, 0x20]);
        assert_eq!(PendingInterrupts::decode(&encoded[2..]), Ok(pending.clone()));
        assert!(PendingInterrupts::decode(&[1, 1]).is_err());
        assert_eq!(pending.pop(), Some(0x22));
        assert_eq!(pending.pop(), Some(0x20));
        assert!(pending.is_empty());
    }
}
