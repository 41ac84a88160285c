//! Shared storage of a real pair: the guest's disk image (a file both hosts open) and the arbiter record (a small
//! file next to it). The test-and-set is a read-compare-write-fsync of the record under an exclusive
//! open-file-description lock (fcntl `F_OFD_SETLKW`); every disk request reads the record under a shared lock
//! first and is refused if a newer epoch has gone live (fencing), and holds that lock until its write is done, so
//! no write of epoch `e` can land after the record moved to `e + 1`. docs/deployment.md gives the argument and
//! what NFS needs. All calls block: the node runs them on tokio's blocking pool, under a timeout.
//!
//! With a write journal (`write_journal = true`, for `ftvm demo` and tests), every write that landed and every
//! grant of the arbiter is appended to a text file next to the disk image, under the same locks that order them
//! (see [`Journal`]): what the storage saw, for a check of split brain that believes the outside, not the nodes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ft::abi::SECTOR_BYTES;
use ft::driver::StorageError;
use ft::log::DiskTarget;
use ft::ArbiterOutcome;

/// The arbiter record: who went live last, in which epoch, and (after re-protection) the backup the owner enlisted
/// for that epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub epoch: u64,
    pub owner: String,
    /// The node a live primary recorded as its new backup when it moved to this epoch to clone its VM onto it
    /// (`name/id`, as the owner); absent otherwise (a v1 record without the line has none).
    pub backup: Option<String>,
}

const RECORD_HEADER: &str = "ftvm-arbiter v1";
/// Owner of the record before anybody won a test-and-set.
pub const NOBODY: &str = "-";

impl Record {
    /// The configured name of the owner (the record holds it with the winning process's id: `name/id`).
    pub fn owner_name(&self) -> &str {
        self.owner.split('/').next().unwrap_or(&self.owner)
    }

    fn encode(&self) -> String {
        let backup = self.backup.as_ref().map_or(String::new(), |backup| format!("backup={backup}\n"));
        format!("{RECORD_HEADER}\nepoch={}\nowner={}\n{backup}", self.epoch, self.owner)
    }

    fn decode(text: &str) -> io::Result<Record> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not an arbiter record: {text:?}"));
        let mut lines = text.lines();
        if lines.next() != Some(RECORD_HEADER) {
            return Err(bad());
        }
        let epoch = lines.next().and_then(|l| l.strip_prefix("epoch=")).and_then(|e| e.parse().ok()).ok_or_else(bad)?;
        let owner = lines.next().and_then(|l| l.strip_prefix("owner=")).ok_or_else(bad)?.to_string();
        let backup = match lines.next() {
            None => None,
            Some(line) => Some(line.strip_prefix("backup=").ok_or_else(bad)?.to_string()),
        };
        if lines.next().is_some() {
            return Err(bad());
        }
        Ok(Record { epoch, owner, backup })
    }
}

/// The storage of one node: paths only, every request opens what it needs, so a storage path that disappears
/// (unmounted, unreachable) makes requests fail instead of quietly using a stale file.
#[derive(Clone, Debug)]
pub struct SharedStorage {
    pub disk: PathBuf,
    pub arbiter: PathBuf,
    pub sync_writes: bool,
    /// The write journal, if kept ([`journal_path`] of the disk): every landed write and every grant.
    pub journal: Option<PathBuf>,
}

/// Where the write journal of `disk` is kept: next to it, `<disk>.journal`.
pub fn journal_path(disk: &Path) -> PathBuf {
    let mut path = disk.as_os_str().to_owned();
    path.push(".journal");
    PathBuf::from(path)
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

/// What the startup check of the shared storage found wrong.
#[derive(Debug, PartialEq, Eq)]
pub enum StorageProblem {
    /// The configuration or the files are wrong (a missing directory, a file that is not an arbiter record, a
    /// disk of the wrong size): an error, the node does not start.
    Bad(String),
    /// The storage does not answer as storage should (an I/O error of a gone mount): wait and retry.
    Unreachable(String),
}

/// Whether an error opening or reading shared storage means "not reachable now" (a hung or gone network mount),
/// not "configured wrong".
fn is_unreachable(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EIO | libc::ESTALE | libc::ETIMEDOUT | libc::ENOTCONN | libc::EHOSTDOWN | libc::EHOSTUNREACH)
            | Some(libc::ENETUNREACH | libc::ENOLCK | libc::ECONNREFUSED | libc::ECONNRESET)
    )
}

