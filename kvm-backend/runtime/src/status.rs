//! What a running node tells `ftvm status` and Prometheus: its role, peer, execution lag, log bandwidth and the
//! outputs it holds. The driver owns the node, so the figures are kept from what it reports through
//! `Host::observe` (actions and received messages) and from the channel's byte counters.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use ft::log::Entry;
use ft::wire::Message;
use ft::{Action, Event};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::auth::ChannelCounters;
use crate::error::CliError;

/// The figures, as `ftvm status` prints them (JSON with `--json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub name: String,
    /// "primary", "backup", "live, not protected", "stopped", or "starting".
    pub role: String,
    pub epoch: u64,
    pub peer: String,
    pub channel_up: bool,
    pub service: String,
    pub service_bound: bool,
    pub uptime_ms: u64,
    pub log_entries_sent: u64,
    pub log_entries_received: u64,
    pub log_entries_acked: u64,
    pub log_entries_replayed: u64,
    pub channel_bytes_sent: u64,
    pub channel_bytes_received: u64,
    /// Log bytes per second since the channel came up.
    pub log_bandwidth_bytes_per_s: u64,
    /// How far the backup's replay is behind the primary: age of the oldest entry sent and not yet replayed.
    pub execution_lag_ms: f64,
    /// The primary's CPU share under the lag throttle, in percent (100: not throttled).
    pub cpu_share_percent: f64,
    /// Times the primary stopped its guest because `log_entries_unacked_max` entries waited for an ack (the
    /// buffer bound of flow control).
    pub flow_control_stalls: u64,
    pub outputs_held: usize,
    pub oldest_output_held_ms: f64,
    pub outputs_released: u64,
    /// How long the Output Rule held outputs (logged until released or issued to disk), over the last
    /// `HOLDS_KEPT` outputs: the latency FT adds to each output.
    pub output_hold_p50_us: f64,
    pub output_hold_p99_us: f64,
    /// The hold in two stages: from the entry's logging to the ack that covers it (channel, backup, channel
    /// back), and from that ack to the release (the primary's own delay).
    pub hold_log_to_ack_p50_us: f64,
    pub hold_log_to_ack_p99_us: f64,
    /// The wait for the ack in two parts: from logging to the write of the entry's frame to the channel socket
    /// (the primary's queue), and from that write to the ack's arrival (the network both ways and the backup,
    /// whose own part is its `ack_delay`).
    pub hold_log_to_write_p50_us: f64,
    pub hold_log_to_write_p99_us: f64,
    pub hold_write_to_ack_p50_us: f64,
    pub hold_write_to_ack_p99_us: f64,
    pub hold_ack_to_release_p50_us: f64,
    pub hold_ack_to_release_p99_us: f64,
    /// Backup: from receiving a log entry to sending its acknowledgement.
    pub ack_delay_p50_us: f64,
    pub ack_delay_p99_us: f64,
    pub went_live_at_ms: Option<u64>,
    /// A clone under way (this node the primary or the joiner): how far it is.
    pub reprotecting: Option<Reprotecting>,
    /// The primary's backup, by name, while the logging channel to it is up.
    pub protected_by: Option<String>,
    /// Clones this node made as the primary (the last `CLONES_KEPT`), and how many in all.
    pub clones: Vec<CloneSummary>,
    pub reprotections: u64,
    /// When the driver started (after the channel's handshake, or after giving up on a backup: the guest's first
    /// run follows the primary's hello and the backup's welcome) and when the guest powered off (its outputs all
    /// released), in ms of uptime: a benchmark's run time of a guest that ends.
    pub guest_started_at_ms: Option<u64>,
    pub powered_off_at_ms: Option<u64>,
    pub stopped: Option<String>,
}

/// A clone under way: `re-protecting: 63 % (pass 3, 12 MiB dirty)`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Reprotecting {
    /// Of the pages queued so far, the share sent (the primary) or of the guest's memory, received (the joiner).
    pub percent: f64,
    pub pass: u32,
    /// The last pass's pages (every page for the first), in bytes.
    pub dirty_bytes: u64,
    /// The other side.
    pub with: String,
}

