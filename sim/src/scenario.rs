//! One seed, one scenario: build the world, run the safety phase with the planned faults, heal, run the liveness
//! phase, then check. Everything random comes from the seed.

use std::time::{Duration, UNIX_EPOCH};

use ft::Config;

use crate::check::{self, Expectations};
use crate::client::{self, clients_main};
use crate::faults::{Cut, Fault, Plan};
use crate::node_host::{model_guests, node_main, GuestFactory};
use crate::storage_host::{self, STORAGE_HOST};
use crate::world::{Counts, NodeId, SharedWorld, World};

/// The outcome of one scenario.
pub struct Report {
    pub seed: u64,
    pub plan: Plan,
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub counts: Counts,
    pub trace_hash: u64,
}

impl Report {
    pub fn reproduce(&self) -> String {
        format!("cargo run --release --bin ftsim -- run --seed {}", self.seed)
    }
}

pub fn config_for(plan: &Plan) -> Config {
    Config {
        pair_id: 7,
        image_digest: xxhash_rust::xxh3::xxh3_64(plan.workload.to_string().as_bytes()),
        heartbeat_interval_ms: plan.heartbeat_interval_ms,
        failure_timeout_ms: plan.failure_timeout_ms,
        startup_timeout_ms: 1_000,
        log_entries_unacked_max: plan.log_entries_unacked_max,
        slice_instructions: plan.slice_instructions,
        ..Config::default()
    }
}

pub fn run(seed: u64) -> Report {
    let plan = Plan::generate(seed);
    let guests = model_guests(plan.workload);
    run_plan(seed, plan, guests)
}

/// Runs a given plan with the given guests (tests pin plans and bring KVM guests this way).
pub fn run_plan(seed: u64, plan: Plan, guests: GuestFactory) -> Report {
    let world = World::new();
    for line in plan.describe().lines() {
        world.borrow_mut().trace.push(line.to_string());
    }
    let result = simulate(seed, &plan, &world, &guests);
    let mut world = world.borrow_mut();
    world.now_ns = plan.end_ms * 1_000_000;
    if let Err(error) = result {
        world.violation("simulation", format!("turmoil failed: {error}"));
    }
    let expectations = Expectations {
        heal_ns: plan.heal_ms * 1_000_000,
        end_ns: plan.end_ms * 1_000_000,
        crashed: plan.crashed(),
        kv_workload: plan.workload == crate::model::Workload::Kv,
    };
    check::at_end(&mut world, &expectations);
    let counts = world.counts.clone();
    world.trace.push(format!("counts: {counts:?}"));
    let trace_hash = xxhash_rust::xxh3::xxh3_64(world.trace.join("\n").as_bytes());
    Report { seed, plan, trace: world.trace.clone(), violations: world.violations.clone(), counts, trace_hash }
}