impl SharedStorage {
    /// The startup check, read-only: the directories of the disk image and the arbiter exist, an existing disk
    /// is a regular file of whole sectors (of `sectors` sectors, if `exact`), and an existing arbiter is an
    /// arbiter record, which is returned. Files that do not exist yet are fine: `create_if_missing` makes them.
    pub fn check(&self, sectors: u64, exact: bool) -> Result<Option<Record>, StorageProblem> {
        let io = |what: &str, path: &std::path::Path, error: io::Error| {
            let reason = format!("{what} {}: {}", path.display(), crate::error::io_reason(&error));
            if is_unreachable(&error) {
                StorageProblem::Unreachable(reason)
            } else {
                StorageProblem::Bad(reason)
            }
        };
        for (key, path) in [("disk", &self.disk), ("arbiter", &self.arbiter)] {
            let directory = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => std::path::Path::new("."),
            };
            match std::fs::metadata(directory) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => {
                    return Err(StorageProblem::Bad(format!("`{key}`: {} is not a directory", directory.display())))
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageProblem::Bad(format!(
                        "`{key}` = {}: the directory {} does not exist (create it, or mount the shared storage there)",
                        path.display(),
                        directory.display()
                    )))
                }
                Err(error) => return Err(io(&format!("`{key}`: directory"), directory, error)),
            }
        }
        match std::fs::metadata(&self.disk) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("disk image", &self.disk, error)),
            Ok(metadata) if !metadata.is_file() => {
                return Err(StorageProblem::Bad(format!("disk image {}: not a regular file", self.disk.display())))
            }
            // Empty: created by a node that died before sizing it; `create_if_missing` sizes it.
            Ok(metadata) if metadata.len() == 0 => {}
            Ok(metadata) => {
                let length = metadata.len();
                let wanted = sectors * SECTOR_BYTES as u64;
                if length % SECTOR_BYTES as u64 != 0 {
                    return Err(StorageProblem::Bad(format!(
                        "disk image {}: {length} bytes, not a whole number of {SECTOR_BYTES}-byte sectors",
                        self.disk.display()
                    )));
                }
                if exact && length != wanted {
                    return Err(StorageProblem::Bad(format!(
                        "disk image {}: {length} bytes, but `disk_sectors` = {sectors} asks for {wanted} (the \
                         setting is the size of a disk created here: leave it out to use the disk as it is)",
                        self.disk.display()
                    )));
                }
            }
        }
        match std::fs::metadata(&self.arbiter) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io("arbiter", &self.arbiter, error)),
            Ok(metadata) if !metadata.is_file() => {
                Err(StorageProblem::Bad(format!("arbiter {}: not a regular file", self.arbiter.display())))
            }
            Ok(_) => match self.record() {
                Ok(record) => Ok(Some(record)),
                Err(error) if error.kind() == io::ErrorKind::InvalidData => Err(StorageProblem::Bad(format!(
                    "arbiter {}: {} (remove it to start the pair afresh, if no node of it is live)",
                    self.arbiter.display(),
                    crate::error::io_reason(&error)
                ))),
                Err(error) => Err(io("arbiter", &self.arbiter, error)),
            },
        }
    }

    /// Creates the disk image (zeroed, `sectors` long) and the arbiter record (epoch 1) if they do not exist.
    /// The record appears whole: it is written to a file of its own and hard-linked into place, which fails if
    /// the other node's link came first (atomic on local file systems and NFS), so nobody ever reads a
    /// half-made record.
    pub fn create_if_missing(&self, sectors: u64) -> io::Result<()> {
        let disk = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.disk)?;
        if disk.metadata()?.len() == 0 {
            disk.set_len(sectors * SECTOR_BYTES as u64)?;
            disk.sync_all()?;
        }
        if self.arbiter.exists() {
            return Ok(());
        }
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut fresh = self.arbiter.clone().into_os_string();
        fresh.push(format!(".new-{}-{}", std::process::id(), since.as_nanos()));
        let fresh = PathBuf::from(fresh);
        let mut file = OpenOptions::new().write(true).create_new(true).open(&fresh)?;
        let written = file
            .write_all(Record { epoch: 1, owner: NOBODY.into(), backup: None }.encode().as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::hard_link(&fresh, &self.arbiter));
        let _ = std::fs::remove_file(&fresh);
        match written {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
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
        self.test_and_set_enlisting(expected_epoch, me, None)
    }

    /// As `test_and_set`, recording `backup` (a joiner the live primary `me` clones its VM onto) as the backup of
    /// the new epoch: the joiner accepts the clone only if the record names it.
    pub fn test_and_set_enlisting(
        &self,
        expected_epoch: u64,
        me: &str,
        backup: Option<&str>,
    ) -> io::Result<ArbiterOutcome> {
        let mut file = OpenOptions::new().read(true).write(true).open(&self.arbiter)?;
        lock(&file, Lock::Exclusive)?;
        let record = read_record(&mut file)?;
        let won_already = record.epoch == expected_epoch + 1 && record.owner == me;
        if record.epoch != expected_epoch && !won_already {
            return Ok(ArbiterOutcome::Lost { epoch: record.epoch });
        }
        if won_already {
            // Nothing moves: the record and the journal hold this grant already.
            return Ok(ArbiterOutcome::Won { epoch: expected_epoch + 1 });
        }
        let new =
            Record { epoch: expected_epoch + 1, owner: me.to_string(), backup: backup.map(str::to_string) }.encode();
        // The record is far smaller than a sector: one write of it is not torn by the storage.
        file.write_all_at(new.as_bytes(), 0)?;
        file.set_len(new.len() as u64)?;
        file.sync_all()?;
        // Still under the exclusive lock: no write of the old epoch is in flight, and none can start.
        self.journal_append(&JournalEntry::Grant { epoch: expected_epoch + 1, owner: me.to_string() })?;
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
        // Still under the shared lock of the fence: no grant of a newer epoch can come between the write landing
        // and its journal line. A journal that cannot be written is storage that does not answer: retried.
        self.journal_append(&JournalEntry::Write { epoch, sector: target.sector, sectors: target.sectors })
            .map_err(unreachable)?;
        Ok(())
    }

    /// Appends one line to the write journal, if there is one: a single `write(2)` on a file opened with
    /// `O_APPEND`, so the lines of two nodes never interleave.
    fn journal_append(&self, entry: &JournalEntry) -> io::Result<()> {
        let Some(path) = &self.journal else { return Ok(()) };
        let line = format!("{entry}\n");
        let mut file = OpenOptions::new().append(true).create(true).open(path)?;
        file.write_all(line.as_bytes())
    }
}

