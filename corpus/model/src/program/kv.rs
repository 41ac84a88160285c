//! The key-value service ([`ft::kv`]) as a model program.
//!
//! Boot: start a 10 ms timer, read the 64 key sectors with eight 8-sector requests all in flight at once, rebuild
//! the table from the records, print "kv: ready, N keys recovered". Then, per frame: post the receive buffer,
//! sleep until it is filled, digest the request (184 instructions, so interrupts land mid-computation), read
//! the clock and entropy into a checksum, persist a put to disk and wait for its completion, transmit the answer.
//! Malformed frames are dropped; a key out of range is answered with `BadRequest`.

use ft::abi;
use ft::kv::{self, Op, Request, Response, Status};

use super::super::machine::Registers;
use super::super::memory::{Memory, EVENT_DISK, EVENT_NET, EVENT_TIMER, PROGRAM_VARIABLES};
use super::super::mix64;
use super::{console_line, die, gpa, out, take_events, wait_for, Effect, BOOT};

// Variables.
const TICKS: usize = PROGRAM_VARIABLES; // u64
const REQUESTS: usize = PROGRAM_VARIABLES + 0x08; // u64: well-formed frames served
const PUTS: usize = PROGRAM_VARIABLES + 0x10; // u64: puts applied (the responses' version)
const CHECKSUM: usize = PROGRAM_VARIABLES + 0x18; // u64: clock, entropy and request digests
const RECOVERED: usize = PROGRAM_VARIABLES + 0x20; // u64: records found at boot
const BOOT_DONE: usize = PROGRAM_VARIABLES + 0x28; // u32: bit per completed boot read
const BOOT_FAILED: usize = PROGRAM_VARIABLES + 0x2c; // u32: bit per failed boot read
const NEXT_TAG: usize = PROGRAM_VARIABLES + 0x30; // u32: tag of the next write
const AWAIT_TAG: usize = PROGRAM_VARIABLES + 0x34; // u32: the write in flight, 0 for none
const AWAIT_DONE: usize = PROGRAM_VARIABLES + 0x38; // u32
const AWAIT_STATUS: usize = PROGRAM_VARIABLES + 0x3c; // u32
                                                      // Buffers.
const DESCRIPTORS: usize = 0x100; // BOOT_READS disk request descriptors
const REQUEST_COPY: usize = 0x300; // peer || request of the frame being served
const TX_BUFFER: usize = 0x400;
const RX_BUFFER: usize = 0x1000;
const SECTOR: usize = 0x2000; // the record sector of a put
const TABLE: usize = 0x3000; // KEYS entries of (value u64, version u64)
const BOOT_SECTORS: usize = 0x8000; // the sectors of every key, read at boot

const KEYS: usize = kv::KEYS as usize;
const BOOT_READS: usize = 8;
const BOOT_READ_SECTORS: usize = KEYS / BOOT_READS;
const BOOT_DONE_ALL: u32 = (1 << BOOT_READS) - 1;
/// Tags below this are boot reads; writes use `FIRST_WRITE_TAG..`.
const FIRST_WRITE_TAG: u32 = BOOT_READS as u32;
const FRAME_BYTES: usize = kv::PEER_BYTES + kv::REQUEST_BYTES;
const TX_FRAME_BYTES: usize = kv::PEER_BYTES + kv::RESPONSE_BYTES;
const TABLE_ENTRY_BYTES: usize = 16;
/// The receive buffer's length while no frame has arrived.
const RX_EMPTY: u32 = u32::MAX;
const TIMER_PERIOD_US: u32 = 10_000;
/// Instructions of the request digest: four passes over the frame.
const DIGEST_STEPS: u32 = 4 * FRAME_BYTES as u32;
const REPORT_EVERY_REQUESTS: u64 = 100;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

const _: () = assert!(PROGRAM_VARIABLES + 0x40 <= DESCRIPTORS);
const _: () = assert!(DESCRIPTORS + BOOT_READS * abi::DISK_REQUEST_BYTES <= super::super::memory::CONSOLE_BUFFER);
const _: () = assert!(REQUEST_COPY + FRAME_BYTES <= TX_BUFFER);
const _: () = assert!(TX_BUFFER + 4 + abi::NET_FRAME_BYTES_MAX <= RX_BUFFER);
const _: () = assert!(RX_BUFFER + 4 + abi::NET_RX_BUFFER_BYTES <= SECTOR);
const _: () = assert!(SECTOR + abi::SECTOR_BYTES <= TABLE);
const _: () = assert!(TABLE + KEYS * TABLE_ENTRY_BYTES <= BOOT_SECTORS);
const _: () = assert!(BOOT_SECTORS + KEYS * abi::SECTOR_BYTES <= super::super::memory::MEMORY_BYTES);
const _: () = assert!(BOOT_READS * BOOT_READ_SECTORS == KEYS);

