//! The guest side of the ftvm guest ABI (docs/guest-abi.md, `ft/src/abi.rs`) for `no_std` Rust guests.
//!
//! A Rust guest is a static library linked with the corpus kernel (`corpus/guests/common`): the kernel's CPL0
//! part sets up the descriptor tables and interrupt stubs and calls the guest's `main` at CPL3, where all Rust
//! code runs (the host emulates CPL0 code without SSE; CPL3 code runs natively and may use it). This crate gives
//! that code the devices: ports, interrupts, clock and entropy, console, disk, network, a heap, a panic handler,
//! and the [`entry!`] macro that names the guest's main function.
#![no_std]

extern crate alloc;

pub mod console;
pub mod disk;
pub mod heap;
pub mod net;
mod port;
mod rt;

pub use port::{inl, outl};

/// Ports of the ABI (`ft/src/abi.rs` is the source of truth).
pub mod abi {
    pub const CONSOLE_WRITE: u16 = 0x500;
    pub const POWER_OFF: u16 = 0x504;
    pub const YIELD: u16 = 0x508;
    pub const CLOCK_LO: u16 = 0x510;
    pub const CLOCK_HI: u16 = 0x514;
    pub const ENTROPY: u16 = 0x518;
    pub const TIMER_PERIOD_US: u16 = 0x520;
    pub const DISK_SUBMIT: u16 = 0x530;
    pub const DISK_COMPLETION: u16 = 0x534;
    pub const DISK_STATUS: u16 = 0x538;
    pub const DISK_SECTORS: u16 = 0x53c;
    pub const DISK_NONE: u32 = u32::MAX;
    pub const NET_TX: u16 = 0x540;
    pub const NET_RX_POST: u16 = 0x544;
    pub const SECTOR_BYTES: usize = 512;
    pub const DISK_REQUEST_SECTORS_MAX: u32 = 128;
    pub const NET_FRAME_BYTES_MAX: usize = 2048;
    pub const CONSOLE_WRITE_BYTES_MAX: usize = 4096;
}

/// Bits of [`take_pending`]: which device interrupts fired since the last call.
pub const IRQ_TIMER: u32 = 1;
pub const IRQ_DISK: u32 = 2;
pub const IRQ_NET: u32 = 4;

extern "C" {
    /// Set by the kernel's interrupt stubs (corpus/guests/common/start.S), one bit per vector.
    static mut irq_pending: u32;
}

/// Takes and clears the pending-interrupt bits. An `xchg` is atomic against the interrupt stubs.
pub fn take_pending() -> u32 {
    // SAFETY: `irq_pending` is a u32 defined by the kernel and only ever accessed atomically or by the stubs'
    // single read-modify-write instructions; an AtomicU32 has the same layout.
    let pending = unsafe { &*(core::ptr::addr_of_mut!(irq_pending) as *const core::sync::atomic::AtomicU32) };
    pending.swap(0, core::sync::atomic::Ordering::SeqCst)
}

/// Sleeps until an interrupt is pending (at once if one already is). A user-mode `hlt` traps into the kernel,
/// which halts on the guest's behalf (docs/guest-abi.md, "Why work runs at CPL3").
pub fn wait_for_interrupt() {
    // SAFETY: at CPL3 `hlt` raises #GP, which the corpus kernel handles as "wait for an interrupt" and returns
    // past the instruction with every register as it was. Memory may change meanwhile (interrupt stubs, DMA), so
    // the asm is not `nomem`: the compiler must not keep values of memory across it.
    unsafe { core::arch::asm!("hlt", options(nostack)) };
}

/// The guest clock: nanoseconds since the VM first started, monotonic across failover (a logged input).
pub fn clock_ns() -> u64 {
    let low = u64::from(inl(abi::CLOCK_LO));
    let high = u64::from(inl(abi::CLOCK_HI));
    (high << 32) | low
}

/// 32 random bits (a logged input: the backup sees the same).
pub fn entropy() -> u32 {
    inl(abi::ENTROPY)
}

/// 64 random bits.
pub fn entropy_u64() -> u64 {
    (u64::from(entropy()) << 32) | u64::from(entropy())
}

/// Starts the periodic timer (`IRQ_TIMER`); 0 stops it.
pub fn set_timer_period_us(period_us: u32) {
    outl(abi::TIMER_PERIOD_US, period_us);
}

/// An exit that does nothing: pending interrupts are delivered here. A guest that computes for long stretches
/// must yield now and then (the host can only interrupt it at exits).
pub fn yield_now() {
    outl(abi::YIELD, 0);
}

/// Powers the VM off with `status` (0 is success).
pub fn power_off(status: u32) -> ! {
    console::flush();
    outl(abi::POWER_OFF, status);
    loop {
        wait_for_interrupt();
    }
}

/// The guest-physical address of a guest object: RAM is identity-mapped below 4 GiB (docs/guest-abi.md).
pub fn gpa_of<T: ?Sized>(object: *const T) -> u32 {
    object as *const u8 as usize as u32
}
