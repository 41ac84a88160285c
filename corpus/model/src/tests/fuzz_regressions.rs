//! Inputs that crashed a fuzz target (`fuzz/`, nightly), replayed on stable through the same steps as the
//! target (`crate::fuzzing`). Each file in `fuzz_inputs/` is named after its target and what it found.

use crate::fuzzing::restore_and_run as model_snapshot;

/// A restored boot step far beyond the boot reads made the kvq program compute a descriptor address above
/// 4 GiB, and turning it into a port value panicked ("guest memory is smaller than 4 GiB").
#[test]
fn model_snapshot_boot_step_overflow() {
    model_snapshot(include_bytes!("fuzz_inputs/model_snapshot-boot-step-overflow.bin"));
}

/// A restored instruction count next to `u64::MAX` overflowed the next run's target (`start + slice`), as it
/// would in the primary's slice arithmetic; no guest gets there, so such a snapshot is refused.
#[test]
fn model_snapshot_counter_near_overflow() {
    model_snapshot(include_bytes!("fuzz_inputs/model_snapshot-counter-near-overflow.bin"));
}
