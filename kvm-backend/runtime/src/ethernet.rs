//! The network device's Ethernet mode: the guest's frames go to and come from a TAP device on the host, whole
//! (docs/guest-abi.md). Frames read from the TAP are inputs (the core logs them and delivers them at an exit);
//! frames the guest sends are outputs, written to the TAP once the Output Rule releases them.
//!
//! Only the live primary's TAP is on the bridge: a backup opens its TAP at start (so a missing /dev/net/tun or
//! capability fails the node at once) and attaches it at go-live, then announces the guest's MAC and IP with a
//! gratuitous ARP that it writes into the TAP itself, so that the switch learns the guest's new port at once.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::c_char;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::error::CliError;

/// The `[ethernet]` table of a node's config.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EthernetConfig {
    /// The TAP device (created if missing; default `ftvm0`).
    pub tap: Option<String>,
    /// The bridge the TAP joins while this node is live. Without it the operator connects the TAP.
    pub bridge: Option<String>,
    /// The guest's MAC and IPv4 address, announced at go-live (default: the `redis` guest's).
    pub guest_mac: Option<String>,
    pub guest_ip: Option<Ipv4Addr>,
}

/// The `redis` guest's network identity (corpus/guests/redis/src/lib.rs).
pub const GUEST_MAC_DEFAULT: [u8; 6] = [0x02, 0x66, 0x74, 0x76, 0x6d, 0x01];
pub const GUEST_IP_DEFAULT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const TAP_DEFAULT: &str = "ftvm0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EthernetSettings {
    pub tap: String,
    pub bridge: Option<String>,
    pub guest_mac: [u8; 6],
    pub guest_ip: Ipv4Addr,
}

fn bad(key: &str, value: impl std::fmt::Display, reason: &str) -> CliError {
    CliError::Usage(format!("config: `ethernet.{key}` = {value}: {reason}"))
}

/// An interface name as Linux takes it: 1 to 15 bytes, no '/', ':' or whitespace.
fn check_interface(key: &str, name: &str) -> Result<(), CliError> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(bad(key, format!("{name:?}"), "an interface name is 1 to 15 characters without '/', ':' or spaces"))
    }
}

/// `02:66:74:76:6d:01`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}

impl EthernetConfig {
    pub fn settings(&self) -> Result<EthernetSettings, CliError> {
        let tap = self.tap.clone().unwrap_or_else(|| TAP_DEFAULT.to_string());
        check_interface("tap", &tap)?;
        if let Some(bridge) = &self.bridge {
            check_interface("bridge", bridge)?;
            if *bridge == tap {
                return Err(bad("bridge", bridge, "the same interface as `tap`"));
            }
        }
        let guest_mac = match &self.guest_mac {
            None => GUEST_MAC_DEFAULT,
            Some(text) => {
                let mac =
                    parse_mac(text).ok_or_else(|| bad("guest_mac", text, "not a MAC address (02:66:74:76:6d:01)"))?;
                if mac[0] & 1 == 1 || mac == [0; 6] {
                    return Err(bad("guest_mac", text, "a multicast or zero address cannot be a guest's"));
                }
                mac
            }
        };
        let guest_ip = self.guest_ip.unwrap_or(GUEST_IP_DEFAULT);
        if guest_ip.is_unspecified() || guest_ip.is_broadcast() || guest_ip.is_multicast() {
            return Err(bad("guest_ip", guest_ip, "not an address of one host"));
        }
        Ok(EthernetSettings { tap, bridge: self.bridge.clone(), guest_mac, guest_ip })
    }
}

/// A gratuitous ARP: a broadcast request for the guest's own IP from the guest's MAC. Switches learn the MAC's
/// new port from it; hosts refresh their ARP caches.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    frame[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&ip.octets());
    frame[32..38].copy_from_slice(&[0; 6]);
    frame[38..42].copy_from_slice(&ip.octets());
    frame
}

/// `SIOCBRADDIF` (linux/sockios.h): add an interface to a bridge.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

fn interface_request(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name and a union of integers and addresses); all zeros is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *slot = byte as c_char;
    }
    request
}

/// A datagram socket for the interface ioctls.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, argument: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request used here reads and writes one `ifreq`, which `argument` is, for the call only.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, argument as *mut libc::ifreq) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The TAP device of a node.
pub struct TapPort {
    fd: AsyncFd<OwnedFd>,
    settings: EthernetSettings,
}

