//! `ftvm primary` and `ftvm backup` as an operator runs them: the logging channel's handshake and its failures,
//! the service address at go-live, and the checks of every setting and file at startup. The nodes run the model
//! guest (`machine = "model"`, the kv workload of corpus/model over the same sockets, channel, storage and
//! arbiter), so these tests need no KVM. Every test kills its processes and removes its files on every path
//! (guards), and waits for events and messages, never for a speed: the waits are only guards against a hang.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft::kv::{Op, Request, Response, Status};

use common::localhost::{Pair, FTVM, GUARD};

/// A proxy of the logging channel, between the primary and the backup. It can drop what the backup sends (the
/// acks: the primary then holds every output), and when the primary's side ends it resets the backup's side
/// (SO_LINGER 0), as the kernel does when a process dies with unread data on its socket.
struct ChannelProxy {
    front: SocketAddr,
    drop_acks: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads `linger`, a valid struct of the size passed, on a socket this test owns.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "SO_LINGER");
}

impl ChannelProxy {
    fn start(backup: SocketAddr) -> ChannelProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let front = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let drop_acks = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (dropping, stopping) = (drop_acks.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((primary, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                primary.set_nonblocking(false).unwrap();
                let Ok(backup) = TcpStream::connect(backup) else { continue };
                let (dropping, stopping) = (dropping.clone(), stopping.clone());
                std::thread::spawn(move || Self::relay(primary, backup, &dropping, &stopping));
            }
        });
        ChannelProxy { front, drop_acks, stop }
    }

    fn relay(primary: TcpStream, backup: TcpStream, drop_acks: &AtomicBool, stop: &AtomicBool) {
        let done = AtomicBool::new(false);
        let (mut from_backup, mut to_primary) = (backup.try_clone().unwrap(), primary.try_clone().unwrap());
        let (mut from_primary, mut to_backup) = (primary, backup);
        from_backup.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        from_primary.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let pump = |from: &mut TcpStream, to: &mut TcpStream, drop: &dyn Fn() -> bool, until: &dyn Fn() -> bool| {
            let mut buffer = vec![0u8; 65536];
            while !until() {
                match from.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) if !drop() => {
                        if to.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        };
        std::thread::scope(|scope| {
            scope.spawn(|| {
                pump(&mut from_backup, &mut to_primary, &|| drop_acks.load(Ordering::Relaxed), &|| {
                    done.load(Ordering::Relaxed)
                })
            });
            pump(&mut from_primary, &mut to_backup, &|| false, &|| stop.load(Ordering::Relaxed));
            // The primary's side ended: the backup's side is reset when its last descriptor closes.
            reset_on_close(&to_backup);
            done.store(true, Ordering::Relaxed);
        });
        drop((from_backup, to_primary, from_primary, to_backup));
    }
}

impl Drop for ChannelProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends `request` from `socket` (again every 50 ms if `resend`), and waits (under the guard) for the answer to its
/// id.
fn answer_to(socket: &UdpSocket, service: SocketAddr, request: Request, resend: bool) -> Option<Response> {
    answers_to(socket, service, request, resend, false)
}

/// As `answer_to`; with `every_copy`, it also waits for an answer to every copy it sent, so that no duplicate is
/// still on its way through the guest when it returns (a late duplicate put is a disk write the Output Rule holds).
fn answers_to(
    socket: &UdpSocket,
    service: SocketAddr,
    request: Request,
    resend: bool,
    every_copy: bool,
) -> Option<Response> {
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    socket.send_to(&request.encode(), service).unwrap();
    let mut copies_sent = 1;
    let mut answers = Vec::new();
    let start = Instant::now();
    let mut buffer = [0u8; 256];
    while start.elapsed() < GUARD {
        match socket.recv_from(&mut buffer) {
            Ok((length, _)) => {
                if let Ok(response) = Response::decode(&buffer[..length]) {
                    if response.request == request.request {
                        answers.push(response);
                        if !every_copy || answers.len() >= copies_sent {
                            return answers.into_iter().next();
                        }
                    }
                }
            }
            Err(_) if resend && answers.is_empty() => {
                socket.send_to(&request.encode(), service).unwrap();
                copies_sent += 1;
            }
            Err(_) => {}
        }
    }
    None
}

