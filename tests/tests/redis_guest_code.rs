//! The `redis` guest's pure code (RESP, the append log's records, the commands), compiled for the host from the
//! guest's own files: the guest crate is a no_std static library that cannot run tests itself. The parser and the
//! record decoder take input from outside (clients, the disk); neither may panic on any input.

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

use commands::{execute, Refusal};
use proptest::prelude::*;
use resp::Parse;
use store::{Change, Store};

fn words(text: &str) -> Vec<Vec<u8>> {
    text.split(' ').map(|word| word.as_bytes().to_vec()).collect()
}

fn run(store: &mut Store, text: &str) -> (String, Vec<Change>) {
    let outcome = execute(store, &words(text), Refusal::None);
    (String::from_utf8(outcome.reply).unwrap(), outcome.changes)
}

#[test]
fn resp_arrays_inline_commands_and_pipelines_parse() {
    let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*1\r\n$4\r\nPI";
    let Parse::Command(first, used) = resp::parse(input) else { panic!("an array") };
    assert_eq!(first, words("GET k"));
    let Parse::Command(second, used_inline) = resp::parse(&input[used..]) else { panic!("inline") };
    assert_eq!(second, words("PING"));
    assert_eq!(resp::parse(&input[used + used_inline..]), Parse::Incomplete, "a request cut short waits");
    assert!(matches!(resp::parse(b"*2\r\n:1\r\n"), Parse::Error(_)), "not a bulk string");
    assert!(matches!(resp::parse(b"*-5\r\n"), Parse::Error(_)), "a negative count");
    assert!(matches!(resp::parse(b"*1\r\n$99999999999\r\n"), Parse::Error(_)), "a huge bulk");
    assert!(matches!(resp::parse(b"*1\r\n$1\r\nab\r\n"), Parse::Error(_)), "a bulk longer than it says");
    let partial = vec![b'*'; resp::REQUEST_BYTES_MAX + 1];
    assert!(matches!(resp::parse(&partial), Parse::Error(_)), "a header without an end is cut off");
}

#[test]
fn commands_answer_as_redis_does() {
    let mut store = Store::default();
    assert_eq!(run(&mut store, "PING").0, "+PONG\r\n");
    assert_eq!(run(&mut store, "GET k").0, "$-1\r\n");
    let (reply, changes) = run(&mut store, "SET k v");
    assert_eq!((reply.as_str(), changes.len()), ("+OK\r\n", 1));
    assert_eq!(run(&mut store, "GET k").0, "$1\r\nv\r\n");
    assert_eq!(run(&mut store, "EXISTS k k nope").0, ":2\r\n");
    assert_eq!(run(&mut store, "INCR n").0, ":1\r\n");
    assert_eq!(run(&mut store, "INCR n").1, vec![Change::Set(b"n".to_vec(), b"2".to_vec())], "INCR logs a SET");
    assert_eq!(run(&mut store, "SET z 007").0, "+OK\r\n");
    assert!(run(&mut store, "INCR z").0.starts_with("-ERR value is not an integer"), "not canonical");
    assert!(run(&mut store, "INCR k").0.starts_with("-ERR value is not an integer"));
    assert_eq!(run(&mut store, "DEL k k").0, ":1\r\n", "a key counted once");
    assert_eq!(run(&mut store, "DBSIZE").0, ":2\r\n");
    assert!(run(&mut store, "SET a b EX 10").0.starts_with("-ERR syntax error"));
    assert!(run(&mut store, "GET").0.starts_with("-ERR wrong number of arguments for 'get'"));
    let (reply, _) = run(&mut store, "X\r\n+OK");
    assert!(reply.starts_with("-ERR unknown command") && reply.matches("\r\n").count() == 1, "{reply:?}");
    assert!(execute(&mut store, &words("SET a b"), Refusal::DiskFull).changes.is_empty());
    let oom = execute(&mut store, &words("SET a b"), Refusal::MemoryFull);
    assert!(String::from_utf8(oom.reply).unwrap().starts_with("-OOM") && oom.changes.is_empty());
    assert!(execute(&mut store, &words("DEL n"), Refusal::MemoryFull).changes.len() == 1, "DEL frees memory");
    assert!(execute(&mut store, &words("SET a b"), Refusal::TooLarge).changes.is_empty());
    assert_eq!(run(&mut store, "FLUSHALL").1, vec![Change::FlushAll]);
    assert_eq!(run(&mut store, "DBSIZE").0, ":0\r\n");
}

#[test]
fn a_log_ends_at_zeros_a_torn_record_or_an_oversized_one() {
    let record = record::encode(&Change::Set(b"key".to_vec(), b"value".to_vec()));
    let (change, used) = record::decode(&record).expect("a whole record decodes");
    assert_eq!((change, used), (Change::Set(b"key".to_vec(), b"value".to_vec()), record.len()));
    assert!(!record::is_end(&record[..record.len() - 1]), "a record cut by the read so far waits for more");
    let mut torn = record.clone();
    let last = torn.len() - 1;
    torn[last] ^= 1;
    assert!(record::decode(&torn).is_none() && record::is_end(&torn), "a bad checksum ends the log");
    assert!(record::is_end(&[0; 16]), "zeros end the log");
    let mut huge = record.clone();
    huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(record::is_end(&huge[..12]), "a record longer than any the log writes ends it");
    assert!(!record::is_end(&[]), "nothing read yet is not an end");
}

proptest! {
    #[test]
    fn the_parser_never_panics_and_never_takes_more_than_it_has(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Parse::Command(_, used) = resp::parse(&input) {
            prop_assert!(used > 0 && used <= input.len());
        }
    }

    #[test]
    fn records_round_trip_and_garbage_never_panics(
        key in proptest::collection::vec(any::<u8>(), 0..40),
        value in proptest::collection::vec(any::<u8>(), 0..80),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let change = Change::Set(key, value);
        let bytes = record::encode(&change);
        prop_assert_eq!(record::decode(&bytes), Some((change, bytes.len())));
        let _ = record::decode(&garbage);
        let _ = record::is_end(&garbage);
    }
}
