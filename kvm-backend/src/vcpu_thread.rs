//! `ThreadedGuest`: a [`KvmGuest`] on a vCPU thread of its own, seen from the runtime thread as an `ft::Guest`.
//!
//! The protocol core and all I/O stay on the runtime thread; only the vCPU's ioctls move. `start_run` hands the
//! guest a run and returns at once, so that an ack that arrives while the guest runs releases its outputs at
//! once instead of after the guest's next exit. The vCPU thread owns the `KvmGuest`, so that every ioctl of the
//! vCPU is made on one thread (KVM reloads a vCPU that moves between threads, which costs most under nested
//! virtualisation). The runtime thread keeps:
//! - a view of guest RAM, for DMA at exits (the guest is stopped then: inputs reach it only at exits);
//! - the position and pc of the last exit, which the vCPU thread reports with each exit;
//! - port answers and interrupts, queued in order and applied on the vCPU thread before the next run or call,
//!   where `KvmGuest` would have applied them at once: neither touches RAM, and `KvmGuest::pc` is the pc at the
//!   last exit, so nothing the core can see depends on when they are applied.
//!
//! Everything else (hashes, snapshots, restores) is a call that waits for the vCPU thread.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use ft::guest::RunStart;
use ft::{Exit, Guest, GuestError, Position, StateHash};

use crate::guest::{GuestHandle, KvmGuest};
use crate::memory::RamView;

/// Called on the vCPU thread when a run has ended (it wakes the runtime's event loop).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// What the runtime thread did to the guest since the last command, in order.
#[derive(Clone, Copy, Debug)]
enum Op {
    CompletePortIn(u32),
    Interrupt(u8),
}

enum Work {
    Run,
    StateHash,
    Snapshot,
    Restore(Vec<u8>),
    TakeDirtyPages,
    SaveCpu,
    RestoreCpu(Vec<u8>),
}

struct Command {
    ops: Vec<Op>,
    work: Work,
}

enum Outcome {
    Run(Result<Exit, GuestError>),
    StateHash(Result<StateHash, GuestError>),
    Snapshot(Result<Vec<u8>, GuestError>),
    Restore(Result<(), GuestError>),
    TakeDirtyPages(Result<Vec<u64>, GuestError>),
}

struct Reply {
    outcome: Outcome,
    exits: u64,
    pc: u64,
}

/// A KVM guest whose vCPU runs on a thread of its own. Dropping it kicks a run in progress and joins the thread.
pub struct ThreadedGuest {
    commands: Option<Sender<Command>>,
    replies: Receiver<Reply>,
    ram: RamView,
    handle: GuestHandle,
    ops: Vec<Op>,
    exits: u64,
    pc: u64,
    running: bool,
    thread: Option<JoinHandle<()>>,
}

/// The vCPU thread is gone (it panicked): every later call reports it.
fn thread_gone() -> GuestError {
    GuestError::Hypervisor("the vCPU thread is gone".into())
}

impl ThreadedGuest {
    /// Moves `guest` to a new vCPU thread. `waker` is called there each time a run ends.
    pub fn spawn(guest: KvmGuest, waker: Waker) -> Result<ThreadedGuest, GuestError> {
        let (commands, inbox) = mpsc::channel::<Command>();
        let (outbox, replies) = mpsc::channel::<Reply>();
        let ram = guest.ram_view();
        let handle = guest.handle();
        let Position { exits, .. } = guest.position();
        let pc = guest.pc();
        let thread = std::thread::Builder::new()
            .name("ftvm-vcpu".into())
            .spawn(move || serve(guest, &inbox, &outbox, &waker))
            .map_err(|error| GuestError::Hypervisor(format!("cannot start the vCPU thread: {error}")))?;
        Ok(ThreadedGuest {
            commands: Some(commands),
            replies,
            ram,
            handle,
            ops: Vec::new(),
            exits,
            pc,
            running: false,
            thread: Some(thread),
        })
    }

    fn send(&mut self, work: Work) -> Result<(), GuestError> {
        assert!(!self.running, "the guest is called while it runs on its vCPU thread");
        let ops = std::mem::take(&mut self.ops);
        let commands = self.commands.as_ref().ok_or_else(thread_gone)?;
        commands.send(Command { ops, work }).map_err(|_| thread_gone())
    }

    fn take(&mut self, reply: Reply) -> Outcome {
        self.exits = reply.exits;
        self.pc = reply.pc;
        reply.outcome
    }

    /// Sends `work` and waits for its outcome.
    fn call(&mut self, work: Work) -> Result<Outcome, GuestError> {
        self.send(work)?;
        let reply = self.replies.recv().map_err(|_| thread_gone())?;
        Ok(self.take(reply))
    }
}

impl ThreadedGuest {
    /// A call whose work answers with bytes (a snapshot, a CPU state).
    fn call_for_bytes(&mut self, work: Work) -> Result<Vec<u8>, GuestError> {
        match self.call(work)? {
            Outcome::Snapshot(result) => result,
            _ => Err(unexpected()),
        }
    }

