//! The network benchmark's datagrams from outside (`ftvm bench`'s clients read what reaches their UDP socket):
//! any payload is an ack of netrx, a frame of nettx, or refused, never a panic; and what decodes as a nettx data
//! frame has the pattern its burst and offsets give.
#![no_main]

use ft_host::stream::{NetRxAck, NetTxFrame};

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let _ = NetRxAck::decode(input);
    if let Some(NetTxFrame::Data { burst, bytes, .. }) = NetTxFrame::decode(input) {
        assert_eq!(bytes, input.len());
        for (at, byte) in input.iter().enumerate().skip(16) {
            assert_eq!(*byte, (at as u32).wrapping_mul(7).wrapping_add(burst) as u8);
        }
    }
});
