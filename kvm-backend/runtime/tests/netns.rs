//! Two hosts: the primary and the backup in two network namespaces joined by veth pairs and a bridge (in a fourth
//! namespace, the "switch"), the client in a third (`ft_host::netlab`, the lab `ftvm demo --guest redis` uses). The service IP lives on the primary's interface; the primary
//! dies (its processes are killed and its link goes down, as a host that crashed), the backup goes live, moves the
//! service IP to its own interface and announces it with a gratuitous ARP (`arping -U`, from iputils-arping); the
//! client keeps working at the same service IP and no acknowledged put is lost.
//!
//! Needs root, `ip netns` and KVM: skipped with a printed reason otherwise (FT_REQUIRE_NETNS=1 and FT_REQUIRE_KVM=1
//! turn the skips into failures). Without arping the client's neighbour cache is flushed instead (printed).
//! Namespaces, processes and files are removed on every path.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ft::kv::{Op, Request, Response, Status};

use ft_host::netlab::{Host, Lab};
use ft_host::pair::Scratch;

const FTVM: &str = env!("CARGO_BIN_EXE_ftvm");
/// The service IP that moves with the live primary (the lab's hosts are .11, .12 and the client .100).
const SERVICE: &str = "10.77.0.50:7000";
const CLIENT: &str = "10.77.0.100:0";

fn required(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|value| value == "1")
}

