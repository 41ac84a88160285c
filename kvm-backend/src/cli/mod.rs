//! The commands of the `ftvm` binary.

pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod load;
pub mod machine;
pub mod node;
pub mod replay;
pub mod report;
pub mod session;
pub mod status;
pub mod storage;
pub mod tap;
pub mod workload;