// Labels.
const READ_SUBMIT: u32 = BOOT + 1;
const DRAIN: u32 = BOOT + 2;
const EVENTS: u32 = BOOT + 3;
const TICK: u32 = BOOT + 4;
const PARSE: u32 = BOOT + 5;
const READY: u32 = BOOT + 6;
const POST: u32 = BOOT + 7;
const FRAME: u32 = BOOT + 8;
const DIGEST: u32 = BOOT + 9;
const SAMPLE: u32 = BOOT + 10;
const PUT: u32 = BOOT + 11;
const APPLY: u32 = BOOT + 12;
const GET: u32 = BOOT + 13;
const RESPOND: u32 = BOOT + 14;
const REPORT: u32 = BOOT + 15;

// Registers.
const DIGEST_REGISTER: usize = 0;
const CLOCK_REGISTER: usize = 1;
const STATUS_REGISTER: usize = 2;
const VALUE_REGISTER: usize = 3;
const TAG_REGISTER: usize = 4;
const AWAITED_REGISTER: usize = 6;
const AFTER_REGISTER: usize = 7;

pub(crate) fn step(registers: &mut Registers, memory: &mut Memory) -> Effect {
    match registers.label {
        BOOT => {
            registers.goto(READ_SUBMIT);
            out(abi::TIMER_PERIOD_US, TIMER_PERIOD_US)
        }
        READ_SUBMIT => read_submit(registers, memory),
        DRAIN => drain(registers, memory),
        EVENTS => events(registers, memory),
        TICK => tick(registers, memory),
        PARSE => parse(registers, memory),
        READY => ready(registers, memory),
        POST => post(registers, memory),
        FRAME => frame(registers, memory),
        DIGEST => digest(registers, memory),
        SAMPLE => sample(registers, memory),
        PUT => put(registers, memory),
        APPLY => apply(registers, memory),
        GET => get(registers, memory),
        RESPOND => respond(registers, memory),
        REPORT => report(registers, memory),
        _ => die(registers),
    }
}

/// Waits for `event` (handling timer ticks meanwhile), then continues at `after`.
fn await_event(registers: &mut Registers, event: u32, after: u32) {
    assert!(event == EVENT_DISK || event == EVENT_NET);
    registers.r[AWAITED_REGISTER] = u64::from(event);
    registers.r[AFTER_REGISTER] = u64::from(after);
    wait_for(registers, EVENT_TIMER | event, EVENTS);
}

/// Where the wait routine returns: a tick first, else the awaited event. Each branch is one atomic
/// test-and-clear, so an event raised meanwhile is never lost.
fn events(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if take_events(memory, EVENT_TIMER) != 0 {
        registers.goto(TICK);
        return Effect::Continue;
    }
    let awaited = u32::try_from(registers.r[AWAITED_REGISTER]).unwrap_or(0);
    if awaited != 0 && take_events(memory, awaited) != 0 {
        registers.goto(u32::try_from(registers.r[AFTER_REGISTER]).unwrap_or(0));
        return Effect::Continue;
    }
    registers.goto(super::WAIT);
    Effect::Continue
}

/// Counts the tick; every tenth also reads the clock. Returns to the wait routine, whose state is untouched.
fn tick(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step == 0 {
        let ticks = memory.u64(TICKS).wrapping_add(1);
        memory.set_u64(TICKS, ticks);
        if !ticks.is_multiple_of(10) {
            registers.goto(super::WAIT);
            return Effect::Continue;
        }
        registers.step = 1;
        return Effect::In { port: abi::CLOCK_LO };
    }
    mix_checksum(memory, u64::from(registers.input));
    registers.goto(super::WAIT);
    Effect::Continue
}

fn mix_checksum(memory: &mut Memory, value: u64) {
    memory.set_u64(CHECKSUM, mix64(memory.u64(CHECKSUM) ^ value));
}

