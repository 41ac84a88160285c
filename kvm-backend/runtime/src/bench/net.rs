//! The network loads of `ftvm bench` (the paper's Table 2) over real UDP to the guest's service address: a
//! windowed stream into `netrx`, and a burst out of `nettx`. Throughput is what the far end saw: netrx's own
//! count of the bytes it took (in its acks), and the bytes of nettx's frames that reached the receiver.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::error::CliError;
use crate::stream::{netrx_data, nettx_request, NetRxAck, NetTxFrame, ACK_EVERY_FRAMES, PAYLOAD_BYTES, WINDOW_FRAMES};

/// With no ack for this long, the frames in flight are taken as lost and the window opens again (UDP may drop;
/// the host's frame queue may overflow).
const STALL_RESET: Duration = Duration::from_millis(100);
/// The receive buffer asked for, so that a burst from nettx is not dropped by the receiving socket.
const RECEIVE_BUFFER_BYTES: libc::c_int = 8 << 20;

/// What a stream achieved.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StreamResult {
    /// Payload bytes the far end got, over the time between the first and the last of them.
    pub bytes: u64,
    pub seconds: f64,
    /// Frames that went missing (counted by the sender for netrx, by the receiver for nettx).
    pub frames_lost: u64,
}

impl StreamResult {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e6 / self.seconds.max(1e-9)
    }
}

fn socket() -> Result<UdpSocket, CliError> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|error| CliError::io("benchmark client socket", &error))?;
    let size = RECEIVE_BUFFER_BYTES;
    // SAFETY: setsockopt on a socket we own, with a pointer to an int that lives across the call and its size.
    let _ = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(socket)
}

/// Streams frames into netrx at `service` for `duration`, keeping a window in flight.
pub fn receive_stream(service: SocketAddr, duration: Duration) -> Result<StreamResult, CliError> {
    let socket = socket()?;
    socket.set_read_timeout(Some(Duration::from_millis(1))).map_err(|error| CliError::io("socket", &error))?;
    let (mut sent, mut acked_sequence, mut lost) = (0u64, 0u64, 0u64);
    let mut first_ack: Option<(Instant, u64)> = None;
    let mut last_ack: Option<(Instant, u64)> = None;
    let mut last_progress = Instant::now();
    let start = Instant::now();
    let mut buffer = [0u8; 256];
    while start.elapsed() < duration {
        while sent.saturating_sub(acked_sequence) < WINDOW_FRAMES {
            sent += 1;
            let ask = sent.is_multiple_of(ACK_EVERY_FRAMES);
            // A full socket buffer drops the frame; the window accounts for it.
            let _ = socket.send_to(&netrx_data(sent, ask, PAYLOAD_BYTES), service);
        }
        match socket.recv_from(&mut buffer) {
            Ok((length, _)) => {
                let Some(ack) = NetRxAck::decode(&buffer[..length]) else { continue };
                // An ack of a frame not sent (a stray datagram to this port) or an old one changes nothing.
                if ack.sequence > acked_sequence && ack.sequence <= sent {
                    acked_sequence = ack.sequence;
                    last_progress = Instant::now();
                    first_ack.get_or_insert((last_progress, ack.bytes));
                    last_ack = Some((last_progress, ack.bytes));
                    lost = acked_sequence.saturating_sub(ack.frames);
                }
            }
            Err(_) if last_progress.elapsed() > STALL_RESET => {
                // Everything in flight is written off: the window opens from what was sent.
                acked_sequence = sent;
                last_progress = Instant::now();
            }
            Err(_) => {}
        }
    }
    let (Some((t0, b0)), Some((t1, b1))) = (first_ack, last_ack) else {
        return Err(CliError::Protocol(format!("netrx at {service} acknowledged nothing in {duration:?}")));
    };
    Ok(StreamResult { bytes: b1.saturating_sub(b0), seconds: t1.duration_since(t0).as_secs_f64(), frames_lost: lost })
}

