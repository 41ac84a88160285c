//! Running the guest on the primary: every exit is handled by the platform, every input logged with its
//! position, every output logged and held.

use crate::config::NS_PER_US;
use crate::events::{Action, EntropySource, Event, Progress, Stopped};
use crate::guest::{Exit, Guest, GuestError, RunStart};
use crate::log::{Control, Entry, Input, LogIndex, Output, OutputKind, OutputRecord};
use crate::platform::{DiskOp, ExitAction, InputKind};
use crate::wire::Message;

use super::{Mode, PowerOff, Primary, LAG_SAMPLES_MAX};

/// How one run of the guest ended, for the slice loop.
enum RunEnd {
    /// A guest-initiated exit, handled.
    Exit,
    /// An instruction limit or a kick: no exit, nothing handled.
    BetweenExits,
    /// The guest or its exit failed; the node is stopping.
    Failed,
}

impl<G: Guest> Primary<G> {
    pub(super) fn flow_controlled(&self) -> bool {
        self.logging() && self.logged_unacked() >= self.config.log_entries_unacked_max
    }

    pub(super) fn logged_unacked(&self) -> usize {
        (self.log_index_next - 1 - self.acked) as usize
    }

    /// Runs the guest for one slice: exits until the slice is over, the guest halts or the log is full. With a
    /// guest on its own vCPU thread, the first run that starts there ends the slice (`Progress::Running`), and
    /// [`Primary::guest_exited`] takes its result.
    pub fn run_guest(&mut self, now_ns: u64, entropy: &mut dyn EntropySource) -> Progress {
        let Some(target) = self.prepare_run(now_ns) else { return Progress::Idle };
        let start = self.vm.position();
        loop {
            let result = match self.vm.start_run(target) {
                RunStart::Done(result) => result,
                RunStart::Started => return Progress::Running,
            };
            match self.finish_run(now_ns, result, entropy) {
                RunEnd::Failed => return Progress::Idle,
                RunEnd::BetweenExits => break,
                RunEnd::Exit => {}
            }
            if self.vm.halted || self.stopped.is_some() || self.power_off.is_some() {
                break;
            }
            self.deliver_inputs(now_ns);
            if self.vm.position().exits - start.exits >= self.config.slice_exits_max || self.flow_controlled() {
                break;
            }
            self.tick_throttle(now_ns);
            if self.throttled() {
                break;
            }
        }
        Progress::Ran
    }

    /// Takes the result of a run on the vCPU thread, if it has ended, and handles its exit.
    pub fn guest_exited(&mut self, now_ns: u64, entropy: &mut dyn EntropySource) -> Progress {
        let Some(result) = self.vm.finish_run() else { return Progress::Running };
        let end = self.finish_run(now_ns, result, entropy);
        self.clone_step(now_ns);
        match end {
            RunEnd::Failed => Progress::Idle,
            RunEnd::BetweenExits | RunEnd::Exit => Progress::Ran,
        }
    }

    /// Whether the guest may run now, after delivering what is due; its instruction target if so.
    fn prepare_run(&mut self, now_ns: u64) -> Option<Option<u64>> {
        if self.vm.running() {
            return None;
        }
        self.clone_step(now_ns);
        if self.power_off.is_some() {
            self.forget_completions();
        }
        if self.stopped.is_some() || self.power_off.is_some() || matches!(self.mode, Mode::Connecting { .. }) {
            return None;
        }
        if self.flow_controlled() {
            if !self.stalled {
                cov_mark::hit!(primary_stalled_by_backup);
                self.stalled = true;
                self.stats.stalls += 1;
                let unacked = self.logged_unacked();
                self.actions.push_back(Action::Notify(Event::Stalled { unacked }));
            }
            return None;
        }
        self.stalled = false;
        self.tick_throttle(now_ns);
        if self.throttled() {
            cov_mark::hit!(primary_throttled);
            return None;
        }
        self.deliver_inputs(now_ns);
        if self.vm.halted || self.stopped.is_some() {
            return None;
        }
        let start = self.vm.position();
        Some(self.vm.guest.counts_instructions().then_some(start.instructions + self.config.slice_instructions))
    }

