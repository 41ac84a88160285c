//! The devices of the guest ABI (docs/guest-abi.md), shared by every `Guest` implementation.
//!
//! The platform turns port exits into outputs, input requests and disk IO, and applies logged inputs (DMA plus
//! interrupt). Its state is a pure function of the guest's exits and the logged inputs, so primary and backup
//! keep identical copies by running the same code; that state is part of the checkpoint hash.

mod console;
pub mod disk;

use crate::abi::{self, DiskStatus};
use crate::bytes::{Reader, Writer};
use crate::guest::{Exit, Guest, GuestError};
use crate::log::{DiskTarget, Input, Output, OutputKind};
use console::Console;
pub use disk::{Disk, DiskOp, DiskRequest};

/// What the host must do after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Handled inside the platform.
    Continue,
    /// The guest reads a value from outside (clock or entropy); answer with [`Platform::apply`].
    NeedsInput(InputKind),
    /// An external output (held by the Output Rule on a protected primary, suppressed on a backup).
    Output(Output),
    /// A disk read to issue to storage; its data comes back as a logged `Input::DiskComplete`.
    DiskRead(DiskRequest),
    /// The guest waits for an interrupt.
    Halt,
    PowerOff {
        status: u32,
    },
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Clock,
    Entropy,
}

/// A platform error is a guest (or log) error: the machine cannot continue consistently.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("input {0} does not fit the device state: {1}")]
    Inconsistent(&'static str, String),
}

/// Format version of [`Platform::encode`].
/// Version 3 ends with an xxh3 checksum of what precedes it (a clone's cut carries the state across hosts).
const STATE_VERSION: u32 = 3;
const CHECKSUM_BYTES: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    console: Console,
    clock_latched_ns: u64,
    timer_period_us: u32,
    net_rx_buffer_gpa: Option<u64>,
    disk: Disk,
    output_seq_next: u64,
}

impl Platform {
    pub fn new(disk_sectors: u64) -> Platform {
        Platform {
            console: Console::new(),
            clock_latched_ns: 0,
            timer_period_us: 0,
            net_rx_buffer_gpa: None,
            disk: Disk::new(disk_sectors),
            output_seq_next: 0,
        }
    }

    /// The guest's timer period, 0 if stopped. The host decides when it expires (non-deterministic).
    pub fn timer_period_us(&self) -> u32 {
        self.timer_period_us
    }

    /// Whether a frame can be delivered now (the guest has posted a receive buffer).
    pub fn net_rx_ready(&self) -> bool {
        self.net_rx_buffer_gpa.is_some()
    }

    /// The last clock value the guest saw, so a new primary can keep guest time monotonic.
    pub fn clock_latched_ns(&self) -> u64 {
        self.clock_latched_ns
    }

    /// Disk requests submitted and not completed, oldest submission first: what a new primary must reissue.
    pub fn disk_in_flight(&self) -> Vec<&DiskRequest> {
        self.disk.in_flight_in_submission_order()
    }

    /// The request in flight with `tag`, if any.
    pub fn disk_request(&self, tag: u32) -> Option<&DiskRequest> {
        self.disk.in_flight.get(&tag)
    }

    /// Handles one guest exit. Deterministic port reads are answered here.
    pub fn handle_exit<G: Guest>(&mut self, exit: Exit, guest: &mut G) -> Result<ExitAction, PlatformError> {
        match exit {
            Exit::PortOut { port, value, .. } => self.port_out(port, value, guest),
            Exit::PortIn { port, .. } => Ok(self.port_in(port, guest)),
            Exit::Halt => Ok(ExitAction::Halt),
            Exit::Shutdown => Ok(ExitAction::Shutdown),
            Exit::InstructionLimit | Exit::Kicked => Ok(ExitAction::Continue),
        }
    }

