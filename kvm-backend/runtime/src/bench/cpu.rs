//! CPU time of a node's threads, from /proc: where the time of a benchmark run goes (the runtime thread, which
//! runs the protocol and all I/O, against the vCPU thread, which runs the guest).

use std::collections::BTreeMap;

use serde::Serialize;

/// CPU time (user + system) by thread kind, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ThreadCpu {
    /// The runtime thread (protocol, channel, storage hand-off, status) and any helper threads.
    pub runtime_ms: f64,
    /// The vCPU thread: the guest's run, KVM exits included.
    pub vcpu_ms: f64,
}

impl ThreadCpu {
    /// `self - earlier`, for a window of a run.
    pub fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        ThreadCpu { runtime_ms: self.runtime_ms - earlier.runtime_ms, vcpu_ms: self.vcpu_ms - earlier.vcpu_ms }
    }
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The name and CPU ticks (utime + stime) of one /proc stat line. The name is in parentheses and may hold spaces
/// or parentheses itself, so the fields are counted from the last ')'.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14 and stime 15, so indexes 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// The CPU time of one process's threads so far, read from /proc again and again. A thread's time stays counted
/// after the thread is gone (its last reading): summing only the threads alive at each reading made the vCPU's
/// share negative once the guest powered off and its thread ended, and a helper thread that came and went
/// shifted time between readings.
#[derive(Clone, Debug)]
pub struct ProcessCpu {
    pid: u32,
    /// By thread id: whether it is a vCPU thread, and its CPU ticks at the last reading that saw it.
    threads: BTreeMap<u64, (bool, u64)>,
}

impl ProcessCpu {
    pub fn new(pid: u32) -> ProcessCpu {
        ProcessCpu { pid, threads: BTreeMap::new() }
    }

    /// Reads every thread of the process now; None once the process is gone.
    pub fn read(&mut self) -> Option<ThreadCpu> {
        let mut readings = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|name| name.parse::<u64>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some((name, ticks)) = parse_stat(&stat) {
                readings.push((tid, name, ticks));
            }
        }
        Some(self.absorb(&readings))
    }

    /// Takes one reading of (thread id, name, ticks) and returns the time of every thread ever seen.
    fn absorb(&mut self, readings: &[(u64, String, u64)]) -> ThreadCpu {
        for (tid, name, ticks) in readings {
            let seen = self.threads.entry(*tid).or_insert((name.starts_with("ftvm-vcpu"), 0));
            // A thread's ticks only grow; a recycled id is a new thread whose time adds to the old one's.
            seen.1 = if *ticks >= seen.1 { *ticks } else { seen.1 + ticks };
        }
        let ms_per_tick = 1e3 / clock_ticks_per_s();
        let mut cpu = ThreadCpu::default();
        for (vcpu, ticks) in self.threads.values() {
            let ms = *ticks as f64 * ms_per_tick;
            if *vcpu {
                cpu.vcpu_ms += ms;
            } else {
                cpu.runtime_ms += ms;
            }
        }
        cpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (ftvm-vcpu (0)) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 3 0";
        assert_eq!(parse_stat(line), Some(("ftvm-vcpu (0)".into(), 267)));
        assert_eq!(parse_stat("4242 (x) S 1"), None, "too few fields");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_spent_some_cpu() {
        // Busy for a few clock ticks (10 ms each), in a way the optimiser cannot fold away.
        let start = std::time::Instant::now();
        let mut spin = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert!(spin > 0);
        let cpu = ProcessCpu::new(std::process::id()).read().expect("our own /proc entry");
        assert!(cpu.runtime_ms > 0.0, "{cpu:?}");
        assert!(ProcessCpu::new(u32::MAX).read().is_none());
    }

    /// A vCPU thread that ends (the guest powered off) keeps its time: the share between two readings is never
    /// negative.
    #[test]
    fn a_thread_that_ends_keeps_its_time() {
        let mut process = ProcessCpu::new(1);
        let vcpu = |ticks| (8, "ftvm-vcpu".to_string(), ticks);
        let runtime = |ticks| (7, "ftvm".to_string(), ticks);
        let first = process.absorb(&[runtime(10), vcpu(100)]);
        let second = process.absorb(&[runtime(12), vcpu(150)]);
        let last = process.absorb(&[runtime(13)]);
        assert!(second.since(&first).vcpu_ms > 0.0);
        assert_eq!(last.since(&second).vcpu_ms, 0.0, "the vCPU thread is gone, not negative");
        assert!(last.since(&first).vcpu_ms > 0.0);
        assert!(last.since(&second).runtime_ms > 0.0);
    }
}
