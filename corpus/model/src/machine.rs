//! The model machine: registers, the run loop, and the [`ft::Guest`] implementation.

use ft::{Exit, Guest, GuestError, Position, StateHash};

use super::interrupt::{self, Handler, Pending};
use super::memory::{Memory, MEMORY_BYTES};
use super::program::{self, Effect};
use super::snapshot;
use super::workload::Workload;

/// General-purpose registers per machine.
pub(crate) const REGISTERS: usize = 8;

/// The register file. Programs keep their control state here (`label`, `step`) and their data in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Registers {
    /// The program state being executed (a per-program constant, see `program`).
    pub(crate) label: u32,
    /// The instruction within `label` (a loop index or sub-step).
    pub(crate) step: u32,
    /// Where the shared wait routine continues when one of `wait_events` is set.
    pub(crate) ret: u32,
    /// Event bits (memory.rs) the shared wait routine waits for.
    pub(crate) wait_events: u32,
    /// The value of the last `IN`.
    pub(crate) input: u32,
    pub(crate) r: [u64; REGISTERS],
    pub(crate) interrupts_enabled: bool,
}

impl Registers {
    fn boot() -> Registers {
        Registers {
            label: program::BOOT,
            step: 0,
            ret: 0,
            wait_events: 0,
            input: 0,
            r: [0; REGISTERS],
            interrupts_enabled: true,
        }
    }

    /// Jumps to the first instruction of `label`.
    pub(crate) fn goto(&mut self, label: u32) {
        self.label = label;
        self.step = 0;
    }
}

/// All machine state except memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Core {
    pub(crate) workload: Workload,
    pub(crate) registers: Registers,
    pub(crate) pending: Pending,
    pub(crate) handler: Handler,
    /// The port of an `IN` that `complete_port_in` has not answered yet.
    pub(crate) port_in: Option<u16>,
    pub(crate) instructions: u64,
    pub(crate) exits: u64,
}

/// A deterministic model machine running one of the [`Workload`] programs. It counts instructions, so `run`
/// stops at any instruction target and interrupts can be delivered at any instruction.
///
/// Callers must answer every `Exit::PortIn` with `complete_port_in` before the next `run` (asserted).
#[derive(Clone)]
pub struct ModelGuest {
    core: Core,
    memory: Memory,
}

impl ModelGuest {
    /// A powered-on machine at its first instruction, with zeroed memory and interrupts enabled.
    pub fn new(workload: Workload) -> ModelGuest {
        let core = Core {
            workload,
            registers: Registers::boot(),
            pending: Pending::default(),
            handler: Handler::default(),
            port_in: None,
            instructions: 0,
            exits: 0,
        };
        ModelGuest { core, memory: Memory::new() }
    }

    /// `ModelGuest::new` of [`Workload::from_name`] (`kv`, `timer`, `timer:<ticks>`, `cpu`).
    pub fn from_name(name: &str) -> Option<ModelGuest> {
        Workload::from_name(name).map(ModelGuest::new)
    }

    pub fn workload(&self) -> Workload {
        self.core.workload
    }

    /// Whether the next boundary would take a pending interrupt (a handler is not running and IF is set).
    /// The port of an `IN` that still waits for `complete_port_in` (after a restore, the driver must know).
    pub fn pending_port_in(&self) -> Option<u16> {
        self.core.port_in
    }

    pub fn interrupts_enabled(&self) -> bool {
        self.core.registers.interrupts_enabled && !self.core.handler.active
    }

    /// Whether any raised vector is still waiting for delivery.
    pub fn interrupt_pending(&self) -> bool {
        self.core.pending.any()
    }

    /// Retires one instruction at a boundary where an interrupt may be taken or a handler is running.
    fn step_interrupts(&mut self) -> Option<Exit> {
        let core = &mut self.core;
        if core.registers.interrupts_enabled && core.pending.any() && !core.handler.active {
            interrupt::deliver(core);
        }
        if core.handler.active {
            interrupt::step(core, &mut self.memory);
            core.instructions += 1;
            return None;
        }
        self.step_program()
    }

