//! Test support, not for production. `Bench` is a crude stand-in for the protocol's platform layer (`ft::platform`)
//! for this crate's own tests: it answers the port exits of the guest ABI (ft/src/abi.rs) with in-memory devices and virtual time, so the
//! corpus guests can be booted, fed frames and checked, with no real time and no real I/O. `kvm_usable`,
//! `test_guest` and `test_bench` let this crate's and the runtime's integration tests skip (or fail, with
//! FT_REQUIRE_KVM=1) where KVM is unusable.

use std::collections::VecDeque;

use ft::abi;
use ft::{Exit, Guest, GuestError};

use crate::guest::KvmGuest;
use crate::{corpus, KvmConfig, KvmError};

/// Virtual nanoseconds that pass per exit.
const EXIT_NS: u64 = 1_000;
/// Exits between timer interrupts while the guest keeps running (it also gets one whenever it halts).
const TIMER_EVERY_EXITS_DEFAULT: u64 = 64;

/// Why the bench stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest wrote `POWER_OFF` with this status.
    PowerOff(u32),
    /// The guest cannot continue (`Exit::Shutdown`; see `KvmGuest::shutdown_reason`).
    Shutdown,
    /// The guest halted and nothing can wake it (no timer, no frame to deliver).
    Idle,
    /// The exit budget of `Bench::run` was used up.
    ExitLimit,
}

/// One guest-initiated exit, as seen by the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    pub exit: Exit,
    pub pc: u64,
}

/// The device state of the bench (cloned with a snapshot to continue elsewhere).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    /// Everything written to the console (CONSOLE_WRITE and the UART's THR).
    pub console: Vec<u8>,
    /// The disk, `SECTOR_BYTES` per sector.
    pub disk: Vec<u8>,
    /// Frames the guest transmitted.
    pub transmitted: Vec<Vec<u8>>,
    /// Frames waiting for the guest to post a receive buffer.
    pub incoming: VecDeque<Vec<u8>>,
    /// Virtual time.
    pub clock_ns: u64,
    /// Timer period set by the guest (0 = off).
    pub timer_period_us: u32,
    /// Exits between timer interrupts while the guest keeps running.
    pub timer_every_exits: u64,
    /// Timer interrupts raised so far.
    pub timer_ticks: u64,
    rx_buffer: Option<u64>,
    clock_latched: u64,
    entropy_counter: u64,
    exits_since_tick: u64,
    completions: VecDeque<(u32, u32)>,
    status: u32,
}

/// A guest with the bench's devices around it.
pub struct Bench {
    pub guest: KvmGuest,
    pub devices: Devices,
    /// Every exit so far (with RIP), for determinism checks.
    pub trace: Vec<TraceEntry>,
}

