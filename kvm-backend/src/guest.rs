//! `KvmGuest`: a KVM uniprocessor VM implementing `ft::Guest`.
//!
//! Positions are counts of guest-initiated exits (port I/O, HLT, shutdown); the hardware has no performance
//! counters, so `run` cannot stop at an instruction count. Every returned exit leaves the vCPU at an instruction
//! boundary with the exiting instruction complete (port writes are finished inside KVM before `run` returns), except
//! a port read, which completes when `complete_port_in` supplies its value. Interrupts are queued in the guest
//! (`PendingInterrupts`) and injected only when the architectural state allows it, so the same sequence of calls
//! gives the same behaviour on a fresh or a restored VM.
//!
//! A [`GuestHandle`] reaches the guest from outside the primary or backup that owns it, from any thread: it kicks
//! the vCPU out of `KVM_RUN` (`immediate_exit` and a signal; the run then ends between two exits as
//! `Exit::Kicked`, which is not an exit), and it tells why a guest that ended with `Exit::Shutdown` cannot go on
//! (triple fault, MMIO access, emulation failure).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once};

use ft::{Exit, Guest, GuestError, Position, StateHash};
use xxhash_rust::xxh3::Xxh3;
use zerocopy::IntoBytes;

use crate::arch::x86_64::layout::{LARGE_PAGE_BYTES, MEMORY_BYTES_MAX};
use crate::arch::x86_64::{cpuid, regs};
use crate::error::KvmError;
use crate::interrupts::PendingInterrupts;
use crate::loader;
use crate::memory::GuestRam;
use crate::snapshot::{self, Reader, VcpuState, Writer};
use crate::vcpu::{self, Event};
use crate::vm::Vm;

/// Default guest RAM: small, so that hashing and snapshots stay cheap (about 1 ms per MiB to hash here).
pub const MEMORY_BYTES_DEFAULT: u64 = 16 << 20;
/// Most consecutive non-guest-initiated exits (interrupt windows, signals) `run` absorbs before reporting an
/// error: a bound on the loop, far above what a healthy guest produces.
const INTERNAL_EXITS_MAX: u32 = 1_000_000;

/// How to build a KVM guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvmConfig {
    /// The KVM device (normally `/dev/kvm`).
    pub kvm_path: PathBuf,
    /// Guest RAM in bytes: a multiple of 2 MiB, at most 1 GiB.
    pub memory_bytes: u64,
}

impl Default for KvmConfig {
    fn default() -> KvmConfig {
        KvmConfig { kvm_path: PathBuf::from("/dev/kvm"), memory_bytes: MEMORY_BYTES_DEFAULT }
    }
}

/// A port read that has been reported and not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingIn {
    port: u16,
    size: u8,
    /// KVM does not know about this read (the guest was restored from a snapshot taken while it was pending):
    /// the guest must execute the `IN` again before the answer can be given.
    reexecute: bool,
}

/// Where a kick finds the vCPU: the address of its `kvm_run.immediate_exit` while the mapping exists, and the
/// thread inside `KvmGuest::run`, if one is.
#[derive(Default)]
struct KickTarget {
    /// `kvm_run.immediate_exit`; 0 once the guest is dropped (the mapping goes with it).
    immediate_exit: usize,
    /// The Linux thread id of the thread inside `run`.
    thread: Option<libc::pid_t>,
}

/// What a [`GuestHandle`] shares with its guest.
#[derive(Default)]
struct Shared {
    /// Set by a kick; from then on `run` returns at once, without entering the guest.
    kicked: AtomicBool,
    /// Set by an interrupt (a kick for one run only): the run in progress, or the next one, returns
    /// `Exit::Kicked` and clears it.
    interrupt: AtomicBool,
    /// Why the guest stopped for good (`Exit::Shutdown`), once it has.
    failure: Mutex<Option<String>>,
    target: Mutex<KickTarget>,
    /// Runs a kick or an interrupt cut short between two exits.
    runs_kicked: AtomicU64,
}

/// A handle on a running [`KvmGuest`] from outside the driver that owns it, and from any thread: it can kick the
/// vCPU out of `KVM_RUN` (a timeout), and tells why the guest stopped for good (the protocol only sees
/// `Exit::Shutdown`, which reaches the platform as a power-off with status `u32::MAX`).
#[derive(Clone)]
pub struct GuestHandle {
    shared: Arc<Shared>,
}

