//! The model-specific registers a snapshot carries. Without an in-kernel irqchip KVM cannot set every MSR it
//! reports, so the VM keeps the subset of this list that it can read and write back (probed at creation).

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// SYSENTER_CS/ESP/EIP, PAT, STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, MISC_ENABLE.
const CANDIDATES: [u32; 10] =
    [0x174, 0x175, 0x176, 0x277, 0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102, 0x1a0];

fn single(index: u32, data: u64) -> Option<Msrs> {
    Msrs::from_entries(&[kvm_msr_entry { index, data, ..Default::default() }]).ok()
}

/// The candidates this vCPU can both read and set to the value it read.
pub(crate) fn probe(vcpu: &VcpuFd) -> Vec<u32> {
    let mut usable = Vec::new();
    for index in CANDIDATES {
        let Some(mut msrs) = single(index, 0) else { continue };
        if vcpu.get_msrs(&mut msrs) != Ok(1) {
            continue;
        }
        let data = msrs.as_slice()[0].data;
        let Some(back) = single(index, data) else { continue };
        if vcpu.set_msrs(&back) == Ok(1) {
            usable.push(index);
        }
    }
    usable
}