fn splitmix(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn read_u32(guest: &KvmGuest, gpa: u64) -> Result<u32, GuestError> {
    let mut word = [0u8; 4];
    guest.read_memory(gpa, &mut word)?;
    Ok(u32::from_le_bytes(word))
}

/// Reads a `Buffer` (u32 length, then bytes) of at most `max` bytes.
fn read_buffer(guest: &KvmGuest, gpa: u64, max: usize) -> Result<Vec<u8>, GuestError> {
    let length = (read_u32(guest, gpa)? as usize).min(max);
    let mut data = vec![0u8; length];
    guest.read_memory(gpa + abi::BUFFER_HEADER_BYTES, &mut data)?;
    Ok(data)
}

impl Devices {
    /// Devices with a zeroed disk of `disk_sectors` sectors.
    pub fn new(disk_sectors: usize) -> Devices {
        Devices {
            disk: vec![0; disk_sectors * abi::SECTOR_BYTES],
            timer_every_exits: TIMER_EVERY_EXITS_DEFAULT,
            ..Devices::default()
        }
    }

    fn tick(&mut self, guest: &mut KvmGuest) -> Result<(), GuestError> {
        self.exits_since_tick = 0;
        self.timer_ticks += 1;
        guest.inject_interrupt(abi::VECTOR_TIMER)
    }

    fn deliver_frame(&mut self, guest: &mut KvmGuest) -> Result<bool, GuestError> {
        let Some(gpa) = self.rx_buffer else { return Ok(false) };
        let Some(mut frame) = self.incoming.pop_front() else { return Ok(false) };
        frame.truncate(abi::NET_RX_BUFFER_BYTES);
        guest.write_memory(gpa + abi::BUFFER_HEADER_BYTES, &frame)?;
        guest.write_memory(gpa, &(frame.len() as u32).to_le_bytes())?;
        self.rx_buffer = None;
        guest.inject_interrupt(abi::VECTOR_NET)?;
        Ok(true)
    }

    /// Performs a disk request at once and raises its completion interrupt.
    fn disk_submit(&mut self, guest: &mut KvmGuest, gpa: u64) -> Result<(), GuestError> {
        let mut descriptor = [0u8; abi::DISK_REQUEST_BYTES];
        guest.read_memory(gpa, &mut descriptor)?;
        let word = |at: usize| u32::from_le_bytes(descriptor[at..at + 4].try_into().unwrap_or([0; 4]));
        let quad = |at: usize| u64::from_le_bytes(descriptor[at..at + 8].try_into().unwrap_or([0; 8]));
        let (op, tag, sector, sectors, buffer) = (word(0), word(4), quad(8), word(16), quad(24));
        let start = (sector as usize).saturating_mul(abi::SECTOR_BYTES);
        let bytes = sectors as usize * abi::SECTOR_BYTES;
        let in_range = (1..=abi::DISK_REQUEST_SECTORS_MAX).contains(&sectors)
            && start.checked_add(bytes).is_some_and(|end| end <= self.disk.len());
        let status = match op {
            _ if !in_range => abi::DiskStatus::BadRequest,
            abi::DISK_OP_READ => match guest.write_memory(buffer, &self.disk[start..start + bytes]) {
                Ok(()) => abi::DiskStatus::Ok,
                Err(_) => abi::DiskStatus::BadRequest,
            },
            abi::DISK_OP_WRITE => match guest.read_memory(buffer, &mut self.disk[start..start + bytes]) {
                Ok(()) => abi::DiskStatus::Ok,
                Err(_) => abi::DiskStatus::BadRequest,
            },
            _ => abi::DiskStatus::BadRequest,
        };
        self.completions.push_back((tag, status as u32));
        guest.inject_interrupt(abi::VECTOR_DISK)
    }

    fn port_out(&mut self, guest: &mut KvmGuest, port: u16, value: u32) -> Result<Option<Stop>, GuestError> {
        let gpa = u64::from(value);
        match port {
            abi::SERIAL_BASE => self.console.push(value as u8),
            abi::CONSOLE_WRITE => {
                let text = read_buffer(guest, gpa, abi::CONSOLE_WRITE_BYTES_MAX)?;
                self.console.extend_from_slice(&text);
            }
            abi::POWER_OFF => return Ok(Some(Stop::PowerOff(value))),
            abi::TIMER_PERIOD_US => {
                self.timer_period_us = value;
                self.exits_since_tick = 0;
            }
            abi::DISK_SUBMIT => self.disk_submit(guest, gpa)?,
            abi::NET_TX => self.transmitted.push(read_buffer(guest, gpa, abi::NET_FRAME_BYTES_MAX)?),
            abi::NET_RX_POST => self.rx_buffer = Some(gpa),
            _ => {}
        }
        Ok(None)
    }

    fn port_in(&mut self, port: u16) -> u32 {
        match port {
            abi::CLOCK_LO => {
                self.clock_latched = self.clock_ns;
                self.clock_latched as u32
            }
            abi::CLOCK_HI => (self.clock_latched >> 32) as u32,
            abi::ENTROPY => {
                self.entropy_counter += 1;
                splitmix(self.entropy_counter) as u32
            }
            abi::DISK_COMPLETION => match self.completions.pop_front() {
                Some((tag, status)) => {
                    self.status = status;
                    tag
                }
                None => abi::DISK_NONE,
            },
            abi::DISK_STATUS => self.status,
            abi::DISK_SECTORS => (self.disk.len() / abi::SECTOR_BYTES) as u32,
            // 16550 line status: transmitter empty.
            port if port == abi::SERIAL_BASE + 5 => 0x60,
            _ => u32::MAX,
        }
    }

    /// Answers one exit; returns why to stop, if the bench should.
    pub fn handle(&mut self, guest: &mut KvmGuest, exit: Exit) -> Result<Option<Stop>, GuestError> {
        self.clock_ns += EXIT_NS;
        match exit {
            Exit::PortOut { port, value, .. } => {
                if let Some(stop) = self.port_out(guest, port, value)? {
                    return Ok(Some(stop));
                }
            }
            Exit::PortIn { port, .. } => {
                let value = self.port_in(port);
                guest.complete_port_in(value);
            }
            Exit::Halt => {
                // Jump virtual time to whatever can wake the guest.
                if self.timer_period_us > 0 {
                    self.clock_ns += u64::from(self.timer_period_us) * 1_000;
                    return self.tick(guest).map(|()| None);
                }
                return Ok(if self.deliver_frame(guest)? { None } else { Some(Stop::Idle) });
            }
            Exit::Shutdown => return Ok(Some(Stop::Shutdown)),
            Exit::InstructionLimit | Exit::Kicked => {}
        }
        if self.timer_period_us > 0 {
            self.exits_since_tick += 1;
            if self.exits_since_tick >= self.timer_every_exits {
                self.tick(guest)?;
            }
        }
        self.deliver_frame(guest)?;
        Ok(None)
    }
}

impl Bench {
    /// A bench around `guest` with a zeroed disk of `disk_sectors` sectors.
    pub fn new(guest: KvmGuest, disk_sectors: usize) -> Bench {
        Bench { guest, devices: Devices::new(disk_sectors), trace: Vec::new() }
    }

    /// Runs the guest to its next exit and records it, without answering it.
    pub fn next_exit(&mut self) -> Result<Exit, GuestError> {
        let exit = self.guest.run(None)?;
        self.trace.push(TraceEntry { exit, pc: self.guest.pc() });
        Ok(exit)
    }

    /// Answers an exit returned by `next_exit`.
    pub fn handle(&mut self, exit: Exit) -> Result<Option<Stop>, GuestError> {
        self.devices.handle(&mut self.guest, exit)
    }

    /// One exit, answered.
    pub fn step(&mut self) -> Result<Option<Stop>, GuestError> {
        let exit = self.next_exit()?;
        self.handle(exit)
    }

    /// Steps until the guest stops or `exits_max` exits have passed.
    pub fn run(&mut self, exits_max: u64) -> Result<Stop, GuestError> {
        for _ in 0..exits_max {
            if let Some(stop) = self.step()? {
                return Ok(stop);
            }
        }
        Ok(Stop::ExitLimit)
    }

    /// The console output so far, as text.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.devices.console).into_owned()
    }
}

