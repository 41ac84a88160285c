//! The joiner: a fresh node that becomes the backup of a live primary by receiving a clone of its running VM
//! (re-protection, the paper's FT VMotion). It asks to join, takes the pre-copy passes into its guest's memory,
//! restores the CPU and device state at the cut, checks that its state hashes to the primary's, and then turns
//! into a [`Backup`] that replays the log from the cut on. Until the cut is complete it holds nothing worth
//! keeping: any failure stops it (`Stopped::JoinFailed`) and it never takes part in a go-live race.

use std::collections::VecDeque;

use crate::backup::Backup;
use crate::config::{Config, NS_PER_MS};
use crate::events::{Action, CloneProgress, Event, Stats, Stopped};
use crate::guest::{Guest, PAGE_BYTES};
use crate::log::{Output, OutputKind};
use crate::platform::Platform;
use crate::position::Position;
use crate::vm::Vm;
use crate::wire::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `Join` sent; waiting for the primary's `CloneBegin`.
    Asking,
    /// Receiving pre-copy passes for `epoch`.
    Receiving { epoch: u64 },
}

pub struct Joiner<G: Guest> {
    config: Config,
    vm: Vm<G>,
    mode: Mode,
    /// When the primary was last heard from; silence past the failure timeout ends the attempt.
    heard_ns: u64,
    /// The pass whose pages arrive now (0 before the first).
    pass: u32,
    pages_received: u64,
    /// Pages of the pass under way received so far.
    pages_in_pass: u64,
    pages_total: u64,
    writes: Vec<Output>,
    actions: VecDeque<Action>,
    stopped: Option<Stopped>,
    /// The cut is restored and verified: the backup it becomes, at this epoch.
    cloned: Option<u64>,
}

impl<G: Guest> Joiner<G> {
    /// A joiner with a guest built from the pair's image; it asks to join as node `node` at once.
    pub fn new(config: Config, guest: G, disk_sectors: u64, node: u64, now_ns: u64) -> Joiner<G> {
        if let Err(error) = config.validate() {
            panic!("the driver must validate the config first: {error}");
        }
        let join = Message::Join { pair_id: config.pair_id, image_digest: config.image_digest, node };
        let pages_total = guest.memory_bytes() / PAGE_BYTES as u64;
        Joiner {
            vm: Vm::new(guest, disk_sectors),
            config,
            mode: Mode::Asking,
            heard_ns: now_ns,
            pass: 0,
            pages_received: 0,
            pages_in_pass: 0,
            pages_total,
            writes: Vec::new(),
            actions: VecDeque::from([Action::Send(join)]),
            stopped: None,
            cloned: None,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self.mode {
            Mode::Asking => 0,
            Mode::Receiving { epoch } => epoch,
        }
    }

    pub fn position(&self) -> Position {
        self.vm.position()
    }

    pub fn take_stopped(&mut self) -> Option<Stopped> {
        self.stopped.take()
    }

    pub fn take_actions(&mut self) -> VecDeque<Action> {
        std::mem::take(&mut self.actions)
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The primary must say something within the startup timeout, then at least once per failure timeout.
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.stopped.is_none() && self.cloned.is_none()).then(|| self.deadline_ns())
    }

    fn deadline_ns(&self) -> u64 {
        let wait_ms = match self.mode {
            Mode::Asking => self.config.startup_timeout_ms,
            Mode::Receiving { .. } => self.config.failure_timeout_ms,
        };
        self.heard_ns + wait_ms * NS_PER_MS
    }

    pub fn stats(&self) -> Stats {
        let progress = CloneProgress {
            pass: self.pass,
            pages_done: self.pages_received,
            pages_total: self.pages_total,
            dirty_pages: 0,
        };
        Stats { clone: Some(progress), ..Stats::default() }
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        if self.stopped.is_none() && self.cloned.is_none() && now_ns >= self.deadline_ns() {
            let silent_ms = (now_ns - self.heard_ns) / NS_PER_MS;
            self.fail(format!("no word from the primary for {silent_ms} ms"));
        }
    }

    pub fn handle_channel_closed(&mut self, _now_ns: u64, reason: &str) {
        if self.cloned.is_none() {
            self.fail(format!("the channel to the primary failed: {reason}"));
        }
    }

    /// Gives up: the clone is incomplete, so nothing of it is kept.
    fn fail(&mut self, reason: String) {
        if self.stopped.is_some() || self.cloned.is_some() {
            return;
        }
        self.actions.push_back(Action::Notify(Event::CloneAbandoned { reason: reason.clone() }));
        self.actions.push_back(Action::CloseChannel);
        self.stopped = Some(Stopped::JoinFailed(reason));
    }

