//! A primary and a backup wired together in memory with virtual time, after quinn-proto's test `Pair`: no
//! turmoil, no runtime, just the two state machines, a lossless channel with latency, a disk and an arbiter. Used
//! by the state-machine property tests, where thousands of cases must be cheap.

use std::collections::{BTreeMap, VecDeque};

use ft::log::{LogIndex, Output, OutputKind};
use ft::storage::StorageRequest;
use ft::wire::Message;
use ft::{Action, ArbiterOutcome, Config, Event, Guest, Node, StorageDone};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::node_host::SimEntropy;

pub const STEP_NS: u64 = 1_000_000;

/// What one side did that the outside could see.
#[derive(Clone, Debug)]
pub struct Released {
    pub node: usize,
    pub output: Output,
    pub log_index: Option<LogIndex>,
    pub protected: bool,
}

pub struct Pair<G: Guest> {
    pub nodes: [Option<Node<G>>; 2],
    pub now_ns: u64,
    pub latency_ns: u64,
    channel_open: bool,
    /// (deliver at, destination, message), in send order.
    wire: VecDeque<(u64, usize, Message)>,
    storage: VecDeque<(u64, usize, StorageDone)>,
    arbiter: VecDeque<(u64, usize, ArbiterOutcome)>,
    pub disk: BTreeMap<u64, Vec<u8>>,
    pub arbiter_epoch: u64,
    arbiter_owner: usize,
    entropy: [SimEntropy; 2],
    pub released: Vec<Released>,
    pub backup_received: LogIndex,
    pub events: Vec<(usize, Event)>,
    pub violations: Vec<String>,
}

