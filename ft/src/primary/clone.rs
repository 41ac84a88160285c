//! Re-protection on the primary: a live primary without a backup clones its running VM onto a joiner (the
//! paper's FT VMotion), and is protected again from the cut on.
//!
//! The steps: a joiner's channel arrives and it asks to `Join`; the primary has the arbiter record the joiner as
//! the backup of a new epoch (a test-and-set by the primary itself, so that no node of an older epoch can go
//! live against the new pair, and storage fences the old epoch's writes); then pre-copy passes send memory while
//! the guest runs on, unprotected: the first pass every page, each later one the pages dirtied since. When the
//! dirty set is small, stops shrinking, or the passes run out, the guest stays paused at an exit for the cut:
//! the last dirty pages, the disk writes in flight, the CPU and device state and the state hash. The primary
//! then goes on in logging mode with a fresh log, and outputs wait for the new backup's acks as usual. Any
//! failure before the cut leaves the primary running unprotected; after the cut the joiner is a backup, and
//! its failure is handled like any backup's.

use crate::config::NS_PER_MS;
use crate::events::{Action, CloneProgress, Event};
use crate::guest::{Guest, PAGE_BYTES};
use crate::wire::{Message, CLONE_PAGES_PER_MESSAGE};

use super::{Mode, Primary, Throttle};

/// A clone under way (from the arbiter's grant to the cut).
#[derive(Debug)]
pub(super) struct Cloning {
    node: u64,
    started_ns: u64,
    /// The pass under way, or the last (0 before the first).
    pass: u32,
    /// The pages of the pass not sent yet, and how many the pass has.
    to_send: std::collections::VecDeque<u64>,
    pass_pages: u64,
    /// Pages of the pass sent, and acknowledged by the joiner (`ClonePagesAck`).
    sent_in_pass: u64,
    acked_in_pass: u64,
    /// The pass whose `CloneAck` is awaited (every page sent, `ClonePassEnd` too).
    awaiting: Option<u32>,
    /// When the joiner last acknowledged anything, or the primary last sent: the joiner must answer within the
    /// failure timeout of it while the primary waits on it.
    progress_ns: u64,
    /// Pages sent by the last pass: a later pass that is no smaller means the guest dirties as fast as the
    /// channel carries pages, and more passes would not converge.
    last_pass_pages: u64,
    pages_sent: u64,
    bytes_sent: u64,
    /// The next step is the cut; these pages go with it (more may be dirtied until the guest is at an exit).
    cut: Option<(Vec<u64>, u64)>,
    /// Outputs released while the clone ran: it ran under load.
    released_during: u64,
}

impl Cloning {
    /// Pages of the pass sent and not yet acknowledged.
    fn unacked(&self) -> u64 {
        self.sent_in_pass - self.acked_in_pass
    }

    /// Whether more pages of the pass may go now (`window_pages`: `Config::clone_window_pages`).
    fn window_open(&self, window_pages: u64) -> bool {
        self.to_send.is_empty() || self.unacked() < window_pages
    }
}

impl<G: Guest> Primary<G> {
    /// Whether a joiner may connect now: live without a backup, running, and with a guest that can be cloned.
    pub fn accepts_joiner(&self) -> bool {
        self.mode == Mode::Unprotected
            && self.power_off.is_none()
            && self.stopped.is_none()
            && self.vm.guest.memory_bytes() > 0
    }

    /// The driver connected a joiner's channel; its `Join` should follow.
    pub fn handle_joiner(&mut self, now_ns: u64) {
        assert!(self.accepts_joiner(), "the driver offers a joiner only when `accepts_joiner`");
        self.mode = Mode::AwaitingJoin { deadline_ns: now_ns + self.config.startup_timeout_ms * NS_PER_MS };
    }

    pub(super) fn handle_join(&mut self, pair_id: u64, image_digest: u64, node: u64) {
        if pair_id != self.config.pair_id || image_digest != self.config.image_digest {
            self.abandon_clone(format!(
                "node {node:#x} asked to join pair {pair_id} with image {image_digest:#x}; this is pair {} with \
                 image {:#x}",
                self.config.pair_id, self.config.image_digest
            ));
            return;
        }
        self.mode = Mode::Enlisting { node, retry_at_ns: None, channel_open: true };
        self.actions.push_back(Action::TestAndSet { expected_epoch: self.epoch });
    }