/// One clone, as its primary saw it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CloneSummary {
    pub epoch: u64,
    pub backup: String,
    pub passes: u32,
    pub pages_at_cut: u64,
    /// How long the guest stood still for the cut: from the end of its run before the cut until its next run
    /// (measured by the host; absent until the guest has run again).
    pub pause_ms: Option<f64>,
    /// From when the protocol wanted the cut until it made it (the guest ran on to an exit meanwhile).
    pub cut_wait_ms: f64,
    /// Which of this node's cuts (its pause's index).
    #[serde(skip)]
    cut: usize,
    pub total_ms: f64,
    pub bytes: u64,
}

/// Clones kept in the status.
const CLONES_KEPT: usize = 16;
const PAGE_BYTES: u64 = ft::guest::PAGE_BYTES as u64;

/// Kept up to date by the host.
#[derive(Default)]
pub struct Board {
    /// The name the logging channel's peer gave in its handshake.
    pub peer_name: Option<String>,
    /// The driver took a joiner's channel, and its clone has not yet ended (cut or given up): the desk takes no
    /// other joiner meanwhile.
    pub joiner_busy: bool,
    /// A clone under way: page bytes queued for the channel, and the channel's bytes sent when it began.
    clone_bytes_queued: u64,
    pub clone_bytes_sent_at_start: u64,
    /// The joiner's side: page bytes received, and the memory to clone.
    clone_bytes_received: u64,
    clone_memory_bytes: u64,
    /// The guest's pause at each cut this node made, in ms (`pause::PauseMeter`).
    pub pauses: crate::pause::Pauses,
    /// Cuts this node made (the index of the next one's pause).
    cuts: usize,
    /// The joiner's progress bar, on its terminal.
    progress: Option<indicatif::ProgressBar>,
    pub snapshot: Snapshot,
    channel_up_ns: Option<u64>,
    /// Log entries sent and not yet replayed by the backup, with when they were sent.
    unreplayed: VecDeque<(u64, u64)>,
    /// Outputs logged and not yet released, by output sequence number.
    held: BTreeMap<u64, Held>,
    /// Recent hold times (ns): whole, then its stages.
    holds: Ring,
    to_ack: Ring,
    to_write: Ring,
    write_to_ack: Ring,
    to_release: Ring,
    /// Backup: entries received and not yet acknowledged, with when they arrived; recent ack delays (ns).
    unacked: VecDeque<(u64, u64)>,
    ack_delays: Ring,
}

/// The last `HOLDS_KEPT` durations (ns) of one kind, for percentiles.
#[derive(Default)]
struct Ring {
    values: Vec<u64>,
    next: usize,
}

impl Ring {
    fn keep(&mut self, value: u64) {
        if self.values.len() < HOLDS_KEPT {
            self.values.push(value);
        } else {
            self.values[self.next] = value;
            self.next = (self.next + 1) % HOLDS_KEPT;
        }
    }

    /// The `p` quantile in µs (0 with nothing kept).
    fn percentile_us(&self, p: f64) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        // A selection, not a sort: the status is read every few ms while a benchmark samples it, on the
        // primary's runtime thread, and sorting six rings of 10,000 twice each took 5 % of that thread.
        let mut values = self.values.clone();
        let at = ((values.len() - 1) as f64 * p).round() as usize;
        let (_, nth, _) = values.select_nth_unstable(at);
        *nth as f64 / 1e3
    }
}

/// An output the Output Rule holds: its log entry, when that was logged, written to the channel, and when an ack
/// covering it came.
#[derive(Clone, Copy, Debug)]
struct Held {
    index: u64,
    logged_ns: u64,
    written_ns: Option<u64>,
    acked_ns: Option<u64>,
}

/// Hold times kept for the percentiles.
const HOLDS_KEPT: usize = 10_000;

pub type SharedBoard = Rc<RefCell<Board>>;

impl Board {
    pub fn observe_action(&mut self, now_ns: u64, action: &Action) {
        match action {
            Action::Send(Message::Log { index, entry }) => {
                self.snapshot.log_entries_sent = *index;
                self.unreplayed.push_back((*index, now_ns));
                if let Entry::Output { record, .. } = entry {
                    self.held.insert(
                        record.seq,
                        Held { index: *index, logged_ns: now_ns, written_ns: None, acked_ns: None },
                    );
                }
            }
            Action::Release { output, .. } => {
                self.release(now_ns, output.seq);
                self.snapshot.outputs_released += 1;
            }
            Action::Storage { request: ft::storage::StorageRequest::Write { output_seq, .. }, .. } => {
                self.release(now_ns, *output_seq);
            }
            Action::Send(Message::Ack { received, .. }) => {
                while let Some(&(index, at)) = self.unacked.front() {
                    if index > *received {
                        break;
                    }
                    self.unacked.pop_front();
                    self.ack_delays.keep(now_ns.saturating_sub(at));
                }
            }
            Action::Send(Message::ClonePages { pages, .. }) => {
                self.clone_bytes_queued += pages.len() as u64 * PAGE_BYTES;
            }
            Action::Notify(event) => self.observe_event(now_ns, event),
            _ => {}
        }
    }

