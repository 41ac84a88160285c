//! The simulated world in which the protocol is tested: a model guest, turmoil hosts (two FT nodes, shared
//! storage, clients), faults chosen per seed, and checkers for the invariants S1..S6 (docs/architecture.md).

// turmoil seeds each host's tokio RNG only under this cfg; without it `tokio::select!` picks branches at random
// and a seed no longer reproduces its scenario. `.cargo/config.toml` sets it; a RUSTFLAGS variable in the
// environment replaces that setting instead of adding to it, so say so rather than simulate nondeterministically.
#[cfg(not(tokio_unstable))]
compile_error!(
    "the simulator needs `--cfg tokio_unstable` for determinism: it is in .cargo/config.toml, but a RUSTFLAGS \
     environment variable overrides that file; add `--cfg tokio_unstable` to RUSTFLAGS"
);

/// `println!` that ignores a closed stdout (`ftsim ... | head`): a reader leaving early is not an error.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod bench;
pub mod channel;
pub mod check;
pub mod client;
pub mod hashtap;
pub mod marks;
/// The model guest lives in `corpus/model` (ftvm runs it too, without KVM); re-exported under its old name.
pub use model_guest as model;
pub mod node_host;
pub mod observe;
pub mod pair;
pub mod plan;
pub mod regression;
pub mod scenario;
pub mod stopwatch;
pub mod storage_host;
pub mod sweep;
pub mod tcp_client;
pub mod world;
