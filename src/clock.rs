//! The agent's clock: the real one, or, for the in-process simulation
//! (feature `testing`), a virtual one that only moves when the simulation
//! moves it. The agent reads it once per poll round (and after a sleep);
//! everything below the agent takes time as `now`.

use std::time::Instant;

#[cfg(feature = "testing")]
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};
#[cfg(feature = "testing")]
use std::time::Duration;

/// Where the agent's time comes from.
#[derive(Clone, Default)]
pub enum Clock {
    /// [`Instant::now`].
    #[default]
    Real,
    /// A simulation's time.
    #[cfg(feature = "testing")]
    Virtual(VirtualClock),
}

impl Clock {
    /// The time now.
    #[inline]
    pub fn now(&self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            #[cfg(feature = "testing")]
            Clock::Virtual(v) => v.now(),
        }
    }
}

/// Time that passes only when [`VirtualClock::advance`] says so; clones
/// share it.
#[cfg(feature = "testing")]
#[derive(Clone)]
pub struct VirtualClock {
    start: Instant,
    ns: Arc<AtomicU64>,
}

#[cfg(feature = "testing")]
impl Default for VirtualClock {
    fn default() -> Self {
        VirtualClock::new()
    }
}

#[cfg(feature = "testing")]
impl VirtualClock {
    /// A clock at the real time now, standing still.
    pub fn new() -> VirtualClock {
        VirtualClock {
            start: Instant::now(),
            ns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    /// Virtual time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.ns.load(Ordering::Acquire))
    }

    /// Move time on by `d`.
    pub fn advance(&self, d: Duration) {
        self.ns.fetch_add(d.as_nanos() as u64, Ordering::AcqRel);
    }

    /// Move time on to `t` (nothing when `t` is not later).
    pub fn advance_to(&self, t: Instant) {
        let ns = t.saturating_duration_since(self.start).as_nanos() as u64;
        self.ns.fetch_max(ns, Ordering::AcqRel);
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_moves_only_when_told_and_never_back() {
        let c = VirtualClock::new();
        let t0 = c.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.now(), t0, "virtual time moved by itself");
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now() - t0, Duration::from_secs(5));
        c.advance_to(t0 + Duration::from_secs(1));
        assert_eq!(c.now() - t0, Duration::from_secs(5), "advance_to went back");
        let shared = c.clone();
        shared.advance_to(t0 + Duration::from_secs(7));
        assert_eq!(Clock::Virtual(c).now() - t0, Duration::from_secs(7));
    }
}
