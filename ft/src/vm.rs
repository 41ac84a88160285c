//! A guest together with its devices: the unit that primary and backup keep identical.

use crate::guest::{Guest, StateHash};
use crate::platform::{Platform, PlatformError};
use crate::position::Position;

pub struct Vm<G: Guest> {
    pub guest: G,
    pub platform: Platform,
    /// The guest executed HLT and must not run until an input raises an interrupt.
    pub halted: bool,
}

impl<G: Guest> Vm<G> {
    pub fn new(guest: G, disk_sectors: u64) -> Vm<G> {
        Vm { guest, platform: Platform::new(disk_sectors), halted: false }
    }

    pub fn position(&self) -> Position {
        self.guest.position()
    }

    /// Digest of guest and device state: what checkpoints compare.
    pub fn state_hash(&mut self) -> Result<StateHash, PlatformError> {
        let guest = self.guest.state_hash()?;
        let devices = self.platform.state_hash();
        let mut both = [0u8; 17];
        both[..8].copy_from_slice(&guest.to_le_bytes());
        both[8..16].copy_from_slice(&devices.to_le_bytes());
        both[16] = u8::from(self.halted);
        Ok(xxhash_rust::xxh3::xxh3_64(&both))
    }
}
