//! [`Rails`]: several DPDK ports ("rails") to the same peers, under one reliable
//! session per peer. A [`PacketIo`] made of one [`DpdkIo`] per port: the datagram
//! layer above it does not know there are several; its reliability layer
//! ([`crate::wire::reliable`]) numbers every packet and delivers in sequence order,
//! so packets of one session may take different rails and still arrive in order, and
//! a packet lost on a rail that fails is resent like any lost packet.
//!
//! # Which rail a packet takes
//! - **Large packets** (at least half the largest packet: the pieces of large messages
//!   and full frames of small ones) are striped over the rails that are up for the
//!   node, [`STRIPE_RUN`] packets on one rail, then the next; each run is handed to
//!   the driver when it ends, before the next run starts (else a run waiting in its
//!   rail's queue would be overtaken by the ones after it). A rail whose send queue
//!   is full passes the packet to the next.
//! - **Small packets** (acks, control, small messages) to node N go on N's *home*
//!   rail, N mod the number of rails (of the rails on the agent's NUMA node, when
//!   only some are; the next rail up if that one is down), so
//!   small traffic is not reordered; except that at most one small packet per
//!   [`PROBE_EVERY`] goes on each other rail whose port is up, the one least
//!   recently sent on first (to a rail that is down for N only a packet without
//!   payload, an ack or a probe, whose loss costs nothing): so each side hears the
//!   other on every rail now and then, even when only small messages flow, which
//!   is what tells a dead rail from an idle one.
//!
//! # Receiving
//! Every rail is read; of the packets waiting at the heads of the rails' receive
//! queues, one that is not a data packet goes first, and of data packets from one
//! node the one with the lowest sequence number: each rail keeps the order it was
//! sent in, so this merges a striped stream back into sequence order whenever each
//! rail has its next packet there (a packet that overtook one still on the way is
//! kept in the reliability layer's reorder buffer, one copy more).
//!
//! # Rail health
//! A rail is down for node N when its port says its link is down (looked at every
//! [`LINK_CHECK`]), or when N was heard on other rails for [`DOWN_AFTER`] and
//! [`DOWN_COUNT`] packets while silent on this one although we sent to it there
//! (loss based:
//! `net_af_packet` says its link is up whatever its interface does). A peer that
//! is silent on every rail (descheduled, gone) takes no rail down; a rail taken
//! down wrongly costs little, as it is up again at the peer's next probe on it.
//! Detection is quick on purpose: until then the reliability layer resends what
//! was lost on the dying rail partly on that rail again, and each round of that
//! doubles its retransmission timeout.
//! Before that, a rail on which N was last heard more than [`STALE_AFTER`] before
//! N was last heard anywhere carries no data for N (only probes), so little more
//! is lost on a dying rail than what was on it when it died.
//! A down rail carries no large packets; it is still probed, and is up again as soon
//! as N is heard on it, [`UP_AFTER`] after it went down or later.
//!
//! "Heard" means a frame that names N as its sender and carries N's link epoch as
//! the datagram layer last accepted it ([`PacketIo::learn`], called on an
//! authenticated `Hello`): the same test the datagram layer puts a data packet to.
//! Such frames also teach the rail N's MAC on that rail (each rail has its own MAC
//! table; until a rail knows N's MAC, packets to N on it go to the broadcast MAC,
//! or on the first rail to `dpdk_peer_macs[N]`).

use std::io;
use std::time::{Duration, Instant};

use super::io::start_eal;
use super::{DpdkIo, DpdkIoConfig, RxFrame};
use crate::transport::datagram::PacketIo;
use crate::transport::Poller;
use crate::wire::bytes::Fields;
use crate::wire::packet::{PacketHeader, PktKind, PKT_HEADER, PKT_MAGIC};

