//! The `Node` that is a primary, a backup, or stopped.
//!
//! The contract, after quinn-proto: the driver feeds inputs through `handle_*` with the current time, lets the
//! guest run through `run_guest`, then drains `poll_action` until it returns `None` and sleeps until
//! `poll_timeout` or the next input. Time never goes backwards. Errors caused by the peer are values (reported as
//! events); misuse by the driver is an `assert!`. What goes in and out is defined in [`crate::events`].

use std::collections::VecDeque;

use crate::backup::Backup;
use crate::guest::Guest;
use crate::join::Joiner;
use crate::position::Position;
use crate::primary::Primary;
use crate::wire::Message;

pub use crate::events::{
    Action, ArbiterOutcome, Divergence, EntropySource, Event, FailureCause, Progress, Role, Stats, Stopped, StorageDone,
};

pub enum Node<G: Guest> {
    Primary(Box<Primary<G>>),
    Backup(Box<Backup<G>>),
    /// Receiving a clone of a live primary; a backup once the cut is restored (`crate::join`).
    Joining(Box<Joiner<G>>),
    /// Stopped for good; the actions it queued before stopping are still drained.
    Stopped(Stopped, VecDeque<Action>),
}

impl<G: Guest> Node<G> {
    pub fn role(&self) -> Role {
        match self {
            Node::Primary(primary) if primary.is_protected_or_connecting() => Role::Primary,
            Node::Primary(_) => Role::Unprotected,
            Node::Backup(_) => Role::Backup,
            Node::Joining(_) => Role::Joining,
            Node::Stopped(..) => Role::Stopped,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            Node::Primary(primary) => primary.epoch(),
            Node::Backup(backup) => backup.epoch(),
            Node::Joining(joiner) => joiner.epoch(),
            Node::Stopped(..) => 0,
        }
    }

    pub fn handle_message(&mut self, now_ns: u64, message: Message) {
        match self {
            Node::Primary(primary) => primary.handle_message(now_ns, message),
            Node::Backup(backup) => backup.handle_message(now_ns, message),
            Node::Joining(joiner) => {
                joiner.handle_message(now_ns, message);
                self.joined(now_ns);
            }
            Node::Stopped(..) => {}
        }
    }

    /// A joiner whose cut is restored becomes a backup.
    fn joined(&mut self, now_ns: u64) {
        if !matches!(self, Node::Joining(joiner) if joiner.cloned()) {
            return;
        }
        let Node::Joining(joiner) =
            std::mem::replace(self, Node::Stopped(Stopped::LostRace { epoch: 0 }, VecDeque::new()))
        else {
            unreachable!("matched a cloned joiner above")
        };
        match joiner.into_backup(now_ns) {
            Ok(backup) => *self = Node::Backup(Box::new(backup)),
            Err(joiner) => *self = Node::Joining(joiner),
        }
    }

    /// Whether the driver may connect a joiner's channel now (re-protection): a live primary without a backup.
    pub fn accepts_joiner(&self) -> bool {
        matches!(self, Node::Primary(primary) if primary.accepts_joiner())
    }

    /// The driver connected a joiner's channel (only when [`Node::accepts_joiner`]).
    pub fn handle_joiner(&mut self, now_ns: u64) {
        if let Node::Primary(primary) = self {
            primary.handle_joiner(now_ns);
        }
    }

    /// The logging channel closed or broke (including a corrupt frame, reported here with its error).
    pub fn handle_channel_closed(&mut self, now_ns: u64, reason: &str) {
        match self {
            Node::Primary(primary) => primary.handle_channel_closed(now_ns, reason),
            Node::Backup(backup) => backup.handle_channel_closed(now_ns, reason),
            Node::Joining(joiner) => joiner.handle_channel_closed(now_ns, reason),
            Node::Stopped(..) => {}
        }
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        match self {
            Node::Primary(primary) => primary.handle_timeout(now_ns),
            Node::Backup(backup) => backup.handle_timeout(now_ns),
            Node::Joining(joiner) => joiner.handle_timeout(now_ns),
            Node::Stopped(..) => {}
        }
    }

    pub fn handle_arbiter(&mut self, now_ns: u64, outcome: ArbiterOutcome) {
        match self {
            Node::Primary(primary) => primary.handle_arbiter(now_ns, outcome),
            Node::Backup(backup) => backup.handle_arbiter(now_ns, outcome),
            Node::Joining(_) | Node::Stopped(..) => {}
        }
    }

    /// A frame arrived for the guest's network device. Only a live primary takes it; others drop it.
    pub fn handle_net_frame(&mut self, now_ns: u64, frame: Vec<u8>) {
        if let Node::Primary(primary) = self {
            primary.handle_net_frame(now_ns, frame);
        }
    }

    /// Storage refused `request` because the arbiter is at a newer `epoch`. Either another node went live (this
    /// one is superseded), or this node's own test-and-set took effect and only its reply was lost.
    pub fn handle_fenced(&mut self, now_ns: u64, epoch: u64, request: crate::storage::StorageRequest) {
        if let Node::Primary(primary) = self {
            primary.handle_fenced(now_ns, epoch, request);
        }
        self.transition_stopped();
    }

    fn take_actions(&mut self) -> VecDeque<Action> {
        match self {
            Node::Primary(primary) => primary.take_actions(),
            Node::Backup(backup) => backup.take_actions(),
            Node::Joining(joiner) => joiner.take_actions(),
            Node::Stopped(_, actions) => std::mem::take(actions),
        }
    }

