//! The boot GDT written by the VMM, and the segment registers derived from it (after Firecracker's
//! `arch/x86_64/gdt.rs`).

use kvm_bindings::kvm_segment;

/// Null, 64-bit code (0x08), data (0x10), busy 64-bit TSS (0x18).
pub(crate) const BOOT_GDT: [u64; 4] =
    [entry(0, 0, 0), entry(0xa09b, 0, 0xfffff), entry(0xc093, 0, 0xfffff), entry(0x808b, 0, 0xfffff)];

/// Selector index of each boot segment in `BOOT_GDT`.
pub(crate) const CODE_INDEX: u8 = 1;
pub(crate) const DATA_INDEX: u8 = 2;
pub(crate) const TSS_INDEX: u8 = 3;

const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn bit(entry: u64, shift: u32) -> u8 {
    ((entry >> shift) & 1) as u8
}

/// The segment register KVM expects for a descriptor at `index` of the GDT.
pub(crate) fn segment(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff);
    let granular = bit(entry, 55);
    let limit = if granular == 1 { (raw_limit << 12) | 0xfff } else { raw_limit };
    let present = bit(entry, 47);
    kvm_segment {
        base,
        limit: limit as u32,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: granular,
        avl: bit(entry, 52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_ring_0() {
        let code = segment(BOOT_GDT[usize::from(CODE_INDEX)], CODE_INDEX);
        assert_eq!((code.selector, code.l, code.db, code.dpl, code.present), (0x08, 1, 0, 0, 1));
        assert_eq!((code.type_, code.limit, code.base), (0xb, 0xffff_ffff, 0));
        let data = segment(BOOT_GDT[usize::from(DATA_INDEX)], DATA_INDEX);
        assert_eq!((data.selector, data.type_, data.db, data.s), (0x10, 3, 1, 1));
        let tss = segment(BOOT_GDT[usize::from(TSS_INDEX)], TSS_INDEX);
        assert_eq!((tss.selector, tss.type_, tss.s), (0x18, 0xb, 0));
    }
}
