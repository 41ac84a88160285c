//! TCP clients of a guest with its own TCP/IP stack (the KVM `redis` guest), over a simulated Ethernet link: the
//! client side is smoltcp too. Each client host frame goes, as one datagram, to the node that is live now
//! (`World::service_owner`, the simulator's stand-in for the switch that learned the guest's MAC from the
//! gratuitous ARP), and the nodes send the guest's frames back the same way (`NodeSetup::ethernet`).
//!
//! Each client holds one TCP connection for the whole run and keeps `pipeline` RESP requests in flight on it:
//! SETs of unique values and GETs on a few keys, recorded in the world's history as puts and gets, so the
//! history checker judges them as it judges the kv clients. A connection that is reset or closed is a violation
//! (S8): across a failover the guest's TCP state is the backup's too, so the connection must survive.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use ft::kv::Op;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use turmoil::net::UdpSocket;

use crate::node_host::{now_ns, SERVICE_PORT};
use crate::world::{ClientOp, NodeId, SharedWorld};

pub const HOST: &str = "tcp-clients";
/// Where the clients' host receives the guest's frames.
pub const LINK_PORT: u16 = 9000;
/// The `redis` guest's address (corpus/guests/redis/src/lib.rs).
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const GUEST_PORT: u16 = 6379;
const KEYS_USED: u64 = 8;
/// The longest the clients' host sleeps between two looks at its stack.
const POLL_MAX: Duration = Duration::from_millis(5);

/// The simulated link: frames received and not yet taken by smoltcp, frames smoltcp sent.
#[derive(Default)]
struct Link {
    received: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::Device for Link {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.received.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.sent)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.sent))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = 1514;
        capabilities
    }
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, length: usize, f: F) -> R {
        let mut frame = vec![0u8; length];
        let result = f(&mut frame);
        self.0.push(frame);
        result
    }
}

fn instant() -> Instant {
    Instant::from_micros((now_ns() / 1_000) as i64)
}

/// One client: its connection and what it has in flight.
struct Client {
    id: u32,
    handle: smoltcp::iface::SocketHandle,
    pending: VecDeque<Pending>,
    /// Reply bytes not parsed yet.
    input: Vec<u8>,
    /// Whether the connection was ever established (a close after that is a violation).
    established: bool,
    counter: u64,
}

/// A request on the wire and waiting for its reply: its history record.
struct Pending {
    index: usize,
    op: Op,
}

fn resp_command(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
    }
    out
}

/// One reply at the start of `input`: `Some(Ok(value))` for `+OK` (0) or a bulk string holding a number (`$-1` is
/// 0, as the kv service's unwritten key), `Some(Err(text))` for anything else, with the bytes it took.
fn parse_reply(input: &[u8]) -> Option<(Result<u64, String>, usize)> {
    let end = input.windows(2).position(|pair| pair == b"\r\n")?;
    let line = &input[..end];
    match line.first() {
        Some(b'+') => Some((Ok(0), end + 2)),
        Some(b'$') if line == b"$-1" => Some((Ok(0), end + 2)),
        Some(b'$') => {
            let length: usize = std::str::from_utf8(&line[1..]).ok()?.parse().ok()?;
            let start = end + 2;
            if input.len() < start + length + 2 {
                return None;
            }
            let text = String::from_utf8_lossy(&input[start..start + length]).into_owned();
            Some((text.parse::<u64>().map_err(|_| text), start + length + 2))
        }
        _ => Some((Err(String::from_utf8_lossy(line).into_owned()), end + 2)),
    }
}

