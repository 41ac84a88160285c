//! State shared by every simulated host and the checkers: what the outside world saw (clients, storage, the
//! arbiter), the faults in force, and the timeline. It lives outside the hosts so that it survives crashes.
//!
//! The checkers believe the outside: the arbiter's grants, what storage wrote, what clients were answered and
//! the guests' own state hashes. What a node says about itself (its role, its epoch) is used only for routing
//! client traffic and for the timeline.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use ft::log::OutputKind;
use ft::Position;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::plan::{CrashPoint, HeartbeatFault, RequestFault};

/// One of the two FT hosts. `A` starts as primary, `B` as backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeId {
    A,
    B,
}

impl NodeId {
    pub const ALL: [NodeId; 2] = [NodeId::A, NodeId::B];
    pub fn host(self) -> &'static str {
        match self {
            NodeId::A => "host-a",
            NodeId::B => "host-b",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn other(self) -> NodeId {
        match self {
            NodeId::A => NodeId::B,
            NodeId::B => NodeId::A,
        }
    }
}

/// An output as it reached the outside world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub at_ns: u64,
    pub node: NodeId,
    pub seq: u64,
    pub kind: OutputKind,
    pub digest: u64,
    /// The log entry that produced it; `None` when released by a primary without a backup.
    pub log_index: Option<u64>,
}

/// A client operation in Jepsen style: invoked, then ok, or indeterminate (`info`) if no answer came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOp {
    pub client: u32,
    pub request: u64,
    pub op: ft::kv::Op,
    pub key: u64,
    /// Value written (put) or read (get, once answered).
    pub value: u64,
    pub invoked_ns: u64,
    pub completed_ns: Option<u64>,
    pub ok: bool,
}

/// A test-and-set that moved the arbiter record to a new epoch.
/// A guest's state hash at a position, as the checker took it.
pub type PositionHash = (Position, u64);

/// A guest's state at a clone's cut, as the checker hashed it itself: the primary's when its CPU was saved,
/// the joiner's when it was restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloneCut {
    pub node: NodeId,
    pub position: Position,
    pub hash: u64,
    pub at_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub epoch: u64,
    pub node: NodeId,
    pub at_ns: u64,
}

/// Counters of interesting events ("sometimes" assertions): a sweep fails if one of them never happens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub failovers: u64,
    pub unprotected: u64,
    pub lost_races: u64,
    pub arbiter_unreachable: u64,
    pub stalls: u64,
    pub checkpoints_verified: u64,
    pub hashes_compared: u64,
    pub outputs_reissued: u64,
    pub disk_reissued: u64,
    pub duplicate_outputs: u64,
    pub channel_errors: u64,
    pub writes_superseded: u64,
    pub crash_points: u64,
    pub power_offs: u64,
    pub reprotections: u64,
    pub clones_abandoned: u64,
    pub requests_ok: u64,
    pub requests_indeterminate: u64,
}

/// The faults in force that hosts apply themselves (the scenario loop sets and clears them).
#[derive(Default)]
pub struct Faults {
    pub storage_delay_ms: u64,
    pub requests: [Option<RequestFault>; 2],
    pub heartbeats: [Option<HeartbeatFault>; 2],
    /// Flip a bit in the next bytes this node writes on the logging channel.
    pub corrupt_channel: [bool; 2],
    pub crash_point: Option<CrashPoint>,
    /// Times each node reached the crash point's edge.
    pub edge_count: [u32; 2],
}