/// The answer the new primary re-sends at go-live (an output whose entry the backup had, which the primary never
/// released) reaches the client, even when the service port is still held at that moment, as by a hung old
/// primary on the same host (before: the re-sent outputs were released while no service socket was bound, and
/// dropped; the client, which sent its request once, never got an answer).
#[test]
fn outputs_re_sent_at_go_live_reach_the_client() {
    let mut pair = Pair::new("resend");
    let proxy = ChannelProxy::start(pair.channel);
    pair.channel_front = proxy.front;
    // The primary must not give up on its ack-less backup before it is frozen; the backup detects the frozen
    // primary by its silence.
    pair.extra_a = "failure_timeout_ms = 10000\n".into();
    pair.extra_b = "failure_timeout_ms = 300\n".into();
    pair.start("b");
    pair.start("a");
    pair.wait_protected();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let put = Request { op: Op::Put, client: 7, request: 1, key: 3, value: 33 };
    // Every copy of the put must be answered before the acks stop: a late copy would be a held disk write, and the
    // get behind it would never be answered before the primary hangs.
    let answer = answers_to(&client, pair.service, put, true, true)
        .expect("the protected primary answers every copy of the put");
    assert_eq!(answer.status, Status::Ok);
    // From now on the backup's acks go nowhere: the primary holds the answer to the next request.
    proxy.drop_acks.store(true, Ordering::Relaxed);
    let get = Request { op: Op::Get, client: 7, request: 2, key: 3, value: 0 };
    client.send_to(&get.encode(), pair.service).unwrap();
    pair.wait("the primary holds the answer and the backup has its log entry", |pair| {
        let (Some(a), Some(b)) = (pair.status("a"), pair.status("b")) else { return false };
        a["outputs_held"].as_u64().unwrap_or(0) >= 1 && b["log_entries_received"] == a["log_entries_sent"]
    });
    // A hung primary: silent, and still holding the service port.
    pair.signal("a", libc::SIGSTOP);
    pair.wait("b goes live and releases what it re-sends", |pair| {
        pair.status("b")
            .is_some_and(|b| b["role"] == "live, not protected" && b["outputs_released"].as_u64() >= Some(1))
    });
    let log = pair.log("b");
    // "b: LIVE in epoch 2: replayed N entries, reissued D disk requests and O outputs"
    let reissued = log
        .lines()
        .find(|line| line.contains("LIVE in epoch"))
        .and_then(|line| line.split(" disk requests and ").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(reissued.is_some_and(|n| n >= 1), "b re-sends the held answer: {reissued:?}\n{}", pair.logs());
    assert_eq!(
        pair.status("b").map(|b| b["service_bound"].clone()),
        Some(serde_json::Value::Bool(false)),
        "the port is held"
    );
    // The hung primary dies (on one host its port is free only then).
    pair.kill("a");
    // The client does not ask again: the only answer it can get is the one re-sent at go-live.
    let answer = answer_to(&client, pair.service, get, false)
        .unwrap_or_else(|| panic!("the answer re-sent at go-live never reached the client\n{}", pair.logs()));
    assert_eq!((answer.status, answer.key, answer.value), (Status::Ok, 3, 33), "{answer:?}");
    drop(proxy);
}

/// A primary killed while its channel is reset by the kernel: the backup declares it failed because the logging
/// channel failed, at once, not after the failure timeout of silence (before: the reset was logged, but the
/// channel stayed half open, and the backup waited for the heartbeats' silence).
#[test]
fn a_reset_channel_fails_the_peer_as_a_lost_channel() {
    let mut pair = Pair::new("reset");
    let proxy = ChannelProxy::start(pair.channel);
    pair.channel_front = proxy.front;
    pair.start("b");
    pair.start("a");
    pair.wait_protected();
    pair.kill("a");
    pair.wait("b declares a failed", |pair| pair.log("b").contains("declaring the peer failed"));
    let log = pair.log("b");
    let failed = log.lines().find(|line| line.contains("declaring the peer failed")).expect("the line of it");
    assert!(
        failed.contains("the logging channel failed"),
        "the channel's failure is the cause: {failed}\n{}",
        pair.logs()
    );
    assert!(!failed.contains("no word from it"), "not silence: {failed}");
    drop(proxy);
}

/// Six idle connections to the backup's channel address before the primary starts do not keep the pair from
/// coming up protected (before: the backup took one handshake at a time with a 2 s timeout each, and the real
/// primary waited in the backlog until its startup timeout passed, then ran unprotected).
#[test]
fn idle_connections_do_not_keep_the_pair_from_coming_up_protected() {
    let mut pair = Pair::new("idle");
    pair.start("b");
    let channel = pair.channel;
    pair.wait("the backup listens", |pair| pair.log("b").contains("waiting for the primary"));
    let idle: Vec<TcpStream> = (0..6).map(|_| TcpStream::connect(channel).expect("connects")).collect();
    pair.start("a");
    pair.wait_protected();
    assert!(pair.log("b").contains("authenticated"), "{}", pair.logs());
    drop(idle);
}

/// Two nodes of a pair with the same name: both refuse the pair, with an error that names the setting, and exit
/// non-zero (before: they paired, and both could win the arbiter, whose idempotence is keyed on the name).
#[test]
fn nodes_with_the_same_name_refuse_to_pair() {
    let mut pair = Pair::new("same-name");
    pair.extra_a = "name = \"twin\"\n".into();
    pair.extra_b = "name = \"twin\"\n".into();
    pair.start("b");
    pair.start("a");
    let (a, b) = (pair.exit_status("a"), pair.exit_status("b"));
    let logs = pair.logs();
    assert!(!a.success() && !b.success(), "both exit non-zero: {a:?} {b:?}\n{logs}");
    for node in ["a", "b"] {
        let log = pair.log(node);
        assert!(log.contains("ftvm: ") && log.contains("\"twin\"") && log.contains("`name`"), "{node}: {logs}");
    }
}

/// With `write_journal = true` the shared storage keeps, next to the disk, a journal of every write that landed
/// (epoch, first sector, sectors) and of every grant of the arbiter (epoch, owner), in the order the locks gave
/// them: the epoch-1 writes of the primary, one grant of epoch 2 to the backup after its kill, then only writes of
/// epoch 2 (before: no such journal, and the key was refused as unknown).
#[test]
fn the_write_journal_shows_every_landed_write_and_grant() {
    let mut pair = Pair::new("journal");
    pair.extra_a = "write_journal = true\n".into();
    pair.extra_b = "write_journal = true\n".into();
    pair.start("b");
    pair.start("a");
    pair.wait_protected();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for id in 1..=4u64 {
        let put = Request { op: Op::Put, client: 7, request: id, key: id, value: 100 + id };
        let answer = answer_to(&client, pair.service, put, true).expect("the protected primary answers");
        assert_eq!(answer.status, Status::Ok);
    }
    pair.kill("a");
    pair.wait("b goes live", |pair| pair.status("b").is_some_and(|b| b["role"] == "live, not protected"));
    for id in 5..=6u64 {
        let put = Request { op: Op::Put, client: 7, request: id, key: id, value: 100 + id };
        let answer = answer_to(&client, pair.service, put, true).expect("the new primary answers");
        assert_eq!(answer.status, Status::Ok);
    }
    let path = pair.storage.join("disk.img.journal");
    let journal = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("no write journal at {}: {error}\n{}", path.display(), pair.logs()));
    let mut grants = Vec::new();
    let mut writes = [0u64; 3];
    let mut sectors_of_epoch_1 = Vec::new();
    for line in journal.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let value = |name: &str| {
            fields
                .iter()
                .find_map(|field| field.strip_prefix(&format!("{name}=")[..]))
                .unwrap_or_else(|| panic!("journal line {line:?} has no {name}"))
        };
        let epoch: u64 = value("epoch").parse().expect("an epoch");
        match fields[0] {
            "write" => {
                assert!(grants.iter().all(|(granted, _)| *granted <= epoch), "a deposed write landed: {journal}");
                writes[epoch.min(2) as usize] += 1;
                if epoch == 1 {
                    sectors_of_epoch_1.push(value("sector").parse::<u64>().expect("a sector"));
                }
                assert_eq!(value("sectors"), "1", "kv writes one sector: {line}");
            }
            "grant" => grants.push((epoch, value("owner").to_string())),
            other => panic!("unknown journal line {other:?}: {journal}"),
        }
    }
    assert_eq!(grants.len(), 1, "one grant: {journal}");
    assert_eq!(grants[0].0, 2, "{journal}");
    assert!(grants[0].1.starts_with("b/"), "to b: {journal}");
    for key in 1..=4u64 {
        assert!(sectors_of_epoch_1.contains(&(1 + key)), "the acknowledged put of key {key} landed: {journal}");
    }
    assert!(writes[2] >= 2, "the new primary's writes are journaled: {journal}");
}

