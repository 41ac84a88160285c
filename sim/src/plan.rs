//! The plan of one scenario, chosen from its seed swarm-style (TigerBeetle's VOPR, FoundationDB's BUGGIFY): first
//! the workload, every bound and timeout of the protocol, which kinds of fault and how hard; then when they
//! strike. A plan is plain data, versioned and serialisable: a regression plan is stored as JSON in
//! `corpus/regressions/` and replayed as stored, so a change to the generator cannot quietly turn a pinned
//! scenario into another one.

use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::Workload;
use crate::world::NodeId;

/// Changes whenever the meaning of a stored plan would change; stored plans of another version are refused.
pub const PLAN_VERSION: u32 = 1;

pub const END_MS: u64 = 7_000;
pub const HEAL_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cut {
    /// The logging channel and heartbeats, both ways.
    Channel,
    /// Only traffic from the first node to the second.
    OneWay(NodeId, NodeId),
    /// A node from shared storage.
    Storage(NodeId),
    /// A node from the clients.
    Clients(NodeId),
    /// A node from everyone.
    Isolate(NodeId),
}

/// How one node's storage requests misbehave, request by request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestFault {
    /// Every third request is held past the node's storage timeout: the node retries, and the first attempt
    /// lands later, after its retry and possibly after newer writes.
    LateLanding,
    /// Each request waits a random 0..`jitter_ms` before storage does it: later requests overtake earlier ones.
    Reorder { jitter_ms: u64 },
    /// Every other write is done but its reply is lost: the node sees a timeout and writes again.
    LostReply,
}

/// What the network does to one node's heartbeat datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatFault {
    /// A bit of every datagram is flipped.
    Corrupt,
    /// A recorded heartbeat of the node is delivered to its peer again and again (also after the node died).
    Replay,
    /// Every datagram the node sends also comes back to the node itself.
    Reflect,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    Crash(NodeId),
    /// Crash and immediate restart of the host process (it comes back without its VM).
    Bounce(NodeId),
    /// The host is lost without a word: it sends nothing more, but its connections stay open (no FIN, no
    /// reset), so only the failure timeout can tell (a frozen or unplugged host).
    Freeze(NodeId),
    Partition {
        cut: Cut,
        duration_ms: u64,
    },
    /// Hold all messages between the two FT hosts, then release them at once (clogging).
    Clog {
        duration_ms: u64,
    },
    /// Lose messages between the two FT hosts at `rate` (breaks TCP connections: turmoil does not retransmit).
    Loss {
        rate_percent: u32,
        duration_ms: u64,
    },
    SlowStorage {
        delay_ms: u64,
        duration_ms: u64,
    },
    StorageRequests {
        node: NodeId,
        fault: RequestFault,
        duration_ms: u64,
    },
    /// One bit flipped in the next bytes `from` writes on the logging channel, below the framing.
    CorruptChannel {
        from: NodeId,
    },
    Heartbeats {
        node: NodeId,
        fault: HeartbeatFault,
        duration_ms: u64,
    },
}

