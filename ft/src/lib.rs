//! The fault-tolerance protocol of a primary/backup VM pair, after VMware FT (Scales, Nelson and
//! Venkitachalam, 2010), as sans-IO state machines: events and `now` in, actions out, no I/O.
//! docs/architecture.md explains the design; docs/log-format.md the wire format; docs/guest-abi.md the devices.

pub mod abi;
pub mod guest;
pub mod kv;
pub mod position;

pub use guest::{Exit, Guest, GuestError, StateHash};
pub use position::Position;