/// Prepares a fault of a [`Case`]; what it returns is held while the node runs.
type Setup = Box<dyn Fn(&Pair) -> Box<dyn std::any::Any> + Send>;

/// One startup check: a node whose config or files are wrong must say what (naming the key or the path) and
/// exit non-zero, and must not have touched shared storage when the fault is its own config or files.
struct Case {
    what: &'static str,
    node: &'static str,
    extra: String,
    without: Vec<&'static str>,
    /// Prepares the fault (a file, a busy port); what it returns is held while the node runs.
    setup: Setup,
    /// What stderr must contain (besides "ftvm: ").
    wanted: Vec<String>,
    /// The node must not create or change the disk image and the arbiter.
    storage_untouched: bool,
}

fn case(what: &'static str, node: &'static str, extra: &str, wanted: &[&str]) -> Case {
    Case {
        what,
        node,
        extra: extra.into(),
        without: Vec::new(),
        setup: Box::new(|_| Box::new(())),
        wanted: wanted.iter().map(|w| w.to_string()).collect(),
        storage_untouched: true,
    }
}

/// `text` with the placeholders STORAGE, HB_A, CHANNEL, STATUS_B and SERVICE replaced by `pair`'s.
fn fill(text: &str, pair: &Pair) -> String {
    text.replace("STORAGE", &pair.storage.display().to_string())
        .replace("HB_A", &pair.hb_a.to_string())
        .replace("CHANNEL", &pair.channel.to_string())
        .replace("STATUS_B", &pair.status_b.to_string())
        .replace("SERVICE", &pair.service.to_string())
}

