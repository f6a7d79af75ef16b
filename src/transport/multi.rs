//! The hybrid transport: several back ends at once, each peer on one.
//!
//! Back end 0 is always TCP: every agent of a hybrid job runs it, and its
//! `Hello` says which transports the sender runs ([`Hello::caps`]) and on
//! which RDMA fabric ([`Hello::fabric`]). When the TCP link to a peer comes
//! up, both ends pick, from the same two `Hello`s, the same back end for
//! their link: verbs when both run it on the same fabric, else dpdk, else
//! udp, else TCP itself. The agent sees one link per peer, that back end's:
//! its `Up` once the chosen back end is up too, its frames, its `Down`s. A
//! broken TCP connection under a link carried elsewhere is the control
//! connection's business only (it is dialled again; the data link goes on).
//!
//! A peer can be kept on one transport (`peer_transports`): the `Hello` to
//! it then names only that one and TCP, so both ends choose it. And a peer
//! whose chosen back end is not up for `hybrid_fallback_ms` while its
//! control connection is (a fast link that cannot connect, or broke and
//! does not come back) falls back: that back end is struck from what this
//! agent offers the peer for the rest of the job, and the control
//! connection is dropped so that both ends exchange `Hello`s again and
//! choose anew — the next transport both run, down to TCP. After
//! `hybrid_retry_ms` the agent offers the struck transports again (the
//! same way: new `Hello`s on a new control connection), and the link moves
//! back if they come up; each try that fails again doubles the wait, up to
//! 16 times.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tcp::TcpTransport;
use super::{Close, Inflow, LinkEvent, LinkRx, LinkView, Out, Poller, Transport, TransportStats};
use crate::shm::Pool;
use crate::wire::{caps, Hello};

/// A back end's transport: TCP (back end 0, whose `Hello`s the hybrid
/// transport reads and writes) or another.
pub enum Back {
    /// The TCP transport.
    Tcp(Box<TcpTransport>),
    /// Any other.
    Other(Box<dyn Transport>),
}

impl Back {
    fn tcp(&self) -> Option<&TcpTransport> {
        match self {
            Back::Tcp(t) => Some(t),
            Back::Other(_) => None,
        }
    }

    fn tcp_mut(&mut self) -> Option<&mut TcpTransport> {
        match self {
            Back::Tcp(t) => Some(t),
            Back::Other(_) => None,
        }
    }
}

impl std::ops::Deref for Back {
    type Target = dyn Transport;
    fn deref(&self) -> &(dyn Transport + 'static) {
        match self {
            Back::Tcp(t) => &**t,
            Back::Other(b) => &**b,
        }
    }
}

impl std::ops::DerefMut for Back {
    fn deref_mut(&mut self) -> &mut (dyn Transport + 'static) {
        match self {
            Back::Tcp(t) => &mut **t,
            Back::Other(b) => &mut **b,
        }
    }
}

/// One back end and the poller view it registers its descriptors with.
pub struct Backend {
    /// The transport.
    pub transport: Back,
    /// Its view of the agent's poller ([`Poller::sub`] of its index).
    pub poller: Poller,
    /// Its [`caps`] bit.
    pub cap: u32,
}

