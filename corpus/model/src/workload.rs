//! Which program the model guest runs.

use std::fmt;

/// The programs of the model guest. Each is a deterministic function of its inputs (port reads, DMA, interrupt
/// positions), like a real guest kernel plus application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Workload {
    /// The key-value service of [`ft::kv`] over the network device, persisting every put to disk before it
    /// answers. About 200 instructions per get and 215 per put (184 of them a digest of the request), plus 4 per
    /// interrupt taken.
    Kv,
    /// The same service with up to eight requests in flight (`kvq`): overlapping writes, reads right after
    /// writes, multi-sector requests, tags reused out of order, and a check of every read against what the
    /// guest wrote before (see `program/kvq.rs`).
    KvPipelined,
    /// Timer, clock and entropy heavy: a 1 ms periodic timer, compute chunks of 500 instructions separated by
    /// `OUT YIELD`, a clock and entropy read on every tick. Runs forever, or powers off after `ticks_max` ticks.
    Timer { ticks_max: Option<u64> },
    /// A sieve of Eratosthenes (about 105 000 instructions) that prints its result and powers off.
    Cpu,
}

impl Workload {
    /// The names accepted by [`Workload::from_name`] (`timer:<ticks>` is the finite timer variant).
    pub const NAMES: [&'static str; 4] = ["kv", "kvq", "timer", "cpu"];

    /// Parses `kv`, `timer`, `timer:<ticks_max>` or `cpu`.
    pub fn from_name(name: &str) -> Option<Workload> {
        match name {
            "kv" => Some(Workload::Kv),
            "kvq" => Some(Workload::KvPipelined),
            "timer" => Some(Workload::Timer { ticks_max: None }),
            "cpu" => Some(Workload::Cpu),
            _ => {
                let ticks = name.strip_prefix("timer:")?;
                let ticks_max = ticks.parse::<u64>().ok()?;
                Some(Workload::Timer { ticks_max: Some(ticks_max) })
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Kv => write!(f, "kv"),
            Workload::KvPipelined => write!(f, "kvq"),
            Workload::Timer { ticks_max: None } => write!(f, "timer"),
            Workload::Timer { ticks_max: Some(ticks) } => write!(f, "timer:{ticks}"),
            Workload::Cpu => write!(f, "cpu"),
        }
    }
}
