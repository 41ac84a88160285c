//! Console output, line-buffered: one `CONSOLE_WRITE` exit per line (or per 4 KiB) instead of one per byte.

use core::cell::UnsafeCell;
use core::fmt::Write;

use crate::abi::{CONSOLE_WRITE, CONSOLE_WRITE_BYTES_MAX};

#[repr(C, align(8))]
struct LineBuffer {
    length: u32,
    bytes: [u8; CONSOLE_WRITE_BYTES_MAX],
}

struct Console(UnsafeCell<LineBuffer>);

// SAFETY: the guest has one CPU and the interrupt stubs never print, so the buffer is never shared.
unsafe impl Sync for Console {}

static CONSOLE: Console = Console(UnsafeCell::new(LineBuffer { length: 0, bytes: [0; CONSOLE_WRITE_BYTES_MAX] }));

fn with_line<R>(work: impl FnOnce(&mut LineBuffer) -> R) -> R {
    // SAFETY: single CPU, no re-entry (see `Sync` above), and no reference outlives `work`.
    work(unsafe { &mut *CONSOLE.0.get() })
}

/// Writes out what is buffered.
pub fn flush() {
    with_line(|line| {
        if line.length > 0 {
            crate::outl(CONSOLE_WRITE, crate::gpa_of(line as *const LineBuffer));
            line.length = 0;
        }
    });
}

/// Appends bytes; a newline or a full buffer writes the line out.
pub fn write_bytes(bytes: &[u8]) {
    for &byte in bytes {
        let full = with_line(|line| {
            line.bytes[line.length as usize] = byte;
            line.length += 1;
            byte == b'\n' || line.length as usize == CONSOLE_WRITE_BYTES_MAX
        });
        if full {
            flush();
        }
    }
}

/// The `core::fmt` writer behind [`print!`](crate::print).
pub struct Writer;

impl Write for Writer {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        write_bytes(text.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn print_args(args: core::fmt::Arguments<'_>) {
    let _ = Writer.write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print_args(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::console::write_bytes(b"\n") };
    ($($arg:tt)*) => {{ $crate::console::print_args(format_args!($($arg)*)); $crate::console::write_bytes(b"\n"); }};
}
