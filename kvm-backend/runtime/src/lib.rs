//! The host runtime: the real world around the protocol core. Sockets, files, threads, the logging channel and
//! its authentication, shared storage and the arbiter record, status and metrics, record and replay, the demo.
//!
//! `ft` is the protocol with no I/O, `ft-sim` the simulated world, `kvm-backend` the hardware (a KVM guest and
//! its vCPU thread); this crate drives the core with a real clock, TCP and files, and `ftvm` (src/main.rs) is a
//! thin command line over it. A library, so that its failure paths and decoders are tested and fuzzed directly.

pub mod auth;
pub mod bench;
pub mod config;
pub mod demo;
pub mod error;
pub mod ethernet;
pub mod figures;
pub mod join;
pub mod load;
pub mod machine;
pub mod netlab;
pub mod node;
pub mod pair;
pub mod pause;
pub mod replay;
pub mod report;
pub mod session;
mod session_host;
pub mod status;
pub mod storage;
pub mod stream;
pub mod tap;
pub mod timer;
pub mod workload;

/// The executor of every driver loop (`ftvm primary`/`backup`, `run`/`record`, `replay`): one thread and a
/// `LocalSet`, because the protocol's tasks share the node through `Rc` and are not `Send`.
pub fn local_runtime() -> Result<(tokio::runtime::Runtime, tokio::task::LocalSet), error::CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error::CliError::io("tokio runtime", &error))?;
    Ok((runtime, tokio::task::LocalSet::new()))
}
