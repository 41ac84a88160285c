//! Shared helpers of the runtime's process tests: KVM checks (from `kvm_backend::testkit`) and a bounded run of a
//! child process.

#![allow(dead_code, unused_imports)]

pub use kvm_backend::testkit::{
    kvm_usable, test_bench as bench, test_guest as guest, TEST_DISK_SECTORS as DISK_SECTORS,
};

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
pub mod localhost;
