//! What every VM command needs: the guest image, the KVM device, the disk, the clock and the entropy source.
//! Wall-clock time and OS randomness live here and nowhere in `ft`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ft::abi::{self, DiskStatus};
use ft::log::DiskTarget;
use ft::storage::StorageRequest;
use ft::{EntropySource, StorageDone};
use kvm_backend::{corpus, KvmConfig, KvmError, KvmGuest};

use crate::error::{io_reason, CliError};

/// Disk of a run without `--disk`: sector 0 plus the kv guest's 64 key sectors, with room to spare.
pub const DISK_SECTORS_DEFAULT: u64 = 128;
/// Largest disk accepted (`--disk` is read into memory): 1 GiB.
const DISK_BYTES_MAX: u64 = 1 << 30;
/// Recordings carry their disk size in the low bits of the pair id, under this tag in the high bits, so that the
/// log file stays a plain stream of channel frames and replay still knows the disk the guest saw.
const RECORDING_PAIR_TAG: u64 = 0x4654_5652 << 32; // "FTVR"
const RECORDING_SECTORS_MASK: u64 = (1 << 32) - 1;

/// A guest program: a corpus guest by name or an ELF file.
pub struct GuestImage {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl GuestImage {
    /// `spec` is a corpus guest name (`cpu`, `kv`, `timer`) or a path to an ELF file.
    pub fn resolve(spec: &str) -> Result<GuestImage, CliError> {
        if let Some(image) = corpus::guest_elf(spec) {
            return Ok(GuestImage { name: spec.to_string(), bytes: image.to_vec() });
        }
        let path = Path::new(spec);
        if !path.exists() {
            let names: Vec<&str> = corpus::guest_names().collect();
            return Err(CliError::Usage(format!(
                "unknown guest {spec:?}: neither a corpus guest ({}) nor an existing file",
                names.join(", ")
            )));
        }
        let bytes = kvm_backend::files::read_bounded(path, kvm_backend::IMAGE_BYTES_MAX)
            .map_err(|error| CliError::Guest { guest: spec.to_string(), reason: error.to_string() })?;
        Ok(GuestImage { name: spec.to_string(), bytes })
    }

    /// The corpus guest this image is, by content (a corpus guest copied to a file is still that guest), or None.
    pub fn corpus_name(&self) -> Option<&'static str> {
        corpus::guest_names().find(|name| corpus::guest_elf(name) == Some(self.bytes.as_slice()))
    }

    /// Whether this is one of the corpus key-value services, `kv` or the pipelined `kvq` (they idle until they
    /// get requests): decided by the image, not by how it was named on the command line.
    pub fn is_kv(&self) -> bool {
        matches!(self.corpus_name(), Some("kv" | "kvq"))
    }

    /// What the pair's `image_digest` carries: a backup refuses a primary running another image.
    pub fn digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.bytes)
    }
}

/// Checks that the KVM device can be opened read-write, with a plain message when it cannot.
pub fn check_kvm(path: &Path) -> Result<(), CliError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|error| CliError::KvmUnavailable { path: path.display().to_string(), reason: io_reason(&error) })
}

/// A fresh VM running `image`.
pub fn new_guest(kvm_path: &Path, image: &GuestImage) -> Result<KvmGuest, CliError> {
    new_guest_sized(kvm_path, image, kvm_backend::MEMORY_BYTES_DEFAULT)
}

/// A KVM guest with `memory_bytes` of RAM.
pub fn new_guest_sized(kvm_path: &Path, image: &GuestImage, memory_bytes: u64) -> Result<KvmGuest, CliError> {
    let config = KvmConfig { kvm_path: kvm_path.to_path_buf(), memory_bytes };
    KvmGuest::new(&config, &image.bytes).map_err(|error| match error {
        KvmError::Open { path, source } => {
            CliError::KvmUnavailable { path: path.display().to_string(), reason: source.to_string() }
        }
        other => CliError::Guest { guest: image.name.clone(), reason: other.to_string() },
    })
}

/// Checks that the model guest has the workload of `image` (a corpus guest, by content or name).
pub fn check_model_guest(image: &GuestImage) -> Result<(), CliError> {
    let name = image.corpus_name().unwrap_or(&image.name);
    match model_guest::ModelGuest::from_name(name) {
        Some(_) => Ok(()),
        None => Err(CliError::Usage(format!(
            "config: `guest` = {:?}: the model guest (`machine` = \"model\") has no such workload (it has kv, timer, cpu)",
            image.name
        ))),
    }
}

