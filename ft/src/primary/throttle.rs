//! Lag control, as in the paper (section 2.5, "if the backup VM lags too far behind"): a slow feedback loop that
//! lowers the primary's CPU share while the backup's execution lag is above a target and raises it again once
//! the lag has shrunk well below it. Flow control (`log_entries_unacked_max`) still bounds the log, but only at a
//! lag of a whole buffer; the throttle keeps the lag near the target, so that a failover has little to replay.
//!
//! The share is a duty cycle over periods of `throttle_period_ms`: the guest may start a run only in the first
//! `share` of each period (a run on a vCPU thread that goes on past it is kicked). Sans-IO like the rest: time
//! comes in as `now_ns`, and `next_change_ns` tells the driver when to look again.

use crate::config::{Config, NS_PER_MS};

/// The full share.
pub const SHARE_FULL_PERMILLE: u64 = 1_000;
/// The lowest share: the guest always makes some progress (and so do its heartbeats of work towards the lag).
pub const SHARE_MIN_PERMILLE: u64 = 50;
/// Raised by this much per period while the lag is below half the target: slowly, so that a backup that only
/// just keeps up is not overrun again at once.
const SHARE_STEP_UP_PERMILLE: u64 = 25;

#[derive(Clone, Debug)]
pub struct Throttle {
    period_ns: u64,
    lag_target_ns: u64,
    share_permille: u64,
    /// Start of the current period.
    period_start_ns: u64,
    /// The last time the throttle was told, so that `next_change_ns` is always after it.
    now_ns: u64,
}

impl Throttle {
    pub fn new(config: &Config, now_ns: u64) -> Throttle {
        Throttle {
            period_ns: config.throttle_period_ms * NS_PER_MS,
            lag_target_ns: config.lag_target_ms * NS_PER_MS,
            share_permille: SHARE_FULL_PERMILLE,
            period_start_ns: now_ns,
            now_ns,
        }
    }

    /// Moves to the period `now_ns` falls in, adjusting the share once per period passed from `lag_ns`, the
    /// backup's execution lag now.
    pub fn tick(&mut self, now_ns: u64, lag_ns: u64) {
        assert!(now_ns >= self.now_ns, "time goes forward");
        self.now_ns = now_ns;
        if now_ns < self.period_start_ns + self.period_ns {
            return;
        }
        let periods = (now_ns - self.period_start_ns) / self.period_ns;
        self.period_start_ns += periods * self.period_ns;
        if lag_ns > self.lag_target_ns {
            cov_mark::hit!(throttle_lowers_the_share);
            // Far above the target, halve the share; just above it, take a quarter off.
            let kept = if lag_ns > 2 * self.lag_target_ns { 2 } else { 3 };
            self.share_permille = (self.share_permille * kept / 4).max(SHARE_MIN_PERMILLE);
        } else if lag_ns < self.lag_target_ns / 2 {
            self.share_permille = (self.share_permille + SHARE_STEP_UP_PERMILLE).min(SHARE_FULL_PERMILLE);
        }
    }

    /// No backup to wait for: the full share, at once.
    pub fn release(&mut self) {
        self.share_permille = SHARE_FULL_PERMILLE;
    }

    fn running_part_end_ns(&self) -> u64 {
        self.period_start_ns + self.period_ns * self.share_permille / SHARE_FULL_PERMILLE
    }

    /// Whether the guest may run at the last `tick`.
    pub fn may_run(&self) -> bool {
        self.share_permille >= SHARE_FULL_PERMILLE || self.now_ns < self.running_part_end_ns()
    }

    /// When `may_run` changes next (the running part of this period ends, or the next period starts); none at
    /// the full share.
    pub fn next_change_ns(&self) -> Option<u64> {
        if self.share_permille >= SHARE_FULL_PERMILLE {
            return None;
        }
        let running_end = self.running_part_end_ns();
        Some(if self.now_ns < running_end { running_end } else { self.period_start_ns + self.period_ns })
    }

    pub fn share_permille(&self) -> u64 {
        self.share_permille
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(&Config { throttle_period_ms: 10, lag_target_ms: 40, ..Config::default() }, 0)
    }

    #[test]
    fn a_lag_above_the_target_lowers_the_share_and_a_small_one_raises_it() {
        let mut throttle = throttle();
        throttle.tick(10 * NS_PER_MS, 41 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), 750, "just above the target: a quarter off");
        throttle.tick(15 * NS_PER_MS, 100 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), 750, "once per period");
        for period in 2..40 {
            throttle.tick(period * 10 * NS_PER_MS, 1_000 * NS_PER_MS);
        }
        assert_eq!(throttle.share_permille(), SHARE_MIN_PERMILLE, "never below the floor");
        throttle.tick(400 * NS_PER_MS, 30 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), SHARE_MIN_PERMILLE, "between half the target and the target: held");
        throttle.tick(410 * NS_PER_MS, 19 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), SHARE_MIN_PERMILLE + SHARE_STEP_UP_PERMILLE);
        throttle.tick(420 * NS_PER_MS, 81 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), SHARE_MIN_PERMILLE, "far above: halved, but not below the floor");
        for period in 43..120 {
            throttle.tick(period * 10 * NS_PER_MS, 0);
        }
        assert_eq!(throttle.share_permille(), SHARE_FULL_PERMILLE, "never above full");
    }

    #[test]
    fn a_lag_at_the_target_or_at_half_of_it_holds_the_share() {
        let mut throttle = throttle();
        throttle.tick(10 * NS_PER_MS, 40 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), SHARE_FULL_PERMILLE, "at the target: not above it");
        throttle.tick(20 * NS_PER_MS, 41 * NS_PER_MS);
        throttle.tick(30 * NS_PER_MS, 20 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), 750, "at half the target: not below it");
    }

    #[test]
    fn far_above_the_target_the_share_halves() {
        let mut throttle = throttle();
        throttle.tick(10 * NS_PER_MS, 81 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), 500);
        throttle.tick(20 * NS_PER_MS, 80 * NS_PER_MS);
        assert_eq!(throttle.share_permille(), 375, "at twice the target: a quarter off");
    }

    #[test]
    fn the_guest_runs_in_the_first_share_of_each_period_only() {
        let mut throttle = throttle();
        assert!(throttle.may_run());
        assert_eq!(throttle.next_change_ns(), None, "no wake-ups at the full share");
        throttle.tick(10 * NS_PER_MS, 50 * NS_PER_MS);
        assert!(throttle.may_run());
        assert_eq!(throttle.next_change_ns(), Some(17_500_000));
        throttle.tick(17_500_000, 50 * NS_PER_MS);
        assert!(!throttle.may_run());
        assert_eq!(throttle.next_change_ns(), Some(20 * NS_PER_MS), "the next period, never a past time");
        throttle.release();
        assert!(throttle.may_run());
    }
}
