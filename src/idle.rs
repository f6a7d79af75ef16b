//! What a polling loop does when a poll found nothing: spin, yield the core,
//! or sleep until rung. One policy for the agent's poll round and a client
//! waiting for the agent, so the two behave alike on a shared core.

use std::time::{Duration, Instant};

/// The next move of a loop whose last poll found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Poll again at once (`std::hint::spin_loop` between).
    Spin,
    /// Let another thread on this core run, then poll again.
    Yield,
    /// Announce sleep, look once more, then sleep until woken.
    Sleep,
}

/// Spin, then yield, then sleep, as polls keep finding nothing.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// How long to keep polling without work before sleeping.
    spin: Duration,
    /// Polls that spin before the loop starts yielding.
    hot: u32,
    idle_since: Instant,
    polls: u32,
}

impl Backoff {
    /// Poll for `spin` without work before sleeping; the first `hot` empty
    /// polls spin, the rest yield.
    pub fn new(spin: Duration, hot: u32, now: Instant) -> Backoff {
        Backoff {
            spin,
            hot,
            idle_since: now,
            polls: 0,
        }
    }

    /// Never sleep, never yield: a loop that owns its core.
    pub fn spinning(now: Instant) -> Backoff {
        Backoff::new(Duration::MAX, u32::MAX, now)
    }

    /// A poll found work (or the loop woke up): start over.
    pub fn busy(&mut self, now: Instant) {
        self.idle_since = now;
        self.polls = 0;
    }

    /// A poll found nothing: what to do next.
    pub fn idle(&mut self, now: Instant) -> Step {
        self.polls = self.polls.saturating_add(1);
        if now.saturating_duration_since(self.idle_since) > self.spin {
            Step::Sleep
        } else if self.polls <= self.hot {
            Step::Spin
        } else {
            Step::Yield
        }
    }

    /// Empty polls since the last work.
    pub fn polls(&self) -> u32 {
        self.polls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_then_yields_then_sleeps_and_starts_over_on_work() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let mut b = Backoff::new(us(100), 2, t0);
        assert_eq!(b.idle(t0), Step::Spin);
        assert_eq!(b.idle(t0 + us(10)), Step::Spin);
        assert_eq!(b.idle(t0 + us(20)), Step::Yield);
        assert_eq!(b.idle(t0 + us(100)), Step::Yield);
        assert_eq!(b.idle(t0 + us(101)), Step::Sleep);
        b.busy(t0 + us(200));
        assert_eq!(b.polls(), 0);
        assert_eq!(b.idle(t0 + us(250)), Step::Spin);
    }

    #[test]
    fn a_spinning_loop_never_sleeps() {
        let t0 = Instant::now();
        let mut b = Backoff::spinning(t0);
        for s in [0, 1, 1000, 1_000_000] {
            assert_eq!(b.idle(t0 + Duration::from_secs(s)), Step::Spin);
        }
    }
}
