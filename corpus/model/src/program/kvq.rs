//! `kvq`: the key-value service ([`ft::kv`]) with many requests in flight, as a model program.
//!
//! Where `kv` serves one request at a time, `kvq` keeps up to [`SLOTS`] requests outstanding, so the disk sees
//! what a real server gives it: overlapping writes to the same key, reads right after writes of the same sector,
//! and multi-sector requests. Each request takes a slot, and the slot's number is the request's disk tag, so
//! tags are reused out of order (only the device's submission order says which request came first).
//!
//! - A PUT writes the key's record sector; every fourth PUT instead rewrites the whole aligned block of
//!   [`BLOCK_SECTORS`] record sectors around the key from the in-memory table (a multi-sector write that
//!   overlaps the single-sector writes of its neighbours). It is answered when the write completes.
//! - A GET reads that block from the disk (a multi-sector read) and answers with the record it finds. The guest
//!   knows what it wrote before: a GET that reads anything other than the value of the last PUT it submitted
//!   for the key is answered `Inconsistent`, because storage (or the protocol in front of it) reordered or
//!   lost a write.
//! - Boot reads every record sector (eight 8-sector reads in flight at once) and rebuilds the table.
//!
//! While all slots are busy the receive buffer is not posted, so frames wait in the host (flow control).

use ft::abi;
use ft::kv::{self, Op, Request, Response, Status};

use super::super::machine::Registers;
use super::super::memory::{Memory, EVENT_DISK, EVENT_NET, EVENT_TIMER, PROGRAM_VARIABLES};
use super::super::mix64;
use super::{console_line, die, gpa, out, take_events, wait_for, Effect, BOOT};

/// Requests in flight at most.
pub(crate) const SLOTS: usize = 8;
/// Sectors of the block a GET reads and a block PUT writes.
pub(crate) const BLOCK_SECTORS: usize = 4;

// Variables.
const TICKS: usize = PROGRAM_VARIABLES; // u64
const PUTS: usize = PROGRAM_VARIABLES + 0x08; // u64: puts submitted (the records' and responses' version)
const CHECKSUM: usize = PROGRAM_VARIABLES + 0x10; // u64
const RECOVERED: usize = PROGRAM_VARIABLES + 0x18; // u64
const SERVED: usize = PROGRAM_VARIABLES + 0x20; // u64: responses sent
const INCONSISTENT: usize = PROGRAM_VARIABLES + 0x28; // u64: GETs that read what the guest did not write
const BOOT_DONE: usize = PROGRAM_VARIABLES + 0x30; // u32: bit per completed boot read
const BOOT_FAILED: usize = PROGRAM_VARIABLES + 0x34; // u32
const RX_POSTED: usize = PROGRAM_VARIABLES + 0x38; // u32: the receive buffer is posted
const BUSY: usize = PROGRAM_VARIABLES + 0x3c; // u32: bit per slot in use

// Buffers.
const BOOT_DESCRIPTORS: usize = 0x100;
const TX_BUFFER: usize = 0x300;
const RX_BUFFER: usize = 0x400;
const SLOT_RECORDS: usize = 0xc40;
const TABLE: usize = 0x1040;
const SLOT_BUFFERS: usize = 0x2000;
const BOOT_SECTORS: usize = 0x6000;

// A slot record: the request and its disk descriptor.
const SLOT_RECORD_BYTES: usize = 128;
const SLOT_EXPECTED: usize = 0; // u64: GET: the value the guest last wrote for the key
const SLOT_KNOWN: usize = 8; // u32: GET: whether that value is known
const SLOT_VERSION: usize = 16; // u64: PUT: its version
const SLOT_FRAME: usize = 32; // peer || request
const SLOT_DESCRIPTOR: usize = 80;
const SLOT_BUFFER_BYTES: usize = BLOCK_SECTORS * abi::SECTOR_BYTES;
// A table entry: value u64, version u64, known u32.
const TABLE_ENTRY_BYTES: usize = 24;

