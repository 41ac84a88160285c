//! Shared storage of a real pair: the guest's disk image (a file both hosts open) and the arbiter record (a small
//! file next to it). The test-and-set is a read-compare-write-fsync of the record under an exclusive
//! open-file-description lock (fcntl `F_OFD_SETLKW`); every disk request reads the record under a shared lock
//! first and is refused if a newer epoch has gone live (fencing), and holds that lock until its write is done, so
//! no write of epoch `e` can land after the record moved to `e + 1`. docs/deployment.md gives the argument and
//! what NFS needs. All calls block: the node runs them on tokio's blocking pool, under a timeout.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ft::abi::SECTOR_BYTES;
use ft::driver::StorageError;
use ft::log::DiskTarget;
use ft::ArbiterOutcome;

/// The arbiter record: who went live last, in which epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub epoch: u64,
    pub owner: String,
}

const RECORD_HEADER: &str = "ftvm-arbiter v1";
/// Owner of the record before anybody won a test-and-set.
pub const NOBODY: &str = "-";

impl Record {
    fn encode(&self) -> String {
        format!("{RECORD_HEADER}\nepoch={}\nowner={}\n", self.epoch, self.owner)
    }

    fn decode(text: &str) -> io::Result<Record> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not an arbiter record: {text:?}"));
        let mut lines = text.lines();
        if lines.next() != Some(RECORD_HEADER) {
            return Err(bad());
        }
        let epoch = lines.next().and_then(|l| l.strip_prefix("epoch=")).and_then(|e| e.parse().ok()).ok_or_else(bad)?;
        let owner = lines.next().and_then(|l| l.strip_prefix("owner=")).ok_or_else(bad)?.to_string();
        Ok(Record { epoch, owner })
    }
}

/// The storage of one node: paths only, every request opens what it needs, so a storage path that disappears
/// (unmounted, unreachable) makes requests fail instead of quietly using a stale file.
#[derive(Clone, Debug)]
pub struct SharedStorage {
    pub disk: PathBuf,
    pub arbiter: PathBuf,
    pub sync_writes: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lock {
    Shared,
    Exclusive,
}

/// Takes an open-file-description lock on the whole file, waiting for it; released when `file` is closed.
fn lock(file: &File, kind: Lock) -> io::Result<()> {
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = match kind {
        Lock::Shared => libc::F_RDLCK,
        Lock::Exclusive => libc::F_WRLCK,
    } as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request.l_start = 0;
    request.l_len = 0; // the whole file
    request.l_pid = 0; // required for OFD locks
    loop {
        // SAFETY: `file` is an open descriptor and `request` a valid flock that outlives the call.
        let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &request) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Largest arbiter record read: a record is under 100 bytes, anything far bigger is not one.
const RECORD_BYTES_MAX: u64 = 4096;

fn read_record(file: &mut File) -> io::Result<Record> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.take(RECORD_BYTES_MAX + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > RECORD_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an arbiter record: over {RECORD_BYTES_MAX} bytes"),
        ));
    }
    Record::decode(&String::from_utf8_lossy(&bytes))
}

