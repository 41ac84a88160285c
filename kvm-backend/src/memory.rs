//! Guest RAM: one anonymous mapping at guest-physical address 0, with bounds-checked DMA and a byte view for
//! hashing and snapshots. Every host write (DMA, a clone's pages, a restore) goes through vm-memory, whose bitmap
//! records the page as dirty: the host's half of a clone's dirty set (KVM's dirty log is the guest's half).

use ft::GuestError;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Guest memory whose every host write marks its page in a bitmap.
pub(crate) type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;

use crate::error::KvmError;

/// Bytes per page in snapshots (zero pages are left out).
pub(crate) const PAGE_BYTES: usize = 4096;

pub(crate) struct GuestRam {
    /// The mapping and its size; DMA goes through it, on this thread or (cloned) on another.
    view: RamView,
    host_address: *mut u8,
}

// SAFETY: `host_address` points into the mapping owned by `view.memory`, which is itself Send + Sync; GuestRam hands
// out access to it only through `&self`/`&mut self` methods, so moving it to another thread is sound.
unsafe impl Send for GuestRam {}

impl GuestRam {
    pub(crate) fn new(size: usize) -> Result<GuestRam, KvmError> {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])
            .map_err(|error| KvmError::Memory(error.to_string()))?;
        let host_address =
            memory.get_host_address(GuestAddress(0)).map_err(|error| KvmError::Memory(error.to_string()))?;
        Ok(GuestRam { view: RamView { memory, size }, host_address })
    }

    pub(crate) fn size(&self) -> usize {
        self.view.size
    }

    /// Another handle on the same RAM, for DMA from another thread.
    pub(crate) fn view(&self) -> RamView {
        self.view.clone()
    }

    pub(crate) fn host_address(&self) -> u64 {
        self.host_address as u64
    }

    pub(crate) fn memory(&self) -> &GuestMemoryMmap {
        &self.view.memory
    }

    /// Bounds-checked DMA out of the guest.
    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.view.read(gpa, buf)
    }

    /// Bounds-checked DMA into the guest.
    pub(crate) fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        self.view.write(gpa, data)
    }

    /// The pages the host wrote since the last call (ascending page numbers), and the record cleared.
    pub(crate) fn take_host_dirty(&self) -> Vec<u64> {
        self.view.take_host_dirty()
    }

    pub(crate) fn bytes(&mut self) -> &[u8] {
        // SAFETY: `host_address` is the start of a live mapping of `size` bytes owned by `self.view.memory`, which
        // outlives the returned borrow. The vCPU runs only inside `KvmGuest::run(&mut self)` on this thread, and
        // DMA goes through `&self` methods of this struct or of a `RamView` held by a `ThreadedGuest`, which waits
        // (inside `&mut self` `call`) for the hash or snapshot that borrows these bytes: nothing writes them while
        // the borrow lives.
        unsafe { std::slice::from_raw_parts(self.host_address, self.view.size) }
    }

    /// Encodes RAM as a page bitmap (1 = page stored) followed by the stored pages, leaving out zero pages.
    pub(crate) fn encode_pages(&mut self, out: &mut Vec<u8>) {
        let bytes = self.bytes();
        let pages = bytes.len() / PAGE_BYTES;
        let mut bitmap = vec![0u8; pages.div_ceil(8)];
        let mut stored = Vec::new();
        for (index, page) in bytes.chunks_exact(PAGE_BYTES).enumerate() {
            if page.iter().any(|&byte| byte != 0) {
                bitmap[index / 8] |= 1 << (index % 8);
                stored.push(page);
            }
        }
        out.extend_from_slice(&(pages as u64).to_le_bytes());
        out.extend_from_slice(&bitmap);
        for page in stored {
            out.extend_from_slice(page);
        }
    }

    /// Checks an encoding made by `encode_pages` against this RAM's size; returns (bitmap, page data).
    pub(crate) fn parse_pages<'a>(&self, encoded: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), String> {
        let pages = self.view.size / PAGE_BYTES;
        let (count, rest) = encoded.split_at_checked(8).ok_or("memory section truncated")?;
        let count = u64::from_le_bytes(count.try_into().map_err(|_| "memory section truncated")?);
        if count != pages as u64 {
            return Err(format!("snapshot has {count} pages of memory, this guest {pages}"));
        }
        let (bitmap, data) = rest.split_at_checked(pages.div_ceil(8)).ok_or("memory bitmap truncated")?;
        let stored: usize = bitmap.iter().map(|byte| byte.count_ones() as usize).sum();
        if data.len() != stored * PAGE_BYTES {
            return Err(format!("memory section holds {} bytes for {stored} pages", data.len()));
        }
        Ok((bitmap, data))
    }

    /// Overwrites all of RAM from a checked page encoding (pages left out become zero).
    pub(crate) fn restore_pages(&mut self, bitmap: &[u8], data: &[u8]) -> Result<(), GuestError> {
        let zero = [0u8; PAGE_BYTES];
        let mut stored = data.chunks_exact(PAGE_BYTES);
        for index in 0..self.view.size / PAGE_BYTES {
            let present = bitmap[index / 8] & (1 << (index % 8)) != 0;
            let page = if present {
                stored.next().ok_or_else(|| GuestError::BadSnapshot("memory pages truncated".into()))?
            } else {
                &zero[..]
            };
            self.write((index * PAGE_BYTES) as u64, page)?;
        }
        Ok(())
    }
}

/// A handle on guest RAM that another thread holds (the runtime thread's DMA, while the vCPU thread owns the
/// guest). The mapping lives as long as any handle on it.
#[derive(Clone)]
pub(crate) struct RamView {
    memory: GuestMemoryMmap,
    size: usize,
}

/// The page numbers of the set bits of a dirty bitmap (64 pages per word, least significant bit first), below
/// `pages`.
pub(crate) fn pages_of_bitmap(words: &[u64], pages: usize) -> impl Iterator<Item = u64> + '_ {
    words
        .iter()
        .enumerate()
        .flat_map(move |(index, word)| {
            (0..64).filter(move |bit| word & (1 << bit) != 0).map(move |bit| (index * 64 + bit) as u64)
        })
        .filter(move |page| *page < pages as u64)
}

impl RamView {
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    fn take_host_dirty(&self) -> Vec<u64> {
        let pages = self.size / PAGE_BYTES;
        self.memory
            .iter()
            .flat_map(|region| {
                pages_of_bitmap(&std::ops::Deref::deref(region).bitmap().get_and_reset(), pages).collect::<Vec<_>>()
            })
            .collect()
    }

    fn check(&self, gpa: u64, len: usize) -> Result<(), GuestError> {
        match gpa.checked_add(len as u64) {
            Some(end) if end <= self.size as u64 => Ok(()),
            _ => Err(GuestError::MemoryOutOfRange { gpa, len }),
        }
    }

    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.check(gpa, buf.len())?;
        self.memory.read_slice(buf, GuestAddress(gpa)).map_err(|_| GuestError::MemoryOutOfRange { gpa, len: buf.len() })
    }

    pub(crate) fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        self.check(gpa, data.len())?;
        self.memory
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| GuestError::MemoryOutOfRange { gpa, len: data.len() })
    }
}
