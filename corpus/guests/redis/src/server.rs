//! The event loop: smoltcp sockets, one connection state per socket, group commits of the log, and replies
//! released in request order once the log holds what they depend on.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use ftvm_guest::disk::Disk;
use ftvm_guest::net::Net;
use ftvm_guest::{println, IRQ_DISK};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

use crate::aof::Log;
use crate::commands::{self, Refusal};
use crate::record;
use crate::resp::{self, Parse, REQUEST_BYTES_MAX};
use crate::store::Store;

/// Connections served at once. A SYN that finds no listening socket is answered with a reset (smoltcp), and a
/// socket listens again only once its last connection has closed, so this is twice a client's connections:
/// redis-benchmark opens its 50 for the next test while the guest still closes the last test's 50.
const CONNECTIONS: usize = 128;
const SOCKET_RX_BYTES: usize = 4 << 10;
const SOCKET_TX_BYTES: usize = 8 << 10;
/// Replies waiting for the log per connection before the guest stops reading that connection.
const REPLIES_MAX: usize = 1024;
/// Reply bytes waiting per connection (released or not) before the guest stops reading it: a client that
/// pipelines and never reads must not fill the heap.
const REPLY_BYTES_MAX: usize = 64 << 10;
/// A connection silent this long, or a peer that stops acknowledging for this long, is dropped: a vanished
/// client must not hold a socket forever (keep-alive probes find one that vanished while idle).
const IDLE_TIMEOUT_S: u64 = 120;
const KEEP_ALIVE_S: u64 = 30;
/// The timer drives TCP's retransmissions and delayed acks.
const TIMER_PERIOD_US: u32 = 10_000;
/// SET and INCR are refused once the heap holds this much: the connections' buffers need the rest.
const MEMORY_USED_MAX_BYTES: usize = ftvm_guest::heap::HEAP_BYTES / 4 * 3;
/// Writes are refused with less room than this left in the log: a request of any accepted size still fits.
const LOG_ROOM_MIN_BYTES: u64 = 2 * REQUEST_BYTES_MAX as u64 + 4096;

#[derive(Default)]
struct Connection {
    input: Vec<u8>,
    /// Replies in request order, each with the log position it waits for.
    replies: VecDeque<(u64, Vec<u8>)>,
    /// Bytes released and not yet taken by the socket.
    out: Vec<u8>,
    /// Close once everything is out (QUIT or a protocol error).
    closing: bool,
    /// Bytes arrived (or room for replies opened) since the input was last parsed: a partial request is not
    /// scanned again on every pass of the loop.
    unparsed: bool,
}

fn now() -> Instant {
    Instant::from_micros((ftvm_guest::clock_ns() / 1000) as i64)
}

pub fn run() -> u32 {
    let mut disk = Disk::new();
    let mut store = Store::default();
    let (mut log, records) = match Log::load(&mut disk, &mut store) {
        Ok(loaded) => loaded,
        Err(error) => {
            println!("redis: cannot read the append log: {error:?}");
            return 1;
        }
    };
    println!("redis: {} keys from {} log records ({} bytes)", store.len(), records, log.end());

    let mut net = Net::new();
    let mut config = Config::new(EthernetAddress(crate::MAC).into());
    config.random_seed = ftvm_guest::entropy_u64();
    let mut interface = Interface::new(config, &mut net, now());
    let [a, b, c, d] = crate::IPV4;
    interface.update_ip_addrs(|addresses| {
        let _ = addresses.push(IpCidr::new(IpAddress::v4(a, b, c, d), crate::PREFIX_LENGTH));
    });
    let mut sockets = SocketSet::new(Vec::new());
    let handles: Vec<SocketHandle> = (0..CONNECTIONS)
        .map(|_| {
            let rx = tcp::SocketBuffer::new(vec![0u8; SOCKET_RX_BYTES]);
            let tx = tcp::SocketBuffer::new(vec![0u8; SOCKET_TX_BYTES]);
            let mut socket = tcp::Socket::new(rx, tx);
            socket.set_nagle_enabled(false);
            socket.set_timeout(Some(smoltcp::time::Duration::from_secs(IDLE_TIMEOUT_S)));
            socket.set_keep_alive(Some(smoltcp::time::Duration::from_secs(KEEP_ALIVE_S)));
            sockets.add(socket)
        })
        .collect();
    let mut connections: Vec<Connection> = (0..CONNECTIONS).map(|_| Connection::default()).collect();
    ftvm_guest::set_timer_period_us(TIMER_PERIOD_US);
    println!("redis: listening on {a}.{b}.{c}.{d}:{}", crate::PORT);

    let mut pending = u32::MAX;
    loop {
        let mut progress = false;
        if pending & IRQ_DISK != 0 {
            while let Some(completion) = disk.poll() {
                progress |= log.complete(completion.tag, completion.status);
            }
        }
        let time = now();
        interface.poll(time, &mut net, &mut sockets);
        for (handle, connection) in handles.iter().zip(connections.iter_mut()) {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            progress |= serve(socket, connection, &mut store, &mut log);
        }
        log.pump(&mut disk);
        if progress {
            interface.poll(time, &mut net, &mut sockets);
        }
        pending = ftvm_guest::take_pending();
        if pending == 0 && !progress && !net.has_frame() {
            ftvm_guest::wait_for_interrupt();
            pending = ftvm_guest::take_pending();
        }
    }
}