    pub fn handle_message(&mut self, now_ns: u64, message: Message) {
        if self.stopped.is_some() || self.cloned.is_some() {
            return;
        }
        let result = match (self.mode, message) {
            // Heartbeats are another pair's business until this node is a backup.
            (_, Message::Heartbeat { .. }) => return,
            (Mode::Asking, Message::CloneBegin { pair_id, epoch, memory_bytes }) => {
                self.begin(pair_id, epoch, memory_bytes)
            }
            (Mode::Receiving { .. }, Message::ClonePages { pass, pages }) => self.pages(pass, pages),
            (Mode::Receiving { .. }, Message::ClonePassEnd { pass, pages }) => self.pass_end(pass, pages),
            (Mode::Receiving { .. }, Message::CloneWrite { seq, target, data }) => {
                if data.len() as u64 != u64::from(target.sectors) * crate::abi::SECTOR_BYTES as u64 {
                    Err(format!("a write in flight of {} bytes for {} sectors", data.len(), target.sectors))
                } else {
                    let output = Output { seq, kind: OutputKind::DiskWrite, bytes: data, disk: Some(target) };
                    self.writes.push(output);
                    Ok(())
                }
            }
            (Mode::Receiving { epoch }, Message::CloneCut { position, cpu, platform, halted, hash }) => {
                self.cut(epoch, position, &cpu, &platform, halted, hash)
            }
            (_, other) => Err(format!("unexpected message while joining: {}", other.name())),
        };
        self.heard_ns = now_ns;
        if let Err(reason) = result {
            self.fail(reason);
        }
    }

    fn begin(&mut self, pair_id: u64, epoch: u64, memory_bytes: u64) -> Result<(), String> {
        if pair_id != self.config.pair_id {
            return Err(format!("a clone of pair {pair_id}, not of pair {}", self.config.pair_id));
        }
        if epoch == 0 || epoch == u64::MAX {
            return Err(format!("a clone in epoch {epoch}"));
        }
        if memory_bytes != self.vm.guest.memory_bytes() || memory_bytes == 0 {
            let own = self.vm.guest.memory_bytes();
            return Err(format!("a clone of {memory_bytes} bytes of memory into a guest of {own}"));
        }
        self.mode = Mode::Receiving { epoch };
        self.pass = 1;
        Ok(())
    }

    fn pages(&mut self, pass: u32, pages: Vec<(u64, Vec<u8>)>) -> Result<(), String> {
        if pass != self.pass {
            return Err(format!("pages of pass {pass} during pass {}", self.pass));
        }
        for (number, bytes) in pages {
            if number >= self.pages_total {
                return Err(format!("page {number} beyond the guest's {} pages", self.pages_total));
            }
            self.vm.guest.write_memory(number * PAGE_BYTES as u64, &bytes).map_err(|error| error.to_string())?;
            self.pages_received += 1;
            self.pages_in_pass += 1;
        }
        // Room in the primary's window for more.
        self.actions.push_back(Action::Send(Message::ClonePagesAck { pass, pages: self.pages_in_pass }));
        Ok(())
    }

    fn pass_end(&mut self, pass: u32, pages: u64) -> Result<(), String> {
        if pass != self.pass {
            return Err(format!("the end of pass {pass} during pass {}", self.pass));
        }
        if pages != self.pages_in_pass {
            return Err(format!("pass {pass} ends with {pages} pages, {} arrived", self.pages_in_pass));
        }
        self.actions.push_back(Action::Send(Message::CloneAck { pass }));
        self.pass += 1;
        self.pages_in_pass = 0;
        Ok(())
    }

    fn cut(
        &mut self,
        epoch: u64,
        position: Position,
        cpu: &[u8],
        platform: &[u8],
        halted: bool,
        hash: u64,
    ) -> Result<(), String> {
        self.vm.guest.restore_cpu(cpu).map_err(|error| format!("the cut's CPU state: {error}"))?;
        self.vm.platform = Platform::decode(platform).map_err(|error| format!("the cut's device state: {error}"))?;
        self.vm.halted = halted;
        if self.vm.position() != position {
            return Err(format!("the cut is at {position}, the restored guest at {}", self.vm.position()));
        }
        let own = self.vm.state_hash().map_err(|error| error.to_string())?;
        if own != hash {
            cov_mark::hit!(clone_state_mismatch);
            return Err(format!("the state hash at the cut is {own:016x}, the primary's {hash:016x}"));
        }
        let pages = self.pages_received;
        self.actions.push_back(Action::Notify(Event::Cloned { epoch, position, pages }));
        self.cloned = Some(epoch);
        Ok(())
    }

    /// The backup this joiner has become, once the cut is restored and verified.
    pub fn into_backup(mut self: Box<Self>, now_ns: u64) -> Result<Backup<G>, Box<Joiner<G>>> {
        let Some(epoch) = self.cloned else { return Err(self) };
        let actions = self.take_actions();
        let joiner = *self;
        let mut backup = Backup::cloned(joiner.config, joiner.vm, epoch, joiner.writes, now_ns);
        backup.prepend_actions(actions);
        Ok(backup)
    }

    /// Whether the cut is complete and the node may become a backup.
    pub fn cloned(&self) -> bool {
        self.cloned.is_some()
    }
}
