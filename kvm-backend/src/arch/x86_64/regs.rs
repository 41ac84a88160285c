//! The vCPU's boot registers: 64-bit long mode, CPL0, interrupts off, RIP at the image entry.

use ft::GuestError;
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::gdt::{segment, BOOT_GDT, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};
use super::paging::write_identity_tables;
use crate::error::KvmError;
use crate::memory::GuestRam;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
/// Bit 1 of RFLAGS is reserved and always set; IF is clear.
const RFLAGS_BOOT: u64 = 0x2;

/// Writes the boot GDT, IDT and page tables into RAM and loads the matching registers.
pub(crate) fn set_up(vcpu: &VcpuFd, ram: &GuestRam, entry: u64) -> Result<(), KvmError> {
    let memory_error = |error: GuestError| KvmError::Memory(error.to_string());
    for (index, descriptor) in BOOT_GDT.iter().enumerate() {
        ram.write(BOOT_GDT_START + index as u64 * 8, &descriptor.to_le_bytes()).map_err(memory_error)?;
    }
    ram.write(BOOT_IDT_START, &0u64.to_le_bytes()).map_err(memory_error)?;
    let cr3 = write_identity_tables(ram).map_err(memory_error)?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    let code = segment(BOOT_GDT[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment(BOOT_GDT[usize::from(DATA_INDEX)], DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(BOOT_GDT[usize::from(TSS_INDEX)], TSS_INDEX);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
    vcpu.set_sregs(&sregs).map_err(KvmError::ioctl("KVM_SET_SREGS"))?;

    let regs = kvm_regs { rip: entry, rsp: BOOT_STACK_POINTER, rflags: RFLAGS_BOOT, ..Default::default() };
    vcpu.set_regs(&regs).map_err(KvmError::ioctl("KVM_SET_REGS"))?;
    Ok(())
}
