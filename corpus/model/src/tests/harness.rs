//! A tiny platform for tests: emulates the devices of `ft::abi` on top of a model guest's exits.
//!
//! Time advances with instructions ([`NS_PER_INSTRUCTION`]) and jumps forward while the guest halts. Disk
//! requests complete at the guest's next halt (so completions are really asynchronous); a frame is delivered
//! when the guest halts with a receive buffer posted.

use std::collections::VecDeque;

use ft::abi;
use ft::{Exit, Guest, Position};

use super::super::ModelGuest;

/// 2 000 instructions per simulated millisecond.
pub(super) const NS_PER_INSTRUCTION: u64 = 500;

pub(super) const DISK_SECTORS: usize = 256;

#[derive(Clone, Default)]
pub(super) struct Platform {
    pub(super) sectors: Vec<[u8; abi::SECTOR_BYTES]>,
    /// Requests submitted, completed at the next halt: (tag, status).
    pub(super) in_flight: Vec<(u32, u32)>,
    pub(super) completions: VecDeque<(u32, u32)>,
    pub(super) last_status: u32,
    /// Writes fail with `IoError` while set.
    pub(super) fail_writes: bool,
    /// Writes report success but never reach the sectors while set (a lost write).
    pub(super) lose_writes: bool,
    pub(super) rx_posted: Option<u64>,
    pub(super) frames_in: VecDeque<Vec<u8>>,
    pub(super) frames_out: Vec<Vec<u8>>,
    pub(super) console: String,
    pub(super) power_off: Option<u32>,
    pub(super) timer_period_ns: u64,
    pub(super) timer_next_ns: u64,
    /// Simulated time spent halted.
    pub(super) idle_ns: u64,
    pub(super) clock_latched_ns: u64,
    pub(super) entropy_state: u64,
    /// Runs the guest one instruction at a time (to compare with long runs).
    pub(super) single_step: bool,
    /// Every exit with the position after it.
    pub(super) trace: Vec<(Exit, Position)>,
}

impl Platform {
    pub(super) fn new() -> Platform {
        Platform {
            sectors: vec![[0u8; abi::SECTOR_BYTES]; DISK_SECTORS],
            entropy_state: 0x1234_5678,
            ..Platform::default()
        }
    }

    fn now_ns(&self, guest: &ModelGuest) -> u64 {
        guest.position().instructions * NS_PER_INSTRUCTION + self.idle_ns
    }

    /// Runs the guest until `done` holds, it powers off, or `instructions_max` instructions have retired.
    pub(super) fn run_until(
        &mut self,
        guest: &mut ModelGuest,
        instructions_max: u64,
        done: impl Fn(&Platform) -> bool,
    ) {
        while !done(self) && self.power_off.is_none() && guest.position().instructions < instructions_max {
            let mut target = self.next_timer_instructions(guest).min(instructions_max);
            if self.single_step {
                target = target.min(guest.position().instructions + 1);
            }
            let exit = guest.run(Some(target)).expect("the model guest does not fail");
            if exit != Exit::InstructionLimit {
                self.trace.push((exit, guest.position()));
            }
            match exit {
                Exit::InstructionLimit => self.fire_timer_if_due(guest),
                Exit::Kicked => unreachable!("nothing kicks a model guest"),
                Exit::PortOut { port, value, .. } => self.port_out(guest, port, value),
                Exit::PortIn { port, .. } => {
                    let value = self.port_in(guest, port);
                    guest.complete_port_in(value);
                }
                Exit::Halt => self.halted(guest),
                Exit::Shutdown => panic!("guest shut down; console so far:\n{}", self.console),
            }
        }
    }

    fn next_timer_instructions(&self, guest: &ModelGuest) -> u64 {
        if self.timer_period_ns == 0 {
            return u64::MAX;
        }
        let now_ns = self.now_ns(guest);
        let wait_ns = self.timer_next_ns.saturating_sub(now_ns);
        guest.position().instructions + wait_ns.div_ceil(NS_PER_INSTRUCTION)
    }

    fn fire_timer_if_due(&mut self, guest: &mut ModelGuest) {
        if self.timer_period_ns != 0 && self.now_ns(guest) >= self.timer_next_ns {
            guest.inject_interrupt(abi::VECTOR_TIMER).unwrap();
            self.timer_next_ns += self.timer_period_ns;
        }
    }

