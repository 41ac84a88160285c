//! The guest on its own vCPU thread: kicks that cut runs short between two exits change nothing the log records,
//! so a recording made under a storm of kicks replays exactly on a guest that was never kicked.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ft_host::machine::{Disk, GuestImage};
use ft_host::replay::{self, ReplayOptions};
use ft_host::session::{self, Ending, SessionOptions};
use ft_host::workload::{KvWorkload, Workload};

fn record_kicked(guest: &str, workload: Option<Workload>, log: &Path) -> session::SessionResult {
    let options = SessionOptions {
        kvm_path: PathBuf::from("/dev/kvm"),
        image: GuestImage::resolve(guest).expect("corpus guest"),
        disk: Disk::zeroed(common::DISK_SECTORS as u64),
        workload,
        timeout: None,
        echo_console: false,
        kick_every: Some(Duration::from_micros(20)),
    };
    session::run(options, Some(log)).expect("records")
}

fn replay(guest: &str, log: &Path) -> replay::ReplayResult {
    let options = ReplayOptions {
        kvm_path: PathBuf::from("/dev/kvm"),
        image: GuestImage::resolve(guest).expect("corpus guest"),
        log: log.to_path_buf(),
    };
    replay::run(options).expect("replays without divergence")
}

#[test]
fn kicks_between_exits_change_nothing_that_replay_sees() {
    if !common::kvm_usable() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ftvm-kicks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // timer: interrupts and clock reads; cpu: long runs without exits, where the kicks land; kv: frames and disk;
    // netrx: a stream of frames, each DMAed into memory at an exit.
    let loads = [
        ("timer", None),
        ("cpu", None),
        ("kv", Some(Workload::Kv(KvWorkload::new(100, 7)))),
        ("netrx", Workload::for_guest(Some("netrx"), 500, 7)),
    ];
    for (guest, workload) in loads {
        let log = dir.join(format!("{guest}.log"));
        let recorded = record_kicked(guest, workload, &log);
        assert!(recorded.runs_kicked > 0, "{guest}: no kick landed between two exits");
        let replayed = replay(guest, &log);
        assert_eq!(Some(replayed.state_hash), recorded.state_hash, "{guest}: replay reaches the recorded state");
        assert_eq!(replayed.exits, recorded.exits, "{guest}");
        if recorded.ending != Ending::WorkloadDone {
            assert_eq!(replayed.powered_off, Some(0), "{guest}: {:?}", recorded.ending);
        }
        eprintln!(
            "{guest}: {} exits, {} runs kicked between exits, replayed identically",
            recorded.exits, recorded.runs_kicked
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One-run kicks from another thread at random moments never leave the vCPU unable to run: a kick whose flag a
/// run consumed must not leave `immediate_exit` set behind it (every later KVM_RUN would return at once, and the
/// run would fail after a million "interrupted" exits).
#[test]
fn a_storm_of_kicks_never_wedges_the_vcpu() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Some(mut bench) = common::bench("timer") else { return };
    let handle = bench.guest.handle();
    let done = Arc::new(AtomicBool::new(false));
    let kicker = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut kicks = 0u64;
            while !done.load(Ordering::SeqCst) {
                handle.interrupt();
                kicks += 1;
                // A few microseconds apart: some land inside KVM_RUN, some between runs, some during the check.
                for _ in 0..(kicks % 7) * 200 {
                    std::hint::spin_loop();
                }
            }
            kicks
        })
    };
    let stop = bench.run(2_000_000);
    done.store(true, Ordering::SeqCst);
    let kicks = kicker.join().expect("the kicker ran");
    let kicked = bench.trace.iter().filter(|entry| entry.exit == ft::Exit::Kicked).count();
    eprintln!("{kicks} kicks, {kicked} runs ended kicked, then {stop:?}");
    assert_eq!(stop.expect("no run failed"), kvm_backend::testkit::Stop::PowerOff(0));
    assert!(kicked > 0, "no kick landed");
}
