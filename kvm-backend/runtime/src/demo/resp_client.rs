//! The redis demo's own client: SETs of keys nobody else writes, pipelined on a few TCP connections, so that
//! afterwards every acknowledged SET can be read back. It never reconnects: a connection that fails is counted
//! (a reset separately) and stops. It also times the longest silence between two replies on a connection, the
//! failover time as a client sees it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection waits for its outstanding replies once told to stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct WriterReport {
    /// (key, value) of every SET answered `+OK`.
    pub acknowledged: Vec<(String, String)>,
    /// SETs sent and never answered (the connection failed or the drain gave up).
    pub unanswered: u64,
    pub errors: Vec<String>,
    pub connections_reset: u64,
    /// The longest time between two replies on one connection, ms.
    pub longest_gap_ms: f64,
}

fn set_command(key: &str, value: &str) -> Vec<u8> {
    format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len()).into_bytes()
}

/// Runs one connection until `stop`, keeping up to `pipeline` SETs in flight and resting `pause` after each batch;
/// keys are `demo:<connection>:<n>`.
pub fn write_until(
    server: SocketAddr,
    connection: u32,
    pipeline: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut stream = match TcpStream::connect_timeout(&server, CONNECT_TIMEOUT) {
        Ok(stream) => stream,
        Err(error) => {
            report.errors.push(format!("connection {connection}: connect: {error}"));
            return report;
        }
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut in_flight: std::collections::VecDeque<(String, String)> = std::collections::VecDeque::new();
    let mut input: Vec<u8> = Vec::new();
    let mut buffer = [0u8; 4096];
    let mut next = 0u64;
    let mut last_reply = Instant::now();
    let mut stopping_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            stopping_since.get_or_insert_with(Instant::now);
        }
        if stopping_since.is_some_and(|since| in_flight.is_empty() || since.elapsed() > DRAIN_DEADLINE) {
            break;
        }
        if stopping_since.is_none() {
            let mut batch = Vec::new();
            while in_flight.len() < pipeline {
                let key = format!("demo:{connection}:{next}");
                let value = format!("{seed:x}-{connection}-{next}");
                next += 1;
                batch.extend_from_slice(&set_command(&key, &value));
                in_flight.push_back((key, value));
            }
            if !batch.is_empty() {
                if let Err(error) = stream.write_all(&batch) {
                    report.fail(connection, &error);
                    break;
                }
                std::thread::sleep(pause);
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) => {
                report.errors.push(format!("connection {connection}: closed by the server"));
                break;
            }
            Ok(length) => input.extend_from_slice(&buffer[..length]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(error) => {
                report.fail(connection, &error);
                break;
            }
        }
        while let Some(end) = input.windows(2).position(|pair| pair == b"\r\n") {
            let line: Vec<u8> = input.drain(..end + 2).collect();
            let now = Instant::now();
            report.longest_gap_ms = report.longest_gap_ms.max((now - last_reply).as_secs_f64() * 1e3);
            last_reply = now;
            let Some(sent) = in_flight.pop_front() else {
                report.errors.push(format!("connection {connection}: a reply to no request"));
                continue;
            };
            if line.as_slice() == b"+OK\r\n" {
                report.acknowledged.push(sent);
            } else {
                report.errors.push(format!(
                    "connection {connection}: SET {} answered {:?}",
                    sent.0,
                    String::from_utf8_lossy(&line).trim_end()
                ));
            }
        }
    }
    report.unanswered += in_flight.len() as u64;
    report
}

impl WriterReport {
    fn fail(&mut self, connection: u32, error: &std::io::Error) {
        if matches!(error.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe) {
            self.connections_reset += 1;
        }
        self.errors.push(format!("connection {connection}: {error}"));
    }

    pub fn merge(&mut self, other: WriterReport) {
        self.acknowledged.extend(other.acknowledged);
        self.unanswered += other.unanswered;
        self.errors.extend(other.errors);
        self.connections_reset += other.connections_reset;
        self.longest_gap_ms = self.longest_gap_ms.max(other.longest_gap_ms);
    }
}