    /// Delivers what the devices have; if nothing, sleeps until the next timer expiry.
    fn halted(&mut self, guest: &mut ModelGuest) {
        if !self.in_flight.is_empty() {
            self.completions.extend(self.in_flight.drain(..));
            guest.inject_interrupt(abi::VECTOR_DISK).unwrap();
            return;
        }
        if let (Some(gpa), Some(frame)) = (self.rx_posted, self.frames_in.front()) {
            let frame = frame.clone();
            self.frames_in.pop_front();
            assert!(frame.len() <= abi::NET_RX_BUFFER_BYTES);
            guest.write_memory(gpa + abi::BUFFER_HEADER_BYTES, &frame).unwrap();
            guest.write_memory(gpa, &(frame.len() as u32).to_le_bytes()).unwrap();
            self.rx_posted = None;
            guest.inject_interrupt(abi::VECTOR_NET).unwrap();
            return;
        }
        assert!(self.timer_period_ns != 0, "guest halted with no timer and nothing to deliver");
        self.idle_ns += self.timer_next_ns.saturating_sub(self.now_ns(guest));
        self.fire_timer_if_due(guest);
    }

    fn read_buffer(guest: &ModelGuest, gpa: u64) -> Vec<u8> {
        let mut header = [0u8; 4];
        guest.read_memory(gpa, &mut header).unwrap();
        let mut bytes = vec![0u8; u32::from_le_bytes(header) as usize];
        guest.read_memory(gpa + abi::BUFFER_HEADER_BYTES, &mut bytes).unwrap();
        bytes
    }

    fn port_out(&mut self, guest: &mut ModelGuest, port: u16, value: u32) {
        let gpa = u64::from(value);
        match port {
            abi::CONSOLE_WRITE => self.console.push_str(&String::from_utf8(Self::read_buffer(guest, gpa)).unwrap()),
            abi::POWER_OFF => self.power_off = Some(value),
            abi::YIELD => {}
            abi::TIMER_PERIOD_US => {
                self.timer_period_ns = u64::from(value) * 1_000;
                self.timer_next_ns = self.now_ns(guest) + self.timer_period_ns;
            }
            abi::DISK_SUBMIT => self.disk_submit(guest, gpa),
            abi::NET_TX => self.frames_out.push(Self::read_buffer(guest, gpa)),
            abi::NET_RX_POST => self.rx_posted = Some(gpa),
            other => panic!("unexpected OUT {other:#x}"),
        }
    }

    fn port_in(&mut self, guest: &ModelGuest, port: u16) -> u32 {
        match port {
            abi::CLOCK_LO => {
                self.clock_latched_ns = self.now_ns(guest);
                self.clock_latched_ns as u32
            }
            abi::CLOCK_HI => (self.clock_latched_ns >> 32) as u32,
            abi::ENTROPY => {
                self.entropy_state = crate::mix64(self.entropy_state.wrapping_add(1));
                self.entropy_state as u32
            }
            abi::DISK_COMPLETION => match self.completions.pop_front() {
                Some((tag, status)) => {
                    self.last_status = status;
                    tag
                }
                None => abi::DISK_NONE,
            },
            abi::DISK_STATUS => self.last_status,
            abi::DISK_SECTORS => DISK_SECTORS as u32,
            other => panic!("unexpected IN {other:#x}"),
        }
    }

    fn disk_submit(&mut self, guest: &mut ModelGuest, gpa: u64) {
        let mut descriptor = [0u8; abi::DISK_REQUEST_BYTES];
        guest.read_memory(gpa, &mut descriptor).unwrap();
        let word = |at: usize| u32::from_le_bytes(descriptor[at..at + 4].try_into().unwrap());
        let quad = |at: usize| u64::from_le_bytes(descriptor[at..at + 8].try_into().unwrap());
        let (op, tag, sector, sectors, buffer) = (word(0), word(4), quad(8) as usize, word(16) as usize, quad(24));
        let status = if sector + sectors > DISK_SECTORS {
            abi::DiskStatus::BadRequest
        } else if op == abi::DISK_OP_READ {
            for index in 0..sectors {
                let at = buffer + (index * abi::SECTOR_BYTES) as u64;
                guest.write_memory(at, &self.sectors[sector + index]).unwrap();
            }
            abi::DiskStatus::Ok
        } else if op == abi::DISK_OP_WRITE && self.fail_writes {
            abi::DiskStatus::IoError
        } else if op == abi::DISK_OP_WRITE && self.lose_writes {
            abi::DiskStatus::Ok
        } else if op == abi::DISK_OP_WRITE {
            for index in 0..sectors {
                let at = buffer + (index * abi::SECTOR_BYTES) as u64;
                guest.read_memory(at, &mut self.sectors[sector + index]).unwrap();
            }
            abi::DiskStatus::Ok
        } else {
            abi::DiskStatus::BadRequest
        };
        self.in_flight.push((tag, status as u32));
    }
}
