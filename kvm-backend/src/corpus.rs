//! The guest programs of `corpus/guests/`, compiled from source by build.rs and embedded in this crate.

include!(concat!(env!("OUT_DIR"), "/corpus_guests.rs"));

/// The ELF image of the corpus guest `name` (see [`guest_names`]).
pub fn guest_elf(name: &str) -> Option<&'static [u8]> {
    GUESTS.iter().find(|(guest, _)| *guest == name).map(|(_, image)| *image)
}

/// Names of the corpus guests, sorted: `cpu`, `dirty`, `kv`, `kvq`, `netrx`, `nettx`, `redis`, `timer`.
pub fn guest_names() -> impl Iterator<Item = &'static str> {
    GUESTS.iter().map(|(name, _)| *name)
}

/// Corpus guests that run until they are stopped and take no scripted load: `dirty` (re-protection's
/// write-heavy guest) and `redis` (a TCP service, reached over a TAP device). Record/replay of every guest and
/// `ftvm report` leave them out.
pub const RUN_UNTIL_STOPPED: &[&str] = &["dirty", "redis"];

/// The ELF image of the fault guest `name` from `corpus/faults/` (test material: guests that spin, fault or exit
/// with a status, see corpus/faults/README.md). Not a corpus guest: [`guest_names`] does not list them.
pub fn fault_guest_elf(name: &str) -> Option<&'static [u8]> {
    FAULT_GUESTS.iter().find(|(guest, _)| *guest == name).map(|(_, image)| *image)
}

/// Names of the fault guests, sorted.
pub fn fault_guest_names() -> impl Iterator<Item = &'static str> {
    FAULT_GUESTS.iter().map(|(name, _)| *name)
}

/// Iterations of the `cpu` guest's loop (`CPU_ITERATIONS` in corpus/guests/cpu/main.c).
pub const CPU_ITERATIONS: u64 = 1 << 28;
/// The `cpu` guest yields once per this many iterations (`CPU_YIELD_EVERY`).
pub const CPU_YIELD_EVERY: u64 = 1 << 21;

/// What the `cpu` guest computes for `iterations` iterations: it prints this for `CPU_ITERATIONS`.
pub fn cpu_result(iterations: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut accumulator: u64 = 0;
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        accumulator = accumulator.wrapping_add(x.wrapping_mul(i | 1));
        accumulator = accumulator.rotate_left(5);
    }
    accumulator
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_guest_is_built() {
        let names: Vec<&str> = super::guest_names().collect();
        assert_eq!(names, ["cpu", "dirty", "kv", "kvq", "netrx", "nettx", "redis", "timer"]);
        for name in names {
            let image = super::guest_elf(name).expect("built");
            assert_eq!(&image[..4], b"\x7fELF", "{name} is an ELF");
        }
        assert!(super::guest_elf("nope").is_none());
        let faults: Vec<&str> = super::fault_guest_names().collect();
        assert_eq!(faults, ["exit7", "mmio", "spin", "sse-at-cpl0", "triple-fault"]);
        for name in faults {
            assert_eq!(&super::fault_guest_elf(name).expect("built")[..4], b"\x7fELF", "{name} is an ELF");
            assert!(super::guest_elf(name).is_none(), "{name} is not a corpus guest");
        }
    }
}

#[cfg(test)]
mod abi_copies {
    /// The guests' copies of the ABI's numbers (the C header, the Rust SDK) must say what `ft::abi` says: a guest
    /// built against a stale copy would program the wrong port.
    #[test]
    fn the_guest_headers_and_the_sdk_agree_with_ft_abi() {
        let header = include_str!("../../corpus/guests/common/ftvm.h");
        let sdk = include_str!("../../corpus/guests/sdk/src/lib.rs");
        let expected: &[(&str, u64)] = &[
            ("CONSOLE_WRITE", ft::abi::CONSOLE_WRITE.into()),
            ("POWER_OFF", ft::abi::POWER_OFF.into()),
            ("YIELD", ft::abi::YIELD.into()),
            ("CLOCK_LO", ft::abi::CLOCK_LO.into()),
            ("CLOCK_HI", ft::abi::CLOCK_HI.into()),
            ("ENTROPY", ft::abi::ENTROPY.into()),
            ("TIMER_PERIOD_US", ft::abi::TIMER_PERIOD_US.into()),
            ("DISK_SUBMIT", ft::abi::DISK_SUBMIT.into()),
            ("DISK_COMPLETION", ft::abi::DISK_COMPLETION.into()),
            ("DISK_STATUS", ft::abi::DISK_STATUS.into()),
            ("DISK_SECTORS", ft::abi::DISK_SECTORS.into()),
            ("NET_TX", ft::abi::NET_TX.into()),
            ("NET_RX_POST", ft::abi::NET_RX_POST.into()),
            ("SECTOR_BYTES", ft::abi::SECTOR_BYTES as u64),
            ("NET_FRAME_BYTES_MAX", ft::abi::NET_FRAME_BYTES_MAX as u64),
            ("CONSOLE_WRITE_BYTES_MAX", ft::abi::CONSOLE_WRITE_BYTES_MAX as u64),
        ];
        let number = |text: &str| {
            let text = text.trim().trim_end_matches(';').trim_end_matches('u');
            match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => text.parse().ok(),
            }
        };
        for (name, value) in expected {
            let in_header =
                header.lines().find_map(|line| line.strip_prefix(&format!("#define {name} "))).and_then(number);
            assert_eq!(in_header, Some(*value), "ftvm.h's {name}");
            let in_sdk = sdk
                .lines()
                .find_map(|line| line.trim().strip_prefix(&format!("pub const {name}: ")))
                .and_then(|rest| rest.split_once('=').and_then(|(_, value)| number(value)));
            assert_eq!(in_sdk, Some(*value), "the SDK's {name}");
        }
    }
}
