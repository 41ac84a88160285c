//! `ftvm`: run, record, replay and measure guests on KVM.
//!
//! `run` runs a guest with no backup; `record` runs it as a primary whose backup is a log file (the byte stream of
//! the frames the primary sends on the logging channel); `replay` feeds such a file to a fresh backup, which
//! replays it and checks every output and checkpoint; `report` measures all three. Logs go to stderr
//! (`FTVM_LOG=debug` for more); console output and `key=value` results go to stdout.

use ft_host as cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use cli::config::NodeConfig;
use cli::error::CliError;
use cli::machine::{Disk, GuestImage};
use cli::node::StartAs;
use cli::replay::ReplayOptions;
use cli::report::ReportOptions;
use cli::session::{Ending, SessionOptions, SessionResult};
use cli::workload::Workload;

/// Requests of the kv guests' scripted load when `--requests` is not given.
const REQUESTS_DEFAULT: u64 = 200;
/// Frames of the netrx and nettx guests' scripted loads when `--requests` is not given.
const FRAMES_DEFAULT: u64 = 20_000;
/// The KVM device, unless `--kvm-path` or `FTVM_KVM_PATH` says otherwise.
const KVM_PATH_DEFAULT: &str = "/dev/kvm";

/// The exit statuses, for `ftvm --help` (the constants are in src/error.rs; docs/deployment.md has the same list).
const EXIT_STATUSES: &str = "\
Exit statuses:
  0  success: the guest powered off with status 0, or the client load was answered
  1  an error (bad input, a missing file or device, a refused config, a protocol error); stderr says what
  2  the command line does not parse
  3  divergence: replay found the guest doing something other than the log says
  4  timed out: --timeout-ms passed before the guest finished (the guest was stopped, even between two exits)
  5  the guest powered off with a non-zero status (printed as powered-off=N)
  6  the guest failed: triple fault, MMIO access, emulation failure or hypervisor error (stderr names it)";

#[derive(Parser)]
#[command(
    name = "ftvm",
    version,
    about = "Fault-tolerant VMs after VMware FT: run, record and replay KVM guests",
    after_help = EXIT_STATUSES
)]
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
    /// Requests of the scripted client load sent to the kv guests (default 200), or frames for netrx and nettx
    /// (default 20000); other guests take no load.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Seed of the client load.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop the guest after this long, even inside a stretch without exits (what ran until its last exit is still
    /// recorded), and exit with status 4.
    #[arg(long, value_name = "T")]
    timeout_ms: Option<u64>,
}