// The KVM test helpers of this crate's and the runtime's integration tests: skip (or fail, with
// FT_REQUIRE_KVM=1) when KVM is unusable.

/// Disk of the benches: sector 0 plus the kv guest's 64 key sectors, with room to spare.
pub const TEST_DISK_SECTORS: usize = 128;

fn kvm_required() -> bool {
    std::env::var("FT_REQUIRE_KVM").is_ok_and(|value| value == "1")
}

/// Whether /dev/kvm can be opened read-write; if not, the calling test skips (or fails with FT_REQUIRE_KVM=1).
pub fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(error) => {
            if kvm_required() {
                panic!("KVM is required (FT_REQUIRE_KVM=1) but /dev/kvm is unusable: {error}");
            }
            eprintln!("SKIPPED: /dev/kvm unusable here: {error}");
            false
        }
    }
}

/// A fresh guest running corpus program `name`, or None (test skipped) when KVM is not usable here.
pub fn test_guest(name: &str) -> Option<KvmGuest> {
    let image = corpus::guest_elf(name).expect("corpus guest exists");
    match KvmGuest::new(&KvmConfig::default(), image) {
        Ok(guest) => Some(guest),
        Err(error @ (KvmError::Open { .. } | KvmError::ApiVersion(_) | KvmError::Ioctl { .. })) => {
            if kvm_required() {
                panic!("KVM is required (FT_REQUIRE_KVM=1) but unusable: {error}");
            }
            eprintln!("SKIPPED: KVM unusable here: {error}");
            None
        }
        Err(error) => panic!("cannot build guest {name}: {error}"),
    }
}

/// A bench around a fresh `name` guest, or None when KVM is not usable.
pub fn test_bench(name: &str) -> Option<Bench> {
    test_guest(name).map(|guest| Bench::new(guest, TEST_DISK_SECTORS))
}
