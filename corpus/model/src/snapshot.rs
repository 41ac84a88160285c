//! The model guest's snapshot format and state hash.
//!
//! Snapshot (little-endian): magic u32, version u32, core ([`CORE_BYTES`]), memory ([`MEMORY_BYTES`]), then an
//! xxh3 checksum u64 of everything before it. The size is fixed, so restore checks the length first; every field
//! is then validated, and a snapshot decodes only if re-encoding it gives the same bytes.

use ft::GuestError;
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use super::interrupt::{Handler, Pending, HANDLER_INSTRUCTIONS};
use super::machine::{Core, Registers, REGISTERS};
use super::memory::{Memory, MEMORY_BYTES};
use super::workload::Workload;

/// "MDLG".
const MAGIC: u32 = 0x474c_444d;
const VERSION: u32 = 1;
pub(crate) const HEADER_BYTES: usize = 8;
pub(crate) const CHECKSUM_BYTES: usize = 8;

/// Encoded size of a [`Core`]: workload 10, five u32 registers 20, general registers 64, IF 1, port-in 3,
/// handler 3, pending 32, counters 16.
pub(crate) const CORE_BYTES: usize = 10 + 20 + 8 * REGISTERS + 1 + 3 + 3 + 32 + 16;

/// Total snapshot size.
pub(crate) const SNAPSHOT_BYTES: usize = HEADER_BYTES + CORE_BYTES + MEMORY_BYTES + CHECKSUM_BYTES;

/// Digest of memory and every register, pending vector and counter.
pub(crate) fn state_hash(core: &Core, memory: &Memory) -> u64 {
    let mut core_bytes = [0u8; CORE_BYTES];
    encode_core(core, &mut core_bytes);
    let mut hasher = Xxh3Default::new();
    hasher.update(memory.bytes());
    hasher.update(&core_bytes);
    hasher.digest()
}

pub(crate) fn encode(core: &Core, memory: &Memory) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SNAPSHOT_BYTES);
    bytes.extend_from_slice(&MAGIC.to_le_bytes());
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    let mut core_bytes = [0u8; CORE_BYTES];
    encode_core(core, &mut core_bytes);
    bytes.extend_from_slice(&core_bytes);
    bytes.extend_from_slice(memory.bytes());
    let checksum = xxh3_64(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    assert_eq!(bytes.len(), SNAPSHOT_BYTES);
    bytes
}

pub(crate) fn decode(bytes: &[u8]) -> Result<(Core, Memory), GuestError> {
    if bytes.len() != SNAPSHOT_BYTES {
        return Err(bad(format!("{} bytes, expected {SNAPSHOT_BYTES}", bytes.len())));
    }
    let (body, checksum) = bytes.split_at(SNAPSHOT_BYTES - CHECKSUM_BYTES);
    let mut reader = Reader { bytes: checksum, at: 0 };
    if reader.u64()? != xxh3_64(body) {
        return Err(bad("checksum mismatch".to_string()));
    }
    let mut reader = Reader { bytes: body, at: 0 };
    let magic = reader.u32()?;
    if magic != MAGIC {
        return Err(bad(format!("magic {magic:#x}")));
    }
    let version = reader.u32()?;
    if version != VERSION {
        return Err(bad(format!("version {version}, this build reads {VERSION}")));
    }
    let core = decode_core(&mut reader)?;
    let mut memory = Memory::new();
    memory.bytes_mut().copy_from_slice(reader.take(MEMORY_BYTES)?);
    assert_eq!(reader.at, body.len());

    let mut reencoded = [0u8; CORE_BYTES];
    encode_core(&core, &mut reencoded);
    if reencoded[..] != body[HEADER_BYTES..HEADER_BYTES + CORE_BYTES] {
        return Err(bad("non-canonical core encoding".to_string()));
    }
    Ok((core, memory))
}

/// "MDLC": the CPU state alone, for the cut of a clone (memory goes across in pages).
const CPU_MAGIC: u32 = 0x434c_444d;
const CPU_VERSION: u32 = 1;
/// Size of the CPU state: header, core, checksum.
pub(crate) const CPU_BYTES: usize = HEADER_BYTES + CORE_BYTES + CHECKSUM_BYTES;

/// The CPU state (magic, version, core, xxh3 checksum), as the snapshot lays it out but without memory.
pub(crate) fn encode_cpu(core: &Core) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(CPU_BYTES);
    bytes.extend_from_slice(&CPU_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&CPU_VERSION.to_le_bytes());
    let mut core_bytes = [0u8; CORE_BYTES];
    encode_core(core, &mut core_bytes);
    bytes.extend_from_slice(&core_bytes);
    let checksum = xxh3_64(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    assert_eq!(bytes.len(), CPU_BYTES);
    bytes
}

