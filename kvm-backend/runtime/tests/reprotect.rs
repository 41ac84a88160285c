//! Re-protection as an operator runs it: after a failover, `ftvm backup --join` on the failed node's place clones
//! the live primary's running VM and becomes its backup, with no restart of the guest and no lost request; a
//! second failover then finds a backup again. A joiner the pair cannot take (the pair protected already, another
//! key) is refused with a clear error. The nodes run the model guest, so these tests need no KVM.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::localhost::{free_tcp, free_udp, Pair, GUARD};
use ft::kv::{Op, Request, Response, Status};

/// Puts `value` at `key` as client 7's request `request`, sending again every 50 ms, and returns the answer.
fn put(socket: &UdpSocket, pair: &Pair, request: u64, key: u64, value: u64) -> Response {
    let put = Request { op: Op::Put, client: 7, request, key, value };
    ask(socket, pair, put)
}

fn get(socket: &UdpSocket, pair: &Pair, request: u64, key: u64) -> Response {
    ask(socket, pair, Request { op: Op::Get, client: 7, request, key, value: 0 })
}

fn ask(socket: &UdpSocket, pair: &Pair, request: Request) -> Response {
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let start = Instant::now();
    let mut buffer = [0u8; 256];
    while start.elapsed() < GUARD {
        socket.send_to(&request.encode(), pair.service).unwrap();
        if let Ok((length, _)) = socket.recv_from(&mut buffer) {
            if let Ok(response) = Response::decode(&buffer[..length]) {
                if response.request == request.request {
                    return response;
                }
            }
        }
    }
    panic!("no answer to {request:?}\n{}", pair.logs());
}

fn role(pair: &Pair, node: &str) -> String {
    pair.status(node).and_then(|s| s["role"].as_str().map(String::from)).unwrap_or_default()
}

/// a fails; b goes live; a2 joins b by cloning and b is protected again ("protected by a2"); then b fails and a2,
/// the clone, goes live with every acknowledged put.
#[test]
fn a_joiner_clones_the_live_primary_and_survives_the_next_failure() {
    let mut pair = Pair::new("rejoin");
    pair.start("b");
    pair.start("a");
    pair.wait_protected();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(put(&client, &pair, 1, 3, 33).status, Status::Ok);
    pair.kill("a");
    pair.wait("b goes live", |pair| role(pair, "b") == "live, not protected");
    assert_eq!(put(&client, &pair, 2, 4, 44).status, Status::Ok, "b serves alone");
    let b = pair.status("b").unwrap();
    assert_eq!(b["protected_by"], serde_json::Value::Null, "{b}");

    pair.start_joiner("a2");
    pair.wait("b is protected by a2 again", |pair| {
        pair.status("b").is_some_and(|b| b["protected_by"] == "a2" && b["role"] == "primary")
    });
    let b = pair.status("b").unwrap();
    assert_eq!(b["reprotections"], 1, "{b}");
    let clone = &b["clones"][0];
    assert_eq!(clone["backup"], "a2", "{b}");
    assert!(clone["passes"].as_u64().unwrap() >= 1 && clone["bytes"].as_u64().unwrap() > 0, "{b}");
    let a2 = pair.status("a2").unwrap();
    assert_eq!(a2["role"], "backup", "{a2}");
    let text = pair.log("b");
    assert!(text.contains("joiner a2"), "b names its joiner\n{}", pair.logs());
    assert!(pair.log("a2").contains("names this node the backup of epoch"), "a2 checked the arbiter\n{}", pair.logs());
    let record = std::fs::read_to_string(pair.storage.join("arbiter")).unwrap();
    assert!(record.contains("backup=a2/"), "the arbiter records a2 as the backup: {record}");

    // The protected pair serves on, and its outputs now wait for a2's acks.
    assert_eq!(put(&client, &pair, 3, 5, 55).status, Status::Ok);
    pair.wait("a2 acknowledges b's log", |pair| {
        pair.status("b").is_some_and(|b| b["log_entries_acked"].as_u64().unwrap_or(0) > 0)
    });

    // The second failure: the clone goes live with everything acknowledged.
    pair.kill("b");
    pair.wait("a2 goes live", |pair| role(pair, "a2") == "live, not protected");
    for (request, key, value) in [(4, 3, 33), (5, 4, 44), (6, 5, 55)] {
        let answer = get(&client, &pair, request, key);
        assert_eq!((answer.status, answer.value), (Status::Ok, value), "key {key} after two failures\n{}", pair.logs());
    }
}

