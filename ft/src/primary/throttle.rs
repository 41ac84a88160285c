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
/// A lag that grows by more than a period divided by this, per period, is a backup falling behind.
const RISING_PACE_DIVISOR: u64 = 20;

#[derive(Clone, Debug)]
pub struct Throttle {
    period_ns: u64,
    lag_target_ns: u64,
    share_permille: u64,
    /// Start of the current period.
    period_start_ns: u64,
    /// The last time the throttle was told, so that `next_change_ns` is always after it.
    now_ns: u64,
    /// The lag at the last adjustment, and its growth per period (smoothed), for its trend.
    lag_before_ns: u64,
    growth_ns: i64,
}

impl Throttle {
    pub fn new(config: &Config, now_ns: u64) -> Throttle {
        Throttle {
            period_ns: config.throttle_period_ms * NS_PER_MS,
            lag_target_ns: config.lag_target_ms * NS_PER_MS,
            share_permille: SHARE_FULL_PERMILLE,
            period_start_ns: now_ns,
            now_ns,
            lag_before_ns: 0,
            growth_ns: 0,
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
        // Growth per period since the last adjustment, smoothed over two adjustments (entries arrive in bursts,
        // so one period's figure jitters by a few milliseconds).
        let growth_ns = (lag_ns as i64 - self.lag_before_ns as i64) / periods.max(1) as i64;
        self.growth_ns = (self.growth_ns + growth_ns) / 2;
        self.lag_before_ns = lag_ns;
        // Rising: half way to the target and growing by more than a twentieth of a period per period (a backup
        // at least 5 % slower than the log's pace); less is jitter of a backup that keeps up.
        let rising = self.growth_ns > (self.period_ns / RISING_PACE_DIVISOR) as i64 && lag_ns > self.lag_target_ns / 2;
        if lag_ns > self.lag_target_ns || rising {
            cov_mark::hit!(throttle_lowers_the_share);
            // A lag that grows by g per period of P means the backup replays at (P - g) / P of the pace the log
            // was written at: match it at once (the lag still grows meanwhile, since the backlog was written at
            // the old pace, so waiting for the target to act overshoots it by the whole backlog). Above the
            // target, take a quarter more off to drain it; far above, half.
            let pace = if self.growth_ns > 0 {
                (self.period_ns as i64 - self.growth_ns).max(self.period_ns as i64 / 4) as u64 * 1_000 / self.period_ns
            } else {
                1_000
            };
            let kept = match lag_ns {
                lag if lag > 2 * self.lag_target_ns => 500,
                lag if lag > self.lag_target_ns => 750,
                _ => 1_000,
            };
            self.share_permille = (self.share_permille * pace / 1_000 * kept / 1_000).max(SHARE_MIN_PERMILLE);
        } else if lag_ns < self.lag_target_ns / 2 && self.growth_ns <= 0 {
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

    const MS: u64 = NS_PER_MS;

    fn throttle() -> Throttle {
        Throttle::new(&Config { throttle_period_ms: 10, lag_target_ms: 40, ..Config::default() }, 0)
    }

    /// A throttle that has seen `lag_ms` for long enough that its trend is flat, at the full share again.
    fn settled_at(lag_ms: u64) -> (Throttle, u64) {
        let mut throttle = throttle();
        let mut period = 1;
        while period == 1 || throttle.growth_ns != 0 {
            throttle.tick(period * 10 * MS, lag_ms * MS);
            period += 1;
        }
        throttle.release();
        (throttle, period)
    }

    #[test]
    fn a_steady_lag_above_the_target_takes_a_quarter_off_far_above_it_half() {
        let (mut throttle, period) = settled_at(50);
        throttle.tick(period * 10 * MS, 50 * MS);
        assert_eq!(throttle.share_permille(), 750, "just above the target: a quarter off");
        throttle.tick(period * 10 * MS + 5 * MS, 50 * MS);
        assert_eq!(throttle.share_permille(), 750, "once per period");
        let (mut throttle, period) = settled_at(90);
        throttle.tick(period * 10 * MS, 90 * MS);
        assert_eq!(throttle.share_permille(), 500, "far above the target: half");
        for later in 1..40 {
            throttle.tick((period + later) * 10 * MS, 90 * MS);
        }
        assert_eq!(throttle.share_permille(), SHARE_MIN_PERMILLE, "never below the floor");
    }

    #[test]
    fn a_flat_lag_at_the_target_or_at_half_of_it_holds_the_share_and_a_small_one_raises_it() {
        for held_ms in [40, 20, 30] {
            let (mut throttle, period) = settled_at(held_ms);
            throttle.tick(period * 10 * MS, held_ms * MS);
            assert_eq!(throttle.share_permille(), SHARE_FULL_PERMILLE, "{held_ms} ms: held");
        }
        let (mut throttle, period) = settled_at(50);
        throttle.tick(period * 10 * MS, 50 * MS);
        throttle.tick((period + 1) * 10 * MS, 50 * MS);
        assert_eq!(throttle.share_permille(), 562);
        // Below half the target and not rising: raised a step per period.
        throttle.tick((period + 2) * 10 * MS, 19 * MS);
        assert_eq!(throttle.share_permille(), 562 + SHARE_STEP_UP_PERMILLE);
        // Back above half the target, not rising: held.
        throttle.tick((period + 3) * 10 * MS, 19 * MS + 5 * MS);
        assert_eq!(throttle.share_permille(), 562 + SHARE_STEP_UP_PERMILLE, "rising: held");
        let later = period + 4;
        for step in 1..100 {
            throttle.tick((later + step) * 10 * MS, 0);
        }
        assert_eq!(throttle.share_permille(), SHARE_FULL_PERMILLE, "never above full");
    }

    /// A backup at about half the log's pace makes the lag grow by half a period per period: once the lag is
    /// half way to the target, the share goes to the backup's pace at once instead of waiting for the target
    /// (the backlog written meanwhile at the full pace would carry the lag far past it).
    #[test]
    fn a_rising_lag_half_way_to_the_target_is_matched_to_the_backup_s_pace() {
        let mut throttle = throttle();
        for period in 1..=4 {
            throttle.tick(period * 10 * MS, period * 5 * MS);
            assert_eq!(throttle.share_permille(), SHARE_FULL_PERMILLE, "at {} ms: not half way yet", period * 5);
        }
        throttle.tick(50 * MS, 25 * MS);
        let share = throttle.share_permille();
        assert!((450..=550).contains(&share), "about half: {share}");
        // The same growth with the lag below half the target does nothing; a growth of under a twentieth of a
        // period per period is jitter, even half way.
        let (mut slow, period) = settled_at(21);
        slow.tick(period * 10 * MS, 21 * MS + MS / 4);
        assert_eq!(slow.share_permille(), SHARE_FULL_PERMILLE, "jitter");
    }

    #[test]
    fn the_guest_runs_in_the_first_share_of_each_period_only() {
        let (mut throttle, period) = settled_at(50);
        let start = period * 10 * MS;
        assert!(throttle.may_run());
        assert_eq!(throttle.next_change_ns(), None, "no wake-ups at the full share");
        throttle.tick(start, 50 * MS);
        assert!(throttle.may_run());
        assert_eq!(throttle.next_change_ns(), Some(start + 7_500_000));
        throttle.tick(start + 7_500_000, 50 * MS);
        assert!(!throttle.may_run());
        assert_eq!(throttle.next_change_ns(), Some(start + 10 * MS), "the next period, never a past time");
        throttle.release();
        assert!(throttle.may_run());
    }
}