/// A protocol event at which a crash is aimed (Mallory's lesson: faults timed by protocol events find more
/// than faults uniform in time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Edge {
    /// The primary has read an ack and has not yet released what it allows.
    AfterAck,
    /// An output has left and the primary has not yet told the backup (`Released`).
    AfterRelease,
    /// The test-and-set was done at storage and its answer has not reached the node.
    DuringTestAndSet,
    /// The new primary has issued some of the disk requests it reissues at go-live, not all.
    DuringReissue,
    /// The guest powered off and everything drained, and the primary has not said goodbye.
    DuringPowerOff,
    /// A clone is under way: its primary has sent, or its joiner received, some of its pages.
    DuringClone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashPoint {
    pub node: NodeId,
    pub edge: Edge,
    /// Crash at the `nth` time the node reaches the edge.
    pub nth: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub workload: Workload,
    pub clients: u32,
    /// Clients that speak TCP (smoltcp) to a guest with its own TCP/IP stack over a simulated Ethernet link
    /// (`crate::tcp_client`): the network device in Ethernet mode. Never drawn by `generate` (the model guest has
    /// no TCP/IP stack); tests with the KVM `redis` guest set it.
    #[serde(default)]
    pub tcp_clients: u32,
    /// Requests each client keeps in flight.
    pub pipeline: u32,
    pub latency_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub failure_timeout_ms: u64,
    pub log_entries_unacked_max: usize,
    pub log_entries_buffered_max: usize,
    pub net_frames_queued_max: usize,
    pub checkpoint_interval_exits: u64,
    pub slice_instructions: u64,
    pub slice_exits_max: u64,
    pub arbiter_retry_ms: u64,
    /// A storage request with no answer after this long counts as "storage unreachable" and is retried.
    pub storage_timeout_ms: u64,
    /// Simulated CPU time of one guest slice on host A and host B: a larger one is a CPU-starved host.
    pub slice_cost_us: [u64; 2],
    /// The execution lag the primary's throttle aims for (plans stored before the throttle run with the default).
    #[serde(default = "lag_target_ms_default")]
    pub lag_target_ms: u64,
    /// Re-protection: pre-copy passes at most, and the dirty set small enough for the cut (plans stored before
    /// re-protection run with the defaults).
    #[serde(default = "clone_passes_max_default")]
    pub clone_passes_max: u64,
    #[serde(default = "clone_dirty_pages_small_default")]
    pub clone_dirty_pages_small: u64,
    /// Re-protection's window of unacknowledged pages (plans stored before it run with the default).
    #[serde(default = "clone_window_pages_default")]
    pub clone_window_pages: u64,
    /// (time in ms, fault), in time order.
    pub faults: Vec<(u64, Fault)>,
    pub crash_point: Option<CrashPoint>,
    pub heal_ms: u64,
    pub end_ms: u64,
}

fn lag_target_ms_default() -> u64 {
    ft::Config::default().lag_target_ms
}

fn clone_passes_max_default() -> u64 {
    ft::Config::default().clone_passes_max
}

fn clone_dirty_pages_small_default() -> u64 {
    ft::Config::default().clone_dirty_pages_small
}

fn clone_window_pages_default() -> u64 {
    ft::Config::default().clone_window_pages
}

/// Time between two successive failures of a plan with several: room for failover and re-protection.
const SUCCESSIVE_FAILURES_APART_MS: u64 = 1_200;

fn pick<T: Copy>(rng: &mut ChaCha8Rng, choices: &[T]) -> T {
    choices[rng.random_range(0..choices.len())]
}

fn random_node(rng: &mut ChaCha8Rng) -> NodeId {
    if rng.random_bool(0.5) {
        NodeId::A
    } else {
        NodeId::B
    }
}

