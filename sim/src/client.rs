//! Simulated clients of the key-value service. Each client keeps `pipeline` requests in flight (one worker per
//! slot, each with its own socket and client id). The service address moves at failover: a worker sends each
//! attempt to the host that holds the address at that moment (`World::service_owner`, the simulator's stand-in
//! for the gratuitous ARP), and a backup drops client traffic, as its hypervisor drops the backup VM's network
//! I/O. Every operation goes into the history checked by `check::history`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ft::kv::{Op, Request, Response, Status};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use turmoil::net::UdpSocket;

use crate::node_host::{now_ns, SERVICE_PORT};
use crate::world::{ClientOp, NodeId, SharedWorld};

pub const CLIENT_PORT: u16 = 8000;
/// Attempts of one request before it is recorded as indeterminate.
const ATTEMPTS_MAX: u32 = 4;
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);
/// Keys the clients use: few, so that operations contend.
const KEYS_USED: u64 = 8;
/// Workers per client at most (ports are laid out by it).
const PIPELINE_MAX: u32 = 32;

/// All clients run as tasks of one host (each host costs simulator time on every tick).
pub const CLIENTS_HOST: &str = "clients";

/// The body of the clients host: `count` clients of `pipeline` workers each.
pub async fn clients_main(count: u32, pipeline: u32, world: SharedWorld, seed: u64, stop_ns: u64) -> turmoil::Result {
    assert!((1..=PIPELINE_MAX).contains(&pipeline));
    for client in 1..=count {
        for worker in 0..pipeline {
            let id = client * PIPELINE_MAX + worker;
            tokio::task::spawn_local(worker_main(id, world.clone(), seed, stop_ns));
        }
    }
    std::future::pending().await
}

async fn worker_main(client: u32, world: SharedWorld, seed: u64, stop_ns: u64) -> turmoil::Result {
    let socket = UdpSocket::bind(("0.0.0.0", CLIENT_PORT + client as u16)).await?;
    let servers: Vec<SocketAddr> =
        NodeId::ALL.iter().map(|node| SocketAddr::new(turmoil::lookup(node.host()), SERVICE_PORT)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0xc11e_0000 + u64::from(client)));
    let mut answers: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut counter = 0u64;
    while now_ns() < stop_ns {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..40))).await;
        counter += 1;
        let op = if rng.random_bool(0.5) { Op::Put } else { Op::Get };
        let value = if op == Op::Put { (u64::from(client) << 32) | counter } else { 0 };
        let request = Request { op, client, request: counter, key: rng.random_range(0..KEYS_USED), value };
        let index = {
            let mut world = world.borrow_mut();
            world.history.push(ClientOp {
                client,
                request: counter,
                op,
                key: request.key,
                value,
                invoked_ns: now_ns(),
                completed_ns: None,
                ok: false,
            });
            world.history.len() - 1
        };
        // Each attempt has its own request id: a retried put may be applied twice and answered twice with
        // different versions, and only answers to the same id must be identical (FT duplicates).
        'attempts: for attempt in 0..ATTEMPTS_MAX {
            let bytes = Request { request: (counter << 3) | u64::from(attempt), ..request }.encode();
            // Like a real client of a moving service address, send to whoever holds it now; a request in flight
            // at failover is lost with the old primary and retried (a new attempt id), never delivered twice.
            let owner = world.borrow().service_owner();
            for (node, server) in NodeId::ALL.iter().zip(&servers) {
                if owner.is_none_or(|owner| owner == *node) {
                    let _ = socket.try_send_to(&bytes, *server);
                }
            }
            let deadline_ns = now_ns() + ATTEMPT_TIMEOUT.as_nanos() as u64;
            loop {
                let mut buffer = [0u8; 256];
                let remaining = Duration::from_nanos(deadline_ns.saturating_sub(now_ns()));
                let received = tokio::time::timeout(remaining, socket.recv_from(&mut buffer)).await;
                let Ok(Ok((length, _))) = received else { break };
                let Ok(response) = Response::decode(&buffer[..length]) else { continue };
                if response.client != client {
                    continue;
                }
                // A duplicate answer (the new primary re-sent it) must be byte-identical to the first.
                match answers.get(&response.request) {
                    Some(first) if first[..] != buffer[..length] => world.borrow_mut().violation(
                        "S2 output consistency",
                        format!("client {client} got two different answers to request {}", response.request),
                    ),
                    Some(_) => {}
                    None => {
                        answers.insert(response.request, buffer[..length].to_vec());
                    }
                }
                if response.request >> 3 != counter {
                    continue;
                }
                let mut world = world.borrow_mut();
                if response.status == Status::Inconsistent {
                    world.violation(
                        "S2 disk consistency",
                        format!(
                            "client {client}: the guest read {:#x} for key {} where it had written something else",
                            response.value, response.key
                        ),
                    );
                }
                let now = now_ns();
                let record = &mut world.history[index];
                record.completed_ns = Some(now);
                record.ok = response.status == Status::Ok;
                if op == Op::Get {
                    record.value = response.value;
                }
                break 'attempts;
            }
        }
    }
    std::future::pending().await
}