/// Which machine a node runs its guest on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineKind {
    Kvm,
    /// The deterministic model guest (corpus/model), with the reason KVM was not used.
    Model {
        why: String,
    },
}

impl MachineKind {
    /// The `machine` config value.
    pub fn config_value(&self) -> &'static str {
        match self {
            MachineKind::Kvm => "kvm",
            MachineKind::Model { .. } => "model",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            MachineKind::Kvm => "on KVM".into(),
            MachineKind::Model { why } => format!("on the model guest over real sockets ({why})"),
        }
    }
}

/// KVM where it is usable, else the model guest: what `ftvm demo` runs.
pub fn demo_machine(kvm_path: &Path) -> MachineKind {
    match check_kvm(kvm_path) {
        Ok(()) => MachineKind::Kvm,
        Err(CliError::KvmUnavailable { path, reason }) => {
            MachineKind::Model { why: format!("no usable KVM: {path}: {reason}") }
        }
        Err(error) => MachineKind::Model { why: format!("no usable KVM: {error}") },
    }
}

/// The guest of a `primary`/`backup` node: a KVM VM (with its handle, which says why it failed), or the model
/// guest running the same corpus workload. With a `waker`, the KVM VM runs on a vCPU thread of its own, which
/// calls `waker` each time a run ends.
pub fn new_node_guest(
    kvm_path: &Path,
    image: &GuestImage,
    machine: Option<&str>,
    waker: Option<kvm_backend::Waker>,
    memory_bytes: u64,
) -> Result<(Box<dyn ft::Guest>, Option<kvm_backend::GuestHandle>), CliError> {
    match machine.unwrap_or("kvm") {
        "kvm" => {
            let guest = new_guest_sized(kvm_path, image, memory_bytes)?;
            let handle = guest.handle();
            match waker {
                Some(waker) => {
                    let threaded = kvm_backend::ThreadedGuest::spawn(guest, waker).map_err(|error| {
                        CliError::GuestFailed { guest: image.name.clone(), reason: error.to_string() }
                    })?;
                    Ok((Box::new(threaded), Some(handle)))
                }
                None => Ok((Box::new(guest), Some(handle))),
            }
        }
        "model" => model_guest::ModelGuest::from_name(image.corpus_name().unwrap_or(&image.name))
            .map(|guest| (Box::new(guest) as Box<dyn ft::Guest>, None))
            .ok_or_else(|| {
                CliError::Usage(format!("the model guest has no workload {:?} (it has kv, timer, cpu)", image.name))
            }),
        other => Err(CliError::Usage(format!("machine {other:?}: expected kvm or model"))),
    }
}

/// The pair id of a recording with a disk of `disk_sectors` sectors.
pub fn recording_pair_id(disk_sectors: u64) -> u64 {
    assert!(disk_sectors <= RECORDING_SECTORS_MASK, "disk size is bounded by DISK_BYTES_MAX");
    RECORDING_PAIR_TAG | disk_sectors
}

/// The disk size recorded in a recording's pair id, or None if the pair id is not one of a recording.
pub fn recording_disk_sectors(pair_id: u64) -> Option<u64> {
    (pair_id & !RECORDING_SECTORS_MASK == RECORDING_PAIR_TAG).then_some(pair_id & RECORDING_SECTORS_MASK)
}

/// The shared storage of a single host: an in-memory disk (a copy of `--disk FILE`, never written back).
pub struct Disk {
    bytes: Vec<u8>,
}

impl Disk {
    pub fn zeroed(sectors: u64) -> Disk {
        let bytes = usize::try_from(sectors).unwrap_or(0) * abi::SECTOR_BYTES;
        Disk { bytes: vec![0; bytes] }
    }

    /// `path`'s contents, or a zeroed default disk.
    pub fn open(path: Option<&PathBuf>) -> Result<Disk, CliError> {
        let Some(path) = path else { return Ok(Disk::zeroed(DISK_SECTORS_DEFAULT)) };
        let what = || format!("disk {}", path.display());
        let bytes = kvm_backend::files::read_bounded(path, DISK_BYTES_MAX)
            .map_err(|error| CliError::Io { what: what(), reason: error.to_string() })?;
        let length = bytes.len();
        if length == 0 || length % abi::SECTOR_BYTES != 0 {
            return Err(CliError::Usage(format!(
                "{}: {length} bytes; a disk must be a non-empty multiple of {} bytes, at most {DISK_BYTES_MAX}",
                what(),
                abi::SECTOR_BYTES
            )));
        }
        Ok(Disk { bytes })
    }

    pub fn sectors(&self) -> u64 {
        (self.bytes.len() / abi::SECTOR_BYTES) as u64
    }