fn skip(variable: &str, reason: &str) -> bool {
    if required(variable) {
        panic!("{variable}=1 but {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

/// Child processes, killed on drop; the scratch directory too.
struct Nodes {
    scratch: Scratch,
}

impl Nodes {
    fn start(&mut self, lab: &Lab, host: char, role: &str) {
        let mut command = lab.command(if host == 'A' { Host::A } else { Host::B }, FTVM);
        command.env_remove("FTVM_KVM_PATH");
        let config = self.scratch.dir.join(format!("{host}.toml"));
        self.scratch.spawn_with(&host.to_string(), role, &config, command, None).expect("ip netns exec ftvm starts");
    }

    fn kill(&mut self, host: char) {
        self.scratch.kill(&host.to_string());
    }

    fn log(&self, host: char) -> String {
        std::fs::read_to_string(self.scratch.dir.join(format!("{host}.log"))).unwrap_or_default()
    }
}

fn config(dir: &Path, host: char, storage: &Path, arping: bool) {
    let (a, b) = (Host::A.address(), Host::B.address());
    let (name, me, peer) = if host == 'A' { ("a", a, b) } else { ("b", b, a) };
    let (my_hb, peer_hb) = if host == 'A' { (7101, 7201) } else { (7201, 7101) };
    let channel =
        if host == 'A' { format!("channel_peer = \"{peer}:7102\"") } else { format!("channel_listen = \"{me}:7102\"") };
    let garp = if arping { "(arping -U -c 3 -I br0 10.77.0.50 >/dev/null 2>&1 &)" } else { "true" };
    let text = format!(
        "name = \"{name}\"\nguest = \"kv\"\npair_id = 77\n{channel}\nheartbeat_listen = \"{me}:{my_hb}\"\n\
         heartbeat_peer = \"{peer}:{peer_hb}\"\nservice = \"{SERVICE}\"\nstatus = \"{me}:7110\"\n\
         disk = \"{}\"\narbiter = \"{}\"\nkey_hex = \"{}\"\nheartbeat_interval_ms = 20\nfailure_timeout_ms = 150\n\
         startup_timeout_ms = 5000\nstorage_timeout_ms = 500\n\
         go_live_command = \"ip addr replace 10.77.0.50/24 dev br0 && {garp}\"\n",
        storage.join("disk.img").display(),
        storage.join("arbiter").display(),
        "ab".repeat(32),
    );
    std::fs::write(dir.join(format!("{host}.toml")), text).unwrap();
}

/// What the client saw: acknowledged puts per key, answers by request id, and when the answers came.
#[derive(Default)]
struct History {
    acked: HashMap<u64, u64>,
    maybe: HashMap<u64, Vec<u64>>,
    /// (sent, answered) of every answered put.
    answered_at: Vec<(Instant, Instant)>,
    divergent: u64,
}

/// Puts for `duration`, one at a time, each attempt with its own id.
fn client_load(duration: Duration, first_id: u64) -> History {
    let socket = UdpSocket::bind(CLIENT).expect("client socket in the client namespace");
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let service: SocketAddr = SERVICE.parse().unwrap();
    let mut history = History::default();
    let mut answers: HashMap<u64, Vec<u8>> = HashMap::new();
    let start = Instant::now();
    let mut id = first_id;
    while start.elapsed() < duration {
        id += 1;
        let key = id % 16;
        let request = Request { op: Op::Put, client: 3, request: id, key, value: id };
        let sent = Instant::now();
        let _ = socket.send_to(&request.encode(), service);
        let deadline = Instant::now() + Duration::from_millis(40);
        let mut answered = false;
        let mut buffer = [0u8; 256];
        while Instant::now() < deadline {
            let Ok((length, _)) = socket.recv_from(&mut buffer) else { continue };
            let Ok(response) = Response::decode(&buffer[..length]) else { continue };
            let bytes = buffer[..length].to_vec();
            if let Some(first) = answers.get(&response.request) {
                history.divergent += u64::from(*first != bytes);
                continue;
            }
            answers.insert(response.request, bytes);
            if response.request == id && response.status == Status::Ok {
                history.acked.insert(key, id);
                history.maybe.remove(&key);
                history.answered_at.push((sent, Instant::now()));
                answered = true;
                break;
            }
        }
        if !answered {
            history.maybe.entry(key).or_default().push(id);
        }
    }
    history
}

fn read_key(socket: &UdpSocket, key: u64, id: u64) -> Option<u64> {
    let service: SocketAddr = SERVICE.parse().unwrap();
    let mut buffer = [0u8; 256];
    for attempt in 0..50 {
        let request = Request { op: Op::Get, client: 4, request: id * 100 + attempt, key, value: 0 };
        let _ = socket.send_to(&request.encode(), service);
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            let Ok((length, _)) = socket.recv_from(&mut buffer) else { continue };
            if let Ok(response) = Response::decode(&buffer[..length]) {
                if response.request == request.request {
                    return Some(response.value);
                }
            }
        }
    }
    None
}

#[test]
fn two_hosts_in_namespaces_the_service_ip_moves_to_the_backup() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("FT_REQUIRE_NETNS", "not root: network namespaces need root");
        return;
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        skip("FT_REQUIRE_KVM", "/dev/kvm unusable");
        return;
    }
    let network = match Lab::build("n") {
        Ok(network) => network,
        Err(error) => {
            skip("FT_REQUIRE_NETNS", &format!("cannot build the namespaces: {error}"));
            return;
        }
    };
    // FT_NO_ARPING=1 exercises the fallback where arping is missing.
    let arping = Command::new("arping").arg("-V").output().is_ok() && std::env::var_os("FT_NO_ARPING").is_none();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("netns-{}", std::process::id()));
    let mut nodes = Nodes { scratch: Scratch::at(dir.clone()).expect("a scratch directory") };
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).unwrap();
    config(&dir, 'A', &storage, arping);
    config(&dir, 'B', &storage, arping);
    nodes.start(&network, 'B', "backup");
    nodes.start(&network, 'A', "primary");
    let start = Instant::now();
    while !nodes.log('A').contains("the logging channel is up") {
        assert!(start.elapsed() < Duration::from_secs(10), "pair not up:\n{}\n{}", nodes.log('A'), nodes.log('B'));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Load before and through the failover, from the client namespace.
    let load = network.spawn_in(Host::Client, || client_load(Duration::from_secs(4), 0)).expect("the client namespace");
    std::thread::sleep(Duration::from_millis(1000));
    // Host A dies: its processes are killed and its link goes down.
    let killed_at = Instant::now();
    nodes.kill('A');
    network.cut(Host::A).unwrap();
    if !arping {
        eprintln!("NOTE: arping (iputils-arping) not installed: flushing the client's neighbour cache instead");
        while !nodes.log('B').contains("LIVE in epoch") && killed_at.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let flushed = network.command(Host::Client, "ip").args(["neigh", "flush", "all"]).status();
        assert!(flushed.is_ok_and(|status| status.success()), "ip neigh flush in the client namespace");
    }
    let history = load.join().unwrap().expect("the client thread entered its namespace");
    let b_log = nodes.log('B');
    assert!(b_log.contains("LIVE in epoch"), "the backup went live:\n{b_log}");
    assert!(b_log.contains(&format!("service address {SERVICE} bound")), "the backup took the service IP:\n{b_log}");
    let after: Vec<Instant> =
        history.answered_at.iter().filter(|(sent, _)| *sent > killed_at).map(|(_, answered)| *answered).collect();
    let before = history.answered_at.iter().filter(|(_, answered)| *answered < killed_at).count();
    assert!(before > 0, "answers before the kill");
    let first_after = after.first().expect("the client was answered after the failover, at the same service IP");
    eprintln!(
        "two hosts: {before} answers before the kill, {} after; first answer {:.1} ms after the kill (arping: {arping})",
        after.len(),
        first_after.duration_since(killed_at).as_secs_f64() * 1e3
    );
    assert_eq!(history.divergent, 0);
    // Nothing acknowledged is lost.
    let acked = history.acked.clone();
    let maybe = history.maybe.clone();
    let lost = network
        .in_namespace(Host::Client, move || {
            let socket = UdpSocket::bind(CLIENT).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut lost = Vec::new();
            for (key, value) in &acked {
                let read = read_key(&socket, *key, 1_000_000 + key);
                let allowed =
                    read == Some(*value) || read.is_some_and(|v| maybe.get(key).is_some_and(|m| m.contains(&v)));
                if !allowed {
                    lost.push((*key, *value, read));
                }
            }
            lost
        })
        .expect("the client namespace");
    assert!(lost.is_empty(), "acknowledged puts lost (key, acked, read): {lost:?}\n{b_log}");
    drop(nodes);
    drop(network);
}
