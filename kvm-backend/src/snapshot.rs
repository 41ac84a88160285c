//! The snapshot format: a checksummed, versioned container of length-prefixed sections, and the vCPU state it
//! carries.
//!
//! Layout: magic `FTVMKVM\0`, version `u32`, reserved `u32`, payload length `u64`, xxh3-64 of the payload
//! `u64`, then the payload. The payload is a sequence of sections, each a little-endian `u64` length and that
//! many bytes, in the fixed order written by `KvmGuest::snapshot`. Nothing is trusted before the checksum and
//! lengths are checked, and no allocation is sized from the input.

use ft::GuestError;
use kvm_bindings::{kvm_debugregs, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs};
use kvm_ioctls::VcpuFd;
use xxhash_rust::xxh3::xxh3_64;
use zerocopy::{FromBytes, IntoBytes};

use crate::error::KvmError;

pub(crate) const MAGIC: [u8; 8] = *b"FTVMKVM\0";
/// Version 2 carries the pc of the last exit (version 1 restored it from RIP, which is past an answered IN).
pub(crate) const VERSION: u32 = 2;
const HEADER_BYTES: usize = 32;

fn bad(message: impl Into<String>) -> GuestError {
    GuestError::BadSnapshot(message.into())
}

/// Prefixes `payload` with the header.
pub(crate) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the header and checksum; returns the payload.
pub(crate) fn open(bytes: &[u8]) -> Result<&[u8], GuestError> {
    let (header, payload) = bytes.split_at_checked(HEADER_BYTES).ok_or_else(|| bad("shorter than its header"))?;
    if header[0..8] != MAGIC {
        return Err(bad("not a KVM guest snapshot (bad magic)"));
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or([0; 4]));
    if version != VERSION {
        return Err(bad(format!("version {version}, this build reads version {VERSION}")));
    }
    if header[12..16] != [0; 4] {
        return Err(bad("reserved header bytes are not zero"));
    }
    if word(16) != payload.len() as u64 {
        return Err(bad(format!("payload is {} bytes, header says {}", payload.len(), word(16))));
    }
    if word(24) != xxh3_64(payload) {
        return Err(bad("checksum mismatch"));
    }
    Ok(payload)
}

/// Appends sections.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) payload: Vec<u8>,
}

impl Writer {
    pub(crate) fn section(&mut self, bytes: &[u8]) {
        self.payload.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.payload.extend_from_slice(bytes);
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.section(&value.to_le_bytes());
    }
}

/// Reads sections back, checking every length.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(payload: &'a [u8]) -> Reader<'a> {
        Reader { rest: payload }
    }

    pub(crate) fn section(&mut self, name: &str) -> Result<&'a [u8], GuestError> {
        let (length, rest) = self.rest.split_at_checked(8).ok_or_else(|| bad(format!("{name}: truncated")))?;
        let length = u64::from_le_bytes(length.try_into().unwrap_or([0; 8]));
        let length = usize::try_from(length).map_err(|_| bad(format!("{name}: bad length")))?;
        let (section, rest) = rest.split_at_checked(length).ok_or_else(|| bad(format!("{name}: truncated")))?;
        self.rest = rest;
        Ok(section)
    }

    pub(crate) fn u64(&mut self, name: &str) -> Result<u64, GuestError> {
        let section = self.section(name)?;
        let bytes: [u8; 8] = section.try_into().map_err(|_| bad(format!("{name}: not 8 bytes")))?;
        Ok(u64::from_le_bytes(bytes))
    }

    pub(crate) fn value<T: FromBytes>(&mut self, name: &str) -> Result<T, GuestError> {
        let section = self.section(name)?;
        T::read_from_bytes(section).map_err(|_| bad(format!("{name}: wrong size {}", section.len())))
    }

    pub(crate) fn finish(self) -> Result<(), GuestError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} bytes after the last section", self.rest.len())))
        }
    }
}

/// Everything KVM holds for the vCPU (no LAPIC: the backend has no in-kernel interrupt controller).
pub(crate) struct VcpuState {
    pub(crate) regs: kvm_regs,
    pub(crate) sregs: kvm_sregs,
    xsave: Box<kvm_xsave>,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    events: kvm_vcpu_events,
    msrs: Vec<kvm_msr_entry>,
}

