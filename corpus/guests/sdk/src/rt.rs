//! The runtime around a guest's main function: the entry symbol the kernel calls and the panic handler.

/// Names the guest's main function, `fn() -> u32`; its value is the power-off status when it returns.
///
/// ```ignore
/// fn main() -> u32 { ftvm_guest::println!("hello"); 0 }
/// ftvm_guest::entry!(main);
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// Called at CPL3 by the corpus kernel (`user_start` in corpus/guests/common/start.S) as `main`.
        #[export_name = "main"]
        pub extern "C" fn __ftvm_guest_main() -> u32 {
            $crate::heap::init();
            let status: u32 = $main();
            $crate::console::flush();
            status
        }
    };
}

/// Power-off status of a guest that panicked (the panic message is on the console).
pub const PANIC_STATUS: u32 = 0x200;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::console::flush();
    crate::println!("PANIC: {info}");
    crate::power_off(PANIC_STATUS)
}

// The unwinder is never used (the guest is built with panic=abort) but the prebuilt `core` of the host target
// refers to it.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    crate::power_off(PANIC_STATUS)
}

// Referred to by the prebuilt `alloc` of the host target for unwinding, which a panic=abort guest never does.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