pub struct World {
    pub now_ns: u64,
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub counts: Counts,
    pub faults: Faults,
    /// The nemesis's own random choices (which request to delay, which bit to flip), from the seed.
    pub rng: ChaCha8Rng,
    // Shared storage: sparse sectors plus the arbiter record (epoch, owner).
    pub sectors: BTreeMap<u64, Vec<u8>>,
    /// The stamp of the write that last landed on each sector (storage refuses older attempts).
    pub stamps: BTreeMap<u64, ft::driver::WriteStamp>,
    /// (epoch, kv record version) of the last write that landed on each record sector.
    pub record_versions: BTreeMap<u64, (u64, u64)>,
    /// The newest kv record version that ever landed on each record sector.
    pub record_max: BTreeMap<u64, u64>,
    pub arbiter_epoch: u64,
    pub arbiter_owner: Option<NodeId>,
    /// Every grant of the arbiter, in order (epoch 1 is the initial pair's, held by A).
    pub grants: Vec<Grant>,
    /// Every test-and-set that reached storage: (when, from whom). Each one is a node declaring its peer failed.
    pub test_and_sets: Vec<(u64, NodeId)>,
    /// When the run's crash point fired, if it did.
    pub crash_point_fired_ns: Option<u64>,
    /// Requests each node sent to storage, for the per-request faults.
    pub storage_requests: [u64; 2],
    // What the outside saw.
    pub releases: Vec<Release>,
    pub history: Vec<ClientOp>,
    /// Whether the guest keeps the kv service's disk layout (a record sector per key), which the history checker
    /// reads back; a guest with a layout of its own (the `redis` guest's append log) is checked by its clients.
    pub disk_is_kv: bool,
    /// Console/net output records the backup's driver received: sequence -> (kind, digest of the bytes, log
    /// index). The checker counts those the backup acknowledged, so surely kept (it drops log once it is going live).
    /// (lineage, output sequence) -> the kind, digest and log index of a console or network output's record.
    pub logged_outputs: BTreeMap<(u64, u64), (OutputKind, u64, u64)>,
    /// Every output record (disk writes included) a backup's driver received in the log of a lineage (the epoch
    /// a backup's log belongs to): (lineage, sequence) -> index.
    pub backup_logged_index: BTreeMap<(u64, u64), u64>,
    /// Per lineage: the last index a backup received, and the last it acknowledged (what its driver sent).
    pub backup_received_max: BTreeMap<u64, u64>,
    pub backup_acked_max: BTreeMap<u64, u64>,
    /// Epochs in which a primary sent a clone's cut, and when: from then on that epoch has a backup.
    pub cuts_sent: BTreeMap<u64, (NodeId, u64)>,
    pub clone_cuts: Vec<CloneCut>,
    pub clone_restores: Vec<CloneCut>,
    /// (lineage, output sequence) of the disk writes a cut carried: written before the cut, unprotected, and
    /// in the new backup's hands for a go-live to reissue.
    pub clone_writes: std::collections::BTreeSet<(u64, u64)>,
    /// When a node became a backup by re-protection.
    pub protected_again_ns: Vec<u64>,
    /// Which node received each lineage's log (its backup).
    pub lineage_backup: BTreeMap<u64, NodeId>,
    /// Times each node's host process was restarted (a bounce), and so rejoined.
    pub restarts: [u32; 2],
    /// When a node lost its guest (a crash, bounce or freeze by the nemesis, or a crash point that fired).
    pub losses: Vec<(u64, NodeId)>,
    /// When each node's driver sent each log entry: (node, index) -> time; for the execution lag as the wire
    /// shows it (not as a node reports it).
    pub log_sent_ns: BTreeMap<(usize, u64), u64>,
    /// The backup's execution lag at each ack its primary received: the age of the oldest entry not replayed.
    pub lag_samples_ns: Vec<u64>,
    /// Guest state hashes the checker took, by exit count: (position, hash) per node.
    /// (lineage, exits) -> each node's (position, hash) there.
    pub hashes: BTreeMap<(u64, u64), [Option<PositionHash>; 2]>,
    /// Where each node's guest is now.
    pub positions: [Position; 2],
    /// Where each node's guest was when it went live: positions after it belong to a new execution.
    pub went_live_at: [Option<Position>; 2],
    /// The last heartbeat datagram each node sent (what the network can replay).
    pub last_heartbeat: [Option<Vec<u8>>; 2],
    /// Epoch -> nodes that claimed to go live in it.
    pub live: BTreeMap<u64, Vec<NodeId>>,
    pub role: [Option<ft::Role>; 2],
    /// The epoch each node holds (the initial pair is epoch 1).
    pub role_epoch: [u64; 2],
    pub started: [bool; 2],
    pub crashed: [bool; 2],
    /// Nodes that died at their crash point and wait for the scenario loop to crash their host.
    pub crash_requests: Vec<NodeId>,
    /// Each node's "dead" switch: set, its host sends and receives nothing more (a crash point or a frozen host).
    pub dead: [Rc<std::cell::Cell<bool>>; 2],
    /// When the backup received the primary's goodbye (a clean power-off): nobody may go live after it.
    pub goodbye_received_ns: Option<u64>,
    pub powered_off: [bool; 2],
    pub went_live_ns: Option<u64>,
}

