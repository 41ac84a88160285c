//! Guest memory, and the part of its layout that the interrupt handler and every program share.
//!
//! Accessors used by programs never panic: an access outside memory reads as zero and writes nowhere, because
//! addresses can derive from guest memory, which the platform (and a corrupt peer, through it) can write.

use std::ops::Range;

use ft::GuestError;

/// Size of guest memory: room for the ABI buffers (4 + 2048 bytes each) and a 32 KiB disk read at boot.
pub const MEMORY_BYTES: usize = 64 * 1024;

/// `u64`: the interrupt handler folds every delivery (instruction count and vector) into it.
pub(crate) const IRQ_ACCUMULATOR: usize = 0x00;
/// `u32`: event bits set by the interrupt handler, tested and cleared by programs (see [`event_bit`]).
pub(crate) const IRQ_EVENTS: usize = 0x08;
/// `u64`: interrupts taken so far.
pub(crate) const IRQ_COUNT: usize = 0x10;
/// First byte of the programs' own variables.
pub(crate) const PROGRAM_VARIABLES: usize = 0x40;
/// A `Buffer` (ft::abi) for console lines, shared by all programs.
pub(crate) const CONSOLE_BUFFER: usize = 0x200;
/// Payload capacity of [`CONSOLE_BUFFER`].
pub(crate) const CONSOLE_LINE_BYTES_MAX: usize = 252;

const _: () = assert!(IRQ_COUNT + 8 <= PROGRAM_VARIABLES);
const _: () = assert!(CONSOLE_LINE_BYTES_MAX <= ft::abi::CONSOLE_WRITE_BYTES_MAX);
const _: () = assert!(CONSOLE_BUFFER + 4 + CONSOLE_LINE_BYTES_MAX <= 0x300);

/// Event bit of the periodic timer.
pub(crate) const EVENT_TIMER: u32 = event_bit(ft::abi::VECTOR_TIMER);
/// Event bit of disk completions.
pub(crate) const EVENT_DISK: u32 = event_bit(ft::abi::VECTOR_DISK);
/// Event bit of network receive.
pub(crate) const EVENT_NET: u32 = event_bit(ft::abi::VECTOR_NET);

/// The event bit of an interrupt vector: vectors 0x20..0x3f map to bits 0..30, every other vector to bit 31
/// (which no program waits for: an unexpected vector still lands in the accumulator, but wakes nothing).
pub(crate) const fn event_bit(vector: u8) -> u32 {
    match vector {
        0x20..=0x3e => 1 << (vector - 0x20),
        _ => 1 << 31,
    }
}

const _: () = assert!(EVENT_TIMER == 1 && EVENT_DISK == 2 && EVENT_NET == 4);

/// Pages of guest memory, for dirty tracking (one bit each).
pub(crate) const PAGES: usize = MEMORY_BYTES / ft::guest::PAGE_BYTES;
const _: () = assert!(PAGES <= 64 && MEMORY_BYTES.is_multiple_of(ft::guest::PAGE_BYTES));

/// Byte-addressed, little-endian guest memory, with a dirty bit per page that every write sets (the program's
/// and the host's alike), as KVM's dirty log plus a record of the host's own writes would.
#[derive(Clone)]
pub(crate) struct Memory {
    bytes: Box<[u8]>,
    /// Bit `p`: page `p` was written since the last [`Memory::take_dirty`]. Not guest state: not hashed, not
    /// compared, not in snapshots.
    dirty: u64,
}

impl PartialEq for Memory {
    fn eq(&self, other: &Memory) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Memory {}

impl Memory {
    pub(crate) fn new() -> Memory {
        // A new machine's memory is all written: the first pre-copy round sends every page.
        Memory { bytes: vec![0u8; MEMORY_BYTES].into_boxed_slice(), dirty: u64::MAX >> (64 - PAGES) }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All of memory, for writing: every page counts as dirty.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        self.dirty = u64::MAX >> (64 - PAGES);
        &mut self.bytes
    }

