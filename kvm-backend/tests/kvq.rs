//! The pipelined kv guest (`kvq`): many requests taken before any is answered, answers in completion order,
//! reads of a key see the puts submitted before them, and a restart recovers from the disk.

mod common;

use ft::kv::{Op, Request, Response, Status, PEER_BYTES};
use kvm_backend::testkit::{Bench, Stop};

const PEER: [u8; PEER_BYTES] = [10, 0, 0, 7, 0x1f, 0x90];

fn frame(request: &Request) -> Vec<u8> {
    let mut frame = PEER.to_vec();
    frame.extend_from_slice(&request.encode());
    frame
}

fn request(op: Op, request: u64, key: u64, value: u64) -> Request {
    Request { op, client: 3, request, key, value }
}

fn answers_of(bench: &Bench) -> Vec<Response> {
    let mut answers: Vec<Response> = bench
        .devices
        .transmitted
        .iter()
        .map(|frame| {
            assert_eq!(&frame[..PEER_BYTES], &PEER, "answered to the asking peer");
            Response::decode(&frame[PEER_BYTES..]).expect("decodes")
        })
        .collect();
    answers.sort_by_key(|answer| answer.request);
    answers
}

fn run_until_idle(bench: &mut Bench) {
    assert_eq!(bench.run(20_000).expect("runs"), Stop::Idle, "console: {}", bench.console_text());
}

#[test]
fn pipelined_requests_are_answered_and_reads_see_earlier_puts() {
    let Some(mut bench) = common::bench("kvq") else { return };
    run_until_idle(&mut bench);
    assert!(bench.console_text().contains("kvq: ready, 0 keys recovered, 8 slots"), "{}", bench.console_text());
    let requests = [
        request(Op::Put, 1, 3, 30),
        request(Op::Put, 2, 3, 31),
        request(Op::Get, 3, 3, 0),
        request(Op::Put, 4, 4, 40),
        request(Op::Put, 5, 3, 32),
        request(Op::Get, 6, 4, 0),
        request(Op::Get, 7, 3, 0),
        request(Op::Get, 8, 64, 0),
    ];
    for request in &requests {
        bench.devices.incoming.push_back(frame(request));
    }
    bench.devices.incoming.push_back(b"garbage".to_vec());
    run_until_idle(&mut bench);
    let answers = answers_of(&bench);
    assert_eq!(answers.len(), 8, "{answers:?}");
    let status_value = |id: u64| answers.iter().find(|a| a.request == id).map(|a| (a.status, a.value));
    assert_eq!(status_value(3), Some((Status::Ok, 31)), "the get reads the put submitted just before it");
    assert_eq!(status_value(6), Some((Status::Ok, 40)));
    assert_eq!(status_value(7), Some((Status::Ok, 32)));
    assert_eq!(status_value(8).map(|(status, _)| status), Some(Status::BadRequest));
    // Restarted on the same disk, the guest recovers keys 3 and 4 (the fourth put rewrote their block).
    let disk = bench.devices.disk.clone();
    let Some(mut restarted) = common::bench("kvq") else { return };
    restarted.devices.disk = disk;
    run_until_idle(&mut restarted);
    assert!(restarted.console_text().contains("kvq: ready, 2 keys recovered"), "{}", restarted.console_text());
    restarted.devices.incoming.push_back(frame(&request(Op::Get, 9, 3, 0)));
    run_until_idle(&mut restarted);
    let answer = &answers_of(&restarted)[0];
    assert_eq!((answer.status, answer.value, answer.version), (Status::Ok, 32, 4));
}