    fn port_in<G: Guest>(&mut self, port: u16, guest: &mut G) -> ExitAction {
        let value = match port {
            abi::CLOCK_LO => return ExitAction::NeedsInput(InputKind::Clock),
            abi::ENTROPY => return ExitAction::NeedsInput(InputKind::Entropy),
            abi::CLOCK_HI => (self.clock_latched_ns >> 32) as u32,
            abi::DISK_COMPLETION => self.disk.pop_completion(),
            abi::DISK_STATUS => self.disk.last_status,
            abi::DISK_SECTORS => u32::try_from(self.disk.sectors).unwrap_or(u32::MAX),
            port if (abi::SERIAL_BASE..abi::SERIAL_BASE + abi::SERIAL_PORTS).contains(&port) => {
                u32::from(self.console.read((port - abi::SERIAL_BASE) as u8))
            }
            // Unknown ports read as all ones, like an empty ISA bus.
            _ => u32::MAX,
        };
        guest.complete_port_in(value);
        ExitAction::Continue
    }

    fn port_out<G: Guest>(&mut self, port: u16, value: u32, guest: &mut G) -> Result<ExitAction, PlatformError> {
        let gpa = u64::from(value);
        match port {
            port if (abi::SERIAL_BASE..abi::SERIAL_BASE + abi::SERIAL_PORTS).contains(&port) => {
                let line = self.console.write((port - abi::SERIAL_BASE) as u8, value as u8);
                Ok(line.map_or(ExitAction::Continue, |bytes| self.output(OutputKind::Console, bytes, None)))
            }
            abi::CONSOLE_WRITE => {
                let bytes = read_buffer(guest, gpa, abi::CONSOLE_WRITE_BYTES_MAX)?;
                Ok(self.output(OutputKind::Console, bytes, None))
            }
            abi::NET_TX => {
                let frame = read_buffer(guest, gpa, abi::NET_FRAME_BYTES_MAX)?;
                Ok(self.output(OutputKind::NetTransmit, frame, None))
            }
            abi::NET_RX_POST => {
                self.net_rx_buffer_gpa = Some(gpa);
                Ok(ExitAction::Continue)
            }
            abi::TIMER_PERIOD_US => {
                self.timer_period_us = value;
                Ok(ExitAction::Continue)
            }
            abi::DISK_SUBMIT => self.disk_submit(gpa, guest),
            abi::POWER_OFF => Ok(ExitAction::PowerOff { status: value }),
            // YIELD and unknown ports only give the host a chance to deliver inputs.
            _ => Ok(ExitAction::Continue),
        }
    }

    fn disk_submit<G: Guest>(&mut self, gpa: u64, guest: &mut G) -> Result<ExitAction, PlatformError> {
        match self.disk.submit(guest, gpa)? {
            disk::Submitted::Rejected => {
                guest.inject_interrupt(abi::VECTOR_DISK)?;
                Ok(ExitAction::Continue)
            }
            disk::Submitted::Accepted(request) => match request.op {
                DiskOp::Read => Ok(ExitAction::DiskRead(request)),
                DiskOp::Write => {
                    // The data is copied now (a bounce buffer): the guest may reuse its buffer before the write is
                    // released, and the write must carry what the guest had at submission on both sides.
                    let mut data = vec![0u8; request.length_bytes()];
                    guest.read_memory(request.buffer_gpa, &mut data)?;
                    Ok(self.output(OutputKind::DiskWrite, data, Some(request.target)))
                }
            },
        }
    }

    fn output(&mut self, kind: OutputKind, bytes: Vec<u8>, disk: Option<DiskTarget>) -> ExitAction {
        let seq = self.output_seq_next;
        self.output_seq_next += 1;
        ExitAction::Output(Output { seq, kind, bytes, disk })
    }

    /// Applies an input: answers a pending port read, or performs DMA and raises the device's interrupt.
    pub fn apply<G: Guest>(&mut self, input: &Input, guest: &mut G) -> Result<(), PlatformError> {
        match input {
            Input::Clock { ns } => {
                self.clock_latched_ns = *ns;
                guest.complete_port_in(*ns as u32);
            }
            Input::Entropy { value } => guest.complete_port_in(*value),
            Input::Timer => guest.inject_interrupt(abi::VECTOR_TIMER)?,
            Input::NetReceive { frame } => {
                let gpa = self
                    .net_rx_buffer_gpa
                    .take()
                    .ok_or_else(|| PlatformError::Inconsistent("net receive", "no buffer posted".into()))?;
                if frame.len() > abi::NET_RX_BUFFER_BYTES {
                    return Err(PlatformError::Inconsistent("net receive", format!("{} bytes", frame.len())));
                }
                guest.write_memory(gpa, &(frame.len() as u32).to_le_bytes())?;
                guest.write_memory(gpa + abi::BUFFER_HEADER_BYTES, frame)?;
                guest.inject_interrupt(abi::VECTOR_NET)?;
            }
            Input::DiskComplete { tag, status, data } => self.disk_complete(*tag, *status, data, guest)?,
        }
        Ok(())
    }

