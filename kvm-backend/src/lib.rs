//! The real machine: a KVM uniprocessor guest implementing [`ft::Guest`], and the corpus of guest programs.
//!
//! The guest ABI (ports, descriptors, vectors, boot state) is in docs/guest-abi.md. Devices are not here: the
//! protocol's platform layer emulates them on top of the port exits, DMA and interrupts of [`KvmGuest`].

pub mod arch;
pub mod corpus;
mod error;
pub mod files;
mod guest;
mod interrupts;
mod loader;
mod memory;
mod snapshot;
pub mod testkit;
mod vcpu;
mod vcpu_thread;
mod vm;

pub use error::KvmError;
pub use guest::{GuestHandle, KvmConfig, KvmGuest, MEMORY_BYTES_DEFAULT};
pub use loader::{read_image, IMAGE_BYTES_MAX};
pub use vcpu_thread::{ThreadedGuest, Waker};