    fn release(&mut self, now_ns: u64, seq: u64) {
        if let Some(held) = self.held.remove(&seq) {
            self.holds.keep(now_ns.saturating_sub(held.logged_ns));
            if let Some(acked_ns) = held.acked_ns {
                self.to_ack.keep(acked_ns.saturating_sub(held.logged_ns));
                self.to_release.keep(now_ns.saturating_sub(acked_ns));
                if let Some(written_ns) = held.written_ns.filter(|written| *written <= acked_ns) {
                    self.to_write.keep(written_ns.saturating_sub(held.logged_ns));
                    self.write_to_ack.keep(acked_ns - written_ns);
                }
            }
        }
    }

    /// The driver wrote the frames of the log entries up to `log_index` to the channel.
    pub fn observe_written(&mut self, now_ns: u64, log_index: u64) {
        for held in self.held.values_mut().filter(|held| held.index <= log_index && held.written_ns.is_none()) {
            held.written_ns = Some(now_ns);
        }
    }

    fn observe_event(&mut self, now_ns: u64, event: &Event) {
        match event {
            Event::ChannelUp { epoch } => {
                if self.snapshot.role == "primary" {
                    self.snapshot.protected_by = self.peer_name.clone();
                }
                self.snapshot.channel_up = true;
                self.snapshot.epoch = *epoch;
                self.channel_up_ns = Some(now_ns);
            }
            Event::PeerFailed { .. } => {
                self.snapshot.channel_up = false;
                self.snapshot.protected_by = None;
            }
            Event::CloneStarted { epoch, memory_bytes, .. } => {
                self.snapshot.epoch = *epoch;
                self.clone_bytes_queued = 0;
                let with = self.peer_name.clone().unwrap_or_default();
                self.snapshot.reprotecting =
                    Some(Reprotecting { percent: 0.0, pass: 0, dirty_bytes: *memory_bytes, with });
            }
            Event::ClonePass { pass, pages } => {
                if let Some(progress) = self.snapshot.reprotecting.as_mut() {
                    progress.pass = *pass;
                    progress.dirty_bytes = pages * PAGE_BYTES;
                }
            }
            Event::CloneCut { epoch, passes, pages, pause_ns, total_ns, bytes, .. } => {
                self.joiner_busy = false;
                let backup = self.peer_name.clone().unwrap_or_default();
                self.snapshot.reprotecting = None;
                self.snapshot.role = "primary".into();
                self.snapshot.epoch = *epoch;
                self.snapshot.channel_up = true;
                self.snapshot.protected_by = Some(backup.clone());
                self.channel_up_ns = Some(now_ns);
                // The new backup's log starts afresh at index 1.
                self.snapshot.log_entries_sent = 0;
                self.snapshot.log_entries_acked = 0;
                self.snapshot.log_entries_replayed = 0;
                self.unreplayed.clear();
                self.snapshot.reprotections += 1;
                let cut = self.cuts;
                self.cuts += 1;
                if self.snapshot.clones.len() == CLONES_KEPT {
                    self.snapshot.clones.remove(0);
                }
                self.snapshot.clones.push(CloneSummary {
                    epoch: *epoch,
                    backup,
                    passes: *passes,
                    pages_at_cut: *pages,
                    pause_ms: None,
                    cut_wait_ms: *pause_ns as f64 / 1e6,
                    cut,
                    total_ms: *total_ns as f64 / 1e6,
                    bytes: *bytes,
                });
            }
            Event::Cloned { epoch, .. } => {
                self.snapshot.reprotecting = None;
                self.snapshot.role = "backup".into();
                self.snapshot.epoch = *epoch;
                self.snapshot.channel_up = true;
                self.channel_up_ns = Some(now_ns);
                if let Some(progress) = self.progress.take() {
                    progress.finish_with_message("cloned: the backup replays from the cut");
                }
            }
            Event::CloneAbandoned { .. } => {
                self.joiner_busy = false;
                self.snapshot.reprotecting = None;
                if let Some(progress) = self.progress.take() {
                    progress.abandon_with_message("the clone was given up");
                }
            }
            Event::WentLive { epoch, .. } => {
                self.snapshot.protected_by = None;
                self.snapshot.role = "live, not protected".into();
                self.snapshot.epoch = *epoch;
                self.snapshot.channel_up = false;
                self.snapshot.went_live_at_ms = Some(now_ns / 1_000_000);
                // Everything held is released or reissued by the new primary.
                self.held.clear();
                self.unreplayed.clear();
            }
            Event::CpuShare { permille, .. } => self.snapshot.cpu_share_percent = *permille as f64 / 10.0,
            Event::Stalled { .. } => self.snapshot.flow_control_stalls += 1,
            Event::PoweredOff { .. } => {
                self.snapshot.role = "stopped".into();
                self.snapshot.powered_off_at_ms.get_or_insert(now_ns / 1_000_000);
            }
            Event::LostRace { .. } | Event::Diverged(_) | Event::GuestStopped { .. } => {
                self.snapshot.role = "stopped".into();
            }
            _ => {}
        }
    }