/// `ftvm primary` / `ftvm backup`: a config file, and flags that override it. Every flag is the config key of
/// the same name (docs/deployment.md has the reference), except `--status-addr` and `--metrics-addr` for the keys
/// `status` and `metrics`.
#[derive(clap::Args)]
struct NodeArgs {
    /// The node's TOML config (every key can also be given as a flag).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_name = "NAME|PATH.elf")]
    guest: Option<String>,
    /// `kvm` (default) or `model` (the model guest, without KVM).
    #[arg(long, value_name = "kvm|model")]
    machine: Option<String>,
    #[arg(long)]
    pair_id: Option<u64>,
    /// Guest RAM in MiB (KVM).
    #[arg(long)]
    memory_mib: Option<u64>,
    #[arg(long, value_name = "ADDR")]
    channel_listen: Option<std::net::SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    channel_peer: Option<std::net::SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    join_listen: Option<std::net::SocketAddr>,
    /// With `backup --join`: the live primary's `join_listen` (several, comma-separated, are asked in order).
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    join_peers: Option<Vec<std::net::SocketAddr>>,
    /// Spare nodes (their `channel_listen`) a live primary without a backup calls, in order.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    spares: Option<Vec<std::net::SocketAddr>>,
    #[arg(long, value_name = "ADDR")]
    heartbeat_listen: Option<std::net::SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    heartbeat_peer: Option<std::net::SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    service: Option<std::net::SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    status_addr: Option<std::net::SocketAddr>,
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    arbiter: Option<PathBuf>,
    #[arg(long, value_name = "HEX")]
    key_hex: Option<String>,
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    failure_timeout_ms: Option<u64>,
    #[arg(long)]
    startup_timeout_ms: Option<u64>,
    #[arg(long)]
    storage_timeout_ms: Option<u64>,
    #[arg(long)]
    arbiter_retry_ms: Option<u64>,
    #[arg(long)]
    disk_sectors: Option<u64>,
    #[arg(long)]
    slice_exits_max: Option<u64>,
    #[arg(long)]
    lag_target_ms: Option<u64>,
    #[arg(long)]
    throttle_period_ms: Option<u64>,
    #[arg(long, value_name = "true|false")]
    sync_writes: Option<bool>,
    #[arg(long, value_name = "true|false")]
    write_journal: Option<bool>,
    #[arg(long, value_name = "SHELL COMMAND")]
    go_live_command: Option<String>,
    #[arg(long, value_name = "FILE")]
    status_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BackupArgs {
    /// Join the live primary (at `join_peers`, or as a spare waiting on `channel_listen` for a primary whose
    /// `spares` list it): it clones its running VM onto this node, which then is its backup.
    #[arg(long)]
    join: bool,
    #[command(flatten)]
    node: NodeArgs,
}

impl NodeArgs {
    fn config(self) -> Result<NodeConfig, CliError> {
        let file = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None => NodeConfig::default(),
        };
        let flags = NodeConfig {
            name: self.name,
            guest: self.guest,
            machine: self.machine,
            pair_id: self.pair_id,
            memory_mib: self.memory_mib,
            channel_listen: self.channel_listen,
            channel_peer: self.channel_peer,
            join_listen: self.join_listen,
            join_peers: self.join_peers,
            spares: self.spares,
            heartbeat_listen: self.heartbeat_listen,
            heartbeat_peer: self.heartbeat_peer,
            service: self.service,
            status: self.status_addr,
            metrics: self.metrics_addr,
            disk: self.disk,
            arbiter: self.arbiter,
            key_hex: self.key_hex,
            key_file: self.key_file,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            failure_timeout_ms: self.failure_timeout_ms,
            startup_timeout_ms: self.startup_timeout_ms,
            storage_timeout_ms: self.storage_timeout_ms,
            arbiter_retry_ms: self.arbiter_retry_ms,
            disk_sectors: self.disk_sectors,
            slice_exits_max: self.slice_exits_max,
            lag_target_ms: self.lag_target_ms,
            throttle_period_ms: self.throttle_period_ms,
            sync_writes: self.sync_writes,
            write_journal: self.write_journal,
            go_live_command: self.go_live_command,
            status_file: self.status_file,
            // Ethernet mode is configured in the file's `[ethernet]` table only.
            ethernet: None,
        };
        Ok(file.overridden_by(flags))
    }
}

/// The load and the kill of `ftvm demo` and `ftvm report-failover`.
#[derive(clap::Args)]
struct LoadArgs {
    /// Seed of the client load and the kill moments (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Failure detection timeout of the pair.
    #[arg(long, default_value_t = 150)]
    failure_timeout_ms: u64,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Requests each client keeps in flight.
    #[arg(long, default_value_t = 4)]
    in_flight: u32,
    /// The kill lands at a random moment between these many milliseconds after the load starts.
    #[arg(long, value_name = "MIN-MAX", default_value = "200-1000", value_parser = parse_range)]
    kill_after_ms: (u64, u64),
}

/// `MIN-MAX`, two whole numbers with MIN <= MAX.
fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (low, high) = text.split_once('-').ok_or_else(|| format!("{text:?}: expected MIN-MAX"))?;
    let number = |part: &str| part.trim().parse::<u64>().map_err(|error| format!("{part:?}: {error}"));
    let (low, high) = (number(low)?, number(high)?);
    if low > high {
        return Err(format!("{text:?}: MIN is greater than MAX"));
    }
    Ok((low, high))
}

