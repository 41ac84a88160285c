//! The client load of `ftvm demo` and `ftvm report-failover`, and the checks of what the clients saw.
//!
//! Several clients, each a thread with its own UDP socket, keep several requests in flight against the key-value
//! service (3 puts to 1 get, random keys). Every attempt has its own request id, and a put's value is unique
//! (`client << 48 | request id`), so a read names the put it saw. An attempt not answered within
//! [`ATTEMPT_TIMEOUT`] is given up and a new one (a new id) takes its place; an answer that comes later still
//! counts.
//!
//! What is checked, from the answers alone:
//! - two answers to one request id must be byte-identical (the new primary re-sends outputs that may not have
//!   left, with the same bytes): otherwise `divergent`;
//! - an answer with status `Inconsistent` (the `kvq` guest read back something other than it wrote) is counted;
//! - the reads must fit one history of the puts ([`History::contradictions`]): a read returns the value of a put
//!   that may still be the key's latest when the read was sent, never one that a later acknowledged put
//!   replaced (an acknowledged put lost), never a value nobody put there.
//!
//! Ordering argument of the history check: datagrams reach the one service socket in the order they were sent
//! (loopback), and the guest takes requests in arrival order; a datagram that reached a socket which then died
//! (a killed or frozen primary) is lost, never delivered later. So a put P that was answered, or given up after
//! its datagram was sent, at time `t` comes before every request sent after `t`, or never happens.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ft::kv::{Op, Request, Response, Status, KEYS};

use crate::error::CliError;
use crate::machine::splitmix;

/// How long one attempt waits for its answer before it is given up and a new attempt (a new id) is sent.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(25);
/// How long a client keeps listening after its last attempt, for late duplicates of answers.
const DRAIN: Duration = Duration::from_millis(30);
/// Contradictions described one by one; beyond, a count.
const CONTRADICTIONS_MAX: usize = 10;

/// A put as the clients saw it. Times are nanoseconds since the load started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecord {
    pub key: u64,
    pub value: u64,
    /// Taken before the datagram was sent.
    pub sent_ns: u64,
    /// When its answer (status Ok) arrived.
    pub acked_ns: Option<u64>,
    /// When the client gave up waiting for it.
    pub given_up_ns: Option<u64>,
}

impl PutRecord {
    /// From when on this put comes before everything sent later (or never happens): its answer, or the moment the
    /// client gave up on it, whichever came first.
    fn settled_ns(&self) -> u64 {
        self.acked_ns.unwrap_or(u64::MAX).min(self.given_up_ns.unwrap_or(u64::MAX))
    }
}

/// A read answered with status Ok.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetRecord {
    pub key: u64,
    pub value: u64,
    pub sent_ns: u64,
    pub answered_ns: u64,
    pub client: u32,
    pub request: u64,
}

/// Every put and every answered read of a load.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub puts: Vec<PutRecord>,
    pub gets: Vec<GetRecord>,
}

impl History {
    pub fn extend(&mut self, other: History) {
        self.puts.extend(other.puts);
        self.gets.extend(other.gets);
    }

    /// The reads that fit no history of the puts, as sentences: a read of a value nobody put under the key, of a
    /// put sent only after the read was answered, of 0 after a put was acknowledged, or of a put that a later put
    /// replaced before the read was sent (the later one sent after the first was settled, and acknowledged
    /// before the read was sent): an acknowledged put is lost. Returns how many, and the first few described.
    pub fn contradictions(&self) -> (u64, Vec<String>) {
        let by_value: HashMap<(u64, u64), &PutRecord> =
            self.puts.iter().map(|put| ((put.key, put.value), put)).collect();
        let mut acked: HashMap<u64, Vec<&PutRecord>> = HashMap::new();
        for put in self.puts.iter().filter(|put| put.acked_ns.is_some()) {
            acked.entry(put.key).or_default().push(put);
        }
        let mut found = Vec::new();
        let mut count = 0u64;
        for get in &self.gets {
            let replaced =
                |after_ns: u64| {
                    acked.get(&get.key).into_iter().flatten().find(|later| {
                        later.sent_ns > after_ns && later.acked_ns.is_some_and(|acked| acked < get.sent_ns)
                    })
                };
            let verdict = if get.value == 0 {
                // Nothing was ever put: only before any put was acknowledged.
                acked.get(&get.key).into_iter().flatten().find(|put| put.acked_ns.is_some_and(|a| a < get.sent_ns)).map(
                    |put| {
                        format!(
                            "reads 0 (never written), but the put of {:#x} was acknowledged before the read",
                            put.value
                        )
                    },
                )
            } else {
                match by_value.get(&(get.key, get.value)) {
                    None => Some(format!("reads {:#x}, which no client put under this key", get.value)),
                    Some(put) if put.sent_ns > get.answered_ns => {
                        Some(format!("reads {:#x}, put only after the read was answered", get.value))
                    }
                    Some(put) => replaced(put.settled_ns()).map(|later| {
                        format!(
                            "reads {:#x}, but the put of {:#x}, sent after that one was settled, was acknowledged \
                             before the read was sent: an acknowledged put is lost",
                            get.value, later.value
                        )
                    }),
                }
            };
            if let Some(verdict) = verdict {
                count += 1;
                if found.len() < CONTRADICTIONS_MAX {
                    found.push(format!("key {} (client {}, request {}) {verdict}", get.key, get.client, get.request));
                }
            }
        }
        (count, found)
    }
}

