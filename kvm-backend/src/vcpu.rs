//! One step of the vCPU and the raw pieces kvm-ioctls lacks: KVM_INTERRUPT and answering a port read after
//! the exit that asked for it.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use kvm_bindings::{kvm_interrupt, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::error::KvmError;

/// `_IOW(KVMIO, 0x86, struct kvm_interrupt)`.
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// What one `KVM_RUN` ended with, with the borrow of `kvm_run` already released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Out {
        port: u16,
        size: u8,
        value: u32,
    },
    In {
        port: u16,
        size: u8,
    },
    Halt,
    /// The interrupt window asked for opened (not guest-initiated).
    WindowOpen,
    /// A signal or `immediate_exit` interrupted the run (not guest-initiated).
    Interrupted,
    /// The guest cannot go on: triple fault, failed entry, emulation failure, MMIO outside the port-only ABI.
    Fatal(String),
}

fn little_endian(data: &[u8]) -> u32 {
    data.iter().take(4).rev().fold(0, |value, &byte| (value << 8) | u32::from(byte))
}

/// `KVM_INTERNAL_ERROR_EMULATION`: the instruction emulator could not run an instruction.
const INTERNAL_ERROR_EMULATION: u32 = 1;

/// Enters the guest once and classifies the exit.
pub(crate) fn run_once(vcpu: &mut VcpuFd) -> Result<Event, KvmError> {
    match classify(vcpu)? {
        Some(event) => Ok(event),
        // An internal error, described from kvm_run once the borrow of the exit has ended.
        None => Ok(Event::Fatal(internal_error(vcpu))),
    }
}

/// Describes a `KVM_EXIT_INTERNAL_ERROR` from its suberror, with the RIP it happened at.
fn internal_error(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    let suberror = if run.exit_reason == KVM_EXIT_INTERNAL_ERROR {
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the kernel filled the `internal` member of the union.
        Some(unsafe { run.__bindgen_anon_1.internal.suberror })
    } else {
        None
    };
    let rip = vcpu.get_regs().map(|regs| format!(" at rip {:#x}", regs.rip)).unwrap_or_default();
    match suberror {
        Some(INTERNAL_ERROR_EMULATION) => {
            format!(
                "emulation failure{rip}: KVM's instruction emulator cannot run this instruction (KVM internal error)"
            )
        }
        Some(other) => format!("KVM internal error, suberror {other}{rip}"),
        None => format!("KVM internal error{rip}"),
    }
}

/// Stores `value` into `kvm_run.immediate_exit`. `immediate_exit` is the one byte of `kvm_run` that another thread
/// writes too (a kick, see `KvmGuest::handle`), so every write of it is atomic.
pub(crate) fn set_immediate_exit(vcpu: &mut VcpuFd, value: u8) {
    let field = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
    // SAFETY: `field` points at the `immediate_exit` byte of this vCPU's kvm_run mapping, which lives as long as
    // `vcpu`; a u8 is always aligned for AtomicU8, and every access of it from this crate is atomic.
    unsafe { AtomicU8::from_ptr(field) }.store(value, Ordering::SeqCst);
}

/// The address of `kvm_run.immediate_exit`, for kicks from another thread.
pub(crate) fn immediate_exit_address(vcpu: &mut VcpuFd) -> usize {
    std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit) as usize
}

/// The event of one `KVM_RUN`, or None for an internal error (which `run_once` describes).
fn classify(vcpu: &mut VcpuFd) -> Result<Option<Event>, KvmError> {
    let exit = match vcpu.run() {
        Ok(exit) => exit,
        Err(error) if error.errno() == libc::EINTR || error.errno() == libc::EAGAIN => {
            return Ok(Some(Event::Interrupted))
        }
        Err(error) => return Err(KvmError::Ioctl { operation: "KVM_RUN", source: error }),
    };
    Ok(Some(match exit {
        VcpuExit::IoOut(port, data) => Event::Out { port, size: data.len() as u8, value: little_endian(data) },
        VcpuExit::IoIn(port, data) => Event::In { port, size: data.len() as u8 },
        VcpuExit::Hlt => Event::Halt,
        VcpuExit::IrqWindowOpen => Event::WindowOpen,
        VcpuExit::Intr => Event::Interrupted,
        VcpuExit::Shutdown => Event::Fatal("shutdown (triple fault)".into()),
        VcpuExit::MmioRead(gpa, data) => {
            Event::Fatal(format!("MMIO read of {} bytes at {gpa:#x}: the guest ABI is port I/O only", data.len()))
        }
        VcpuExit::MmioWrite(gpa, data) => {
            Event::Fatal(format!("MMIO write of {} bytes at {gpa:#x}: the guest ABI is port I/O only", data.len()))
        }
        VcpuExit::FailEntry(reason, cpu) => Event::Fatal(format!("entry failed: reason {reason:#x} on cpu {cpu}")),
        VcpuExit::InternalError => return Ok(None),
        other => Event::Fatal(format!("unexpected exit {other:?}")),
    }))
}