pub type SharedWorld = Rc<RefCell<World>>;

impl World {
    /// Whether a primary's guest had, at a clone's cut, the state the joiner's guest has after `restore` (the
    /// checker's own hashes of both, at the same position).
    pub fn cut_restored_by(&self, restore: &CloneCut) -> bool {
        self.clone_cuts
            .iter()
            .any(|cut| cut.node != restore.node && cut.position == restore.position && cut.hash == restore.hash)
    }
}

impl World {
    pub fn new(seed: u64) -> SharedWorld {
        let mut world = World {
            now_ns: 0,
            trace: Vec::new(),
            violations: Vec::new(),
            counts: Counts::default(),
            faults: Faults::default(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7300),
            sectors: BTreeMap::new(),
            stamps: BTreeMap::new(),
            record_versions: BTreeMap::new(),
            record_max: BTreeMap::new(),
            arbiter_epoch: 1,
            arbiter_owner: Some(NodeId::A),
            grants: vec![Grant { epoch: 1, node: NodeId::A, at_ns: 0 }],
            test_and_sets: Vec::new(),
            crash_point_fired_ns: None,
            storage_requests: [0; 2],
            releases: Vec::new(),
            history: Vec::new(),
            disk_is_kv: true,
            logged_outputs: BTreeMap::new(),
            backup_logged_index: BTreeMap::new(),
            backup_received_max: BTreeMap::new(),
            backup_acked_max: BTreeMap::new(),
            cuts_sent: BTreeMap::new(),
            clone_cuts: Vec::new(),
            clone_restores: Vec::new(),
            clone_writes: std::collections::BTreeSet::new(),
            protected_again_ns: Vec::new(),
            lineage_backup: BTreeMap::new(),
            restarts: [0; 2],
            losses: Vec::new(),
            log_sent_ns: BTreeMap::new(),
            lag_samples_ns: Vec::new(),
            hashes: BTreeMap::new(),
            positions: [Position::ZERO; 2],
            went_live_at: [None; 2],
            last_heartbeat: [None, None],
            live: BTreeMap::new(),
            role: [None; 2],
            role_epoch: [0; 2],
            started: [false; 2],
            crashed: [false; 2],
            crash_requests: Vec::new(),
            dead: [Rc::new(std::cell::Cell::new(false)), Rc::new(std::cell::Cell::new(false))],
            goodbye_received_ns: None,
            powered_off: [false; 2],
            went_live_ns: None,
        };
        world.live.insert(1, vec![NodeId::A]);
        Rc::new(RefCell::new(world))
    }

    /// The node that holds the service address: the live primary of the newest epoch (as a gratuitous ARP would
    /// announce it). `None` while nobody is known to be live.
    pub fn service_owner(&self) -> Option<NodeId> {
        NodeId::ALL
            .into_iter()
            .filter(|node| {
                !self.crashed[node.index()]
                    && matches!(self.role[node.index()], Some(ft::Role::Primary) | Some(ft::Role::Unprotected))
            })
            .max_by_key(|node| self.role_epoch[node.index()])
    }

    /// The holder of the arbiter's newest epoch.
    pub fn newest_grant(&self) -> Grant {
        *self.grants.last().expect("epoch 1 is granted at start")
    }

    /// Adds a timeline line stamped with simulated time.
    pub fn log(&mut self, who: &str, what: impl AsRef<str>) {
        let line = format!("{:>8.3}s {who:<8} {}", self.now_ns as f64 / 1e9, what.as_ref());
        self.trace.push(line);
    }

    pub fn violation(&mut self, invariant: &str, what: impl AsRef<str>) {
        let line = format!("{invariant}: {}", what.as_ref());
        self.log("CHECK", format!("VIOLATION {line}"));
        self.violations.push(line);
    }
}
