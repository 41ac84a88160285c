//! Port I/O. The corpus kernel's TSS I/O bitmap lets CPL3 code reach every port of the ABI (below 0x600).

/// Writes a 32-bit value to a port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O to the ABI's ports touches no memory of this program; the device may DMA into guest
    // memory only through descriptors the caller handed over, which the callers in this crate keep alive.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) };
}

/// Reads a 32-bit value from a port.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outl`; a read returns a value and changes no memory of this program.
    unsafe { core::arch::asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack, preserves_flags)) };
    value
}