    fn range(&self, target: &DiskTarget) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(target.sector).ok()?.checked_mul(abi::SECTOR_BYTES)?;
        let end = start.checked_add(target.sectors as usize * abi::SECTOR_BYTES)?;
        (end <= self.bytes.len()).then_some(start..end)
    }

    /// Performs a request at once. The platform has checked the descriptor already; a request outside the disk
    /// (which it should never issue) fails as an IO error rather than touching anything.
    pub fn perform(&mut self, request: &StorageRequest) -> StorageDone {
        let failed = |tag| StorageDone { tag, status: DiskStatus::IoError, data: Vec::new() };
        match request {
            StorageRequest::Read { target } => match self.range(target) {
                Some(range) => {
                    StorageDone { tag: target.tag, status: DiskStatus::Ok, data: self.bytes[range].to_vec() }
                }
                None => failed(target.tag),
            },
            StorageRequest::Write { target, data, .. } => match self.range(target) {
                Some(range) if range.len() == data.len() => {
                    self.bytes[range].copy_from_slice(data);
                    StorageDone { tag: target.tag, status: DiskStatus::Ok, data: Vec::new() }
                }
                _ => failed(target.tag),
            },
        }
    }
}

/// Monotonic nanoseconds since the command started.
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { start: Instant::now() }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Bytes of OS randomness read at a time.
const ENTROPY_BUFFER_BYTES: usize = 4096;

/// The guest's `ENTROPY` device on a real host: /dev/urandom, buffered. Every value is logged, so replay never
/// reads it.
pub struct OsEntropy {
    source: Option<File>,
    buffer: Vec<u8>,
    used: usize,
    /// Fallback generator state if /dev/urandom stops working mid-run (the values are logged either way).
    fallback: u64,
}

impl OsEntropy {
    pub fn open() -> Result<OsEntropy, CliError> {
        let source = File::open("/dev/urandom").map_err(|error| CliError::io("/dev/urandom", &error))?;
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let fallback = since_epoch.as_nanos() as u64 ^ u64::from(std::process::id());
        Ok(OsEntropy {
            source: Some(source),
            buffer: vec![0; ENTROPY_BUFFER_BYTES],
            used: ENTROPY_BUFFER_BYTES,
            fallback,
        })
    }

    fn refill(&mut self) {
        let ok = self.source.as_mut().is_some_and(|source| source.read_exact(&mut self.buffer).is_ok());
        if !ok {
            tracing::warn!("/dev/urandom failed; entropy continues from a time-seeded generator");
            self.source = None;
            for chunk in self.buffer.chunks_mut(8) {
                self.fallback = splitmix(self.fallback);
                chunk.copy_from_slice(&self.fallback.to_le_bytes()[..chunk.len()]);
            }
        }
        self.used = 0;
    }
}

impl EntropySource for OsEntropy {
    fn next_u32(&mut self) -> u32 {
        if self.used + 4 > self.buffer.len() {
            self.refill();
        }
        let mut word = [0u8; 4];
        word.copy_from_slice(&self.buffer[self.used..self.used + 4]);
        self.used += 4;
        u32::from_le_bytes(word)
    }
}

/// One step of splitmix64: a small, good, seedable generator.
pub fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_id_carries_the_disk_size() {
        for sectors in [1, 128, 1 << 21] {
            assert_eq!(recording_disk_sectors(recording_pair_id(sectors)), Some(sectors));
        }
        assert_eq!(recording_disk_sectors(1), None);
    }

    #[test]
    fn disk_refuses_requests_outside_it() {
        let mut disk = Disk::zeroed(2);
        let write = StorageRequest::Write {
            target: DiskTarget { tag: 1, sector: 1, sectors: 1 },
            data: vec![7; abi::SECTOR_BYTES],
            output_seq: 0,
            log_index: None,
        };
        assert_eq!(disk.perform(&write).status, DiskStatus::Ok);
        let read = StorageRequest::Read { target: DiskTarget { tag: 2, sector: 1, sectors: 1 } };
        assert_eq!(disk.perform(&read).data, vec![7; abi::SECTOR_BYTES]);
        let beyond = StorageRequest::Read { target: DiskTarget { tag: 3, sector: 2, sectors: 1 } };
        assert_eq!(disk.perform(&beyond).status, DiskStatus::IoError);
        let huge = StorageRequest::Read { target: DiskTarget { tag: 4, sector: u64::MAX, sectors: 1 } };
        assert_eq!(disk.perform(&huge).status, DiskStatus::IoError);
    }
}