impl TapPort {
    /// Opens (creating if missing) the TAP, without packet information, non-blocking, and brings it up. Needs
    /// CAP_NET_ADMIN and /dev/net/tun. Must run inside a tokio runtime.
    pub fn open(settings: &EthernetSettings) -> Result<TapPort, CliError> {
        let what = format!("TAP device {} (`ethernet.tap`)", settings.tap);
        let fail = |error: io::Error| CliError::io(what.clone(), &error);
        let path = c"/dev/net/tun";
        // SAFETY: open(2) of a constant NUL-terminated path; the descriptor is checked and then owned.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            let error = io::Error::last_os_error();
            return Err(CliError::io(format!("/dev/net/tun (for {what})"), &error));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut request = interface_request(&settings.tap);
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        ioctl(&fd, libc::TUNSETIFF as libc::c_ulong, &mut request).map_err(fail)?;
        let control = control_socket().map_err(fail)?;
        // The highest unicast MAC, as libvirt gives its TAPs: a Linux bridge without an address of its own takes
        // its lowest port's, so a TAP with a random MAC could change the bridge's (and the host's own address's)
        // MAC when it joins at go-live.
        let mut hardware = interface_request(&settings.tap);
        // SAFETY: a zeroed sockaddr is valid (interface_request zeroes the whole union); it is filled here.
        let mut address: libc::sockaddr = unsafe { std::mem::zeroed() };
        address.sa_family = libc::ARPHRD_ETHER;
        for (slot, byte) in address.sa_data.iter_mut().zip([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]) {
            *slot = byte as c_char;
        }
        hardware.ifr_ifru.ifru_hwaddr = address;
        ioctl(&control, libc::SIOCSIFHWADDR, &mut hardware).map_err(fail)?;
        // The namespace's own IPv6 traffic (router solicitations) would only be noise for the guest.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", settings.tap), "1");
        let mut flags = interface_request(&settings.tap);
        ioctl(&control, libc::SIOCGIFFLAGS, &mut flags).map_err(fail)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let current = unsafe { flags.ifr_ifru.ifru_flags };
        flags.ifr_ifru.ifru_flags = current | libc::IFF_UP as libc::c_short;
        ioctl(&control, libc::SIOCSIFFLAGS, &mut flags).map_err(fail)?;
        // SAFETY: an OwnedFd returns the same open descriptor from as_raw_fd for as long as it lives, and the
        // AsyncFd owns it from here until it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|error| fail(error.into()))?;
        Ok(TapPort { fd, settings: settings.clone() })
    }

    pub fn settings(&self) -> &EthernetSettings {
        &self.settings
    }

    /// Writes one frame; a full TAP queue drops it, as a congested link would.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: write(2) from a live slice into a descriptor this port owns.
        let _ = unsafe { libc::write(self.fd.get_ref().as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    }

    /// The next frame from the TAP.
    pub async fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            let result = ready.try_io(|fd| {
                // SAFETY: read(2) into a live, writable slice from a descriptor this port owns.
                let length = unsafe { libc::read(fd.get_ref().as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
                if length < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    // A frame longer than the buffer is cut, and TUN reports its whole length.
                    Ok((length as usize).min(buffer.len()))
                }
            });
            match result {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// At go-live (and when a primary starts): joins the bridge and announces the guest.
    pub fn go_live(&self) -> io::Result<()> {
        if let Some(bridge) = &self.settings.bridge {
            let control = control_socket()?;
            let mut index = interface_request(&self.settings.tap);
            ioctl(&control, libc::SIOCGIFINDEX, &mut index)?;
            let mut add = interface_request(bridge);
            // SAFETY: SIOCGIFINDEX filled the index member of the union.
            add.ifr_ifru.ifru_ifindex = unsafe { index.ifr_ifru.ifru_ifindex };
            match ioctl(&control, SIOCBRADDIF, &mut add) {
                // Already on the bridge (a primary that starts where an operator attached the TAP).
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {}
                other => other?,
            }
        }
        let announcement = gratuitous_arp(self.settings.guest_mac, self.settings.guest_ip);
        // Twice, in case the first is lost while the bridge port comes up.
        self.send(&announcement);
        self.send(&announcement);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_announces_the_guest_from_its_own_mac() {
        let frame = gratuitous_arp(GUEST_MAC_DEFAULT, GUEST_IP_DEFAULT);
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &GUEST_MAC_DEFAULT);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[22..28], &GUEST_MAC_DEFAULT);
        assert_eq!(&frame[28..32], &[10, 77, 0, 2]);
        assert_eq!(&frame[38..42], &[10, 77, 0, 2], "sender and target IP are the guest's");
    }

    #[test]
    fn bad_ethernet_settings_are_refused_by_name() {
        let refused = |config: EthernetConfig, key: &str| {
            let error = config.settings().expect_err("refused").to_string();
            assert!(error.contains(&format!("ethernet.{key}")), "{error}");
        };
        refused(EthernetConfig { tap: Some("a/b".into()), ..Default::default() }, "tap");
        refused(EthernetConfig { tap: Some("x".repeat(16)), ..Default::default() }, "tap");
        refused(EthernetConfig { bridge: Some("ftvm0".into()), ..Default::default() }, "bridge");
        refused(EthernetConfig { guest_mac: Some("02:00:00:00:00".into()), ..Default::default() }, "guest_mac");
        refused(EthernetConfig { guest_mac: Some("01:00:5e:00:00:01".into()), ..Default::default() }, "guest_mac");
        refused(EthernetConfig { guest_ip: Some(Ipv4Addr::BROADCAST), ..Default::default() }, "guest_ip");
        let settings = EthernetConfig::default().settings().expect("defaults");
        assert_eq!((settings.tap.as_str(), settings.guest_mac), (TAP_DEFAULT, GUEST_MAC_DEFAULT));
        assert_eq!(format_mac(settings.guest_mac), "02:66:74:76:6d:01");
    }
}

#[cfg(test)]
mod identity {
    /// The defaults the gratuitous ARP announces are the `redis` guest's compiled-in identity.
    #[test]
    fn the_defaults_are_the_redis_guests_address() {
        let guest = include_str!("../../../corpus/guests/redis/src/lib.rs");
        let mac: Vec<String> = super::GUEST_MAC_DEFAULT.iter().map(|byte| format!("0x{byte:02x}")).collect();
        assert!(guest.contains(&format!("pub const MAC: [u8; 6] = [{}];", mac.join(", "))), "MAC");
        let ip = super::GUEST_IP_DEFAULT.octets();
        assert!(guest.contains(&format!("pub const IPV4: [u8; 4] = [{}, {}, {}, {}];", ip[0], ip[1], ip[2], ip[3])));
    }
}