/// Reads, executes and answers what one socket has; returns whether anything happened.
fn serve(socket: &mut tcp::Socket<'_>, connection: &mut Connection, store: &mut Store, log: &mut Log) -> bool {
    if socket.state() == tcp::State::Closed {
        *connection = Connection::default();
        // Cannot fail: the port is not 0 and the socket is closed.
        let _ = socket.listen(crate::PORT);
        return false;
    }
    let mut progress = false;
    let reply_bytes = connection.out.len() + connection.replies.iter().map(|(_, reply)| reply.len()).sum::<usize>();
    let room = connection.replies.len() < REPLIES_MAX && reply_bytes < REPLY_BYTES_MAX;
    if socket.can_recv() && !connection.closing && room {
        let received = socket.recv(|data| {
            let take = data.len().min(REQUEST_BYTES_MAX + 64 - connection.input.len().min(REQUEST_BYTES_MAX));
            connection.input.extend_from_slice(&data[..take]);
            (take, take)
        });
        if matches!(received, Ok(taken) if taken > 0) {
            progress = true;
            connection.unparsed = true;
        }
    }
    if connection.unparsed && room {
        progress |= execute(connection, store, log);
    }
    // Release, in order, the replies whose log records are on the disk.
    let durable = log.durable();
    while connection.replies.front().is_some_and(|(wait_for, _)| *wait_for <= durable) {
        if let Some((_, reply)) = connection.replies.pop_front() {
            connection.out.extend_from_slice(&reply);
        }
    }
    if !connection.out.is_empty() && socket.can_send() {
        if let Ok(sent) = socket.send_slice(&connection.out) {
            connection.out.drain(..sent);
            progress |= sent > 0;
        }
    }
    let drained = connection.out.is_empty() && connection.replies.is_empty();
    // The peer closed its side (or asked to quit): close ours once every reply is out.
    if drained && (connection.closing || (!socket.may_recv() && socket.state() == tcp::State::CloseWait)) {
        socket.close();
    }
    progress
}

fn execute(connection: &mut Connection, store: &mut Store, log: &mut Log) -> bool {
    let mut consumed = 0;
    let mut progress = false;
    // Parsed until the input holds no whole request; stopped early (no room for replies), the rest waits for room.
    connection.unparsed = false;
    while !connection.closing {
        if connection.replies.len() >= REPLIES_MAX {
            connection.unparsed = true;
            break;
        }
        match resp::parse(&connection.input[consumed..]) {
            Parse::Incomplete => break,
            Parse::Error(message) => {
                let mut reply = Vec::new();
                resp::error(&mut reply, message);
                connection.replies.push_back((log.end(), reply));
                connection.closing = true;
            }
            Parse::Command(arguments, used) => {
                consumed += used;
                progress = true;
                // A record the log's reader could not take back in one chunk is never written.
                let record_bytes = arguments.iter().map(Vec::len).sum::<usize>() + record::RECORD_OVERHEAD_BYTES;
                let refusal = if record_bytes > record::RECORD_BYTES_MAX {
                    Refusal::TooLarge
                } else if log.free_bytes() < LOG_ROOM_MIN_BYTES {
                    Refusal::DiskFull
                } else if ftvm_guest::heap::used_bytes() > MEMORY_USED_MAX_BYTES {
                    Refusal::MemoryFull
                } else {
                    Refusal::None
                };
                let outcome = commands::execute(store, &arguments, refusal);
                for change in &outcome.changes {
                    // Room was checked above, so this appends.
                    let _ = log.append(change);
                }
                // Every reply waits for everything logged before it: a read never shows a change that a crash of
                // both hosts could still lose, and replies stay in request order.
                connection.replies.push_back((log.end(), outcome.reply));
                connection.closing |= outcome.close;
            }
        }
    }
    connection.input.drain(..consumed);
    if connection.input.capacity() > 4 * SOCKET_RX_BYTES && connection.input.len() < SOCKET_RX_BYTES {
        connection.input.shrink_to(SOCKET_RX_BYTES);
    }
    progress
}