    /// A call whose work answers with nothing but success (a restore).
    fn call_for_unit(&mut self, work: Work) -> Result<(), GuestError> {
        match self.call(work)? {
            Outcome::Restore(result) => result,
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> GuestError {
    GuestError::Hypervisor("the vCPU thread answered another call".into())
}

impl Guest for ThreadedGuest {
    fn run(&mut self, instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        if instruction_target.is_some() {
            return Err(GuestError::InstructionCountUnsupported);
        }
        match self.call(Work::Run)? {
            Outcome::Run(result) => result,
            _ => Err(unexpected()),
        }
    }

    fn start_run(&mut self, instruction_target: Option<u64>) -> RunStart {
        if instruction_target.is_some() {
            return RunStart::Done(Err(GuestError::InstructionCountUnsupported));
        }
        match self.send(Work::Run) {
            Ok(()) => {
                self.running = true;
                RunStart::Started
            }
            Err(error) => RunStart::Done(Err(error)),
        }
    }

    fn finish_run(&mut self) -> Option<Result<Exit, GuestError>> {
        if !self.running {
            return None;
        }
        let reply = match self.replies.try_recv() {
            Ok(reply) => reply,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => {
                self.running = false;
                return Some(Err(thread_gone()));
            }
        };
        self.running = false;
        Some(match self.take(reply) {
            Outcome::Run(result) => result,
            _ => Err(unexpected()),
        })
    }

    fn kick(&self) {
        self.handle.interrupt();
    }

    fn position(&self) -> Position {
        Position { exits: self.exits, instructions: 0 }
    }

    fn pc(&self) -> u64 {
        self.pc
    }

    fn counts_instructions(&self) -> bool {
        false
    }

    fn complete_port_in(&mut self, value: u32) {
        assert!(!self.running, "a port answer to a running guest");
        self.ops.push(Op::CompletePortIn(value));
    }

    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        assert!(!self.running, "DMA out of a running guest");
        self.ram.read(gpa, buf)
    }

    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        assert!(!self.running, "DMA into a running guest");
        self.ram.write(gpa, data)
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result<(), GuestError> {
        assert!(!self.running, "an interrupt into a running guest");
        self.ops.push(Op::Interrupt(vector));
        Ok(())
    }

    fn state_hash(&mut self) -> Result<StateHash, GuestError> {
        match self.call(Work::StateHash)? {
            Outcome::StateHash(result) => result,
            _ => Err(unexpected()),
        }
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        self.call_for_bytes(Work::Snapshot)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), GuestError> {
        self.call_for_unit(Work::Restore(snapshot.to_vec()))
    }

    fn memory_bytes(&self) -> u64 {
        self.ram.size() as u64
    }

    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, GuestError> {
        match self.call(Work::TakeDirtyPages)? {
            Outcome::TakeDirtyPages(result) => result,
            _ => Err(unexpected()),
        }
    }

    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        self.call_for_bytes(Work::SaveCpu)
    }

    fn restore_cpu(&mut self, cpu: &[u8]) -> Result<(), GuestError> {
        self.call_for_unit(Work::RestoreCpu(cpu.to_vec()))
    }
}

impl Drop for ThreadedGuest {
    fn drop(&mut self) {
        // A run in progress ends at the kick; the thread then finds its inbox closed and returns.
        self.handle.interrupt();
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long the vCPU thread polls for its next command before it sleeps: the runtime thread usually handles an
/// exit and starts the next run within microseconds, and a sleeping thread takes tens of microseconds to wake
/// (an inter-processor interrupt, which nested virtualisation makes dearer still).
const SPIN_NS: u128 = 30_000;

/// Whether this thread may run on more than one CPU. Polling for the next command only pays when the runtime
/// thread, which sends it, can run meanwhile on another CPU; on a process held to one CPU (a node pinned as a
/// host of its own) the poll only takes that CPU from the runtime thread, and every exit costs the whole poll.
fn other_cpus_available() -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid set for sched_getaffinity to fill, of the size we give; CPU_COUNT
    // reads that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return true;
        }
        libc::CPU_COUNT(&set) > 1
    }
}

fn next_command(inbox: &Receiver<Command>, spin_ns: u128) -> Option<Command> {
    let start = std::time::Instant::now();
    loop {
        match inbox.try_recv() {
            Ok(command) => return Some(command),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if start.elapsed().as_nanos() < spin_ns => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return inbox.recv().ok(),
        }
    }
}

/// The vCPU thread: applies the queued operations, does the work, reports, until the runtime side is dropped.
fn serve(mut guest: KvmGuest, inbox: &Receiver<Command>, outbox: &Sender<Reply>, waker: &Waker) {
    let spin_ns = if other_cpus_available() { SPIN_NS } else { 0 };
    while let Some(Command { ops, work }) = next_command(inbox, spin_ns) {
        for op in ops {
            match op {
                Op::CompletePortIn(value) => guest.complete_port_in(value),
                // `KvmGuest` queues interrupts; raising one cannot fail.
                Op::Interrupt(vector) => {
                    let _ = guest.inject_interrupt(vector);
                }
            }
        }
        let is_run = matches!(work, Work::Run);
        let outcome = match work {
            Work::Run => Outcome::Run(guest.run(None)),
            Work::StateHash => Outcome::StateHash(guest.state_hash()),
            Work::Snapshot => Outcome::Snapshot(guest.snapshot()),
            Work::Restore(snapshot) => Outcome::Restore(guest.restore(&snapshot)),
            Work::TakeDirtyPages => Outcome::TakeDirtyPages(guest.take_dirty_pages()),
            Work::SaveCpu => Outcome::Snapshot(guest.save_cpu()),
            Work::RestoreCpu(cpu) => Outcome::Restore(guest.restore_cpu(&cpu)),
        };
        let reply = Reply { outcome, exits: guest.position().exits, pc: guest.pc() };
        if outbox.send(reply).is_err() {
            return;
        }
        if is_run {
            waker();
        }
    }
}