/// Several transports, one per peer. See the module documentation.
pub struct Multi {
    backs: Vec<Backend>,
    pool: Arc<Pool>,
    /// Per node: the back end carrying its link.
    route: Vec<usize>,
    /// Per node: whether `route` was chosen (the peer's TCP `Hello` came).
    decided: Vec<bool>,
    fabric: u32,
    /// Per node: the transports this agent offers it (what the `Hello`s to
    /// it name: `caps` less a forced choice's others and the fallen back).
    offer: Vec<u32>,
    /// Per node: since when its chosen back end has not been up while its
    /// control connection was.
    waiting: Vec<Option<Instant>>,
    fallback: Fallback,
    fallbacks: u64,
    /// Per node: what it was offered before any fallback.
    full_offer: Vec<u32>,
    /// Per node: when to offer the struck transports again, and the wait
    /// that led there (doubled at the next fallback).
    retry: Vec<(Option<Instant>, Duration)>,
    retries: u64,
    moved_back: u64,
    /// Per node: the struck transports are offered again, not up yet.
    retrying: Vec<bool>,
    /// Blocks a back end returned for a link the agent does not see; handed
    /// to the agent with the next flush.
    orphans: Vec<u64>,
    scratch: Vec<LinkEvent>,
    /// Per back end, per node: the incoming stream of a link the agent does
    /// not read (a control connection under a link carried elsewhere, or a
    /// link not chosen yet). The chosen back end's stream of a node sits in
    /// the agent's [`Inflow`] instead; see [`Routed`].
    private: Vec<Vec<LinkRx>>,
    /// Per node: the back end whose stream is in the agent's.
    in_agent: Vec<Option<usize>>,
    /// Nodes whose chosen back end's stream is to be moved into the agent's
    /// at the next call that has it.
    to_place: Vec<u32>,
    /// Counter names, prefixed with their back end's ("udp.pkts_tx").
    names: RefCell<HashMap<(usize, &'static str), &'static str>>,
}

/// When a hybrid agent leaves a transport that stays down, and when it
/// tries it again.
#[derive(Clone, Copy, Debug)]
pub struct Fallback {
    /// A chosen transport not up this long (while the control connection
    /// is) is left for the next.
    pub after: Duration,
    /// The first wait before offering it again (`None`: never); doubled
    /// after each try that fails, up to 16 times.
    pub retry: Option<Duration>,
}

/// The order of preference: the first both ends run wins.
const PREFERENCE: [u32; 4] = [caps::VERBS, caps::DPDK, caps::UDP, caps::TCP];

/// What an agent offers a peer, from its `Hello`: the transports it runs with
/// that peer ([`caps`] bits) and its RDMA fabric ([`crate::wire::fabric_id`];
/// 0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// [`caps`] bits.
    pub caps: u32,
    /// RDMA fabric id, 0 for none.
    pub fabric: u32,
}

/// The transport two agents use between them, as a [`caps`] bit: the same
/// answer at both ends, since it only depends on the pair of `Hello`s.
pub fn choose(mine: Offer, theirs: Offer) -> u32 {
    let common = mine.caps & theirs.caps;
    for c in PREFERENCE {
        if common & c == 0 {
            continue;
        }
        if c == caps::VERBS && (mine.fabric == 0 || mine.fabric != theirs.fabric) {
            continue; // no common fabric
        }
        return c;
    }
    caps::TCP
}