const KEYS: usize = kv::KEYS as usize;
const BOOT_READS: usize = 8;
const BOOT_READ_SECTORS: usize = KEYS / BOOT_READS;
const BOOT_DONE_ALL: u32 = (1 << BOOT_READS) - 1;
/// Disk tags of the slots are `FIRST_SLOT_TAG + slot`; boot reads use `0..BOOT_READS`.
const FIRST_SLOT_TAG: u32 = 16;
const FRAME_BYTES: usize = kv::PEER_BYTES + kv::REQUEST_BYTES;
const TX_FRAME_BYTES: usize = kv::PEER_BYTES + kv::RESPONSE_BYTES;
const RX_EMPTY: u32 = u32::MAX;
const TIMER_PERIOD_US: u32 = 10_000;
const REPORT_EVERY: u64 = 100;
/// Every this many puts, the put rewrites its whole block.
const BLOCK_PUT_EVERY: u64 = 4;

const _: () = assert!(PROGRAM_VARIABLES + 0x40 <= BOOT_DESCRIPTORS);
const _: () = assert!(BOOT_DESCRIPTORS + BOOT_READS * abi::DISK_REQUEST_BYTES <= super::super::memory::CONSOLE_BUFFER);
const _: () = assert!(TX_BUFFER + 4 + TX_FRAME_BYTES <= RX_BUFFER);
const _: () = assert!(RX_BUFFER + 4 + abi::NET_RX_BUFFER_BYTES <= SLOT_RECORDS);
const _: () = assert!(SLOT_DESCRIPTOR + abi::DISK_REQUEST_BYTES <= SLOT_RECORD_BYTES);
const _: () = assert!(SLOT_FRAME + FRAME_BYTES <= SLOT_DESCRIPTOR);
const _: () = assert!(SLOT_RECORDS + SLOTS * SLOT_RECORD_BYTES <= TABLE);
const _: () = assert!(TABLE + KEYS * TABLE_ENTRY_BYTES <= SLOT_BUFFERS);
const _: () = assert!(SLOT_BUFFERS + SLOTS * SLOT_BUFFER_BYTES <= BOOT_SECTORS);
const _: () = assert!(BOOT_SECTORS + KEYS * abi::SECTOR_BYTES <= super::super::memory::MEMORY_BYTES);
const _: () = assert!(SLOTS <= 32);

// Labels.
const READ_SUBMIT: u32 = BOOT + 1;
const BOOT_DRAIN: u32 = BOOT + 2;
const PARSE: u32 = BOOT + 3;
const READY: u32 = BOOT + 4;
const SERVE: u32 = BOOT + 5;
const EVENTS: u32 = BOOT + 6;
const TICK: u32 = BOOT + 7;
const FRAME: u32 = BOOT + 8;
const SUBMIT: u32 = BOOT + 9;
const DRAIN: u32 = BOOT + 10;
const COMPLETE: u32 = BOOT + 11;
const REPORT: u32 = BOOT + 12;

// Registers.
const SLOT_REGISTER: usize = 0;
const STATUS_REGISTER: usize = 1;
const TAG_REGISTER: usize = 2;
const LINE_REGISTER: usize = 3;

pub(crate) fn step(registers: &mut Registers, memory: &mut Memory) -> Effect {
    match registers.label {
        BOOT => {
            registers.goto(READ_SUBMIT);
            out(abi::TIMER_PERIOD_US, TIMER_PERIOD_US)
        }
        READ_SUBMIT => read_submit(registers, memory),
        BOOT_DRAIN => boot_drain(registers, memory),
        PARSE => parse(registers, memory),
        READY => ready(registers, memory),
        SERVE => serve(registers, memory),
        EVENTS => events(registers, memory),
        TICK => tick(registers, memory),
        FRAME => frame(registers, memory),
        SUBMIT => submit(registers, memory),
        DRAIN => drain(registers, memory),
        COMPLETE => complete(registers, memory),
        REPORT => report(registers, memory),
        _ => die(registers),
    }
}

fn write_descriptor(memory: &mut Memory, at: usize, op: u32, tag: u32, sector: usize, sectors: usize, buffer: usize) {
    memory.set_u32(at, op);
    memory.set_u32(at + 4, tag);
    memory.set_u64(at + 8, sector as u64);
    memory.set_u32(at + 16, sectors as u32);
    memory.set_u32(at + 20, 0);
    memory.set_u64(at + 24, buffer as u64);
}

