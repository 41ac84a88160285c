//! The guest ABI: the ports, descriptors and interrupt vectors every guest uses to reach its devices.
//!
//! Everything is port I/O with 32-bit values, because a port exit is the cheapest guest-initiated exit under
//! KVM and its position is deterministic. Bulk data moves by DMA through descriptors in guest memory, so one
//! exit carries a whole frame, disk request or console line. docs/guest-abi.md is the prose version of this file.
//!
//! `rdtsc`, `rdtscp` and `rdrand` are not deterministic on KVM hosts without a PMU and cannot be trapped: a guest
//! must read time from [`CLOCK_LO`]/[`CLOCK_HI`] and entropy from [`ENTROPY`].

/// First port of the 16550 UART (COM1): bytes written to its THR are console output.
pub const SERIAL_BASE: u16 = 0x3f8;
/// Number of 16550 registers.
pub const SERIAL_PORTS: u16 = 8;

/// OUT: guest-physical address of a [`Buffer`] holding console bytes (one exit per line instead of per byte).
pub const CONSOLE_WRITE: u16 = 0x500;
/// OUT: power off; the value is the guest's exit status. Travels in the log as a control entry.
pub const POWER_OFF: u16 = 0x504;
/// OUT: yield. A CPU-bound guest writes here so that pending interrupts can be delivered (value ignored).
pub const YIELD: u16 = 0x508;

/// IN: latches the clock (nanoseconds since the VM first started, monotonic across failover) and returns its low
/// 32 bits. Logged.
pub const CLOCK_LO: u16 = 0x510;
/// IN: the high 32 bits of the value latched by the last [`CLOCK_LO`] read. Deterministic, not logged.
pub const CLOCK_HI: u16 = 0x514;
/// IN: 32 random bits. Logged.
pub const ENTROPY: u16 = 0x518;
/// OUT: periodic timer period in microseconds (0 stops it). Each expiry raises [`VECTOR_TIMER`]; expiries
/// that pass while one is pending coalesce.
pub const TIMER_PERIOD_US: u16 = 0x520;

/// OUT: guest-physical address of a [`DiskRequest`] descriptor. The request completes asynchronously.
pub const DISK_SUBMIT: u16 = 0x530;
/// IN: pops the tag of the oldest completed disk request, or [`DISK_NONE`].
pub const DISK_COMPLETION: u16 = 0x534;
/// IN: the status of the request last popped from [`DISK_COMPLETION`] (0 = ok, see [`DiskStatus`]).
pub const DISK_STATUS: u16 = 0x538;
/// IN: disk capacity in sectors (low 32 bits).
pub const DISK_SECTORS: u16 = 0x53c;
/// Most disk requests in flight at once; a submission beyond it completes at once with `BadRequest`.
pub const DISK_IN_FLIGHT_MAX: usize = 256;
/// Returned by [`DISK_COMPLETION`] when nothing has completed.
pub const DISK_NONE: u32 = u32::MAX;

/// OUT: guest-physical address of a [`Buffer`] holding one frame to transmit.
pub const NET_TX: u16 = 0x540;
/// OUT: guest-physical address of a receive [`Buffer`] of [`NET_RX_BUFFER_BYTES`] payload bytes. The device fills
/// one frame into it, writes its length and raises [`VECTOR_NET`]; the guest posts again to receive the next.
pub const NET_RX_POST: u16 = 0x544;

/// Interrupt vector of the periodic timer.
pub const VECTOR_TIMER: u8 = 0x20;
/// Interrupt vector of disk completions.
pub const VECTOR_DISK: u8 = 0x21;
/// Interrupt vector of network receive.
pub const VECTOR_NET: u8 = 0x22;

/// Disk sector size in bytes.
pub const SECTOR_BYTES: usize = 512;
/// Largest disk request, in sectors (64 KiB).
pub const DISK_REQUEST_SECTORS_MAX: u32 = 128;
/// Largest frame (payload bytes of a network buffer).
pub const NET_FRAME_BYTES_MAX: usize = 2048;
/// Payload capacity a posted receive buffer must have.
pub const NET_RX_BUFFER_BYTES: usize = NET_FRAME_BYTES_MAX;
/// Largest console write through [`CONSOLE_WRITE`].
pub const CONSOLE_WRITE_BYTES_MAX: usize = 4096;

/// `Buffer` layout in guest memory: a little-endian `u32` length followed by that many bytes.
pub const BUFFER_HEADER_BYTES: u64 = 4;

/// `DiskRequest` layout in guest memory (little-endian, 32 bytes):
/// `op: u32` (1 = read, 2 = write), `tag: u32`, `sector: u64`, `sectors: u32`, `reserved: u32`, `buffer_gpa: u64`.
pub const DISK_REQUEST_BYTES: usize = 32;
/// Disk operation code for a read.
pub const DISK_OP_READ: u32 = 1;
/// Disk operation code for a write.
pub const DISK_OP_WRITE: u32 = 2;

/// Status codes returned by [`DISK_STATUS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum DiskStatus {
    Ok = 0,
    /// The descriptor was malformed (bad op, too large, out of range).
    BadRequest = 1,
    /// The storage reported an error.
    IoError = 2,
}

impl DiskStatus {
    pub fn from_u32(value: u32) -> Option<DiskStatus> {
        match value {
            0 => Some(DiskStatus::Ok),
            1 => Some(DiskStatus::BadRequest),
            2 => Some(DiskStatus::IoError),
            _ => None,
        }
    }
}
