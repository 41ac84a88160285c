//! The console: a 16550 UART (vm-superio) plus the batched `CONSOLE_WRITE` port.
//!
//! UART bytes are gathered into lines so that a line, not a byte, is one output record in the log.

use crate::bytes::{Reader, Writer};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

/// The UART's interrupt line is not wired: guests poll the line status register.
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// A line is flushed as one output at a newline or at this length.
const LINE_BYTES_MAX: usize = 256;

pub struct Console {
    uart: Serial<NoInterrupt, NoEvents, Vec<u8>>,
}

impl Console {
    pub fn new() -> Console {
        Console { uart: Serial::new(NoInterrupt, Vec::new()) }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// Writes a UART register; returns a completed line when there is one.
    pub fn write(&mut self, offset: u8, value: u8) -> Option<Vec<u8>> {
        // Writes cannot fail: the trigger is infallible and nothing is ever enqueued for input.
        let _ = self.uart.write(offset, value);
        let pending = self.uart.writer();
        if pending.last() == Some(&b'\n') || pending.len() >= LINE_BYTES_MAX {
            return Some(std::mem::take(self.uart.writer_mut()));
        }
        None
    }

    pub fn encode(&self, writer: &mut Writer) {
        let state = self.uart.state();
        for register in [
            state.baud_divisor_low,
            state.baud_divisor_high,
            state.interrupt_enable,
            state.interrupt_identification,
            state.line_control,
            state.line_status,
            state.modem_control,
            state.modem_status,
            state.scratch,
        ] {
            writer.u8(register);
        }
        writer.blob(self.uart.writer());
    }

    pub fn decode(reader: &mut Reader) -> Result<Console, String> {
        let err = |e: crate::bytes::Truncated| e.to_string();
        let mut registers = [0u8; 9];
        for register in registers.iter_mut() {
            *register = reader.u8().map_err(err)?;
        }
        let pending = reader.blob().map_err(err)?.to_vec();
        let state = SerialState {
            baud_divisor_low: registers[0],
            baud_divisor_high: registers[1],
            interrupt_enable: registers[2],
            interrupt_identification: registers[3],
            line_control: registers[4],
            line_status: registers[5],
            modem_control: registers[6],
            modem_status: registers[7],
            scratch: registers[8],
            in_buffer: Vec::new(),
        };
        let uart = Serial::from_state(&state, NoInterrupt, NoEvents, pending).map_err(|e| format!("{e:?}"))?;
        Ok(Console { uart })
    }
}

impl Clone for Console {
    fn clone(&self) -> Console {
        let mut writer = Writer::default();
        self.encode(&mut writer);
        Console::decode(&mut Reader::new(&writer.bytes)).expect("a console decodes what it encoded")
    }
}

impl PartialEq for Console {
    fn eq(&self, other: &Console) -> bool {
        let (mut a, mut b) = (Writer::default(), Writer::default());
        self.encode(&mut a);
        other.encode(&mut b);
        a.bytes == b.bytes
    }
}

impl Eq for Console {}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Console({} bytes pending)", self.uart.writer().len())
    }
}
