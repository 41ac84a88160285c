//! Sleeps with microsecond precision on the runtime thread. tokio's timers tick in whole milliseconds, so a
//! guest with a 1 ms timer that waited on them woke up to a millisecond late on every tick: the `timer` guest ran
//! at half speed without a backup (where nothing else woke the driver sooner). The last stretch of a sleep is a
//! `timerfd` (CLOCK_MONOTONIC, the clock `Instant` reads) registered with tokio's reactor.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

/// Sleeps longer than this sleep on tokio's timer until this close to the deadline, then on a timerfd.
const COARSE_MARGIN: Duration = Duration::from_millis(2);

/// Sleeps until `deadline`.
pub async fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > COARSE_MARGIN {
        tokio::time::sleep_until((deadline - COARSE_MARGIN).into()).await;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return;
    }
    if precise_sleep(remaining).await.is_err() {
        // No timerfd (out of descriptors, say): tokio's timer, late by up to a millisecond, is still a sleep.
        tokio::time::sleep_until(deadline.into()).await;
    }
}

async fn precise_sleep(duration: Duration) -> std::io::Result<()> {
    // SAFETY: timerfd_create takes no pointers; a non-negative result is a new descriptor that we own.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let spec = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec {
            tv_sec: duration.as_secs() as libc::time_t,
            // A zero it_value would disarm the timer: at least a nanosecond.
            tv_nsec: libc::c_long::from(duration.subsec_nanos().max(1)),
        },
    };
    // SAFETY: `fd` is a timerfd we own; `spec` lives across the call; a null old value is allowed.
    if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the OwnedFd moves into the AsyncFd, which owns it until it is dropped: the descriptor stays open,
    // and `as_raw_fd` always returns the same one.
    let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
    loop {
        let mut ready = fd.readable().await?;
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a buffer of 8 from a descriptor we own.
        let read = unsafe { libc::read(fd.get_ref().as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        if read == 8 {
            return Ok(());
        }
        // Spurious readiness (EAGAIN): wait again.
        ready.clear_ready();
    }
}

/// The wall clock of a host that runs the core on this thread without a deadline of its own to keep: ns since
/// it started, and sleeps that end at their deadline or after `look`, whichever is first, so that the host of a
/// `run_until` is asked at least that often whether it is done.
pub struct WallClock {
    start: Instant,
    look: Duration,
}

impl WallClock {
    pub fn new(look: Duration) -> WallClock {
        WallClock { start: Instant::now(), look }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub async fn sleep_until_ns(&self, deadline_ns: u64) {
        let now = self.now_ns();
        if deadline_ns <= now {
            tokio::task::yield_now().await;
            return;
        }
        let wait = Duration::from_nanos(deadline_ns - now).min(self.look);
        sleep_until(Instant::now() + wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sleep never ends before its deadline, on either path (how much later it ends is a matter for a
    /// benchmark, not a test: the `timer` guest's row of `ftvm bench`).
    #[test]
    fn sleeps_end_at_or_after_their_deadline() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            for wait in [Duration::from_micros(1), Duration::from_micros(300), Duration::from_millis(3)] {
                let deadline = Instant::now() + wait;
                sleep_until(deadline).await;
                assert!(Instant::now() >= deadline, "{wait:?}");
            }
        });
    }
}
