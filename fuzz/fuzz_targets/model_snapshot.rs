//! A model-guest snapshot from outside: `model_guest::fuzzing::restore_and_run` replaces the core of a real
//! snapshot with the input, re-seals it, restores it and runs the guest; nothing may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| model_guest::fuzzing::restore_and_run(input));
