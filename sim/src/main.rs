//! `ftsim`: run one simulated scenario, sweep many, or measure the simulator.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ft_sim::scenario::{self, Report};
use ft_sim::world::Counts;

#[derive(Parser)]
#[command(about = "Deterministic simulation of the FT primary/backup protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one seed (or a pinned plan) and print its timeline, ending with `trace-hash=<hex>`.
    Run {
        #[arg(long, required_unless_present = "plan")]
        seed: Option<u64>,
        /// A pinned plan (corpus/regressions/plans/*.json) instead of the seed's generated one.
        #[arg(long, value_name = "FILE", conflicts_with = "seed")]
        plan: Option<std::path::PathBuf>,
    },
    /// Pin a seed's scenario as a regression plan: its seed and whole plan, as JSON.
    Pin {
        #[arg(long)]
        seed: u64,
        /// What the scenario found, in a sentence.
        #[arg(long)]
        found: String,
        /// A coverage mark the scenario must keep hitting (repeatable).
        #[arg(long = "mark")]
        marks: Vec<String>,
        /// Where to write it (default: stdout).
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Run seeds FROM..FROM+COUNT; exit non-zero on any violation.
    Sweep {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        count: u64,
        /// Stop starting new seeds after this many seconds (the count actually swept is printed).
        #[arg(long)]
        time_limit_s: Option<u64>,
    },
    /// Measure scenarios per core-second and frame codec throughput.
    Bench {
        #[arg(long, default_value_t = 40)]
        scenarios: u64,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { seed: Some(seed), .. } => {
            let report = scenario::run(seed);
            let reproduce = report.reproduce();
            run(report, reproduce)
        }
        Command::Run { plan: Some(path), .. } => match ft_sim::regression::Pinned::load(&path) {
            Ok(pinned) => {
                let guests = ft_sim::node_host::model_guests(pinned.plan.workload);
                let reproduce = format!("cargo run --release --bin ftsim -- run --plan {}", path.display());
                run(scenario::run_plan(pinned.seed, pinned.plan, guests), reproduce)
            }
            Err(error) => {
                eprintln!("ftsim: {error}");
                ExitCode::from(2)
            }
        },
        Command::Run { .. } => unreachable!("clap requires --seed or --plan"),
        Command::Pin { seed, found, marks, out } => pin(seed, found, marks, out),
        Command::Sweep { from, count, time_limit_s } => sweep(from, count, time_limit_s),
        Command::Bench { scenarios } => {
            ft_sim::bench::report(scenarios);
            ExitCode::SUCCESS
        }
    }
}

fn pin(seed: u64, found: String, marks: Vec<String>, out: Option<std::path::PathBuf>) -> ExitCode {
    let pinned = ft_sim::regression::Pinned { seed, found, marks, plan: ft_sim::plan::Plan::generate(seed) };
    // Round-trip through the parser, so that a pin with an unknown mark is refused here and not in the test.
    if let Err(error) = ft_sim::regression::Pinned::parse(&pinned.to_json()) {
        eprintln!("ftsim: {error}");
        return ExitCode::from(2);
    }
    match out {
        None => ft_sim::say!("{}", pinned.to_json()),
        Some(path) => {
            if let Err(error) = std::fs::write(&path, pinned.to_json() + "\n") {
                eprintln!("ftsim: {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn run(report: Report, reproduce: String) -> ExitCode {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = print_run(&mut out, &report, &reproduce);
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_run(out: &mut impl Write, report: &Report, reproduce: &str) -> std::io::Result<()> {
    writeln!(out, "seed {}", report.seed)?;
    for line in &report.trace {
        writeln!(out, "{line}")?;
    }
    for violation in &report.violations {
        writeln!(out, "VIOLATION {violation}")?;
    }
    if !report.violations.is_empty() {
        writeln!(out, "reproduce: {reproduce}")?;
    }
    writeln!(out, "seed {}: {} violations, trace-hash={:016x}", report.seed, report.violations.len(), report.trace_hash)
}

fn sweep(from: u64, count: u64, time_limit_s: Option<u64>) -> ExitCode {
    let started = ft_sim::stopwatch::Stopwatch::start();
    let mut totals = Counts::default();
    let mut marks = std::collections::BTreeMap::new();
    let mut failing: Vec<Report> = Vec::new();
    let mut swept = 0;
    for seed in from..from.saturating_add(count) {
        if time_limit_s.is_some_and(|limit| started.elapsed_s() >= limit as f64) {
            break;
        }
        let report = scenario::run(seed);
        ft_sim::sweep::add(&mut totals, &report.counts);
        ft_sim::sweep::add_marks(&mut marks, &report.marks);
        swept += 1;
        if !report.violations.is_empty() {
            ft_sim::say!("seed {seed}: {} violations: {}", report.violations.len(), report.violations[0]);
            ft_sim::say!("  reproduce: {}", report.reproduce());
            failing.push(report);
        }
    }
    ft_sim::say!("events: {totals:?}");
    ft_sim::say!("marks: {marks:?}");
    let mut never = ft_sim::sweep::never_happened(&totals);
    never.extend(ft_sim::marks::never_hit(&marks));
    let sometimes_failed = swept >= ft_sim::sweep::SOMETIMES_SEEDS_MIN && !never.is_empty();
    if sometimes_failed {
        ft_sim::say!("sometimes-assertions never reached in {swept} seeds: {}", never.join(", "));
    }
    let seconds = started.elapsed_s();
    ft_sim::say!("swept {swept} seeds in {seconds:.1} s ({:.1} scenarios/s)", swept as f64 / seconds.max(1e-9));
    ft_sim::say!("swept {swept} seeds: {} violations", failing.len());
    if failing.is_empty() && !sometimes_failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