fn mix_checksum(memory: &mut Memory, value: u64) {
    memory.set_u64(CHECKSUM, mix64(memory.u64(CHECKSUM) ^ value));
}

// ---- boot ------------------------------------------------------------------------------------------------------

/// Even steps write boot descriptor `step / 2`, odd steps submit it; then wait for all of them.
fn read_submit(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let read = (registers.step / 2) as usize;
    let descriptor = BOOT_DESCRIPTORS + read * abi::DISK_REQUEST_BYTES;
    if registers.step.is_multiple_of(2) {
        let buffer = BOOT_SECTORS + read * BOOT_READ_SECTORS * abi::SECTOR_BYTES;
        let first_sector = 1 + read * BOOT_READ_SECTORS;
        write_descriptor(memory, descriptor, abi::DISK_OP_READ, read as u32, first_sector, BOOT_READ_SECTORS, buffer);
        registers.step += 1;
        return Effect::Continue;
    }
    registers.step = registers.step.wrapping_add(1);
    if registers.step as usize >= 2 * BOOT_READS {
        wait_for(registers, EVENT_DISK, BOOT_DRAIN);
    }
    out(abi::DISK_SUBMIT, gpa(descriptor))
}

/// Pops boot completions; when every boot read is in, parses the records.
fn boot_drain(registers: &mut Registers, memory: &mut Memory) -> Effect {
    match registers.step {
        0 => {
            take_events(memory, EVENT_DISK);
            registers.step = 1;
            Effect::In { port: abi::DISK_COMPLETION }
        }
        1 if registers.input == abi::DISK_NONE => {
            if memory.u32(BOOT_DONE) == BOOT_DONE_ALL {
                registers.goto(PARSE);
            } else {
                wait_for(registers, EVENT_DISK, BOOT_DRAIN);
            }
            Effect::Continue
        }
        1 => {
            registers.r[TAG_REGISTER] = u64::from(registers.input);
            registers.step = 2;
            Effect::In { port: abi::DISK_STATUS }
        }
        _ => {
            let tag = registers.r[TAG_REGISTER];
            if tag < BOOT_READS as u64 {
                memory.set_u32(BOOT_DONE, memory.u32(BOOT_DONE) | 1 << tag);
                if registers.input != abi::DiskStatus::Ok as u32 {
                    memory.set_u32(BOOT_FAILED, memory.u32(BOOT_FAILED) | 1 << tag);
                }
            }
            registers.step = 1;
            Effect::In { port: abi::DISK_COMPLETION }
        }
    }
}

/// Step `k` rebuilds key `k` from its record sector.
fn parse(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let key = registers.step as usize;
    let read_bit = 1u32.checked_shl((key / BOOT_READ_SECTORS) as u32).unwrap_or(0);
    let read_failed = memory.u32(BOOT_FAILED) & read_bit != 0;
    let sector = BOOT_SECTORS + key * abi::SECTOR_BYTES;
    let entry = TABLE + key * TABLE_ENTRY_BYTES;
    if read_failed {
        memory.set_u32(entry + 16, 0);
    } else {
        let valid = memory.u32(sector) == kv::MAGIC && memory.u64(sector + 8) == key as u64;
        let (value, version) = if valid { (memory.u64(sector + 16), memory.u64(sector + 24)) } else { (0, 0) };
        memory.set_u64(entry, value);
        memory.set_u64(entry + 8, version);
        memory.set_u32(entry + 16, 1);
        if valid {
            memory.set_u64(RECOVERED, memory.u64(RECOVERED).wrapping_add(1));
            memory.set_u64(PUTS, memory.u64(PUTS).max(version));
        }
    }
    registers.step = registers.step.wrapping_add(1);
    if registers.step as usize >= KEYS {
        registers.goto(READY);
    }
    Effect::Continue
}