/// Most rails one agent drives.
pub const MAX_RAILS: usize = 8;
/// Large packets sent on one rail before the next takes over.
pub const STRIPE_RUN: u32 = 16;
/// At most one small packet per this goes on each rail that is not a node's home.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Sent on for this long without hearing the node (heard on another rail): down.
pub const DOWN_AFTER: Duration = Duration::from_millis(50);
/// ...and this many of its packets heard on other rails meanwhile (an idle peer
/// sends a packet now and then, on one rail at a time: that says nothing).
pub const DOWN_COUNT: u32 = 64;
/// A rail down for a node is up again when the node is heard on it this long after
/// it went down (frames heard sooner may have waited in the receive ring since
/// before it went down).
pub const UP_AFTER: Duration = Duration::from_millis(10);
/// A rail carries a node's data only while the node was heard on it at most this
/// long before it was last heard anywhere: a rail that stopped answering stops
/// getting data well before it is found down.
pub const STALE_AFTER: Duration = Duration::from_millis(15);
/// How often the ports' link states are read...
pub const LINK_CHECK: Duration = Duration::from_millis(100);
/// ...and while one of them is down.
const LINK_CHECK_DOWN: Duration = Duration::from_millis(1);
/// Receives in a row a rail with a packet waiting may be passed over for lower
/// sequence numbers on the others.
const PASS_MAX: u32 = 256;
/// Sends and receives between two clock reads while busy.
const CLOCK_EVERY: u32 = 32;

