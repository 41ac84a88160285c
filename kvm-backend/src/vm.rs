//! The KVM objects of one guest: the system fd, the VM with its single memory slot, and the vCPU.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, msr};
use crate::error::KvmError;
use crate::memory::GuestRam;

/// The only KVM API version there is.
const KVM_API_VERSION: i32 = 12;
/// Where KVM may put the TSS it needs for real-mode emulation on Intel hosts (above any guest RAM).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

pub(crate) struct Vm {
    // Kept open for the VM's lifetime (as Firecracker does), though only creation needs it.
    _kvm: Kvm,
    vm: VmFd,
    pub(crate) vcpu: VcpuFd,
    /// Size of the vCPU's `kvm_run` mapping, to bound accesses to its I/O data area.
    pub(crate) run_size: usize,
    /// MSRs carried by snapshots (see `arch::x86_64::msr`).
    pub(crate) msrs: Vec<u32>,
}

fn open(path: &Path) -> Result<Kvm, KvmError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| KvmError::BadPath(path.into()))?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|source| KvmError::Open { path: path.into(), source })?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(version));
    }
    Ok(kvm)
}

impl Vm {
    /// Opens `kvm_path`, creates a VM with `ram` as slot 0 and one vCPU with the fixed CPUID table.
    pub(crate) fn create(kvm_path: &Path, ram: &GuestRam) -> Result<Vm, KvmError> {
        let kvm = open(kvm_path)?;
        let vm = kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
        // Only Intel hosts need it; elsewhere a failure is harmless.
        let _ = vm.set_tss_address(KVM_TSS_ADDRESS);
        set_ram_slot(&vm, ram, 0)?;
        let vcpu = vm.create_vcpu(0).map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
        vcpu.set_cpuid2(&cpuid::table()?).map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
        let run_size = kvm.get_vcpu_mmap_size().map_err(KvmError::ioctl("KVM_GET_VCPU_MMAP_SIZE"))?;
        let msrs = msr::probe(&vcpu);
        Ok(Vm { _kvm: kvm, vm, vcpu, run_size, msrs })
    }

    /// Has KVM log the pages the guest writes from now on (a clone's pre-copy; the log starts clean). The slot
    /// stays as it is otherwise (KVM changes only its flags).
    pub(crate) fn enable_dirty_log(&self, ram: &GuestRam) -> Result<(), KvmError> {
        set_ram_slot(&self.vm, ram, KVM_MEM_LOG_DIRTY_PAGES)
    }

    /// The pages the guest wrote since the dirty log was enabled or last read (a bitmap of 64 pages per word),
    /// and the log cleared.
    pub(crate) fn take_dirty_log(&self, ram: &GuestRam) -> Result<Vec<u64>, KvmError> {
        self.vm.get_dirty_log(0, ram.size()).map_err(KvmError::ioctl("KVM_GET_DIRTY_LOG"))
    }
}

/// Makes `ram` slot 0 of `vm`, at guest-physical address 0, with `flags`.
fn set_ram_slot(vm: &VmFd, ram: &GuestRam, flags: u32) -> Result<(), KvmError> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags,
        guest_phys_addr: 0,
        memory_size: ram.size() as u64,
        userspace_addr: ram.host_address(),
    };
    // SAFETY: the region describes exactly the live mapping owned by `ram`, which the caller keeps alive for as
    // long as this VM (KvmGuest owns both and drops the VM first, see its field order); no other slot overlaps
    // it, and setting it again with other flags keeps the same mapping.
    unsafe { vm.set_user_memory_region(region) }.map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))
}