/// Even steps write descriptor `step / 2`, odd steps submit it; then wait for the completions.
fn read_submit(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let read = (registers.step / 2) as usize;
    let descriptor = DESCRIPTORS + read * abi::DISK_REQUEST_BYTES;
    if registers.step.is_multiple_of(2) {
        let first_sector = 1 + read * BOOT_READ_SECTORS;
        let buffer = BOOT_SECTORS + read * BOOT_READ_SECTORS * abi::SECTOR_BYTES;
        write_descriptor(memory, descriptor, abi::DISK_OP_READ, read as u32, first_sector, BOOT_READ_SECTORS, buffer);
        registers.step += 1;
        return Effect::Continue;
    }
    registers.step = registers.step.wrapping_add(1);
    if registers.step as usize >= 2 * BOOT_READS {
        await_event(registers, EVENT_DISK, DRAIN);
    }
    out(abi::DISK_SUBMIT, gpa(descriptor))
}

fn write_descriptor(memory: &mut Memory, at: usize, op: u32, tag: u32, sector: usize, sectors: usize, buffer: usize) {
    memory.set_u32(at, op);
    memory.set_u32(at + 4, tag);
    memory.set_u64(at + 8, sector as u64);
    memory.set_u32(at + 16, sectors as u32);
    memory.set_u32(at + 20, 0);
    memory.set_u64(at + 24, buffer as u64);
}

/// Pops completions until `DISK_NONE`, then continues the boot or the put that waits for them.
fn drain(registers: &mut Registers, memory: &mut Memory) -> Effect {
    match registers.step {
        0 => {
            registers.step = 1;
            Effect::In { port: abi::DISK_COMPLETION }
        }
        1 if registers.input == abi::DISK_NONE => {
            drained(registers, memory);
            Effect::Continue
        }
        1 => {
            registers.r[TAG_REGISTER] = u64::from(registers.input);
            registers.step = 2;
            Effect::In { port: abi::DISK_STATUS }
        }
        _ => {
            let tag = registers.r[TAG_REGISTER];
            record_completion(memory, u32::try_from(tag).unwrap_or(u32::MAX), registers.input);
            registers.step = 0;
            Effect::Continue
        }
    }
}

fn record_completion(memory: &mut Memory, tag: u32, status: u32) {
    if tag < FIRST_WRITE_TAG {
        memory.set_u32(BOOT_DONE, memory.u32(BOOT_DONE) | 1 << tag);
        if status != abi::DiskStatus::Ok as u32 {
            memory.set_u32(BOOT_FAILED, memory.u32(BOOT_FAILED) | 1 << tag);
        }
    } else if tag == memory.u32(AWAIT_TAG) {
        memory.set_u32(AWAIT_DONE, 1);
        memory.set_u32(AWAIT_STATUS, status);
    }
    // Any other tag is a completion nobody waits for (a duplicate, or a request from before a restart).
}

fn drained(registers: &mut Registers, memory: &mut Memory) {
    if memory.u32(AWAIT_TAG) != 0 {
        if memory.u32(AWAIT_DONE) != 0 {
            registers.goto(APPLY);
        } else {
            await_event(registers, EVENT_DISK, DRAIN);
        }
    } else if memory.u32(BOOT_DONE) == BOOT_DONE_ALL {
        registers.goto(PARSE);
    } else {
        await_event(registers, EVENT_DISK, DRAIN);
    }
}

/// Step `k` rebuilds key `k` from its sector; a sector without a valid record for `k` holds no value.
fn parse(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let key = registers.step as usize;
    let read_bit = 1u32.checked_shl((key / BOOT_READ_SECTORS) as u32).unwrap_or(0);
    let read_failed = memory.u32(BOOT_FAILED) & read_bit != 0;
    let sector = BOOT_SECTORS + key * abi::SECTOR_BYTES;
    let valid = memory.u32(sector) == kv::MAGIC && memory.u64(sector + 8) == key as u64;
    if valid && !read_failed {
        let version = memory.u64(sector + 24);
        memory.set_u64(TABLE + key * TABLE_ENTRY_BYTES, memory.u64(sector + 16));
        memory.set_u64(TABLE + key * TABLE_ENTRY_BYTES + 8, version);
        memory.set_u64(RECOVERED, memory.u64(RECOVERED).wrapping_add(1));
        // Versions count puts, so the latest record says how many were applied before the restart.
        memory.set_u64(PUTS, memory.u64(PUTS).max(version));
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
        registers.r[VALUE_REGISTER] =
            u64::from(console_line(memory, format_args!("kv: ready, {recovered} keys recovered\n")));
        registers.step = 1;
        return Effect::Continue;
    }
    registers.goto(POST);
    out(abi::CONSOLE_WRITE, registers.r[VALUE_REGISTER] as u32)
}