    /// The arbiter answered the enlisting test-and-set.
    pub(super) fn enlisted(&mut self, now_ns: u64, epoch: u64, node: u64, channel_open: bool) {
        self.epoch = epoch;
        // Writes issued in the old epoch are fenced from now on and go again in this one (`handle_fenced`).
        if !channel_open || self.power_off.is_some() {
            self.mode = Mode::Unprotected;
            let reason = if channel_open { "the guest powered off" } else { "the joiner's channel closed" };
            self.abandon_clone(format!("{reason} while the arbiter recorded it"));
            return;
        }
        let memory_bytes = self.vm.guest.memory_bytes();
        self.mode = Mode::Cloning;
        self.cloning = Some(Cloning {
            node,
            started_ns: now_ns,
            pass: 0,
            to_send: std::collections::VecDeque::new(),
            pass_pages: 0,
            sent_in_pass: 0,
            acked_in_pass: 0,
            awaiting: None,
            progress_ns: now_ns,
            last_pass_pages: u64::MAX,
            pages_sent: 0,
            bytes_sent: 0,
            cut: None,
            released_during: 0,
        });
        let pair_id = self.config.pair_id;
        self.actions.push_back(Action::Notify(Event::CloneStarted { epoch, node, memory_bytes }));
        self.actions.push_back(Action::Send(Message::CloneBegin { pair_id, epoch, memory_bytes }));
        self.clone_step(now_ns);
    }

    pub(super) fn handle_clone_ack(&mut self, now_ns: u64, pass: u32) {
        let Some(cloning) = self.cloning.as_mut() else {
            self.violation(now_ns, format!("a clone ack for pass {pass} with no clone under way"));
            return;
        };
        if cloning.awaiting != Some(pass) {
            let awaited = cloning.awaiting;
            self.violation(now_ns, format!("a clone ack for pass {pass}, awaiting {awaited:?}"));
            return;
        }
        cloning.awaiting = None;
        cloning.progress_ns = now_ns;
        self.clone_step(now_ns);
    }

    /// The joiner has `pages` pages of `pass` in place: room in the window for more.
    pub(super) fn handle_clone_pages_ack(&mut self, now_ns: u64, pass: u32, pages: u64) {
        // The pages of the cut are acknowledged too, after the cut: the clone is over then, and they need nothing.
        let Some(cloning) = self.cloning.as_mut() else { return };
        if pass != cloning.pass || pages > cloning.sent_in_pass || pages < cloning.acked_in_pass {
            let (current, sent, acked) = (cloning.pass, cloning.sent_in_pass, cloning.acked_in_pass);
            self.violation(
                now_ns,
                format!("a pages ack for {pages} pages of pass {pass}; pass {current} sent {sent}, acked {acked}"),
            );
            return;
        }
        cloning.acked_in_pass = pages;
        cloning.progress_ns = now_ns;
        self.clone_step(now_ns);
    }

    /// Gives the clone up; the primary runs on unprotected, and the joiner (or the driver) may try again.
    pub(super) fn abandon_clone(&mut self, reason: String) {
        cov_mark::hit!(clone_aborted);
        self.cloning = None;
        self.mode = Mode::Unprotected;
        self.actions.push_back(Action::Notify(Event::CloneAbandoned { reason }));
        self.actions.push_back(Action::CloseChannel);
    }

    /// The joiner is overdue: the primary waits on it (a full window, or a pass's end) and heard nothing for the
    /// failure timeout.
    pub(super) fn clone_deadline_ns(&self) -> Option<u64> {
        let cloning = self.cloning.as_ref()?;
        let waiting = cloning.awaiting.is_some() || !cloning.window_open(self.config.clone_window_pages);
        waiting.then_some(cloning.progress_ns + self.config.failure_timeout_ms * NS_PER_MS)
    }

    /// The clone wants the guest back from its vCPU thread (pages are read from a guest that stands still): a pass
    /// is due, or the window has room for a good part of it again. The cut waits for the guest's next exit
    /// instead, so it is never kicked for it.
    pub(super) fn clone_wants_guest(&self) -> bool {
        let window_pages = self.config.clone_window_pages;
        self.cloning.as_ref().is_some_and(|cloning| {
            let pass_due = cloning.awaiting.is_none() && cloning.to_send.is_empty() && cloning.cut.is_none();
            let refill = !cloning.to_send.is_empty() && cloning.unacked() <= window_pages / 2;
            pass_due || refill
        })
    }

    pub(super) fn note_release_during_clone(&mut self) {
        if let Some(cloning) = self.cloning.as_mut() {
            cloning.released_during += 1;
        }
    }