// This thread's id, asked of the kernel once: every run names its thread for kicks, and a system call costs
// 10 to 30 µs on a nested host.
thread_local! {
    // SAFETY: gettid has no preconditions.
    static THREAD_ID: libc::pid_t = unsafe { libc::gettid() };
}

/// The signal that interrupts `KVM_RUN` on a kick: the first real-time signal, with a handler that does nothing
/// (its only effect is that `KVM_RUN` returns `EINTR`).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn ignore_kick(_signal: libc::c_int) {}

/// Installs the no-op handler of [`kick_signal`] once per process (the default action would kill the process).
fn install_kick_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid value of this plain C struct; it is filled in below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = ignore_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SA_RESTART: other system calls the signal meets are restarted; KVM_RUN returns EINTR regardless.
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: installs a handler that touches nothing (async-signal-safe) for a signal this crate owns.
        let result = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
        assert_eq!(result, 0, "sigaction of the kick signal: {}", std::io::Error::last_os_error());
    });
}

impl GuestHandle {
    /// Stops the guest's run as soon as possible: a `run` in progress returns (cut short between two exits, as
    /// `Exit::Kicked`, which is not an exit), and every later `run` returns at once. Sets `immediate_exit`, so a
    /// `KVM_RUN` about to start returns at once, and signals the thread inside `run`, so a `KVM_RUN` in progress
    /// returns with `EINTR`.
    pub fn kick(&self) {
        self.shared.kicked.store(true, Ordering::SeqCst);
        self.poke();
    }

    /// Ends the run in progress (or the next one, if none is) with `Exit::Kicked`, and only that one: what a
    /// driver does when it needs the guest back on its vCPU thread (to stop it, for example).
    pub fn interrupt(&self) {
        self.shared.interrupt.store(true, Ordering::SeqCst);
        self.poke();
    }

    fn poke(&self) {
        let target = self.shared.target.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if target.immediate_exit == 0 {
            return;
        }
        // SAFETY: `immediate_exit` is the address of a byte of the vCPU's kvm_run mapping, which exists while the
        // address is non-zero: the guest zeroes it under this lock before the mapping goes. The vCPU thread
        // writes this byte atomically too (`vcpu::set_immediate_exit`), and KVM reads it at each entry.
        unsafe { AtomicU8::from_ptr(target.immediate_exit as *mut u8) }.store(1, Ordering::SeqCst);
        if let Some(thread) = target.thread {
            // SAFETY: `thread` is inside `run` (it clears itself under this lock before leaving), so it is a live
            // thread of this process; the signal's handler does nothing.
            unsafe { libc::tgkill(libc::getpid(), thread, kick_signal()) };
        }
    }

    /// Whether the guest was kicked.
    pub fn kicked(&self) -> bool {
        self.shared.kicked.load(Ordering::SeqCst)
    }

    /// Runs that a kick or an interrupt cut short between two exits (`Exit::Kicked`), so far.
    pub fn runs_kicked(&self) -> u64 {
        self.shared.runs_kicked.load(Ordering::Relaxed)
    }

    /// Why the guest stopped for good (triple fault, MMIO, emulation failure, failed entry), once it has.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// A KVM guest. Field order matters: the VM (and its memory slot) is dropped before the RAM it maps.
pub struct KvmGuest {
    vm: Vm,
    ram: GuestRam,
    exits: u64,
    pending: PendingInterrupts,
    port_in: Option<PendingIn>,
    /// Why the guest stopped for good, once it has.
    shutdown: Option<String>,
    /// RIP at the last exit (or after the last restore): what `pc` reports, so that it does not depend on whether
    /// a port read was answered since (a guest on a vCPU thread answers it at the next run).
    exit_pc: u64,
    /// An error found by a method that cannot return one (`complete_port_in`), reported by the next `run`.
    deferred_error: Option<GuestError>,
    /// KVM logs the guest's writes (since a clone's first `take_dirty_pages`).
    dirty_logging: bool,
    shared: Arc<Shared>,
}

impl Drop for KvmGuest {
    /// Before the vCPU's kvm_run mapping goes (with `vm`, after this): no kick may write to it any more.
    fn drop(&mut self) {
        self.shared.target.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).immediate_exit = 0;
    }
}