/// Marks the receive buffer empty, then posts it. The mark tells a spurious `VECTOR_NET` from a frame: it is a
/// length no device writes (frames are at most `NET_RX_BUFFER_BYTES`), unlike 0, which an empty frame has.
fn post(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step == 0 {
        memory.set_u32(RX_BUFFER, RX_EMPTY);
        registers.step = 1;
        return Effect::Continue;
    }
    await_event(registers, EVENT_NET, FRAME);
    out(abi::NET_RX_POST, gpa(RX_BUFFER))
}

/// Accepts a well-formed frame into `REQUEST_COPY`; drops anything else and posts the buffer again.
fn frame(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let len = memory.u32(RX_BUFFER);
    if len == RX_EMPTY {
        // Spurious: the buffer is still posted.
        await_event(registers, EVENT_NET, FRAME);
        return Effect::Continue;
    }
    let len = len as usize;
    let request = memory.slice(RX_BUFFER + 4, len).filter(|_| len == FRAME_BYTES).map(|frame| &frame[kv::PEER_BYTES..]);
    if request.and_then(|request| Request::decode(request).ok()).is_none() {
        registers.goto(POST);
        return Effect::Continue;
    }
    memory.copy(RX_BUFFER + 4, REQUEST_COPY, FRAME_BYTES);
    memory.set_u64(REQUESTS, memory.u64(REQUESTS).wrapping_add(1));
    registers.r[DIGEST_REGISTER] = FNV_OFFSET;
    registers.goto(DIGEST);
    Effect::Continue
}

/// FNV-1a over the frame, one byte per instruction: the compute part of a request.
fn digest(registers: &mut Registers, memory: &mut Memory) -> Effect {
    registers.r[DIGEST_REGISTER] = digest_byte(memory, registers.step, registers.r[DIGEST_REGISTER]);
    registers.step = registers.step.wrapping_add(1);
    if registers.step >= DIGEST_STEPS {
        registers.goto(SAMPLE);
    }
    Effect::Continue
}