    pub fn observe_received(&mut self, now_ns: u64, message: &Message) {
        match message {
            Message::CloneBegin { epoch, memory_bytes, .. } => {
                self.snapshot.epoch = *epoch;
                self.clone_memory_bytes = *memory_bytes;
                self.clone_bytes_received = 0;
                let with = self.peer_name.clone().unwrap_or_default();
                self.snapshot.reprotecting =
                    Some(Reprotecting { percent: 0.0, pass: 1, dirty_bytes: *memory_bytes, with });
                let bar = indicatif::ProgressBar::new(*memory_bytes);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "cloning {msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_message("pass 1");
                self.progress = Some(bar);
            }
            Message::ClonePages { pass, pages } => {
                let bytes = pages.len() as u64 * PAGE_BYTES;
                self.clone_bytes_received += bytes;
                if let Some(progress) = self.snapshot.reprotecting.as_mut() {
                    progress.pass = *pass;
                    let memory = self.clone_memory_bytes.max(1);
                    progress.percent = (self.clone_bytes_received as f64 * 100.0 / memory as f64).min(99.0);
                }
                if let Some(bar) = &self.progress {
                    if *pass > 1 {
                        bar.inc_length(bytes);
                    }
                    bar.inc(bytes);
                }
            }
            Message::ClonePassEnd { pass, pages } => {
                if let Some(progress) = self.snapshot.reprotecting.as_mut() {
                    progress.dirty_bytes = pages * PAGE_BYTES;
                }
                if let Some(bar) = &self.progress {
                    bar.set_message(format!("pass {}", pass + 1));
                }
            }
            Message::Log { index, .. } => {
                self.snapshot.log_entries_received = *index;
                self.unacked.push_back((*index, now_ns));
            }
            Message::Ack { received, replayed, .. } => {
                self.snapshot.log_entries_acked = *received;
                for held in self.held.values_mut().filter(|held| held.index <= *received && held.acked_ns.is_none()) {
                    held.acked_ns = Some(now_ns);
                }
                self.snapshot.log_entries_replayed = *replayed;
                while self.unreplayed.front().is_some_and(|(index, _)| index <= replayed) {
                    self.unreplayed.pop_front();
                }
            }
            _ => {}
        }
    }