impl Multi {
    /// Back ends, TCP first; `hello` is what this agent says (its caps);
    /// `forced`: per node, the [`caps`] bit of the back end to use with it,
    /// if the configuration says; `fallback`: see the module documentation.
    pub fn new(
        mut backs: Vec<Backend>,
        pool: Arc<Pool>,
        hello: &Hello,
        forced: &[Option<u32>],
        fallback: Fallback,
    ) -> Multi {
        assert!(
            backs
                .first()
                .is_some_and(|b| b.cap == caps::TCP && b.transport.tcp().is_some()),
            "back end 0 of a hybrid transport must be tcp"
        );
        log::info!(
            "hybrid transport: {}",
            backs
                .iter()
                .map(|b| format!("{} on {}", b.transport.name(None), b.transport.local_addr()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let nodes = forced.len();
        let offer: Vec<u32> = forced
            .iter()
            .map(|f| f.map_or(hello.caps, |c| (c | caps::TCP) & hello.caps))
            .collect();
        for (j, &o) in offer.iter().enumerate() {
            if o != hello.caps {
                if let Some(t) = backs[0].transport.tcp_mut() {
                    t.set_hello_caps(j as u32, o);
                }
            }
        }
        let n_backs = backs.len();
        Multi {
            backs,
            pool,
            route: vec![0; nodes],
            decided: vec![false; nodes],
            fabric: hello.fabric,
            full_offer: offer.clone(),
            offer,
            waiting: vec![None; nodes],
            fallback,
            fallbacks: 0,
            retry: vec![(None, Duration::ZERO); nodes],
            retries: 0,
            moved_back: 0,
            retrying: vec![false; nodes],
            orphans: Vec::new(),
            scratch: Vec::new(),
            private: (0..n_backs)
                .map(|_| (0..nodes).map(|_| LinkRx::default()).collect())
                .collect(),
            in_agent: vec![None; nodes],
            to_place: Vec::new(),
            names: RefCell::new(HashMap::new()),
        }
    }

    fn back(&self, node: u32) -> &dyn Transport {
        &*self.backs[self.route[node as usize]].transport
    }

    /// Back end `from` reported `self.scratch`: pass on what concerns the
    /// links the agent sees.
    fn sift(&mut self, from: usize, events: &mut Vec<LinkEvent>) {
        let mut evs = std::mem::take(&mut self.scratch);
        for ev in evs.drain(..) {
            match ev {
                LinkEvent::Up { node } => {
                    let j = node as usize;
                    if from == 0 {
                        let Some(h) = self.backs[0]
                            .transport
                            .tcp()
                            .and_then(|t| t.peer_hello(node))
                        else {
                            continue;
                        };
                        let mine = Offer {
                            caps: self.offer[j],
                            fabric: self.fabric,
                        };
                        let theirs = Offer {
                            caps: h.caps,
                            fabric: h.fabric,
                        };
                        let c = choose(mine, theirs);
                        let r = self.backs.iter().position(|b| b.cap == c).unwrap_or(0);
                        if self.decided[j] && self.route[j] != r {
                            log::warn!(
                                "node {node} now runs other transports: its link moves from {} to {}",
                                self.backs[self.route[j]].transport.name(None),
                                self.backs[r].transport.name(None)
                            );
                        } else if !self.decided[j] {
                            log::info!(
                                "node {node}: link on {}",
                                self.backs[r].transport.name(None)
                            );
                        }
                        let moved = !self.decided[j] || self.route[j] != r;
                        let old = self.route[j];
                        if self.decided[j] && old != r && old != 0 {
                            // The link it leaves carries nothing more.
                            let b = &mut self.backs[old];
                            let blocks = b.transport.close(&b.poller, node, Close::Now);
                            self.orphans.extend(blocks);
                        }
                        self.route[j] = r;
                        self.decided[j] = true;
                        // A new TCP connection is a new link when TCP carries
                        // the data; under another back end's link that is up
                        // already, only a first decision or a move is news.
                        if r == 0 || (moved && self.backs[r].transport.link(node).last_tx.is_some())
                        {
                            self.to_place.push(node);
                            events.push(LinkEvent::Up { node });
                        }
                    } else if self.decided[j] && self.route[j] == from {
                        if std::mem::take(&mut self.retrying[j]) {
                            self.moved_back += 1;
                            self.retry[j].1 = Duration::ZERO;
                            log::info!(
                                "node {node}: its link is back on {}",
                                self.backs[from].transport.name(None)
                            );
                        }
                        self.to_place.push(node);
                        events.push(LinkEvent::Up { node });
                    }
                }
                LinkEvent::Down {
                    node,
                    reason,
                    mut blocks,
                    closed,
                } => {
                    let j = node as usize;
                    if self.route[j] == from {
                        events.push(LinkEvent::Down {
                            node,
                            reason,
                            blocks,
                            closed,
                        });
                        continue;
                    }
                    // A link the agent does not use: the control connection
                    // under a link carried elsewhere, or a back end's own
                    // link to a peer routed to another one.
                    log::debug!(
                        "node {node}: {} link down ({reason}); its data goes by {}",
                        self.backs[from].transport.name(None),
                        self.backs[self.route[j]].transport.name(None)
                    );
                    if !closed {
                        let b = &mut self.backs[from];
                        blocks.extend(b.transport.close(&b.poller, node, Close::Now));
                    }
                    self.orphans.extend(blocks);
                }
                LinkEvent::Malformed { node, reason } => {
                    let j = node as usize;
                    if self.route[j] == from {
                        events.push(LinkEvent::Malformed { node, reason });
                        continue;
                    }
                    log::warn!(
                        "node {node}: {} link closed, the peer broke its protocol ({reason}); \
                         its data goes by {}",
                        self.backs[from].transport.name(None),
                        self.backs[self.route[j]].transport.name(None)
                    );
                    let b = &mut self.backs[from];
                    let blocks = b.transport.close(&b.poller, node, Close::Now);
                    self.orphans.extend(blocks);
                }
            }
        }
        self.scratch = evs;
    }

    /// Peers whose chosen back end stays down while their control
    /// connection is up: after `fallback`, strike that back end from what
    /// we offer them and drop the control connection (both ends then
    /// choose again from new `Hello`s).
    fn fall_back(&mut self, now: Instant) {
        for j in 0..self.route.len() {
            let r = self.route[j];
            let node = j as u32;
            let stuck = self.decided[j]
                && r != 0
                && self.backs[0].transport.link(node).last_tx.is_some()
                && self.backs[r].transport.link(node).last_tx.is_none();
            if !stuck {
                self.waiting[j] = None;
                continue;
            }
            let since = *self.waiting[j].get_or_insert(now);
            if now.duration_since(since) < self.fallback.after {
                continue;
            }
            self.waiting[j] = None;
            self.fallbacks += 1;
            self.retrying[j] = false;
            self.offer[j] &= !self.backs[r].cap;
            let again = self.fallback.retry.map(|first| {
                let wait = match self.retry[j].1 {
                    w if w.is_zero() => first,
                    w => (w * 2).min(first * 16),
                };
                self.retry[j] = (Some(now + wait), wait);
                format!("it tries it again in {wait:?}")
            });
            log::warn!(
                "node {node}: its {} link has not been up for {:?} while the control connection is; \
                 falling back (this agent no longer offers {} to it; {})",
                self.backs[r].transport.name(None),
                self.fallback.after,
                self.backs[r].transport.name(None),
                again.unwrap_or_else(|| "for the rest of the job".into())
            );
            self.decided[j] = false;
            let b = &mut self.backs[r];
            let blocks = b.transport.close(&b.poller, node, Close::Now);
            self.orphans.extend(blocks);
            let b = &mut self.backs[0];
            if let Some(t) = b.transport.tcp_mut() {
                t.set_hello_caps(node, self.offer[j]);
            }
            let blocks = b.transport.close(&b.poller, node, Close::Now);
            self.orphans.extend(blocks);
        }
    }

    /// Peers fallen back whose wait is over: offer them the struck
    /// transports again, and drop the control connection so that both ends
    /// choose anew from new `Hello`s (the session resumes over it).
    fn try_again(&mut self, now: Instant) {
        for j in 0..self.route.len() {
            let Some(at) = self.retry[j].0 else {
                continue;
            };
            if now < at {
                continue;
            }
            self.retry[j].0 = None;
            if self.offer[j] == self.full_offer[j] {
                continue;
            }
            self.retries += 1;
            self.retrying[j] = true;
            self.offer[j] = self.full_offer[j];
            let node = j as u32;
            log::info!(
                "node {node}: trying again the transports it fell back from (waited {:?})",
                self.retry[j].1
            );
            self.decided[j] = false;
            let b = &mut self.backs[0];
            if let Some(t) = b.transport.tcp_mut() {
                t.set_hello_caps(node, self.offer[j]);
            }
            let blocks = b.transport.close(&b.poller, node, Close::Now);
            self.orphans.extend(blocks);
        }
    }

    fn each(
        &mut self,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
        mut f: impl FnMut(&mut Backend, &mut dyn Inflow, &mut Vec<LinkEvent>) -> bool,
    ) -> bool {
        let mut any = false;
        for i in 0..self.backs.len() {
            any |= self.on(i, rx, events, &mut f);
        }
        any
    }

    /// Run `f` on back end `i` with a buffer for its link events and its
    /// view of the streams ([`Routed`]), then pass on what concerns the
    /// agent ([`Multi::sift`]) and move the streams of links the agent now
    /// reads into its `rx`.
    fn on<R>(
        &mut self,
        i: usize,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
        f: impl FnOnce(&mut Backend, &mut dyn Inflow, &mut Vec<LinkEvent>) -> R,
    ) -> R {
        let mut evs = std::mem::take(&mut self.scratch);
        let mut routed = Routed {
            agent: &mut *rx,
            private: &mut self.private[i],
            in_agent: &self.in_agent,
            me: i,
        };
        let r = f(&mut self.backs[i], &mut routed, &mut evs);
        self.scratch = evs;
        self.sift(i, events);
        self.place(rx);
        r
    }

    /// As [`Multi::on`], for a call that moves nothing into streams (a
    /// flush): streams are placed at the next call that has them.
    fn on_tx<R>(
        &mut self,
        i: usize,
        events: &mut Vec<LinkEvent>,
        f: impl FnOnce(&mut Backend, &mut Vec<LinkEvent>) -> R,
    ) -> R {
        let mut evs = std::mem::take(&mut self.scratch);
        let r = f(&mut self.backs[i], &mut evs);
        self.scratch = evs;
        self.sift(i, events);
        r
    }

    /// Put the chosen back end's stream of each node in `to_place` into the
    /// agent's (the one there before goes back to its back end).
    fn place(&mut self, rx: &mut dyn Inflow) {
        for node in std::mem::take(&mut self.to_place) {
            let j = node as usize;
            let r = self.route[j];
            if self.in_agent[j] == Some(r) {
                continue;
            }
            if let Some(old) = self.in_agent[j] {
                std::mem::swap(rx.link(node), &mut self.private[old][j]);
            }
            std::mem::swap(rx.link(node), &mut self.private[r][j]);
            self.in_agent[j] = Some(r);
        }
    }
}

/// What back end `me` of a hybrid transport sees as the streams: the
/// agent's for the nodes whose chosen back end it is, its own private ones
/// for the others.
struct Routed<'a> {
    agent: &'a mut dyn Inflow,
    private: &'a mut [LinkRx],
    in_agent: &'a [Option<usize>],
    me: usize,
}

impl Inflow for Routed<'_> {
    fn link(&mut self, node: u32) -> &mut LinkRx {
        if self.in_agent[node as usize] == Some(self.me) {
            self.agent.link(node)
        } else {
            &mut self.private[node as usize]
        }
    }
}

impl Transport for Multi {
    fn name(&self, node: Option<u32>) -> &'static str {
        match node {
            Some(n) => self.back(n).name(None),
            None => "hybrid",
        }
    }