impl VcpuState {
    pub(crate) fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, KvmError> {
        let entries: Vec<kvm_msr_entry> =
            msr_indices.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|error| KvmError::Vcpu(format!("MSR list: {error:?}")))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(KvmError::ioctl("KVM_GET_MSRS"))?;
        if read != entries.len() {
            return Err(KvmError::Vcpu(format!("read {read} of {} MSRs", entries.len())));
        }
        Ok(VcpuState {
            regs: vcpu.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?,
            xsave: Box::new(vcpu.get_xsave().map_err(KvmError::ioctl("KVM_GET_XSAVE"))?),
            xcrs: vcpu.get_xcrs().map_err(KvmError::ioctl("KVM_GET_XCRS"))?,
            debugregs: vcpu.get_debug_regs().map_err(KvmError::ioctl("KVM_GET_DEBUGREGS"))?,
            events: vcpu.get_vcpu_events().map_err(KvmError::ioctl("KVM_GET_VCPU_EVENTS"))?,
            msrs: msrs.as_slice().to_vec(),
        })
    }

    /// Loads the state into `vcpu` (Firecracker's order: MSRs, registers, FPU, events last).
    pub(crate) fn apply(&self, vcpu: &VcpuFd) -> Result<(), KvmError> {
        let msrs = Msrs::from_entries(&self.msrs).map_err(|error| KvmError::Vcpu(format!("MSR list: {error:?}")))?;
        let written = vcpu.set_msrs(&msrs).map_err(KvmError::ioctl("KVM_SET_MSRS"))?;
        if written != self.msrs.len() {
            return Err(KvmError::Vcpu(format!("set {written} of {} MSRs", self.msrs.len())));
        }
        vcpu.set_sregs(&self.sregs).map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(KvmError::ioctl("KVM_SET_REGS"))?;
        // SAFETY: `self.xsave` is a complete `kvm_xsave` (the legacy 4 KiB layout KVM_GET_XSAVE produced), so
        // KVM_SET_XSAVE reads only memory we own.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(KvmError::ioctl("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(KvmError::ioctl("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs).map_err(KvmError::ioctl("KVM_SET_DEBUGREGS"))?;
        vcpu.set_vcpu_events(&self.events).map_err(KvmError::ioctl("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    pub(crate) fn encode(&self, writer: &mut Writer) {
        writer.section(self.regs.as_bytes());
        writer.section(self.sregs.as_bytes());
        writer.section(self.xsave.as_bytes());
        writer.section(self.xcrs.as_bytes());
        writer.section(self.debugregs.as_bytes());
        writer.section(self.events.as_bytes());
        writer.section(self.msrs.as_slice().as_bytes());
    }

    pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<VcpuState, GuestError> {
        let regs = reader.value("regs")?;
        let sregs = reader.value("sregs")?;
        let xsave = Box::new(reader.value("xsave")?);
        let xcrs = reader.value("xcrs")?;
        let debugregs = reader.value("debugregs")?;
        let events = reader.value("vcpu events")?;
        let msrs = reader.section("msrs")?;
        let msrs = <[kvm_msr_entry]>::ref_from_bytes(msrs).map(|entries| entries.to_vec()).or_else(|_| {
            // The section may be unaligned inside the payload: copy entry by entry.
            let entry_bytes = std::mem::size_of::<kvm_msr_entry>();
            if !msrs.len().is_multiple_of(entry_bytes) {
                return Err(bad("msrs: size is not a whole number of entries"));
            }
            msrs.chunks_exact(entry_bytes)
                .map(|chunk| kvm_msr_entry::read_from_bytes(chunk).map_err(|_| bad("msrs: bad entry")))
                .collect()
        })?;
        Ok(VcpuState { regs, sregs, xsave, xcrs, debugregs, events, msrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_round_trip_and_corruption_is_caught() {
        let mut writer = Writer::default();
        writer.u64(7);
        writer.section(b"abc");
        let sealed = seal(&writer.payload);
        let mut reader = Reader::new(open(&sealed).expect("opens"));
        assert_eq!(reader.u64("seven").expect("u64"), 7);
        assert_eq!(reader.section("abc").expect("section"), b"abc");
        reader.finish().expect("nothing left");

        for index in 0..sealed.len() {
            let mut corrupt = sealed.clone();
            corrupt[index] ^= 0x40;
            assert!(open(&corrupt).is_err(), "flip at {index} not detected");
        }
        assert!(open(&sealed[..sealed.len() - 1]).is_err());
        assert!(open(&[]).is_err());
        let mut short = Reader::new(&[9, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(short.section("short").is_err());
    }
}
