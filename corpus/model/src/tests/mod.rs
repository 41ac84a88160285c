//! Tests of the model guest: the machine contract (determinism, exact interrupt positions, snapshots) and each
//! program served by [`harness::Platform`], a minimal stand-in for the protocol's platform layer.

mod fuzz_regressions;
mod harness;
mod kv;
mod kvq;
mod machine;
mod programs;