    /// The node's address: its TCP listener's (the others say theirs in
    /// the log at start-up).
    fn local_addr(&self) -> String {
        self.backs[0].transport.local_addr()
    }

    fn on_ready(
        &mut self,
        sub: u32,
        _poller: &Poller,
        token: u32,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        let i = sub as usize;
        if i < self.backs.len() {
            self.on(i, rx, events, |b, rx, evs| {
                b.transport.on_ready(0, &b.poller, token, now, rx, evs)
            });
        }
    }

    fn tick(
        &mut self,
        _poller: &Poller,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        self.each(rx, events, |b, rx, evs| {
            b.transport.tick(&b.poller, now, rx, evs);
            false
        });
        // The agent flushes the links it uses; the control connections under
        // links carried elsewhere (their `Hello`s) are flushed here.
        for node in 0..self.route.len() as u32 {
            if self.route[node as usize] != 0 && self.backs[0].transport.link(node).queued > 0 {
                let mut freed = Vec::new();
                let pool = self.pool.clone();
                self.on_tx(0, events, |b, evs| {
                    b.transport.flush(node, &pool, &mut freed, evs)
                });
                self.orphans.append(&mut freed);
            }
        }
        self.fall_back(now);
        self.try_again(now);
    }

    fn poll(&mut self, now: Instant, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        self.each(rx, events, |b, rx, evs| b.transport.poll(now, rx, evs))
    }