fn check_memory_size(bytes: u64) -> Result<usize, KvmError> {
    let valid = (LARGE_PAGE_BYTES..=MEMORY_BYTES_MAX).contains(&bytes) && bytes.is_multiple_of(LARGE_PAGE_BYTES);
    match usize::try_from(bytes) {
        Ok(size) if valid => Ok(size),
        _ => Err(KvmError::MemorySize(bytes)),
    }
}

impl KvmGuest {
    /// Creates a VM, loads the ELF `image` and sets up long mode so the first `run` starts at its entry point.
    pub fn new(config: &KvmConfig, image: &[u8]) -> Result<KvmGuest, KvmError> {
        let guest = KvmGuest::blank(config)?;
        let entry = loader::load(&guest.ram, image)?;
        regs::set_up(&guest.vm.vcpu, &guest.ram, entry)?;
        let mut guest = guest;
        guest.exit_pc = guest.live_pc();
        Ok(guest)
    }

    /// Creates a VM from a snapshot taken by `KvmGuest::snapshot` (for example on another host).
    pub fn from_snapshot(config: &KvmConfig, snapshot: &[u8]) -> Result<KvmGuest, GuestError> {
        let mut guest = KvmGuest::blank(config)?;
        guest.restore(snapshot)?;
        Ok(guest)
    }