    /// Writes `data` at a range already checked to lie inside memory (host DMA), marking its pages.
    pub(crate) fn dma_write(&mut self, range: Range<usize>, data: &[u8]) {
        self.mark(range.start, range.len());
        self.bytes[range].copy_from_slice(data);
    }

    /// The pages written since the last call, ascending.
    pub(crate) fn take_dirty(&mut self) -> Vec<u64> {
        let dirty = std::mem::take(&mut self.dirty);
        (0..PAGES as u64).filter(|page| dirty & (1 << page) != 0).collect()
    }

    fn mark(&mut self, at: usize, len: usize) {
        if len == 0 {
            return;
        }
        let first = at / ft::guest::PAGE_BYTES;
        let last = ((at + len - 1) / ft::guest::PAGE_BYTES).min(PAGES - 1);
        for page in first..=last {
            self.dirty |= 1 << page;
        }
    }

    /// The index range of a device access, or the error the `Guest` contract asks for.
    pub(crate) fn dma_range(gpa: u64, len: usize) -> Result<Range<usize>, GuestError> {
        let range = usize::try_from(gpa)
            .ok()
            .and_then(|start| Some(start..start.checked_add(len)?))
            .filter(|range| range.end <= MEMORY_BYTES);
        range.ok_or(GuestError::MemoryOutOfRange { gpa, len })
    }

    fn window(&self, at: usize, len: usize) -> Option<&[u8]> {
        self.bytes.get(at..at.checked_add(len)?)
    }

    /// A window for writing: its pages are marked dirty if it lies inside memory.
    fn window_mut(&mut self, at: usize, len: usize) -> Option<&mut [u8]> {
        let end = at.checked_add(len)?;
        if end > MEMORY_BYTES {
            return None;
        }
        self.mark(at, len);
        self.bytes.get_mut(at..end)
    }

    pub(crate) fn u8(&self, at: usize) -> u8 {
        self.bytes.get(at).copied().unwrap_or(0)
    }

    pub(crate) fn set_u8(&mut self, at: usize, value: u8) {
        if let Some(window) = self.window_mut(at, 1) {
            window[0] = value;
        }
    }

    pub(crate) fn u32(&self, at: usize) -> u32 {
        match self.window(at, 4) {
            Some(window) => u32::from_le_bytes([window[0], window[1], window[2], window[3]]),
            None => 0,
        }
    }

    pub(crate) fn set_u32(&mut self, at: usize, value: u32) {
        self.write(at, &value.to_le_bytes());
    }

    pub(crate) fn u64(&self, at: usize) -> u64 {
        let mut word = [0u8; 8];
        if let Some(window) = self.window(at, 8) {
            word.copy_from_slice(window);
        }
        u64::from_le_bytes(word)
    }

    pub(crate) fn set_u64(&mut self, at: usize, value: u64) {
        self.write(at, &value.to_le_bytes());
    }

    /// `len` bytes at `at`, or `None` if they are not all inside memory.
    pub(crate) fn slice(&self, at: usize, len: usize) -> Option<&[u8]> {
        self.window(at, len)
    }

    /// Writes `data` at `at` if it fits entirely; otherwise writes nothing.
    pub(crate) fn write(&mut self, at: usize, data: &[u8]) {
        if let Some(window) = self.window_mut(at, data.len()) {
            window.copy_from_slice(data);
        }
    }

    /// Zeroes `len` bytes at `at` if they fit entirely.
    pub(crate) fn zero(&mut self, at: usize, len: usize) {
        if let Some(window) = self.window_mut(at, len) {
            window.fill(0);
        }
    }

    /// Copies `len` bytes from `from` to `to` if both ranges fit entirely.
    pub(crate) fn copy(&mut self, from: usize, to: usize, len: usize) {
        let fits = |at: usize| at.checked_add(len).is_some_and(|end| end <= MEMORY_BYTES);
        if fits(from) && fits(to) {
            self.mark(to, len);
            self.bytes.copy_within(from..from + len, to);
        }
    }
}
