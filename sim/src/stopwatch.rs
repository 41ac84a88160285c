//! The simulator's only wall clock. It measures how fast scenarios run (`ftsim bench`) and time-boxes a sweep
//! between seeds; it never feeds a scenario, whose time is turmoil's simulated time, so results stay a pure
//! function of the seed.

/// Wall-clock time elapsed since `start`.
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch(std::time::Instant::now())
    }

    pub fn elapsed_s(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}
