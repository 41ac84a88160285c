//! The data: keys to values, and the operations that change it (the records of the append log).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// A change to the data, as the append log records it. INCR is recorded as the SET of its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Set(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    FlushAll,
}

/// A BTreeMap: its iteration order is the keys' order, the same on every run.
#[derive(Default)]
pub struct Store {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Store {
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.data.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Applies a change; returns whether it removed a key (for DEL's count).
    pub fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::Set(key, value) => {
                self.data.insert(key.clone(), value.clone());
                false
            }
            Change::Delete(key) => self.data.remove(key).is_some(),
            Change::FlushAll => {
                self.data.clear();
                false
            }
        }
    }
}