    fn disk_complete<G: Guest>(
        &mut self,
        tag: u32,
        status: DiskStatus,
        data: &[u8],
        guest: &mut G,
    ) -> Result<(), PlatformError> {
        let request = self
            .disk
            .in_flight
            .remove(&tag)
            .ok_or_else(|| PlatformError::Inconsistent("disk completion", format!("tag {tag} not in flight")))?;
        if request.op == DiskOp::Read && status == DiskStatus::Ok {
            if data.len() != request.length_bytes() {
                return Err(PlatformError::Inconsistent("disk completion", format!("{} bytes", data.len())));
            }
            // Copy from the bounce buffer only now, at a logged position, so DMA never races guest execution.
            guest.write_memory(request.buffer_gpa, data)?;
        }
        self.disk.complete(tag, status);
        guest.inject_interrupt(abi::VECTOR_DISK)?;
        Ok(())
    }

    /// Serialises the device state (for hashing, and for cloning a VM).
    pub fn encode(&self) -> Vec<u8> {
        let mut writer = Writer::with_capacity(256);
        writer.u32(STATE_VERSION);
        self.console.encode(&mut writer);
        writer.u64(self.clock_latched_ns);
        writer.u32(self.timer_period_us);
        writer.u64(self.net_rx_buffer_gpa.map_or(u64::MAX, |gpa| gpa));
        self.disk.encode(&mut writer);
        writer.u64(self.output_seq_next);
        let checksum = xxhash_rust::xxh3::xxh3_64(&writer.bytes);
        writer.u64(checksum);
        writer.bytes
    }

    /// Decodes what `encode` wrote: the version, the checksum, every field, and nothing after them.
    pub fn decode(bytes: &[u8]) -> Result<Platform, String> {
        let split = bytes.len().checked_sub(CHECKSUM_BYTES).ok_or("platform state truncated")?;
        let (body, checksum) = bytes.split_at(split);
        let checksum = u64::from_le_bytes(checksum.try_into().map_err(|_| "platform state truncated")?);
        let mut reader = Reader::new(body);
        let err = |e: crate::bytes::Truncated| e.to_string();
        let version = reader.u32().map_err(err)?;
        if version != STATE_VERSION {
            return Err(format!("platform state version {version}, expected {STATE_VERSION}"));
        }
        if checksum != xxhash_rust::xxh3::xxh3_64(body) {
            return Err("platform state checksum mismatch".into());
        }
        let console = Console::decode(&mut reader)?;
        let clock_latched_ns = reader.u64().map_err(err)?;
        let timer_period_us = reader.u32().map_err(err)?;
        let net_rx_buffer_gpa = Some(reader.u64().map_err(err)?).filter(|gpa| *gpa != u64::MAX);
        let disk = Disk::decode(&mut reader)?;
        let output_seq_next = reader.u64().map_err(err)?;
        if reader.remaining() != 0 {
            return Err(format!("{} bytes after the platform state", reader.remaining()));
        }
        Ok(Platform { console, clock_latched_ns, timer_period_us, net_rx_buffer_gpa, disk, output_seq_next })
    }

    pub fn state_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.encode())
    }
}

/// Reads a guest `Buffer` (u32 length, then bytes), clamping the length to `length_max`.
fn read_buffer<G: Guest>(guest: &G, gpa: u64, length_max: usize) -> Result<Vec<u8>, GuestError> {
    let mut header = [0u8; 4];
    guest.read_memory(gpa, &mut header)?;
    let length = (u32::from_le_bytes(header) as usize).min(length_max);
    let mut bytes = vec![0u8; length];
    guest.read_memory(gpa + abi::BUFFER_HEADER_BYTES, &mut bytes)?;
    Ok(bytes)
}