/// Asks nettx at `service` for bursts of frames and receives them for about `duration`.
pub fn transmit_stream(service: SocketAddr, duration: Duration) -> Result<StreamResult, CliError> {
    let socket = socket()?;
    socket.set_read_timeout(Some(Duration::from_millis(200))).map_err(|error| CliError::io("socket", &error))?;
    // Bursts of about a tenth of a second each (nettx sends some 10^4 frames per second here), asked for one
    // after the other until the time is up, so FT and non-FT runs last about as long.
    const BURST_FRAMES: u32 = 1_000;
    let (mut bytes, mut lost, mut first, mut last) = (0u64, 0u64, None::<Instant>, None::<Instant>);
    let start = Instant::now();
    let mut buffer = vec![0u8; 4096];
    let mut burst = 0u32;
    while start.elapsed() < duration {
        burst += 1;
        socket
            .send_to(&nettx_request(BURST_FRAMES, PAYLOAD_BYTES as u32, burst), service)
            .map_err(|error| CliError::io("nettx request", &error))?;
        let mut received = 0u64;
        loop {
            let Ok((length, _)) = socket.recv_from(&mut buffer) else {
                // No end frame within the timeout: the request or the end was dropped; count what did not come.
                lost += u64::from(BURST_FRAMES).saturating_sub(received);
                break;
            };
            match NetTxFrame::decode(&buffer[..length]) {
                Some(NetTxFrame::Data { burst: of, bytes: size, .. }) if of == burst => {
                    let now = Instant::now();
                    // The first frame starts the clock; its bytes count for nothing before it.
                    if first.is_some() {
                        bytes += size as u64;
                    }
                    first.get_or_insert(now);
                    last = Some(now);
                    received += 1;
                }
                Some(NetTxFrame::End { burst: of, frames, .. }) if of == burst => {
                    lost += frames.saturating_sub(received);
                    break;
                }
                _ => {}
            }
        }
    }
    match (first, last) {
        (Some(first), Some(last)) if last > first => {
            Ok(StreamResult { bytes, seconds: last.duration_since(first).as_secs_f64(), frames_lost: lost })
        }
        _ => Err(CliError::Protocol(format!("nettx at {service} sent nothing in {duration:?}"))),
    }
}

/// The floor under the Output Rule's hold on this machine: the round trip of a small message over loopback TCP
/// between a thread on the primary's CPU and one on the backup's (both blocking in `read`, as the nodes do), p50
/// and p99 in µs over `count` round trips. `cpus` pins the two ends, if given.
pub fn tcp_round_trip_us(count: usize, cpus: Option<(usize, usize)>) -> Result<(f64, f64), CliError> {
    use std::io::{Read, Write};
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|error| CliError::io("round-trip listener", &error))?;
    let addr = listener.local_addr().map_err(|error| CliError::io("round-trip listener", &error))?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some((_, cpu)) = cpus {
            crate::pair::pin_to(cpu)?;
        }
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buffer = [0u8; 64];
        loop {
            let length = stream.read(&mut buffer)?;
            if length == 0 {
                return Ok(());
            }
            stream.write_all(&buffer[..length])?;
        }
    });
    // On a thread of its own, so that pinning it leaves the caller's threads where they are.
    let client = std::thread::spawn(move || -> std::io::Result<Vec<f64>> {
        if let Some((cpu, _)) = cpus {
            crate::pair::pin_to(cpu)?;
        }
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let (message, mut buffer) = ([7u8; 40], [0u8; 64]);
        let mut round_trips = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            stream.write_all(&message)?;
            let mut received = 0;
            while received < message.len() {
                match stream.read(&mut buffer)? {
                    0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    length => received += length,
                }
            }
            round_trips.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok(round_trips)
    });
    let measured = client.join().unwrap_or_else(|_| Err(std::io::Error::other("the client thread panicked")));
    if measured.is_err() {
        // The echo thread may still wait in `accept`: a connection that closes at once lets it finish.
        drop(std::net::TcpStream::connect(addr));
    }
    let _ = echo.join();
    let round_trips = measured.map_err(|error| CliError::io("round trip over loopback", &error))?;
    Ok((super::measure::percentile(&round_trips, 0.5), super::measure::percentile(&round_trips, 0.99)))
}
