//! The Kv program served by the test platform: boot recovery, puts persisted before they are answered,
//! disk errors, malformed frames.

use ft::abi;
use ft::kv::{self, Op, Request, Response, Status};
use ft::Guest;

use super::super::{ModelGuest, Workload};
use super::harness::Platform;

const PEER: [u8; kv::PEER_BYTES] = [10, 0, 0, 7, 0x1f, 0x90];
const INSTRUCTIONS_MAX: u64 = 10_000_000;

fn boot(platform: &mut Platform) -> ModelGuest {
    let mut guest = ModelGuest::new(Workload::Kv);
    platform.run_until(&mut guest, INSTRUCTIONS_MAX, |platform| platform.rx_posted.is_some());
    guest
}

fn frame(request: &Request) -> Vec<u8> {
    let mut frame = PEER.to_vec();
    frame.extend_from_slice(&request.encode());
    frame
}

/// Delivers one frame and returns the answer, checking it goes back to the peer.
fn serve(platform: &mut Platform, guest: &mut ModelGuest, frame: Vec<u8>) -> Option<Response> {
    let sent = platform.frames_out.len();
    platform.frames_in.push_back(frame);
    // The request is served once the guest posts its buffer again with the input queue empty.
    platform
        .run_until(guest, INSTRUCTIONS_MAX, |platform| platform.frames_in.is_empty() && platform.rx_posted.is_some());
    assert!(platform.frames_out.len() <= sent + 1);
    let answer = platform.frames_out.get(sent)?;
    assert_eq!(answer.len(), kv::PEER_BYTES + kv::RESPONSE_BYTES);
    assert_eq!(answer[..kv::PEER_BYTES], PEER);
    Some(Response::decode(&answer[kv::PEER_BYTES..]).expect("the guest sends well-formed responses"))
}

fn put(key: u64, value: u64, request: u64) -> Request {
    Request { op: Op::Put, client: 5, request, key, value }
}

fn get(key: u64, request: u64) -> Request {
    Request { op: Op::Get, client: 5, request, key, value: 0 }
}

#[test]
fn put_is_persisted_before_it_is_answered() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    assert_eq!(platform.console, "kv: ready, 0 keys recovered\n");
    assert_eq!(platform.timer_period_ns, 10_000_000);

    let response = serve(&mut platform, &mut guest, frame(&put(3, 0xdead_beef, 1))).unwrap();
    let expected =
        Response { op: Op::Put, client: 5, status: Status::Ok, request: 1, key: 3, value: 0xdead_beef, version: 1 };
    assert_eq!(response, expected);

    // The record of key 3 is in sector 4, and the write completed before the answer left.
    let sector = &platform.sectors[4];
    assert_eq!(u32::from_le_bytes(sector[0..4].try_into().unwrap()), kv::MAGIC);
    assert_eq!(u64::from_le_bytes(sector[8..16].try_into().unwrap()), 3);
    assert_eq!(u64::from_le_bytes(sector[16..24].try_into().unwrap()), 0xdead_beef);
    assert_eq!(u64::from_le_bytes(sector[24..32].try_into().unwrap()), 1);
    assert!(sector[kv::RECORD_BYTES..].iter().all(|byte| *byte == 0));
    let submit =
        platform.trace.iter().rposition(|(exit, _)| matches!(exit, ft::Exit::PortOut { port: abi::DISK_SUBMIT, .. }));
    let transmit =
        platform.trace.iter().rposition(|(exit, _)| matches!(exit, ft::Exit::PortOut { port: abi::NET_TX, .. }));
    let completion =
        platform.trace.iter().rposition(|(exit, _)| matches!(exit, ft::Exit::PortIn { port: abi::DISK_STATUS, .. }));
    assert!(submit < completion && completion < transmit);

    let response = serve(&mut platform, &mut guest, frame(&get(3, 2))).unwrap();
    assert_eq!((response.status, response.value, response.version), (Status::Ok, 0xdead_beef, 1));
    let response = serve(&mut platform, &mut guest, frame(&get(4, 3))).unwrap();
    assert_eq!((response.status, response.value, response.version), (Status::Ok, 0, 1));
}

