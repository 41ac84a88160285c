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
        }
    }
}

pub const NS_PER_MS: u64 = 1_000_000;
pub const NS_PER_US: u64 = 1_000;
