//! Property tests of the primary/backup state machines, driven directly in a virtual-time `Pair` (no turmoil):
//! random client traffic, latency, buffer bounds, slice sizes and a crash of either side at any step. The
//! backup must never diverge, no output may leave before its entry reached the backup, every copy of an output
//! must be identical, and after a crash the survivor must go live and keep answering.

use ft::kv::{Op, Request, Response};
use ft::Config;
use ft_sim::model::{ModelGuest, Workload};
use ft_sim::pair::Pair;
use proptest::prelude::*;

const STEPS: u64 = 900;
/// Steps after the last request so that queued requests drain even with a tiny unacked-log bound.
const DRAIN_STEPS: u64 = 4_000;

fn frame(request: &Request) -> Vec<u8> {
    let mut frame = vec![10, 0, 0, 9, 0x1f, 0x40];
    frame.extend_from_slice(&request.encode());
    frame
}

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    latency_ms: u64,
    unacked_max: usize,
    slice_instructions: u64,
    requests: Vec<(u64, bool, u64)>,
    crash: Option<(usize, u64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        0u64..5,
        prop_oneof![Just(4usize), Just(16), Just(4096)],
        200u64..3_000,
        proptest::collection::vec((0u64..600, any::<bool>(), 0u64..8), 1..60),
        proptest::option::of((0usize..2, 20u64..700)),
    )
        .prop_map(|(seed, latency_ms, unacked_max, slice_instructions, mut requests, crash)| {
            requests.sort_by_key(|(at, _, _)| *at);
            Case { seed, latency_ms, unacked_max, slice_instructions, requests, crash }
        })
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    let config = Config {
        log_entries_unacked_max: case.unacked_max,
        slice_instructions: case.slice_instructions,
        failure_timeout_ms: 100,
        heartbeat_interval_ms: 10,
        checkpoint_interval_exits: 16,
        ..Config::default()
    };
    let guest = || ModelGuest::new(Workload::Kv);
    let mut pair = Pair::new(config, guest(), guest(), case.latency_ms * 1_000_000, case.seed);
    let mut next = 0;
    let mut live = 0usize;
    for step in 0..STEPS + DRAIN_STEPS {
        if case.crash.is_some_and(|(_, at)| at == step) {
            let (node, _) = case.crash.expect("checked");
            pair.crash(node);
        }
        if pair.events.iter().any(|(node, event)| *node == 1 && matches!(event, ft::Event::WentLive { .. })) {
            live = 1;
        }
        while case.requests.get(next).is_some_and(|(at, _, _)| *at <= step) {
            let (_, put, key) = case.requests[next];
            let op = if put { Op::Put } else { Op::Get };
            let request = Request { op, client: 1, request: next as u64, key, value: 1 + next as u64 };
            pair.deliver_frame(live, frame(&request));
            next += 1;
        }
        pair.step();
    }
    prop_assert!(pair.violations.is_empty(), "{:?}", pair.violations);
    let outside = pair.outside_view().map_err(TestCaseError::fail)?;
    for (kind, bytes) in outside.values() {
        if *kind == ft::log::OutputKind::NetTransmit {
            prop_assert!(Response::decode(&bytes[ft::kv::PEER_BYTES..]).is_ok(), "a response that does not decode");
        }
    }
    let went_live =
        |node: usize| pair.events.iter().any(|(n, e)| *n == node && matches!(e, ft::Event::WentLive { .. }));
    match case.crash {
        Some((0, at)) if at + 300 < STEPS => prop_assert!(went_live(1), "backup did not take over"),
        Some((1, at)) if at + 300 < STEPS => prop_assert!(went_live(0), "primary did not go on unprotected"),
        _ => {}
    }
    if case.crash.is_none() {
        let checkpoints =
            pair.events.iter().filter(|(n, e)| *n == 1 && matches!(e, ft::Event::Checkpoint { .. })).count();
        prop_assert!(checkpoints > 0, "the backup verified no checkpoint");
    }
    // Requests sent after the survivor settled must all be answered by it.
    let settled_at = case.crash.map_or(0, |(_, at)| at + 300);
    let late: Vec<u64> = case
        .requests
        .iter()
        .enumerate()
        .filter(|(_, (at, _, _))| *at > settled_at.max(5))
        .map(|(index, _)| index as u64)
        .collect();
    let answered: Vec<u64> = outside
        .values()
        .filter(|(kind, _)| *kind == ft::log::OutputKind::NetTransmit)
        .filter_map(|(_, bytes)| Response::decode(&bytes[ft::kv::PEER_BYTES..]).ok())
        .map(|response| response.request)
        .collect();
    for request in late {
        prop_assert!(answered.contains(&request), "request {} was never answered", request);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn pair_keeps_the_invariants(case in case()) {
        run(&case)?;
    }
}
