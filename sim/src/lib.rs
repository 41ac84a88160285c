//! The simulated world in which the protocol is tested: a model guest, turmoil hosts (two FT nodes, shared
//! storage, clients), faults chosen per seed, and checkers for the invariants S1..S6 (docs/architecture.md).

pub mod bench;
pub mod check;
pub mod client;
pub mod faults;
/// The model guest lives in `corpus/model` (ftvm runs it too, without KVM); re-exported under its old name.
pub use model_guest as model;
pub mod node_host;
pub mod pair;
pub mod scenario;
pub mod storage_host;
pub mod sweep;
pub mod world;
