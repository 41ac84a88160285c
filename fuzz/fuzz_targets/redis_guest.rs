//! The `redis` guest's decoders of outside input, from the guest's own files: RESP requests from clients (each
//! parsed request executed against the store, as the guest does) and append-log records from the disk. Neither
//! may panic, and the parser never takes more bytes than it was given.
#![no_main]

extern crate alloc;

#[allow(dead_code)]
#[path = "../../corpus/guests/redis/src/commands.rs"]
mod commands;
#[allow(dead_code)]
#[path = "../../corpus/guests/redis/src/record.rs"]
mod record;
#[allow(dead_code)]
#[path = "../../corpus/guests/redis/src/resp.rs"]
mod resp;
#[allow(dead_code)]
#[path = "../../corpus/guests/redis/src/store.rs"]
mod store;

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let mut store = store::Store::default();
    let mut at = 0;
    while at < input.len() {
        match resp::parse(&input[at..]) {
            resp::Parse::Command(arguments, used) => {
                assert!(used > 0 && at + used <= input.len());
                let outcome = commands::execute(&mut store, &arguments, commands::Refusal::None);
                for change in &outcome.changes {
                    let bytes = record::encode(change);
                    assert_eq!(record::decode(&bytes).map(|(_, length)| length), Some(bytes.len()));
                }
                at += used;
            }
            resp::Parse::Incomplete | resp::Parse::Error(_) => break,
        }
    }
    let _ = record::decode(input);
    let _ = record::is_end(input);
});
