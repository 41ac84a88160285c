//! The global allocator: a linked-list heap over a static arena in `.bss`. Allocation is deterministic (a pure
//! function of the sequence of requests), so the primary and the backup lay their heaps out identically.

use linked_list_allocator::LockedHeap;

/// Heap size: with the image at 1 MiB and a 1 MiB stack, the guest fits the default 16 MiB of RAM. The image
/// and stacks come first; this is what is left.
pub const HEAP_BYTES: usize = 12 << 20;

#[repr(C, align(4096))]
struct Arena([u8; HEAP_BYTES]);

static mut ARENA: Arena = Arena([0; HEAP_BYTES]);

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

static INITIALISED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Hands the arena to the allocator; [`entry!`](crate::entry) calls it before the guest's main. Later calls do
/// nothing (a second hand-over would put the heap back over live allocations).
pub fn init() {
    if INITIALISED.swap(true, core::sync::atomic::Ordering::SeqCst) {
        return;
    }
    // SAFETY: reached once (the flag above), before any allocation; the arena is used by nothing else.
    unsafe { ALLOCATOR.lock().init(core::ptr::addr_of_mut!(ARENA) as *mut u8, HEAP_BYTES) };
}

/// Bytes of the heap in use.
pub fn used_bytes() -> usize {
    ALLOCATOR.lock().used()
}