#[inline(always)]
fn digest_byte(memory: &Memory, step: u32, digest: u64) -> u64 {
    let byte = memory.u8(REQUEST_COPY + step as usize % FRAME_BYTES);
    (digest ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
}

/// Up to `instructions_max` digest instructions at once, exactly as many single steps would run them; returns
/// how many retired (0 outside the digest).
pub(crate) fn burst(registers: &mut Registers, memory: &Memory, instructions_max: u64) -> u64 {
    if registers.label != DIGEST || registers.step >= DIGEST_STEPS {
        return 0;
    }
    let count = u64::from(DIGEST_STEPS - registers.step).min(instructions_max);
    let mut digest = registers.r[DIGEST_REGISTER];
    let mut step = registers.step;
    for _ in 0..count {
        digest = digest_byte(memory, step, digest);
        step += 1;
    }
    registers.r[DIGEST_REGISTER] = digest;
    registers.step = step;
    if registers.step >= DIGEST_STEPS {
        registers.goto(SAMPLE);
    }
    count
}

/// Reads the clock (both halves) and entropy into the checksum, then dispatches on the op.
fn sample(registers: &mut Registers, memory: &mut Memory) -> Effect {
    match registers.step {
        0 => {
            registers.step = 1;
            Effect::In { port: abi::CLOCK_LO }
        }
        1 => {
            registers.r[CLOCK_REGISTER] = u64::from(registers.input);
            registers.step = 2;
            Effect::In { port: abi::CLOCK_HI }
        }
        2 => {
            let clock_ns = u64::from(registers.input) << 32 | registers.r[CLOCK_REGISTER];
            mix_checksum(memory, clock_ns);
            registers.step = 3;
            Effect::In { port: abi::ENTROPY }
        }
        _ => {
            mix_checksum(memory, u64::from(registers.input) ^ registers.r[DIGEST_REGISTER]);
            match request(memory).map(|request| request.op) {
                Some(Op::Put) => registers.goto(PUT),
                Some(Op::Get) => registers.goto(GET),
                None => registers.goto(POST),
            }
            Effect::Continue
        }
    }
}

/// The request being served, decoded again from `REQUEST_COPY` (guest memory is the only place state lives).
fn request(memory: &Memory) -> Option<Request> {
    let request = memory.slice(REQUEST_COPY + kv::PEER_BYTES, kv::REQUEST_BYTES)?;
    Request::decode(request).ok()
}

fn key_index(request: &Request) -> Option<usize> {
    (request.key < kv::KEYS).then_some(request.key as usize)
}

/// Step 0 builds the record sector, step 1 its descriptor, step 2 submits the write.
fn put(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let Some(request) = request(memory) else {
        registers.goto(POST);
        return Effect::Continue;
    };
    let Some(key) = key_index(&request) else {
        answer(registers, Status::BadRequest, request.value);
        return Effect::Continue;
    };
    match registers.step {
        0 => {
            memory.zero(SECTOR, abi::SECTOR_BYTES);
            memory.set_u32(SECTOR, kv::MAGIC);
            memory.set_u64(SECTOR + 8, request.key);
            memory.set_u64(SECTOR + 16, request.value);
            memory.set_u64(SECTOR + 24, memory.u64(PUTS).wrapping_add(1));
            registers.step = 1;
            Effect::Continue
        }
        1 => {
            let tag = memory.u32(NEXT_TAG).max(FIRST_WRITE_TAG);
            memory.set_u32(NEXT_TAG, tag.wrapping_add(1));
            memory.set_u32(AWAIT_TAG, tag);
            memory.set_u32(AWAIT_DONE, 0);
            write_descriptor(memory, DESCRIPTORS, abi::DISK_OP_WRITE, tag, 1 + key, 1, SECTOR);
            registers.step = 2;
            Effect::Continue
        }
        _ => {
            await_event(registers, EVENT_DISK, DRAIN);
            out(abi::DISK_SUBMIT, gpa(DESCRIPTORS))
        }
    }
}

/// The write completed: apply the put if the disk took it.
fn apply(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let status = memory.u32(AWAIT_STATUS);
    memory.set_u32(AWAIT_TAG, 0);
    let Some(request) = request(memory) else {
        registers.goto(POST);
        return Effect::Continue;
    };
    let (Some(key), true) = (key_index(&request), status == abi::DiskStatus::Ok as u32) else {
        answer(registers, Status::IoError, request.value);
        return Effect::Continue;
    };
    let puts = memory.u64(PUTS).wrapping_add(1);
    memory.set_u64(PUTS, puts);
    memory.set_u64(TABLE + key * TABLE_ENTRY_BYTES, request.value);
    memory.set_u64(TABLE + key * TABLE_ENTRY_BYTES + 8, puts);
    answer(registers, Status::Ok, request.value);
    Effect::Continue
}

fn get(registers: &mut Registers, memory: &mut Memory) -> Effect {
    let Some(request) = request(memory) else {
        registers.goto(POST);
        return Effect::Continue;
    };
    match key_index(&request) {
        Some(key) => answer(registers, Status::Ok, memory.u64(TABLE + key * TABLE_ENTRY_BYTES)),
        None => answer(registers, Status::BadRequest, 0),
    }
    Effect::Continue
}

fn answer(registers: &mut Registers, status: Status, value: u64) {
    registers.r[STATUS_REGISTER] = status as u64;
    registers.r[VALUE_REGISTER] = value;
    registers.goto(RESPOND);
}

/// Step 0 builds `peer || response` in the transmit buffer, step 1 sends it.
fn respond(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step == 1 {
        let requests = memory.u64(REQUESTS);
        registers.goto(if requests.is_multiple_of(REPORT_EVERY_REQUESTS) { REPORT } else { POST });
        return out(abi::NET_TX, gpa(TX_BUFFER));
    }
    let Some(request) = request(memory) else {
        registers.goto(POST);
        return Effect::Continue;
    };
    let status = match registers.r[STATUS_REGISTER] {
        0 => Status::Ok,
        2 => Status::IoError,
        _ => Status::BadRequest,
    };
    let response = Response {
        op: request.op,
        client: request.client,
        status,
        request: request.request,
        key: request.key,
        value: registers.r[VALUE_REGISTER],
        version: memory.u64(PUTS),
    };
    memory.set_u32(TX_BUFFER, TX_FRAME_BYTES as u32);
    memory.copy(REQUEST_COPY, TX_BUFFER + 4, kv::PEER_BYTES);
    memory.write(TX_BUFFER + 4 + kv::PEER_BYTES, &response.encode());
    registers.step = 1;
    Effect::Continue
}

fn report(registers: &mut Registers, memory: &mut Memory) -> Effect {
    if registers.step == 0 {
        let requests = memory.u64(REQUESTS);
        let puts = memory.u64(PUTS);
        let checksum = memory.u64(CHECKSUM);
        let line = format_args!("kv: {requests} requests, {puts} puts, checksum={checksum:016x}\n");
        registers.r[VALUE_REGISTER] = u64::from(console_line(memory, line));
        registers.step = 1;
        return Effect::Continue;
    }
    registers.goto(POST);
    out(abi::CONSOLE_WRITE, registers.r[VALUE_REGISTER] as u32)
}