    fn transition_stopped(&mut self) {
        let stopped = match self {
            Node::Primary(primary) => primary.take_stopped(),
            Node::Backup(backup) => backup.take_stopped(),
            Node::Joining(joiner) => joiner.take_stopped(),
            Node::Stopped(..) => None,
        };
        if let Some(stopped) = stopped {
            let actions = self.take_actions();
            *self = Node::Stopped(stopped, actions);
        }
    }

    pub fn handle_storage_done(&mut self, now_ns: u64, done: StorageDone) {
        if let Node::Primary(primary) = self {
            primary.handle_storage_done(now_ns, done);
        }
    }

    /// Runs (or replays) the guest for one slice. A backup that won the go-live race turns into a primary here.
    /// `Progress::Running`: the guest went on running on its own vCPU thread, and [`Node::guest_exited`] takes
    /// the result when the run ends.
    pub fn run_guest(&mut self, now_ns: u64, entropy: &mut dyn EntropySource) -> Progress {
        let progress = match self {
            Node::Primary(primary) => primary.run_guest(now_ns, entropy),
            Node::Backup(backup) => backup.run_guest(now_ns),
            Node::Joining(_) | Node::Stopped(..) => Progress::Idle,
        };
        self.transition(now_ns, entropy);
        progress
    }

    /// Takes the result of a run on the guest's vCPU thread once it has ended (the driver calls this when its
    /// host says a run ended; `Progress::Running` if it has not).
    pub fn guest_exited(&mut self, now_ns: u64, entropy: &mut dyn EntropySource) -> Progress {
        let progress = match self {
            Node::Primary(primary) => primary.guest_exited(now_ns, entropy),
            Node::Backup(backup) => backup.guest_exited(now_ns),
            Node::Joining(_) | Node::Stopped(..) => Progress::Idle,
        };
        self.transition(now_ns, entropy);
        progress
    }

    /// Whether a run goes on on the guest's vCPU thread.
    pub fn guest_running(&self) -> bool {
        match self {
            Node::Primary(primary) => primary.vm().running(),
            Node::Backup(backup) => backup.vm().running(),
            Node::Joining(_) | Node::Stopped(..) => false,
        }
    }

    /// Kicks a run on the vCPU thread out if the node wants the guest back: it is stopping (it can only stop, and
    /// drop its guest, once the run has ended), or the throttle's share of this period is spent.
    pub fn kick_guest_if_wanted(&self) {
        match self {
            Node::Primary(primary) if primary.wants_guest_back() => primary.vm().kick(),
            Node::Backup(backup) if backup.stopping() => backup.vm().kick(),
            _ => {}
        }
    }

    fn transition(&mut self, now_ns: u64, entropy: &mut dyn EntropySource) {
        if self.guest_running() {
            // The guest is out on its vCPU thread: neither a stop (which drops it) nor a go-live can happen now.
            return;
        }
        let next = match self {
            Node::Primary(primary) => {
                primary.take_stopped().map(|stopped| Node::Stopped(stopped, primary.take_actions()))
            }
            Node::Backup(backup) => {
                if let Some(stopped) = backup.take_stopped() {
                    Some(Node::Stopped(stopped, backup.take_actions()))
                } else if backup.ready_to_go_live() {
                    let Node::Backup(backup) =
                        std::mem::replace(self, Node::Stopped(Stopped::LostRace { epoch: 0 }, VecDeque::new()))
                    else {
                        unreachable!("matched a backup above")
                    };
                    Some(Node::Primary(Box::new(backup.go_live(now_ns, entropy))))
                } else {
                    None
                }
            }
            Node::Joining(joiner) => joiner.take_stopped().map(|stopped| Node::Stopped(stopped, joiner.take_actions())),
            Node::Stopped(..) => None,
        };
        if let Some(next) = next {
            *self = next;
        }
    }

    /// The next action. Once the last one is out, a node that stopped while they were produced (a primary
    /// decides its power-off is complete while it flushes them) becomes `Node::Stopped`, so that `stopped()`
    /// says so at once: a driver with no channel and no timer has nothing else to wake it.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = match self {
            Node::Primary(primary) => primary.poll_action(),
            Node::Backup(backup) => backup.poll_action(),
            Node::Joining(joiner) => joiner.poll_action(),
            Node::Stopped(_, actions) => actions.pop_front(),
        };
        if action.is_none() && !self.guest_running() {
            self.transition_stopped();
        }
        action
    }

    /// The earliest time at which `handle_timeout` has work to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        match self {
            Node::Primary(primary) => primary.poll_timeout(),
            Node::Backup(backup) => backup.poll_timeout(),
            Node::Joining(joiner) => joiner.poll_timeout(),
            Node::Stopped(..) => None,
        }
    }

    /// Whether the backup wants more log (flow control towards the channel).
    pub fn wants_log(&self) -> bool {
        match self {
            Node::Backup(backup) => backup.wants_log(),
            _ => true,
        }
    }

    pub fn stats(&self, now_ns: u64) -> Stats {
        match self {
            Node::Primary(primary) => primary.stats(now_ns),
            Node::Backup(backup) => backup.stats(),
            Node::Joining(joiner) => joiner.stats(),
            Node::Stopped(..) => Stats::default(),
        }
    }

    pub fn stopped(&self) -> Option<&Stopped> {
        match self {
            Node::Stopped(stopped, actions) if actions.is_empty() => Some(stopped),
            Node::Stopped(..) => None,
            _ => None,
        }
    }

    pub fn position(&self) -> Option<Position> {
        match self {
            Node::Primary(primary) => Some(primary.position()),
            Node::Backup(backup) => Some(backup.position()),
            Node::Joining(joiner) => Some(joiner.position()),
            Node::Stopped(..) => None,
        }
    }
}
