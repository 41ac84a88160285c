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
fn parse_stat(stat: &str) -> Option<(String, u64, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14, stime 15 and starttime 22, so indexes 11, 12, 19.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((name, utime + stime, start))
}

/// The CPU time of one process's threads so far, read from /proc again and again. A thread's time stays counted
/// after the thread is gone (its last reading): summing only the threads alive at each reading made the vCPU's
/// share negative once the guest powered off and its thread ended, and a helper thread that came and went
/// shifted time between readings.
#[derive(Clone, Debug)]
pub struct ProcessCpu {
    pid: u32,
    /// By thread id and start time (a recycled id is another thread): whether it was a vCPU thread at the last
    /// reading that saw it (a thread names itself after it starts), and its CPU ticks then.
    threads: BTreeMap<(u64, u64), (bool, u64)>,
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
            if let Some((name, ticks, start)) = parse_stat(&stat) {
                readings.push(((tid, start), name, ticks));
            }
        }
        Some(self.absorb(&readings))
    }

    /// Takes one reading of ((thread id, start time), name, ticks) and returns the time of every thread ever seen.
    fn absorb(&mut self, readings: &[((u64, u64), String, u64)]) -> ThreadCpu {
        for (thread, name, ticks) in readings {
            let seen = self.threads.entry(*thread).or_default();
            *seen = (name.starts_with("ftvm-vcpu"), seen.1.max(*ticks));
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
        let line = "4242 (ftvm-vcpu (0)) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 3 0 777 0";
        assert_eq!(parse_stat(line), Some(("ftvm-vcpu (0)".into(), 267, 777)));
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
        let vcpu = |ticks| ((8, 500), "ftvm-vcpu".to_string(), ticks);
        let runtime = |ticks| ((7, 400), "ftvm".to_string(), ticks);
        let first = process.absorb(&[runtime(10), vcpu(100)]);
        let second = process.absorb(&[runtime(12), vcpu(150)]);
        let last = process.absorb(&[runtime(13)]);
        assert!(second.since(&first).vcpu_ms > 0.0);
        assert_eq!(last.since(&second).vcpu_ms, 0.0, "the vCPU thread is gone, not negative");
        assert!(last.since(&first).vcpu_ms > 0.0);
        assert!(last.since(&second).runtime_ms > 0.0);
    }

    /// A thread id the kernel hands out again belongs to another thread (another start time): both count, once
    /// each. A thread that names itself after it starts counts under its name.
    #[test]
    fn a_recycled_thread_id_is_another_thread_and_a_late_name_counts() {
        let mut process = ProcessCpu::new(1);
        let tick_ms = 1e3 / clock_ticks_per_s();
        let first = process.absorb(&[((8, 500), "ftvm-vcpu".to_string(), 100)]);
        assert_eq!(first.vcpu_ms, 100.0 * tick_ms);
        let reused = process.absorb(&[((8, 900), "tokio-rt-worker".to_string(), 30)]);
        let again = process.absorb(&[((8, 900), "tokio-rt-worker".to_string(), 40)]);
        assert_eq!((reused.vcpu_ms, reused.runtime_ms), (100.0 * tick_ms, 30.0 * tick_ms));
        assert_eq!(again.since(&reused).runtime_ms, 10.0 * tick_ms, "counted once, not added again");
        let unnamed = process.absorb(&[((9, 950), "ftvm".to_string(), 5)]);
        let named = process.absorb(&[((9, 950), "ftvm-vcpu".to_string(), 6)]);
        assert_eq!(named.vcpu_ms - unnamed.vcpu_ms, 6.0 * tick_ms, "the vCPU thread's whole time is the vCPU's");
    }
}
