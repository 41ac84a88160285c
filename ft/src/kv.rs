//! The key-value demo service's messages: what clients send to the guests in `corpus/` and the model guest.
//!
//! The protocol does not depend on this; it lives here so that the simulator's clients, `ftvm demo` and the
//! guests (the C guests mirror these layouts, see docs/guest-abi.md) share one definition.
//!
//! A network frame on the guest's device is `peer (6 bytes: IPv4 address, UDP port, big-endian) || payload`.
//! The host bridges UDP datagrams to frames and back; the guest answers to the peer it was asked from.

/// Bytes of the peer address that prefixes every frame.
pub const PEER_BYTES: usize = 6;
/// The frame the guest's network device carries for a datagram `payload` that came from `from`.
pub fn frame_from_datagram(from: std::net::SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(PEER_BYTES + payload.len());
    frame.extend_from_slice(&from.ip().octets());
    frame.extend_from_slice(&from.port().to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Where a frame the guest transmitted goes, and its payload; `None` for a frame too short to carry a peer.
pub fn datagram_from_frame(frame: &[u8]) -> Option<(std::net::SocketAddrV4, &[u8])> {
    let (peer, payload) = (frame.get(..PEER_BYTES)?, frame.get(PEER_BYTES..)?);
    let ip = std::net::Ipv4Addr::new(peer[0], peer[1], peer[2], peer[3]);
    Some((std::net::SocketAddrV4::new(ip, u16::from_be_bytes([peer[4], peer[5]])), payload))
}

/// Bytes of an encoded request.
pub const REQUEST_BYTES: usize = 40;
/// Bytes of an encoded response.
pub const RESPONSE_BYTES: usize = 48;
/// Keys are `0..KEYS`; key `k` is persisted in disk sector `1 + k`.
pub const KEYS: u64 = 64;
/// Magic at the start of every request and response ("KV01").
pub const MAGIC: u32 = 0x3130_564b;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Put = 1,
    Get = 2,
}

/// A client request. Layout (little-endian): magic u32, op u32, client u32, reserved u32, request u64, key u64,
/// value u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub client: u32,
    pub request: u64,
    pub key: u64,
    pub value: u64,
}

/// Response status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// The key is out of range or the request malformed.
    BadRequest = 1,
    /// The disk failed the write.
    IoError = 2,
    /// The disk returned something other than what the guest wrote there before: storage (or the protocol in
    /// front of it) reordered or lost a write. Only the pipelined guest `kvq` checks this.
    Inconsistent = 3,
}

/// The guest's answer. Layout: magic u32, op u32, client u32, status u32, request u64, key u64, value u64,
/// version u64 (how many puts the guest has applied, including this one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub op: Op,
    pub client: u32,
    pub status: Status,
    pub request: u64,
    pub key: u64,
    pub value: u64,
    pub version: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message is {0} bytes, expected {1}")]
    Length(usize, usize),
    #[error("bad magic {0:#x}")]
    Magic(u32),
    #[error("unknown op {0}")]
    Op(u32),
    #[error("unknown status {0}")]
    Status(u32),
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn op_from(value: u32) -> Result<Op, DecodeError> {
    match value {
        1 => Ok(Op::Put),
        2 => Ok(Op::Get),
        other => Err(DecodeError::Op(other)),
    }
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut out = [0u8; REQUEST_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&(self.op as u32).to_le_bytes());
        out[8..12].copy_from_slice(&self.client.to_le_bytes());
        out[16..24].copy_from_slice(&self.request.to_le_bytes());
        out[24..32].copy_from_slice(&self.key.to_le_bytes());
        out[32..40].copy_from_slice(&self.value.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        if bytes.len() != REQUEST_BYTES {
            return Err(DecodeError::Length(bytes.len(), REQUEST_BYTES));
        }
        let magic = u32_at(bytes, 0);
        if magic != MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        Ok(Request {
            op: op_from(u32_at(bytes, 4))?,
            client: u32_at(bytes, 8),
            request: u64_at(bytes, 16),
            key: u64_at(bytes, 24),
            value: u64_at(bytes, 32),
        })
    }
}

impl Response {
    pub fn encode(&self) -> [u8; RESPONSE_BYTES] {
        let mut out = [0u8; RESPONSE_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&(self.op as u32).to_le_bytes());
        out[8..12].copy_from_slice(&self.client.to_le_bytes());
        out[12..16].copy_from_slice(&(self.status as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.request.to_le_bytes());
        out[24..32].copy_from_slice(&self.key.to_le_bytes());
        out[32..40].copy_from_slice(&self.value.to_le_bytes());
        out[40..48].copy_from_slice(&self.version.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
        if bytes.len() != RESPONSE_BYTES {
            return Err(DecodeError::Length(bytes.len(), RESPONSE_BYTES));
        }
        let magic = u32_at(bytes, 0);
        if magic != MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        let status = match u32_at(bytes, 12) {
            0 => Status::Ok,
            1 => Status::BadRequest,
            2 => Status::IoError,
            3 => Status::Inconsistent,
            other => return Err(DecodeError::Status(other)),
        };
        Ok(Response {
            op: op_from(u32_at(bytes, 4))?,
            client: u32_at(bytes, 8),
            status,
            request: u64_at(bytes, 16),
            key: u64_at(bytes, 24),
            value: u64_at(bytes, 32),
            version: u64_at(bytes, 40),
        })
    }
}

/// The on-disk record of key `k` in sector `1 + k` (little-endian): magic u32, reserved u32, key u64, value u64,
/// version u64; the rest of the sector is zero. A sector without the magic holds no value (reads as 0).
pub const RECORD_BYTES: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_rejects_garbage() {
        let request = Request { op: Op::Put, client: 7, request: 9, key: 3, value: 0xdead_beef };
        assert_eq!(Request::decode(&request.encode()), Ok(request));
        assert_eq!(Request::decode(&[0u8; 3]), Err(DecodeError::Length(3, REQUEST_BYTES)));
        let mut bad = request.encode();
        bad[4] = 9;
        assert_eq!(Request::decode(&bad), Err(DecodeError::Op(9)));
    }

    #[test]
    fn frames_carry_the_peer() {
        let peer = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 1, 2, 3), 8080);
        let frame = frame_from_datagram(peer, b"payload");
        assert_eq!(datagram_from_frame(&frame), Some((peer, &b"payload"[..])));
        assert_eq!(datagram_from_frame(&frame[..3]), None);
    }

    #[test]
    fn response_round_trips() {
        let response =
            Response { op: Op::Get, client: 1, status: Status::Ok, request: 2, key: 3, value: 4, version: 5 };
        assert_eq!(Response::decode(&response.encode()), Ok(response));
    }
}