fn ready(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step == 0 {
        let recovered = memory.u64(RECOVERED);
        let line = console_line(memory, format_args!("kvq: ready, {recovered} keys recovered, {SLOTS} slots\n"));
        registers.r[LINE_REGISTER] = u64::from(line);
        registers.step = 1;
        return Effect::Continue;
    }
    registers.goto(SERVE);
    out(abi::CONSOLE_WRITE, registers.r[LINE_REGISTER] as u32)
}

// ---- serving ---------------------------------------------------------------------------------------------------

fn free_slot(memory: &Memory) -> Option<usize> {
    let busy = memory.u32(BUSY);
    (0..SLOTS).find(|slot| busy & (1 << slot) == 0)
}

fn slot_record(slot: usize) -> usize {
    SLOT_RECORDS + slot * SLOT_RECORD_BYTES
}

fn slot_buffer(slot: usize) -> usize {
    SLOT_BUFFERS + slot * SLOT_BUFFER_BYTES
}

/// The main loop: post the receive buffer while a slot is free (two steps: mark it empty, post it), then wait
/// for a tick, a frame or a disk completion.
fn serve(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let can_post = memory.u32(RX_POSTED) == 0 && free_slot(memory).is_some();
    match registers.step {
        0 if can_post => {
            memory.set_u32(RX_BUFFER, RX_EMPTY);
            registers.step = 1;
            Effect::Continue
        }
        1 => {
            memory.set_u32(RX_POSTED, 1);
            wait_for(registers, EVENT_TIMER | EVENT_NET | EVENT_DISK, EVENTS);
            out(abi::NET_RX_POST, gpa(RX_BUFFER))
        }
        _ => {
            wait_for(registers, EVENT_TIMER | EVENT_NET | EVENT_DISK, EVENTS);
            Effect::Continue
        }
    }
}

/// Where the wait routine returns: completions first (they free slots), then a tick, then a frame. Each test
/// is one atomic test-and-clear, so an event raised meanwhile is never lost.
fn events(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if take_events(memory, EVENT_DISK) != 0 {
        registers.goto(DRAIN);
    } else if take_events(memory, EVENT_TIMER) != 0 {
        registers.goto(TICK);
    } else if take_events(memory, EVENT_NET) != 0 {
        registers.goto(FRAME);
    } else {
        registers.goto(SERVE);
    }
    Effect::Continue
}

fn tick(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step == 0 {
        let ticks = memory.u64(TICKS).wrapping_add(1);
        memory.set_u64(TICKS, ticks);
        if !ticks.is_multiple_of(10) {
            registers.goto(SERVE);
            return Effect::Continue;
        }
        registers.step = 1;
        return Effect::In { port: abi::CLOCK_LO };
    }
    mix_checksum(memory, u64::from(registers.input));
    registers.goto(SERVE);
    Effect::Continue
}

/// A frame arrived: copy it into a free slot, or drop it if it is malformed (the buffer is posted again).
fn frame(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let len = memory.u32(RX_BUFFER);
    if len == RX_EMPTY || memory.u32(RX_POSTED) == 0 {
        registers.goto(SERVE);
        return Effect::Continue;
    }
    memory.set_u32(RX_POSTED, 0);
    let len = len as usize;
    let request = memory.slice(RX_BUFFER + 4, len).filter(|_| len == FRAME_BYTES).map(|frame| &frame[kv::PEER_BYTES..]);
    let request = request.and_then(|request| Request::decode(request).ok());
    let (Some(request), Some(slot)) = (request, free_slot(memory)) else {
        registers.goto(SERVE);
        return Effect::Continue;
    };
    memory.set_u32(BUSY, memory.u32(BUSY) | 1 << slot);
    memory.copy(RX_BUFFER + 4, slot_record(slot) + SLOT_FRAME, FRAME_BYTES);
    registers.r[SLOT_REGISTER] = slot as u64;
    if request.key >= kv::KEYS {
        memory.set_u64(slot_record(slot) + SLOT_EXPECTED, 0);
        registers.r[STATUS_REGISTER] = Status::BadRequest as u64;
        registers.goto(COMPLETE);
        registers.step = 1;
        return Effect::Continue;
    }
    registers.goto(SUBMIT);
    Effect::Continue
}

