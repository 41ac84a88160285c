//! A guest together with its devices: the unit that primary and backup keep identical.

use crate::guest::{Exit, Guest, GuestError, RunStart, StateHash};
use crate::platform::{Platform, PlatformError};
use crate::position::Position;

pub struct Vm<G: Guest> {
    pub guest: G,
    pub platform: Platform,
    /// The guest executed HLT and must not run until an input raises an interrupt.
    pub halted: bool,
    /// A run goes on on the guest's vCPU thread: nothing may touch the guest until it ends.
    running: bool,
    /// A kick ended the last run between two exits: the guest is at no position, so nothing may be delivered to
    /// it (nor hashed, nor logged) until its next exit.
    between_exits: bool,
}

impl<G: Guest> Vm<G> {
    pub fn new(guest: G, disk_sectors: u64) -> Vm<G> {
        Vm { guest, platform: Platform::new(disk_sectors), halted: false, running: false, between_exits: false }
    }

    pub fn position(&self) -> Position {
        self.guest.position()
    }

    /// Starts a run of the guest: on the caller's thread (`Done`), or on the guest's own vCPU thread (`Started`:
    /// the guest is out until [`Vm::finish_run`] returns its result).
    pub fn start_run(&mut self, instruction_target: Option<u64>) -> RunStart {
        assert!(!self.running, "a guest runs once at a time");
        match self.guest.start_run(instruction_target) {
            RunStart::Started => {
                self.running = true;
                RunStart::Started
            }
            RunStart::Done(result) => RunStart::Done(self.ended(result)),
        }
    }

    /// The result of a started run, once it has ended.
    pub fn finish_run(&mut self) -> Option<Result<Exit, GuestError>> {
        if !self.running {
            return None;
        }
        let result = self.guest.finish_run()?;
        self.running = false;
        Some(self.ended(result))
    }

    fn ended(&mut self, result: Result<Exit, GuestError>) -> Result<Exit, GuestError> {
        match result {
            Ok(Exit::Kicked) => {
                cov_mark::hit!(guest_kicked_between_exits);
                self.between_exits = true;
            }
            Ok(Exit::InstructionLimit) | Err(_) => {}
            Ok(_) => self.between_exits = false,
        }
        result
    }

    /// Whether a run goes on on the vCPU thread.
    pub fn running(&self) -> bool {
        self.running
    }

    /// Whether the guest stands at a position (an exit, or an instruction count) where inputs may be delivered.
    pub fn at_position(&self) -> bool {
        !self.running && !self.between_exits
    }

    /// Asks a run on the vCPU thread to end soon (`Exit::Kicked`).
    pub fn kick(&self) {
        if self.running {
            self.guest.kick();
        }
    }

    /// Digest of guest and device state: what checkpoints compare.
    pub fn state_hash(&mut self) -> Result<StateHash, PlatformError> {
        assert!(self.at_position(), "a guest is hashed at a position, not while it runs or after a kick");
        let guest = self.guest.state_hash()?;
        let devices = self.platform.state_hash();
        let mut both = [0u8; 17];
        both[..8].copy_from_slice(&guest.to_le_bytes());
        both[8..16].copy_from_slice(&devices.to_le_bytes());
        both[16] = u8::from(self.halted);
        Ok(xxhash_rust::xxh3::xxh3_64(&both))
    }
}
