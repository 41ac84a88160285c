//! The commands of the `ftvm` binary.

pub mod error;
pub mod machine;
pub mod replay;
pub mod report;
pub mod session;
pub mod tap;
pub mod workload;
