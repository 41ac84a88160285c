//! Tunables of a pair. Units are in the names.

/// Settings shared by primary and backup. Both sides must use the same `pair_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Identifies the pair: a backup refuses a primary of another pair.
    pub pair_id: u64,
    /// Digest of the guest image; primary and backup must start from the same one.
    pub image_digest: u64,
    pub heartbeat_interval_ms: u64,
    /// Silence (no heartbeat, log or ack) after which the peer is declared failed.
    pub failure_timeout_ms: u64,
    /// How long a primary waits for its backup to connect before going live alone.
    pub startup_timeout_ms: u64,
    /// Retry period of a test-and-set the storage did not answer.
    pub arbiter_retry_ms: u64,
    /// A checkpoint (state hash) entry is logged every this many exits.
    pub checkpoint_interval_exits: u64,
    /// The primary stops running its guest while this many entries are unacknowledged (flow control).
    pub log_entries_unacked_max: usize,
    /// The backup stops reading the channel while this many entries wait for replay.
    pub log_entries_buffered_max: usize,
    /// Frames received while the guest has no receive buffer posted; more are dropped, like a full NIC ring.
    pub net_frames_queued_max: usize,
    /// Instructions per `run_guest` slice, for guests that count instructions.
    pub slice_instructions: u64,
    /// Exits per `run_guest` slice.
    pub slice_exits_max: u64,
    /// The execution lag the primary's CPU-share throttle aims to stay under (`primary::throttle`).
    pub lag_target_ms: u64,
    /// The throttle's duty-cycle period: the guest runs in the first share of each, and the share is adjusted
    /// once per period.
    pub throttle_period_ms: u64,
    /// Re-protection: pre-copy rounds before the cut at most (the cut comes sooner once the dirty set stops
    /// shrinking or is small).
    pub clone_passes_max: u64,
    /// Re-protection: a dirty set of at most this many pages goes across at the cut, with the guest paused.
    pub clone_dirty_pages_small: u64,
    /// Re-protection: pages of a pre-copy pass sent and not yet acknowledged by the joiner at most (flow
    /// control: the channel holds at most this much for the joiner, and a refill stops the guest only to read
    /// it).
    pub clone_window_pages: u64,
}

/// A setting that cannot work, named by its key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` = {value}: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub value: u64,
    pub reason: String,
}

/// Longest timeout or period accepted: a day. Longer ones are typos, and would overflow the nanosecond clock.
pub const DURATION_MS_MAX: u64 = 24 * 3600 * 1000;
/// Largest buffer bound accepted (entries, frames, exits, instructions per slice).
pub const BOUND_MAX: u64 = 1 << 24;

impl Config {
    /// Checks every setting, so that a node refuses a bad one at startup with the key's name instead of
    /// spinning (a zero period), hanging (a zero bound) or overflowing (a huge timeout) later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations = [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("failure_timeout_ms", self.failure_timeout_ms),
            ("startup_timeout_ms", self.startup_timeout_ms),
            ("arbiter_retry_ms", self.arbiter_retry_ms),
            ("lag_target_ms", self.lag_target_ms),
            ("throttle_period_ms", self.throttle_period_ms),
        ];
        for (key, value) in durations {
            if value == 0 || value > DURATION_MS_MAX {
                return Err(ConfigError { key, value, reason: format!("must be between 1 and {DURATION_MS_MAX}") });
            }
        }
        let bounds = [
            ("checkpoint_interval_exits", self.checkpoint_interval_exits),
            ("log_entries_unacked_max", self.log_entries_unacked_max as u64),
            ("log_entries_buffered_max", self.log_entries_buffered_max as u64),
            ("net_frames_queued_max", self.net_frames_queued_max as u64),
            ("slice_instructions", self.slice_instructions),
            ("slice_exits_max", self.slice_exits_max),
            ("clone_passes_max", self.clone_passes_max),
            ("clone_window_pages", self.clone_window_pages),
        ];
        for (key, value) in bounds {
            if value == 0 || value > BOUND_MAX {
                return Err(ConfigError { key, value, reason: format!("must be between 1 and {BOUND_MAX}") });
            }
        }
        if self.clone_dirty_pages_small > BOUND_MAX {
            return Err(ConfigError {
                key: "clone_dirty_pages_small",
                value: self.clone_dirty_pages_small,
                reason: format!("must be at most {BOUND_MAX}"),
            });
        }
        if self.failure_timeout_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError {
                key: "failure_timeout_ms",
                value: self.failure_timeout_ms,
                reason: format!(
                    "must be longer than heartbeat_interval_ms ({}), or every pause between heartbeats is a failure",
                    self.heartbeat_interval_ms
                ),
            });
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            pair_id: 1,
            image_digest: 0,
            heartbeat_interval_ms: 20,
            failure_timeout_ms: 150,
            startup_timeout_ms: 2_000,
            arbiter_retry_ms: 50,
            checkpoint_interval_exits: 256,
            log_entries_unacked_max: 4_096,
            log_entries_buffered_max: 16_384,
            net_frames_queued_max: 256,
            slice_instructions: 2_000,
            slice_exits_max: 64,
            lag_target_ms: 50,
            throttle_period_ms: 20,
            clone_passes_max: 8,
            // 1 MiB: a pause of about a millisecond on a 10 Gbit/s link.
            clone_dirty_pages_small: 256,
            // 4 MiB: sixteen `ClonePages` messages.
            clone_window_pages: 1_024,
        }
    }
}

pub const NS_PER_MS: u64 = 1_000_000;
pub const NS_PER_US: u64 = 1_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_huge_and_inconsistent_settings_are_named() {
        assert_eq!(Config::default().validate(), Ok(()));
        let zero = Config { heartbeat_interval_ms: 0, ..Config::default() };
        assert_eq!(zero.validate().map_err(|e| e.key), Err("heartbeat_interval_ms"));
        let huge = Config { failure_timeout_ms: u64::MAX, ..Config::default() };
        assert_eq!(huge.validate().map_err(|e| e.key), Err("failure_timeout_ms"));
        let unbounded = Config { log_entries_buffered_max: 0, ..Config::default() };
        assert_eq!(unbounded.validate().map_err(|e| e.key), Err("log_entries_buffered_max"));
        let backwards = Config { heartbeat_interval_ms: 200, failure_timeout_ms: 150, ..Config::default() };
        let error = backwards.validate().expect_err("a timeout shorter than the heartbeat period");
        assert!(error.to_string().contains("longer than heartbeat_interval_ms"), "{error}");
    }
}