/// The port list of `dpdk_port`: comma-separated names or ids, spaces around them
/// ignored; `None` or empty: the first port.
pub fn port_list(dpdk_port: Option<&str>) -> Vec<String> {
    dpdk_port
        .map(|p| {
            p.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|v| !(v.len() == 1 && v[0].is_empty()))
        .unwrap_or_default()
}

/// One rail's view of one node.
#[derive(Clone, Copy, Debug, Default)]
struct PeerRail {
    /// When the node was last heard on this rail.
    heard: Option<Instant>,
    /// When we last sent to it on this rail.
    sent: Option<Instant>,
    /// The first send on this rail since the node was last heard on it.
    unanswered: Option<Instant>,
    /// Packets of the node heard on other rails since it was last heard on this one.
    elsewhere: u32,
    /// Down for this node (loss based)...
    down: bool,
    /// ...since then.
    down_at: Option<Instant>,
}

/// Names of one rail's counters in `wyvern stat` (made once, at open).
struct RailNames {
    frames_tx: &'static str,
    frames_rx: &'static str,
    bytes_tx: &'static str,
    bytes_rx: &'static str,
    downs: &'static str,
    ups: &'static str,
    link_up: &'static str,
    nodes_down: &'static str,
    port: &'static str,
}

impl RailNames {
    fn new(i: usize) -> RailNames {
        // Leaked once per rail per process (at most MAX_RAILS): the counters'
        // names are `&'static str`.
        let n = |what: &str| -> &'static str { Box::leak(format!("rail{i}_{what}").into()) };
        RailNames {
            frames_tx: n("frames_tx"),
            frames_rx: n("frames_rx"),
            bytes_tx: n("bytes_tx"),
            bytes_rx: n("bytes_rx"),
            downs: n("downs"),
            ups: n("ups"),
            link_up: n("link_up"),
            nodes_down: n("nodes_down"),
            port: n("port"),
        }
    }
}

struct Rail {
    io: DpdkIo,
    /// The port's link as last read.
    link_up: bool,
    /// By node id.
    peers: Vec<PeerRail>,
    /// Times the rail went down (its link, or for a node).
    downs: u64,
    /// Times it came back.
    ups: u64,
    /// Receives in a row that took another rail's packet while this one had one.
    passed: u32,
    names: RailNames,
}

/// Several DPDK ports as one [`PacketIo`] (see the module's doc).
pub struct Rails {
    rails: Vec<Rail>,
    /// By node id: the node's link epoch as the datagram layer last accepted it.
    epochs: Vec<Option<u64>>,
    /// By node id: when it was last heard on any rail.
    heard_any: Vec<Option<Instant>>,
    /// The rails home rails are chosen from: those on the agent's NUMA node, if
    /// some but not all are; else all.
    homes: Vec<usize>,
    /// By node id: the rail large packets go on now, and how many more go there.
    stripe: Vec<(usize, u32)>,
    /// The rail read first next time.
    rx_cur: usize,
    /// The rail of the last packet handed out, and its header's sender and epoch.
    last: Option<(usize, u32, u64)>,
    /// The clock, read every [`CLOCK_EVERY`] operations and when idle.
    now: Instant,
    ops: u32,
    last_link_check: Instant,
    /// The largest packet every rail carries (the smallest rail's MTU)...
    max_packet: usize,
    /// ...and by node id, the largest its link sends (0: `max_packet`): packets
    /// of at least half that are large ones, striped.
    peer_packet: Vec<usize>,
}

impl Rails {
    /// Starts the EAL and opens every port of `ports` (two or more, at most
    /// [`MAX_RAILS`], no name twice), each with its own pool.
    pub fn open(cfg: &DpdkIoConfig, ports: &[String]) -> io::Result<Rails> {
        if ports.len() > MAX_RAILS {
            return Err(io::Error::other(format!(
                "dpdk_port names {} ports; at most {MAX_RAILS} rails",
                ports.len()
            )));
        }
        for (i, p) in ports.iter().enumerate() {
            if p.is_empty() {
                return Err(io::Error::other(format!(
                    "dpdk_port {:?}: port {i} of the list is empty",
                    ports.join(",")
                )));
            }
            if ports[..i].contains(p) {
                return Err(io::Error::other(format!(
                    "dpdk_port {:?}: {p} is named twice",
                    ports.join(",")
                )));
            }
        }
        let eal = start_eal(cfg)?;
        let nodes = cfg.nodes as usize;
        let mut rails = Vec::with_capacity(ports.len());
        for (i, p) in ports.iter().enumerate() {
            // Configured peer MACs are the peers' on the first rail; the others learn.
            let rcfg = DpdkIoConfig {
                peer_macs: if i == 0 {
                    cfg.peer_macs.clone()
                } else {
                    Vec::new()
                },
                ..cfg.clone()
            };
            let io = DpdkIo::open_port(&eal, &rcfg, Some(p), &format!("wyv_io_{}_{i}", cfg.me))?;
            rails.push(Rail {
                link_up: io.link_up(),
                io,
                peers: vec![PeerRail::default(); nodes],
                downs: 0,
                ups: 0,
                passed: 0,
                names: RailNames::new(i),
            });
        }
        let max_packet = rails.iter().map(|r| r.io.max_packet()).min().unwrap_or(0);
        let homes = home_rails(
            eal.numa_node(),
            &rails.iter().map(|r| r.io.numa_node()).collect::<Vec<_>>(),
        );
        if homes.len() < rails.len() {
            log::info!(
                "dpdk: small packets' home rails: {homes:?}, on the agent's NUMA node {:?}",
                eal.numa_node()
            );
        }
        log::info!(
            "dpdk: {} rails ({}), packets up to {max_packet} B; large packets striped, \
             small ones on each peer's home rail",
            rails.len(),
            ports.join(", ")
        );
        let now = Instant::now();
        Ok(Rails {
            rails,
            epochs: vec![None; nodes],
            heard_any: vec![None; nodes],
            homes,
            stripe: vec![(0, 0); nodes],
            rx_cur: 0,
            last: None,
            now,
            ops: 0,
            last_link_check: now,
            max_packet,
            peer_packet: vec![0; nodes],
        })
    }

    /// What the rails run below the configuration (see [`DpdkIo::shortfall`]):
    /// one entry per `what`, with every rail's reason (all rails carry packets of
    /// the smallest rail's size).
    pub fn shortfall(&self) -> Vec<crate::transport::Shortfall> {
        merge_shortfalls(self.rails.iter().flat_map(|r| r.io.shortfall()))
    }

    /// The number of rails.
    pub fn len(&self) -> usize {
        self.rails.len()
    }

    /// Never: a `Rails` has two rails or more.
    pub fn is_empty(&self) -> bool {
        self.rails.is_empty()
    }

    /// Reads the clock every [`CLOCK_EVERY`] calls, and the links every [`LINK_CHECK`].
    fn tick(&mut self) {
        self.ops += 1;
        if self.ops >= CLOCK_EVERY {
            self.clock();
        }
    }

    fn clock(&mut self) {
        self.ops = 0;
        self.now = Instant::now();
        // While a link is down, the links are looked at every millisecond (a memif
        // client connects a moment after it starts: the peer hears nothing on that
        // rail until we see its link up); reading a link may be a system call on a
        // real NIC's driver, so not on every clock read.
        let every = if self.rails.iter().any(|r| !r.link_up) {
            LINK_CHECK_DOWN
        } else {
            LINK_CHECK
        };
        if self.now.duration_since(self.last_link_check) >= every {
            self.last_link_check = self.now;
            for (i, r) in self.rails.iter_mut().enumerate() {
                let up = r.io.link_up();
                if up != r.link_up {
                    r.link_up = up;
                    if up {
                        r.ups += 1;
                        log::info!("dpdk: rail {i} ({}): link up", r.io.port_name());
                    } else {
                        r.downs += 1;
                        log::warn!(
                            "dpdk: rail {i} ({}): link down; its traffic moves to the other rails",
                            r.io.port_name()
                        );
                    }
                }
            }
        }
    }

    /// Whether rail `r` may carry node `n`'s large packets now (decides a loss-based
    /// down on the way).
    fn usable(&mut self, r: usize, n: usize) -> bool {
        let heard_any = self.heard_any[n];
        let rail = &mut self.rails[r];
        if !rail.link_up {
            return false;
        }
        let p = &mut rail.peers[n];
        if p.down {
            return false;
        }
        // Silent here since we started sending here (or since last heard here, if
        // later), while heard elsewhere for DOWN_AFTER after that: a peer silent
        // on every rail (descheduled) takes nothing down.
        let (Some(sending), Some(elsewhere)) = (p.unanswered, heard_any) else {
            return true;
        };
        let since = p.heard.map_or(sending, |h| h.max(sending));
        if p.elsewhere >= DOWN_COUNT && elsewhere.saturating_duration_since(since) >= DOWN_AFTER {
            p.down = true;
            p.down_at = Some(self.now);
            rail.downs += 1;
            log::warn!(
                "dpdk: rail {r} ({}): node {n} not heard on it for {} ms although sent to and \
                 heard on another rail meanwhile: down for it, its traffic moves to the other rails",
                rail.io.port_name(),
                DOWN_AFTER.as_millis()
            );
            return false;
        }
        true
    }

    /// Whether rail `r` may carry node `n`'s data now: usable, and the node heard
    /// on it about as recently as anywhere ([`STALE_AFTER`]).
    fn fresh(&mut self, r: usize, n: usize) -> bool {
        if !self.usable(r, n) {
            return false;
        }
        let Some(any) = self.heard_any[n] else {
            return true;
        };
        self.rails[r].peers[n]
            .heard
            .is_some_and(|h| any.saturating_duration_since(h) <= STALE_AFTER)
    }

    /// Node `n`'s home rail: of the home rails (see [`home_rails`]) the one `n`
    /// mod their number picks, or the next rail fresh (or else usable).
    fn home(&mut self, n: usize) -> usize {
        let k = self.rails.len();
        let h = self.homes[n % self.homes.len()];
        let order = |i| (h + i) % k;
        (0..k)
            .map(order)
            .find(|&r| self.fresh(r, n))
            .or_else(|| (0..k).map(order).find(|&r| self.usable(r, n)))
            .unwrap_or(h)
    }

    /// The rail for a small packet of `len` bytes to `n`: its home, unless another
    /// rail is due a probe: the one least recently sent on, if that was at least
    /// [`PROBE_EVERY`] ago (so rails take turns when the node gets little).
    fn small_rail(&mut self, n: usize, len: usize) -> usize {
        let home = self.home(n);
        let now = self.now;
        let mut due: Option<(usize, Option<Instant>)> = None;
        for r in 0..self.rails.len() {
            // (Also where a rail that carries only probes is found down.)
            if r == home || (!self.usable(r, n) && !self.rails[r].link_up) {
                continue;
            }
            let p = &self.rails[r].peers[n];
            // A rail down for the node gets only packets whose loss costs nothing.
            if p.down && len > PKT_HEADER {
                continue;
            }
            if p.sent.is_none_or(|t| now.duration_since(t) >= PROBE_EVERY)
                && due.is_none_or(|(_, t)| p.sent < t)
            {
                due = Some((r, p.sent));
            }
        }
        let home_sent = self.rails[home].peers[n].sent;
        match due {
            Some((r, sent)) if sent <= home_sent => r,
            _ => home,
        }
    }

    /// The rail for a large packet to `n`: the striping rail, or the next one up
    /// once it has had its run.
    fn stripe_rail(&mut self, n: usize) -> usize {
        let k = self.rails.len();
        let (mut r, left) = self.stripe[n];
        let mut left = left;
        if left == 0 || !self.fresh(r, n) {
            // The run just ended goes to the driver now, before the next run on
            // another rail: held in this rail's queue until it filled, it would be
            // overtaken by the runs after it (the receiver then keeps those out of
            // order, and the sender may take the late ones for lost).
            self.rails[r].io.flush();
            let next = |i| (r + i) % k;
            if let Some(c) = (1..=k)
                .map(next)
                .find(|&c| self.fresh(c, n))
                .or_else(|| (1..=k).map(next).find(|&c| self.usable(c, n)))
            {
                r = c;
            }
            left = STRIPE_RUN;
        }
        self.stripe[n] = (r, left - 1);
        r
    }

    /// Node `n` heard on rail `r` (see the module's doc).
    fn heard(&mut self, r: usize, n: u32) {
        let now = self.now;
        let rail = &mut self.rails[r];
        let Some(p) = rail.peers.get_mut(n as usize) else {
            return;
        };
        p.heard = Some(now);
        p.unanswered = None;
        p.elsewhere = 0;
        if p.down && p.down_at.is_none_or(|t| now.duration_since(t) >= UP_AFTER) {
            p.down = false;
            rail.ups += 1;
            log::info!(
                "dpdk: rail {r} ({}): node {n} heard again: up for it",
                rail.io.port_name()
            );
        }
        // Its MAC on this rail: the source of the frame just received on it.
        rail.io.learn(n);
        for (i, other) in self.rails.iter_mut().enumerate() {
            if i != r {
                let q = &mut other.peers[n as usize];
                q.elsewhere = q.elsewhere.saturating_add(1);
            }
        }
        self.heard_any[n as usize] = Some(now);
    }

    /// A frame came on rail `r`: note whose it is, and whether it counts as heard.
    fn on_frame(&mut self, r: usize, pkt: &[u8]) {
        self.last = None;
        let Some(f) = Fields::<PKT_HEADER>::new(pkt) else {
            return;
        };
        if f.array::<0, 2>() != PKT_MAGIC {
            return;
        }
        let (src, epoch) = (f.u32::<4>(), f.u64::<16>());
        self.last = Some((r, src, epoch));
        if self.epochs.get(src as usize).copied().flatten() == Some(epoch) {
            self.heard(r, src);
        }
    }
}

impl Rails {
    /// Sends a packet of `len` bytes to `node` with `send` on the rail it
    /// belongs on (large packets striped, small ones on the peer's home rail),
    /// or the next usable one that takes it.
    fn send_on_rails(
        &mut self,
        node: u32,
        len: usize,
        mut send: impl FnMut(&mut DpdkIo) -> io::Result<bool>,
    ) -> io::Result<bool> {
        self.tick();
        let n = node as usize;
        if n >= self.stripe.len() {
            // Not a node of the job: the first rail says what it says.
            return send(&mut self.rails[0].io);
        }
        let max = match self.peer_packet[n] {
            0 => self.max_packet,
            p => p.min(self.max_packet),
        };
        let first = if len * 2 >= max {
            self.stripe_rail(n)
        } else {
            self.small_rail(n, len)
        };
        let k = self.rails.len();
        for i in 0..k {
            let r = (first + i) % k;
            if i > 0 && !self.usable(r, n) {
                continue;
            }
            if send(&mut self.rails[r].io)? {
                let now = self.now;
                let p = &mut self.rails[r].peers[n];
                p.sent = Some(now);
                p.unanswered.get_or_insert(now);
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl PacketIo for Rails {
    fn name(&self) -> &'static str {
        "dpdk"
    }

    fn local_addr(&self) -> String {
        self.rails
            .iter()
            .map(|r| r.io.mac().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn max_packet(&self) -> usize {
        self.max_packet
    }

    fn peer_packet(&mut self, node: u32, max: usize) {
        if let Some(p) = self.peer_packet.get_mut(node as usize) {
            *p = max;
        }
    }

    fn send_with<F: FnOnce(&mut [u8])>(
        &mut self,
        node: u32,
        len: usize,
        fill: F,
    ) -> io::Result<bool> {
        let mut fill = Some(fill);
        // `send_with` calls the closure only when it sends: a refusal leaves
        // `fill` for the next rail.
        self.send_on_rails(node, len, |io| {
            io.send_with(node, len, |out| {
                if let Some(f) = fill.take() {
                    f(out)
                }
            })
        })
    }

    fn send_packet(
        &mut self,
        node: u32,
        h: &PacketHeader,
        payload: &[u8],
        pinned: bool,
    ) -> io::Result<bool> {
        self.send_on_rails(node, PKT_HEADER + payload.len(), |io| {
            io.send_packet(node, h, payload, pinned)
        })
    }

    type Rx = RxFrame;

    fn recv(&mut self) -> io::Result<Option<RxFrame>> {
        self.tick();
        let k = self.rails.len();
        // The rail whose head packet goes first: anything but a data packet at once;
        // of data packets from one node, the lowest sequence number (each rail
        // delivers in the order sent, so this merges a striped stream back in
        // order whenever every rail has its next packet waiting); packets of
        // different nodes by turns.
        let mut pick: Option<(usize, u32, u64)> = None;
        let mut waiting = [false; MAX_RAILS];
        for i in 0..k {
            let r = (self.rx_cur + i) % k;
            let passed = self.rails[r].passed;
            let Some(head) = self.rails[r].io.peek() else {
                continue;
            };
            waiting[r] = true;
            // A rail passed over [`PASS_MAX`] times in a row goes now, whatever its
            // head (a stale packet with a high number must not hold the rail up).
            if passed >= PASS_MAX {
                pick = Some((r, 0, 0));
                break;
            }
            match data_seq(head) {
                None => {
                    pick = Some((r, 0, 0));
                    break;
                }
                Some((src, seq)) => {
                    if pick.is_none_or(|(_, s, q)| s == src && seq < q) {
                        pick = Some((r, src, seq));
                    }
                }
            }
        }
        if let Some((r, _, _)) = pick {
            for (i, rail) in self.rails.iter_mut().enumerate() {
                rail.passed = if i != r && waiting[i] {
                    rail.passed + 1
                } else {
                    0
                };
            }
            self.rx_cur = (r + 1) % k;
            if let Some(pkt) = self.rails[r].io.recv()? {
                self.on_frame(r, &pkt);
                return Ok(Some(pkt));
            }
        }
        // Nothing waiting (or the head was not a packet: dropped and counted): each
        // rail's own idle work (its send queue out, a memif client's link), and
        // whatever came meanwhile.
        for i in 0..k {
            let r = (self.rx_cur + i) % k;
            if let Some(pkt) = self.rails[r].io.recv()? {
                self.rx_cur = (r + 1) % k;
                self.on_frame(r, &pkt);
                return Ok(Some(pkt));
            }
        }
        // An idle moment to read the clock.
        self.clock();
        Ok(None)
    }

    fn release(&mut self, pkt: RxFrame) {
        // Any rail's bulk free takes mbufs of any pool.
        let r = self.last.map_or(0, |l| l.0);
        self.rails[r].io.release(pkt);
    }

    fn learn(&mut self, node: u32) {
        let Some((r, src, epoch)) = self.last else {
            return;
        };
        if src == node {
            if let Some(e) = self.epochs.get_mut(node as usize) {
                if *e != Some(epoch) {
                    // A new link instance: sends on every rail so far were to
                    // another (or to nobody yet), so nothing is overdue.
                    for rail in &mut self.rails {
                        rail.peers[node as usize].unanswered = None;
                    }
                }
                *e = Some(epoch);
            }
            self.heard(r, node);
        } else {
            self.rails[r].io.learn(node);
        }
    }

    fn register(&mut self, poller: &Poller, token: u32) -> io::Result<()> {
        for r in &mut self.rails {
            r.io.register(poller, token)?;
        }
        Ok(())
    }

    fn before_sleep(&mut self, poller: &Poller) {
        for r in &mut self.rails {
            r.io.before_sleep(poller);
        }
    }

    fn poll_mode(&self) -> bool {
        true
    }

    fn wakes(&self) -> bool {
        self.rails.iter().all(|r| r.io.wakes())
    }

    fn flush(&mut self) {
        for r in &mut self.rails {
            r.io.flush();
        }
    }

    fn info(&self) -> Vec<(&'static str, String)> {
        // (The tx path of the first rail: every rail is opened alike.)
        let mut v = self.rails[0].io.info();
        for r in &self.rails {
            v.push((r.names.port, r.io.port_name().to_string()));
        }
        v
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        // The device counters summed over the rails (same names as one port's)...
        let mut out = self.rails[0].io.counters();
        for r in &self.rails[1..] {
            for (o, (_, v)) in out.iter_mut().zip(r.io.counters()) {
                // (The largest frames are the largest over the rails.)
                o.1 = match o.0.ends_with("_largest") {
                    true => o.1.max(v),
                    false => o.1 + v,
                };
            }
        }
        for o in &mut out {
            if o.0 == "port_wakes_agent" {
                o.1 = u64::from(self.wakes());
            }
        }
        // ...then each rail's own.
        out.push(("rails", self.rails.len() as u64));
        for r in &self.rails {
            let s = r.io.stats();
            let n = &r.names;
            out.extend([
                (n.frames_tx, s.tx_frames),
                (n.frames_rx, s.rx_frames),
                (n.bytes_tx, s.tx_bytes_copied + s.tx_bytes_attached),
                (n.bytes_rx, s.rx_bytes),
                (n.downs, r.downs),
                (n.ups, r.ups),
                (n.link_up, u64::from(r.link_up)),
                (
                    n.nodes_down,
                    r.peers.iter().filter(|p| p.down).count() as u64,
                ),
            ]);
        }
        out
    }
}

/// The rails small packets' home rails are chosen from: those whose port is on the
/// agent's NUMA node (`me`), if some but not all are (and both are known); else all.
fn home_rails(me: Option<u32>, ports: &[Option<u32>]) -> Vec<usize> {
    let all: Vec<usize> = (0..ports.len()).collect();
    let Some(me) = me else {
        return all;
    };
    let local: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&r| ports[r] == Some(me))
        .collect();
    if local.is_empty() {
        all
    } else {
        local
    }
}

/// A data packet's sender and sequence number, read from its header (unchecked:
/// only an ordering hint).
fn data_seq(pkt: &[u8]) -> Option<(u32, u64)> {
    let f = Fields::<PKT_HEADER>::new(pkt)?;
    (f.array::<0, 2>() == PKT_MAGIC && f.u8::<3>() == PktKind::Data as u8)
        .then(|| (f.u32::<4>(), f.u64::<32>()))
}

/// One entry per `what`, with every rail's reason and fix.
fn merge_shortfalls<'a>(
    each: impl Iterator<Item = &'a crate::transport::Shortfall>,
) -> Vec<crate::transport::Shortfall> {
    let mut out: Vec<crate::transport::Shortfall> = Vec::new();
    for s in each {
        match out.iter_mut().find(|o| o.what == s.what) {
            Some(o) => {
                o.why = format!("{}; {}", o.why, s.why);
                o.fix = format!("{}; {}", o.fix, s.fix);
            }
            None => out.push(s.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rails_shortfall_is_said_in_one_entry_per_what() {
        let s = |why: &str| crate::transport::Shortfall {
            what: "mtu",
            why: why.into(),
            fix: format!("fix {why}"),
        };
        let all = [s("eth1 1500"), s("eth2 4000")];
        let m = merge_shortfalls(all.iter());
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].why, "eth1 1500; eth2 4000");
        assert_eq!(m[0].fix, "fix eth1 1500; fix eth2 4000");
        assert!(merge_shortfalls([].iter()).is_empty());
    }

    #[test]
    fn home_rails_are_the_numa_local_ones_when_some_are() {
        assert_eq!(home_rails(None, &[Some(0), Some(1)]), vec![0, 1]);
        assert_eq!(home_rails(Some(1), &[Some(0), Some(1)]), vec![1]);
        assert_eq!(home_rails(Some(0), &[Some(0), Some(0)]), vec![0, 1]);
        assert_eq!(home_rails(Some(2), &[Some(0), Some(1)]), vec![0, 1]);
        assert_eq!(home_rails(Some(0), &[None, Some(0), None]), vec![1]);
    }

    #[test]
    fn the_port_list_is_split_on_commas() {
        assert_eq!(port_list(None), Vec::<String>::new());
        assert_eq!(port_list(Some("")), Vec::<String>::new());
        assert_eq!(port_list(Some("net_memif0")), vec!["net_memif0"]);
        assert_eq!(
            port_list(Some("net_memif0, net_memif1")),
            vec!["net_memif0", "net_memif1"]
        );
        assert_eq!(port_list(Some("a,,b")), vec!["a", "", "b"]);
    }
}
