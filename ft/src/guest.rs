//! The machine the protocol makes fault tolerant.
//!
//! A `Guest` is the CPU and memory of a uniprocessor VM: deterministic between exits, with every outside
//! influence (port reads, DMA, interrupts) passing through this interface. Devices are not part of it: they live
//! in [`crate::platform`] and are shared by every guest implementation, so that the model guest of the simulator
//! and the KVM guest speak the same guest ABI (docs/guest-abi.md) and produce the same kind of log.

use crate::position::Position;

/// A 64-bit digest of guest state (memory plus CPU registers), compared at checkpoints.
pub type StateHash = u64;

/// The unit of memory that cloning copies and dirty tracking reports.
pub const PAGE_BYTES: usize = 4096;

/// Why `Guest::run` returned. Every variant except `InstructionLimit` is guest-initiated and counts as an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `OUT port, value` of `size` bytes (1, 2 or 4).
    PortOut { port: u16, size: u8, value: u32 },
    /// `IN port` of `size` bytes; the caller must answer with [`Guest::complete_port_in`] before `run` again.
    PortIn { port: u16, size: u8 },
    /// The guest waits for an interrupt (`HLT`).
    Halt,
    /// The guest can run no further (triple fault or fatal state); nothing will change that.
    Shutdown,
    /// The instruction target given to `run` was reached (not an exit; position.exits is unchanged).
    InstructionLimit,
    /// The run was cut short from outside (a kick, [`Guest::kick`]) somewhere between two exits: not an exit, and
    /// not a position either (a guest that cannot count instructions cannot say where it stopped), so nothing may
    /// be delivered to the guest until its next exit.
    Kicked,
}

/// How [`Guest::start_run`] went.
#[derive(Debug, PartialEq, Eq)]
pub enum RunStart {
    /// The run happened on the caller's thread and is over.
    Done(Result<Exit, GuestError>),
    /// The run goes on on the guest's own vCPU thread; [`Guest::finish_run`] gives its result once it ends.
    Started,
}

/// A fault of the guest implementation (not of the guest program, which shows up as `Exit::Shutdown`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestError {
    /// A DMA or memory access outside guest memory.
    #[error("guest memory access out of range: gpa {gpa:#x}, {len} bytes")]
    MemoryOutOfRange { gpa: u64, len: usize },
    /// `run` was called with an instruction target on a machine that cannot count instructions.
    #[error("this guest cannot stop at an instruction count")]
    InstructionCountUnsupported,
    /// A snapshot that this implementation cannot restore (wrong version, size, or corrupt).
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
    /// The hypervisor failed (KVM ioctl errors and the like).
    #[error("hypervisor: {0}")]
    Hypervisor(String),
    /// This guest implementation cannot be cloned (no dirty tracking or CPU state transfer).
    #[error("this guest cannot be cloned (no dirty-page tracking or CPU state transfer)")]
    CloneUnsupported,
}

/// A deterministic uniprocessor machine.
///
/// Contract (checked by tests in `sim` and `kvm-backend`): two guests built from the same image, given the same
/// sequence of calls, return the same exits at the same positions and the same state hashes.
pub trait Guest {
    /// Runs until the next guest-initiated exit, or until `instruction_target` instructions have retired in total
    /// (then returns `Exit::InstructionLimit`). A target at or before the current position returns at once.
    fn run(&mut self, instruction_target: Option<u64>) -> Result<Exit, GuestError>;

    /// The position after the last exit (or instruction limit).
    fn position(&self) -> Position;

    /// The program counter, as a cheap check that replay is where the log says it is.
    fn pc(&self) -> u64;

    /// Whether `run` accepts an instruction target.
    fn counts_instructions(&self) -> bool;

    /// Answers the pending `Exit::PortIn`.
    fn complete_port_in(&mut self, value: u32);

    /// Reads guest memory (device DMA out of the guest: transmit buffers, disk writes).
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError>;

    /// Writes guest memory (device DMA into the guest: received frames, disk read data).
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError>;

