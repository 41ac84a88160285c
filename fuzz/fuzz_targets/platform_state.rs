//! The device state of a snapshot (`Platform::decode`): never a panic, and what decodes re-encodes to a state
//! that decodes to the same devices.
#![no_main]

use ft::platform::Platform;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok(platform) = Platform::decode(bytes) {
        let again = Platform::decode(&platform.encode()).expect("an encoded state decodes");
        assert_eq!(again, platform);
    }
});