/// Completes the instruction of the last I/O exit inside KVM without running any guest instruction: KVM
/// finishes a pending port access before it honours `immediate_exit`.
pub(crate) fn complete_io(vcpu: &mut VcpuFd) -> Result<(), KvmError> {
    set_immediate_exit(vcpu, 1);
    let result = vcpu.run().map(|_| ()).map_err(|error| error.errno());
    set_immediate_exit(vcpu, 0);
    match result {
        Err(errno) if errno == libc::EINTR => Ok(()),
        Err(errno) => {
            Err(KvmError::Ioctl { operation: "KVM_RUN (complete I/O)", source: kvm_ioctls::Error::new(errno) })
        }
        Ok(()) => Err(KvmError::Vcpu("KVM_RUN with immediate_exit entered the guest".into())),
    }
}

/// Writes the answer of a pending `IN` into `kvm_run`'s data area.
pub(crate) fn answer_in(vcpu: &mut VcpuFd, run_size: usize, value: u32) -> Result<(), KvmError> {
    let run = vcpu.get_kvm_run();
    if run.exit_reason != KVM_EXIT_IO {
        return Err(KvmError::Vcpu("no port read is pending in kvm_run".into()));
    }
    // SAFETY: exit_reason is KVM_EXIT_IO, so the kernel filled the `io` member of the exit union.
    let io = unsafe { run.__bindgen_anon_1.io };
    let offset = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
    let size = usize::from(io.size).min(4);
    if io.count != 1 || offset.checked_add(size).is_none_or(|end| end > run_size) {
        return Err(KvmError::Vcpu(format!("bad kvm_run I/O area: offset {offset}, size {size}")));
    }
    let base = run as *mut kvm_bindings::kvm_run as *mut u8;
    // SAFETY: `base` is the start of the vCPU's kvm_run mapping of `run_size` bytes, which lives as long as the
    // vCPU; `offset + size <= run_size` was checked above, the area is plain bytes, and `run` (the only other
    // reference into the mapping) is not used after this point.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), size) };
    data.copy_from_slice(&value.to_le_bytes()[..size]);
    Ok(())
}

/// Whether an external interrupt can be injected now: IF set, no STI/MOV-SS shadow, nothing already injected.
/// Decided from architectural state, so the decision is the same on a restored VM.
pub(crate) fn ready_for_interrupt(vcpu: &VcpuFd) -> Result<bool, KvmError> {
    let regs = vcpu.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?;
    if regs.rflags & RFLAGS_IF == 0 {
        return Ok(false);
    }
    let events = vcpu.get_vcpu_events().map_err(KvmError::ioctl("KVM_GET_VCPU_EVENTS"))?;
    Ok(events.interrupt.shadow == 0 && events.interrupt.injected == 0 && events.exception.injected == 0)
}

/// Queues `vector` for delivery at the next entry (KVM_INTERRUPT; userspace interrupt controller).
pub(crate) fn inject(vcpu: &VcpuFd, vector: u8) -> Result<(), KvmError> {
    let interrupt = kvm_interrupt { irq: u32::from(vector) };
    // SAFETY: the fd is a vCPU fd owned by `vcpu` and KVM_INTERRUPT reads exactly one `struct kvm_interrupt`,
    // which `interrupt` is and which outlives the call; the return value is checked.
    let result = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_INTERRUPT, &interrupt) };
    if result != 0 {
        return Err(KvmError::Ioctl { operation: "KVM_INTERRUPT", source: kvm_ioctls::Error::last() });
    }
    Ok(())
}

/// Asks KVM to exit as soon as the guest can take an interrupt.
pub(crate) fn request_window(vcpu: &mut VcpuFd, request: bool) {
    vcpu.get_kvm_run().request_interrupt_window = u8::from(request);
}

#[cfg(test)]
mod tests {
    use super::little_endian;

    #[test]
    fn port_data_is_little_endian() {
        assert_eq!(little_endian(&[0x78]), 0x78);
        assert_eq!(little_endian(&[0x78, 0x56]), 0x5678);
        assert_eq!(little_endian(&[0x78, 0x56, 0x34, 0x12]), 0x1234_5678);
    }
}