    fn blank(config: &KvmConfig) -> Result<KvmGuest, KvmError> {
        let ram = GuestRam::new(check_memory_size(config.memory_bytes)?)?;
        let mut vm = Vm::create(&config.kvm_path, &ram)?;
        install_kick_handler();
        let shared = Arc::new(Shared::default());
        shared.target.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).immediate_exit =
            vcpu::immediate_exit_address(&mut vm.vcpu);
        Ok(KvmGuest {
            vm,
            ram,
            exits: 0,
            pending: PendingInterrupts::default(),
            port_in: None,
            shutdown: None,
            exit_pc: 0,
            deferred_error: None,
            dirty_logging: false,
            shared,
        })
    }

    /// Why the guest stopped for good (after `Exit::Shutdown`).
    pub fn shutdown_reason(&self) -> Option<&str> {
        self.shutdown.as_deref()
    }

    /// A handle that kicks this guest out of `KVM_RUN` from any thread and tells why it stopped, for drivers that
    /// hand the guest to a primary or backup and cannot reach it any more.
    pub fn handle(&self) -> GuestHandle {
        GuestHandle { shared: self.shared.clone() }
    }

    fn set_shutdown(&mut self, reason: Option<String>) {
        *self.shared.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = reason.clone();
        self.shutdown = reason;
    }

    /// Marks this thread as the one inside `run` (a kick signals it), or clears it.
    fn set_running_thread(&self, running: bool) {
        let thread = running.then(|| THREAD_ID.with(|id| *id));
        self.shared.target.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).thread = thread;
    }

    /// After a kick: the run ends between two exits (nothing is counted), and `immediate_exit` is cleared so the
    /// vCPU is left as it was for anything but `run` (hashes, snapshots).
    fn kicked_out(&mut self) -> Exit {
        vcpu::set_immediate_exit(&mut self.vm.vcpu, 0);
        self.shared.runs_kicked.fetch_add(1, Ordering::Relaxed);
        Exit::Kicked
    }

    /// RIP as KVM has it now, or `u64::MAX` if KVM cannot report it.
    fn live_pc(&self) -> u64 {
        self.vm.vcpu.get_regs().map(|regs| regs.rip).unwrap_or(u64::MAX)
    }

    /// A view of guest RAM for another thread (DMA while the vCPU runs elsewhere).
    pub(crate) fn ram_view(&self) -> crate::memory::RamView {
        self.ram.view()
    }

    /// The general registers, for diagnostics (a faulting guest's stack, for example).
    pub fn registers(&self) -> Result<kvm_bindings::kvm_regs, GuestError> {
        Ok(self.vm.vcpu.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?)
    }

    /// Injects the head of the queue if the vCPU can take it, and asks for an interrupt window while anything
    /// else is waiting.
    fn arm_interrupts(&mut self) -> Result<(), KvmError> {
        if let Some(vector) = self.pending.head() {
            if vcpu::ready_for_interrupt(&self.vm.vcpu)? {
                vcpu::inject(&self.vm.vcpu, vector)?;
                self.pending.pop();
            }
        }
        vcpu::request_window(&mut self.vm.vcpu, !self.pending.is_empty());
        Ok(())
    }

    fn exit(&mut self, exit: Exit) -> Result<Exit, GuestError> {
        self.exits += 1;
        self.exit_pc = self.live_pc();
        Ok(exit)
    }

    /// Runs to the next guest-initiated exit, or until a kick.
    fn run_to_exit(&mut self) -> Result<Exit, GuestError> {
        for _ in 0..INTERNAL_EXITS_MAX {
            // Checked before every entry; a kick after this check finds `immediate_exit` or the signal.
            if self.shared.kicked.load(Ordering::SeqCst) || self.shared.interrupt.swap(false, Ordering::SeqCst) {
                return Ok(self.kicked_out());
            }
            self.arm_interrupts()?;
            match vcpu::run_once(&mut self.vm.vcpu)? {
                Event::Out { port, size, value } => {
                    vcpu::complete_io(&mut self.vm.vcpu)?;
                    return self.exit(Exit::PortOut { port, size, value });
                }
                Event::In { port, size } => {
                    self.port_in = Some(PendingIn { port, size, reexecute: false });
                    return self.exit(Exit::PortIn { port, size });
                }
                Event::Halt => return self.exit(Exit::Halt),
                Event::WindowOpen => continue,
                Event::Interrupted => {
                    // A kick whose flag the check above consumed may still set `immediate_exit` after that check
                    // cleared it (`poke` writes it after the flag): left at 1, every later KVM_RUN would return at
                    // once. A kick that is still wanted has its flag set, which the check above sees next.
                    vcpu::set_immediate_exit(&mut self.vm.vcpu, 0);
                    continue;
                }
                Event::Fatal(reason) => {
                    self.set_shutdown(Some(reason));
                    return self.exit(Exit::Shutdown);
                }
            }
        }
        Err(GuestError::Hypervisor(format!("{INTERNAL_EXITS_MAX} exits in a row without a guest-initiated one")))
    }

    /// Answers a port read: executes the `IN` again first if KVM has not seen it (after a restore), writes the
    /// value and lets KVM finish the instruction without running anything else.
    fn answer_port_in(&mut self, pending: PendingIn, value: u32) -> Result<(), KvmError> {
        if pending.reexecute {
            // Nothing is injected: the first instruction the vCPU executes is the pending IN itself.
            vcpu::request_window(&mut self.vm.vcpu, false);
            let event = vcpu::run_once(&mut self.vm.vcpu)?;
            if event != (Event::In { port: pending.port, size: pending.size }) {
                return Err(KvmError::Vcpu(format!("re-executing the pending IN gave {event:?}")));
            }
        }
        vcpu::answer_in(&mut self.vm.vcpu, self.vm.run_size, value)?;
        vcpu::complete_io(&mut self.vm.vcpu)
    }

    /// A snapshot (`with_memory`) or a CPU state (the same container, with an empty memory section).
    fn save_state(&mut self, with_memory: bool) -> Result<Vec<u8>, GuestError> {
        let vcpu = VcpuState::save(&self.vm.vcpu, &self.vm.msrs)?;
        let mut writer = Writer::default();
        writer.u64(self.ram.size() as u64);
        writer.u64(cpuid_fingerprint());
        writer.u64(self.exits);
        // The pc of the last exit is not always KVM's RIP: after an answered port read it is the IN's address
        // while RIP is past it, and the log's next entries carry it.
        writer.u64(self.exit_pc);
        writer.section(&self.encode_port_in());
        let mut pending = Vec::new();
        self.pending.encode(&mut pending);
        writer.section(&pending[2..]);
        writer.section(self.shutdown.as_deref().unwrap_or("").as_bytes());
        vcpu.encode(&mut writer);
        let mut memory = Vec::new();
        if with_memory {
            self.ram.encode_pages(&mut memory);
        }
        writer.section(&memory);
        Ok(snapshot::seal(&writer.payload))
    }

    /// Restores what `save_state` saved; a CPU state (not `with_memory`) must carry no memory, and leaves RAM as
    /// it is.
    fn restore_state(&mut self, snapshot: &[u8], with_memory: bool) -> Result<(), GuestError> {
        let mut reader = Reader::new(snapshot::open(snapshot)?);
        let memory_bytes = reader.u64("memory size")?;
        if memory_bytes != self.ram.size() as u64 {
            return Err(GuestError::BadSnapshot(format!(
                "snapshot of a guest with {memory_bytes} bytes of RAM, this one has {}",
                self.ram.size()
            )));
        }
        if reader.u64("cpuid")? != cpuid_fingerprint() {
            return Err(GuestError::BadSnapshot("taken with a different CPUID table".into()));
        }
        let exits = reader.u64("exits")?;
        let exit_pc = reader.u64("pc")?;
        let port_in = decode_port_in(reader.section("port read")?)?;
        let pending =
            PendingInterrupts::decode(reader.section("pending interrupts")?).map_err(GuestError::BadSnapshot)?;
        let shutdown = std::str::from_utf8(reader.section("shutdown")?)
            .map_err(|_| GuestError::BadSnapshot("shutdown reason is not UTF-8".into()))?;
        let shutdown = (!shutdown.is_empty()).then(|| shutdown.to_string());
        let vcpu = VcpuState::decode(&mut reader)?;
        let memory = reader.section("memory")?;
        let pages = if with_memory {
            Some(self.ram.parse_pages(memory).map_err(GuestError::BadSnapshot)?)
        } else if memory.is_empty() {
            None
        } else {
            return Err(GuestError::BadSnapshot("a CPU state that carries memory (a snapshot?)".into()));
        };
        reader.finish()?;

        // Everything is checked; from here on only the hypervisor can fail. A read KVM still waits for would
        // otherwise be completed into the restored state by the next KVM_RUN.
        if let Some(stale) = self.port_in.take() {
            if !stale.reexecute {
                vcpu::answer_in(&mut self.vm.vcpu, self.vm.run_size, 0)?;
                vcpu::complete_io(&mut self.vm.vcpu)?;
            }
        }
        if let Some((bitmap, pages)) = pages {
            self.ram.restore_pages(bitmap, pages)?;
        }
        vcpu.apply(&self.vm.vcpu)?;
        self.exits = exits;
        self.port_in = port_in;
        self.pending = pending;
        self.set_shutdown(shutdown);
        self.deferred_error = None;
        self.exit_pc = exit_pc;
        Ok(())
    }

    fn encode_port_in(&self) -> [u8; 4] {
        match self.port_in {
            None => [0; 4],
            Some(pending) => {
                let [low, high] = pending.port.to_le_bytes();
                [1, low, high, pending.size]
            }
        }
    }
}