/// What one client counted.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Request ids answered (the first answer of each).
    pub answered: u64,
    /// Attempts given up and never answered.
    pub indeterminate: u64,
    /// Second answers to a request id that differ from the first.
    pub divergent: u64,
    /// Answers with status `Inconsistent`.
    pub inconsistent: u64,
    /// Other answers that should not be: another status, or an answer that does not answer its request.
    pub failures: Vec<String>,
}

/// What happened to an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Its first answer. `late`: after the client had given up on it.
    Answered {
        request: u64,
        key: u64,
        status: Status,
        value: u64,
        sent_ns: u64,
        received_ns: u64,
        late: bool,
    },
    GaveUp {
        request: u64,
        key: u64,
    },
}

struct Attempt {
    op: Op,
    key: u64,
    value: u64,
    sent_ns: u64,
    /// Its entry in `history.puts`.
    put: Option<usize>,
    given_up: bool,
}

/// One client: a socket, its attempts and what it saw.
pub struct Client {
    socket: UdpSocket,
    service: SocketAddr,
    pub id: u32,
    t0: Instant,
    next_request: u64,
    rng: u64,
    /// Attempts neither answered nor given up: request id → deadline (ns).
    outstanding: BTreeMap<u64, u64>,
    attempts: HashMap<u64, Attempt>,
    /// The first answer to each request id.
    answers: HashMap<u64, Vec<u8>>,
    pub history: History,
    pub counts: Counts,
    /// (sent, received) of the answers that came in time.
    pub latencies: Vec<(u64, u64)>,
}

