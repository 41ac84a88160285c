//! Go-live: a backup that won the arbiter becomes a primary without a backup.

use std::collections::VecDeque;

use crate::config::Config;
use crate::events::{Action, EntropySource, Expect};
use crate::guest::Guest;
use crate::log::{Input, Output};
use crate::platform::InputKind;
use crate::vm::Vm;

use super::{Mode, Primary};

/// What a new primary inherits from the backup it was (see `Backup::go_live`).
pub struct Inheritance {
    /// The last guest clock value replayed: guest time continues from it.
    pub clock_latched_ns: u64,
    /// Console and network outputs replayed but not known to have been released by the old primary.
    pub unreleased_outputs: Vec<Output>,
    /// Disk writes submitted in the log without a logged completion, to be reissued.
    pub pending_writes: Vec<Output>,
    /// The last exit, if its log entry never arrived: the new primary finishes handling it.
    pub pending_exit: Option<Expect>,
}

impl<G: Guest> Primary<G> {
    /// A backup that won the go-live race: live without a backup, pending disk IO and unconfirmed outputs
    /// reissued (they may duplicate what the old primary sent, byte for byte).
    pub fn go_live(
        config: Config,
        vm: Vm<G>,
        epoch: u64,
        inheritance: Inheritance,
        now_ns: u64,
        entropy: &mut dyn EntropySource,
        actions: VecDeque<Action>,
    ) -> Primary<G> {
        let mut primary = Primary::with_mode(config, vm, epoch, Mode::Unprotected, now_ns);
        // The backup's last actions (its final events, the go-live notice) come first.
        primary.actions = actions;
        primary.clock_origin_ns = now_ns.saturating_sub(inheritance.clock_latched_ns);
        primary.clock_floor_ns = inheritance.clock_latched_ns;
        primary.restart_timer(now_ns);
        // Reissue in submission order: the scheduler then orders overlapping requests as the guest did. The
        // write of the pending exit (if its entry never arrived) is in flight too; the exit below submits it.
        let pending_write_tag = match &inheritance.pending_exit {
            Some(Expect::Output(output)) => output.disk.map(|disk| disk.tag),
            _ => None,
        };
        let in_flight: Vec<_> = primary.vm.platform.disk_in_flight().into_iter().cloned().collect();
        let overlapping =
            in_flight.iter().enumerate().any(|(i, a)| in_flight[i + 1..].iter().any(|b| a.overlaps(&b.target)));
        if overlapping {
            cov_mark::hit!(reissued_in_submission_order);
        }
        let mut without_data = None;
        for request in &in_flight {
            match request.op {
                crate::platform::DiskOp::Read => primary.scheduler.submit_read(request.target),
                crate::platform::DiskOp::Write if Some(request.target.tag) == pending_write_tag => {}
                crate::platform::DiskOp::Write => {
                    // The data of an in-flight write is the output the backup regenerated during replay, or the
                    // one a clone's cut carried.
                    let tag = Some(request.target.tag);
                    match inheritance.pending_writes.iter().find(|o| o.disk.map(|d| d.tag) == tag) {
                        Some(output) => {
                            primary.scheduler.submit_write(request.target, output.bytes.clone(), output.seq, None)
                        }
                        None => without_data = Some(request.target.tag),
                    }
                }
            }
        }
        if let Some(tag) = without_data {
            // The state came from the old primary (a clone's cut): a write it left out cannot be reissued, and the
            // guest cannot go on as if it had landed.
            primary.guest_failed(format!("the guest's disk write tag {tag} is in flight, and no data came for it"));
            return primary;
        }
        if !inheritance.unreleased_outputs.is_empty() {
            cov_mark::hit!(output_resent_after_golive);
        }
        if inheritance.pending_exit.is_some() {
            cov_mark::hit!(golive_pending_exit);
        }
        for output in inheritance.unreleased_outputs {
            primary.release(output, None);
        }
        let result = match inheritance.pending_exit {
            None => Ok(()),
            Some(Expect::Input(InputKind::Clock)) => {
                let ns = primary.guest_clock_ns(now_ns);
                primary.input(now_ns, Input::Clock { ns }).map(drop)
            }
            Some(Expect::Input(InputKind::Entropy)) => {
                primary.input(now_ns, Input::Entropy { value: entropy.next_u32() }).map(drop)
            }
            Some(Expect::Output(output)) => {
                primary.output(now_ns, output);
                Ok(())
            }
            Some(Expect::PowerOff { status }) => {
                primary.power_off(now_ns, status);
                Ok(())
            }
        };
        if let Err(error) = result {
            primary.guest_failed(error);
        }
        primary
    }
}