/// Runs one case; the failure, if any.
fn check(case: Case) -> Result<(), String> {
    let mut pair = Pair::new("check");
    let extra = fill(&case.extra, &pair);
    if case.node == "a" {
        pair.extra_a = extra;
    } else {
        pair.extra_b = extra;
    }
    pair.without = case.without.clone();
    let held = (case.setup)(&pair);
    let files = |pair: &Pair| ["disk.img", "arbiter"].map(|name| std::fs::read(pair.storage.join(name)).ok());
    let before = files(&pair);
    let role = if case.node == "a" { "primary" } else { "backup" };
    let wanted: Vec<String> = case.wanted.iter().map(|w| fill(w, &pair)).collect();
    let mut command = Command::new(FTVM);
    command
        .args([role, "--config"])
        .arg(pair.config_path(case.node))
        .env_remove("FTVM_KVM_PATH")
        .env("FTVM_LOG", "warn");
    let output = common::output_within(&mut command, GUARD).map_err(|hang| format!("{}: {hang}", case.what))?;
    drop(held);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut problems = Vec::new();
    if output.status.success() || output.status.code().is_none() {
        problems.push(format!("exit status {:?}", output.status));
    }
    if stderr.contains("panicked") {
        problems.push("panicked".into());
    }
    if !stderr.contains("ftvm: ") {
        problems.push("no error line".into());
    }
    for word in &wanted {
        if !stderr.contains(word.as_str()) {
            problems.push(format!("{word:?} missing"));
        }
    }
    if case.storage_untouched && files(&pair) != before {
        problems.push("shared storage was created or changed".into());
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!("{}: {}\n    stderr: {}", case.what, problems.join(", "), stderr.trim())),
    }
}

