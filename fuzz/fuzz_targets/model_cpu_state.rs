//! A clone's CPU state from outside (what a joiner restores at the cut): `model_guest::fuzzing::restore_cpu_and_run`
//! replaces the core of a real CPU state with the input, re-seals it, restores it into a fresh guest and runs it;
//! nothing may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| model_guest::fuzzing::restore_cpu_and_run(input));
