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

/// Runs `command` to completion, or kills it once `limit` has passed (a guard against a hang, never a speed
/// check): `Err` then carries what it printed so far, for the failure message. Its output goes through files, so
/// a chatty child never blocks on a full pipe.
pub fn output_within(
    command: &mut std::process::Command,
    limit: std::time::Duration,
) -> Result<std::process::Output, String> {
    use std::process::Stdio;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let stem = std::env::temp_dir().join(format!(
        "ftvm-test-out-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let (out_path, err_path) = (stem.with_extension("stdout"), stem.with_extension("stderr"));
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("the command starts");
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait().expect("waiting for the child") {
            Some(status) => break Some(status),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    let stdout = std::fs::read(&out_path).unwrap_or_default();
    let stderr = std::fs::read(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    match status {
        Some(status) => Ok(std::process::Output { status, stdout, stderr }),
        None => Err(format!(
            "still running after {limit:?}, killed; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}
