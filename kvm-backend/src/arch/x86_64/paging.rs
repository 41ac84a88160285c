//! Identity page tables with 2 MiB pages covering exactly the guest's RAM (as Firecracker builds them, but with
//! the user bit set so that CPL3 code can reach all of RAM: the corpus guests are single-address-space programs).

use ft::GuestError;

use super::layout::{LARGE_PAGE_BYTES, PDE_START, PDPTE_START, PML4_START};
use crate::memory::GuestRam;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const LARGE: u64 = 1 << 7;

/// Writes PML4, PDPT and PD; returns the CR3 value.
pub(crate) fn write_identity_tables(ram: &GuestRam) -> Result<u64, GuestError> {
    let flags = PRESENT | WRITABLE | USER;
    ram.write(PML4_START, &(PDPTE_START | flags).to_le_bytes())?;
    ram.write(PDPTE_START, &(PDE_START | flags).to_le_bytes())?;
    let pages = ram.size() as u64 / LARGE_PAGE_BYTES;
    for page in 0..pages {
        let entry = (page * LARGE_PAGE_BYTES) | flags | LARGE;
        ram.write(PDE_START + page * 8, &entry.to_le_bytes())?;
    }
    Ok(PML4_START)
}
