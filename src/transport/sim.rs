//! A simulated packet network in memory, in virtual time (feature
//! `testing`): the [`PacketIo`] of the in-process agent simulation
//! (`tests/sim.rs`). It stands for no real device: it is the "network" of
//! a simulation whose agents are real (their rooms, sessions, reliability
//! layer and clients' shared memory), so that what takes seconds of timers
//! (heartbeats, a lost peer, a partition) runs in milliseconds, seeded.
//!
//! Every packet sent gets a delivery time: the link's delay, plus, for a
//! packet the impairment holds back, a random extra of up to
//! [`Impair::hold_max`] (later packets overtake it). Packets may be dropped,
//! duplicated or corrupted (one byte flipped), each with its probability,
//! from one seeded generator, and every pair of nodes can be cut and healed.
//! A packet longer than its receiver's device takes is dropped when it comes.
//! [`SimNet::deliver_due`] moves packets whose time has come to their
//! node's receive queue; [`SimNet::next_due`] says when the next one comes,
//! so a driver can jump virtual time over idle stretches.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::datagram::PacketIo;
use super::Poller;
use crate::clock::VirtualClock;

/// What the network does to packets (probabilities in 0..=1).
#[derive(Clone, Copy, Debug)]
pub struct Impair {
    /// Dropped.
    pub loss: f64,
    /// Held back (delivered up to `hold_max` later, behind later packets).
    pub reorder: f64,
    /// Delivered twice.
    pub dup: f64,
    /// One byte flipped.
    pub corrupt: f64,
    /// One-way delay of every packet.
    pub delay: Duration,
    /// Longest extra delay of a held-back packet.
    pub hold_max: Duration,
}

impl Impair {
    /// A clean network with a 20 µs one-way delay.
    pub fn clean() -> Impair {
        Impair {
            loss: 0.0,
            reorder: 0.0,
            dup: 0.0,
            corrupt: 0.0,
            delay: Duration::from_micros(20),
            hold_max: Duration::from_millis(2),
        }
    }
}

/// What the network did, in packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Handed to the network.
    pub sent: u64,
    /// Put in a receive queue.
    pub delivered: u64,
    /// Dropped by the impairment.
    pub dropped: u64,
    /// Dropped because the pair was cut.
    pub cut: u64,
    /// Held back.
    pub held: u64,
    /// Duplicated.
    pub duplicated: u64,
    /// Corrupted.
    pub corrupted: u64,
    /// Longer than the receiving device's largest packet: dropped when it
    /// came, as a NIC or an interface drops a frame beyond its MTU.
    pub oversize: u64,
}