impl Client {
    pub fn new(service: SocketAddr, id: u32, seed: u64, t0: Instant) -> Result<Client, CliError> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(|error| CliError::io("client socket", &error))?;
        Ok(Client {
            socket,
            service,
            id,
            t0,
            next_request: 1,
            rng: seed,
            outstanding: BTreeMap::new(),
            attempts: HashMap::new(),
            answers: HashMap::new(),
            history: History::default(),
            counts: Counts::default(),
            latencies: Vec::new(),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn random(&mut self) -> u64 {
        self.rng = splitmix(self.rng);
        self.rng
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Sends one attempt; returns its request id.
    pub fn send(&mut self, op: Op, key: u64) -> u64 {
        let request = self.next_request;
        self.next_request += 1;
        let value = if op == Op::Put { (u64::from(self.id) << 48) | request } else { 0 };
        let sent_ns = self.now_ns();
        let put = (op == Op::Put).then(|| {
            self.history.puts.push(PutRecord { key, value, sent_ns, acked_ns: None, given_up_ns: None });
            self.history.puts.len() - 1
        });
        self.attempts.insert(request, Attempt { op, key, value, sent_ns, put, given_up: false });
        self.outstanding.insert(request, sent_ns + ATTEMPT_TIMEOUT.as_nanos() as u64);
        let datagram = Request { op, client: self.id, request, key, value }.encode();
        // A send that fails (nobody bound the port yet) is an attempt that gets no answer.
        let _ = self.socket.send_to(&datagram, self.service);
        request
    }

    /// A random operation: 3 puts to 1 get, on a random key.
    pub fn send_random(&mut self) -> u64 {
        let op = if self.random().is_multiple_of(4) { Op::Get } else { Op::Put };
        let key = self.random() % KEYS;
        self.send(op, key)
    }

    /// Waits up to `wait` (less if an attempt's deadline comes first) for one answer; then gives up the attempts
    /// whose deadline passed.
    pub fn poll(&mut self, wait: Duration) -> Vec<Event> {
        let now = self.now_ns();
        let until_deadline = self
            .outstanding
            .values()
            .min()
            .map_or(wait, |deadline| Duration::from_nanos(deadline.saturating_sub(now)).min(wait));
        let _ = self.socket.set_read_timeout(Some(until_deadline.max(Duration::from_micros(100))));
        let mut events = Vec::new();
        let mut buffer = [0u8; 256];
        if let Ok((length, _)) = self.socket.recv_from(&mut buffer) {
            let received_ns = self.now_ns();
            if let Some(event) = self.handle(&buffer[..length], received_ns) {
                events.push(event);
            }
        }
        let now = self.now_ns();
        let expired: Vec<u64> =
            self.outstanding.iter().filter(|(_, deadline)| **deadline <= now).map(|(request, _)| *request).collect();
        for request in expired {
            self.outstanding.remove(&request);
            if let Some(attempt) = self.attempts.get_mut(&request) {
                attempt.given_up = true;
                if let Some(put) = attempt.put {
                    self.history.puts[put].given_up_ns = Some(now);
                }
                events.push(Event::GaveUp { request, key: attempt.key });
            }
        }
        events
    }

    /// One datagram from the service (outside input: anything that is not an answer to one of this client's
    /// attempts is ignored).
    fn handle(&mut self, bytes: &[u8], received_ns: u64) -> Option<Event> {
        let response = Response::decode(bytes).ok()?;
        if response.client != self.id {
            return None;
        }
        let attempt = self.attempts.get(&response.request)?;
        if let Some(first) = self.answers.get(&response.request) {
            if first.as_slice() != bytes {
                self.counts.divergent += 1;
                tracing::error!(
                    "client {}: two different answers to request {}: {first:02x?} then {bytes:02x?}",
                    self.id,
                    response.request
                );
            }
            return None;
        }
        self.answers.insert(response.request, bytes.to_vec());
        self.counts.answered += 1;
        let late = self.outstanding.remove(&response.request).is_none();
        if !late {
            self.latencies.push((attempt.sent_ns, received_ns));
        }
        let answers_it = response.op == attempt.op
            && response.key == attempt.key
            && (attempt.op == Op::Get || response.value == attempt.value || response.status != Status::Ok);
        if !answers_it {
            self.counts.failures.push(format!(
                "client {}: {response:?} does not answer its request ({:?} of key {})",
                self.id, attempt.op, attempt.key
            ));
        }
        match response.status {
            Status::Ok if answers_it => match attempt.put {
                Some(put) => self.history.puts[put].acked_ns = Some(received_ns),
                None => self.history.gets.push(GetRecord {
                    key: attempt.key,
                    value: response.value,
                    sent_ns: attempt.sent_ns,
                    answered_ns: received_ns,
                    client: self.id,
                    request: response.request,
                }),
            },
            Status::Ok => {}
            Status::Inconsistent => {
                self.counts.inconsistent += 1;
                tracing::error!(
                    "client {}: request {} (key {}): the guest found its read inconsistent (read {:#x})",
                    self.id,
                    response.request,
                    attempt.key,
                    response.value
                );
            }
            status => self.counts.failures.push(format!(
                "client {}: request {} ({:?} of key {}) answered with status {status:?}",
                self.id, response.request, attempt.op, attempt.key
            )),
        }
        Some(Event::Answered {
            request: response.request,
            key: attempt.key,
            status: response.status,
            value: response.value,
            sent_ns: attempt.sent_ns,
            received_ns,
            late,
        })
    }

    /// Listens for `period` more: late answers and duplicates.
    pub fn drain(&mut self, period: Duration) {
        let until = Instant::now() + period;
        while Instant::now() < until {
            self.poll(until.saturating_duration_since(Instant::now()));
        }
    }

    /// The counts, with the attempts given up and never answered.
    pub fn finish(mut self) -> (History, Counts) {
        self.counts.indeterminate = self
            .attempts
            .iter()
            .filter(|(request, attempt)| attempt.given_up && !self.answers.contains_key(request))
            .count() as u64;
        (self.history, self.counts)
    }
}

/// The first answer to an attempt sent after the kill: the new primary's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstAnswer {
    pub received_ns: u64,
    pub client: u32,
    pub request: u64,
}

/// What the client threads share with the trial.
struct Shared {
    t0: Instant,
    stop: AtomicBool,
    in_flight: AtomicU64,
    answered: AtomicU64,
    /// Attempts sent from then on count for the failover: u64::MAX until the kill.
    kill_ns: AtomicU64,
    first_after_kill: Mutex<Option<FirstAnswer>>,
}

/// The client threads of a load.
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<Client>>,
}

impl Load {
    /// `clients` threads against `service`, each keeping `depth` requests in flight (client ids 1..=clients).
    pub fn start(service: SocketAddr, clients: u32, depth: u32, seed: u64, t0: Instant) -> Result<Load, CliError> {
        let shared = Arc::new(Shared {
            t0,
            stop: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            kill_ns: AtomicU64::new(u64::MAX),
            first_after_kill: Mutex::new(None),
        });
        let mut threads = Vec::new();
        for id in 1..=clients {
            let client = Client::new(service, id, splitmix(seed ^ u64::from(id).wrapping_mul(0x9e37_79b9)), t0)?;
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("client-{id}"))
                .spawn(move || run_client(client, &shared, depth.max(1) as usize))
                .map_err(|error| CliError::io("client thread", &error))?;
            threads.push(thread);
        }
        Ok(Load { shared, threads })
    }

    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::SeqCst)
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.shared.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// From now on, answers to attempts sent count as the new primary's.
    /// The instant the clients' clocks count from.
    pub fn started_at(&self) -> Instant {
        self.shared.t0
    }

    pub fn mark_kill(&self) {
        // A later kill (the demo's second failure) measures its own first answer.
        *self.shared.first_after_kill.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.shared.kill_ns.store(self.now_ns(), Ordering::SeqCst);
    }

    pub fn first_after_kill(&self) -> Option<FirstAnswer> {
        *self.shared.first_after_kill.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops sending; every client waits for its attempts (answered or given up) and for late duplicates.
    pub fn stop(self) -> Result<Vec<Client>, CliError> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|thread| thread.join().map_err(|_| CliError::Protocol("a client thread panicked".into())))
            .collect()
    }
}

