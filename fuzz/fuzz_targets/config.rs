//! A node's TOML config from outside: parsing and every startup check (`NodeConfig::settings`) for both sides
//! must refuse bad input with an error, never a panic.
#![no_main]

use ft_host::config::{NodeConfig, Side};

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(config) = toml::from_str::<NodeConfig>(text) else { return };
    for side in [Side::Primary, Side::Backup] {
        let _ = config.settings(side);
    }
    let _ = config.key();
});