/// One line of the write journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalEntry {
    /// A disk write of `epoch` landed on `sectors` sectors from `sector` (`write epoch=E sector=S sectors=N`).
    Write { epoch: u64, sector: u64, sectors: u32 },
    /// The arbiter moved to `epoch`, owned by `owner` (`grant epoch=E owner=NAME/ID`).
    Grant { epoch: u64, owner: String },
}

impl std::fmt::Display for JournalEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalEntry::Write { epoch, sector, sectors } => {
                write!(f, "write epoch={epoch} sector={sector} sectors={sectors}")
            }
            JournalEntry::Grant { epoch, owner } => write!(f, "grant epoch={epoch} owner={owner}"),
        }
    }
}

impl JournalEntry {
    /// A journal line, or None for anything else (the journal is outside input to whoever reads it).
    pub fn parse(line: &str) -> Option<JournalEntry> {
        let mut fields = line.split(' ');
        let kind = fields.next()?;
        let mut value = |name: &str| fields.next()?.strip_prefix(name)?.strip_prefix('=').map(str::to_string);
        let entry = match kind {
            "write" => JournalEntry::Write {
                epoch: value("epoch")?.parse().ok()?,
                sector: value("sector")?.parse().ok()?,
                sectors: value("sectors")?.parse().ok()?,
            },
            "grant" => {
                let epoch = value("epoch")?.parse().ok()?;
                let owner = value("owner")?;
                if owner.is_empty() {
                    return None;
                }
                JournalEntry::Grant { epoch, owner }
            }
            _ => return None,
        };
        fields.next().is_none().then_some(entry)
    }
}

/// Deposed writes described one by one in [`Journal::split_brain`]; beyond, a count.
const SPLIT_BRAIN_SENTENCES_MAX: u64 = 5;

/// Largest write journal read back (a line per write: a demo trial writes a few thousand).
const JOURNAL_BYTES_MAX: u64 = 256 << 20;

