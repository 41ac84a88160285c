//! Each corpus guest boots, prints what it should and powers off (or idles), and bad inputs are errors.

mod common;

use std::time::Instant;

use ft::Guest;
use kvm_backend::testkit::Stop;
use kvm_backend::{corpus, read_image, KvmConfig, KvmError, KvmGuest};

#[test]
fn cpu_guest_computes_its_result_and_powers_off() {
    let Some(mut bench) = common::bench("cpu") else { return };
    let start = Instant::now();
    let stop = bench.run(10_000).expect("runs");
    let elapsed = start.elapsed();
    assert_eq!(stop, Stop::PowerOff(0), "console: {}", bench.console_text());
    // The guest also says how many of its timer's ticks it saw: that depends on how fast this host ran it.
    let expected = format!(
        "cpu: start\ncpu: iterations={} result={:#018x} ticks-seen=",
        corpus::CPU_ITERATIONS,
        corpus::cpu_result(corpus::CPU_ITERATIONS)
    );
    let console = bench.console_text();
    assert!(console.starts_with(&expected) && console.ends_with('\n'), "{console:?}");
    let yields =
        bench.trace.iter().filter(|entry| matches!(entry.exit, ft::Exit::PortOut { port: ft::abi::YIELD, .. }));
    assert_eq!(yields.count() as u64, corpus::CPU_ITERATIONS / corpus::CPU_YIELD_EVERY);
    eprintln!("cpu guest: {} exits in {elapsed:?}", bench.guest.position().exits);
}

#[test]
fn timer_guest_takes_its_ticks_and_powers_off() {
    let Some(mut bench) = common::bench("timer") else { return };
    let start = Instant::now();
    let stop = bench.run(100_000).expect("runs");
    let elapsed = start.elapsed();
    assert_eq!(stop, Stop::PowerOff(0), "console: {}", bench.console_text());
    let console = bench.console_text();
    assert!(console.starts_with("timer: start\n"), "{console}");
    assert!(console.contains("timer: ticks=200 "), "{console}");
    assert!(console.contains("timer: done ticks=2000 digest=0x"), "{console}");
    assert_eq!(bench.devices.timer_ticks, 2000);
    let exits = bench.guest.position().exits;
    eprintln!(
        "timer guest: {exits} exits in {elapsed:?} ({:.0} exits/s, including the bench)",
        exits as f64 / elapsed.as_secs_f64()
    );
}

#[test]
fn kv_guest_recovers_an_empty_disk_and_waits() {
    let Some(mut bench) = common::bench("kv") else { return };
    assert_eq!(bench.run(1_000).expect("runs"), Stop::Idle);
    assert_eq!(bench.console_text(), "kv: start\nkv: recovered keys=0 version=0\n");
}

#[test]
fn unusable_kvm_device_is_an_error_not_a_panic() {
    let image = corpus::guest_elf("cpu").expect("built");
    let config = KvmConfig { kvm_path: "/nonexistent/kvm".into(), ..KvmConfig::default() };
    let error = KvmGuest::new(&config, image).err().expect("must fail");
    assert!(matches!(error, KvmError::Open { .. }), "{error}");
    assert!(error.to_string().contains("/nonexistent/kvm"), "{error}");
    let config = KvmConfig { kvm_path: "/dev/null".into(), ..KvmConfig::default() };
    assert!(KvmGuest::new(&config, image).is_err());
    let config = KvmConfig { kvm_path: "/dev/kvm\0x".into(), ..KvmConfig::default() };
    assert!(matches!(KvmGuest::new(&config, image), Err(KvmError::BadPath(_))));
}

#[test]
fn bad_images_and_sizes_are_errors() {
    let error = read_image("/nonexistent/guest.elf".as_ref()).expect_err("must fail");
    assert!(matches!(error, KvmError::ReadImage { .. }), "{error}");
    if common::guest("cpu").is_none() {
        return;
    }
    let config = KvmConfig::default();
    for image in [&b""[..], b"\x7fELF", &[0xffu8; 4096][..]] {
        let error = KvmGuest::new(&config, image).err().expect("must fail");
        assert!(matches!(error, KvmError::Elf(_)), "{error}");
    }
    let mut truncated = corpus::guest_elf("cpu").expect("built").to_vec();
    truncated.truncate(200);
    assert!(matches!(KvmGuest::new(&config, &truncated), Err(KvmError::Elf(_))));
    for memory_bytes in [0, 4096, 3 << 20, 2 << 30] {
        let config = KvmConfig { memory_bytes, ..KvmConfig::default() };
        let image = corpus::guest_elf("cpu").expect("built");
        assert!(matches!(KvmGuest::new(&config, image), Err(KvmError::MemorySize(_))));
    }
}

#[test]
fn guest_contract_basics() {
    let Some(mut guest) = common::guest("cpu") else { return };
    assert!(!guest.counts_instructions());
    assert_eq!(guest.run(Some(10)), Err(ft::GuestError::InstructionCountUnsupported));
    assert_eq!(guest.position(), ft::Position::ZERO);
    let size = guest.memory_bytes();
    let mut buffer = [0u8; 8];
    assert!(guest.read_memory(size - 8, &mut buffer).is_ok());
    assert!(matches!(guest.read_memory(size - 4, &mut buffer), Err(ft::GuestError::MemoryOutOfRange { .. })));
    assert!(guest.read_memory(u64::MAX - 2, &mut buffer).is_err());
    assert!(guest.write_memory(size, &[1]).is_err());
    // Completing a read that was never asked for is reported by the next run, not a panic.
    guest.complete_port_in(5);
    assert!(guest.run(None).is_err());
    assert!(matches!(guest.run(None), Ok(ft::Exit::PortOut { port: ft::abi::CONSOLE_WRITE, .. })));
    assert_eq!(guest.position().exits, 1);
}
