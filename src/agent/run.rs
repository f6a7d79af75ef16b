//! The run loop: one poll round after another (see the module docs of
//! [`super`]), the idle policy between them, readiness events, link events
//! and shutdown.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::epoll::{EpollEvent, EpollTimeout};

use crate::idle::{Backoff, Step};
use crate::proto::Submit;
use crate::shm::blocks::Owner;
use crate::shm::{announce_awake, announce_sleep};
use crate::transport::{Close, LinkEvent, Out};
use crate::wire::{control_frame, FrameKind};

use super::conns::{T_BELL, T_CTL_CONN, T_CTL_LISTEN, T_DOORBELL};
use super::{Agent, IdlePolicy, MAX_SLEEP, TICK};

/// Longest sleep of an adaptive agent whose transport must be polled (no
/// descriptor to wake it when packets arrive).
const POLL_MODE_SLEEP: Duration = Duration::from_millis(1);
/// At most one heap trim ([`crate::shm::release_free_heap`]) this often.
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(5);

/// A link's read buffer shrinks back to a small one after this long without
/// a byte from its peer ([`crate::transport::LinkRx::release_idle`]). Not
/// shorter: on a loaded host a busy peer is often silent for tens of
/// milliseconds, and a buffer that shrank at 20 ms was grown back (to 16 MiB,
/// zeroed and page-faulted) several times a second: 80 % of the agents'
/// page faults in the node-level exchange.
const RX_IDLE: Duration = Duration::from_secs(1);