fn decode_port_in(bytes: &[u8]) -> Result<Option<PendingIn>, GuestError> {
    match bytes {
        [0, 0, 0, 0] => Ok(None),
        [1, low, high, size @ (1 | 2 | 4)] => {
            Ok(Some(PendingIn { port: u16::from_le_bytes([*low, *high]), size: *size, reexecute: true }))
        }
        _ => Err(GuestError::BadSnapshot(format!("bad pending port read {bytes:?}"))),
    }
}

fn cpuid_fingerprint() -> u64 {
    xxhash_rust::xxh3::xxh3_64(cpuid::entries().as_slice().as_bytes())
}

impl Guest for KvmGuest {
    fn run(&mut self, instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        if instruction_target.is_some() {
            return Err(GuestError::InstructionCountUnsupported);
        }
        if let Some(error) = self.deferred_error.take() {
            return Err(error);
        }
        if let Some(pending) = self.port_in {
            return Err(GuestError::Hypervisor(format!(
                "run called before complete_port_in answered the read of port {:#x}",
                pending.port
            )));
        }
        if self.shutdown.is_some() {
            return Ok(Exit::Shutdown);
        }
        self.set_running_thread(true);
        let result = self.run_to_exit();
        self.set_running_thread(false);
        result
    }

    fn position(&self) -> Position {
        Position { exits: self.exits, instructions: 0 }
    }

    /// RIP at the last exit, or `u64::MAX` if KVM could not report it. After a port read exit it is the address
    /// of the `IN` (also once the read is answered); after any other exit, of the next instruction.
    fn pc(&self) -> u64 {
        self.exit_pc
    }

    fn counts_instructions(&self) -> bool {
        false
    }

