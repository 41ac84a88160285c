//! A real pair: `ftvm primary` and `ftvm backup` as processes on localhost, the `kv` guest on KVM, a UDP client.
//! Kill the backup, refuse a wrong key, cut the network, take the shared storage away, and run the demo without
//! KVM (the hundred kill and host-loss trials of `ftvm demo` are in failover.rs). Every test kills its processes
//! and removes its files on every path (guards), and skips with a printed reason where /dev/kvm is unusable (fails
//! instead with FT_REQUIRE_KVM=1).

mod common;

use common::kvm_usable;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft::kv::{Op, Request, Response, Status};
use ft_host::pair::Scratch;

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");

/// Below the ephemeral range, so no `connect` takes the port before its node binds it.
fn free_tcp() -> SocketAddr {
    ft_host::pair::free_tcp().expect("a free local port")
}

fn free_udp() -> SocketAddr {
    ft_host::pair::free_udp().expect("a free local port")
}

/// A pair's files and processes; everything is killed and removed on drop (unless FTVM_KEEP_SCRATCH is set), by
/// the runtime's own `Scratch`.
struct Pair {
    scratch: Scratch,
    dir: PathBuf,
    storage: PathBuf,
    service: SocketAddr,
    status_a: SocketAddr,
    status_b: SocketAddr,
    metrics_a: SocketAddr,
}

impl Pair {
    /// Configs for a localhost pair; `key_b` overrides the backup's key (for the wrong-key test).
    fn new(tag: &str, key_b: Option<&str>) -> Pair {
        Pair::with_network(tag, key_b, None)
    }

