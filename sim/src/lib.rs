//! The simulated world in which the protocol is tested: a model guest, turmoil hosts, faults and checkers.

pub mod model;