impl Plan {
    pub fn generate(seed: u64) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut plan = Plan::bounds(&mut rng);
        let at = |rng: &mut ChaCha8Rng| rng.random_range(300..HEAL_MS - 500);
        // A crash run has exactly one failure of a node (no cuts between the nodes); others may have any mix.
        let crash_run = rng.random_ratio(1, 2);
        if crash_run {
            plan.plan_crash(&mut rng);
        }
        for _ in 0..rng.random_range(0..=4) {
            let fault = plan.random_fault(&mut rng, crash_run);
            plan.faults.push((at(&mut rng), fault));
        }
        plan.faults.sort_by_key(|(at_ms, _)| *at_ms);
        // Drawn last, so that every other choice of a seed is what it was before the throttle.
        plan.lag_target_ms = pick(&mut rng, &[10, 50, 50, 200]);
        // And after it, what re-protection added: the model guest has 16 pages, so a small "small" and few
        // passes make pre-copy take several passes, or give up converging early.
        plan.clone_passes_max = pick(&mut rng, &[1, 2, 4, 8]);
        plan.clone_dirty_pages_small = pick(&mut rng, &[0, 1, 2, 256]);
        if crash_run && plan.crash_point.is_none() && rng.random_ratio(1, 2) {
            plan.successive_failures(&mut rng);
        }
        // Drawn after everything else: the model guest's 16 pages go a few at a time, or all at once.
        plan.clone_window_pages = pick(&mut rng, &[1, 3, 8, 1_024]);
        plan
    }

    /// Two or three failures in a row, each after the pair was protected again: the primary of the moment is
    /// restarted (the nodes take turns), it rejoins as the backup of the survivor, and the next failure hits
    /// the survivor. The first failure stays where `plan_crash` put it (or comes early enough for three).
    fn successive_failures(&mut self, rng: &mut ChaCha8Rng) {
        self.faults.retain(|(_, fault)| !matches!(fault, Fault::Crash(_) | Fault::Bounce(_) | Fault::Freeze(_)));
        self.faults.retain(|(_, fault)| !matches!(fault, Fault::Heartbeats { .. }));
        let failures = rng.random_range(2..=3);
        let first_ms = rng.random_range(300..=800);
        let mut node = NodeId::A;
        for failure in 0..failures {
            let at_ms = first_ms + failure * SUCCESSIVE_FAILURES_APART_MS + rng.random_range(0..=200);
            self.faults.push((at_ms, Fault::Bounce(node)));
            node = node.other();
        }
        self.faults.sort_by_key(|(at_ms, _)| *at_ms);
        // A third of these lose a node in the middle of a clone: the joiner (the primary runs on, unprotected,
        // and gives the clone up) or the primary (the joiner has nothing to go live with).
        // Only the first failure stays then, so that A is the joiner and B the primary of every clone, and no
        // later failure takes the survivor too.
        if rng.random_ratio(1, 3) {
            let node = random_node(rng);
            self.crash_point = Some(CrashPoint { node, edge: Edge::DuringClone, nth: rng.random_range(1..=2) });
            let mut bounces = 0;
            self.faults.retain(|(_, fault)| {
                bounces += u32::from(matches!(fault, Fault::Bounce(_)));
                bounces <= 1 || !matches!(fault, Fault::Bounce(_))
            });
        }
    }

    /// The workload and every bound, timeout and speed of the protocol.
    fn bounds(rng: &mut ChaCha8Rng) -> Plan {
        let workload = match rng.random_range(0..20) {
            0..=8 => Workload::KvPipelined,
            9..=14 => Workload::Kv,
            15..=17 => Workload::Timer { ticks_max: None },
            _ => Workload::Timer { ticks_max: Some(rng.random_range(500..4_500)) },
        };
        let kv = matches!(workload, Workload::Kv | Workload::KvPipelined);
        let heartbeat_interval_ms = rng.random_range(5..=40);
        let small = |rng: &mut ChaCha8Rng| rng.random_ratio(1, 4);
        let backup_cost_us = if small(rng) { rng.random_range(1_500..=3_000) } else { 1_000 };
        let mut plan = Plan {
            version: PLAN_VERSION,
            workload,
            clients: if kv { rng.random_range(1..=3) } else { 0 },
            tcp_clients: 0,
            // A sequential guest serves one request at a time: more than two in flight per client overload it.
            pipeline: match workload {
                Workload::KvPipelined => pick(rng, &[1, 2, 4, 8]),
                Workload::Kv => pick(rng, &[1, 2]),
                _ => 0,
            },
            latency_max_ms: pick(rng, &[0, 1, 2, 5, 10]),
            heartbeat_interval_ms,
            failure_timeout_ms: rng.random_range(3 * heartbeat_interval_ms..=3 * heartbeat_interval_ms + 200),
            log_entries_unacked_max: if small(rng) { rng.random_range(4..=32) } else { pick(rng, &[256, 4_096]) },
            log_entries_buffered_max: if small(rng) { rng.random_range(4..=64) } else { 16_384 },
            net_frames_queued_max: if small(rng) { rng.random_range(1..=8) } else { 256 },
            checkpoint_interval_exits: pick(rng, &[16, 64, 256, 1_024]),
            slice_instructions: rng.random_range(500..=3_000),
            slice_exits_max: pick(rng, &[1, 4, 16, 64]),
            arbiter_retry_ms: rng.random_range(10..=100),
            storage_timeout_ms: rng.random_range(50..=200),
            slice_cost_us: [1_000, backup_cost_us],
            lag_target_ms: lag_target_ms_default(),
            clone_passes_max: clone_passes_max_default(),
            clone_dirty_pages_small: clone_dirty_pages_small_default(),
            clone_window_pages: clone_window_pages_default(),
            faults: Vec::new(),
            crash_point: None,
            heal_ms: HEAL_MS,
            end_ms: END_MS,
        };
        if backup_cost_us > 1_000 {
            // The CPU-share throttle keeps a slower backup's lag near the plan's target; half of these plans
            // still bound the backup's buffer, so that flow control has to act too. Slices of one exit would
            // make a pair run at the backup's pace too slow to serve anybody.
            if rng.random_bool(0.5) {
                plan.log_entries_buffered_max = rng.random_range(4..=128);
            }
            plan.slice_exits_max = pick(rng, &[16, 64]);
        }
        plan
    }

    /// The run's one node failure: a crash at a random moment, or one aimed at a protocol edge.
    fn plan_crash(&mut self, rng: &mut ChaCha8Rng) {
        let at_ms = rng.random_range(300..HEAL_MS - 500);
        let powers_off = matches!(self.workload, Workload::Timer { ticks_max: Some(_) });
        if powers_off && rng.random_bool(0.5) {
            self.crash_point = Some(CrashPoint { node: NodeId::A, edge: Edge::DuringPowerOff, nth: 1 });
            return;
        }
        match rng.random_range(0..10) {
            0..=4 => {
                let node = if rng.random_ratio(3, 5) { NodeId::A } else { NodeId::B };
                let fault = match rng.random_range(0..4) {
                    0 => Fault::Bounce(node),
                    1 => Fault::Freeze(node),
                    _ => Fault::Crash(node),
                };
                if fault == Fault::Freeze(node) && rng.random_bool(0.5) {
                    // Heartbeats that must not pass for the lost host's: its own replayed, or the survivor's
                    // reflected back to the survivor.
                    let (heartbeats, fault) = if rng.random_bool(0.5) {
                        (node, HeartbeatFault::Replay)
                    } else {
                        (node.other(), HeartbeatFault::Reflect)
                    };
                    // Until the heal: a detector fooled by them would wait for it (`check::detection` says so).
                    let duration_ms = HEAL_MS - at_ms;
                    self.faults.push((at_ms, Fault::Heartbeats { node: heartbeats, fault, duration_ms }));
                }
                self.faults.push((at_ms, fault));
            }
            5 | 6 => {
                let edge = if rng.random_bool(0.5) { Edge::AfterAck } else { Edge::AfterRelease };
                self.crash_point = Some(CrashPoint { node: NodeId::A, edge, nth: rng.random_range(1..=400) });
            }
            7 | 8 => {
                // A second failure: the backup dies while it reissues the IO of the primary that crashed.
                self.faults.push((at_ms, Fault::Crash(NodeId::A)));
                self.crash_point =
                    Some(CrashPoint { node: NodeId::B, edge: Edge::DuringReissue, nth: rng.random_range(1..=2) });
            }
            _ => {
                // A second failure: the survivor dies inside its test-and-set.
                let node = random_node(rng);
                self.faults.push((at_ms, Fault::Crash(node)));
                self.crash_point = Some(CrashPoint { node: node.other(), edge: Edge::DuringTestAndSet, nth: 1 });
            }
        }
    }

    fn random_fault(&self, rng: &mut ChaCha8Rng, crash_run: bool) -> Fault {
        let duration_ms = rng.random_range(50..=1_500);
        let node = random_node(rng);
        // Cuts, clogs and losses between the two nodes, and channel corruption, fail a node in effect: a crash
        // run has none of them.
        match rng.random_range(0..11) {
            0 if !crash_run => Fault::Partition { cut: between_nodes(rng, node), duration_ms },
            1 => Fault::Partition { cut: Cut::Storage(node), duration_ms },
            2 if !crash_run => Fault::Clog { duration_ms },
            3 if !crash_run => Fault::Loss { rate_percent: rng.random_range(1..=20), duration_ms },
            4 => Fault::SlowStorage { delay_ms: rng.random_range(5..=200), duration_ms },
            5 | 6 => {
                let fault = match rng.random_range(0..3) {
                    0 => RequestFault::LateLanding,
                    1 => RequestFault::Reorder { jitter_ms: rng.random_range(5..=80) },
                    _ => RequestFault::LostReply,
                };
                Fault::StorageRequests { node, fault, duration_ms }
            }
            7 if !crash_run => Fault::CorruptChannel { from: node },
            8 => {
                let fault = pick(rng, &[HeartbeatFault::Corrupt, HeartbeatFault::Replay, HeartbeatFault::Reflect]);
                Fault::Heartbeats { node, fault, duration_ms }
            }
            _ => Fault::Partition { cut: Cut::Clients(node), duration_ms },
        }
    }

    /// The node the run's planned failure takes down first (a crash point counts).
    pub fn crashed(&self) -> Option<NodeId> {
        let timed = self.faults.iter().find_map(|(_, fault)| match fault {
            Fault::Crash(node) | Fault::Bounce(node) | Fault::Freeze(node) => Some(*node),
            _ => None,
        });
        timed.or(self.crash_point.map(|point| point.node))
    }

    /// Whether both nodes may be lost (a crash aimed at the survivor of a first crash): then no liveness is owed.
    pub fn double_failure(&self) -> bool {
        // A crash of the primary in the middle of a clone (which leaves the joiner nothing to go live with) is
        // not here: whether it fired is what the world saw (`check::liveness::guest_survived`).
        self.crash_point.is_some_and(|point| matches!(point.edge, Edge::DuringReissue | Edge::DuringTestAndSet))
    }

    /// Whether the guest powers off by itself during the run.
    pub fn powers_off(&self) -> bool {
        matches!(self.workload, Workload::Timer { ticks_max: Some(_) })
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan: workload={} clients={}x{} latency_max={}ms heartbeat={}ms failure_timeout={}ms storage_timeout={}ms arbiter_retry={}ms",
            self.workload,
            self.clients,
            self.pipeline,
            self.latency_max_ms,
            self.heartbeat_interval_ms,
            self.failure_timeout_ms,
            self.storage_timeout_ms,
            self.arbiter_retry_ms,
        );
        if self.tcp_clients > 0 {
            let _ = writeln!(out, "plan: tcp_clients={} over Ethernet", self.tcp_clients);
        }
        let _ = writeln!(
            out,
            "plan: unacked_max={} buffered_max={} frames_queued_max={} checkpoint_every={} exits slice={} insns/{} exits cost={}/{}us",
            self.log_entries_unacked_max,
            self.log_entries_buffered_max,
            self.net_frames_queued_max,
            self.checkpoint_interval_exits,
            self.slice_instructions,
            self.slice_exits_max,
            self.slice_cost_us[0],
            self.slice_cost_us[1],
        );
        let _ = writeln!(
            out,
            "plan: lag_target={}ms clone_passes_max={} clone_dirty_pages_small={} clone_window_pages={}",
            self.lag_target_ms, self.clone_passes_max, self.clone_dirty_pages_small, self.clone_window_pages
        );
        for (at_ms, fault) in &self.faults {
            let _ = writeln!(out, "plan: at {at_ms}ms {fault:?}");
        }
        if let Some(point) = self.crash_point {
            let _ = writeln!(out, "plan: crash {} at its {} {:?}", point.node.host(), ordinal(point.nth), point.edge);
        }
        let _ = write!(out, "plan: heal at {}ms, end at {}ms", self.heal_ms, self.end_ms);
        out
    }

    /// The plan as stored in a regression file.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan serialises")
    }

    /// A stored plan; refused (with the reason) if it is not a plan of this version.
    pub fn from_json(text: &str) -> Result<Plan, String> {
        let plan: Plan = serde_json::from_str(text).map_err(|error| format!("not a plan: {error}"))?;
        if plan.version != PLAN_VERSION {
            return Err(format!("plan version {}, this simulator runs version {PLAN_VERSION}", plan.version));
        }
        Ok(plan)
    }
}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// A cut that separates the two FT hosts.
fn between_nodes(rng: &mut ChaCha8Rng, node: NodeId) -> Cut {
    match rng.random_range(0..3) {
        0 => Cut::Channel,
        1 => Cut::OneWay(node, node.other()),
        _ => Cut::Isolate(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_and_other_versions_are_refused() {
        for seed in 0..200 {
            let plan = Plan::generate(seed);
            assert_eq!(Plan::from_json(&plan.to_json()), Ok(plan.clone()), "seed {seed}");
        }
        let mut old = Plan::generate(1);
        old.version = PLAN_VERSION + 1;
        assert!(Plan::from_json(&old.to_json()).is_err_and(|e| e.contains("version")));
        assert!(Plan::from_json("{}").is_err());
    }

    #[test]
    fn every_generated_config_is_valid() {
        for seed in 0..2_000 {
            let plan = Plan::generate(seed);
            assert_eq!(crate::scenario::config_for(&plan).validate(), Ok(()), "seed {seed}");
            assert!(plan.failure_timeout_ms > plan.heartbeat_interval_ms);
        }
    }
}
