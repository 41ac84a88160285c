//! Faults chosen per seed, swarm style: each seed first decides which kinds of fault it will use and how hard,
//! then when they strike. The plan is printed at the top of every run.

use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::Workload;
use crate::world::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Crash(NodeId),
    /// Crash and immediate restart of the host process (it comes back without its VM).
    Bounce(NodeId),
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
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub workload: Workload,
    pub clients: u32,
    pub latency_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub failure_timeout_ms: u64,
    pub log_entries_unacked_max: usize,
    pub slice_instructions: u64,
    /// (time in ms, fault), in time order.
    pub faults: Vec<(u64, Fault)>,
    pub heal_ms: u64,
    pub end_ms: u64,
}

pub const END_MS: u64 = 10_000;
pub const HEAL_MS: u64 = 7_000;

impl Plan {
    pub fn generate(seed: u64) -> Plan {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let workload = if rng.random_ratio(4, 5) { Workload::Kv } else { Workload::Timer { ticks_max: None } };
        let mut plan = Plan {
            workload,
            clients: rng.random_range(1..=3),
            latency_max_ms: *[0, 1, 2, 5, 10].get(rng.random_range(0..5)).unwrap_or(&1),
            heartbeat_interval_ms: rng.random_range(10..=40),
            failure_timeout_ms: rng.random_range(100..=300),
            log_entries_unacked_max: if rng.random_ratio(1, 4) { rng.random_range(4..=32) } else { 4_096 },
            slice_instructions: rng.random_range(500..=3_000),
            faults: Vec::new(),
            heal_ms: HEAL_MS,
            end_ms: END_MS,
        };
        if workload != Workload::Kv {
            // Only the key-value service has clients.
            plan.clients = 0;
        }
        // A crash is the single failure of the run; without one, any number of partitions may come and go.
        let crash_run = rng.random_ratio(1, 2);
        let at = |rng: &mut ChaCha8Rng| rng.random_range(300..HEAL_MS - 500);
        if crash_run {
            let node = if rng.random_ratio(3, 5) { NodeId::A } else { NodeId::B };
            let fault = if rng.random_ratio(1, 3) { Fault::Bounce(node) } else { Fault::Crash(node) };
            plan.faults.push((at(&mut rng), fault));
        }
        let fault_count = rng.random_range(0..=4);
        for _ in 0..fault_count {
            let duration_ms = rng.random_range(50..=1_500);
            let fault = match rng.random_range(0..6) {
                0 if !crash_run => Fault::Partition { cut: random_cut(&mut rng, true), duration_ms },
                1 => Fault::Partition { cut: random_cut(&mut rng, false), duration_ms },
                2 if !crash_run => Fault::Clog { duration_ms },
                3 if !crash_run => Fault::Loss { rate_percent: rng.random_range(1..=20), duration_ms },
                4 => Fault::SlowStorage { delay_ms: rng.random_range(5..=200), duration_ms },
                _ => Fault::Partition { cut: Cut::Clients(random_node(&mut rng)), duration_ms },
            };
            plan.faults.push((at(&mut rng), fault));
        }
        plan.faults.sort_by_key(|(at_ms, _)| *at_ms);
        plan
    }

    pub fn crashed(&self) -> Option<NodeId> {
        self.faults.iter().find_map(|(_, fault)| match fault {
            Fault::Crash(node) | Fault::Bounce(node) => Some(*node),
            _ => None,
        })
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan: workload={:?} clients={} latency_max={}ms heartbeat={}ms failure_timeout={}ms unacked_max={} slice={} insns",
            self.workload,
            self.clients,
            self.latency_max_ms,
            self.heartbeat_interval_ms,
            self.failure_timeout_ms,
            self.log_entries_unacked_max,
            self.slice_instructions
        );
        for (at_ms, fault) in &self.faults {
            let _ = writeln!(out, "plan: at {at_ms}ms {fault:?}");
        }
        let _ = write!(out, "plan: heal at {}ms, end at {}ms", self.heal_ms, self.end_ms);
        out
    }
}

fn random_node(rng: &mut ChaCha8Rng) -> NodeId {
    if rng.random_bool(0.5) {
        NodeId::A
    } else {
        NodeId::B
    }
}

/// `between_nodes`: cuts that separate the two FT hosts (not allowed in crash runs, see `generate`).
fn random_cut(rng: &mut ChaCha8Rng, between_nodes: bool) -> Cut {
    let node = random_node(rng);
    if between_nodes {
        match rng.random_range(0..3) {
            0 => Cut::Channel,
            1 => Cut::OneWay(node, node.other()),
            _ => Cut::Isolate(node),
        }
    } else {
        Cut::Storage(node)
    }
}