    pub fn snapshot(&self, now_ns: u64, counters: &ChannelCounters) -> Snapshot {
        let mut s = self.snapshot.clone();
        s.uptime_ms = now_ns / 1_000_000;
        s.channel_bytes_sent = counters.bytes_sent.get();
        s.channel_bytes_received = counters.bytes_received.get();
        if let Some(up) = self.channel_up_ns {
            let seconds = (now_ns.saturating_sub(up) as f64 / 1e9).max(1e-3);
            s.log_bandwidth_bytes_per_s = ((s.channel_bytes_sent + s.channel_bytes_received) as f64 / seconds) as u64;
        }
        s.execution_lag_ms = self.unreplayed.front().map_or(0.0, |(_, at)| now_ns.saturating_sub(*at) as f64 / 1e6);
        s.outputs_held = self.held.len();
        let pauses = self.pauses.borrow();
        for clone in s.clones.iter_mut().filter(|clone| clone.pause_ms.is_none()) {
            clone.pause_ms = pauses.get(clone.cut).copied();
        }
        if let Some(progress) = s.reprotecting.as_mut().filter(|_| self.clone_bytes_queued > 0) {
            // The primary: of the page bytes queued for the channel, the share it has written (frames carry a
            // little more than their pages, hence the cap).
            let sent = counters.bytes_sent.get().saturating_sub(self.clone_bytes_sent_at_start);
            progress.percent = (sent as f64 * 100.0 / self.clone_bytes_queued as f64).min(99.0);
        }
        s.output_hold_p50_us = self.holds.percentile_us(0.5);
        s.output_hold_p99_us = self.holds.percentile_us(0.99);
        s.hold_log_to_ack_p50_us = self.to_ack.percentile_us(0.5);
        s.hold_log_to_ack_p99_us = self.to_ack.percentile_us(0.99);
        s.hold_log_to_write_p50_us = self.to_write.percentile_us(0.5);
        s.hold_log_to_write_p99_us = self.to_write.percentile_us(0.99);
        s.hold_write_to_ack_p50_us = self.write_to_ack.percentile_us(0.5);
        s.hold_write_to_ack_p99_us = self.write_to_ack.percentile_us(0.99);
        s.hold_ack_to_release_p50_us = self.to_release.percentile_us(0.5);
        s.hold_ack_to_release_p99_us = self.to_release.percentile_us(0.99);
        s.ack_delay_p50_us = self.ack_delays.percentile_us(0.5);
        s.ack_delay_p99_us = self.ack_delays.percentile_us(0.99);
        s.oldest_output_held_ms = self
            .held
            .values()
            .map(|held| held.logged_ns)
            .min()
            .map_or(0.0, |at| now_ns.saturating_sub(at) as f64 / 1e6);
        s
    }
}

impl Snapshot {
    /// `re-protecting: 63 % (pass 3, 12 MiB dirty)` while a clone runs, `protected by <node>` after.
    pub fn protection_line(&self) -> Option<String> {
        if let Some(progress) = &self.reprotecting {
            return Some(format!(
                "re-protecting: {:.0} % (pass {}, {} MiB dirty){}",
                progress.percent,
                progress.pass,
                progress.dirty_bytes.div_ceil(1 << 20),
                if progress.with.is_empty() { String::new() } else { format!(" with {}", progress.with) }
            ));
        }
        self.protected_by.as_ref().map(|backup| format!("protected by {backup}"))
    }

    pub fn text(&self) -> String {
        let protected = match self.role.as_str() {
            "live, not protected" => " (NOT PROTECTED: no backup)",
            _ => "",
        };
        let protection = self.protection_line().map(|line| format!("{line}\n")).unwrap_or_default();
        format!(
            "node: {}\nrole: {}{protected}\n{protection}epoch: {}\npeer: {} (logging channel {})\nservice: {}{}\n\
             execution lag: {:.3} ms\ncpu share: {:.1} % (lag throttle)\nlog: {} entries sent, {} received, {} acked, {} replayed\n\
             log bandwidth: {} bytes/s ({} bytes sent, {} received)\noutputs held: {} (oldest {:.3} ms), {} released\n\
             output rule hold: p50 {:.0} us, p99 {:.0} us (log to ack: p50 {:.0} us, p99 {:.0} us; ack to \
             release: p50 {:.0} us, p99 {:.0} us)\n  log to ack: log to write p50 {:.0} us, p99 {:.0} us; write to \
             ack p50 {:.0} us, p99 {:.0} us\nbackup ack delay: p50 {:.0} us, p99 {:.0} us\n{}",
            self.name,
            self.role,
            self.epoch,
            self.peer,
            if self.channel_up { "up" } else { "down" },
            self.service,
            if self.service_bound { " (bound)" } else { "" },
            self.execution_lag_ms,
            self.cpu_share_percent,
            self.log_entries_sent,
            self.log_entries_received,
            self.log_entries_acked,
            self.log_entries_replayed,
            self.log_bandwidth_bytes_per_s,
            self.channel_bytes_sent,
            self.channel_bytes_received,
            self.outputs_held,
            self.oldest_output_held_ms,
            self.outputs_released,
            self.output_hold_p50_us,
            self.output_hold_p99_us,
            self.hold_log_to_ack_p50_us,
            self.hold_log_to_ack_p99_us,
            self.hold_ack_to_release_p50_us,
            self.hold_ack_to_release_p99_us,
            self.hold_log_to_write_p50_us,
            self.hold_log_to_write_p99_us,
            self.hold_write_to_ack_p50_us,
            self.hold_write_to_ack_p99_us,
            self.ack_delay_p50_us,
            self.ack_delay_p99_us,
            self.stopped.as_ref().map(|why| format!("stopped: {why}\n")).unwrap_or_default(),
        )
    }