    fn finish_run(&mut self, now_ns: u64, result: Result<Exit, GuestError>, entropy: &mut dyn EntropySource) -> RunEnd {
        let exit = match result {
            Ok(Exit::InstructionLimit | Exit::Kicked) => return RunEnd::BetweenExits,
            Ok(exit) => exit,
            Err(error) => {
                self.guest_failed(error.to_string());
                return RunEnd::Failed;
            }
        };
        if let Err(error) = self.handle_exit(now_ns, exit, entropy) {
            self.guest_failed(error);
            return RunEnd::Failed;
        }
        RunEnd::Exit
    }

    /// The guest powered off: completions are never delivered again, so a finished read will never be logged,
    /// and must not hold an overlapping write back for ever (the power-off waits for every write). Its data
    /// goes nowhere: if the backup takes over the power-off, it reissues the read for a guest that is off.
    fn forget_completions(&mut self) {
        while let Some(done) = self.disk_done.pop_front() {
            self.scheduler.read_logged(done.tag, None);
        }
    }

    pub(super) fn guest_failed(&mut self, reason: String) -> Progress {
        self.actions.push_back(Action::Notify(Event::GuestStopped { reason: reason.clone() }));
        self.stopped = Some(Stopped::GuestFailed(reason));
        Progress::Idle
    }

    pub(super) fn handle_exit(
        &mut self,
        now_ns: u64,
        exit: Exit,
        entropy: &mut dyn EntropySource,
    ) -> Result<(), String> {
        let action = self.vm.platform.handle_exit(exit, &mut self.vm.guest).map_err(|e| e.to_string())?;
        match action {
            ExitAction::Continue => {}
            ExitAction::NeedsInput(InputKind::Clock) => {
                let ns = self.guest_clock_ns(now_ns);
                self.input(now_ns, Input::Clock { ns })?;
            }
            ExitAction::NeedsInput(InputKind::Entropy) => {
                self.input(now_ns, Input::Entropy { value: entropy.next_u32() })?;
            }
            ExitAction::Output(output) => self.output(now_ns, output),
            ExitAction::DiskRead(request) => self.scheduler.submit_read(request.target),
            ExitAction::Halt => self.vm.halted = true,
            ExitAction::PowerOff { status } => self.power_off(now_ns, status),
            ExitAction::Shutdown => self.power_off(now_ns, u32::MAX),
        }
        if self.vm.platform.timer_period_us() != self.timer_period_us {
            self.restart_timer(now_ns);
        }
        self.maybe_checkpoint(now_ns).map_err(|e| e.to_string())
    }

    pub(super) fn maybe_checkpoint(&mut self, now_ns: u64) -> Result<(), crate::platform::PlatformError> {
        let position = self.vm.position();
        if !self.logging() || position.exits - self.exits_at_checkpoint < self.config.checkpoint_interval_exits {
            return Ok(());
        }
        self.exits_at_checkpoint = position.exits;
        let hash = self.vm.state_hash()?;
        self.append(now_ns, Entry::Checkpoint { position, hash });
        Ok(())
    }

    /// Delivers what arrived from outside at the current position: timer, disk completions, one network frame.
    /// Nothing is delivered where the guest stands at no position (after a kick): the inputs wait for its next
    /// exit, so that the backup can deliver them at the same point.
    pub(super) fn deliver_inputs(&mut self, now_ns: u64) {
        if !self.vm.at_position() {
            cov_mark::hit!(inputs_wait_for_an_exit_after_a_kick);
            return;
        }
        if self.timer_deadline_ns.is_some_and(|deadline| now_ns >= deadline) {
            let period_ns = u64::from(self.timer_period_us) * NS_PER_US;
            // Expiries that passed while the guest was busy coalesce into one, like a real one-shot rearm.
            self.timer_deadline_ns = Some(now_ns + period_ns);
            if let Err(error) = self.input(now_ns, Input::Timer) {
                self.guest_failed(error);
                return;
            }
        }
        while let Some(done) = self.disk_done.pop_front() {
            let tag = done.tag;
            let read = self.vm.platform.disk_request(tag).is_some_and(|request| request.op == DiskOp::Read);
            let input = Input::DiskComplete { tag, status: done.status, data: done.data };
            match self.input(now_ns, input) {
                Ok(index) if read => self.scheduler.read_logged(tag, index),
                Ok(_) => {}
                Err(error) => {
                    self.guest_failed(error);
                    return;
                }
            }
        }
        if self.vm.platform.net_rx_ready() {
            if let Some(frame) = self.net_frames.pop_front() {
                if let Err(error) = self.input(now_ns, Input::NetReceive { frame }) {
                    self.guest_failed(error);
                }
            }
        }
    }