    pub(super) fn clone_progress(&self) -> Option<CloneProgress> {
        let cloning = self.cloning.as_ref()?;
        Some(CloneProgress {
            pass: cloning.pass,
            pages_done: cloning.pages_sent,
            pages_total: self.vm.guest.memory_bytes() / PAGE_BYTES as u64,
            dirty_pages: cloning.cut.as_ref().map_or(0, |(pages, _)| pages.len() as u64),
        })
    }

    /// Takes the clone's next step if one is due and the guest is not out on its vCPU thread: more pages of the
    /// pass under way, the first pass, a later pass, or the cut.
    pub(super) fn clone_step(&mut self, now_ns: u64) {
        if self.mode != Mode::Cloning || self.vm.running() {
            return;
        }
        let Some(cloning) = self.cloning.as_ref() else { return };
        if !cloning.to_send.is_empty() {
            if let Err(error) = self.send_window(now_ns) {
                self.abandon_clone(format!("the guest could not be cloned: {error}"));
            }
            return;
        }
        if cloning.awaiting.is_some() {
            return;
        }
        let (pass, last_pass_pages, cut_due) = (cloning.pass, cloning.last_pass_pages, cloning.cut.is_some());
        if let Err(error) = self.clone_pass_or_cut(now_ns, pass, last_pass_pages, cut_due) {
            self.abandon_clone(format!("the guest could not be cloned: {error}"));
        }
    }

    fn clone_pass_or_cut(
        &mut self,
        now_ns: u64,
        pass: u32,
        last_pass_pages: u64,
        cut_due: bool,
    ) -> Result<(), crate::guest::GuestError> {
        if pass == 0 {
            // Every page, and dirty tracking from here on.
            self.vm.guest.take_dirty_pages()?;
            let pages: Vec<u64> = (0..self.vm.guest.memory_bytes() / PAGE_BYTES as u64).collect();
            return self.send_pass(now_ns, 1, &pages);
        }
        if !cut_due {
            let dirty = self.vm.guest.take_dirty_pages()?;
            let count = dirty.len() as u64;
            let small = count <= self.config.clone_dirty_pages_small;
            let converging = count < last_pass_pages;
            if !small && converging && u64::from(pass) < self.config.clone_passes_max {
                return self.send_pass(now_ns, pass + 1, &dirty);
            }
            let cloning = self.cloning.as_mut().expect("a clone under way");
            cloning.cut = Some((dirty, now_ns));
        }
        if !self.vm.at_position() {
            // Kicked between two exits: the guest runs on to its next exit, where the cut happens.
            cov_mark::hit!(clone_cut_waits_for_an_exit);
            return Ok(());
        }
        self.cut(now_ns, pass + 1)
    }

    /// Starts pass `pass` of `pages`: they go a window at a time, each refill as the joiner acknowledges.
    fn send_pass(&mut self, now_ns: u64, pass: u32, pages: &[u64]) -> Result<(), crate::guest::GuestError> {
        if pass >= 2 {
            cov_mark::hit!(clone_precopy_repeated);
        }
        let count = pages.len() as u64;
        self.actions.push_back(Action::Notify(Event::ClonePass { pass, pages: count }));
        let cloning = self.cloning.as_mut().expect("a clone under way");
        cloning.pass = pass;
        cloning.last_pass_pages = count;
        cloning.pass_pages = count;
        cloning.to_send = pages.iter().copied().collect();
        cloning.sent_in_pass = 0;
        cloning.acked_in_pass = 0;
        cloning.progress_ns = now_ns;
        self.send_window(now_ns)
    }

    /// Sends what the window has room for; once every page of the pass is sent, its end.
    fn send_window(&mut self, now_ns: u64) -> Result<(), crate::guest::GuestError> {
        let window_pages = self.config.clone_window_pages;
        let cloning = self.cloning.as_mut().expect("a clone under way");
        let room = window_pages.saturating_sub(cloning.unacked()) as usize;
        let batch: Vec<u64> = (0..room).map_while(|_| cloning.to_send.pop_front()).collect();
        if !batch.is_empty() && cloning.sent_in_pass > 0 {
            cov_mark::hit!(clone_window_refilled);
        }
        let pass = cloning.pass;
        cloning.progress_ns = now_ns;
        self.send_pages(pass, &batch)?;
        let cloning = self.cloning.as_mut().expect("a clone under way");
        cloning.sent_in_pass += batch.len() as u64;
        if cloning.to_send.is_empty() && cloning.awaiting.is_none() {
            cloning.awaiting = Some(pass);
            let pages = cloning.pass_pages;
            self.actions.push_back(Action::Send(Message::ClonePassEnd { pass, pages }));
        }
        Ok(())
    }