    pub fn prometheus(&self) -> String {
        let role = |name: &str| u8::from(self.role == name);
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, value: String| {
            out.push_str(&format!("# HELP ftvm_{name} {help}\n# TYPE ftvm_{name} gauge\nftvm_{name} {value}\n"));
        };
        metric("role_primary", "1 if this node is the protected primary", role("primary").to_string());
        metric("role_backup", "1 if this node is the backup", role("backup").to_string());
        metric("role_unprotected", "1 if this node is live without a backup", role("live, not protected").to_string());
        metric("epoch", "the pair's epoch", self.epoch.to_string());
        metric(
            "protected",
            "1 while a backup receives this primary's log",
            u8::from(self.protected_by.is_some()).to_string(),
        );
        let progress = self.reprotecting.clone().unwrap_or_default();
        metric("reprotecting", "1 while a clone runs", u8::from(self.reprotecting.is_some()).to_string());
        metric("reprotect_ratio", "how far the clone under way is", format!("{}", progress.percent / 100.0));
        metric("reprotect_pass", "the clone's pre-copy pass", progress.pass.to_string());
        metric("reprotect_dirty_bytes", "the clone's last pass, in bytes", progress.dirty_bytes.to_string());
        metric("reprotections", "clones this node made as the primary", self.reprotections.to_string());
        metric("channel_up", "1 while the logging channel is up", u8::from(self.channel_up).to_string());
        metric("execution_lag_seconds", "backup replay lag", format!("{}", self.execution_lag_ms / 1e3));
        metric(
            "cpu_share_ratio",
            "the primary's CPU share under the lag throttle",
            format!("{}", self.cpu_share_percent / 100.0),
        );
        metric("log_entries_sent", "log entries sent", self.log_entries_sent.to_string());
        metric("log_entries_received", "log entries received", self.log_entries_received.to_string());
        metric("channel_bytes_sent", "logging channel bytes sent", self.channel_bytes_sent.to_string());
        metric("channel_bytes_received", "logging channel bytes received", self.channel_bytes_received.to_string());
        metric("log_bandwidth_bytes_per_second", "log bandwidth", self.log_bandwidth_bytes_per_s.to_string());
        metric("outputs_held", "outputs held by the Output Rule", self.outputs_held.to_string());
        metric(
            "oldest_output_held_seconds",
            "age of the oldest held output",
            format!("{}", self.oldest_output_held_ms / 1e3),
        );
        metric("outputs_released", "outputs released", self.outputs_released.to_string());
        metric("output_hold_p50_seconds", "median Output Rule hold", format!("{}", self.output_hold_p50_us / 1e6));
        metric("output_hold_p99_seconds", "p99 Output Rule hold", format!("{}", self.output_hold_p99_us / 1e6));
        let stages = [
            ("log_to_ack_p50", "median hold from logging to the covering ack", self.hold_log_to_ack_p50_us),
            ("log_to_ack_p99", "p99 hold from logging to the covering ack", self.hold_log_to_ack_p99_us),
            ("ack_to_release_p50", "median hold from the ack to the release", self.hold_ack_to_release_p50_us),
            ("ack_to_release_p99", "p99 hold from the ack to the release", self.hold_ack_to_release_p99_us),
            ("log_to_write_p50", "median hold from logging to the channel write", self.hold_log_to_write_p50_us),
            ("log_to_write_p99", "p99 hold from logging to the channel write", self.hold_log_to_write_p99_us),
            ("write_to_ack_p50", "median hold from the channel write to the ack", self.hold_write_to_ack_p50_us),
            ("write_to_ack_p99", "p99 hold from the channel write to the ack", self.hold_write_to_ack_p99_us),
        ];
        metric(
            "ack_delay_p50_seconds",
            "backup: median from an entry's receipt to its ack",
            format!("{}", self.ack_delay_p50_us / 1e6),
        );
        metric(
            "ack_delay_p99_seconds",
            "backup: p99 from an entry's receipt to its ack",
            format!("{}", self.ack_delay_p99_us / 1e6),
        );
        for (stage, help, us) in stages {
            metric(&format!("output_hold_{stage}_seconds"), help, format!("{}", us / 1e6));
        }
        out
    }
}

