//! The kv guest speaks ft::kv over the network device and persists to the disk.

mod common;

use ft::kv::{Op, Request, Response, Status, MAGIC, PEER_BYTES, RECORD_BYTES};
use kvm_backend::testkit::{Bench, Stop};

const PEER: [u8; PEER_BYTES] = [10, 0, 0, 7, 0x1f, 0x90];

fn frame(request: &Request) -> Vec<u8> {
    let mut frame = PEER.to_vec();
    frame.extend_from_slice(&request.encode());
    frame
}

fn response(frame: &[u8]) -> Response {
    assert_eq!(&frame[..PEER_BYTES], &PEER, "answered to the asking peer");
    Response::decode(&frame[PEER_BYTES..]).expect("decodes")
}

fn request(op: Op, request: u64, key: u64, value: u64) -> Request {
    Request { op, client: 3, request, key, value }
}

fn run_until_idle(bench: &mut Bench) {
    assert_eq!(bench.run(10_000).expect("runs"), Stop::Idle, "console: {}", bench.console_text());
}

#[test]
fn put_persists_then_get_answers_and_a_restart_recovers() {
    let Some(mut bench) = common::bench("kv") else { return };
    run_until_idle(&mut bench);
    bench.devices.incoming.push_back(frame(&request(Op::Put, 1, 5, 0xfeed)));
    bench.devices.incoming.push_back(frame(&request(Op::Get, 2, 5, 0)));
    bench.devices.incoming.push_back(frame(&request(Op::Get, 3, 64, 0)));
    bench.devices.incoming.push_back(b"garbage".to_vec());
    bench.devices.incoming.push_back(frame(&request(Op::Put, 4, 6, 7)));
    run_until_idle(&mut bench);

    let responses: Vec<Response> = bench.devices.transmitted.iter().map(|frame| response(frame)).collect();
    let expected = [
        Response { op: Op::Put, client: 3, status: Status::Ok, request: 1, key: 5, value: 0xfeed, version: 1 },
        Response { op: Op::Get, client: 3, status: Status::Ok, request: 2, key: 5, value: 0xfeed, version: 1 },
        Response { op: Op::Get, client: 3, status: Status::BadRequest, request: 3, key: 64, value: 0, version: 1 },
        Response { op: Op::Put, client: 3, status: Status::Ok, request: 4, key: 6, value: 7, version: 2 },
    ];
    assert_eq!(responses, expected);

    // Key 5 lives in sector 6 as a RECORD.
    let sector = &bench.devices.disk[6 * 512..7 * 512];
    let mut record = MAGIC.to_le_bytes().to_vec();
    record.extend_from_slice(&0u32.to_le_bytes());
    record.extend_from_slice(&5u64.to_le_bytes());
    record.extend_from_slice(&0xfeedu64.to_le_bytes());
    record.extend_from_slice(&1u64.to_le_bytes());
    assert_eq!(&sector[..RECORD_BYTES], &record[..]);
    assert!(sector[RECORD_BYTES..].iter().all(|&byte| byte == 0));

    // A new VM on the same disk recovers both keys and the version.
    let disk = bench.devices.disk.clone();
    let Some(mut restarted) = common::bench("kv") else { return };
    restarted.devices.disk = disk;
    run_until_idle(&mut restarted);
    assert!(restarted.console_text().contains("kv: recovered keys=2 version=2"), "{}", restarted.console_text());
    restarted.devices.incoming.push_back(frame(&request(Op::Get, 5, 5, 0)));
    run_until_idle(&mut restarted);
    let answer = response(&restarted.devices.transmitted[0]);
    assert_eq!((answer.value, answer.version, answer.status), (0xfeed, 2, Status::Ok));
}