    /// Raises an interrupt. The guest takes it at its next instruction boundary where interrupts are enabled;
    /// until then it is pending guest state (and so part of the hash and the snapshot).
    fn inject_interrupt(&mut self, vector: u8) -> Result<(), GuestError>;

    /// Digest of memory and CPU state.
    fn state_hash(&mut self) -> Result<StateHash, GuestError>;

    /// Complete machine state, in the implementation's own versioned format.
    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError>;

    /// Restores a snapshot taken by the same implementation.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), GuestError>;

    /// Bytes of guest memory (a multiple of [`PAGE_BYTES`]) that a clone copies; 0 for a guest that cannot be
    /// cloned (re-protection then refuses it with a clear error).
    fn memory_bytes(&self) -> u64 {
        0
    }

    /// The pages (numbers, ascending) written since the last call, by the guest or by the host (DMA): what a
    /// pre-copy round sends again. The first call reports every page written since the guest was built.
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, GuestError> {
        Err(GuestError::CloneUnsupported)
    }

    /// The CPU state without memory (registers, pending interrupts, position), in the implementation's own
    /// versioned and checksummed format: what the cut of a clone sends beside the last dirty pages.
    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        Err(GuestError::CloneUnsupported)
    }

    /// Restores what [`Guest::save_cpu`] saved, on a guest built from the same image.
    fn restore_cpu(&mut self, _cpu: &[u8]) -> Result<(), GuestError> {
        Err(GuestError::CloneUnsupported)
    }

    /// Starts `run`. A guest with a vCPU thread of its own returns at once with `Started`, and the driver goes on
    /// with its I/O (acks, timers) while the guest runs; the others run on the caller's thread. Until the run has
    /// finished, no other method may be called but `finish_run` and `kick`.
    fn start_run(&mut self, instruction_target: Option<u64>) -> RunStart {
        RunStart::Done(self.run(instruction_target))
    }

    /// The result of a run that `start_run` started, once it has ended; `None` while it goes on.
    fn finish_run(&mut self) -> Option<Result<Exit, GuestError>> {
        None
    }

    /// Asks a started run to end soon: it returns `Exit::Kicked` unless an exit comes first. A no-op for guests
    /// that run on the caller's thread.
    fn kick(&self) {}
}

/// Lets a driver pick the guest at run time (the simulator runs model and KVM guests through the same hosts).
impl<G: Guest + ?Sized> Guest for Box<G> {
    fn run(&mut self, instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        (**self).run(instruction_target)
    }
    fn position(&self) -> Position {
        (**self).position()
    }
    fn pc(&self) -> u64 {
        (**self).pc()
    }
    fn counts_instructions(&self) -> bool {
        (**self).counts_instructions()
    }
    fn complete_port_in(&mut self, value: u32) {
        (**self).complete_port_in(value)
    }
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        (**self).read_memory(gpa, buf)
    }
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        (**self).write_memory(gpa, data)
    }
    fn inject_interrupt(&mut self, vector: u8) -> Result<(), GuestError> {
        (**self).inject_interrupt(vector)
    }
    fn state_hash(&mut self) -> Result<StateHash, GuestError> {
        (**self).state_hash()
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        (**self).snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), GuestError> {
        (**self).restore(snapshot)
    }
    fn memory_bytes(&self) -> u64 {
        (**self).memory_bytes()
    }
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, GuestError> {
        (**self).take_dirty_pages()
    }
    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        (**self).save_cpu()
    }
    fn restore_cpu(&mut self, cpu: &[u8]) -> Result<(), GuestError> {
        (**self).restore_cpu(cpu)
    }
    fn start_run(&mut self, instruction_target: Option<u64>) -> RunStart {
        (**self).start_run(instruction_target)
    }
    fn finish_run(&mut self) -> Option<Result<Exit, GuestError>> {
        (**self).finish_run()
    }
    fn kick(&self) {
        (**self).kick()
    }
}