impl SharedStorage {
    /// Creates the disk image (zeroed, `sectors` long) and the arbiter record (epoch 1) if they do not exist.
    pub fn create_if_missing(&self, sectors: u64) -> io::Result<()> {
        let disk = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.disk)?;
        if disk.metadata()?.len() == 0 {
            disk.set_len(sectors * SECTOR_BYTES as u64)?;
            disk.sync_all()?;
        }
        match OpenOptions::new().write(true).create_new(true).open(&self.arbiter) {
            Ok(mut file) => {
                lock(&file, Lock::Exclusive)?;
                file.write_all(Record { epoch: 1, owner: NOBODY.into() }.encode().as_bytes())?;
                file.sync_all()
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub fn disk_sectors(&self) -> io::Result<u64> {
        Ok(std::fs::metadata(&self.disk)?.len() / SECTOR_BYTES as u64)
    }

    /// The current record, read under a shared lock.
    pub fn record(&self) -> io::Result<Record> {
        let mut file = File::open(&self.arbiter)?;
        lock(&file, Lock::Shared)?;
        read_record(&mut file)
    }

    /// Atomically moves the record from `expected_epoch` to `expected_epoch + 1` with `me` as owner. Idempotent for
    /// the winner: a retry after a lost answer finds its own name at `expected_epoch + 1` and wins again.
    pub fn test_and_set(&self, expected_epoch: u64, me: &str) -> io::Result<ArbiterOutcome> {
        let mut file = OpenOptions::new().read(true).write(true).open(&self.arbiter)?;
        lock(&file, Lock::Exclusive)?;
        let record = read_record(&mut file)?;
        let won_already = record.epoch == expected_epoch + 1 && record.owner == me;
        if record.epoch != expected_epoch && !won_already {
            return Ok(ArbiterOutcome::Lost { epoch: record.epoch });
        }
        let new = Record { epoch: expected_epoch + 1, owner: me.to_string() }.encode();
        // The record is far smaller than a sector: one write of it is not torn by the storage.
        file.write_all_at(new.as_bytes(), 0)?;
        file.set_len(new.len() as u64)?;
        file.sync_all()?;
        Ok(ArbiterOutcome::Won { epoch: expected_epoch + 1 })
    }

    /// Opens the arbiter under a shared lock and checks `epoch` against it; the lock is held while the returned
    /// file lives, so the record cannot move on during the request.
    fn fence(&self, epoch: u64) -> Result<File, StorageError> {
        let mut file = File::open(&self.arbiter).map_err(unreachable)?;
        lock(&file, Lock::Shared).map_err(unreachable)?;
        let record = read_record(&mut file).map_err(unreachable)?;
        if record.epoch > epoch {
            return Err(StorageError::Fenced(record.epoch));
        }
        Ok(file)
    }

    pub fn read(&self, epoch: u64, target: DiskTarget) -> Result<Vec<u8>, StorageError> {
        let _fence = self.fence(epoch)?;
        let disk = File::open(&self.disk).map_err(unreachable)?;
        let mut data = vec![0u8; target.sectors as usize * SECTOR_BYTES];
        disk.read_exact_at(&mut data, target.sector * SECTOR_BYTES as u64)
            .map_err(|error| StorageError::Io(error.to_string()))?;
        Ok(data)
    }

    pub fn write(&self, epoch: u64, target: DiskTarget, data: &[u8]) -> Result<(), StorageError> {
        let _fence = self.fence(epoch)?;
        let disk = OpenOptions::new().write(true).open(&self.disk).map_err(unreachable)?;
        let end = target.sector * SECTOR_BYTES as u64 + data.len() as u64;
        if end > disk.metadata().map_err(unreachable)?.len() {
            return Err(StorageError::Io(format!("write beyond the end of the disk ({end} bytes)")));
        }
        disk.write_all_at(data, target.sector * SECTOR_BYTES as u64)
            .map_err(|error| StorageError::Io(error.to_string()))?;
        if self.sync_writes {
            disk.sync_data().map_err(|error| StorageError::Io(error.to_string()))?;
        }
        Ok(())
    }
}

fn unreachable(error: io::Error) -> StorageError {
    tracing::debug!("storage unreachable: {error}");
    StorageError::Unreachable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(name: &str) -> SharedStorage {
        let dir = std::env::temp_dir().join(format!("ftvm-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let storage = SharedStorage { disk: dir.join("disk.img"), arbiter: dir.join("arbiter"), sync_writes: false };
        storage.create_if_missing(8).unwrap();
        storage
    }

    #[test]
    fn test_and_set_is_won_once_and_idempotently() {
        let s = storage("tas");
        assert_eq!(s.record().unwrap(), Record { epoch: 1, owner: NOBODY.into() });
        assert_eq!(s.test_and_set(1, "a").unwrap(), ArbiterOutcome::Won { epoch: 2 });
        assert_eq!(s.test_and_set(1, "b").unwrap(), ArbiterOutcome::Lost { epoch: 2 });
        assert_eq!(s.test_and_set(1, "a").unwrap(), ArbiterOutcome::Won { epoch: 2 }, "retry of the winner");
        assert_eq!(s.record().unwrap(), Record { epoch: 2, owner: "a".into() });
        let _ = std::fs::remove_dir_all(s.disk.parent().unwrap());
    }

    #[test]
    fn old_epochs_are_fenced_and_missing_storage_is_unreachable() {
        let s = storage("fence");
        let target = DiskTarget { tag: 1, sector: 2, sectors: 1 };
        s.write(1, target, &[7u8; 512]).unwrap();
        assert_eq!(s.read(1, target).unwrap(), vec![7u8; 512]);
        s.test_and_set(1, "b").unwrap();
        assert_eq!(s.write(1, target, &[8u8; 512]), Err(StorageError::Fenced(2)));
        assert_eq!(s.read(2, target).unwrap(), vec![7u8; 512]);
        let dir = s.disk.parent().unwrap().to_path_buf();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.read(2, target), Err(StorageError::Unreachable));
    }
}