/// The write journal as read back: its entries in order, and the lines that were not entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Journal {
    pub entries: Vec<JournalEntry>,
    pub bad_lines: Vec<String>,
}

impl Journal {
    pub fn parse(text: &str) -> Journal {
        let mut journal = Journal::default();
        for line in text.lines() {
            match JournalEntry::parse(line) {
                Some(entry) => journal.entries.push(entry),
                None => journal.bad_lines.push(line.chars().take(200).collect()),
            }
        }
        journal
    }

    /// Reads the journal at `path` (with a bound); a journal nobody wrote yet is empty.
    pub fn read(path: &Path) -> Result<Journal, String> {
        match kvm_backend::files::read_bounded(path, JOURNAL_BYTES_MAX) {
            Ok(bytes) => Ok(Journal::parse(&String::from_utf8_lossy(&bytes))),
            Err(kvm_backend::files::ReadError::Io(error)) if error.kind() == io::ErrorKind::NotFound => {
                Ok(Journal::default())
            }
            Err(error) => Err(format!("write journal {}: {error}", path.display())),
        }
    }

    pub fn writes(&self) -> usize {
        self.entries.iter().filter(|entry| matches!(entry, JournalEntry::Write { .. })).count()
    }

    pub fn grants(&self) -> impl Iterator<Item = (u64, &str)> {
        self.entries.iter().filter_map(|entry| match entry {
            JournalEntry::Grant { epoch, owner } => Some((*epoch, owner.as_str())),
            JournalEntry::Write { .. } => None,
        })
    }

    /// What the storage saw of a split brain, as sentences (none: no evidence): a write of an epoch that landed
    /// after the arbiter granted a newer epoch (a deposed node's write), and an epoch granted twice.
    pub fn split_brain(&self) -> Vec<String> {
        let mut evidence = Vec::new();
        // The newest grant so far, and every epoch granted with its owner.
        let mut newest: Option<(u64, &str)> = None;
        let mut granted: std::collections::HashMap<u64, &str> = std::collections::HashMap::new();
        let mut deposed_writes = 0u64;
        for entry in &self.entries {
            match entry {
                JournalEntry::Write { epoch, sector, sectors } => {
                    if let Some((newer, owner)) = newest.filter(|(newer, _)| newer > epoch) {
                        deposed_writes += 1;
                        if deposed_writes <= SPLIT_BRAIN_SENTENCES_MAX {
                            evidence.push(format!(
                                "a write of epoch {epoch} (sectors {sector}..{}) landed after the arbiter granted                                  epoch {newer} to {owner}: a deposed node wrote to the disk",
                                sector.saturating_add(u64::from(*sectors))
                            ));
                        }
                    }
                }
                JournalEntry::Grant { epoch, owner } => {
                    if let Some(first) = granted.get(epoch) {
                        evidence.push(format!("epoch {epoch} was granted twice: to {first}, then to {owner}"));
                    } else if let Some((newer, newer_owner)) = newest.filter(|(newer, _)| newer > epoch) {
                        evidence.push(format!(
                            "epoch {epoch} was granted to {owner} after epoch {newer} had been granted to {newer_owner}"
                        ));
                    }
                    granted.entry(*epoch).or_insert(owner);
                    if newest.is_none_or(|(newer, _)| *epoch > newer) {
                        newest = Some((*epoch, owner));
                    }
                }
            }
        }
        if deposed_writes > SPLIT_BRAIN_SENTENCES_MAX {
            evidence.push(format!("... {deposed_writes} writes of deposed epochs in all"));
        }
        evidence
    }
}

fn unreachable(error: io::Error) -> StorageError {
    tracing::debug!("storage unreachable: {error}");
    StorageError::Unreachable
}

