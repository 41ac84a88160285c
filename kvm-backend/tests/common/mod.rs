//! Shared helpers of the KVM integration tests (kept in `kvm_backend::testkit`, shared with the runtime's tests).

#![allow(dead_code, unused_imports)]

pub use kvm_backend::testkit::{
    kvm_usable, test_bench as bench, test_guest as guest, TEST_DISK_SECTORS as DISK_SECTORS,
};