/// A joiner with the wrong key, and a joiner while the pair is protected, are refused; the pair runs on.
#[test]
fn joiners_the_pair_cannot_take_are_refused_with_the_reason() {
    let mut pair = Pair::new("refuse");
    pair.start("b");
    pair.start("a");
    pair.wait_protected();
    // a is protected: a joiner that asks it is turned away, and gives up once its startup timeout passes.
    // Its own addresses: b still holds its slot's.
    pair.extra_b = format!(
        "startup_timeout_ms = 600\nheartbeat_listen = \"{}\"\njoin_listen = \"{}\"\nstatus = \"{}\"\n",
        free_udp(),
        free_tcp(),
        free_tcp()
    );
    pair.start_joiner("b2");
    let status = pair.exit_status("b2");
    assert!(!status.success(), "{status:?}");
    let log = pair.log("b2");
    assert!(log.contains("no live primary without a backup took b2"), "{log}");
    assert!(pair.log("a").contains("refused a joiner"), "a says why\n{}", pair.logs());
    assert_eq!(role(&pair, "a"), "primary", "a stays protected");

    // Once a is alone, a joiner without the pair's key is refused by the handshake, and a stays unprotected.
    pair.kill("b");
    pair.wait("a goes on alone", |pair| role(pair, "a") == "live, not protected");
    pair.extra_b.push_str(&format!("key_hex = \"{}\"\n", "ab".repeat(32)));
    pair.start_joiner("b3");
    assert!(!pair.exit_status("b3").success());
    let log = pair.log("b3");
    assert!(log.contains("did not take this node") && log.contains("bad"), "{log}");
    assert!(pair.log("a").contains("refused a joiner"), "{}", pair.logs());
    assert_eq!(role(&pair, "a"), "live, not protected");
}

/// A primary that lists a spare calls it as soon as it runs unprotected: the spare (`ftvm backup --join` without
/// `join_peers`, waiting on its `channel_listen`) takes the clone, and survives the primary's failure.
#[test]
fn a_primary_re_protects_onto_a_listed_spare() {
    let mut pair = Pair::new("spare");
    // The spare takes the failed backup's place (its addresses are free once it is gone).
    pair.extra_a = format!("spares = [\"{}\"]\n", pair.channel);
    pair.start("b");
    pair.start("a");
    pair.wait_protected();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(put(&client, &pair, 1, 8, 88).status, Status::Ok);
    pair.kill("b");
    pair.wait("a goes on alone", |pair| role(pair, "a") == "live, not protected");
    pair.without.push("join_peers");
    pair.start_joiner("c");
    pair.wait("a is protected by the spare", |pair| pair.status("a").is_some_and(|a| a["protected_by"] == "c"));
    assert!(pair.log("a").contains("answered: cloning onto it"), "{}", pair.logs());
    assert!(pair.log("c").contains("spare of pair 42"), "{}", pair.logs());
    assert_eq!(put(&client, &pair, 2, 9, 99).status, Status::Ok);
    pair.kill("a");
    pair.wait("the spare goes live", |pair| role(pair, "c") == "live, not protected");
    for (request, key, value) in [(3, 8, 88), (4, 9, 99)] {
        let answer = get(&client, &pair, request, key);
        assert_eq!((answer.status, answer.value), (Status::Ok, value), "key {key}\n{}", pair.logs());
    }
}