    /// `proxy`: the channel and heartbeats go through a [`Proxy`] the test can cut.
    fn with_network(tag: &str, key_b: Option<&str>, proxy: Option<&Proxy>) -> Pair {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pair-{tag}-{}", std::process::id()));
        let scratch = Scratch::at(dir.clone()).expect("a scratch directory");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let key = "6b6579206f66207468652070616972206f662074686973207465737420212121";
        let (channel, hb_a, hb_b, service) = match proxy {
            Some(proxy) => (proxy.channel, proxy.hb_a, proxy.hb_b, free_udp()),
            None => (free_tcp(), free_udp(), free_udp(), free_udp()),
        };
        // Where each side sends: straight to the peer, or to the proxy's front.
        let (a_channel_peer, a_hb_peer, b_hb_peer) = match proxy {
            Some(proxy) => (proxy.channel_front, proxy.hb_b_front, proxy.hb_a_front),
            None => (channel, hb_b, hb_a),
        };
        let (status_a, status_b, metrics_a) = (free_tcp(), free_tcp(), free_tcp());
        let common = format!(
            "guest = \"kv\"\npair_id = 42\nservice = \"{service}\"\ndisk = \"{}\"\ndisk_sectors = 128\n\
             arbiter = \"{}\"\nheartbeat_interval_ms = 20\nfailure_timeout_ms = 150\nstartup_timeout_ms = 3000\n\
             arbiter_retry_ms = 50\nstorage_timeout_ms = 300\n",
            storage.join("disk.img").display(),
            storage.join("arbiter").display()
        );
        std::fs::write(
            dir.join("a.toml"),
            format!(
                "name = \"a\"\n{common}key_hex = \"{key}\"\nchannel_peer = \"{a_channel_peer}\"\nheartbeat_listen = \"{hb_a}\"\n\
                 heartbeat_peer = \"{a_hb_peer}\"\nstatus = \"{status_a}\"\nmetrics = \"{metrics_a}\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("b.toml"),
            format!(
                "name = \"b\"\n{common}key_hex = \"{}\"\nchannel_listen = \"{channel}\"\nheartbeat_listen = \"{hb_b}\"\n\
                 heartbeat_peer = \"{b_hb_peer}\"\nstatus = \"{status_b}\"\n",
                key_b.unwrap_or(key)
            ),
        )
        .unwrap();
        Pair { scratch, dir, storage, service, status_a, status_b, metrics_a }
    }

    fn start(&mut self, name: &'static str) {
        let role = if name == "a" { "primary" } else { "backup" };
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(FTVM)
            .args([role, "--config"])
            .arg(self.dir.join(format!("{name}.toml")))
            .env("FTVM_LOG", "info")
            .env_remove("FTVM_KVM_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ftvm starts");
        self.scratch.adopt(name, child);
    }

    fn kill(&mut self, name: &str) {
        self.scratch.kill(name);
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn status(&self, name: &str) -> Option<serde_json::Value> {
        let addr = if name == "a" { self.status_a } else { self.status_b };
        ft_host::pair::status_json(Some(addr))
    }

    fn role(&self, name: &str) -> String {
        self.status(name).and_then(|s| s["role"].as_str().map(String::from)).unwrap_or_default()
    }

    fn arbiter(&self) -> String {
        std::fs::read_to_string(self.storage.join("arbiter")).unwrap_or_default()
    }

    /// Waits for `condition`, printing both logs if it never holds.
    fn wait(&self, what: &str, deadline: Duration, mut condition: impl FnMut(&Pair) -> bool) {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if condition(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for: {what}\n--- a.log\n{}\n--- b.log\n{}", self.log("a"), self.log("b"));
    }

    fn start_protected(&mut self) {
        self.start("b");
        self.start("a");
        self.wait("the pair is up", Duration::from_secs(10), |pair| {
            pair.status("a").is_some_and(|s| s["channel_up"] == true && s["service_bound"] == true)
        });
    }
}

fn ftvm_status(addr: SocketAddr) -> String {
    let output = Command::new(FTVM).args(["status", "--addr", &addr.to_string()]).output().expect("ftvm status runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A proxy for the logging channel (TCP, primary to backup) and the heartbeats (UDP, both ways) that the test can
/// cut: while cut, it silently drops everything, as a partition does.
struct Proxy {
    channel: SocketAddr,
    hb_a: SocketAddr,
    hb_b: SocketAddr,
    channel_front: SocketAddr,
    hb_a_front: SocketAddr,
    hb_b_front: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start() -> Proxy {
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (channel, hb_a, hb_b) = (free_tcp(), free_udp(), free_udp());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let channel_front = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (c, s) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((from_a, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(to_b) = std::net::TcpStream::connect(channel) else { continue };
                from_a.set_nonblocking(false).unwrap();
                for (mut source, mut sink) in [(from_a.try_clone().unwrap(), to_b.try_clone().unwrap()), (to_b, from_a)]
                {
                    let (c, s) = (c.clone(), s.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        source.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        let mut buffer = vec![0u8; 65536];
                        while !s.load(Ordering::Relaxed) {
                            match source.read(&mut buffer) {
                                Ok(0) => break,
                                Ok(n) if !c.load(Ordering::Relaxed) => {
                                    if sink.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                                Ok(_) => {} // cut: dropped
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = sink.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        let mut fronts = Vec::new();
        for target in [hb_a, hb_b] {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            fronts.push(socket.local_addr().unwrap());
            socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let (c, s) = (cut.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 2048];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = socket.recv_from(&mut buffer) {
                        if !c.load(Ordering::Relaxed) {
                            let _ = socket.send_to(&buffer[..n], target);
                        }
                    }
                }
            });
        }
        Proxy { channel, hb_a, hb_b, channel_front, hb_a_front: fronts[0], hb_b_front: fronts[1], cut, stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Puts `value` under `key` with request id `id`; the answer, or None after `timeout`.
fn put(service: SocketAddr, id: u64, key: u64, value: u64, timeout: Duration) -> Option<Response> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
    let request = Request { op: Op::Put, client: 9, request: id, key, value };
    let start = Instant::now();
    let mut buffer = [0u8; 128];
    while start.elapsed() < timeout {
        socket.send_to(&request.encode(), service).unwrap();
        if let Ok((length, _)) = socket.recv_from(&mut buffer) {
            let response = Response::decode(&buffer[..length]).unwrap();
            if response.request == id {
                return Some(response);
            }
        }
    }
    None
}

#[test]
fn killed_backup_leaves_the_primary_live_and_unprotected() {
    if !kvm_usable() {
        return;
    }
    let mut pair = Pair::new("kill-backup", None);
    pair.start_protected();
    assert_eq!(pair.role("a"), "primary");
    assert_eq!(pair.role("b"), "backup");
    assert_eq!(put(pair.service, 1, 3, 33, Duration::from_secs(2)).map(|r| r.status), Some(Status::Ok));
    // `ftvm status` and the Prometheus endpoint.
    let status = ftvm_status(pair.status_a);
    for line in [
        "role: primary\n",
        "peer: ",
        "(logging channel up)",
        "execution lag: ",
        "cpu share: ",
        "log bandwidth: ",
        "outputs held: ",
    ] {
        assert!(status.contains(line), "{line:?} in:\n{status}");
    }
    assert!(ftvm_status(pair.status_b).contains("role: backup\n"));
    let metrics = http_get(pair.metrics_a, "/metrics");
    assert!(metrics.contains("ftvm_role_primary 1\n"), "{metrics}");
    assert!(metrics.contains("# TYPE ftvm_execution_lag_seconds gauge"), "{metrics}");
    pair.kill("b");
    pair.wait("a goes live without its backup", Duration::from_secs(5), |pair| {
        pair.status("a").is_some_and(|s| s["role"] == "live, not protected" && s["epoch"] == 2)
    });
    assert!(pair.arbiter().contains("epoch=2\nowner=a"), "arbiter: {}", pair.arbiter());
    let status = ftvm_status(pair.status_a);
    assert!(status.contains("role: live, not protected (NOT PROTECTED: no backup)"), "{status}");
    assert!(http_get(pair.metrics_a, "/").contains("ftvm_role_unprotected 1\n"));
    // A fresh primary of this pair would race the live one: it refuses to start.
    let second = Command::new(FTVM)
        .args(["primary", "--config"])
        .arg(pair.dir.join("a.toml"))
        .args(["--name", "a2"])
        .env_remove("FTVM_KVM_PATH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && stderr.contains("already failed over"), "{stderr}");
    let answer = put(pair.service, 2, 3, 34, Duration::from_secs(2)).expect("a still serves");
    assert_eq!((answer.status, answer.value), (Status::Ok, 34));
    assert!(answer.version >= 2, "the first put survived: {answer:?}");
}

#[test]
fn backup_refuses_a_primary_with_the_wrong_key() {
    if !kvm_usable() {
        return;
    }
    let mut pair = Pair::new("wrong-key", Some("00000000000000000000000000000000ffffffffffffffffffffffffffffffff"));
    pair.start("b");
    pair.start("a");
    pair.wait("the backup refuses the primary", Duration::from_secs(10), |pair| {
        pair.log("b").contains("refused logging channel")
    });
    let log = pair.log("b");
    assert!(log.contains("authentication failed"), "{log}");
    // Nothing from the refused channel was applied, and the primary runs alone.
    pair.wait("a runs without a backup", Duration::from_secs(10), |pair| pair.role("a") == "live, not protected");
    let b = pair.status("b");
    if let Some(b) = b {
        assert_eq!(b["log_entries_received"], 0, "{b}");
        assert_ne!(b["role"], "live, not protected");
    }
    assert!(put(pair.service, 1, 1, 11, Duration::from_secs(2)).is_some());
    // After its startup timeout the backup finds the arbiter moved on and halts: never live.
    pair.wait("b halts", Duration::from_secs(10), |pair| pair.log("b").contains("lost the go-live race"));
    assert!(pair.arbiter().contains("owner=a"), "{}", pair.arbiter());
}

#[test]
fn nobody_goes_live_while_storage_is_unreachable() {
    if !kvm_usable() {
        return;
    }
    let mut pair = Pair::new("storage", None);
    pair.start_protected();
    assert!(put(pair.service, 1, 5, 55, Duration::from_secs(2)).is_some());
    // Take the shared storage away (as an unmounted or unreachable NFS export), then kill the primary.
    let away = pair.dir.join("storage-away");
    std::fs::rename(&pair.storage, &away).unwrap();
    pair.kill("a");
    pair.wait("b tries the arbiter", Duration::from_secs(5), |pair| pair.log("b").contains("arbiter unreachable"));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(pair.role("b"), "backup", "b must not go live without the arbiter");
    assert!(put(pair.service, 2, 5, 56, Duration::from_millis(300)).is_none(), "nobody serves");
    // Storage returns: b wins the test-and-set and serves, with the acknowledged value.
    std::fs::rename(&away, &pair.storage).unwrap();
    pair.wait("b goes live", Duration::from_secs(5), |pair| pair.role("b") == "live, not protected");
    let answer = put(pair.service, 3, 5, 57, Duration::from_secs(2)).expect("b serves");
    assert_eq!((answer.status, answer.value), (Status::Ok, 57));
    assert!(answer.version >= 2, "the put before the kill survived: {answer:?}");
    assert!(pair.arbiter().contains("epoch=2\nowner=b"), "{}", pair.arbiter());
}

#[test]
fn cutting_channel_and_heartbeats_leaves_exactly_one_side_live() {
    if !kvm_usable() {
        return;
    }
    let proxy = Proxy::start();
    let mut pair = Pair::with_network("cut", None, Some(&proxy));
    pair.start_protected();
    assert!(put(pair.service, 1, 7, 70, Duration::from_secs(2)).is_some());
    proxy.cut.store(true, Ordering::Relaxed);
    // Both sides declare the other failed and race for the arbiter; the loser halts.
    pair.wait("one side wins the test-and-set", Duration::from_secs(10), |pair| pair.arbiter().contains("epoch=2"));
    let arbiter = pair.arbiter();
    let (winner, loser) = if arbiter.contains("owner=a") { ("a", "b") } else { ("b", "a") };
    pair.wait("the winner is live", Duration::from_secs(5), |pair| pair.role(winner) == "live, not protected");
    pair.wait("the loser halts", Duration::from_secs(10), |pair| pair.log(loser).contains("lost the go-live race"));
    assert!(!pair.log(loser).contains("LIVE in epoch"), "the loser never went live: {}", pair.log(loser));
    let answer = put(pair.service, 2, 7, 71, Duration::from_secs(3)).expect("the winner serves");
    assert_eq!((answer.status, answer.value), (Status::Ok, 71), "{winner} serves");
    // Attempts of one request id may be applied more than once (the helper resends until answered).
    assert!(answer.version >= 2, "{winner} won; the put before the cut survived: {answer:?}");
}

#[test]
fn demo_without_kvm_runs_the_model_guest_over_real_sockets() {
    let output = Command::new(FTVM)
        .args(["--kvm-path", "/nonexistent/kvm", "demo", "--json"])
        .env("FTVM_LOG", "warn")
        .output()
        .expect("ftvm runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(summary["guest"], "kvq (model guest, no KVM)", "{stdout}");
    assert_eq!(summary["requests_lost"], 0, "{stdout}");
    assert_eq!(summary["divergent_outputs"], 0, "{stdout}");
    assert_eq!(summary["inconsistent_reads"], 0, "{stdout}");
    assert_eq!(summary["split_brain"], false, "{stdout}");
    assert!(summary["requests_in_flight_at_kill"].as_u64().is_some_and(|n| n >= 2), "{stdout}");
    assert!(summary["journal_writes"].as_u64().is_some_and(|n| n > 0), "{stdout}");
    assert!(summary["requests_ok"].as_u64().is_some_and(|ok| ok > 20), "{stdout}");
    assert!(summary["failover_ms"].as_f64().is_some(), "the backup must take over: {stdout}");
}

#[test]
fn a_node_without_kvm_says_kvm_is_required() {
    let output = Command::new(FTVM)
        .args(["--kvm-path", "/nonexistent/kvm", "primary", "--guest", "kv"])
        .output()
        .expect("ftvm runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("KVM is required"), "{stderr}");
}
