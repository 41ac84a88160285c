//! What the logging channel carries: the entries of the FT log.
//!
//! An entry is either an input (something from outside the guest that the backup must take from the log instead
//! of from a device), an output record (so the backup can check it produced the same output and so the primary can
//! hold the output until the record is acknowledged), a control operation, or a checkpoint (state hash).
//! docs/log-format.md gives the byte layout.

use crate::abi::DiskStatus;
use crate::guest::StateHash;
use crate::position::Position;

/// Index of an entry in the log; the first entry has index 1 so that 0 can mean "nothing acknowledged".
pub type LogIndex = u64;

/// A non-deterministic input and the value the primary saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Answer to the guest's `IN CLOCK_LO`: guest nanoseconds.
    Clock { ns: u64 },
    /// Answer to the guest's `IN ENTROPY`.
    Entropy { value: u32 },
    /// The periodic timer expired: `VECTOR_TIMER` raised.
    Timer,
    /// A frame DMA'd into the posted receive buffer, then `VECTOR_NET` raised.
    NetReceive { frame: Vec<u8> },
    /// A disk request finished: read data DMA'd from the bounce buffer into the guest, then `VECTOR_DISK`.
    DiskComplete { tag: u32, status: DiskStatus, data: Vec<u8> },
}

/// Which device an output goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutputKind {
    Console = 1,
    NetTransmit = 2,
    DiskWrite = 3,
}

/// An external output produced by the guest. Outputs are numbered in the order the guest produced them; the
/// number is deterministic, so primary and backup agree on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub seq: u64,
    pub kind: OutputKind,
    /// Console bytes, a frame (peer || payload), or the data of a disk write.
    pub bytes: Vec<u8>,
    /// For disk writes: the guest's tag and first sector.
    pub disk: Option<DiskTarget>,
}

/// Where a disk request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskTarget {
    pub tag: u32,
    pub sector: u64,
    pub sectors: u32,
}

impl Output {
    pub fn digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.bytes)
    }
}

/// The log's record of an output: enough for the backup to check it produced the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    pub seq: u64,
    pub kind: OutputKind,
    pub length_bytes: u32,
    pub digest: u64,
}

impl OutputRecord {
    pub fn of(output: &Output) -> OutputRecord {
        OutputRecord {
            seq: output.seq,
            kind: output.kind,
            length_bytes: u32::try_from(output.bytes.len()).unwrap_or(u32::MAX),
            digest: output.digest(),
        }
    }
}

/// FT control operations carried in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// The guest powered off: the backup must stop too, not go live.
    PowerOff { status: u32 },
}

/// One entry of the FT log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Input {
        position: Position,
        pc: u64,
        input: Input,
    },
    Output {
        position: Position,
        pc: u64,
        record: OutputRecord,
    },
    Control {
        position: Position,
        pc: u64,
        control: Control,
    },
    /// Hash of guest and device state at `position`, after every earlier entry was applied.
    Checkpoint {
        position: Position,
        hash: StateHash,
    },
}

impl Entry {
    pub fn position(&self) -> Position {
        match self {
            Entry::Input { position, .. }
            | Entry::Output { position, .. }
            | Entry::Control { position, .. }
            | Entry::Checkpoint { position, .. } => *position,
        }
    }

    /// A short human-readable name for timelines and divergence reports.
    pub fn describe(&self) -> String {
        match self {
            Entry::Input { input, pc, .. } => match input {
                Input::Clock { ns } => format!("clock read {ns}ns at pc {pc:#x}"),
                Input::Entropy { value } => format!("entropy read {value:#x} at pc {pc:#x}"),
                Input::Timer => format!("timer interrupt at pc {pc:#x}"),
                Input::NetReceive { frame } => {
                    format!("net receive {} bytes at pc {pc:#x}", frame.len())
                }
                Input::DiskComplete { tag, status, data } => {
                    format!("disk completion tag {tag} {status:?} {} bytes at pc {pc:#x}", data.len())
                }
            },
            Entry::Output { record, pc, .. } => {
                format!("output #{} {:?} {} bytes at pc {pc:#x}", record.seq, record.kind, record.length_bytes)
            }
            Entry::Control { control, pc, .. } => format!("{control:?} at pc {pc:#x}"),
            Entry::Checkpoint { hash, .. } => format!("checkpoint {hash:016x}"),
        }
    }
}
