//! The Timer and Cpu programs run to completion, and speed.

use ft::{Exit, Guest};

use super::super::{ModelGuest, Workload};
use super::harness::Platform;

fn run_to_power_off(workload: Workload) -> (Platform, ModelGuest) {
    let mut platform = Platform::new();
    let mut guest = ModelGuest::new(workload);
    platform.run_until(&mut guest, 100_000_000, |_| false);
    assert_eq!(platform.power_off, Some(0), "{workload} powers off with status 0");
    assert_eq!(guest.run(None).unwrap(), Exit::Shutdown, "a powered-off machine runs no further");
    (platform, guest)
}

#[test]
fn cpu_prints_its_result_and_powers_off() {
    let (platform, guest) = run_to_power_off(Workload::Cpu);
    assert!(platform.console.starts_with("cpu: 3512 primes below 32768, checksum="), "{}", platform.console);
    let instructions = guest.position().instructions;
    assert!((90_000..130_000).contains(&instructions), "{instructions}");
}

#[test]
fn timer_ticks_print_and_stop() {
    let (platform, mut guest) = run_to_power_off(Workload::Timer { ticks_max: Some(1000) });
    let lines: Vec<&str> = platform.console.lines().collect();
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert!(lines[0].starts_with("tick 100 digest="));
    assert!(lines[9].starts_with("tick 1000 digest="));
    let halts = platform.trace.iter().filter(|(exit, _)| *exit == Exit::Halt).count();
    let yields =
        platform.trace.iter().filter(|(exit, _)| matches!(exit, Exit::PortOut { port: ft::abi::YIELD, .. })).count();
    assert!(halts > 100 && yields > 1000, "{halts} halts, {yields} yields");

    let (again, mut guest_again) = run_to_power_off(Workload::Timer { ticks_max: Some(1000) });
    assert_eq!(platform.trace, again.trace);
    assert_eq!(guest.state_hash().unwrap(), guest_again.state_hash().unwrap());
}

#[test]
fn names_round_trip() {
    for name in ["kv", "timer", "timer:25", "cpu"] {
        let guest = ModelGuest::from_name(name).unwrap();
        assert_eq!(guest.workload().to_string(), name);
    }
    for name in Workload::NAMES {
        assert!(ModelGuest::from_name(name).is_some());
    }
    assert!(ModelGuest::from_name("timer:x").is_none());
    assert!(ModelGuest::from_name("nope").is_none());
}

/// `cargo test --release -p ft-sim -- --ignored --nocapture speed`: instructions per second of the Kv program
/// under the test platform (the platform's own cost included).
#[test]
#[ignore]
fn speed() {
    use ft::kv::{Op, Request};
    let mut platform = Platform::new();
    let mut guest = ModelGuest::new(Workload::Kv);
    platform.run_until(&mut guest, 10_000_000, |platform| platform.rx_posted.is_some());
    let start = std::time::Instant::now();
    let instructions_start = guest.position().instructions;
    let requests = 200_000u64;
    for request in 0..requests {
        let op = if request % 4 == 0 { Op::Put } else { Op::Get };
        let mut frame = vec![1, 2, 3, 4, 5, 6];
        frame.extend_from_slice(&Request { op, client: 1, request, key: request % 64, value: request }.encode());
        platform.frames_in.push_back(frame);
        platform
            .run_until(&mut guest, u64::MAX, |platform| platform.frames_in.is_empty() && platform.rx_posted.is_some());
    }
    let elapsed = start.elapsed();
    let instructions = guest.position().instructions - instructions_start;
    let exits = guest.position().exits;
    println!(
        "kv: {requests} requests, {instructions} instructions ({} per request), {exits} exits, {:?}: {:.1} M instructions/s, {:.0} k requests/s",
        instructions / requests,
        elapsed,
        instructions as f64 / elapsed.as_secs_f64() / 1e6,
        requests as f64 / elapsed.as_secs_f64() / 1e3,
    );

    let mut guest = ModelGuest::new(Workload::Timer { ticks_max: None });
    let start = std::time::Instant::now();
    let instructions = 100_000_000;
    loop {
        match guest.run(Some(instructions)).unwrap() {
            Exit::InstructionLimit => break,
            Exit::PortIn { .. } => guest.complete_port_in(7),
            Exit::Halt => guest.inject_interrupt(ft::abi::VECTOR_TIMER).unwrap(),
            _ => {}
        }
    }
    let elapsed = start.elapsed();
    println!("timer (bare machine): {:.1} M instructions/s", instructions as f64 / elapsed.as_secs_f64() / 1e6);
}
