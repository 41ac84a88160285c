//! Any bytes as one frame (a heartbeat datagram, or a frame cut from a stream): never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = ft::wire::decode(bytes);
});
