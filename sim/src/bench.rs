//! Speed of the simulator and of the frame codec, measured in one run (printed, never asserted by a timer).

use crate::stopwatch::Stopwatch;

use ft::log::{Entry, Input};
use ft::wire::{self, Message, StreamDecoder};
use ft::Position;

pub fn report(scenarios: u64) {
    let started = Stopwatch::start();
    let mut simulated_ms = 0;
    for seed in 0..scenarios {
        let report = crate::scenario::run(seed);
        simulated_ms += report.plan.end_ms;
    }
    let wall_s = started.elapsed_s();
    let simulated_s = simulated_ms as f64 / 1000.0;
    crate::say!(
        "simulator: {scenarios} scenarios of {:.0} simulated s in {wall_s:.2} s on one core: {:.1} scenarios/core-s, {:.0}x real time",
        simulated_s / scenarios as f64,
        scenarios as f64 / wall_s,
        simulated_s / wall_s
    );
    codec();
}

fn codec() {
    let entry = Entry::Input {
        position: Position { exits: 123_456, instructions: 7_890_123 },
        pc: 0x4000,
        input: Input::NetReceive { frame: vec![0xab; 1_500] },
    };
    let messages_per_round = 4_096;
    let rounds = 64;
    let started = Stopwatch::start();
    let mut bytes_total = 0usize;
    for _ in 0..rounds {
        let mut stream = Vec::with_capacity(messages_per_round * 1_600);
        for index in 0..messages_per_round as u64 {
            stream.extend_from_slice(&wire::encode(&Message::Log { index: index + 1, entry: entry.clone() }, index));
        }
        bytes_total += stream.len();
        let mut decoder = StreamDecoder::new();
        decoder.feed(&stream);
        let mut decoded = 0;
        while let Ok(Some(_)) = decoder.next_message() {
            decoded += 1;
        }
        assert_eq!(decoded, messages_per_round, "the codec round-trips its own frames");
    }
    let seconds = started.elapsed_s();
    crate::say!(
        "codec: {} frames of {} bytes encoded+decoded: {:.2} GB/s",
        messages_per_round * rounds,
        bytes_total / (messages_per_round * rounds),
        bytes_total as f64 / seconds / 1e9
    );
}