/// A packet on its way.
struct InFlight {
    at: Instant,
    /// Order of sending, to keep equal times in order (and the heap total).
    seq: u64,
    src: u32,
    dst: u32,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Net {
    clock: VirtualClock,
    impair: Impair,
    rng: u64,
    seq: u64,
    /// `cut[(a, b)]`: nothing passes from a to b before that time (sparse:
    /// 4,096 nodes would make a dense table of 16.7 M entries).
    cut: HashMap<(u32, u32), Instant>,
    nodes: usize,
    flight: BinaryHeap<InFlight>,
    /// Per node: packets that arrived, with their sender.
    queues: Vec<VecDeque<(u32, Vec<u8>)>>,
    stats: NetStats,
}

impl Net {
    /// xorshift64*: fast, seeded, good enough to draw impairments.
    fn draw(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn is_cut(&self, src: u32, dst: u32) -> bool {
        !self.cut.is_empty()
            && self
                .cut
                .get(&(src, dst))
                .is_some_and(|&t| self.clock.now() < t)
    }

    fn send(&mut self, src: u32, dst: u32, mut bytes: Vec<u8>) {
        self.stats.sent += 1;
        let n = self.nodes;
        if dst as usize >= n || self.is_cut(src, dst) {
            self.stats.cut += 1;
            return;
        }
        let im = self.impair;
        if self.draw() < im.loss {
            self.stats.dropped += 1;
            return;
        }
        if !bytes.is_empty() && self.draw() < im.corrupt {
            let i = (self.draw() * bytes.len() as f64) as usize % bytes.len();
            bytes[i] ^= 0x5a;
            self.stats.corrupted += 1;
        }
        let now = self.clock.now();
        let copies = if self.draw() < im.dup {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for c in 0..copies {
            let mut at = now + im.delay;
            if self.draw() < im.reorder {
                self.stats.held += 1;
                at += im.hold_max.mul_f64(self.draw());
            }
            self.seq += 1;
            let bytes = if c + 1 < copies {
                bytes.clone()
            } else {
                std::mem::take(&mut bytes)
            };
            self.flight.push(InFlight {
                at,
                seq: self.seq,
                src,
                dst,
                bytes,
            });
        }
    }
}

/// The network the simulated agents share (clones share it).
#[derive(Clone)]
pub struct SimNet(Arc<Mutex<Net>>);

impl SimNet {
    /// A network of `nodes` nodes on `clock`, impairing with `impair`,
    /// drawing from `seed`.
    pub fn new(nodes: usize, clock: VirtualClock, impair: Impair, seed: u64) -> SimNet {
        SimNet(Arc::new(Mutex::new(Net {
            clock,
            impair,
            rng: seed | 1,
            seq: 0,
            cut: HashMap::new(),
            nodes,
            flight: BinaryHeap::new(),
            queues: (0..nodes).map(|_| VecDeque::new()).collect(),
            stats: NetStats::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        // A test that panicked while holding it poisons nothing we rely on.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `me`'s device.
    pub fn io(&self, me: u32, max_packet: usize) -> SimIo {
        SimIo {
            net: self.clone(),
            me,
            max_packet,
            from: None,
        }
    }

    /// Change what the network does from now on.
    pub fn set_impair(&self, impair: Impair) {
        self.lock().impair = impair;
    }

    /// Cut (or heal) both directions between `a` and `b`.
    pub fn set_cut(&self, a: u32, b: u32, cut: bool) {
        let far = self.lock().clock.now() + Duration::from_secs(1 << 30);
        self.cut_until(a, b, cut.then_some(far));
    }

    /// Cut both directions between `a` and `b` for `d` of virtual time
    /// from now (healed at that instant, however the test's own thread is
    /// scheduled).
    pub fn cut_for(&self, a: u32, b: u32, d: Duration) {
        let until = self.lock().clock.now() + d;
        self.cut_until(a, b, Some(until));
    }

    fn cut_until(&self, a: u32, b: u32, until: Option<Instant>) {
        let mut n = self.lock();
        for k in [(a, b), (b, a)] {
            match until {
                Some(t) => n.cut.insert(k, t),
                None => n.cut.remove(&k),
            };
        }
    }

    /// Move packets due by the clock's time into their receive queues;
    /// returns how many.
    pub fn deliver_due(&self) -> usize {
        let mut n = self.lock();
        let now = n.clock.now();
        let mut moved = 0;
        while n.flight.peek().is_some_and(|p| p.at <= now) {
            let p = n.flight.pop().expect("peeked");
            let (src, dst) = (p.src, p.dst);
            if n.is_cut(src, dst) {
                // Cut while it was on its way.
                n.stats.cut += 1;
                continue;
            }
            n.queues[dst as usize].push_back((src, p.bytes));
            n.stats.delivered += 1;
            moved += 1;
        }
        moved
    }

    /// When the next packet on its way arrives.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock().flight.peek().map(|p| p.at)
    }

    /// Call `f` with every node that has packets waiting in its receive queue.
    pub fn each_queued(&self, mut f: impl FnMut(usize)) {
        let n = self.lock();
        for (i, q) in n.queues.iter().enumerate() {
            if !q.is_empty() {
                f(i);
            }
        }
    }

    /// Packets waiting in receive queues.
    pub fn queued(&self) -> usize {
        self.lock().queues.iter().map(|q| q.len()).sum()
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }
}

/// A node's device on a [`SimNet`].
pub struct SimIo {
    net: SimNet,
    me: u32,
    max_packet: usize,
    from: Option<u32>,
}

/// A packet [`SimIo`] received.
pub struct SimRx(Vec<u8>);

impl std::ops::Deref for SimRx {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl PacketIo for SimIo {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn local_addr(&self) -> String {
        format!("sim:{}", self.me)
    }

    fn max_packet(&self) -> usize {
        self.max_packet
    }

    fn send_with<F: FnOnce(&mut [u8])>(
        &mut self,
        node: u32,
        len: usize,
        fill: F,
    ) -> io::Result<bool> {
        let mut buf = vec![0; len];
        fill(&mut buf);
        self.net.lock().send(self.me, node, buf);
        Ok(true)
    }

    type Rx = SimRx;

    fn recv(&mut self) -> io::Result<Option<SimRx>> {
        let mut net = self.net.lock();
        while let Some((src, bytes)) = net.queues[self.me as usize].pop_front() {
            if bytes.len() > self.max_packet {
                net.stats.oversize += 1;
                continue;
            }
            self.from = Some(src);
            return Ok(Some(SimRx(bytes)));
        }
        Ok(None)
    }

    fn learn(&mut self, _node: u32) {
        // Every node is reachable by its number.
    }

    fn register(&mut self, _poller: &Poller, _token: u32) -> io::Result<()> {
        Ok(())
    }

    fn poll_mode(&self) -> bool {
        true
    }

    fn agent_sleeps(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv_all(io: &mut SimIo) -> Vec<Vec<u8>> {
        let mut v = vec![];
        while let Some(p) = io.recv().unwrap() {
            v.push(p.to_vec());
        }
        v
    }

    #[test]
    fn packets_arrive_after_the_delay_and_not_before() {
        let clock = VirtualClock::new();
        let net = SimNet::new(2, clock.clone(), Impair::clean(), 1);
        let (mut a, mut b) = (net.io(0, 1500), net.io(1, 1500));
        a.send(1, b"one").unwrap();
        a.send(1, b"two").unwrap();
        assert_eq!(net.deliver_due(), 0);
        assert!(recv_all(&mut b).is_empty());
        assert_eq!(
            net.next_due(),
            Some(clock.now() + Duration::from_micros(20))
        );
        clock.advance(Duration::from_micros(20));
        assert_eq!(net.deliver_due(), 2);
        assert_eq!(recv_all(&mut b), vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(
            recv_all(&mut a).is_empty(),
            "a packet came back to its sender"
        );
    }

    #[test]
    fn impairments_happen_at_their_rates_and_a_cut_passes_nothing() {
        let clock = VirtualClock::new();
        let im = Impair {
            loss: 0.1,
            reorder: 0.25,
            dup: 0.05,
            corrupt: 0.02,
            ..Impair::clean()
        };
        let net = SimNet::new(2, clock.clone(), im, 7);
        let (mut a, mut b) = (net.io(0, 1500), net.io(1, 1500));
        let n = 20_000u32;
        for i in 0..n {
            a.send(1, &i.to_le_bytes()).unwrap();
        }
        clock.advance(Duration::from_millis(3));
        net.deliver_due();
        let got = recv_all(&mut b);
        let s = net.stats();
        let near = |x: u64, p: f64| (x as f64 - p * n as f64).abs() < 0.2 * p * n as f64;
        assert!(near(s.dropped, 0.1), "{s:?}");
        assert!(near(s.corrupted, 0.02 * 0.9), "{s:?}");
        assert_eq!(got.len() as u64, s.delivered);
        assert_eq!(s.delivered, n as u64 - s.dropped + s.duplicated);
        let out_of_order = got.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(out_of_order > 1000, "{out_of_order} out of order");
        // The same seed draws the same network.
        let net2 = SimNet::new(2, VirtualClock::new(), im, 7);
        let mut a2 = net2.io(0, 1500);
        for i in 0..n {
            a2.send(1, &i.to_le_bytes()).unwrap();
        }
        assert_eq!(net2.stats(), NetStats { delivered: 0, ..s });

        net.set_cut(0, 1, true);
        b.send(0, b"x").unwrap();
        clock.advance(Duration::from_millis(3));
        net.deliver_due();
        assert!(recv_all(&mut a).is_empty());
        assert_eq!(net.stats().cut, 1);
    }
}
