//! State shared by every simulated host and the checkers: what the outside world saw, the shared storage, and
//! the timeline. It lives outside the hosts so that it survives crashes and bounces.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use ft::log::OutputKind;

/// One of the two FT hosts. `A` starts as primary, `B` as backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    pub epoch: u64,
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

/// Counters of interesting events ("sometimes" assertions): a sweep fails if one of them never happens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub failovers: u64,
    pub unprotected: u64,
    pub lost_races: u64,
    pub arbiter_unreachable: u64,
    pub stalls: u64,
    pub checkpoints_verified: u64,
    pub outputs_reissued: u64,
    pub disk_reissued: u64,
    pub duplicate_outputs: u64,
    pub channel_errors: u64,
    pub requests_ok: u64,
    pub requests_indeterminate: u64,
}

#[derive(Default)]
pub struct World {
    pub now_ns: u64,
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub counts: Counts,
    // Shared storage: sparse sectors plus the arbiter record (epoch, owner).
    pub sectors: BTreeMap<u64, Vec<u8>>,
    /// The stamp of the write that last landed on each sector (storage refuses older attempts).
    pub stamps: BTreeMap<u64, ft::driver::WriteStamp>,
    pub arbiter_epoch: u64,
    pub arbiter_owner: Option<NodeId>,
    pub storage_delay_ms: u64,
    // What the outside saw.
    pub releases: Vec<Release>,
    pub history: Vec<ClientOp>,
    /// Console/net output records the backup received in the log, by sequence.
    pub logged_outputs: BTreeMap<u64, OutputKind>,
    pub backup_received_max: u64,
    /// Epoch -> nodes that went live in it.
    pub live: BTreeMap<u64, Vec<NodeId>>,
    pub role: [Option<ft::Role>; 2],
    /// The epoch each node holds (the initial pair is epoch 1).
    pub role_epoch: [u64; 2],
    pub started: [bool; 2],
    pub crashed: [bool; 2],
    pub went_live_ns: Option<u64>,
}

pub type SharedWorld = Rc<RefCell<World>>;

impl World {
    pub fn new() -> SharedWorld {
        let mut world = World { arbiter_epoch: 1, arbiter_owner: Some(NodeId::A), ..World::default() };
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
