//! A scripted guest for the state-machine tests: a fixed sequence of exits and a little memory for DMA.

#![allow(dead_code)]

use std::collections::VecDeque;

use ft::abi;
use ft::{Action, Config, EntropySource, Exit, Guest, GuestError, Node, Position};

pub struct Script {
    pub exits: VecDeque<Exit>,
    pub position: Position,
    pub memory: Vec<u8>,
    /// What an exhausted script does: halt forever.
    pub then: Exit,
}

/// Where `Script::console` puts its console buffer.
pub const CONSOLE_GPA: u64 = 0x100;

impl Script {
    pub fn new(exits: impl IntoIterator<Item = Exit>) -> Script {
        Script {
            exits: exits.into_iter().collect(),
            position: Position::ZERO,
            memory: vec![0u8; 64 * 1024],
            then: Exit::Halt,
        }
    }

    /// Writes "hi\n" to the console through CONSOLE_WRITE, then halts.
    pub fn console_then_halt() -> Script {
        let mut script = Script::new([Exit::PortOut { port: abi::CONSOLE_WRITE, size: 4, value: CONSOLE_GPA as u32 }]);
        script.put_buffer(CONSOLE_GPA, b"hi\n");
        script
    }

    /// Writes "bye\n" to the console, then powers off with status 0.
    pub fn console_then_power_off() -> Script {
        let mut script = Script::new([
            Exit::PortOut { port: abi::CONSOLE_WRITE, size: 4, value: CONSOLE_GPA as u32 },
            Script::power_off(0),
        ]);
        script.put_buffer(CONSOLE_GPA, b"bye\n");
        script
    }

    /// Writes a `Buffer` (u32 length, bytes) at `gpa`.
    pub fn put_buffer(&mut self, gpa: u64, bytes: &[u8]) {
        let at = gpa as usize;
        self.memory[at..at + 4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.memory[at + 4..at + 4 + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes a disk request descriptor at `gpa` and returns the exit that submits it.
    pub fn disk_request(&mut self, gpa: u64, op: u32, tag: u32, sector: u64, buffer_gpa: u64) -> Exit {
        let at = gpa as usize;
        let mut descriptor = Vec::new();
        descriptor.extend_from_slice(&op.to_le_bytes());
        descriptor.extend_from_slice(&tag.to_le_bytes());
        descriptor.extend_from_slice(&sector.to_le_bytes());
        descriptor.extend_from_slice(&1u32.to_le_bytes());
        descriptor.extend_from_slice(&0u32.to_le_bytes());
        descriptor.extend_from_slice(&buffer_gpa.to_le_bytes());
        self.memory[at..at + abi::DISK_REQUEST_BYTES].copy_from_slice(&descriptor);
        Exit::PortOut { port: abi::DISK_SUBMIT, size: 4, value: gpa as u32 }
    }

    pub fn power_off(status: u32) -> Exit {
        Exit::PortOut { port: abi::POWER_OFF, size: 4, value: status }
    }
}

impl Guest for Script {
    fn run(&mut self, _instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        let exit = self.exits.pop_front().unwrap_or(self.then);
        self.position.exits += 1;
        Ok(exit)
    }
    fn position(&self) -> Position {
        self.position
    }
    fn pc(&self) -> u64 {
        0x1000 + self.position.exits
    }
    fn counts_instructions(&self) -> bool {
        false
    }
    fn complete_port_in(&mut self, _value: u32) {}
    fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let start = gpa as usize;
        let bytes =
            self.memory.get(start..start + buf.len()).ok_or(GuestError::MemoryOutOfRange { gpa, len: buf.len() })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
    fn write_memory(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        let start = gpa as usize;
        let len = data.len();
        self.memory.get_mut(start..start + len).ok_or(GuestError::MemoryOutOfRange { gpa, len })?.copy_from_slice(data);
        Ok(())
    }
    fn inject_interrupt(&mut self, _vector: u8) -> Result<(), GuestError> {
        Ok(())
    }
    /// The position and the memory: a clone that put a page in the wrong place does not match.
    fn state_hash(&mut self) -> Result<u64, GuestError> {
        Ok(xxhash_rust::xxh3::xxh3_64(&self.memory) ^ self.position.exits)
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), GuestError> {
        Ok(())
    }
    fn memory_bytes(&self) -> u64 {
        self.memory.len() as u64
    }
    /// Every page, every time: a script cannot tell which it wrote, and more is never wrong.
    fn take_dirty_pages(&mut self) -> Result<Vec<u64>, GuestError> {
        Ok((0..(self.memory.len() / ft::guest::PAGE_BYTES) as u64).collect())
    }
    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        let mut cpu = self.position.exits.to_le_bytes().to_vec();
        cpu.extend_from_slice(&self.position.instructions.to_le_bytes());
        Ok(cpu)
    }
    fn restore_cpu(&mut self, cpu: &[u8]) -> Result<(), GuestError> {
        let [exits, instructions] = [&cpu.get(..8), &cpu.get(8..16)]
            .map(|bytes| bytes.and_then(|bytes| bytes.try_into().ok()).map(u64::from_le_bytes));
        let (Some(exits), Some(instructions), 16) = (exits, instructions, cpu.len()) else {
            return Err(GuestError::BadSnapshot(format!("a script's CPU of {} bytes", cpu.len())));
        };
        self.position = Position { exits, instructions };
        Ok(())
    }
}

pub struct Zero;
impl EntropySource for Zero {
    fn next_u32(&mut self) -> u32 {
        0
    }
}

pub fn drain<G: Guest>(node: &mut Node<G>) -> Vec<Action> {
    std::iter::from_fn(|| node.poll_action()).collect()
}

pub fn config() -> Config {
    Config { pair_id: 3, image_digest: 9, ..Config::default() }
}

/// The messages among `actions` that go on the logging channel.
pub fn sent(actions: &[Action]) -> Vec<ft::wire::Message> {
    actions.iter().filter_map(|a| if let Action::Send(m) = a { Some(m.clone()) } else { None }).collect()
}

pub fn events(actions: &[Action]) -> Vec<ft::Event> {
    actions.iter().filter_map(|a| if let Action::Notify(e) = a { Some(e.clone()) } else { None }).collect()
}

/// A primary of pair 3 whose backup has welcomed it (epoch 1), its start-up actions drained.
pub fn primary(script: Script) -> Node<Script> {
    let mut node = Node::Primary(Box::new(ft::primary::Primary::new(config(), script, 64, 1, 0)));
    drain(&mut node);
    node.handle_message(1, ft::wire::Message::Welcome { pair_id: 3, epoch: 1 });
    node
}

/// The log entries among `actions`.
pub fn log_of(actions: &[Action]) -> Vec<ft::wire::Message> {
    sent(actions).into_iter().filter(|m| matches!(m, ft::wire::Message::Log { .. })).collect()
}