/// Renders the figures for a request path: the body and its content type.
pub type Render = Rc<dyn Fn(&str) -> (String, &'static str)>;

/// Serves `render` over a minimal HTTP/1.0 endpoint (any request gets the figures).
pub async fn serve(listener: TcpListener, render: Render) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let render = render.clone();
        tokio::task::spawn_local(async move {
            let mut request = vec![0u8; 4096];
            let length = tokio::time::timeout(std::time::Duration::from_millis(500), stream.read(&mut request))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..length]).to_string();
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (body, content_type) = render(&path);
            let response = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// `ftvm status --addr ADDR --wait-ms T`: [`fetch`], retrying for up to `wait` while nothing listens at `addr`
/// yet (a node that is starting).
pub fn fetch_waiting(addr: SocketAddr, path: &str, wait: std::time::Duration) -> Result<String, CliError> {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            _ => break,
        }
    }
    fetch(addr, path)
}

/// `ftvm status --addr ADDR`: fetches `path` from a node's status endpoint and returns the body.
pub fn fetch(addr: SocketAddr, path: &str) -> Result<String, CliError> {
    use std::io::{Read, Write};
    let what = || format!("status endpoint {addr}");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .map_err(|error| CliError::io(what(), &error))?;
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|error| CliError::io(what(), &error))?;
    // Status pages are a few KiB; whatever answers on the address gets no more than this.
    const RESPONSE_BYTES_MAX: u64 = 1 << 20;
    let mut response = String::new();
    stream.take(RESPONSE_BYTES_MAX).read_to_string(&mut response).map_err(|error| CliError::io(what(), &error))?;
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.to_string()),
        None => Err(CliError::Io { what: what(), reason: "not an HTTP response".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft::log::{Output, OutputKind, OutputRecord};
    use ft::Position;

    const US: u64 = 1_000;

    /// The percentiles pick the kept value at the rank (nearest rank, rounded), in any order of arrival.
    #[test]
    fn ring_percentiles_are_ranks_of_the_kept_values() {
        let mut ring = Ring::default();
        assert_eq!(ring.percentile_us(0.5), 0.0);
        for value in (1..=100u64).rev() {
            ring.keep(value * US);
        }
        assert_eq!(ring.percentile_us(0.5), 51.0);
        assert_eq!(ring.percentile_us(0.99), 99.0);
        assert_eq!(ring.percentile_us(0.0), 1.0);
        assert_eq!(ring.percentile_us(1.0), 100.0);
        for _ in 0..HOLDS_KEPT {
            ring.keep(7 * US);
        }
        assert_eq!(ring.percentile_us(0.99), 7.0, "only the last HOLDS_KEPT values count");
    }

    fn console(seq: u64) -> Output {
        Output { seq, kind: OutputKind::Console, bytes: b"hi\n".to_vec(), disk: None }
    }

    fn log(board: &mut Board, now_ns: u64, index: u64, output: &Output) {
        let entry = Entry::Output { position: Position::ZERO, pc: 0, record: OutputRecord::of(output) };
        board.observe_action(now_ns, &Action::Send(Message::Log { index, entry }));
    }

    #[test]
    fn the_hold_splits_into_the_wait_for_the_ack_and_the_wait_after_it() {
        let mut board = Board::default();
        let (first, second) = (console(0), console(1));
        log(&mut board, 0, 1, &first);
        board.observe_written(40 * US, 1);
        log(&mut board, 100 * US, 2, &second);
        board.observe_written(110 * US, 2);
        // One ack covers the first entry only; the second's comes later.
        board.observe_received(300 * US, &Message::Ack { received: 1, replayed: 1, position: Position::ZERO });
        board.observe_action(350 * US, &Action::Release { output: first, log_index: Some(1) });
        board.observe_received(700 * US, &Message::Ack { received: 2, replayed: 2, position: Position::ZERO });
        board.observe_action(720 * US, &Action::Release { output: second, log_index: Some(2) });
        let snapshot = board.snapshot(800 * US, &ChannelCounters::default());
        // Holds 350 and 620 us; to the ack 300 and 600; after it 50 and 20.
        assert_eq!((snapshot.output_hold_p50_us, snapshot.output_hold_p99_us), (620.0, 620.0));
        assert_eq!((snapshot.hold_log_to_ack_p50_us, snapshot.hold_log_to_ack_p99_us), (600.0, 600.0));
        assert_eq!((snapshot.hold_ack_to_release_p50_us, snapshot.hold_ack_to_release_p99_us), (50.0, 50.0));
        // Written at 40 and 110 us: 40 and 10 us in the queue, 260 and 590 us from the write to the ack.
        assert_eq!((snapshot.hold_log_to_write_p50_us, snapshot.hold_log_to_write_p99_us), (40.0, 40.0));
        assert_eq!((snapshot.hold_write_to_ack_p50_us, snapshot.hold_write_to_ack_p99_us), (590.0, 590.0));
        assert!(snapshot.text().contains("log to ack: p50 600 us"), "{}", snapshot.text());
        assert!(snapshot.text().contains("write to ack p50 590 us"), "{}", snapshot.text());
        assert!(snapshot.prometheus().contains("ftvm_output_hold_ack_to_release_p99_seconds 0.00005"));
    }

    /// The primary's status while it clones: how far (bytes written of the pages queued), which pass, how much
    /// was dirty; then `protected by` the joiner, with the clone's figures and the pause the host measured.
    #[test]
    fn a_clone_shows_as_re_protecting_then_protected_by_the_joiner() {
        let mut board = Board { peer_name: Some("a2".into()), ..Board::default() };
        board.snapshot.role = "live, not protected".into();
        let counters = ChannelCounters::default();
        counters.bytes_sent.set(1_000);
        let started = Event::CloneStarted { epoch: 3, node: 7, memory_bytes: 16 << 20 };
        board.observe_action(0, &Action::Notify(started));
        board.clone_bytes_sent_at_start = counters.bytes_sent.get();
        let pages: Vec<(u64, Vec<u8>)> = (0..4096).map(|page| (page, Vec::new())).collect();
        board.observe_action(0, &Action::Send(Message::ClonePages { pass: 1, pages }));
        board.observe_action(0, &Action::Notify(Event::ClonePass { pass: 1, pages: 4096 }));
        counters.bytes_sent.set(1_000 + (16 << 20) / 2);
        let snapshot = board.snapshot(0, &counters);
        assert_eq!(snapshot.protection_line().as_deref(), Some("re-protecting: 50 % (pass 1, 16 MiB dirty) with a2"));
        assert!(snapshot.text().contains("re-protecting: 50 % (pass 1, 16 MiB dirty)"), "{}", snapshot.text());
        assert!(snapshot.prometheus().contains("ftvm_reprotect_ratio 0.5\n"), "{}", snapshot.prometheus());
        board.observe_action(0, &Action::Notify(Event::ClonePass { pass: 3, pages: 3072 }));
        let line = board.snapshot(0, &counters).protection_line().unwrap_or_default();
        assert!(line.contains("(pass 3, 12 MiB dirty)"), "{line}");
        let cut =
            Event::CloneCut { epoch: 3, node: 7, passes: 3, pages: 10, pause_ns: 0, total_ns: 60_000_000, bytes: 99 };
        board.observe_action(0, &Action::Notify(cut));
        let snapshot = board.snapshot(0, &counters);
        assert_eq!(snapshot.protection_line().as_deref(), Some("protected by a2"));
        assert_eq!((snapshot.role.as_str(), snapshot.reprotections, snapshot.clones.len()), ("primary", 1, 1));
        assert_eq!(snapshot.clones[0].pause_ms, None, "measured once the guest runs again");
        board.pauses.borrow_mut().push(1.5);
        assert_eq!(board.snapshot(0, &counters).clones[0].pause_ms, Some(1.5));
        assert!(board.snapshot(0, &counters).prometheus().contains("ftvm_protected 1"));
    }
}