    fn send_pages(&mut self, pass: u32, pages: &[u64]) -> Result<(), crate::guest::GuestError> {
        let mut bytes = 0;
        for chunk in pages.chunks(CLONE_PAGES_PER_MESSAGE) {
            let mut message = Vec::with_capacity(chunk.len());
            for &number in chunk {
                let mut page = vec![0u8; PAGE_BYTES];
                self.vm.guest.read_memory(number * PAGE_BYTES as u64, &mut page)?;
                message.push((number, page));
            }
            bytes += (chunk.len() * PAGE_BYTES) as u64;
            self.actions.push_back(Action::Send(Message::ClonePages { pass, pages: message }));
        }
        let cloning = self.cloning.as_mut().expect("a clone under way");
        cloning.pages_sent += pages.len() as u64;
        cloning.bytes_sent += bytes;
        Ok(())
    }

    /// The cut, with the guest at an exit: the last pages, the writes in flight, CPU and devices, the hash. The
    /// primary resumes at once in logging mode; nothing it did before the cut needs the new backup's ack.
    fn cut(&mut self, now_ns: u64, pass: u32) -> Result<(), crate::guest::GuestError> {
        let (mut pages, wanted_ns) = self.cloning.as_mut().and_then(|c| c.cut.take()).expect("a cut is due");
        // What arrived for this exit goes into the guest first (unlogged: the primary is unprotected until the
        // cut): a write storage completed is then complete in the guest's device too, so the new backup never
        // holds a write in flight whose data it was not sent.
        if !self.disk_done.is_empty() {
            cov_mark::hit!(clone_cut_delivers_completions);
        }
        self.deliver_inputs(now_ns);
        if self.stopped.is_some() {
            return Ok(());
        }
        // Pages dirtied while the guest ran on to its exit go too, and those the delivery wrote.
        pages.extend(self.vm.guest.take_dirty_pages()?);
        pages.sort_unstable();
        pages.dedup();
        self.send_pages(pass, &pages)?;
        for (seq, target, data) in self.scheduler.writes_in_flight() {
            cov_mark::hit!(clone_cut_with_writes_in_flight);
            self.actions.push_back(Action::Send(Message::CloneWrite { seq, target, data }));
        }
        let position = self.vm.position();
        let cpu = self.vm.guest.save_cpu()?;
        let platform = self.vm.platform.encode();
        let hash = self.vm.state_hash().map_err(|error| match error {
            crate::platform::PlatformError::Guest(error) => error,
            other => crate::guest::GuestError::BadSnapshot(other.to_string()),
        })?;
        let state_bytes = (cpu.len() + platform.len()) as u64;
        let halted = self.vm.halted;
        self.actions.push_back(Action::Send(Message::CloneCut { position, cpu, platform, halted, hash }));
        let cloning = self.cloning.take().expect("a clone under way");
        cov_mark::hit!(clone_cut);
        if cloning.released_during > 0 {
            cov_mark::hit!(clone_under_load);
        }
        self.protect_from_cut(now_ns, position);
        self.actions.push_back(Action::Notify(Event::CloneCut {
            epoch: self.epoch,
            node: cloning.node,
            passes: pass,
            pages: pages.len() as u64,
            pause_ns: now_ns.saturating_sub(wanted_ns),
            total_ns: now_ns.saturating_sub(cloning.started_ns),
            bytes: cloning.bytes_sent + state_bytes,
        }));
        Ok(())
    }

    /// Logging mode with a fresh log for the new backup, which replays from the cut.
    fn protect_from_cut(&mut self, now_ns: u64, position: crate::position::Position) {
        assert!(self.held.is_empty(), "an unprotected primary holds no output");
        self.mode = Mode::Protected;
        self.log_index_next = 1;
        self.acked = 0;
        self.replayed = 0;
        self.backup_position = position;
        self.logged_at_ns.clear();
        self.released_sent = self.released_seq;
        self.exits_at_checkpoint = position.exits;
        self.detector.heard(now_ns);
        self.channel_detector.heard(now_ns);
        self.heartbeat_heard_ms = None;
        self.heartbeat_next_ns = now_ns;
        self.stalled = false;
        self.throttle = Throttle::new(&self.config, now_ns);
    }
}
