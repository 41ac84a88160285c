//! Errors of building and driving a KVM guest.

use std::path::PathBuf;

/// Why a KVM guest could not be created, loaded or driven.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The KVM device could not be opened (missing module, no permission, not a KVM device).
    #[error("cannot open KVM device {path}: {source} (is KVM available and usable by this user?)")]
    Open { path: PathBuf, source: kvm_ioctls::Error },
    /// The device path cannot be passed to the kernel.
    #[error("KVM device path {0:?} contains a NUL byte")]
    BadPath(PathBuf),
    /// The device answered with an API version other than 12.
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    /// A KVM ioctl failed.
    #[error("{operation}: {source}")]
    Ioctl { operation: &'static str, source: kvm_ioctls::Error },
    /// The vCPU is in a state the backend did not expect.
    #[error("vCPU: {0}")]
    Vcpu(String),
    /// Guest memory could not be created or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The configured memory size is not supported.
    #[error("memory size {0} bytes: must be a multiple of 2 MiB between 2 MiB and 1 GiB")]
    MemorySize(u64),
    /// The guest image file could not be read.
    #[error("cannot read guest image {path}: {source}")]
    ReadImage { path: PathBuf, source: crate::files::ReadError },
    /// The guest image is not a loadable x86-64 ELF.
    #[error("bad guest ELF: {0}")]
    Elf(String),
}

impl KvmError {
    pub(crate) fn ioctl(operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        move |source| KvmError::Ioctl { operation, source }
    }
}

impl From<KvmError> for ft::GuestError {
    fn from(error: KvmError) -> ft::GuestError {
        ft::GuestError::Hypervisor(error.to_string())
    }
}