    /// Retires one program instruction; returns the exit it caused, if any.
    #[inline]
    fn step_program(&mut self) -> Option<Exit> {
        let core = &mut self.core;
        debug_assert!(!core.handler.active);
        let effect = program::step(core.workload, &mut core.registers, &mut self.memory);
        match effect {
            Effect::Continue => {
                core.instructions += 1;
                None
            }
            Effect::Out { port, value } => {
                core.instructions += 1;
                Some(Exit::PortOut { port, size: 4, value })
            }
            Effect::In { port } => {
                core.instructions += 1;
                core.port_in = Some(port);
                Some(Exit::PortIn { port, size: 4 })
            }
            Effect::Halt => {
                core.instructions += 1;
                // HLT with an interrupt already pending (and deliverable) wakes at once instead of exiting.
                let wakes = core.registers.interrupts_enabled && core.pending.any();
                (!wakes).then_some(Exit::Halt)
            }
            // A dead machine retires nothing.
            Effect::Shutdown => Some(Exit::Shutdown),
        }
    }

    /// Runs a program's compute loop several instructions at a time, if it is in one; returns whether it did.
    /// A run of a single instruction never bursts, so single-stepping checks bursts against plain steps.
    fn burst(&mut self, target: u64) -> bool {
        let core = &mut self.core;
        let instructions_max = target - core.instructions;
        if instructions_max < 2 {
            return false;
        }
        let burst = program::burst(core.workload, &mut core.registers, &mut self.memory, instructions_max);
        assert!(burst <= instructions_max);
        core.instructions += burst;
        burst > 0
    }

    /// Whether the interrupt controller has work. Only `inject_interrupt` raises vectors, never a program step,
    /// so once this is false it stays false until `run` returns: the loop then skips the interrupt checks.
    fn interrupt_work(&self) -> bool {
        self.core.pending.any() || self.core.handler.active
    }
}

impl Guest for ModelGuest {
    fn run(&mut self, instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        assert!(self.core.port_in.is_none(), "run() before complete_port_in() answered the pending PortIn");
        let target = instruction_target.unwrap_or(u64::MAX);
        let start = self.core.instructions;
        let mut interrupt_work = self.interrupt_work();
        let exit = loop {
            if self.core.instructions >= target {
                break Exit::InstructionLimit;
            }
            let exit = if interrupt_work {
                let exit = self.step_interrupts();
                interrupt_work = self.interrupt_work();
                exit
            } else if self.burst(target) {
                continue;
            } else {
                self.step_program()
            };
            if let Some(exit) = exit {
                break exit;
            }
        };
        if exit != Exit::InstructionLimit {
            self.core.exits = self.core.exits.wrapping_add(1);
        }
        assert!(self.core.instructions <= target.max(start));
        Ok(exit)
    }

    fn position(&self) -> Position {
        Position { exits: self.core.exits, instructions: self.core.instructions }
    }

    /// `label * 1_000_000 + step`, or `HANDLER_PC + vector * 10 + handler step` inside the interrupt handler.
    fn pc(&self) -> u64 {
        let core = &self.core;
        if core.handler.active {
            return program::HANDLER_PC + u64::from(core.handler.vector) * 10 + u64::from(core.handler.step);
        }
        u64::from(core.registers.label) * 1_000_000 + u64::from(core.registers.step)
    }

    fn counts_instructions(&self) -> bool {
        true
    }

    fn complete_port_in(&mut self, value: u32) {
        assert!(self.core.port_in.is_some(), "complete_port_in() without a pending PortIn");
        self.core.registers.input = value;
        self.core.port_in = None;
    }

    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let range = Memory::dma_range(gpa, buf.len())?;
        buf.copy_from_slice(&self.memory.bytes()[range]);
        Ok(())
    }

    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        let range = Memory::dma_range(gpa, data.len())?;
        self.memory.dma_write(range, data);
        Ok(())
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result<(), GuestError> {
        self.core.pending.raise(vector);
        Ok(())
    }

    fn state_hash(&mut self) -> Result<StateHash, GuestError> {
        Ok(snapshot::state_hash(&self.core, &self.memory))
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        Ok(snapshot::encode(&self.core, &self.memory))
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), GuestError> {
        let (core, memory) = snapshot::decode(bytes)?;
        self.core = core;
        self.memory = memory;
        Ok(())
    }

    fn memory_bytes(&self) -> u64 {
        MEMORY_BYTES as u64
    }

    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, GuestError> {
        Ok(self.memory.take_dirty())
    }

    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        Ok(snapshot::encode_cpu(&self.core))
    }

    fn restore_cpu(&mut self, cpu: &[u8]) -> Result<(), GuestError> {
        let core = snapshot::decode_cpu(cpu)?;
        if core.workload != self.core.workload {
            return Err(GuestError::BadSnapshot(format!(
                "CPU state of a {:?} guest restored on a {:?} guest",
                core.workload, self.core.workload
            )));
        }
        self.core = core;
        Ok(())
    }
}