fn simulate(seed: u64, plan: &Plan, world: &SharedWorld, guests: &GuestFactory) -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(Duration::from_millis(plan.end_ms + 1_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(0))
        .max_message_latency(Duration::from_millis(plan.latency_max_ms))
        .build();
    let storage_world = world.clone();
    sim.host(STORAGE_HOST, move || storage_host::serve(storage_world.clone()));
    let config = config_for(plan);
    for node in NodeId::ALL {
        let (world, config, guests) = (world.clone(), config.clone(), guests.clone());
        sim.host(node.host(), move || node_main(node, world.clone(), config.clone(), guests.clone(), seed));
    }
    let clients_stop_ns = plan.end_ms * 1_000_000;
    if plan.clients > 0 {
        let (world, count) = (world.clone(), plan.clients);
        sim.host(client::CLIENTS_HOST, move || clients_main(count, world.clone(), seed, clients_stop_ns));
    }
    let mut pending = plan.faults.clone();
    pending.reverse();
    let mut repairs: Vec<(u64, Fault)> = Vec::new();
    let mut healed = false;
    while sim.elapsed() < Duration::from_millis(plan.end_ms) {
        let now_ms = sim.elapsed().as_millis() as u64;
        world.borrow_mut().now_ns = now_ms * 1_000_000;
        while pending.last().is_some_and(|(at_ms, _)| *at_ms <= now_ms) {
            let (_, fault) = pending.pop().expect("checked above");
            inject(&mut sim, world, plan, &fault);
            if let Some(duration_ms) = duration_of(&fault) {
                repairs.push((now_ms + duration_ms, fault));
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = repairs.into_iter().partition(|(at_ms, _)| *at_ms <= now_ms);
        repairs = later;
        for (_, fault) in due {
            heal(&mut sim, world, plan, &fault);
        }
        if !healed && now_ms >= plan.heal_ms {
            healed = true;
            for (_, fault) in std::mem::take(&mut repairs) {
                heal(&mut sim, world, plan, &fault);
            }
            world.borrow_mut().log("NEMESIS", "heal everything: liveness phase");
        }
        sim.step()?;
    }
    Ok(())
}

fn duration_of(fault: &Fault) -> Option<u64> {
    match fault {
        Fault::Partition { duration_ms, .. }
        | Fault::Clog { duration_ms }
        | Fault::Loss { duration_ms, .. }
        | Fault::SlowStorage { duration_ms, .. } => Some(*duration_ms),
        Fault::Crash(_) | Fault::Bounce(_) => None,
    }
}

fn pairs(plan: &Plan, cut: Cut) -> Vec<(String, String)> {
    let clients: Vec<String> = if plan.clients > 0 { vec![client::CLIENTS_HOST.to_string()] } else { Vec::new() };
    let to_clients = |node: NodeId| clients.iter().map(|c| (node.host().to_string(), c.clone())).collect::<Vec<_>>();
    match cut {
        Cut::Channel | Cut::OneWay(..) => vec![(NodeId::A.host().into(), NodeId::B.host().into())],
        Cut::Storage(node) => vec![(node.host().into(), STORAGE_HOST.into())],
        Cut::Clients(node) => to_clients(node),
        Cut::Isolate(node) => {
            let mut all = to_clients(node);
            all.push((node.host().into(), STORAGE_HOST.into()));
            all.push((node.host().into(), node.other().host().into()));
            all
        }
    }
}

fn inject(sim: &mut turmoil::Sim, world: &SharedWorld, plan: &Plan, fault: &Fault) {
    world.borrow_mut().log("NEMESIS", format!("{fault:?}"));
    match fault {
        Fault::Crash(node) => {
            sim.crash(node.host());
            world.borrow_mut().crashed[node.index()] = true;
        }
        Fault::Bounce(node) => {
            sim.bounce(node.host());
            world.borrow_mut().crashed[node.index()] = true;
        }
        Fault::Partition { cut: Cut::OneWay(from, to), .. } => sim.partition_oneway(from.host(), to.host()),
        Fault::Partition { cut, .. } => {
            for (a, b) in pairs(plan, *cut) {
                sim.partition(a.as_str(), b.as_str());
            }
        }
        Fault::Clog { .. } => sim.hold(NodeId::A.host(), NodeId::B.host()),
        Fault::Loss { rate_percent, .. } => {
            sim.set_link_fail_rate(NodeId::A.host(), NodeId::B.host(), f64::from(*rate_percent) / 100.0)
        }
        Fault::SlowStorage { delay_ms, .. } => world.borrow_mut().storage_delay_ms = *delay_ms,
    }
}

fn heal(sim: &mut turmoil::Sim, world: &SharedWorld, plan: &Plan, fault: &Fault) {
    world.borrow_mut().log("NEMESIS", format!("heal {fault:?}"));
    match fault {
        Fault::Partition { cut: Cut::OneWay(from, to), .. } => sim.repair_oneway(from.host(), to.host()),
        Fault::Partition { cut, .. } => {
            for (a, b) in pairs(plan, *cut) {
                sim.repair(a.as_str(), b.as_str());
            }
        }
        Fault::Clog { .. } => sim.release(NodeId::A.host(), NodeId::B.host()),
        Fault::Loss { .. } => sim.set_link_fail_rate(NodeId::A.host(), NodeId::B.host(), 0.0),
        Fault::SlowStorage { .. } => world.borrow_mut().storage_delay_ms = 0,
        Fault::Crash(_) | Fault::Bounce(_) => {}
    }
}
