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
    /// Run one seed and print its timeline, ending with `trace-hash=<hex>`.
    Run {
        #[arg(long)]
        seed: u64,
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
        Command::Run { seed } => run(seed),
        Command::Sweep { from, count, time_limit_s } => sweep(from, count, time_limit_s),
        Command::Bench { scenarios } => {
            ft_sim::bench::report(scenarios);
            ExitCode::SUCCESS
        }
    }
}

fn run(seed: u64) -> ExitCode {
    let report = scenario::run(seed);
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = print_run(&mut out, &report);
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_run(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    writeln!(out, "seed {}", report.seed)?;
    for line in &report.trace {
        writeln!(out, "{line}")?;
    }
    for violation in &report.violations {
        writeln!(out, "VIOLATION {violation}")?;
    }
    if !report.violations.is_empty() {
        writeln!(out, "reproduce: {}", report.reproduce())?;
    }
    writeln!(out, "seed {}: {} violations, trace-hash={:016x}", report.seed, report.violations.len(), report.trace_hash)
}

fn sweep(from: u64, count: u64, time_limit_s: Option<u64>) -> ExitCode {
    let started = ft_sim::stopwatch::Stopwatch::start();
    let mut totals = Counts::default();
    let mut failing: Vec<Report> = Vec::new();
    let mut swept = 0;
    for seed in from..from.saturating_add(count) {
        if time_limit_s.is_some_and(|limit| started.elapsed_s() >= limit as f64) {
            break;
        }
        let report = scenario::run(seed);
        ft_sim::sweep::add(&mut totals, &report.counts);
        swept += 1;
        if !report.violations.is_empty() {
            ft_sim::say!("seed {seed}: {} violations: {}", report.violations.len(), report.violations[0]);
            ft_sim::say!("  reproduce: {}", report.reproduce());
            failing.push(report);
        }
    }
    ft_sim::say!("events: {totals:?}");
    let never = ft_sim::sweep::never_happened(&totals);
    if swept >= ft_sim::sweep::SOMETIMES_SEEDS_MIN && !never.is_empty() {
        ft_sim::say!("sometimes-assertions never reached in {swept} seeds: {}", never.join(", "));
    }
    ft_sim::say!("swept {swept} seeds: {} violations", failing.len());
    let sometimes_failed = swept >= ft_sim::sweep::SOMETIMES_SEEDS_MIN && !never.is_empty();
    if failing.is_empty() && !sometimes_failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
