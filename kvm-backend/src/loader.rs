//! Loads a guest ELF into RAM with linux-loader.
//!
//! The guest is entered at the ELF entry point in 64-bit long mode (set up by the VMM), not through a PVH note:
//! the PVH entry is a 32-bit protected-mode entry, and entering in long mode spares every guest its own mode
//! switch, which would run in the host's slow CPL0 emulator.

use std::io::Cursor;
use std::path::Path;

use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::IMAGE_START;
use crate::error::KvmError;
use crate::memory::GuestRam;

/// Largest guest image read: far more than the RAM of a default guest (16 MiB) can load, and a bound on what a
/// path to a device or an endless FIFO can make the reader take.
pub const IMAGE_BYTES_MAX: u64 = 64 << 20;

/// Reads a guest image from a file (at most [`IMAGE_BYTES_MAX`] bytes; see [`crate::files::read_bounded`]).
pub fn read_image(path: &Path) -> Result<Vec<u8>, KvmError> {
    crate::files::read_bounded(path, IMAGE_BYTES_MAX)
        .map_err(|source| KvmError::ReadImage { path: path.to_path_buf(), source })
}

/// Loads `image`'s PT_LOAD segments at their physical addresses; returns the entry point.
pub(crate) fn load(ram: &GuestRam, image: &[u8]) -> Result<u64, KvmError> {
    let mut reader = Cursor::new(image);
    let result = Elf::load(ram.memory(), None, &mut reader, Some(GuestAddress(IMAGE_START)))
        .map_err(|error| KvmError::Elf(error.to_string()))?;
    let entry = result.kernel_load.0;
    if result.kernel_end > ram.size() as u64 {
        return Err(KvmError::Elf(format!(
            "image ends at {:#x}, beyond {:#x} bytes of RAM",
            result.kernel_end,
            ram.size()
        )));
    }
    if entry >= ram.size() as u64 {
        return Err(KvmError::Elf(format!("entry point {entry:#x} is outside RAM")));
    }
    Ok(entry)
}