#[derive(Subcommand)]
enum Command {
    /// Run the primary of a fault-tolerant pair (connects to its backup, serves clients).
    Primary(NodeArgs),
    /// Run the backup of a fault-tolerant pair (replays the primary's log, takes over when it fails). With
    /// `--join`: become the backup of the pair's live primary by cloning its running VM (re-protection).
    Backup(BackupArgs),
    /// The whole story on localhost: a pair of the pipelined kv guest, clients with requests in flight, kill -9
    /// of the primary (or the loss of its host) at a random moment, failover, and checks of what the outside saw.
    Demo {
        /// Print a JSON summary instead of the timeline.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1)]
        trials: u32,
        /// Host loss instead of kill -9: the primary is frozen (SIGSTOP), so no FIN or RST reaches the backup and
        /// detection takes the failure timeout.
        #[arg(long, visible_alias = "freeze")]
        host_loss: bool,
        /// Fail the primary this many times in each trial: after each failover but the last, a fresh node
        /// re-protects the live primary (`ftvm backup --join`), and the next failure comes once it is protected.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(cli::demo::FAILURES_MAX)))]
        failures: u32,
        /// The guest: `kvq` (the pipelined kv service over UDP, on localhost) or `redis` (a Redis server with a
        /// TCP/IP stack, on two hosts made of network namespaces, loaded by redis-benchmark; needs root, KVM and
        /// redis-tools).
        #[arg(long, default_value = "kvq", value_parser = ["kvq", "redis"])]
        guest: String,
        /// With `--guest redis`: redis-benchmark's connections (`-c`).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=56))]
        connections: u32,
        /// With `--guest redis`: redis-benchmark's pipelining (`-P`).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
        pipeline: u32,
        /// With `--guest redis`: redis-benchmark's requests per test (`-n`; the tests are SET and GET).
        #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1000..=100_000_000))]
        requests: u64,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Failover time (kill -9 and host loss), Output Rule latency, log bandwidth and throughput over demo trials
    /// and a non-FT baseline under the same load.
    ReportFailover {
        /// Trials of each kind (kill -9, host loss).
        #[arg(long, default_value_t = 5)]
        trials: u32,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Measure the system as the paper does, FT against non-FT in one run: Table 1 (each corpus workload, and the
    /// logging bandwidth it needs), Table 2 (network receive and transmit), the Output Rule's latency per
    /// request and per stage, the lag with a slow backup, failover, and replay against record. Writes
    /// report.md, report.json and SVG plots into --out.
    Bench {
        /// Where the report and plots go (created if missing).
        #[arg(long, value_name = "DIR", default_value = "ftvm-bench")]
        out: PathBuf,
        /// Print the report as JSON on stdout (the Markdown tables otherwise).
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long each loaded run lasts (FT and non-FT each).
        #[arg(long, value_name = "MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
        duration_ms: u64,
        /// Failover trials of each kind (kill -9, host loss).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        trials: u32,
        /// The backup's CPU limit in the slow-backup run, in percent of one CPU (50: twice as slow).
        #[arg(long, value_name = "PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(10..=100))]
        slow_backup_cpu_percent: u32,
        /// The lag throttle's target in the slow-backup run (default: the nodes' default).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
        lag_target_ms: Option<u64>,
        /// Let primary, backup and clients share every CPU, instead of the primary on CPU 0 and the backup and
        /// clients on CPU 1 (two hosts, as far as one machine goes).
        #[arg(long)]
        no_pin: bool,
        /// Clones of the write-heavy guest per memory size (16 and 256 MiB), for re-protection's pause.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        clones: u32,
    },
    /// Print the status of a running node.
    Status {
        /// The node's status address (`status` in its config).
        #[arg(long, value_name = "ADDR")]
        addr: std::net::SocketAddr,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Wait up to this long for the node to answer (it may be starting): connections refused meanwhile are
        /// retried.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        wait_ms: u64,
    },
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
            "CPU-bound: 2^28 iterations of an integer hash at CPL3 with a 1 ms timer, a yield every 2^21; prints the \
             result, powers off"
        }
        "kv" => "key-value service over the network device, persisted on the disk; idles until requests come",
        "kvq" => "the same service with eight requests in flight: overlapping disk IO, reads checked against writes",
        "timer" => "1 ms timer for 2000 ticks, reading clock and entropy on each; prints digests, powers off",
        "netrx" => "network receive: takes a stream of frames as fast as they come and acknowledges them (Table 2)",
        "nettx" => "network transmit: answers a request with a burst of frames sent as fast as it can (Table 2)",
        "dirty" => "re-protection's write-heavy guest: rewrites an 8 MiB arena page by page, never powers off",
        "redis" => {
            "Redis (RESP) on port 6379 of 10.77.0.2 over smoltcp TCP/IP, Ethernet mode (a TAP device); every write \
             logged on the disk first; never powers off"
        }
        _ => "",
    }
}

/// The size of the scripted load a corpus guest gets without `--requests`.
fn load_default(guest: Option<&str>) -> u64 {
    match guest {
        Some("netrx" | "nettx") => FRAMES_DEFAULT,
        _ => REQUESTS_DEFAULT,
    }
}

/// The options of a run or a recording, and whether the guest takes a scripted load (chosen by its image).
fn session_options(kvm_path: &Path, args: &GuestArgs) -> Result<(SessionOptions, bool), CliError> {
    let image = GuestImage::resolve(&args.guest)?;
    let guest = image.corpus_name();
    let workload = Workload::for_guest(guest, args.requests.unwrap_or(load_default(guest)), args.seed);
    let kv = workload.is_some();
    let options = SessionOptions {
        kvm_path: kvm_path.to_path_buf(),
        disk: Disk::open(args.disk.as_ref())?,
        workload,
        image,
        timeout: args.timeout_ms.map(Duration::from_millis),
        echo_console: true,
        kick_every: None,
    };
    Ok((options, kv))
}

/// Prints the results of a run or a recording, then turns how the guest ended into the exit status: a failed
/// guest, a non-zero power-off and a timeout are errors after the results.
fn finish_session(result: &SessionResult, args: &GuestArgs, kv: bool) -> Result<(), CliError> {
    if !result.console.ends_with(b"\n") && !result.console.is_empty() {
        println!();
    }
    match &result.ending {
        Ending::PoweredOff { status } => println!("powered-off={status}"),
        Ending::GuestFailed { .. } | Ending::WorkloadDone | Ending::TimedOut => {}
        Ending::Idle => println!("idle=guest waits for input that will never come"),
    }
    if args.requests.is_some() || kv {
        println!("responses={}", result.responses);
    }
    println!("exits={}", result.exits);
    if result.log_entries > 0 {
        println!("log-entries={}", result.log_entries);
        println!("log-bytes={}", result.log_bytes);
    }
    if let Some(hash) = result.state_hash {
        println!("state-hash={hash:016x}");
    }
    match &result.ending {
        Ending::PoweredOff { status } if *status != 0 => {
            Err(CliError::GuestStatus { guest: args.guest.clone(), status: *status })
        }
        Ending::GuestFailed { reason } => {
            let reason = format!("{reason} (at exit {})", result.exits);
            Err(CliError::GuestFailed { guest: args.guest.clone(), reason })
        }
        Ending::TimedOut => {
            Err(CliError::Timeout { guest: args.guest.clone(), timeout_ms: args.timeout_ms.unwrap_or(0) })
        }
        Ending::PoweredOff { .. } | Ending::WorkloadDone | Ending::Idle => Ok(()),
    }
}

fn demo_options(
    kvm_path: PathBuf,
    trials: u32,
    host_loss: bool,
    failures: u32,
    load: LoadArgs,
) -> cli::demo::DemoOptions {
    let seed = load.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let machine = cli::machine::demo_machine(&kvm_path);
    let mode = if host_loss { cli::demo::FailureMode::HostLoss } else { cli::demo::FailureMode::Kill };
    cli::demo::DemoOptions {
        machine,
        trials,
        seed,
        kill_after_ms: load.kill_after_ms,
        mode,
        failures,
        failure_timeout_ms: load.failure_timeout_ms,
        clients: load.clients.max(1),
        in_flight: load.in_flight.max(1),
    }
}

fn execute(cli: Cli) -> Result<(), CliError> {
    let kvm_path = cli
        .kvm_path
        .or_else(|| std::env::var_os("FTVM_KVM_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(KVM_PATH_DEFAULT));
    match cli.command {
        Command::Primary(args) => cli::node::run(&kvm_path, args.config()?, StartAs::Primary),
        Command::Backup(BackupArgs { join, node }) => {
            let start_as = if join { StartAs::Join } else { StartAs::Backup };
            cli::node::run(&kvm_path, node.config()?, start_as)
        }
        Command::Demo { json, trials, host_loss, guest, connections, pipeline, requests, load, .. }
            if guest == "redis" =>
        {
            let options = demo_options(kvm_path.clone(), trials, host_loss, 1, load);
            let (low, high) = options.kill_after_ms;
            let mut reports = Vec::new();
            for index in 0..trials.max(1) {
                let seed = cli::demo::trial_seed(options.seed, index);
                let redis = cli::demo::RedisOptions {
                    seed,
                    mode: options.mode,
                    connections,
                    pipeline,
                    requests,
                    kill_after_ms: low + cli::machine::splitmix(seed) % (high - low).saturating_add(1),
                    failure_timeout_ms: options.failure_timeout_ms,
                };
                let report = cli::demo::redis::run(&redis, &kvm_path)?;
                if !json {
                    println!("trial {} of {} (seed {seed}):", index + 1, trials.max(1));
                    cli::demo::redis::print(&report);
                }
                reports.push(report);
            }
            let summary = cli::demo::redis::summary(&reports);
            if json {
                let value = if reports.len() == 1 {
                    serde_json::to_value(&reports[0])
                } else {
                    serde_json::to_value(serde_json::json!({ "summary": summary, "trials": reports }))
                };
                println!("{}", serde_json::to_string_pretty(&value.expect("the report serialises")).expect("JSON"));
            } else if reports.len() > 1 {
                println!("{}", summary.line());
            }
            if reports.iter().all(cli::demo::RedisReport::passed) {
                Ok(())
            } else {
                Err(CliError::CheckFailed("demo: lost requests, reset connections, split brain or errors".into()))
            }
        }
        Command::Demo { json, trials, host_loss, failures, load, .. } => {
            let options = demo_options(kvm_path, trials, host_loss, failures, load);
            if cli::demo::run(&options, json)? {
                Ok(())
            } else {
                Err(CliError::CheckFailed(
                    "demo: lost requests, divergent outputs, split brain or errors (see above)".into(),
                ))
            }
        }
        Command::ReportFailover { trials, load } => {
            let options = demo_options(kvm_path, trials, false, 1, load);
            if cli::demo::report(&options)? {
                Ok(())
            } else {
                Err(CliError::CheckFailed("report-failover: a trial failed its checks".into()))
            }
        }
        Command::Bench {
            out,
            json,
            seed,
            duration_ms,
            trials,
            slow_backup_cpu_percent,
            lag_target_ms,
            no_pin,
            clones,
        } => {
            let options = cli::bench::BenchOptions {
                kvm_path,
                out: out.clone(),
                seed,
                duration: Duration::from_millis(duration_ms),
                failover_trials: trials,
                replay_frames: 5_000,
                slow_backup_cpu_percent,
                lag_target_ms,
                pin: !no_pin,
                reprotect_clones: clones,
            };
            let report = cli::bench::run(&options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report).map_err(|e| CliError::Protocol(e.to_string()))?);
            } else {
                print!("{}", std::fs::read_to_string(out.join("report.md")).unwrap_or_default());
                println!("\n(written to {})", out.display());
            }
            Ok(())
        }
        Command::Status { addr, json, wait_ms } => {
            let path = if json { "/json" } else { "/" };
            print!("{}", cli::status::fetch_waiting(addr, path, Duration::from_millis(wait_ms))?);
            if json {
                println!();
            }
            Ok(())
        }
        Command::Guests => {
            for name in kvm_backend::corpus::guest_names() {
                println!("{name:<8} {}", describe(name));
            }
            Ok(())
        }
        Command::Run(args) => {
            let (options, kv) = session_options(&kvm_path, &args)?;
            let result = cli::session::run(options, None)?;
            finish_session(&result, &args, kv)
        }
        Command::Record { guest, log } => {
            let (options, kv) = session_options(&kvm_path, &guest)?;
            let result = cli::session::run(options, Some(&log))?;
            finish_session(&result, &guest, kv)
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
            if let (None, Some(status)) = (&result.failure, result.powered_off) {
                println!("powered-off={status}");
            }
            println!("exits={}", result.exits);
            println!("log-entries={}", result.entries);
            println!("checkpoints={}", result.checkpoints);
            println!("state-hash={:016x}", result.state_hash);
            // The replay matched the log; the exit status says how the guest ended, as `record` did.
            match (result.failure, result.powered_off) {
                (Some(reason), _) => {
                    let reason = format!("{reason} (at exit {}, as in the recording)", result.exits);
                    Err(CliError::GuestFailed { guest, reason })
                }
                (None, Some(status)) if status != 0 => Err(CliError::GuestStatus { guest, status }),
                _ => Ok(()),
            }
        }
        Command::Report { guest, requests, seed, timeout_ms, repeat } => {
            // Every corpus guest by default but those that neither power off nor serve a load that ends.
            let every = kvm_backend::corpus::guest_names()
                .filter(|name| !kvm_backend::corpus::RUN_UNTIL_STOPPED.contains(name))
                .map(String::from);
            let guests = if guest.is_empty() { every.collect() } else { guest };
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ftvm: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EXIT_STATUSES;
    use ft_host::error::{EXIT_DIVERGED, EXIT_FAILURE, EXIT_GUEST_FAILED, EXIT_GUEST_STATUS, EXIT_TIMEOUT};

    #[test]
    fn the_help_lists_every_exit_status() {
        for code in [EXIT_FAILURE, EXIT_DIVERGED, EXIT_TIMEOUT, EXIT_GUEST_STATUS, EXIT_GUEST_FAILED] {
            assert!(EXIT_STATUSES.contains(&format!("\n  {code}  ")), "{code} in {EXIT_STATUSES}");
        }
    }
}