impl<G: Guest> Pair<G> {
    pub fn new(config: Config, primary: G, backup: G, latency_ns: u64, seed: u64) -> Pair<G> {
        let disk_sectors = 4096;
        Pair {
            nodes: [
                Some(Node::Primary(Box::new(ft::primary::Primary::new(config.clone(), primary, disk_sectors, 1, 0)))),
                Some(Node::Backup(Box::new(ft::backup::Backup::new(config, backup, disk_sectors, 0)))),
            ],
            now_ns: 0,
            latency_ns,
            channel_open: true,
            wire: VecDeque::new(),
            storage: VecDeque::new(),
            arbiter: VecDeque::new(),
            disk: BTreeMap::new(),
            arbiter_epoch: 1,
            arbiter_owner: 0,
            entropy: [SimEntropy(ChaCha8Rng::seed_from_u64(seed)), SimEntropy(ChaCha8Rng::seed_from_u64(!seed))],
            released: Vec::new(),
            backup_received: 0,
            events: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Fail-stop: the node vanishes; its peer sees silence.
    pub fn crash(&mut self, node: usize) {
        self.nodes[node] = None;
    }

    pub fn deliver_frame(&mut self, node: usize, frame: Vec<u8>) {
        if let Some(n) = self.nodes[node].as_mut() {
            n.handle_net_frame(self.now_ns, frame);
        }
    }

    /// Advances one millisecond: deliveries due, timeouts, one guest slice per node, actions.
    pub fn step(&mut self) {
        self.now_ns += STEP_NS;
        let now = self.now_ns;
        while self.wire.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, to, message) = self.wire.pop_front().expect("checked");
            if let Message::Log { index, .. } = &message {
                self.backup_received = self.backup_received.max(*index);
            }
            if let Some(node) = self.nodes[to].as_mut() {
                node.handle_message(now, message);
            }
        }
        while self.storage.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, to, done) = self.storage.pop_front().expect("checked");
            if let Some(node) = self.nodes[to].as_mut() {
                node.handle_storage_done(now, done);
            }
        }
        while self.arbiter.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, to, outcome) = self.arbiter.pop_front().expect("checked");
            if let Some(node) = self.nodes[to].as_mut() {
                node.handle_arbiter(now, outcome);
            }
        }
        for index in 0..2 {
            let Some(mut node) = self.nodes[index].take() else { continue };
            node.handle_timeout(now);
            node.run_guest(now, &mut self.entropy[index]);
            while let Some(action) = node.poll_action() {
                self.perform(index, &node, action);
            }
            self.nodes[index] = Some(node);
        }
    }

    fn perform(&mut self, from: usize, node: &Node<G>, action: Action) {
        let arrive = self.now_ns + self.latency_ns;
        match action {
            Action::Send(message) | Action::Heartbeat(message) => {
                if self.channel_open {
                    self.wire.push_back((arrive, 1 - from, message));
                }
            }
            Action::CloseChannel => {
                if self.channel_open {
                    self.channel_open = false;
                    if let Some(peer) = self.nodes[1 - from].as_mut() {
                        peer.handle_channel_closed(self.now_ns, "peer closed the channel");
                    }
                }
            }
            Action::Release { output, log_index } => {
                let protected = node.role() == ft::Role::Primary;
                if log_index.is_some_and(|index| index > self.backup_received) && protected {
                    self.violations.push(format!("S1: output #{} released before its entry was received", output.seq));
                }
                self.released.push(Released { node: from, output, log_index, protected });
            }
            Action::Storage { epoch, request } => self.storage_request(from, epoch, request, arrive),
            Action::TestAndSet { expected_epoch } => {
                let outcome = if self.arbiter_epoch == expected_epoch {
                    self.arbiter_epoch += 1;
                    self.arbiter_owner = from;
                    ArbiterOutcome::Won { epoch: self.arbiter_epoch }
                } else if self.arbiter_owner == from && self.arbiter_epoch == expected_epoch + 1 {
                    ArbiterOutcome::Won { epoch: self.arbiter_epoch }
                } else {
                    ArbiterOutcome::Lost { epoch: self.arbiter_epoch }
                };
                self.arbiter.push_back((arrive, from, outcome));
            }
            Action::Notify(event) => {
                if let Event::Diverged(divergence) = &event {
                    self.violations.push(format!("S5: {divergence}"));
                }
                self.events.push((from, event));
            }
        }
    }

    fn storage_request(&mut self, from: usize, epoch: u64, request: StorageRequest, arrive: u64) {
        if epoch < self.arbiter_epoch {
            return; // Fenced: the node is superseded; it will learn through its peer or arbiter.
        }
        let sector_bytes = ft::abi::SECTOR_BYTES;
        let done = match request {
            StorageRequest::Read { target } => {
                let mut data = Vec::with_capacity(target.sectors as usize * sector_bytes);
                for sector in target.sector..target.sector + u64::from(target.sectors) {
                    let bytes = self.disk.get(&sector).cloned().unwrap_or_else(|| vec![0; sector_bytes]);
                    data.extend_from_slice(&bytes);
                }
                StorageDone { tag: target.tag, status: ft::abi::DiskStatus::Ok, data }
            }
            StorageRequest::Write { target, data, .. } => {
                for (i, chunk) in data.chunks(sector_bytes).enumerate() {
                    self.disk.insert(target.sector + i as u64, chunk.to_vec());
                }
                StorageDone { tag: target.tag, status: ft::abi::DiskStatus::Ok, data: Vec::new() }
            }
        };
        self.storage.push_back((arrive, from, done));
    }

    /// Console and network outputs, first copy of each, in sequence order; duplicates must be identical.
    pub fn outside_view(&self) -> Result<BTreeMap<u64, (OutputKind, Vec<u8>)>, String> {
        let mut seen: BTreeMap<u64, (OutputKind, Vec<u8>)> = BTreeMap::new();
        for released in &self.released {
            let copy = (released.output.kind, released.output.bytes.clone());
            match seen.get(&released.output.seq) {
                Some(first) if *first != copy => return Err(format!("output #{} differs", released.output.seq)),
                Some(_) => {}
                None => {
                    seen.insert(released.output.seq, copy);
                }
            }
        }
        Ok(seen)
    }
}