    fn push(&mut self, node: u32, item: Out) {
        let r = self.route[node as usize];
        self.backs[r].transport.push(node, item)
    }

    fn flush(&mut self, node: u32, pool: &Pool, freed: &mut Vec<u64>, events: &mut Vec<LinkEvent>) {
        freed.append(&mut self.orphans);
        let r = self.route[node as usize];
        self.on_tx(r, events, |b, evs| {
            b.transport.flush(node, pool, freed, evs)
        });
    }

    fn link(&self, node: u32) -> LinkView {
        let l = self.back(node).link(node);
        LinkView {
            last_tx: l.last_tx.filter(|_| self.decided[node as usize]),
            queued: l.queued,
            packet: l.packet,
            held: l.held,
        }
    }

    fn stats(&self) -> TransportStats {
        // Every back end's facts (the first of each name); peers are
        // authenticated ("mac") only if every back end authenticates them.
        // Counters get their back end's name ("udp.packets_tx").
        let mut names = self.names.borrow_mut();
        let mut out = TransportStats {
            counters: vec![
                ("hybrid_fallbacks", self.fallbacks),
                ("hybrid_retries", self.retries),
                ("hybrid_moved_back", self.moved_back),
                (
                    "hybrid_fallen_back_peers",
                    self.offer
                        .iter()
                        .zip(&self.full_offer)
                        .filter(|(o, f)| o != f)
                        .count() as u64,
                ),
            ],
            info: Vec::new(),
        };
        let mut all_mac = true;
        for (i, b) in self.backs.iter().enumerate() {
            let st = b.transport.stats();
            for (k, v) in st.info {
                if k == "peer_auth" {
                    all_mac &= v == "mac";
                } else if !out.info.iter().any(|(o, _)| *o == k) {
                    out.info.push((k, v));
                }
            }
            for (name, v) in st.counters {
                // Leaked once per (back end, counter): a few dozen strings
                // for the agent's lifetime.
                let full = *names.entry((i, name)).or_insert_with(|| {
                    Box::leak(format!("{}.{name}", b.transport.name(None)).into_boxed_str())
                });
                out.counters.push((full, v));
            }
        }
        let auth = if all_mac { "mac" } else { "none" };
        out.info.push(("peer_auth", auth.to_string()));
        out
    }