    /// Applies an input to the guest and logs it; returns its log index (none without a backup).
    pub(super) fn input(&mut self, now_ns: u64, input: Input) -> Result<Option<LogIndex>, String> {
        self.vm.platform.apply(&input, &mut self.vm.guest).map_err(|e| e.to_string())?;
        if !matches!(input, Input::Clock { .. } | Input::Entropy { .. }) {
            self.vm.halted = false;
        }
        let entry = Entry::Input { position: self.vm.position(), pc: self.vm.guest.pc(), input };
        Ok(self.append(now_ns, entry))
    }

    pub(super) fn output(&mut self, now_ns: u64, output: Output) {
        let entry =
            Entry::Output { position: self.vm.position(), pc: self.vm.guest.pc(), record: OutputRecord::of(&output) };
        let index = self.append(now_ns, entry);
        match (output.kind, output.disk) {
            (OutputKind::DiskWrite, Some(target)) => {
                self.scheduler.submit_write(target, output.bytes, output.seq, index);
            }
            _ => match index {
                Some(index) => self.held.push_back((index, now_ns, output)),
                None => self.release(output, None),
            },
        }
    }

    /// The guest powered off: logged as a control entry; the node stops once it is acknowledged and everything
    /// before it has drained (`Primary::maybe_powered_off`).
    pub(super) fn power_off(&mut self, now_ns: u64, status: u32) {
        assert!(self.power_off.is_none(), "a guest powers off once");
        if matches!(self.mode, Mode::AwaitingJoin { .. } | Mode::Cloning) {
            self.abandon_clone("the guest powered off".into());
        }
        let entry = Entry::Control {
            position: self.vm.position(),
            pc: self.vm.guest.pc(),
            control: Control::PowerOff { status },
        };
        let index = self.append(now_ns, entry);
        self.power_off = Some(PowerOff { status, index });
        // The final state, so that the backup verifies it before it stops too.
        if self.logging() {
            if let Err(error) = self.checkpoint_now(now_ns) {
                self.guest_failed(error.to_string());
            }
        }
    }

    /// Appends an entry to the log when there is a backup; returns its index.
    pub(super) fn append(&mut self, now_ns: u64, entry: Entry) -> Option<LogIndex> {
        if !self.logging() {
            return None;
        }
        // The wait for an ack starts when the oldest unacknowledged entry goes out, not at the last ack: after
        // an idle log (or a late channel) the next entry would otherwise be "stalled" the moment it is sent.
        if self.logged_unacked() == 0 {
            self.channel_detector.heard(now_ns);
        }
        let index = self.log_index_next;
        self.log_index_next += 1;
        if self.logged_at_ns.len() < LAG_SAMPLES_MAX {
            self.logged_at_ns.push_back((index, now_ns));
        }
        self.stats.log_entries += 1;
        self.actions.push_back(Action::Send(Message::Log { index, entry }));
        Some(index)
    }

    pub(super) fn release(&mut self, output: Output, log_index: Option<LogIndex>) {
        assert_ne!(output.kind, OutputKind::DiskWrite, "disk writes leave through the scheduler");
        self.released_seq = Some(self.released_seq.map_or(output.seq, |seq| seq.max(output.seq)));
        self.note_release_during_clone();
        self.actions.push_back(Action::Release { output, log_index });
    }
}
