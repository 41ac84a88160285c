//! Lag control, as in the paper (section 2.5, "if the backup VM lags too far behind"): a slow feedback loop that
//! lowers the primary's CPU share while the backup's execution lag is above a target and raises it again once
//! the lag has shrunk well below it. Flow control (`log_entries_unacked_max`) still bounds the log, but only at a
//! lag of a whole buffer; the throttle keeps the lag near the target, so that a failover has little to replay.
//!
//! The share is a duty cycle over periods of `throttle_period_ms`: the guest may start a run only in the first
//! `share` of each period (a run on a vCPU thread that goes on past it is kicked). Sans-IO like the rest: time
//! comes in as `now_ns`, and `next_change_ns` tells the driver when to look again.

use std::collections::VecDeque;

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
    /// The last period's growth as measured, unsmoothed: a rise counts only if it lasts two periods.
    raw_growth_before_ns: i64,
    /// The share in effect from each time on, oldest first (bounded): the backup replays now what the guest
    /// ran a lag ago, at the share of then.
    history: VecDeque<(u64, u64)>,
    /// The link's recent round trip, which the lag this throttle controls leaves out.
    round_trip: RoundTrip,
}

/// Changes of the share remembered, for looking up the share a lag ago.
const HISTORY_MAX: usize = 256;

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
            raw_growth_before_ns: 0,
            history: VecDeque::from([(now_ns, SHARE_FULL_PERMILLE)]),
            round_trip: RoundTrip::new(now_ns),
        }
    }

    /// An entry logged `round_trip_ns` ago had its receipt acknowledged now (see [`RoundTrip`]).
    pub fn link_sample(&mut self, now_ns: u64, round_trip_ns: u64) {
        self.round_trip.sample(now_ns, round_trip_ns);
    }

    /// Moves to the period `now_ns` falls in, adjusting the share once per period passed from `lag_ns`, the
    /// backup's execution lag now, less the link's recent round trip.
    pub fn tick(&mut self, now_ns: u64, lag_ns: u64) {
        assert!(now_ns >= self.now_ns, "time goes forward: {now_ns} after {}", self.now_ns);
        // At most the target: a backup whose full buffer delays even its receipts must not hide its backlog.
        let lag_ns = lag_ns.saturating_sub(self.round_trip.recent_max_ns().min(self.lag_target_ns));
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
        // Rising: half way to the target and growing, two periods running, by more than a twentieth of a period
        // per period (a backup at least 5 % slower than the log's pace). Less is jitter of a backup that keeps
        // up, and one period's jump is a burst (a checkpoint, a batch of requests), not a slower backup: the
        // simulator found a pair whose backup kept up throttled to a fifth by bursts read as a pace.
        let steady = (self.period_ns / RISING_PACE_DIVISOR) as i64;
        let rising = growth_ns > steady && self.raw_growth_before_ns > steady && lag_ns > self.lag_target_ns / 2;
        self.raw_growth_before_ns = growth_ns;
        // The backup replays now what the guest ran a lag ago, at the share of then; in a period of P it got
        // through P - g of it while the lag grew by g. So its pace, as a share of the guest's full speed:
        let then_permille = self.share_at(now_ns.saturating_sub(lag_ns));
        let period = self.period_ns as i64;
        let replayed_ns = (period - self.growth_ns).clamp(period / 4, 2 * period) as u64;
        let pace_permille = then_permille * replayed_ns / self.period_ns;
        let limit = if rising && lag_ns > self.lag_target_ns {
            // Rising above the target: a quarter under the backup's pace, to drain it.
            Some(pace_permille * 3 / 4)
        } else if lag_ns > 2 * self.lag_target_ns {
            // Far above the target: half the share the backlog was written at.
            Some(then_permille / 2)
        } else if lag_ns > self.lag_target_ns {
            // Above it, not rising: a quarter off the share the backlog was written at.
            Some(then_permille * 3 / 4)
        } else if rising {
            // Half way and rising: the backup's pace at once (waiting for the target overshoots it by the whole
            // backlog written meanwhile at the old pace).
            Some(pace_permille)
        } else {
            None
        };
        let share = match limit {
            Some(limit) if limit < self.share_permille => {
                cov_mark::hit!(throttle_lowers_the_share);
                limit.max(SHARE_MIN_PERMILLE)
            }
            Some(_) => self.share_permille,
            None if lag_ns < self.lag_target_ns / 2 && self.growth_ns <= 0 => {
                (self.share_permille + SHARE_STEP_UP_PERMILLE).min(SHARE_FULL_PERMILLE)
            }
            None => self.share_permille,
        };
        if share != self.share_permille {
            self.share_permille = share;
            if self.history.len() == HISTORY_MAX {
                self.history.pop_front();
            }
            self.history.push_back((now_ns, share));
        }
    }

    /// The share in effect at `at_ns` (the oldest remembered, for a time before it).
    fn share_at(&self, at_ns: u64) -> u64 {
        let mut share = self.history.front().map_or(SHARE_FULL_PERMILLE, |(_, share)| *share);
        for (since_ns, permille) in &self.history {
            if *since_ns > at_ns {
                break;
            }
            share = *permille;
        }
        share
    }

    /// No backup to wait for: the full share, at once, and a history that starts again from it.
    pub fn release(&mut self) {
        self.share_permille = SHARE_FULL_PERMILLE;
        self.history.clear();
        self.history.push_back((self.now_ns, SHARE_FULL_PERMILLE));
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

/// The round trip of the link to the backup, as the throttle must discount it: the longest time, over the last one
/// to two `ROUND_TRIP_WINDOW_NS`, from logging an entry to the ack of its receipt (which the backup sends at once).
/// The lag the primary sees includes the way there and back, and slowing the guest shortens neither: over a link
/// whose latency varies by about the lag target, a throttle that counted it cut the guest to its floor share until
/// its clients timed out (the simulator's seed 4626892746, pinned plan 0014). The longest, not the shortest, trip:
/// it is the jitter that read as a backlog.
#[derive(Clone, Debug)]
pub struct RoundTrip {
    window_start_ns: u64,
    current_max_ns: u64,
    previous_max_ns: u64,
}

/// How long a round-trip sample counts (between one and two of these).
pub const ROUND_TRIP_WINDOW_NS: u64 = 1_000 * NS_PER_MS;

impl RoundTrip {
    pub fn new(now_ns: u64) -> RoundTrip {
        RoundTrip { window_start_ns: now_ns, current_max_ns: 0, previous_max_ns: 0 }
    }

    /// An entry logged `sample_ns` ago had its receipt acknowledged now.
    pub fn sample(&mut self, now_ns: u64, sample_ns: u64) {
        if now_ns >= self.window_start_ns.saturating_add(ROUND_TRIP_WINDOW_NS) {
            self.previous_max_ns = self.current_max_ns;
            self.current_max_ns = 0;
            self.window_start_ns = now_ns;
        }
        self.current_max_ns = self.current_max_ns.max(sample_ns);
    }

    /// The longest round trip seen recently (0 before the first sample).
    pub fn recent_max_ns(&self) -> u64 {
        self.current_max_ns.max(self.previous_max_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = NS_PER_MS;

    fn throttle() -> Throttle {
        Throttle::new(&Config { throttle_period_ms: 10, lag_target_ms: 40, ..Config::default() }, 0)
    }

    /// A throttle that has seen `lag_ms` for long enough that its trend is flat, back at the full share with a
    /// history that starts there; and the next period's start.
    fn settled_at(lag_ms: u64) -> (Throttle, u64) {
        let mut throttle = throttle();
        let mut period = 1;
        while period == 1 || throttle.growth_ns != 0 {
            throttle.tick(period * 10 * MS, lag_ms * MS);
            period += 1;
        }
        throttle.release();
        (throttle, period * 10 * MS)
    }

    #[test]
    fn above_the_target_the_share_goes_under_the_backup_s_pace_once_per_lag() {
        let (mut throttle, start) = settled_at(50);
        throttle.tick(start, 50 * MS);
        assert_eq!(throttle.share_permille(), 750, "above the target: a quarter under the pace");
        throttle.tick(start + 5 * MS, 50 * MS);
        assert_eq!(throttle.share_permille(), 750, "once per period");
        throttle.tick(start + 10 * MS, 50 * MS);
        assert_eq!(throttle.share_permille(), 750, "what the backup replays now ran before the cut: no second cut");
        throttle.tick(start + 60 * MS, 50 * MS);
        assert_eq!(throttle.share_permille(), 562, "a lag later, the entries of the cut share are replayed");
        let (mut throttle, start) = settled_at(90);
        throttle.tick(start, 90 * MS);
        assert_eq!(throttle.share_permille(), 500, "far above the target: half the pace");
        // Halved once per lag (a second here): ten seconds take it to the floor, and no further.
        for period in 1..1_000 {
            throttle.tick(start + period * 10 * MS, 1_000 * MS);
        }
        assert_eq!(throttle.share_permille(), SHARE_MIN_PERMILLE, "never below the floor");
    }

    #[test]
    fn a_flat_lag_at_the_target_or_at_half_of_it_holds_the_share_and_a_small_one_raises_it() {
        for held_ms in [40, 20, 30] {
            let (mut throttle, start) = settled_at(held_ms);
            throttle.tick(start, held_ms * MS);
            assert_eq!(throttle.share_permille(), SHARE_FULL_PERMILLE, "{held_ms} ms: held");
        }
        let (mut throttle, start) = settled_at(50);
        throttle.tick(start, 50 * MS);
        assert_eq!(throttle.share_permille(), 750);
        // Below half the target and not rising: raised a step per period.
        throttle.tick(start + 10 * MS, 19 * MS);
        assert_eq!(throttle.share_permille(), 750 + SHARE_STEP_UP_PERMILLE);
        // Back above half the target, not rising: held.
        throttle.tick(start + 20 * MS, 24 * MS);
        assert_eq!(throttle.share_permille(), 750 + SHARE_STEP_UP_PERMILLE, "held");
        for period in 3..100 {
            throttle.tick(start + period * 10 * MS, 0);
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
        // A growth of under a twentieth of a period per period is jitter, even half way.
        let (mut slow, start) = settled_at(21);
        slow.tick(start, 21 * MS + MS / 4);
        assert_eq!(slow.share_permille(), SHARE_FULL_PERMILLE, "jitter");
    }

    /// Mutation testing found both unchecked: the growth of a tick that comes several periods late is per
    /// period, and a lag exactly at half the target is not yet half way.
    #[test]
    fn growth_is_per_period_and_half_way_means_past_half_the_target() {
        // 10 ms over two periods is 5 ms a period: with the smoothing, 2.5 ms, above a twentieth of a period.
        let (mut late, start) = settled_at(21);
        late.tick(start + 10 * MS, 31 * MS);
        assert_eq!(late.growth_ns, 2_500_000, "{}", late.growth_ns);
        // Rising two periods running, by 5 ms a period, to exactly half the target, then just past it.
        let (mut at_half, start) = settled_at(10);
        at_half.tick(start, 15 * MS);
        at_half.tick(start + 10 * MS, 20 * MS);
        assert!(at_half.growth_ns > 0);
        assert_eq!(at_half.share_permille(), SHARE_FULL_PERMILLE, "at half the target: not past it");
        let (mut past_half, start) = settled_at(11);
        past_half.tick(start, 16 * MS);
        past_half.tick(start + 10 * MS, 21 * MS);
        assert!(past_half.share_permille() < SHARE_FULL_PERMILLE, "past half the target and rising: cut");
        // One period's jump is a burst, not a slower backup.
        let (mut burst, start) = settled_at(11);
        burst.tick(start, 21 * MS);
        assert_eq!(burst.share_permille(), SHARE_FULL_PERMILLE, "a burst");
    }

    #[test]
    fn the_share_a_lag_ago_is_the_one_in_effect_then() {
        let (mut throttle, start) = settled_at(50);
        throttle.tick(start, 50 * MS);
        assert_eq!(throttle.share_at(start - 1), SHARE_FULL_PERMILLE);
        assert_eq!(throttle.share_at(start), 750);
        assert_eq!(throttle.share_at(0), SHARE_FULL_PERMILLE, "before the history: its oldest share");
    }

    #[test]
    fn the_guest_runs_in_the_first_share_of_each_period_only() {
        let (mut throttle, start) = settled_at(50);
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

    /// The discount is the longest recent round trip; an old long one ages out after one to two windows.
    #[test]
    fn the_round_trip_discount_is_the_longest_recent_sample() {
        let mut round_trip = RoundTrip::new(0);
        assert_eq!(round_trip.recent_max_ns(), 0, "no sample yet");
        round_trip.sample(10 * MS, 9 * MS);
        round_trip.sample(20 * MS, 3 * MS);
        assert_eq!(round_trip.recent_max_ns(), 9 * MS);
        round_trip.sample(ROUND_TRIP_WINDOW_NS + 10 * MS, 4 * MS);
        assert_eq!(round_trip.recent_max_ns(), 9 * MS, "the last window still counts");
        round_trip.sample(2 * ROUND_TRIP_WINDOW_NS + 20 * MS, 5 * MS);
        assert_eq!(round_trip.recent_max_ns(), 5 * MS, "a sample two windows old no longer does");
    }
}