    fn complete_port_in(&mut self, value: u32) {
        let Some(pending) = self.port_in.take() else {
            self.deferred_error = Some(GuestError::Hypervisor("complete_port_in without a pending port read".into()));
            return;
        };
        if let Err(error) = self.answer_port_in(pending, value) {
            self.deferred_error = Some(error.into());
        }
    }

    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.ram.read(gpa, buf)
    }

    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        self.ram.write(gpa, data)
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result<(), GuestError> {
        self.pending.raise(vector);
        Ok(())
    }

    /// xxh3 of RAM, general and special registers, the pending interrupts, the pending port read and the exit
    /// count.
    fn state_hash(&mut self) -> Result<StateHash, GuestError> {
        let regs = self.vm.vcpu.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?;
        let sregs = self.vm.vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
        let mut pending = Vec::new();
        self.pending.encode(&mut pending);
        let port_in = self.encode_port_in();
        let mut hasher = Xxh3::new();
        hasher.update(self.ram.bytes());
        hasher.update(regs.as_bytes());
        hasher.update(sregs.as_bytes());
        hasher.update(&pending);
        hasher.update(&port_in);
        hasher.update(&self.exits.to_le_bytes());
        Ok(hasher.digest())
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        self.save_state(true)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), GuestError> {
        self.restore_state(snapshot, true)
    }

    /// Guest RAM in bytes.
    fn memory_bytes(&self) -> u64 {
        self.ram.size() as u64
    }

    /// The first call turns KVM's dirty log on and reports every page; later calls report the pages the guest
    /// wrote (KVM's log) or the host wrote (vm-memory's bitmap) since the call before.
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, GuestError> {
        let pages = self.ram.size() / crate::memory::PAGE_BYTES;
        if !self.dirty_logging {
            self.vm.enable_dirty_log(&self.ram)?;
            self.ram.take_host_dirty();
            self.dirty_logging = true;
            return Ok((0..pages as u64).collect());
        }
        let log = self.vm.take_dirty_log(&self.ram)?;
        let mut dirty: Vec<u64> = crate::memory::pages_of_bitmap(&log, pages).collect();
        dirty.extend(self.ram.take_host_dirty());
        dirty.sort_unstable();
        dirty.dedup();
        Ok(dirty)
    }

    /// The snapshot's format with an empty memory section: vCPU registers, MSRs, pending interrupts and port read,
    /// exit count.
    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        self.save_state(false)
    }

    fn restore_cpu(&mut self, cpu: &[u8]) -> Result<(), GuestError> {
        self.restore_state(cpu, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<KvmGuest>();
    }

    /// What a kick that loses the race with a run leaves behind: `immediate_exit` set, its flag already taken
    /// (`poke` writes the byte after the flag, and the run may consume the flag in between). The next run must
    /// still reach the guest's exit instead of returning EINTR a million times.
    #[test]
    fn a_stale_immediate_exit_does_not_wedge_the_next_run() {
        let image = crate::corpus::guest_elf("cpu").expect("corpus guest");
        let mut guest = match KvmGuest::new(&KvmConfig::default(), image) {
            Ok(guest) => guest,
            Err(error) if std::env::var("FT_REQUIRE_KVM").as_deref() != Ok("1") => {
                eprintln!("SKIPPED: KVM unusable here: {error}");
                return;
            }
            Err(error) => panic!("KVM is required (FT_REQUIRE_KVM=1): {error}"),
        };
        vcpu::set_immediate_exit(&mut guest.vm.vcpu, 1);
        let exit = guest.run(None).expect("the run reaches an exit");
        assert_ne!(exit, Exit::Kicked, "no kick is pending");
    }

    #[test]
    fn memory_sizes_are_checked() {
        assert!(check_memory_size(MEMORY_BYTES_DEFAULT).is_ok());
        assert!(check_memory_size(LARGE_PAGE_BYTES).is_ok());
        assert!(check_memory_size(MEMORY_BYTES_MAX).is_ok());
        for bad in [0, 4096, LARGE_PAGE_BYTES + 4096, MEMORY_BYTES_MAX + LARGE_PAGE_BYTES] {
            assert!(check_memory_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pending_port_read_round_trips_as_reexecuted() {
        assert_eq!(decode_port_in(&[0, 0, 0, 0]), Ok(None));
        assert_eq!(decode_port_in(&[1, 0x10, 0x05, 4]), Ok(Some(PendingIn { port: 0x510, size: 4, reexecute: true })));
        assert!(decode_port_in(&[1, 0x10, 0x05, 3]).is_err());
        assert!(decode_port_in(&[2, 0, 0, 0]).is_err());
        assert!(decode_port_in(&[0, 0, 0]).is_err());
    }
}