/// How often a spinning agent looks whether its core is shared.
const SHARED_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Preemptions in [`SHARED_CHECK_EVERY`] that say the core is shared (a core
/// of its own sees a kernel thread now and then, not this many).
const SHARED_PREEMPTIONS: u64 = 5;
/// Empty polls a spinning agent on a shared core spins before each yield.
const SHARED_HOT_POLLS: u32 = 64;

/// What the run loop keeps from one round to the next.
pub struct Rounds {
    events: Vec<EpollEvent>,
    next_tick: Instant,
    /// `None`: never sleep, never yield (a simulation drives the rounds).
    backoff: Option<Backoff>,
    /// The spin policy's check of a shared core: when next, and the
    /// polling thread's involuntary context switches then.
    shared_check: Option<(Instant, u64)>,
}

impl Agent {
    /// Run until the stop flag is set.
    pub fn run(&mut self) {
        // One clock read per round: the end of the previous round stands for
        // the start of this one.
        self.now = self.clock.now();
        let backoff = match self.cfg.idle {
            IdlePolicy::Adaptive => {
                Backoff::new(Duration::from_micros(self.cfg.spin_us), 0, self.now)
            }
            IdlePolicy::Spin => Backoff::spinning(self.now),
        };
        let shared_check = (self.cfg.idle == IdlePolicy::Spin)
            .then(|| (self.now + SHARED_CHECK_EVERY, preemptions()));
        let mut r = Rounds {
            events: vec![EpollEvent::empty(); 64],
            next_tick: self.now,
            backoff: Some(backoff),
            shared_check,
        };
        while !self.stop.load(Ordering::Relaxed) {
            self.round(&mut r);
        }
        self.shutdown();
    }

    /// Rounds for a simulation to drive with [`Agent::sim_round`]: never
    /// sleeping, the clock read from the agent's [`Clock`](crate::clock::Clock).
    #[cfg(feature = "testing")]
    pub fn sim_rounds(&mut self) -> Rounds {
        self.now = self.clock.now();
        Rounds {
            events: vec![EpollEvent::empty(); 64],
            next_tick: self.now,
            backoff: None,
            shared_check: None,
        }
    }

    /// One poll round of a simulation (see [`Agent::sim_rounds`]); returns
    /// whether it found work.
    #[cfg(feature = "testing")]
    pub fn sim_round(&mut self, r: &mut Rounds) -> bool {
        self.now = self.clock.now();
        self.round(r)
    }

    /// Whether a simulated agent has anything to do that the simulation
    /// cannot see from outside (its tick is due, a client submitted), and
    /// when its next tick is: a simulation of thousands of agents runs only
    /// those with something due (and those with packets, ready descriptors,
    /// or work last round).
    #[cfg(feature = "testing")]
    pub fn sim_due(&mut self, r: &Rounds) -> (bool, Instant) {
        let me = self.cfg.node_id;
        let peers = self.peers.len();
        let remote = |s: &Submit| s.dst_node != me && (s.dst_node as usize) < peers;
        let due = self.clock.now() >= r.next_tick || self.clients.any_work(remote);
        (due, r.next_tick)
    }

    /// One poll round; returns whether it found work.
    fn round(&mut self, r: &mut Rounds) -> bool {
        self.counters.rounds += 1;
        if self.damage.pending() {
            self.pool_damage();
        }
        // Which sources found work, one bit each (BUSY_SOURCES).
        let mut why = self.poll_clients() as u8;
        why |= (self.flush_peers() as u8) << 1;
        self.link_events();
        why |= (self
            .transport
            .poll(self.now, &mut self.inflow, &mut self.events) as u8)
            << 2;
        self.link_events();
        let mut work = why != 0;
        let step = match r.backoff.as_mut() {
            Some(b) => (!work).then(|| b.idle(self.now)),
            None => None,
        };
        let n = match step {
            Some(Step::Sleep) => {
                let n = self.sleep(&mut r.events, r.next_tick);
                if let Some(b) = r.backoff.as_mut() {
                    b.busy(self.now);
                }
                n
            }
            Some(Step::Yield) | Some(Step::Spin) | None => {
                if step == Some(Step::Yield) {
                    // Polling without work: let a client sharing this core
                    // run (returns at once when nothing else is runnable).
                    std::thread::yield_now();
                }
                if !work || self.counters.rounds % 4 == 0 {
                    self.poller
                        .epoll()
                        .wait(&mut r.events, EpollTimeout::ZERO)
                        .unwrap_or(0)
                } else {
                    // Busy with clients: look at the sockets every 4th
                    // round only (a system call each round would cost
                    // more than it finds).
                    0
                }
            }
        };
        for ev in &r.events[..n] {
            why |= self.on_event(ev.data());
        }
        why |= (self.drain_parked() as u8) << 4;
        why |= (self.process_rx() as u8) << 5;
        work |= why != 0;
        if why != 0 {
            let mut bits = why;
            while bits != 0 {
                self.counters.busy[bits.trailing_zeros() as usize] += 1;
                bits &= bits - 1;
            }
        }
        self.now = self.clock.now();
        let now = self.now;
        if now >= r.next_tick {
            self.transport
                .tick(&self.poller, now, &mut self.inflow, &mut self.events);
            self.expire_orphans(now);
            // Each link's share of what unread streams may hold together.
            let up = self
                .peers
                .active()
                .filter(|p| p.state().connected())
                .count();
            let share = crate::transport::RX_BUFFERS_MAX / up.max(1);
            let released: usize = self
                .inflow
                .iter_mut()
                .map(|rx| {
                    rx.set_high_water(share);
                    rx.release_idle(now, RX_IDLE)
                })
                .sum();
            if released > 0 {
                // Hand the idle links' read buffers back on the next sleep.
                self.heap_dirty = true;
            }
            self.link_events();
            self.peer_timers(now);
            self.expire_conns(now);
            self.check_shared_core(r, now);
            r.next_tick = now + TICK;
        }
        self.clients.wake(&self.pool);
        if work {
            if let Some(b) = r.backoff.as_mut() {
                b.busy(now);
            }
        }
        work
    }

    /// A spinning agent whose thread keeps being preempted shares its core
    /// with other work (more spinning processes than cores): a client on that
    /// core then waits for the scheduler's time slice, milliseconds per hop.
    /// Say so once, count it, and from then on yield the core after a few
    /// empty polls (never sleep: still a spinning agent).
    fn check_shared_core(&mut self, r: &mut Rounds, now: Instant) {
        let Some((at, before)) = r.shared_check else {
            return;
        };
        if now < at {
            return;
        }
        let n = preemptions();
        let d = n.saturating_sub(before);
        self.counters.preempted += d;
        r.shared_check = Some((now + SHARED_CHECK_EVERY, n));
        if d >= SHARED_PREEMPTIONS && !self.counters.spin_shared {
            self.counters.spin_shared = true;
            self.degraded.note(
                "spin_shared",
                format!(
                    "idle policy 'spin': the polling thread was preempted {d} times in a second, \
                     so its core is shared with other work; it now yields the core after \
                     {SHARED_HOT_POLLS} empty polls"
                ),
                "give the agent a core of its own (--cores N on an isolated core), or --idle adaptive",
            );
            r.backoff = Some(Backoff::new(Duration::MAX, SHARED_HOT_POLLS, now));
        }
    }

    /// Sleep until something is ready, a client rings, or the next tick;
    /// returns the number of events (the clock is read again after).
    fn sleep(&mut self, events: &mut [EpollEvent], next_tick: Instant) -> usize {
        announce_sleep(self.pool.agent_sleeping());
        // Dekker: after announcing sleep, look once more, so a client that
        // published just before reading our word is not missed.
        let pending = self.any_client_work();
        let timeout = if pending {
            EpollTimeout::ZERO
        } else {
            // Arm what wakes us; a poll-mode device that cannot: 1 ms at most.
            let cap = if self.transport.before_sleep(&self.poller) {
                MAX_SLEEP
            } else {
                POLL_MODE_SLEEP
            };
            let until_tick = next_tick.saturating_duration_since(self.now).min(cap);
            // epoll counts whole milliseconds: round up, or a sleep that ends
            // short of the tick is followed by zero-length ones (one per spin)
            // until the tick passes (~5 wake-ups per tick instead of one).
            let ms = until_tick.as_micros().div_ceil(1000) as u64;
            if self.heap_dirty && self.now >= self.trim_after {
                // Idle after clients left: hand their heap back.
                crate::shm::release_free_heap();
                self.heap_dirty = false;
                self.trim_after = self.now + HEAP_TRIM_EVERY;
            }
            EpollTimeout::try_from(Duration::from_millis(ms)).unwrap_or(EpollTimeout::ZERO)
        };
        let n = self.poller.epoll().wait(events, timeout).unwrap_or(0);
        announce_awake(self.pool.agent_sleeping());
        self.counters.sleeps += 1;
        self.now = self.clock.now();
        n
    }

    /// Whether anything waits that a sleep would delay: a client's
    /// submissions, or a frame held back by `flush_delay_us` (it must go out
    /// within that bound, not after a sleep).
    ///
    /// Not urgent (the next tick, at most [`TICK`] away, retries them): a
    /// departed client (its published submissions are taken in the rounds
    /// that follow its departure, and what waits on a peer can wait); a
    /// submission stalled on a remote peer (the link is down or full:
    /// spinning would not bring it back); a client waiting for its large
    /// send to be queued, or for room in its completion ring (it may never
    /// read). Counting those kept an adaptive agent at 100 % CPU for as long
    /// as the peer was down or the client was stuck, or forever for a dead one.
    fn any_client_work(&mut self) -> bool {
        let me = self.cfg.node_id;
        let peers = self.peers.len();
        let remote = |s: &Submit| s.dst_node != me && (s.dst_node as usize) < peers;
        self.peers.active().any(|p| p.batch_since.is_some()) || self.clients.any_work(remote)
    }

    /// A descriptor of ours is ready; returns the [`BUSY_SOURCES`] bit it
    /// counts under: a peer link's (`events`) or the control socket's and
    /// the clients' bells (`control`).
    ///
    /// [`BUSY_SOURCES`]: super::BUSY_SOURCES
    fn on_event(&mut self, t: u64) -> u8 {
        if let Some((sub, token)) = self.poller.owns(t) {
            self.transport.on_ready(
                sub,
                &self.poller,
                token,
                self.now,
                &mut self.inflow,
                &mut self.events,
            );
            self.link_events();
            return 1 << 3;
        }
        let (kind, idx) = (t >> 32, (t & 0xFFFF_FFFF) as usize);
        match kind {
            T_CTL_LISTEN => self.accept_control(),
            T_CTL_CONN => self.serve_control(idx),
            T_DOORBELL => {
                let _ = self.doorbell.read();
            }
            T_BELL => self.drain_bell(idx),
            _ => {}
        }
        1 << 6
    }

    /// Act on what the transport reported.
    fn link_events(&mut self) {
        while !self.events.is_empty() {
            for ev in std::mem::take(&mut self.events) {
                self.link_event(ev);
            }
        }
    }

    fn link_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up { node } => self.peer_up(node as usize),
            LinkEvent::Down {
                node,
                reason,
                blocks,
                closed,
            } => {
                for b in blocks {
                    self.blocks.free(b, Owner::Agent);
                }
                let j = node as usize;
                if !closed {
                    // Deliver what arrived before the failure.
                    self.process_peer(j);
                    for b in self.transport.close(&self.poller, node, Close::Now) {
                        self.blocks.free(b, Owner::Agent);
                    }
                }
                if self.peers[j].state().connected() && self.peers[j].idle.bye_sent.is_some() {
                    // We said the link is idle: the peer closing its end
                    // (before its answer reached us) is the close we asked for.
                    self.idle_close(j);
                } else {
                    self.peer_disconnected(j, reason);
                }
            }
            LinkEvent::Malformed { node, reason } => {
                // As a malformed frame (rx.rs): counted, the peer lost.
                let j = node as usize;
                if j < self.peers.len() {
                    self.peers[j].counters.malformed += 1;
                    self.peer_lost(j, &reason, true);
                }
            }
        }
    }

    fn shutdown(&mut self) {
        log::info!("agent stopping: saying goodbye to peers");
        let bye = control_frame(FrameKind::Bye, self.cfg.node_id, &[]);
        for j in 0..self.peers.len() as u32 {
            if self.transport.link(j).last_tx.is_none() {
                continue;
            }
            self.transport.push(j, Out::bytes(bye.clone()));
            let deadline = Instant::now() + Duration::from_millis(200);
            while self.transport.link(j).queued > 0 && Instant::now() < deadline {
                self.transport
                    .flush(j, &self.pool, &mut self.freed, &mut self.events);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
    }
}

/// Involuntary context switches of the calling thread so far.
fn preemptions() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0, |u| u.involuntary_context_switches() as u64)
}
