//! The scripted client loads of `ftvm run`/`record`/`report`, chosen by the guest: for the kv services, one
//! request at a time, the next sent when the response to the previous one has been released (so the Output Rule
//! sits on the critical path of every request); for netrx and nettx, the streams of `crate::stream`.

use ft::kv::{Op, Request, Response, Status, KEYS, PEER_BYTES};
use ft::log::{Output, OutputKind};

use crate::error::CliError;
use crate::machine::splitmix;

/// The client's address, prefixed to every request frame (10.0.0.2:8080).
const PEER: [u8; PEER_BYTES] = [10, 0, 0, 2, 0x1f, 0x90];
/// The client id in requests.
const CLIENT: u32 = 1;

/// A load for one corpus guest.
pub enum Workload {
    Kv(KvWorkload),
    NetRx(crate::stream::NetRxLoad),
    NetTx(crate::stream::NetTxLoad),
}

impl Workload {
    /// The load for corpus guest `guest` (by content): `count` requests for kv and kvq, frames for netrx and
    /// nettx; None for a guest that takes no input, and for a count of 0 (no load: the guest idles).
    pub fn for_guest(guest: Option<&str>, count: u64, seed: u64) -> Option<Workload> {
        if count == 0 {
            return None;
        }
        match guest? {
            "kv" | "kvq" => Some(Workload::Kv(KvWorkload::new(count, seed))),
            "netrx" => Some(Workload::NetRx(crate::stream::NetRxLoad::new(count))),
            "nettx" => {
                let frames = count.min(crate::stream::NETTX_FRAMES_MAX);
                Some(Workload::NetTx(crate::stream::NetTxLoad::new(u32::try_from(frames).unwrap_or(u32::MAX))))
            }
            _ => None,
        }
    }

    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        match self {
            Workload::Kv(load) => load.next_frame(),
            Workload::NetRx(load) => load.next_frame(),
            Workload::NetTx(load) => load.next_frame(),
        }
    }

    /// A released output; only frames the guest transmitted concern a load.
    pub fn released(&mut self, output: &Output) -> Result<(), CliError> {
        if output.kind != OutputKind::NetTransmit {
            return Ok(());
        }
        match self {
            Workload::Kv(load) => load.released(output),
            Workload::NetRx(load) => load.released(output),
            Workload::NetTx(load) => load.released(output),
        }
    }

    /// Requests answered, or frames acknowledged (netrx) or received (nettx).
    pub fn responses(&self) -> u64 {
        match self {
            Workload::Kv(load) => load.responses(),
            Workload::NetRx(load) => load.acked(),
            Workload::NetTx(load) => load.received(),
        }
    }

    pub fn done(&self) -> bool {
        match self {
            Workload::Kv(load) => load.done(),
            Workload::NetRx(load) => load.done(),
            Workload::NetTx(load) => load.done(),
        }
    }
}

pub struct KvWorkload {
    requests_total: u64,
    /// Requests sent so far; request ids are 1, 2, ...
    sent: u64,
    responses: u64,
    rng: u64,
    awaiting: Option<Request>,
    /// Value last put per key, to check GETs (`None` = unknown: never put in this run).
    model: Vec<Option<u64>>,
}

impl KvWorkload {
    pub fn new(requests_total: u64, seed: u64) -> KvWorkload {
        KvWorkload {
            requests_total,
            sent: 0,
            responses: 0,
            rng: seed,
            awaiting: None,
            model: vec![None; KEYS as usize],
        }
    }

    fn random(&mut self) -> u64 {
        self.rng = splitmix(self.rng);
        self.rng
    }

    /// The next request frame, if it is time for one (nothing awaiting a response, requests left).
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.awaiting.is_some() || self.sent == self.requests_total {
            return None;
        }
        self.sent += 1;
        let op = if self.random().is_multiple_of(2) { Op::Put } else { Op::Get };
        let key = self.random() % KEYS;
        let value = if op == Op::Put { self.random() } else { 0 };
        let request = Request { op, client: CLIENT, request: self.sent, key, value };
        self.awaiting = Some(request);
        let mut frame = PEER.to_vec();
        frame.extend_from_slice(&request.encode());
        Some(frame)
    }

    /// A released output: a network frame is the response to the request awaiting one.
    pub fn released(&mut self, output: &Output) -> Result<(), CliError> {
        if output.kind != OutputKind::NetTransmit {
            return Ok(());
        }
        let bad = |what: String| Err(CliError::Protocol(format!("kv response: {what}")));
        if output.bytes.len() < PEER_BYTES || output.bytes[..PEER_BYTES] != PEER {
            return bad(format!("frame of {} bytes not addressed to the client", output.bytes.len()));
        }
        let response = match Response::decode(&output.bytes[PEER_BYTES..]) {
            Ok(response) => response,
            Err(error) => return bad(error.to_string()),
        };
        let Some(request) = self.awaiting.take() else {
            return bad(format!("unsolicited response to request {}", response.request));
        };
        if (response.request, response.op, response.key, response.status)
            != (request.request, request.op, request.key, Status::Ok)
        {
            return bad(format!("{response:?} does not answer {request:?}"));
        }
        let slot = &mut self.model[request.key as usize];
        match request.op {
            Op::Put => *slot = Some(request.value),
            Op::Get => {
                if slot.is_some_and(|value| value != response.value) {
                    return bad(format!(
                        "GET {} returned {:#x}, expected {:#x}",
                        request.key,
                        response.value,
                        slot.unwrap_or(0)
                    ));
                }
            }
        }
        self.responses += 1;
        Ok(())
    }

    pub fn responses(&self) -> u64 {
        self.responses
    }

    /// Every request has been answered.
    pub fn done(&self) -> bool {
        self.responses == self.requests_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(request: &[u8], value: u64) -> Output {
        let request = Request::decode(&request[PEER_BYTES..]).expect("a request");
        let response = Response {
            op: request.op,
            client: request.client,
            status: Status::Ok,
            request: request.request,
            key: request.key,
            value: if request.op == Op::Put { request.value } else { value },
            version: 0,
        };
        let mut bytes = PEER.to_vec();
        bytes.extend_from_slice(&response.encode());
        Output { seq: 0, kind: OutputKind::NetTransmit, bytes, disk: None }
    }

    #[test]
    fn one_request_at_a_time_and_answers_are_checked() {
        let mut load = KvWorkload::new(3, 7);
        let first = load.next_frame().expect("first request");
        assert!(load.next_frame().is_none(), "waits for the response");
        load.released(&respond(&first, 0)).expect("a good answer");
        let second = load.next_frame().expect("second request");
        let mut wrong = respond(&second, 0);
        wrong.bytes[PEER_BYTES + 16] ^= 1; // request id
        assert!(load.released(&wrong).is_err());
        assert_eq!(load.responses(), 1);
        assert!(!load.done());
        assert_eq!(KvWorkload::new(3, 7).next_frame(), Some(first), "seeded: the same load every time");
    }
}
