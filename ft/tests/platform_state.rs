//! The device state a clone's cut carries (`Platform::encode`, version 3, checksummed): a busy platform (disk requests in
//! flight, a timer, a console line half written, a receive buffer posted) saves and restores to the same devices
//! and the same hash, and a damaged state is refused, never half taken.

mod common;

use common::Script;
use ft::abi;
use ft::platform::Platform;
use ft::Exit;

/// A platform after a few exits of a guest: two disk requests (a write and an overlapping read), a 1 ms timer, a
/// console byte, and a receive buffer.
fn busy() -> Platform {
    let mut script = Script::new([]);
    let mut platform = Platform::new(64);
    let write = script.disk_request(0x2000, abi::DISK_OP_WRITE, 7, 3, 0x3000);
    let read = script.disk_request(0x2100, abi::DISK_OP_READ, 8, 3, 0x4000);
    let exits = [
        write,
        read,
        Exit::PortOut { port: abi::TIMER_PERIOD_US, size: 4, value: 1_000 },
        Exit::PortOut { port: abi::SERIAL_BASE, size: 1, value: u32::from(b'h') },
        Exit::PortOut { port: abi::NET_RX_POST, size: 4, value: 0x5000 },
    ];
    for exit in exits {
        platform.handle_exit(exit, &mut script).expect("the platform takes the exit");
    }
    assert_eq!(platform.disk_in_flight().len(), 2, "both requests in flight");
    assert_eq!(platform.timer_period_us(), 1_000);
    platform
}

#[test]
fn a_busy_platform_saves_and_restores_to_the_same_devices() {
    let platform = busy();
    let saved = platform.encode();
    let restored = Platform::decode(&saved).expect("its own state decodes");
    assert_eq!(restored, platform);
    assert_eq!(restored.state_hash(), platform.state_hash());
    assert_eq!(restored.encode(), saved, "one encoding per state");
    assert_ne!(Platform::new(64).state_hash(), platform.state_hash(), "the hash sees the devices");
}

#[test]
fn a_damaged_device_state_is_refused() {
    let saved = busy().encode();
    for cut in [0, 1, saved.len() / 2, saved.len() - 1] {
        assert!(Platform::decode(&saved[..cut]).is_err(), "cut to {cut} bytes");
    }
    let mut version = saved.clone();
    version[0] ^= 0xff;
    assert!(Platform::decode(&version).is_err(), "another version or magic");
    let mut flipped = saved.clone();
    flipped[saved.len() / 2] ^= 1;
    assert!(Platform::decode(&flipped).unwrap_err().contains("checksum"), "a bit flipped in the middle");
    let mut longer = saved;
    longer.push(0);
    assert!(Platform::decode(&longer).is_err(), "trailing bytes");
}
