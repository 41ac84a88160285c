//! x86-64 boot state: 64-bit long mode at CPL0, identity-mapped RAM, a fixed CPUID (docs/guest-abi.md).

pub(crate) mod cpuid;
pub(crate) mod gdt;
pub(crate) mod msr;
pub(crate) mod paging;
pub(crate) mod regs;

/// Guest-physical layout of what the VMM writes before boot.
pub mod layout {
    /// The boot GDT (null, 64-bit code 0x08, data 0x10, TSS 0x18), as Firecracker places it.
    pub const BOOT_GDT_START: u64 = 0x500;
    /// An empty boot IDT: guests install their own before enabling interrupts.
    pub const BOOT_IDT_START: u64 = 0x520;
    /// Initial stack pointer (the guest is expected to switch to its own stack at once).
    pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
    /// Page-map level 4 table.
    pub const PML4_START: u64 = 0x9000;
    /// Page-directory-pointer table.
    pub const PDPTE_START: u64 = 0xa000;
    /// Page directory of 2 MiB pages identity-mapping all of RAM.
    pub const PDE_START: u64 = 0xb000;
    /// Lowest address of the guest image: ELF entry points and segments must be at or above it.
    pub const IMAGE_START: u64 = 0x10_0000;
    /// Size of one large page.
    pub const LARGE_PAGE_BYTES: u64 = 2 << 20;
    /// Largest RAM the single page directory can map.
    pub const MEMORY_BYTES_MAX: u64 = 1 << 30;
}
