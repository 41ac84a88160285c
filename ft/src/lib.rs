//! The fault-tolerance protocol of a primary/backup VM pair, after VMware FT (Scales, Nelson and
//! Venkitachalam, 2010), as sans-IO state machines: events and `now` in, actions out, no I/O.
//! docs/architecture.md explains the design; docs/log-format.md the wire format; docs/guest-abi.md the devices.

pub mod abi;
pub mod backup;
pub mod bytes;
pub mod config;
pub mod detector;
pub mod events;
pub mod guest;
pub mod join;
pub mod kv;
pub mod log;
pub mod node;
pub mod platform;
pub mod position;
pub mod primary;
pub mod storage;
pub mod vm;
pub mod wire;

pub use config::{Config, ConfigError};
pub use guest::{Exit, Guest, GuestError, StateHash};
pub use node::{
    Action, ArbiterOutcome, EntropySource, Event, FailureCause, Node, Progress, Role, Stats, Stopped, StorageDone,
};
pub use position::Position;
#[cfg(feature = "driver")]
pub mod driver;