/// Fresh storage for a unit test: an 8-sector disk, the arbiter at epoch 1 and a write journal, in a directory of
/// its own under the temporary directory (the test removes it).
#[cfg(test)]
pub(crate) fn scratch(name: &str) -> SharedStorage {
    let dir = std::env::temp_dir().join(format!("ftvm-storage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let storage = SharedStorage {
        disk: dir.join("disk.img"),
        arbiter: dir.join("arbiter"),
        sync_writes: false,
        journal: Some(journal_path(&dir.join("disk.img"))),
    };
    storage.create_if_missing(8).expect("fresh storage");
    storage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(name: &str) -> SharedStorage {
        super::scratch(name)
    }

    /// The startup check tells a wrong config or wrong files (errors) from storage that does not answer (waited
    /// for), and finds nothing wrong with files it will create.
    #[test]
    fn the_startup_check_names_what_is_wrong() {
        let s = storage("check");
        assert_eq!(s.check(8, true), Ok(Some(Record { epoch: 1, owner: NOBODY.into(), backup: None })));
        assert!(matches!(s.check(9, true), Err(StorageProblem::Bad(reason)) if reason.contains("`disk_sectors` = 9")));
        assert!(s.check(9, false).is_ok(), "a disk of another size is fine unless disk_sectors says");
        std::fs::write(&s.arbiter, "").unwrap();
        assert!(
            matches!(s.check(8, true), Err(StorageProblem::Bad(reason)) if reason.contains("not an arbiter record"))
        );
        std::fs::remove_file(&s.arbiter).unwrap();
        std::fs::write(&s.disk, [0u8; 1000]).unwrap();
        assert!(matches!(s.check(8, false), Err(StorageProblem::Bad(reason)) if reason.contains("1000 bytes")));
        std::fs::remove_file(&s.disk).unwrap();
        assert_eq!(s.check(8, true), Ok(None), "missing files are created later");
        s.create_if_missing(8).unwrap();
        assert_eq!(s.record().unwrap(), Record { epoch: 1, owner: NOBODY.into(), backup: None });
        let gone = SharedStorage {
            disk: "/nonexistent/d/disk".into(),
            arbiter: s.arbiter.clone(),
            sync_writes: false,
            journal: None,
        };
        assert!(matches!(gone.check(8, true), Err(StorageProblem::Bad(reason)) if reason.contains("does not exist")));
        let _ = std::fs::remove_dir_all(s.disk.parent().unwrap());
    }

    #[test]
    fn test_and_set_is_won_once_and_idempotently() {
        let s = storage("tas");
        assert_eq!(s.record().unwrap(), Record { epoch: 1, owner: NOBODY.into(), backup: None });
        assert_eq!(s.test_and_set(1, "a").unwrap(), ArbiterOutcome::Won { epoch: 2 });
        assert_eq!(s.test_and_set(1, "b").unwrap(), ArbiterOutcome::Lost { epoch: 2 });
        assert_eq!(s.test_and_set(1, "a").unwrap(), ArbiterOutcome::Won { epoch: 2 }, "retry of the winner");
        assert_eq!(s.record().unwrap(), Record { epoch: 2, owner: "a".into(), backup: None });
        let _ = std::fs::remove_dir_all(s.disk.parent().unwrap());
    }

    /// A live primary that enlists a joiner moves the record on with the joiner as the new epoch's backup; the
    /// record round-trips, and a record with anything after the backup line is not taken for one.
    #[test]
    fn an_enlisting_test_and_set_records_the_backup() {
        let s = storage("enlist");
        assert_eq!(s.test_and_set(1, "b/1").unwrap(), ArbiterOutcome::Won { epoch: 2 });
        assert_eq!(s.test_and_set_enlisting(2, "b/1", Some("a2/7")).unwrap(), ArbiterOutcome::Won { epoch: 3 });
        let expected = Record { epoch: 3, owner: "b/1".into(), backup: Some("a2/7".into()) };
        assert_eq!(s.record().unwrap(), expected);
        assert_eq!(Record::decode(&expected.encode()).unwrap(), expected);
        assert!(Record::decode(&format!("{}extra=1\n", expected.encode())).is_err());
        assert!(Record::decode("ftvm-arbiter v1\nepoch=3\nowner=b\nbackup\n").is_err());
        // A later go-live by anyone clears it.
        assert_eq!(s.test_and_set(3, "a2/7").unwrap(), ArbiterOutcome::Won { epoch: 4 });
        assert_eq!(s.record().unwrap().backup, None);
        let _ = std::fs::remove_dir_all(s.disk.parent().unwrap());
    }

    /// The journal keeps what landed, in the order the locks gave it: writes, then the grant, then the new
    /// epoch's writes; a fenced write, a lost test-and-set and the winner's idempotent retry add nothing.
    #[test]
    fn the_write_journal_keeps_landed_writes_and_grants_in_lock_order() {
        let s = storage("journal");
        let target = |sector| DiskTarget { tag: 1, sector, sectors: 1 };
        s.write(1, target(2), &[1u8; 512]).unwrap();
        s.write(1, target(3), &[2u8; 512]).unwrap();
        assert_eq!(s.test_and_set(1, "b/1").unwrap(), ArbiterOutcome::Won { epoch: 2 });
        assert_eq!(s.test_and_set(1, "b/1").unwrap(), ArbiterOutcome::Won { epoch: 2 }, "the winner's retry");
        assert_eq!(s.test_and_set(1, "a/2").unwrap(), ArbiterOutcome::Lost { epoch: 2 });
        assert_eq!(s.write(1, target(4), &[3u8; 512]), Err(StorageError::Fenced(2)));
        s.write(2, DiskTarget { tag: 2, sector: 4, sectors: 2 }, &[4u8; 1024]).unwrap();
        let journal = Journal::read(s.journal.as_ref().unwrap()).unwrap();
        assert_eq!(
            journal.entries,
            vec![
                JournalEntry::Write { epoch: 1, sector: 2, sectors: 1 },
                JournalEntry::Write { epoch: 1, sector: 3, sectors: 1 },
                JournalEntry::Grant { epoch: 2, owner: "b/1".into() },
                JournalEntry::Write { epoch: 2, sector: 4, sectors: 2 },
            ]
        );
        assert!(journal.bad_lines.is_empty());
        assert_eq!(journal.writes(), 3);
        assert!(journal.split_brain().is_empty(), "{:?}", journal.split_brain());
        let none = SharedStorage { journal: None, ..s.clone() };
        none.write(2, target(5), &[5u8; 512]).unwrap();
        assert_eq!(Journal::read(s.journal.as_ref().unwrap()).unwrap().writes(), 3, "no journal: nothing kept");
        let _ = std::fs::remove_dir_all(s.disk.parent().unwrap());
    }

    /// The journal is outside input to whoever reads it: anything that is not a line of it is kept aside,
    /// never a panic; a journal nobody wrote is empty.
    #[test]
    fn journal_lines_that_are_not_entries_are_set_aside() {
        let journal = Journal::parse(
            "write epoch=1 sector=2 sectors=1\ngarbage\nwrite epoch=x sector=1 sectors=1\nwrite epoch=1 sector=2\n\
             grant epoch=2 owner=\nwrite epoch=1 sector=2 sectors=1 more\ngrant epoch=2 owner=b/1\n",
        );
        assert_eq!(journal.entries.len(), 2, "{journal:?}");
        assert_eq!(journal.bad_lines.len(), 5, "{journal:?}");
        assert_eq!(Journal::read(Path::new("/nonexistent/journal")), Ok(Journal::default()));
    }

    /// A write of epoch 1 that landed after the arbiter granted epoch 2 is a deposed node writing: split brain,
    /// whatever the nodes say of themselves.
    #[test]
    fn a_deposed_write_after_a_newer_grant_is_split_brain() {
        let journal = Journal::parse(
            "write epoch=1 sector=2 sectors=1\ngrant epoch=2 owner=b/1\nwrite epoch=2 sector=2 sectors=1\n\
             write epoch=1 sector=3 sectors=4\n",
        );
        let evidence = journal.split_brain();
        assert_eq!(evidence.len(), 1, "{evidence:?}");
        assert!(evidence[0].contains("epoch 1") && evidence[0].contains("epoch 2"), "{evidence:?}");
        assert!(evidence[0].contains("sectors 3..7"), "{evidence:?}");
    }

    /// Two grants of one epoch: two nodes were told they own it.
    #[test]
    fn an_epoch_granted_twice_is_split_brain() {
        let journal = Journal::parse("grant epoch=2 owner=b/1\ngrant epoch=2 owner=a/2\n");
        let evidence = journal.split_brain();
        assert_eq!(evidence.len(), 1, "{evidence:?}");
        assert!(evidence[0].contains("epoch 2 was granted twice"), "{evidence:?}");
        assert!(evidence[0].contains("b/1") && evidence[0].contains("a/2"), "{evidence:?}");
        let clean =
            Journal::parse("write epoch=1 sector=2 sectors=1\ngrant epoch=2 owner=b/1\ngrant epoch=3 owner=a/2\n");
        assert!(clean.split_brain().is_empty(), "{:?}", clean.split_brain());
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
