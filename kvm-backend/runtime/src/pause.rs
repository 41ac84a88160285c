//! How long the guest stands still for a clone's cut, measured where it happens: from the end of the run at
//! which the primary saves the guest's CPU state for the cut, until the guest's next run starts. This is what the
//! guest (and a client waiting on it) sees; the protocol core, which has no clock of its own during a turn,
//! cannot measure its own work (the last dirty pages, the CPU and device state, the state hash).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use ft::guest::RunStart;
use ft::{Exit, Guest, GuestError, Position, StateHash};

/// The pauses measured so far, in ms, in the order of the cuts.
pub type Pauses = Rc<RefCell<Vec<f64>>>;

/// A guest whose cut pauses are measured into `pauses`.
pub struct PauseMeter<G> {
    inner: G,
    /// When the last run ended.
    stopped_at: Option<Instant>,
    /// The cut's CPU state was saved: the pause began when the last run ended.
    cut_from: Option<Instant>,
    pauses: Pauses,
}

impl<G: Guest> PauseMeter<G> {
    pub fn new(inner: G, pauses: Pauses) -> PauseMeter<G> {
        PauseMeter { inner, stopped_at: None, cut_from: None, pauses }
    }

    fn stopped(&mut self) {
        self.stopped_at = Some(Instant::now());
    }

    fn starting(&mut self) {
        if let Some(from) = self.cut_from.take() {
            self.pauses.borrow_mut().push(from.elapsed().as_secs_f64() * 1e3);
        }
    }
}

impl<G: Guest> Guest for PauseMeter<G> {
    fn run(&mut self, instruction_target: Option<u64>) -> Result<Exit, GuestError> {
        self.starting();
        let exit = self.inner.run(instruction_target);
        self.stopped();
        exit
    }

    fn start_run(&mut self, instruction_target: Option<u64>) -> RunStart {
        self.starting();
        let start = self.inner.start_run(instruction_target);
        if matches!(start, RunStart::Done(_)) {
            self.stopped();
        }
        start
    }

    fn finish_run(&mut self) -> Option<Result<Exit, GuestError>> {
        let finished = self.inner.finish_run();
        if finished.is_some() {
            self.stopped();
        }
        finished
    }

    fn kick(&self) {
        self.inner.kick()
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
        self.inner.complete_port_in(value)
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

    /// The cut: the guest has stood still since its last run ended.
    fn save_cpu(&mut self) -> Result<Vec<u8>, GuestError> {
        let cpu = self.inner.save_cpu()?;
        self.cut_from = self.stopped_at.or(Some(Instant::now()));
        Ok(cpu)
    }

    fn restore_cpu(&mut self, cpu: &[u8]) -> Result<(), GuestError> {
        self.inner.restore_cpu(cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pause is measured from the end of the run before the cut to the start of the next run, once per cut.
    #[test]
    fn a_cut_pause_runs_from_the_last_exit_to_the_next_run() {
        let guest = model_guest::ModelGuest::from_name("kv").expect("the model's kv workload");
        let pauses = Pauses::default();
        let mut meter = PauseMeter::new(guest, pauses.clone());
        meter.run(Some(1_000)).expect("runs");
        std::thread::sleep(std::time::Duration::from_millis(5));
        meter.take_dirty_pages().expect("dirty pages");
        let _ = meter.save_cpu().expect("the cut");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(pauses.borrow().is_empty(), "not before the guest runs again");
        meter.run(Some(2_000)).expect("runs");
        meter.run(Some(3_000)).expect("runs");
        let pauses = pauses.borrow();
        assert_eq!(pauses.len(), 1, "{pauses:?}");
        assert!(pauses[0] >= 10.0, "from the last exit, not from the save: {pauses:?}");
    }
}
