//! One seed, one scenario: build the world, run the safety phase with the planned faults, heal, run the liveness
//! phase, then check. Everything random comes from the seed (the plan, turmoil's network, the nemesis).

use std::time::{Duration, UNIX_EPOCH};

use ft::Config;

use crate::check::{self, Expectations};
use crate::client::{self, clients_main};
use crate::marks::Survey;
use crate::node_host::{model_guests, node_main, GuestFactory, NodeSetup};
use crate::plan::{Cut, Fault, Plan};
use crate::storage_host::{self, STORAGE_HOST};
use crate::world::{Counts, NodeId, SharedWorld, World};

/// The outcome of one scenario.
pub struct Report {
    pub seed: u64,
    pub plan: Plan,
    pub trace: Vec<String>,
    pub violations: Vec<String>,
    pub counts: Counts,
    /// Coverage marks hit, by name.
    pub marks: std::collections::BTreeMap<&'static str, usize>,
    pub trace_hash: u64,
    /// The backup's execution lag at every ack, as the wire showed it (sorted, ns).
    pub lag_samples_ns: Vec<u64>,
}

impl Report {
    /// The `permille`-th thousandth of the execution lag samples, in ms (0 without samples).
    pub fn lag_ms(&self, permille: usize) -> u64 {
        let samples = &self.lag_samples_ns;
        if samples.is_empty() {
            return 0;
        }
        samples[((samples.len() - 1) * permille / 1000).min(samples.len() - 1)] / 1_000_000
    }

    /// The one line that reproduces this scenario.
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
        arbiter_retry_ms: plan.arbiter_retry_ms,
        checkpoint_interval_exits: plan.checkpoint_interval_exits,
        log_entries_unacked_max: plan.log_entries_unacked_max,
        log_entries_buffered_max: plan.log_entries_buffered_max,
        net_frames_queued_max: plan.net_frames_queued_max,
        slice_instructions: plan.slice_instructions,
        slice_exits_max: plan.slice_exits_max,
        lag_target_ms: plan.lag_target_ms,
        clone_passes_max: plan.clone_passes_max,
        clone_dirty_pages_small: plan.clone_dirty_pages_small,
        clone_window_pages: plan.clone_window_pages,
        ..Config::default()
    }
}

pub fn run(seed: u64) -> Report {
    let plan = Plan::generate(seed);
    let guests = model_guests(plan.workload);
    run_plan(seed, plan, guests)
}