fn slot_request(memory: &Memory, slot: usize) -> Option<Request> {
    let bytes = memory.slice(slot_record(slot) + SLOT_FRAME + kv::PEER_BYTES, kv::REQUEST_BYTES)?;
    Request::decode(bytes).ok()
}

/// The aligned block of record sectors around `key`'s sector.
fn block_of(key: usize) -> usize {
    (1 + key) / BLOCK_SECTORS * BLOCK_SECTORS
}

fn write_record(memory: &mut Memory, at: usize, key: usize, value: u64, version: u64) {
    memory.zero(at, abi::SECTOR_BYTES);
    memory.set_u32(at, kv::MAGIC);
    memory.set_u64(at + 8, key as u64);
    memory.set_u64(at + 16, value);
    memory.set_u64(at + 24, version);
}

/// Step 0 prepares the request in the slot (record data, table update, descriptor); step 1 submits it.
fn submit(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let slot = registers.r[SLOT_REGISTER] as usize % SLOTS;
    let record = slot_record(slot);
    if registers.step == 1 {
        registers.goto(SERVE);
        return out(abi::DISK_SUBMIT, gpa(record + SLOT_DESCRIPTOR));
    }
    let Some(request) = slot_request(memory, slot) else { return die(registers) };
    let key = request.key as usize;
    let tag = FIRST_SLOT_TAG + slot as u32;
    let buffer = slot_buffer(slot);
    match request.op {
        Op::Put => {
            let version = memory.u64(PUTS).wrapping_add(1);
            memory.set_u64(PUTS, version);
            memory.set_u64(record + SLOT_VERSION, version);
            let entry = TABLE + key * TABLE_ENTRY_BYTES;
            memory.set_u64(entry, request.value);
            memory.set_u64(entry + 8, version);
            memory.set_u32(entry + 16, 1);
            if version.is_multiple_of(BLOCK_PUT_EVERY) {
                let block = block_of(key);
                for (index, sector) in (block..block + BLOCK_SECTORS).enumerate() {
                    let at = buffer + index * abi::SECTOR_BYTES;
                    match sector.checked_sub(1).filter(|key| *key < KEYS) {
                        Some(other) => {
                            let entry = TABLE + other * TABLE_ENTRY_BYTES;
                            let (value, version) = (memory.u64(entry), memory.u64(entry + 8));
                            if version == 0 {
                                memory.zero(at, abi::SECTOR_BYTES);
                            } else {
                                write_record(memory, at, other, value, version);
                            }
                        }
                        None => memory.zero(at, abi::SECTOR_BYTES),
                    }
                }
                let descriptor = record + SLOT_DESCRIPTOR;
                write_descriptor(memory, descriptor, abi::DISK_OP_WRITE, tag, block, BLOCK_SECTORS, buffer);
            } else {
                write_record(memory, buffer, key, request.value, version);
                write_descriptor(memory, record + SLOT_DESCRIPTOR, abi::DISK_OP_WRITE, tag, 1 + key, 1, buffer);
            }
        }
        Op::Get => {
            let entry = TABLE + key * TABLE_ENTRY_BYTES;
            memory.set_u64(record + SLOT_EXPECTED, memory.u64(entry));
            memory.set_u32(record + SLOT_KNOWN, memory.u32(entry + 16));
            let block = block_of(key);
            write_descriptor(memory, record + SLOT_DESCRIPTOR, abi::DISK_OP_READ, tag, block, BLOCK_SECTORS, buffer);
        }
    }
    mix_checksum(memory, request.request ^ request.value);
    registers.step = 1;
    Effect::Continue
}

/// Pops completions until `DISK_NONE`; each completes its slot.
fn drain(registers: &mut Registers, memory: &mut Memory) -> Effect {
    match registers.step {
        0 => {
            registers.step = 1;
            Effect::In { port: abi::DISK_COMPLETION }
        }
        1 if registers.input == abi::DISK_NONE => {
            registers.goto(SERVE);
            Effect::Continue
        }
        1 => {
            registers.r[TAG_REGISTER] = u64::from(registers.input);
            registers.step = 2;
            Effect::In { port: abi::DISK_STATUS }
        }
        _ => {
            let slot = registers.r[TAG_REGISTER].wrapping_sub(u64::from(FIRST_SLOT_TAG));
            if slot >= SLOTS as u64 || memory.u32(BUSY) & (1 << slot) == 0 {
                // A completion nobody waits for (a boot read is done by now): ignore it.
                registers.step = 0;
                return Effect::Continue;
            }
            registers.r[SLOT_REGISTER] = slot;
            registers.r[STATUS_REGISTER] = u64::from(registers.input);
            registers.goto(COMPLETE);
            Effect::Continue
        }
    }
}