/// Decodes what [`encode_cpu`] wrote; every check of [`decode`] applies.
pub(crate) fn decode_cpu(bytes: &[u8]) -> Result<Core, GuestError> {
    if bytes.len() != CPU_BYTES {
        return Err(bad(format!("CPU state of {} bytes, expected {CPU_BYTES}", bytes.len())));
    }
    let (body, checksum) = bytes.split_at(CPU_BYTES - CHECKSUM_BYTES);
    if (Reader { bytes: checksum, at: 0 }).u64()? != xxh3_64(body) {
        return Err(bad("CPU state checksum mismatch".to_string()));
    }
    let mut reader = Reader { bytes: body, at: 0 };
    let magic = reader.u32()?;
    if magic != CPU_MAGIC {
        return Err(bad(format!("CPU state magic {magic:#x}")));
    }
    let version = reader.u32()?;
    if version != CPU_VERSION {
        return Err(bad(format!("CPU state version {version}, this build reads {CPU_VERSION}")));
    }
    let core = decode_core(&mut reader)?;
    let mut reencoded = [0u8; CORE_BYTES];
    encode_core(&core, &mut reencoded);
    if reencoded[..] != body[HEADER_BYTES..] {
        return Err(bad("non-canonical core encoding".to_string()));
    }
    Ok(core)
}

fn bad(reason: String) -> GuestError {
    GuestError::BadSnapshot(reason)
}

struct Writer<'a> {
    bytes: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, data: &[u8]) {
        self.bytes[self.at..self.at + data.len()].copy_from_slice(data);
        self.at += data.len();
    }
}

fn encode_core(core: &Core, out: &mut [u8; CORE_BYTES]) {
    let mut writer = Writer { bytes: out, at: 0 };
    let (tag, ticks_max) = match core.workload {
        Workload::Kv => (0u8, None),
        Workload::Timer { ticks_max } => (1, ticks_max),
        Workload::Cpu => (2, None),
        Workload::KvPipelined => (3, None),
    };
    writer.put(&[tag, u8::from(ticks_max.is_some())]);
    writer.put(&ticks_max.unwrap_or(0).to_le_bytes());
    let registers = &core.registers;
    for value in [registers.label, registers.step, registers.ret, registers.wait_events, registers.input] {
        writer.put(&value.to_le_bytes());
    }
    for value in registers.r {
        writer.put(&value.to_le_bytes());
    }
    writer.put(&[u8::from(registers.interrupts_enabled), u8::from(core.port_in.is_some())]);
    writer.put(&core.port_in.unwrap_or(0).to_le_bytes());
    writer.put(&[u8::from(core.handler.active), core.handler.vector, core.handler.step]);
    for word in core.pending.words {
        writer.put(&word.to_le_bytes());
    }
    writer.put(&core.instructions.to_le_bytes());
    writer.put(&core.exits.to_le_bytes());
    assert_eq!(writer.at, CORE_BYTES);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], GuestError> {
        let end = self.at.checked_add(len).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| bad("truncated".to_string()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GuestError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, GuestError> {
        Ok(self.array::<1>()?[0])
    }

    fn bool(&mut self, field: &str) -> Result<bool, GuestError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(bad(format!("{field} is {other}, not a boolean"))),
        }
    }

    fn u16(&mut self) -> Result<u16, GuestError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, GuestError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GuestError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

fn decode_workload(reader: &mut Reader<'_>) -> Result<Workload, GuestError> {
    let tag = reader.u8()?;
    let has_ticks_max = reader.bool("ticks_max flag")?;
    let ticks_max = reader.u64()?;
    let canonical = has_ticks_max || ticks_max == 0;
    match (tag, has_ticks_max) {
        _ if !canonical => Err(bad("ticks_max without its flag".to_string())),
        (0, false) => Ok(Workload::Kv),
        (1, _) => Ok(Workload::Timer { ticks_max: has_ticks_max.then_some(ticks_max) }),
        (2, false) => Ok(Workload::Cpu),
        (3, false) => Ok(Workload::KvPipelined),
        _ => Err(bad(format!("workload tag {tag}"))),
    }
}

fn decode_core(reader: &mut Reader<'_>) -> Result<Core, GuestError> {
    let workload = decode_workload(reader)?;
    let label = reader.u32()?;
    let step = reader.u32()?;
    let ret = reader.u32()?;
    let wait_events = reader.u32()?;
    let input = reader.u32()?;
    let mut r = [0u64; REGISTERS];
    for value in &mut r {
        *value = reader.u64()?;
    }
    let interrupts_enabled = reader.bool("interrupt flag")?;
    let has_port_in = reader.bool("port-in flag")?;
    let port = reader.u16()?;
    if !has_port_in && port != 0 {
        return Err(bad("port-in port without its flag".to_string()));
    }
    let handler = Handler { active: reader.bool("handler flag")?, vector: reader.u8()?, step: reader.u8()? };
    if handler.step >= HANDLER_INSTRUCTIONS || (!handler.active && handler != Handler::default()) {
        return Err(bad(format!("handler state {handler:?}")));
    }
    if handler.active && interrupts_enabled {
        return Err(bad("interrupts enabled inside the handler".to_string()));
    }
    let mut pending = Pending::default();
    for word in &mut pending.words {
        *word = reader.u64()?;
    }
    let registers = Registers { label, step, ret, wait_events, input, r, interrupts_enabled };
    let (instructions, exits) = (reader.u64()?, reader.u64()?);
    // No guest counts that far (centuries of instructions); a count near u64::MAX would overflow the slice
    // arithmetic of whoever runs the restored guest.
    if instructions > COUNT_MAX || exits > COUNT_MAX {
        return Err(bad(format!("position of {instructions} instructions, {exits} exits")));
    }
    Ok(Core { workload, registers, pending, handler, port_in: has_port_in.then_some(port), instructions, exits })
}

/// The largest instruction or exit count a snapshot may carry.
const COUNT_MAX: u64 = 1 << 62;
