//! The checker's own view of each guest: a wrapper that hashes the guest's state at every `every`-th exit and
//! files the hash by position, so that S5 compares the two guests itself instead of trusting the backup's
//! checkpoint verdict (`check::states`). Hashes are filed under the node's lineage (the epoch of the log it
//! is in: the pair's first, or the one a re-protection began), because a re-protected pair starts its log, and
//! its lockstep, afresh. At a clone's cut the tap hashes the primary's guest when its CPU state is saved, and
//! the joiner's when it is restored: `check::clones` compares the two.

use ft::{Exit, Guest, GuestError, Position, StateHash};

use crate::world::{NodeId, SharedWorld};

pub struct HashTap {
    inner: Box<dyn Guest>,
    node: NodeId,
    world: SharedWorld,
    every_exits: u64,
}

impl HashTap {
    /// Model guests are hashed every 64 exits; a KVM guest (all of its memory) every 4096.
    pub fn new(inner: Box<dyn Guest>, node: NodeId, world: SharedWorld) -> HashTap {
        let every_exits = if inner.counts_instructions() { 64 } else { 4_096 };
        HashTap { inner, node, world, every_exits }
    }
}

impl Guest for HashTap {
    fn run(&mut self, instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        let exit = self.inner.run(instruction_target)?;
        let position = self.inner.position();
        self.world.borrow_mut().positions[self.node.index()] = position;
        if exit != Exit::InstructionLimit && position.exits.is_multiple_of(self.every_exits) {
            // At an exit both guests of a pair in lockstep have applied exactly the same inputs.
            let hash = self.inner.state_hash()?;
            let mut world = self.world.borrow_mut();
            let lineage = world.role_epoch[self.node.index()];
            world.hashes.entry((lineage, position.exits)).or_default()[self.node.index()] = Some((position, hash));
        }
        Ok(exit)
    }
    fn position(&self) -> Position {
        self.inner.position()
    }
    fn pc(&self) -> u64 {
        self.inner.pc()
    }
    fn counts_instructions(&self) -> bool {
        self.inner.counts_instructions()
    }
    fn complete_port_in(&mut self, value: u32) {
        self.inner.complete_port_in(value)
    }
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.inner.read_memory(gpa, buf)
    }
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        self.inner.write_memory(gpa, data)
    }
    fn inject_interrupt(&mut self, vector: u8) -> Result<(), GuestError> {
        self.inner.inject_interrupt(vector)
    }
    fn state_hash(&mut self) -> Result<StateHash, GuestError> {
        self.inner.state_hash()
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        self.inner.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), GuestError> {
        self.inner.restore(snapshot)
    }
    fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes()
    }
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, GuestError> {
        self.inner.take_dirty_pages()
    }
    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        let cpu = self.inner.save_cpu()?;
        let hash = self.inner.state_hash()?;
        let position = self.inner.position();
        let at_ns = crate::node_host::now_ns();
        self.world.borrow_mut().clone_cuts.push(crate::world::CloneCut { node: self.node, position, hash, at_ns });
        Ok(cpu)
    }
    fn restore_cpu(&mut self, cpu: &[u8]) -> Result<(), GuestError> {
        self.inner.restore_cpu(cpu)?;
        let hash = self.inner.state_hash()?;
        let position = self.inner.position();
        let at_ns = crate::node_host::now_ns();
        self.world.borrow_mut().clone_restores.push(crate::world::CloneCut { node: self.node, position, hash, at_ns });
        Ok(())
    }
}