fn run_client(mut client: Client, shared: &Shared, depth: usize) -> Client {
    loop {
        if !shared.stop.load(Ordering::SeqCst) {
            while client.outstanding() < depth {
                client.send_random();
                shared.in_flight.fetch_add(1, Ordering::SeqCst);
            }
        } else if client.outstanding() == 0 {
            break;
        }
        for event in client.poll(Duration::from_millis(5)) {
            match event {
                Event::Answered { request, sent_ns, received_ns, late, .. } => {
                    if !late {
                        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    shared.answered.fetch_add(1, Ordering::SeqCst);
                    if sent_ns >= shared.kill_ns.load(Ordering::SeqCst) {
                        let mut first = shared.first_after_kill.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        if first.is_none_or(|first| received_ns < first.received_ns) {
                            *first = Some(FirstAnswer { received_ns, client: client.id, request });
                        }
                    }
                }
                Event::GaveUp { .. } => {
                    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
    client.drain(DRAIN);
    client
}

/// Reads every key back (up to `depth` reads in flight, a key retried until answered or `deadline`), as client
/// `id`; returns the values (None where no answer came) and the client, whose reads join the history.
pub fn read_back(
    service: SocketAddr,
    id: u32,
    t0: Instant,
    depth: usize,
    deadline: Instant,
) -> Result<(Vec<Option<u64>>, Client), CliError> {
    let mut client = Client::new(service, id, 0, t0)?;
    let mut values: Vec<Option<u64>> = vec![None; KEYS as usize];
    let mut waiting: std::collections::VecDeque<u64> = (0..KEYS).collect();
    while values.iter().any(Option::is_none) && Instant::now() < deadline {
        while client.outstanding() < depth {
            let Some(key) = waiting.pop_front() else { break };
            client.send(Op::Get, key);
        }
        for event in client.poll(Duration::from_millis(5)) {
            match event {
                Event::Answered { key, status: Status::Ok, value, .. } => {
                    if let Some(slot) = values.get_mut(key as usize) {
                        slot.get_or_insert(value);
                    }
                }
                Event::Answered { key, late: false, .. } | Event::GaveUp { key, .. } => {
                    if values.get(key as usize).is_some_and(Option::is_none) && !waiting.contains(&key) {
                        waiting.push_back(key);
                    }
                }
                Event::Answered { .. } => {}
            }
        }
    }
    client.drain(DRAIN);
    Ok((values, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn put(key: u64, value: u64, sent: u64, acked: Option<u64>, given_up: Option<u64>) -> PutRecord {
        PutRecord {
            key,
            value,
            sent_ns: sent * MS,
            acked_ns: acked.map(|ms| ms * MS),
            given_up_ns: given_up.map(|ms| ms * MS),
        }
    }

    fn get(key: u64, value: u64, sent: u64, answered: u64) -> GetRecord {
        GetRecord { key, value, sent_ns: sent * MS, answered_ns: answered * MS, client: 9, request: 1 }
    }

    /// Two clients put the same key at once: a read after both may see either. A put given up may or may not
    /// have happened. Nothing here contradicts one history.
    #[test]
    fn concurrent_and_unanswered_puts_allow_either_value() {
        let history = History {
            puts: vec![put(1, 0xa, 0, Some(5), None), put(1, 0xb, 1, Some(4), None), put(2, 0xc, 0, None, Some(25))],
            gets: vec![
                get(1, 0xa, 6, 7),
                get(1, 0xb, 6, 7),
                get(1, 0, 0, 2),
                get(2, 0xc, 30, 31),
                get(2, 0, 30, 31),
                // A read sent before the put was answered may see it already.
                get(1, 0xa, 2, 3),
            ],
        };
        assert_eq!(history.contradictions(), (0, Vec::new()));
    }

    /// A read of a value that an acknowledged put replaced before the read was sent: the acknowledged put is lost.
    #[test]
    fn a_read_of_a_replaced_value_is_a_lost_put() {
        let history = History {
            puts: vec![put(3, 0xa, 0, Some(2), None), put(3, 0xb, 3, Some(5), None), put(4, 0xc, 0, None, Some(25))],
            gets: vec![
                get(3, 0xa, 6, 7),
                get(3, 0, 6, 7),
                get(3, 0xdead, 6, 7),
                get(4, 0xc, 30, 31),
                get(3, 0xb, 1, 2),
            ],
        };
        let (count, found) = history.contradictions();
        assert_eq!((count, found.len()), (4, 4), "{found:#?}");
        assert!(found[0].contains("an acknowledged put is lost"), "{found:#?}");
        assert!(found[1].contains("reads 0"), "{found:#?}");
        assert!(found[2].contains("no client put"), "{found:#?}");
        assert!(found[3].contains("after the read was answered"), "{found:#?}");
        // An unanswered put given up at 25 ms, then a put acknowledged: the old one may no longer be read.
        let history = History {
            puts: vec![put(5, 0xa, 0, None, Some(25)), put(5, 0xb, 26, Some(28), None)],
            gets: vec![get(5, 0xa, 30, 31)],
        };
        assert_eq!(history.contradictions().0, 1);
    }

    /// A fake service on loopback answers as scripted: the client counts an Inconsistent answer, two different
    /// answers to one request id, and an answer to somebody else's request is ignored.
    #[test]
    fn the_client_counts_inconsistent_and_divergent_answers() {
        let service = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = service.local_addr().unwrap();
        let t0 = Instant::now();
        let mut client = Client::new(address, 4, 1, t0).unwrap();
        let get = client.send(Op::Get, 7);
        let put = client.send(Op::Put, 8);
        let mut buffer = [0u8; 64];
        let mut requests = Vec::new();
        for _ in 0..2 {
            let (length, from) = service.recv_from(&mut buffer).unwrap();
            requests.push((Request::decode(&buffer[..length]).unwrap(), from));
        }
        let answer = |request: &Request, status, value| Response {
            op: request.op,
            client: request.client,
            status,
            request: request.request,
            key: request.key,
            value,
            version: 1,
        };
        for (request, from) in &requests {
            let response = if request.request == get {
                answer(request, Status::Inconsistent, 5)
            } else {
                answer(request, Status::Ok, request.value)
            };
            service.send_to(&response.encode(), from).unwrap();
            if request.request == put {
                let mut other = response;
                other.version = 2;
                service.send_to(&other.encode(), from).unwrap();
                let mut stranger = response;
                stranger.client = 99;
                service.send_to(&stranger.encode(), from).unwrap();
                service.send_to(b"not an answer", from).unwrap();
            }
        }
        client.drain(Duration::from_millis(200));
        let (history, counts) = client.finish();
        assert_eq!(counts.inconsistent, 1, "{counts:?}");
        assert_eq!(counts.divergent, 1, "{counts:?}");
        assert_eq!(counts.answered, 2, "{counts:?}");
        assert!(counts.failures.is_empty(), "{counts:?}");
        assert_eq!(history.gets.len(), 0, "an inconsistent read is not a read of the history");
        assert!(history.puts[0].acked_ns.is_some());
    }
}
