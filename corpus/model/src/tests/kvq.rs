//! The pipelined key-value program (`kvq`): many requests in flight, answers in completion order, and the
//! guest's own check that every read returns what it wrote before.

use ft::abi;
use ft::kv::{self, Op, Request, Response, Status};

use super::super::{ModelGuest, Workload};
use super::harness::Platform;

const PEER: [u8; kv::PEER_BYTES] = [10, 0, 0, 7, 0x1f, 0x90];
const INSTRUCTIONS_MAX: u64 = 20_000_000;

fn boot(platform: &mut Platform) -> ModelGuest {
    let mut guest = ModelGuest::new(Workload::KvPipelined);
    platform.run_until(&mut guest, INSTRUCTIONS_MAX, |platform| platform.rx_posted.is_some());
    guest
}

fn frame(request: &Request) -> Vec<u8> {
    let mut frame = PEER.to_vec();
    frame.extend_from_slice(&request.encode());
    frame
}

fn put(key: u64, value: u64, request: u64) -> Request {
    Request { op: Op::Put, client: 5, request, key, value }
}

fn get(key: u64, request: u64) -> Request {
    Request { op: Op::Get, client: 5, request, key, value: 0 }
}

/// Delivers every request and runs until each has its answer; returns the answers by request id.
fn serve_all(platform: &mut Platform, guest: &mut ModelGuest, requests: &[Request]) -> Vec<Response> {
    let sent = platform.frames_out.len();
    platform.frames_in.extend(requests.iter().map(frame));
    let expected = sent + requests.len();
    platform.run_until(guest, INSTRUCTIONS_MAX, |platform| platform.frames_out.len() >= expected);
    let mut answers: Vec<Response> = platform.frames_out[sent..]
        .iter()
        .map(|bytes| {
            assert_eq!(bytes[..kv::PEER_BYTES], PEER);
            Response::decode(&bytes[kv::PEER_BYTES..]).expect("well-formed")
        })
        .collect();
    assert_eq!(answers.len(), requests.len(), "every request is answered");
    answers.sort_by_key(|answer| answer.request);
    answers
}

fn record(platform: &Platform, key: u64) -> (u64, u64) {
    let sector = &platform.sectors[1 + key as usize];
    let word = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().unwrap());
    (word(16), word(24))
}

#[test]
fn many_requests_in_flight_are_answered_and_reads_see_earlier_writes() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    assert_eq!(platform.console, "kvq: ready, 0 keys recovered, 8 slots\n");
    let requests = [put(3, 30, 1), put(3, 31, 2), get(3, 3), put(4, 40, 4), put(3, 32, 5), get(4, 6), get(3, 7)];
    let answers = serve_all(&mut platform, &mut guest, &requests);
    assert!(answers.iter().all(|answer| answer.status == Status::Ok), "{answers:?}");
    let value = |request: u64| answers.iter().find(|a| a.request == request).map(|a| a.value);
    assert_eq!(value(3), Some(31), "the get reads the put submitted just before it");
    assert_eq!(value(6), Some(40));
    assert_eq!(value(7), Some(32));
    assert_eq!(record(&platform, 3), (32, 4), "the disk holds the last put, with its version");
    // The fourth put (key 3) rewrote its whole block, sectors 4..8 (keys 3 to 6), from the table.
    assert_eq!(record(&platform, 4), (40, 3));
}

#[test]
fn more_requests_than_slots_wait_and_all_are_answered() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    let requests: Vec<Request> =
        (0..40).map(|i| if i % 3 == 2 { get(i % 5, i) } else { put(i % 5, 100 + i, i) }).collect();
    let answers = serve_all(&mut platform, &mut guest, &requests);
    assert!(answers.iter().all(|answer| answer.status == Status::Ok), "{answers:?}");
    let versions: Vec<u64> = answers.iter().filter(|a| a.op == Op::Put).map(|a| a.version).collect();
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), versions.len(), "every put has its own version");
}

#[test]
fn a_read_that_misses_an_earlier_write_is_answered_inconsistent() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    serve_all(&mut platform, &mut guest, &[put(9, 90, 1)]);
    platform.lose_writes = true;
    let answers = serve_all(&mut platform, &mut guest, &[put(9, 91, 2), get(9, 3)]);
    assert_eq!(answers[0].status, Status::Ok, "the storage said the write was done");
    assert_eq!(answers[1].status, Status::Inconsistent, "{answers:?}");
    assert_eq!(answers[1].value, 90, "it reports what it read");
}

#[test]
fn boot_recovers_the_records_and_bad_keys_are_refused() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    serve_all(&mut platform, &mut guest, &[put(1, 11, 1), put(2, 22, 2), put(60, 66, 3), put(63, 69, 4)]);
    let disk = platform.sectors.clone();
    let mut platform = Platform::new();
    platform.sectors = disk;
    let mut guest = boot(&mut platform);
    assert_eq!(platform.console, "kvq: ready, 4 keys recovered, 8 slots\n");
    let answers = serve_all(&mut platform, &mut guest, &[get(2, 5), get(63, 6), get(kv::KEYS, 7)]);
    assert_eq!((answers[0].status, answers[0].value), (Status::Ok, 22));
    assert_eq!((answers[1].status, answers[1].value), (Status::Ok, 69));
    assert_eq!(answers[2].status, Status::BadRequest);
    assert_eq!(answers[2].version, 4, "puts survive the restart");
    let _ = abi::SECTOR_BYTES;
}
