//! A `Guest` wrapper that copies the console output a guest produces straight from its exits, so that a replay
//! (whose outputs the backup suppresses, keeping only their digests) can show what the guest printed.

use std::cell::RefCell;
use std::rc::Rc;

use ft::abi;
use ft::{Exit, Guest, GuestError, Position, StateHash};

/// Console bytes kept at most; past it the tap stops copying (replay itself is unaffected).
const CONSOLE_BYTES_MAX: usize = 64 << 20;

pub struct ConsoleTap<G: Guest> {
    inner: G,
    /// Shared with the replay driver, which cannot reach the guest inside the backup.
    console: Rc<RefCell<Vec<u8>>>,
}

impl<G: Guest> ConsoleTap<G> {
    /// The tap and a handle on what it copies.
    pub fn new(inner: G) -> (ConsoleTap<G>, Rc<RefCell<Vec<u8>>>) {
        let console = Rc::new(RefCell::new(Vec::new()));
        (ConsoleTap { inner, console: console.clone() }, console)
    }

    /// Copies what a console exit prints: a `CONSOLE_WRITE` buffer, or a byte written to the UART's THR.
    fn observe(&mut self, exit: &Exit) {
        if self.console.borrow().len() >= CONSOLE_BYTES_MAX {
            return;
        }
        match *exit {
            Exit::PortOut { port: abi::CONSOLE_WRITE, value, .. } => {
                let gpa = u64::from(value);
                let mut header = [0u8; abi::BUFFER_HEADER_BYTES as usize];
                if self.inner.read_memory(gpa, &mut header).is_err() {
                    return;
                }
                let length = (u32::from_le_bytes(header) as usize).min(abi::CONSOLE_WRITE_BYTES_MAX);
                let mut bytes = vec![0u8; length];
                if self.inner.read_memory(gpa + abi::BUFFER_HEADER_BYTES, &mut bytes).is_ok() {
                    self.console.borrow_mut().extend_from_slice(&bytes);
                }
            }
            Exit::PortOut { port: abi::SERIAL_BASE, value, .. } => self.console.borrow_mut().push(value as u8),
            _ => {}
        }
    }
}

impl<G: Guest> Guest for ConsoleTap<G> {
    fn run(&mut self, instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        let exit = self.inner.run(instruction_target)?;
        self.observe(&exit);
        Ok(exit)
    }

    fn position(&self) -> Position {
        self.inner.position()
    }

    fn pc(&self) -> u64 {
        self.inner.pc()
    }

    fn counts_instructions(&self) -> bool {
        self.inner.counts_instructions()
    }

    fn complete_port_in(&mut self, value: u32) {
        self.inner.complete_port_in(value);
    }

    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.inner.read_memory(gpa, buf)
    }

    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        self.inner.write_memory(gpa, data)
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result<(), GuestError> {
        self.inner.inject_interrupt(vector)
    }

    fn state_hash(&mut self) -> Result<StateHash, GuestError> {
        self.inner.state_hash()
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        self.inner.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), GuestError> {
        self.inner.restore(snapshot)
    }

    fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes()
    }

    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, GuestError> {
        self.inner.take_dirty_pages()
    }

    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        self.inner.save_cpu()
    }

    fn restore_cpu(&mut self, cpu: &[u8]) -> Result<(), GuestError> {
        self.inner.restore_cpu(cpu)
    }
}
