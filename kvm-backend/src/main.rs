//! `ftvm`: run, record, replay and measure guests on KVM.
//!
//! `run` runs a guest with no backup; `record` runs it as a primary whose backup is a log file (the byte stream of
//! the frames the primary sends on the logging channel); `replay` feeds such a file to a fresh backup, which
//! replays it and checks every output and checkpoint; `report` measures all three. Logs go to stderr
//! (`FTVM_LOG=debug` for more); console output and `key=value` results go to stdout.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cli::error::CliError;
use cli::machine::{Disk, GuestImage};
use cli::replay::ReplayOptions;
use cli::report::ReportOptions;
use cli::session::{Ending, SessionOptions, SessionResult};
use cli::workload::KvWorkload;

/// Requests of the kv guest's scripted load when `--requests` is not given.
const REQUESTS_DEFAULT: u64 = 200;
/// The KVM device, unless `--kvm-path` or `FTVM_KVM_PATH` says otherwise.
const KVM_PATH_DEFAULT: &str = "/dev/kvm";

#[derive(Parser)]
#[command(name = "ftvm", version, about = "Fault-tolerant VMs after VMware FT: run, record and replay KVM guests")]
struct Cli {
    /// The KVM device (for tests: a missing path shows the error of a host without KVM). Also FTVM_KVM_PATH.
    #[arg(long, global = true, hide = true)]
    kvm_path: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct GuestArgs {
    /// A corpus guest (see `ftvm guests`) or a path to a guest ELF.
    #[arg(long, value_name = "NAME|PATH.elf")]
    guest: String,
    /// Disk image, read into memory (it is never written back); default: 128 zeroed sectors.
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,
    /// Requests of the scripted client load sent to the kv guest (default 200 for kv, none for other guests).
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Seed of the client load.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop the guest after this long (what ran is still recorded) and exit with status 4.
    #[arg(long, value_name = "T")]
    timeout_ms: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// List the corpus guests.
    Guests,
    /// Run a guest without fault tolerance: outputs are released at once.
    Run(GuestArgs),
    /// Run a guest as a primary whose backup is a log file.
    Record {
        #[command(flatten)]
        guest: GuestArgs,
        /// Where to write the log.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
    },
    /// Replay a log on a fresh guest and check it.
    Replay {
        /// The guest that was recorded.
        #[arg(long, value_name = "NAME|PATH.elf")]
        guest: String,
        /// The log written by `ftvm record`.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
        /// Do not print the console output the replayed guest produced.
        #[arg(long)]
        quiet: bool,
    },
    /// Measure plain run, record and replay of each guest.
    Report {
        /// Guests to measure (repeatable); default: every corpus guest.
        #[arg(long)]
        guest: Vec<String>,
        /// Requests of the kv guest's load.
        #[arg(long, default_value_t = REQUESTS_DEFAULT)]
        requests: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Bound on each run of each guest.
        #[arg(long, value_name = "T")]
        timeout_ms: Option<u64>,
        /// Runs of each phase; the fastest counts.
        #[arg(long, default_value_t = 3)]
        repeat: u32,
    },
}

fn describe(name: &str) -> &'static str {
    match name {
        "cpu" => {
            "CPU-bound: 2^28 iterations of an integer hash at CPL3, a yield every 2^21; prints the result, powers off"
        }
        "kv" => "key-value service over the network device, persisted on the disk; idles until requests come",
        "timer" => "1 ms timer for 2000 ticks, reading clock and entropy on each; prints digests, powers off",
        _ => "",
    }
}

fn session_options(kvm_path: &Path, args: &GuestArgs) -> Result<SessionOptions, CliError> {
    let image = GuestImage::resolve(&args.guest)?;
    let requests = args.requests.or(image.is_kv().then_some(REQUESTS_DEFAULT));
    Ok(SessionOptions {
        kvm_path: kvm_path.to_path_buf(),
        disk: Disk::open(args.disk.as_ref())?,
        workload: requests.map(|requests| KvWorkload::new(requests, args.seed)),
        image,
        timeout: args.timeout_ms.map(Duration::from_millis),
        echo_console: true,
    })
}

/// Prints the results of a run or a recording; a timeout is reported as an error after them.
fn finish_session(result: &SessionResult, args: &GuestArgs) -> Result<(), CliError> {
    if !result.console.ends_with(b"\n") && !result.console.is_empty() {
        println!();
    }
    match result.ending {
        Ending::PoweredOff { status } => println!("powered-off={status}"),
        Ending::WorkloadDone => {}
        Ending::Idle => println!("idle=guest waits for input that will never come"),
        Ending::TimedOut => {}
    }
    if args.requests.is_some() || args.guest == "kv" {
        println!("responses={}", result.responses);
    }
    println!("exits={}", result.exits);
    if result.log_entries > 0 {
        println!("log-entries={}", result.log_entries);
        println!("log-bytes={}", result.log_bytes);
    }
    println!("state-hash={:016x}", result.state_hash);
    if result.ending == Ending::TimedOut {
        return Err(CliError::Timeout { guest: args.guest.clone(), timeout_ms: args.timeout_ms.unwrap_or(0) });
    }
    Ok(())
}

fn execute(cli: Cli) -> Result<(), CliError> {
    let kvm_path = cli
        .kvm_path
        .or_else(|| std::env::var_os("FTVM_KVM_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(KVM_PATH_DEFAULT));
    match cli.command {
        Command::Guests => {
            for name in kvm_backend::corpus::guest_names() {
                println!("{name:<8} {}", describe(name));
            }
            Ok(())
        }
        Command::Run(args) => {
            let result = cli::session::run(session_options(&kvm_path, &args)?, None)?;
            finish_session(&result, &args)
        }
        Command::Record { guest, log } => {
            let result = cli::session::run(session_options(&kvm_path, &guest)?, Some(&log))?;
            finish_session(&result, &guest)
        }
        Command::Replay { guest, log, quiet } => {
            let image = GuestImage::resolve(&guest)?;
            let result = cli::replay::run(ReplayOptions { kvm_path, image, log })?;
            if !quiet {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&result.console);
                if !result.console.ends_with(b"\n") && !result.console.is_empty() {
                    let _ = writeln!(stdout);
                }
            }
            if let Some(status) = result.powered_off {
                println!("powered-off={status}");
            }
            println!("exits={}", result.exits);
            println!("log-entries={}", result.entries);
            println!("checkpoints={}", result.checkpoints);
            println!("state-hash={:016x}", result.state_hash);
            Ok(())
        }
        Command::Report { guest, requests, seed, timeout_ms, repeat } => {
            let guests =
                if guest.is_empty() { kvm_backend::corpus::guest_names().map(String::from).collect() } else { guest };
            let options = ReportOptions {
                kvm_path,
                guests,
                requests,
                seed,
                timeout: timeout_ms.map(Duration::from_millis),
                repeat,
            };
            cli::report::run(&options).map(drop)
        }
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FTVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ftvm: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