/// Every setting and every file is checked at startup, before any network or storage activity, with an error
/// that names the key or the path and a non-zero exit (before: `failure_timeout_ms = 0` panicked,
/// `heartbeat_interval_ms = 0` spun a core, `disk_sectors = 0` and `storage_timeout_ms = 0` hung, a disk in a
/// missing directory and an empty or garbage arbiter record were retried forever as "storage unreachable", and a
/// busy service port was waited for in silence).
#[test]
fn bad_settings_and_files_are_refused_at_startup_by_name() {
    let mut cases = vec![
        case("failure_timeout_ms = 0", "a", "failure_timeout_ms = 0\n", &["`failure_timeout_ms`"]),
        case("heartbeat_interval_ms = 0", "a", "heartbeat_interval_ms = 0\n", &["`heartbeat_interval_ms`"]),
        case(
            "a failure timeout within a heartbeat period",
            "b",
            "failure_timeout_ms = 20\n",
            &["`failure_timeout_ms`"],
        ),
        case("startup_timeout_ms of years", "a", "startup_timeout_ms = 100000000000\n", &["`startup_timeout_ms`"]),
        case("arbiter_retry_ms = 0", "b", "arbiter_retry_ms = 0\n", &["`arbiter_retry_ms`"]),
        case("slice_exits_max = 0", "a", "slice_exits_max = 0\n", &["`slice_exits_max`"]),
        case("lag_target_ms = 0", "b", "lag_target_ms = 0\n", &["`lag_target_ms`"]),
        case("throttle_period_ms of years", "a", "throttle_period_ms = 100000000000\n", &["`throttle_period_ms`"]),
        case("disk_sectors = 0", "a", "disk_sectors = 0\n", &["`disk_sectors`"]),
        case("storage_timeout_ms = 0", "b", "storage_timeout_ms = 0\n", &["`storage_timeout_ms`"]),
        case("an empty name", "a", "name = \"\"\n", &["`name`"]),
        case("a name with a space", "b", "name = \"b 2\"\n", &["`name`"]),
        case("the name of nobody", "a", "name = \"-\"\n", &["`name`"]),
        case("an unknown machine", "a", "machine = \"qemu\"\n", &["`machine`", "qemu"]),
        case("an unknown guest", "b", "guest = \"nope\"\n", &["nope"]),
        case("a short key", "a", "key_hex = \"00112233\"\n", &["key"]),
        case("heartbeats to itself", "a", "heartbeat_peer = \"HB_A\"\n", &["`heartbeat_peer`"]),
        case("a service on port 0", "b", "service = \"127.0.0.1:0\"\n", &["`service`"]),
        case(
            "a disk in a missing directory",
            "a",
            "disk = \"/nonexistent/ftvm/disk.img\"\n",
            &["/nonexistent/ftvm", "disk"],
        ),
        case(
            "an arbiter in a missing directory",
            "b",
            "arbiter = \"/nonexistent/ftvm/arbiter\"\n",
            &["/nonexistent/ftvm", "arbiter"],
        ),
    ];
    let mut missing =
        case("a key file that is missing", "a", "key_file = \"/nonexistent/ftvm.key\"\n", &["/nonexistent/ftvm.key"]);
    missing.without = vec!["key_hex"];
    cases.push(missing);
    let mut missing = case("a missing heartbeat_peer", "a", "", &["`heartbeat_peer`"]);
    missing.without = vec!["heartbeat_peer"];
    cases.push(missing);
    let mut missing = case("a missing channel_listen", "b", "", &["`channel_listen`"]);
    missing.without = vec!["channel_listen"];
    cases.push(missing);
    for (what, contents) in [("an empty arbiter record", ""), ("a garbage arbiter record", "hello\nworld\n")] {
        let mut garbage = case(what, "a", "", &["STORAGE/arbiter", "not an arbiter record"]);
        garbage.setup = Box::new(move |pair| {
            std::fs::write(pair.storage.join("arbiter"), contents).unwrap();
            Box::new(())
        });
        cases.push(garbage);
    }
    let mut wrong_size =
        case("a disk of the wrong size", "b", "disk_sectors = 128\n", &["STORAGE/disk.img", "1000 bytes"]);
    wrong_size.setup = Box::new(|pair| {
        std::fs::write(pair.storage.join("disk.img"), vec![0u8; 1000]).unwrap();
        Box::new(())
    });
    cases.push(wrong_size);
    let mut busy = case("a busy heartbeat port", "a", "", &["heartbeat", "HB_A"]);
    busy.setup = Box::new(|pair| Box::new(UdpSocket::bind(pair.hb_a).unwrap()));
    cases.push(busy);
    let mut busy = case("a busy channel port", "b", "", &["logging channel", "CHANNEL"]);
    busy.setup = Box::new(|pair| Box::new(TcpListener::bind(pair.channel).unwrap()));
    cases.push(busy);
    let mut busy = case("a busy status port", "b", "", &["status", "STATUS_B"]);
    busy.setup = Box::new(|pair| Box::new(TcpListener::bind(pair.status_b).unwrap()));
    cases.push(busy);
    // The primary's service address: it may be held for a moment by an old primary on this host, so the
    // primary waits for it, says what it waits for, and gives up after its startup timeout.
    let mut busy = case(
        "a busy service port",
        "a",
        "startup_timeout_ms = 1000\n",
        &["waiting for the service address", "SERVICE"],
    );
    busy.setup = Box::new(|pair| Box::new(UdpSocket::bind(pair.service).unwrap()));
    busy.storage_untouched = false;
    cases.push(busy);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let running: Vec<_> = cases.into_iter().map(|case| scope.spawn(move || check(case))).collect();
        running.into_iter().filter_map(|case| case.join().expect("no panic").err()).collect()
    });
    assert!(failures.is_empty(), "{} startup checks failed:\n{}", failures.len(), failures.join("\n"));
}
