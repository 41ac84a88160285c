//! The network device: one posted receive buffer, one transmit buffer, whole frames (Ethernet frames in the
//! host's Ethernet mode, `peer || payload` datagrams in its datagram mode; docs/guest-abi.md).

use alloc::boxed::Box;

use crate::abi::{self, NET_FRAME_BYTES_MAX};

/// A `Buffer`: a little-endian length, then the bytes.
#[repr(C, align(8))]
struct Buffer {
    length: u32,
    bytes: [u8; NET_FRAME_BYTES_MAX],
}

/// The length a posted receive buffer carries until the device fills it.
const EMPTY: u32 = u32::MAX;

pub struct Net {
    rx: Box<Buffer>,
    tx: Box<Buffer>,
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Net {
    /// The device, with a receive buffer posted.
    pub fn new() -> Net {
        let mut rx = Box::new(Buffer { length: EMPTY, bytes: [0; NET_FRAME_BYTES_MAX] });
        post(&mut rx);
        Net { rx, tx: Box::new(Buffer { length: 0, bytes: [0; NET_FRAME_BYTES_MAX] }) }
    }

    /// Whether a frame has arrived in the posted buffer.
    pub fn has_frame(&self) -> bool {
        has_frame(&self.rx)
    }

    /// Hands the received frame to `consume`, then posts the buffer again for the next one.
    pub fn receive<R>(&mut self, consume: impl FnOnce(&[u8]) -> R) -> Option<R> {
        receive(&mut self.rx, consume)
    }

    /// Sends one frame (at most 2048 bytes; longer is cut). One exit; the host holds it under the Output Rule.
    pub fn transmit(&mut self, frame: &[u8]) {
        transmit_with(&mut self.tx, frame.len(), |buffer| buffer.copy_from_slice(&frame[..buffer.len()]));
    }

    /// Sends a frame of `length` bytes that `fill` writes in place.
    pub fn transmit_with<R>(&mut self, length: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        transmit_with(&mut self.tx, length, fill)
    }
}

impl Drop for Net {
    /// The receive buffer stays posted to the device, which may still fill it: it is never freed.
    fn drop(&mut self) {
        let rx = core::mem::replace(&mut self.rx, Box::new(Buffer { length: EMPTY, bytes: [0; NET_FRAME_BYTES_MAX] }));
        Box::leak(rx);
    }
}

fn post(rx: &mut Buffer) {
    rx.length = EMPTY;
    crate::outl(abi::NET_RX_POST, crate::gpa_of(rx as *const Buffer));
}

fn has_frame(rx: &Buffer) -> bool {
    // SAFETY: the field is a valid, aligned u32; the device writes it while the guest is stopped at an exit, so
    // a volatile read sees the device's value (the compiler must not keep an older one across exits).
    unsafe { core::ptr::read_volatile(&rx.length) != EMPTY }
}

fn receive<R>(rx: &mut Buffer, consume: impl FnOnce(&[u8]) -> R) -> Option<R> {
    if !has_frame(rx) {
        return None;
    }
    let length = (rx.length as usize).min(NET_FRAME_BYTES_MAX);
    let result = consume(&rx.bytes[..length]);
    post(rx);
    Some(result)
}

fn transmit_with<R>(tx: &mut Buffer, length: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
    let length = length.min(NET_FRAME_BYTES_MAX);
    let result = fill(&mut tx.bytes[..length]);
    tx.length = length as u32;
    crate::outl(abi::NET_TX, crate::gpa_of(tx as *const Buffer));
    result
}

#[cfg(feature = "smoltcp")]
mod phy {
    use smoltcp::phy::{self, DeviceCapabilities, Medium};
    use smoltcp::time::Instant;

    use super::{receive, transmit_with, Buffer, Net};

    /// Largest Ethernet frame without the FCS (1500 bytes of payload).
    const ETHERNET_FRAME_BYTES: usize = 1514;

    pub struct RxToken<'a>(&'a mut Buffer);
    pub struct TxToken<'a>(&'a mut Buffer);

    impl phy::Device for Net {
        type RxToken<'a> = RxToken<'a>;
        type TxToken<'a> = TxToken<'a>;

        fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            if !self.has_frame() {
                return None;
            }
            Some((RxToken(&mut self.rx), TxToken(&mut self.tx)))
        }

        fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
            Some(TxToken(&mut self.tx))
        }

        fn capabilities(&self) -> DeviceCapabilities {
            let mut capabilities = DeviceCapabilities::default();
            capabilities.medium = Medium::Ethernet;
            capabilities.max_transmission_unit = ETHERNET_FRAME_BYTES;
            capabilities
        }
    }

    impl phy::RxToken for RxToken<'_> {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            match receive(self.0, f) {
                Some(result) => result,
                // `Device::receive` hands out a token only for a frame that is there.
                None => unreachable!("a receive token without a frame"),
            }
        }
    }

    impl phy::TxToken for TxToken<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, length: usize, f: F) -> R {
            transmit_with(self.0, length, f)
        }
    }
}
