//! The fixed CPUID table every guest sees, whatever the host: a baseline x86-64 CPU with no TSC, RDTSCP, RDRAND,
//! XSAVE or APIC advertised. Record and replay on different hosts read the same answers (docs/guest-abi.md).
//!
//! CPUID is intercepted by KVM at CPL0; whether it is at CPL3 depends on the host, so guests should only execute
//! it in their kernel.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use crate::error::KvmError;

/// Leaf 0: highest basic leaf 1, vendor "AuthenticAMD" (the vendor KVM's emulator is told about).
const LEAF_0: [u32; 4] = [1, 0x6874_7541, 0x444d_4163, 0x6974_6e65];
/// Leaf 1 EAX: family 0x17, model 0x31, stepping 0 (a fixed, made-up signature).
const SIGNATURE: u32 = 0x0083_0f10;
/// Leaf 1 EBX: CLFLUSH line of 64 bytes, one logical processor, APIC id 0.
const LEAF_1_EBX: u32 = 0x0001_0800;
/// Leaf 1 ECX: SSE3, CX16, HYPERVISOR.
const LEAF_1_ECX: u32 = (1 << 0) | (1 << 13) | (1 << 31);
/// Leaf 1 EDX: FPU, DE, PSE, MSR, PAE, CX8, SEP, PGE, CMOV, PAT, PSE36, CLFSH, MMX, FXSR, SSE, SSE2.
/// TSC (bit 4) is deliberately absent: the TSC is not deterministic on this platform.
const LEAF_1_EDX: u32 = (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 11)
    | (1 << 13)
    | (1 << 15)
    | (1 << 16)
    | (1 << 17)
    | (1 << 19)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26);
/// Leaf 0x8000_0001 ECX: LAHF/SAHF in long mode.
const EXT_1_ECX: u32 = 1 << 0;
/// Leaf 0x8000_0001 EDX: SYSCALL, NX, LM (RDTSCP, bit 27, absent).
const EXT_1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 29);
/// Leaf 0x8000_0008 EAX: 39 physical and 48 virtual address bits.
const EXT_8_EAX: u32 = 0x3027;
/// Brand string of leaves 0x8000_0002..=0x8000_0004.
const BRAND: &[u8; 48] = b"ftvm deterministic x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

fn leaf(function: u32, registers: [u32; 4]) -> kvm_cpuid_entry2 {
    let [eax, ebx, ecx, edx] = registers;
    kvm_cpuid_entry2 { function, index: 0, flags: 0, eax, ebx, ecx, edx, ..Default::default() }
}

fn brand_leaf(part: usize) -> kvm_cpuid_entry2 {
    let mut registers = [0u32; 4];
    for (index, register) in registers.iter_mut().enumerate() {
        let start = part * 16 + index * 4;
        let mut word = [0u8; 4];
        word.copy_from_slice(&BRAND[start..start + 4]);
        *register = u32::from_le_bytes(word);
    }
    leaf(0x8000_0002 + part as u32, registers)
}

/// The entries of the fixed table, in order.
pub(crate) fn entries() -> Vec<kvm_cpuid_entry2> {
    let mut entries = vec![
        leaf(0, LEAF_0),
        leaf(1, [SIGNATURE, LEAF_1_EBX, LEAF_1_ECX, LEAF_1_EDX]),
        leaf(0x8000_0000, [0x8000_0008, 0, 0, 0]),
        leaf(0x8000_0001, [SIGNATURE, 0, EXT_1_ECX, EXT_1_EDX]),
    ];
    entries.extend((0..3).map(brand_leaf));
    entries.push(leaf(0x8000_0008, [EXT_8_EAX, 0, 0, 0]));
    entries
}

/// The fixed table as KVM_SET_CPUID2 wants it.
pub(crate) fn table() -> Result<CpuId, KvmError> {
    CpuId::from_entries(&entries()).map_err(|error| KvmError::Memory(format!("CPUID table: {error:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_hides_nondeterministic_features() {
        let entries = entries();
        let leaf_1 = entries.iter().find(|entry| entry.function == 1).expect("leaf 1");
        assert_eq!(leaf_1.edx & (1 << 4), 0, "TSC must not be advertised");
        assert_eq!(leaf_1.ecx & (1 << 30), 0, "RDRAND must not be advertised");
        let ext_1 = entries.iter().find(|entry| entry.function == 0x8000_0001).expect("ext leaf 1");
        assert_eq!(ext_1.edx & (1 << 27), 0, "RDTSCP must not be advertised");
        assert_eq!(entries.iter().filter(|entry| entry.function == 0x8000_0003).count(), 1);
    }
}
