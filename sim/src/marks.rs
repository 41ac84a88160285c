//! Coverage marks on the hard paths (`cov_mark::hit!` in `ft` and here), counted per scenario so that a sweep
//! can fail when a path it is meant to reach was never taken. A test asserts a mark with `cov_mark::check!`;
//! the simulator needs the counts instead, so it opens one guard per mark with a callback that records the
//! count rather than panicking.

use std::cell::RefCell;
use std::collections::BTreeMap;

/// Every mark, with the path it stands for. A sweep of `SOMETIMES_SEEDS_MIN` or more seeds must hit each.
pub const MARKS: &[(&str, &str)] = &[
    ("golive_with_backlog", "go-live with entries still to replay"),
    ("golive_pending_exit", "go-live finishing an exit whose entry never arrived"),
    ("overlapping_request_waits", "a disk request waiting behind an overlapping one"),
    ("write_waits_for_read_completion", "a write waiting until the backup has an earlier read's completion"),
    ("deposed_write_fenced", "a deposed node's write refused by storage"),
    ("stale_write_superseded", "a late write attempt refused by its stamp"),
    ("channel_checksum_error", "a checksum error on the logging channel"),
    ("reissued_in_submission_order", "two or more overlapping requests reissued at go-live"),
    ("output_resent_after_golive", "an output re-sent after go-live"),
    ("power_off_with_live_backup", "a clean power-off stopping a live backup"),
    ("backup_buffer_full", "the backup's buffer bound holding frames back"),
    ("primary_stalled_by_backup", "the primary stalled by flow control"),
    ("throttle_lowers_the_share", "the lag throttle lowering the primary's CPU share"),
    ("primary_throttled", "a throttled primary holding its guest back"),
    ("heartbeat_ignored", "a reflected, replayed or stale heartbeat ignored"),
    ("crash_after_ack", "a crash between an ack and the release it allows"),
    ("crash_after_release", "a crash between a release and its Released notice"),
    ("crash_during_test_and_set", "a crash inside the test-and-set"),
    ("crash_during_reissue", "a crash during go-live's reissue"),
    ("crash_during_power_off", "a crash during power-off"),
    ("crash_during_clone", "a crash of the primary or the joiner during a clone"),
    ("clone_precopy_repeated", "a clone's second or later pre-copy pass"),
    ("clone_cut", "a clone's cut: the pair protected again"),
    ("clone_aborted", "a clone given up before its cut"),
    ("disk_waits_while_enlisting", "a disk request held while the arbiter records a joiner as the backup"),
    ("clone_under_load", "a clone while the guest's outputs were released"),
    ("clone_window_refilled", "a pre-copy pass sent in more than one window, as the joiner acknowledged pages"),
];

thread_local! {
    static COUNTS: RefCell<BTreeMap<&'static str, usize>> = const { RefCell::new(BTreeMap::new()) };
}

fn record(_expected: Option<usize>, hits: usize, mark: &'static str) {
    COUNTS.with(|counts| *counts.borrow_mut().entry(mark).or_default() += hits);
}

/// Counts the marks hit on this thread from `start` to `finish`.
pub struct Survey {
    guards: Vec<cov_mark::__rt::Guard>,
}

impl Survey {
    pub fn start() -> Survey {
        COUNTS.with(|counts| counts.borrow_mut().clear());
        // cov-mark's `check!` expands to this guard; with our own callback a mark that was not hit is a count
        // of zero, not a panic.
        let guards = MARKS.iter().map(|(mark, _)| cov_mark::__rt::Guard::new(mark, None, record)).collect();
        Survey { guards }
    }

    pub fn finish(mut self) -> BTreeMap<&'static str, usize> {
        // The guards live on a stack: they must go in the reverse order of their creation.
        while let Some(guard) = self.guards.pop() {
            drop(guard);
        }
        COUNTS.with(|counts| std::mem::take(&mut *counts.borrow_mut()))
    }
}

/// The marks of `MARKS` that `totals` never hit.
pub fn never_hit(totals: &BTreeMap<&'static str, usize>) -> Vec<&'static str> {
    MARKS.iter().map(|(mark, _)| *mark).filter(|mark| totals.get(mark).copied().unwrap_or(0) == 0).collect()
}