/// The body of the TCP clients' host: `count` clients, each one connection with `pipeline` requests in flight.
pub async fn main(count: u32, pipeline: u32, world: SharedWorld, seed: u64, stop_ns: u64) -> turmoil::Result {
    let socket = UdpSocket::bind(("0.0.0.0", LINK_PORT)).await?;
    let nodes: Vec<SocketAddr> =
        NodeId::ALL.iter().map(|node| SocketAddr::new(turmoil::lookup(node.host()), SERVICE_PORT)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7c90_0000);
    let mut link = Link::default();
    let mut config = Config::new(EthernetAddress([0x02, 0, 0, 0, 0, 0xc1]).into());
    config.random_seed = rng.random();
    let mut interface = Interface::new(config, &mut link, instant());
    interface.update_ip_addrs(|addresses| {
        let _ = addresses.push(IpCidr::new(IpAddress::v4(10, 77, 0, 100), 24));
    });
    let mut sockets = SocketSet::new(Vec::new());
    let mut clients = Vec::new();
    for client in 0..count {
        let mut tcp =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 64 << 10]), tcp::SocketBuffer::new(vec![0; 64 << 10]));
        let [a, b, c, d] = GUEST_IP;
        tcp.connect(interface.context(), (IpAddress::v4(a, b, c, d), GUEST_PORT), 40_000 + client as u16)
            .expect("a fresh socket connects");
        clients.push(Client {
            id: client + 1,
            handle: sockets.add(tcp),
            pending: VecDeque::new(),
            input: Vec::new(),
            established: false,
            counter: 0,
        });
    }
    let mut buffer = vec![0u8; 4096];
    while now_ns() < stop_ns {
        interface.poll(instant(), &mut link, &mut sockets);
        for Client { id: client, handle, pending, input, established, counter } in clients.iter_mut() {
            let tcp = sockets.get_mut::<tcp::Socket>(*handle);
            if tcp.state() == tcp::State::Established {
                *established = true;
            }
            if *established && !tcp.is_open() {
                world.borrow_mut().violation(
                    "S8 TCP connection",
                    format!("client {client}'s connection to the guest was closed or reset ({})", tcp.state()),
                );
                *established = false;
            }
            if tcp.can_recv() {
                let _ = tcp.recv(|data| {
                    input.extend_from_slice(data);
                    (data.len(), ())
                });
            }
            while let Some((reply, used)) = parse_reply(input) {
                input.drain(..used);
                let Some(request) = pending.pop_front() else {
                    world.borrow_mut().violation("S8 TCP connection", format!("client {client}: a reply to nothing"));
                    continue;
                };
                let mut world = world.borrow_mut();
                match reply {
                    Ok(value) => {
                        let now = now_ns();
                        let record = &mut world.history[request.index];
                        record.completed_ns = Some(now);
                        record.ok = true;
                        if request.op == Op::Get {
                            record.value = value;
                        }
                    }
                    Err(text) => world.violation("S8 TCP connection", format!("client {client}: reply {text:?}")),
                }
            }
            while tcp.may_send() && pending.len() < pipeline as usize && rng.random_ratio(1, 4) {
                *counter += 1;
                let key = rng.random_range(0..KEYS_USED);
                let op = if rng.random_bool(0.5) { Op::Put } else { Op::Get };
                let value = if op == Op::Put { (u64::from(*client) << 32) | *counter } else { 0 };
                let key_name = format!("k{key}");
                let command = match op {
                    Op::Put => resp_command(&["SET", &key_name, &value.to_string()]),
                    Op::Get => resp_command(&["GET", &key_name]),
                };
                if tcp.send_capacity() - tcp.send_queue() < command.len() {
                    break;
                }
                let _ = tcp.send_slice(&command);
                let mut world = world.borrow_mut();
                world.history.push(ClientOp {
                    client: *client,
                    request: *counter,
                    op,
                    key,
                    value,
                    invoked_ns: now_ns(),
                    completed_ns: None,
                    ok: false,
                });
                pending.push_back(Pending { index: world.history.len() - 1, op });
            }
        }
        interface.poll(instant(), &mut link, &mut sockets);
        let owner = world.borrow().service_owner();
        for frame in link.sent.drain(..) {
            for (node, address) in NodeId::ALL.iter().zip(&nodes) {
                if owner == Some(*node) {
                    let _ = socket.try_send_to(&frame, *address);
                }
            }
        }
        let wait = interface
            .poll_delay(instant(), &sockets)
            .map_or(POLL_MAX, |delay| Duration::from_micros(delay.total_micros()).min(POLL_MAX))
            .max(Duration::from_millis(1));
        if let Ok(Ok((length, _))) = tokio::time::timeout(wait, socket.recv_from(&mut buffer)).await {
            link.received.push_back(buffer[..length].to_vec());
            while let Ok((length, _)) = socket.try_recv_from(&mut buffer) {
                link.received.push_back(buffer[..length].to_vec());
            }
        }
    }
    std::future::pending().await
}