/// Step 0 turns the slot's disk status into its answer (checking what a GET read), step 1 builds the
/// response, step 2 sends it and frees the slot.
fn complete(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let slot = registers.r[SLOT_REGISTER] as usize % SLOTS;
    let record = slot_record(slot);
    let Some(request) = slot_request(memory, slot) else { return die(registers) };
    match registers.step {
        0 => {
            let ok = registers.r[STATUS_REGISTER] == abi::DiskStatus::Ok as u64;
            let key = request.key as usize % KEYS;
            let (status, value) = match (request.op, ok) {
                (_, false) => {
                    // The table no longer knows what the disk holds for this key.
                    memory.set_u32(TABLE + key * TABLE_ENTRY_BYTES + 16, 0);
                    (Status::IoError, 0)
                }
                (Op::Put, true) => (Status::Ok, request.value),
                (Op::Get, true) => {
                    let at = slot_buffer(slot) + (1 + key - block_of(key)) * abi::SECTOR_BYTES;
                    let valid = memory.u32(at) == kv::MAGIC && memory.u64(at + 8) == key as u64;
                    let value = if valid { memory.u64(at + 16) } else { 0 };
                    let known = memory.u32(record + SLOT_KNOWN) != 0;
                    if known && value != memory.u64(record + SLOT_EXPECTED) {
                        memory.set_u64(INCONSISTENT, memory.u64(INCONSISTENT).wrapping_add(1));
                        (Status::Inconsistent, value)
                    } else {
                        (Status::Ok, value)
                    }
                }
            };
            registers.r[STATUS_REGISTER] = status as u64;
            memory.set_u64(record + SLOT_EXPECTED, value);
            registers.step = 1;
            Effect::Continue
        }
        1 => {
            let status = match registers.r[STATUS_REGISTER] {
                0 => Status::Ok,
                1 => Status::BadRequest,
                2 => Status::IoError,
                _ => Status::Inconsistent,
            };
            let version = if request.op == Op::Put { memory.u64(record + SLOT_VERSION) } else { memory.u64(PUTS) };
            let response = Response {
                op: request.op,
                client: request.client,
                status,
                request: request.request,
                key: request.key,
                value: memory.u64(record + SLOT_EXPECTED),
                version,
            };
            memory.set_u32(TX_BUFFER, TX_FRAME_BYTES as u32);
            memory.copy(record + SLOT_FRAME, TX_BUFFER + 4, kv::PEER_BYTES);
            memory.write(TX_BUFFER + 4 + kv::PEER_BYTES, &response.encode());
            registers.step = 2;
            Effect::Continue
        }
        _ => {
            memory.set_u32(BUSY, memory.u32(BUSY) & !(1 << slot));
            let served = memory.u64(SERVED).wrapping_add(1);
            memory.set_u64(SERVED, served);
            registers.goto(if served.is_multiple_of(REPORT_EVERY) { REPORT } else { DRAIN });
            out(abi::NET_TX, gpa(TX_BUFFER))
        }
    }
}

fn report(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step == 0 {
        let (served, puts, inconsistent) = (memory.u64(SERVED), memory.u64(PUTS), memory.u64(INCONSISTENT));
        let checksum = memory.u64(CHECKSUM);
        let line = format_args!(
            "kvq: {served} answers, {puts} puts, {inconsistent} inconsistent reads, checksum={checksum:016x}\n"
        );
        registers.r[LINE_REGISTER] = u64::from(console_line(memory, line));
        registers.step = 1;
        return Effect::Continue;
    }
    registers.goto(DRAIN);
    out(abi::CONSOLE_WRITE, registers.r[LINE_REGISTER] as u32)
}