    fn before_sleep(&mut self, _poller: &Poller) -> bool {
        // Woken by arriving data only if every back end can wake it.
        let mut wakes = true;
        for b in &mut self.backs {
            wakes &= b.transport.before_sleep(&b.poller);
        }
        wakes
    }

    fn close(&mut self, _poller: &Poller, node: u32, how: Close) -> Vec<u64> {
        let b = &mut self.backs[self.route[node as usize]];
        let mut blocks = b.transport.close(&b.poller, node, how);
        blocks.append(&mut self.orphans);
        blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_choose_the_same_transport() {
        let all = caps::TCP | caps::UDP | caps::DPDK | caps::VERBS;
        let cases = [
            ((all, 7), (all, 7), caps::VERBS),
            // Verbs on different fabrics (or none) is no common fabric.
            ((all, 7), (all, 8), caps::DPDK),
            ((all, 0), (all, 0), caps::DPDK),
            ((caps::TCP | caps::VERBS, 7), (all, 7), caps::VERBS),
            ((caps::TCP | caps::UDP, 0), (all, 7), caps::UDP),
            ((caps::TCP, 0), (all, 7), caps::TCP),
            // An old or odd peer that names nothing: tcp.
            ((all, 7), (0, 0), caps::TCP),
        ];
        for ((ca, fa), (cb, fb), want) in cases {
            let a = Offer {
                caps: ca,
                fabric: fa,
            };
            let b = Offer {
                caps: cb,
                fabric: fb,
            };
            assert_eq!(choose(a, b), want, "{a:?} with {b:?}");
            assert_eq!(choose(b, a), want, "{b:?} with {a:?}");
        }
    }
}