#[test]
fn restart_recovers_the_table_from_disk() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    serve(&mut platform, &mut guest, frame(&put(0, 11, 1))).unwrap();
    serve(&mut platform, &mut guest, frame(&put(63, 22, 2))).unwrap();
    serve(&mut platform, &mut guest, frame(&put(0, 33, 3))).unwrap();

    let mut restarted = Platform { sectors: platform.sectors.clone(), ..Platform::new() };
    let mut guest = boot(&mut restarted);
    assert_eq!(restarted.console, "kv: ready, 2 keys recovered\n");
    let response = serve(&mut restarted, &mut guest, frame(&get(0, 4))).unwrap();
    assert_eq!((response.value, response.version), (33, 3));
    let response = serve(&mut restarted, &mut guest, frame(&get(63, 5))).unwrap();
    assert_eq!((response.value, response.version), (22, 3));
    let response = serve(&mut restarted, &mut guest, frame(&put(1, 44, 6))).unwrap();
    assert_eq!((response.status, response.version), (Status::Ok, 4));
}

#[test]
fn failed_write_is_answered_with_io_error_and_not_applied() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    platform.fail_writes = true;
    let response = serve(&mut platform, &mut guest, frame(&put(9, 99, 1))).unwrap();
    assert_eq!((response.status, response.version), (Status::IoError, 0));
    platform.fail_writes = false;
    let response = serve(&mut platform, &mut guest, frame(&get(9, 2))).unwrap();
    assert_eq!((response.status, response.value, response.version), (Status::Ok, 0, 0));
}

#[test]
fn malformed_frames_are_dropped_and_bad_keys_refused() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    let good = frame(&get(1, 1));
    let mut bad_magic = good.clone();
    bad_magic[kv::PEER_BYTES] ^= 1;
    let mut bad_op = good.clone();
    bad_op[kv::PEER_BYTES + 4] = 7;
    let long = [good.clone(), vec![0]].concat();
    for dropped in [vec![], vec![1, 2, 3], good[..good.len() - 1].to_vec(), long, bad_magic, bad_op, vec![0xff; 2048]] {
        assert_eq!(serve(&mut platform, &mut guest, dropped), None);
    }
    let response = serve(&mut platform, &mut guest, frame(&put(kv::KEYS, 5, 2))).unwrap();
    assert_eq!((response.status, response.value), (Status::BadRequest, 5));
    let response = serve(&mut platform, &mut guest, frame(&get(u64::MAX, 3))).unwrap();
    assert_eq!(response.status, Status::BadRequest);
    assert!(platform.sectors.iter().all(|sector| sector.iter().all(|byte| *byte == 0)), "nothing was written");
}

#[test]
fn spurious_network_interrupt_is_ignored() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    guest.inject_interrupt(abi::VECTOR_NET).unwrap();
    guest.inject_interrupt(abi::VECTOR_DISK).unwrap();
    guest.inject_interrupt(0x99).unwrap();
    let exits = platform.trace.len();
    let until = guest.position().instructions + 20_000;
    platform.run_until(&mut guest, until, |_| false);
    assert!(platform.frames_out.is_empty());
    assert!(platform.trace.len() > exits, "the guest went back to sleep");
    let response = serve(&mut platform, &mut guest, frame(&get(1, 1))).unwrap();
    assert_eq!(response.status, Status::Ok);
}

#[test]
fn reports_every_hundred_requests() {
    let mut platform = Platform::new();
    let mut guest = boot(&mut platform);
    let start = guest.position().instructions;
    for request in 0..200 {
        let op =
            if request % 2 == 0 { put(request % kv::KEYS, request, request) } else { get(request % kv::KEYS, request) };
        serve(&mut platform, &mut guest, frame(&op)).unwrap();
    }
    let lines: Vec<&str> = platform.console.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[1].starts_with("kv: 100 requests, 50 puts, checksum="), "{lines:?}");
    assert!(lines[2].starts_with("kv: 200 requests, 100 puts, checksum="), "{lines:?}");
    let per_request = (guest.position().instructions - start) / 200;
    assert!((200..400).contains(&per_request), "{per_request} instructions per request");
}

#[test]
fn single_steps_serve_like_long_runs() {
    let mut hashes = Vec::new();
    let mut traces = Vec::new();
    for single_step in [false, true] {
        let mut platform = Platform { single_step, ..Platform::new() };
        let mut guest = boot(&mut platform);
        for request in 0..20 {
            let op = if request % 3 == 0 { put(request, request * 7, request) } else { get(request / 2, request) };
            serve(&mut platform, &mut guest, frame(&op)).unwrap();
        }
        hashes.push(guest.state_hash().unwrap());
        traces.push(platform.trace);
    }
    assert_eq!(hashes[0], hashes[1]);
    assert_eq!(traces[0], traces[1]);
}