/// Runs a given plan with the given guests (regression plans are replayed as stored; tests bring KVM guests).
pub fn run_plan(seed: u64, plan: Plan, guests: GuestFactory) -> Report {
    let survey = Survey::start();
    let world = World::new(seed);
    for line in plan.describe().lines() {
        world.borrow_mut().trace.push(line.to_string());
    }
    world.borrow_mut().faults.crash_point = plan.crash_point;
    let result = simulate(seed, &plan, &world, &guests);
    let marks = survey.finish();
    let mut world = world.borrow_mut();
    world.now_ns = plan.end_ms * 1_000_000;
    if let Err(error) = result {
        world.violation("simulation", format!("turmoil failed: {error}"));
    }
    let expectations = Expectations {
        heal_ns: plan.heal_ms * 1_000_000,
        end_ns: plan.end_ms * 1_000_000,
        crashed: plan.crashed(),
        liveness: !plan.double_failure()
            && !check::accuracy::redundancy_spent_before_loss(&world, &plan)
            && check::liveness::guest_survived(&world),
        kv_workload: plan.clients > 0 || plan.tcp_clients > 0,
    };
    check::at_end(&mut world, &expectations);
    check::detection::check(&mut world, &plan);
    check::accuracy::check(&mut world, &plan);
    let counts = world.counts.clone();
    world.trace.push(format!("counts: {counts:?}"));
    let trace_hash = xxhash_rust::xxh3::xxh3_64(world.trace.join("\n").as_bytes());
    let mut lag_samples_ns = std::mem::take(&mut world.lag_samples_ns);
    lag_samples_ns.sort_unstable();
    Report {
        seed,
        plan,
        trace: world.trace.clone(),
        violations: world.violations.clone(),
        counts,
        marks,
        trace_hash,
        lag_samples_ns,
    }
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
    sim.host(STORAGE_HOST, move || {
        let world = storage_world.clone();
        async move {
            tokio::task::spawn_local(crate::node_host::replay_heartbeats(world.clone()));
            storage_host::serve(world).await
        }
    });
    let config = config_for(plan);
    for node in NodeId::ALL {
        let setup = NodeSetup {
            config: config.clone(),
            guests: guests.clone(),
            seed,
            slice_ns: plan.slice_cost_us[node.index()] * 1_000,
            storage_timeout: Duration::from_millis(plan.storage_timeout_ms),
            ethernet: plan.tcp_clients > 0,
        };
        let world = world.clone();
        sim.host(node.host(), move || node_main(node, world.clone(), setup.clone()));
    }
    let clients_stop_ns = plan.end_ms * 1_000_000;
    if plan.clients > 0 {
        let (world, count, pipeline) = (world.clone(), plan.clients, plan.pipeline);
        sim.host(client::CLIENTS_HOST, move || clients_main(count, pipeline, world.clone(), seed, clients_stop_ns));
    }
    if plan.tcp_clients > 0 {
        world.borrow_mut().disk_is_kv = false;
        let (world, count, pipeline) = (world.clone(), plan.tcp_clients, plan.pipeline.max(1));
        sim.host(crate::tcp_client::HOST, move || {
            crate::tcp_client::main(count, pipeline, world.clone(), seed, clients_stop_ns)
        });
    }
    let mut pending = plan.faults.clone();
    pending.reverse();
    let mut repairs: Vec<(u64, Fault)> = Vec::new();
    let mut healed = false;
    while sim.elapsed() < Duration::from_millis(plan.end_ms) {
        let now_ms = sim.elapsed().as_millis() as u64;
        world.borrow_mut().now_ns = now_ms * 1_000_000;
        // Nodes that died at their crash point during the last step go down now.
        let dying = std::mem::take(&mut world.borrow_mut().crash_requests);
        for node in dying {
            sim.crash(node.host());
        }
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
            world.borrow_mut().faults.crash_point = None;
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
        | Fault::SlowStorage { duration_ms, .. }
        | Fault::StorageRequests { duration_ms, .. }
        | Fault::Heartbeats { duration_ms, .. } => Some(*duration_ms),
        Fault::Crash(_) | Fault::Bounce(_) | Fault::Freeze(_) | Fault::CorruptChannel { .. } => None,
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
    let mut w = world.borrow_mut();
    if let Fault::Crash(node) | Fault::Bounce(node) | Fault::Freeze(node) = fault {
        let at_ns = w.now_ns;
        w.losses.push((at_ns, *node));
    }
    match fault {
        Fault::Crash(node) => {
            sim.crash(node.host());
            w.crashed[node.index()] = true;
        }
        Fault::Bounce(node) => {
            sim.bounce(node.host());
            w.crashed[node.index()] = true;
        }
        Fault::Freeze(node) => {
            w.dead[node.index()].set(true);
            w.crashed[node.index()] = true;
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
        Fault::SlowStorage { delay_ms, .. } => w.faults.storage_delay_ms = *delay_ms,
        Fault::StorageRequests { node, fault, .. } => w.faults.requests[node.index()] = Some(*fault),
        Fault::CorruptChannel { from } => w.faults.corrupt_channel[from.index()] = true,
        Fault::Heartbeats { node, fault, .. } => w.faults.heartbeats[node.index()] = Some(*fault),
    }
}

fn heal(sim: &mut turmoil::Sim, world: &SharedWorld, plan: &Plan, fault: &Fault) {
    world.borrow_mut().log("NEMESIS", format!("heal {fault:?}"));
    let mut w = world.borrow_mut();
    match fault {
        Fault::Partition { cut: Cut::OneWay(from, to), .. } => sim.repair_oneway(from.host(), to.host()),
        Fault::Partition { cut, .. } => {
            for (a, b) in pairs(plan, *cut) {
                sim.repair(a.as_str(), b.as_str());
            }
        }
        Fault::Clog { .. } => sim.release(NodeId::A.host(), NodeId::B.host()),
        Fault::Loss { .. } => sim.set_link_fail_rate(NodeId::A.host(), NodeId::B.host(), 0.0),
        Fault::SlowStorage { .. } => w.faults.storage_delay_ms = 0,
        Fault::StorageRequests { node, .. } => w.faults.requests[node.index()] = None,
        Fault::Heartbeats { node, .. } => w.faults.heartbeats[node.index()] = None,
        Fault::Crash(_) | Fault::Bounce(_) | Fault::Freeze(_) | Fault::CorruptChannel { .. } => {}
    }
}
