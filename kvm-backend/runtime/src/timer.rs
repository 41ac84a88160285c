//! Sleeps with microsecond precision on the runtime thread. tokio's timers tick in whole milliseconds, so a
//! guest with a 1 ms timer that waited on them woke up to a millisecond late on every tick: the `timer` guest ran
//! at half speed without a backup (where nothing else woke the driver sooner). The last stretch of a sleep is a
//! `timerfd` (CLOCK_MONOTONIC, the clock `Instant` reads) registered with tokio's reactor.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

/// Sleeps longer than this sleep on tokio's timer until this close to the deadline, then on a timerfd.
const COARSE_MARGIN: Duration = Duration::from_millis(2);

/// Timerfds kept for reuse; more sleeps at once than this create and close their own.
const TIMERS_KEPT: usize = 8;

/// The timerfds of one host (one runtime) not in use: a sleep takes one and gives it back. Creating,
/// registering, deregistering and closing a timerfd for every sleep cost four system calls, tens of microseconds
/// on a nested host, on every turn of a driver that sleeps until its guest's next tick. The spares belong to the
/// host, not the thread, so that a spare is never registered with another runtime than the one polling it.
#[derive(Default)]
pub struct Timers {
    spares: RefCell<Vec<AsyncFd<OwnedFd>>>,
}

impl Timers {
    /// Sleeps until `deadline`.
    pub async fn sleep_until(&self, deadline: Instant) {
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
        if self.precise_sleep(remaining).await.is_err() {
            // No timerfd (out of descriptors, say): tokio's timer, late by up to a millisecond, is still a sleep.
            tokio::time::sleep_until(deadline.into()).await;
        }
    }

    async fn precise_sleep(&self, duration: Duration) -> std::io::Result<()> {
        let timer = self.take()?;
        timer.sleep(duration).await
    }

    fn take(&self) -> std::io::Result<Timer<'_>> {
        if let Some(fd) = self.spares.borrow_mut().pop() {
            return Ok(Timer { fd: Some(fd), timers: self });
        }
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new descriptor that we own.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd moves into the AsyncFd, which owns it until it is dropped: the descriptor stays
        // open, and `as_raw_fd` always returns the same one.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(Timer { fd: Some(fd), timers: self })
    }
}

/// A timerfd taken from the spares, given back when the sleep ends or is dropped. Re-arming it with
/// `timerfd_settime` clears the expirations a cancelled sleep left on it.
struct Timer<'a> {
    fd: Option<AsyncFd<OwnedFd>>,
    timers: &'a Timers,
}

impl Timer<'_> {
    /// Arms the timer for `duration` and waits until it expires.
    async fn sleep(&self, duration: Duration) -> std::io::Result<()> {
        let fd = self.fd.as_ref().expect("a timer holds its descriptor until dropped");
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: duration.as_secs() as libc::time_t,
                // A zero it_value would disarm the timer: at least a nanosecond.
                tv_nsec: libc::c_long::from(duration.subsec_nanos().max(1)),
            },
        };
        // SAFETY: `fd` is a timerfd we own; `spec` lives across the call; a null old value is allowed.
        if unsafe { libc::timerfd_settime(fd.get_ref().as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut ready = fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a buffer of 8 from a descriptor we own.
            let read = unsafe { libc::read(fd.get_ref().as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
            if read == 8 {
                return Ok(());
            }
            // Spurious readiness (EAGAIN), or readiness left from an earlier sleep on this descriptor: wait again.
            ready.clear_ready();
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        let mut spares = self.timers.spares.borrow_mut();
        if spares.len() < TIMERS_KEPT {
            spares.push(fd);
        }
    }
}

/// The wall clock of a host that runs the core on this thread without a deadline of its own to keep: ns since
/// it started, and sleeps that end at their deadline or after `look`, whichever is first, so that the host of a
/// `run_until` is asked at least that often whether it is done.
pub struct WallClock {
    start: Instant,
    look: Duration,
    timers: Timers,
}

impl WallClock {
    pub fn new(look: Duration) -> WallClock {
        WallClock { start: Instant::now(), look, timers: Timers::default() }
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
        self.timers.sleep_until(Instant::now() + wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    /// A sleep that is dropped after it armed its timer gives the timer back armed; the timer expires while
    /// spare, and the next sleep on it must still wait its whole time (re-arming clears the expiration).
    #[test]
    fn a_spare_left_armed_by_a_cancelled_sleep_does_not_end_the_next_sleep_early() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let timers = Timers::default();
        runtime.block_on(async {
            {
                let mut cancelled = std::pin::pin!(timers.precise_sleep(Duration::from_millis(1)));
                let mut context = std::task::Context::from_waker(std::task::Waker::noop());
                assert!(cancelled.as_mut().poll(&mut context).is_pending(), "armed, not yet expired");
            }
            assert_eq!(timers.spares.borrow().len(), 1, "the cancelled sleep gave its timer back");
            std::thread::sleep(Duration::from_millis(3));
            let deadline = Instant::now() + Duration::from_millis(2);
            timers.precise_sleep(Duration::from_millis(2)).await.expect("a timerfd sleep");
            assert!(Instant::now() >= deadline, "a stale expiration ended the sleep early");
            assert_eq!(timers.spares.borrow().len(), 1, "one timer, reused");
        });
    }

    /// A sleep never ends before its deadline, on either path (how much later it ends is a matter for a
    /// benchmark, not a test: the `timer` guest's row of `ftvm bench`).
    #[test]
    fn sleeps_end_at_or_after_their_deadline() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let timers = Timers::default();
        runtime.block_on(async {
            for wait in [Duration::from_micros(1), Duration::from_micros(300), Duration::from_millis(3)] {
                let deadline = Instant::now() + wait;
                timers.sleep_until(deadline).await;
                assert!(Instant::now() >= deadline, "{wait:?}");
            }
        });
    }
}
