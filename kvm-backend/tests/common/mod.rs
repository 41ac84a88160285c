//! Shared helpers of the KVM integration tests: skip (or fail, with FT_REQUIRE_KVM=1) when KVM is unusable.

#![allow(dead_code)]

use kvm_backend::testkit::Bench;
use kvm_backend::{corpus, KvmConfig, KvmError, KvmGuest};

/// Disk of the benches: sector 0 plus the kv guest's 64 key sectors, with room to spare.
pub const DISK_SECTORS: usize = 128;

fn kvm_required() -> bool {
    std::env::var("FT_REQUIRE_KVM").is_ok_and(|value| value == "1")
}

/// Whether /dev/kvm can be opened read-write; if not, the calling test skips (or fails with FT_REQUIRE_KVM=1).
pub fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(error) => {
            if kvm_required() {
                panic!("KVM is required (FT_REQUIRE_KVM=1) but /dev/kvm is unusable: {error}");
            }
            eprintln!("SKIPPED: /dev/kvm unusable here: {error}");
            false
        }
    }
}

/// A fresh guest running corpus program `name`, or None (test skipped) when KVM is not usable here.
pub fn guest(name: &str) -> Option<KvmGuest> {
    let image = corpus::guest_elf(name).expect("corpus guest exists");
    match KvmGuest::new(&KvmConfig::default(), image) {
        Ok(guest) => Some(guest),
        Err(error @ (KvmError::Open { .. } | KvmError::ApiVersion(_) | KvmError::Ioctl { .. })) => {
            if kvm_required() {
                panic!("KVM is required (FT_REQUIRE_KVM=1) but unusable: {error}");
            }
            eprintln!("SKIPPED: KVM unusable here: {error}");
            None
        }
        Err(error) => panic!("cannot build guest {name}: {error}"),
    }
}

/// A bench around a fresh `name` guest, or None when KVM is not usable.
pub fn bench(name: &str) -> Option<Bench> {
    guest(name).map(|guest| Bench::new(guest, DISK_SECTORS))
}
