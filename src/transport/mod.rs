//! How agents move frames between nodes.
//!
//! A [`Transport`] owns the connections to peer agents: it establishes them
//! (dialing, accepting, a `Hello` handshake that names the peer's node id),
//! queues outgoing frames ([`Out`]: owned bytes, or a range of a pool block
//! sent without copying), writes them, and moves incoming bytes into the
//! agent's stream of that peer ([`stream::LinkRx`], lent as an [`Inflow`]),
//! from which the agent takes frames as its receive rings have room. Everything above — routing, batching, reassembly, acks,
//! heartbeat policy, what a lost peer means for clients — is the agent's.
//!
//! Back ends: [`tcp`] (portable, always built) and [`datagram`] (reliable
//! links over lossy packets: UDP here, DPDK's poll-mode drivers with the
//! `dpdk` feature). With `--features dpdk`, `dpdk` holds the safe layer over
//! DPDK; with `--features verbs`, [`verbs`] holds the safe layer over rdma-core
//! and the RDMA transport (RC queue pairs, rendezvous by RDMA READ). [`multi`]
//! runs several back ends at once and routes each peer to one of them (the
//! hybrid agent).

pub mod datagram;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)] // the FFI back end: every unsafe block says why it is sound
pub mod dpdk;
pub mod multi;
#[cfg(feature = "testing")]
pub mod sim;
pub mod stream;
pub mod tcp;
#[cfg(feature = "verbs")]
#[allow(unsafe_code)] // the FFI back end: every unsafe block says why it is sound
pub mod verbs;

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

use crate::shm::Pool;
use crate::wire::Hello;

pub use stream::{Inflow, LinkRx, SteerState, SteerTicket, RX_BUFFERS_MAX, RX_HIGH_WATER};

/// Something queued to go out on a link.
pub enum Out {
    /// Bytes the link holds (shared, not copied, with whoever else keeps
    /// them: the agent's session keeps each `Data` frame until the peer
    /// acknowledges it).
    Bytes {
        /// The bytes.
        buf: Arc<Vec<u8>>,
        /// How far written.
        pos: usize,
    },
    /// A range of a pool block, written without copying.
    Block {
        /// Pool offset of the range.
        off: u64,
        /// Its length.
        len: u64,
        /// How far written.
        pos: u64,
        /// Once written, free this block (the last chunk of a message).
        /// `None`: the caller frees it, and keeps the range unchanged at least
        /// until the peer has received it (the agent: until the peer's session
        /// ack), so a transport may read it again until then (the datagram
        /// transports resend lost packets from it).
        free_after: Option<u64>,
    },
}

impl Out {
    /// Owned bytes, nothing written yet.
    pub fn bytes(buf: Vec<u8>) -> Out {
        Out::Bytes {
            buf: Arc::new(buf),
            pos: 0,
        }
    }

    /// Shared bytes, nothing written yet.
    pub fn shared(buf: Arc<Vec<u8>>) -> Out {
        Out::Bytes { buf, pos: 0 }
    }

    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        match self {
            Out::Bytes { buf, pos } => buf.len() - pos,
            Out::Block { len, pos, .. } => (len - pos) as usize,
        }
    }
}

/// What happened to a peer's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A connection to `node` completed its handshake; frames flow.
    Up {
        /// The peer.
        node: u32,
    },
    /// The connection to `node` failed or was replaced; whatever was queued
    /// on it is gone (its blocks are listed for the agent to free).
    Down {
        /// The peer.
        node: u32,
        /// Why.
        reason: String,
        /// Blocks referenced by queued items that will never be written.
        blocks: Vec<u64>,
        /// Whether the transport already closed the link. If not, frames
        /// that arrived before the failure can still be read, and the agent
        /// closes it with [`Transport::close`] when done.
        closed: bool,
    },
    /// The peer broke the transport's own protocol (what the transport carries
    /// besides frames: a verbs rendezvous descriptor outside the region the peer
    /// advertised, a message that does not parse). The agent treats it as a
    /// malformed frame: counted, the peer declared lost and its link closed
    /// (a resumed session would only bring the same again).
    Malformed {
        /// The peer.
        node: u32,
        /// What was wrong.
        reason: String,
    },
}

/// The agent's readiness poller, shared with transports: a transport
/// registers its descriptors under its own 32-bit tokens and is handed them
/// back in [`Transport::on_ready`]. A clone is another handle on the same
/// epoll (for a device that stops watching a descriptor outside the calls
/// that hand it the poller).
#[derive(Clone)]
pub struct Poller {
    epoll: Arc<Epoll>,
    kind: u64,
    sub: u32,
}

/// How many back ends one poller can tell apart ([`Poller::sub`]).
pub const MAX_SUB: u32 = 16;

impl Poller {
    /// A view of the agent's epoll for a transport whose events carry `kind`
    /// in the token's upper 32 bits.
    pub fn new(epoll: Epoll, kind: u64) -> Poller {
        Poller {
            epoll: Arc::new(epoll),
            kind,
            sub: 0,
        }
    }

    /// The same epoll for back end `i` of a hybrid transport: its events
    /// carry `kind + i` (so `kind + MAX_SUB` must be free), and the agent
    /// hands them to [`Transport::on_ready`] with `sub = i`.
    pub fn sub(&self, i: u32) -> Poller {
        assert!(i < MAX_SUB, "at most {MAX_SUB} back ends");
        Poller {
            epoll: self.epoll.clone(),
            kind: self.kind,
            sub: i,
        }
    }

    /// The event kind and back end of an epoll token of this poller's
    /// transport, or `None` when the token belongs to something else.
    pub fn owns(&self, t: u64) -> Option<(u32, u32)> {
        let kind = t >> 32;
        (kind >= self.kind && kind < self.kind + MAX_SUB as u64)
            .then(|| ((kind - self.kind) as u32, (t & 0xFFFF_FFFF) as u32))
    }

    /// The underlying epoll.
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Watch `fd` for readability under `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u32) -> io::Result<()> {
        let t = ((self.kind + self.sub as u64) << 32) | token as u64;
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, t))
            .map_err(io::Error::from)
    }

    /// Watch `fd` for readability under `token` for one event at a time:
    /// after it reports one, it is quiet until [`Poller::rearm`]. For a
    /// descriptor that only wakes a sleeping agent (the device is polled
    /// anyway while the agent runs), so a busy agent pays nothing per packet.
    pub fn add_oneshot(&self, fd: BorrowedFd<'_>, token: u32) -> io::Result<()> {
        let t = ((self.kind + self.sub as u64) << 32) | token as u64;
        self.epoll
            .add(
                fd,
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, t),
            )
            .map_err(io::Error::from)
    }

    /// Arm a [`Poller::add_oneshot`] descriptor again (reported at once if it
    /// is readable already: no wake-up is lost in between).
    pub fn rearm(&self, fd: BorrowedFd<'_>, token: u32) -> io::Result<()> {
        let t = ((self.kind + self.sub as u64) << 32) | token as u64;
        let mut ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, t);
        self.epoll.modify(fd, &mut ev).map_err(io::Error::from)
    }

    /// Stop watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) {
        let _ = self.epoll.delete(fd);
    }
}

/// How [`Transport::close`] closes a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Now.
    Now,
    /// From below, as a device fault would (verbs: its queue pair forced
    /// into the error state), for `wyvern break-link`: the transport then
    /// finds the fault on its own and reports the link down. A transport
    /// with no such fault closes the link now.
    Fault,
    /// Now, and keep the link down for this long: nothing to or from the
    /// peer is taken meanwhile (`wyvern break-link --hold-ms`, an outage
    /// drill). The datagram transports (udp, dpdk) hold; the others close
    /// now and do not hold.
    Hold(std::time::Duration),
    /// Now, and the link is no longer wanted (on-demand links, see
    /// [`Transport::want`]): it is not made again until wanted again, and
    /// what it held is released. The agent closes idle links so.
    Idle,
}

/// Something a device runs below what the configuration asks (a NIC's MTU
/// below the configured one): the agent lists it as degraded (`wyvern
/// stat`, the metrics) and logs it once at warn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// A short stable name (`mtu`).
    pub what: &'static str,
    /// What runs smaller, and why.
    pub why: String,
    /// How to get what was asked.
    pub fix: String,
}

/// A transport's own figures for `wyvern stat`.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Counters, by name.
    pub counters: Vec<(&'static str, u64)>,
    /// Facts that are not counts, by name.
    pub info: Vec<(&'static str, String)>,
}

/// The state of one link as the agent sees it ([`Transport::link`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkView {
    /// `Some` while the link is up (frames can flow): when something was
    /// last written to it.
    pub last_tx: Option<Instant>,
    /// Bytes queued for the peer and not yet written (a transport may add
    /// one to make the agent call [`Transport::flush`] for other work).
    pub queued: usize,
    /// The largest packet the link sends (header included), where a link is
    /// made of packets: the smaller of this node's and the peer's (udp,
    /// dpdk); 0 where it is a byte stream or not up.
    pub packet: usize,
    /// What is queued waits for the link itself (its congestion window, its
    /// pacer, the peer's credits), not for the device, and the transport
    /// wakes a sleeping agent when it can send (an ack arrives, its timer
    /// fires): the agent need not poll for it. (Datagram links of the rate
    /// model only.)
    pub held: bool,
}

/// A way to move frames between this agent and its peers.
///
/// Drive it from one thread: feed readiness ([`Transport::on_ready`]) and
/// time ([`Transport::tick`]), queue and flush, read frames; then act on the
/// [`LinkEvent`]s it reported.
pub trait Transport {
    /// Short name for the statistics ("tcp"); with `Some(node)`, the name
    /// of the back end that carries `node`'s link (a hybrid transport has
    /// several).
    fn name(&self, node: Option<u32>) -> &'static str;
    /// Where peers reach this node, for logs.
    fn local_addr(&self) -> String;
    /// A descriptor it registered became ready: `sub` is the back end it
    /// was registered for through [`Poller::sub`] (0 unless the transport
    /// is made of several). What arrives for a peer goes into that peer's
    /// stream in `rx`.
    fn on_ready(
        &mut self,
        sub: u32,
        poller: &Poller,
        token: u32,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    );
    /// Timers: dialing, handshakes. Called every few milliseconds.
    fn tick(
        &mut self,
        poller: &Poller,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    );
    /// Called every poll round: work that cannot wait for a readiness
    /// event or the next tick (a poll-mode device's receive queue,
    /// retransmissions, acks, reading again a link paused while its stream
    /// was full). Returns whether it did anything.
    fn poll(&mut self, now: Instant, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        let _ = (now, rx, events);
        false
    }
    /// Queue an item for `node` (dropped when the link is not up).
    fn push(&mut self, node: u32, item: Out);
    /// Write what can be written to `node`; blocks whose last byte went out
    /// are appended to `freed`. An error means the link is broken: it is
    /// closed and a `Down` event reported.
    fn flush(&mut self, node: u32, pool: &Pool, freed: &mut Vec<u64>, events: &mut Vec<LinkEvent>);
    /// What the agent may know of the link to `node`: whether it is up
    /// and when something was last written to it, and the bytes queued.
    fn link(&self, node: u32) -> LinkView;
    /// On-demand links. `None`: from now on make links only to the peers
    /// wanted; returns whether this transport can (one that cannot links to
    /// every peer from the start and ignores wants). `Some(node)`: the agent
    /// wants a link to `node` (a message waits for it, or it was asked to
    /// connect): make one, and make it again whenever it breaks.
    fn want(&mut self, _node: Option<u32>, _now: Instant) -> bool {
        false
    }
    /// The agent is about to sleep: arm whatever wakes it when data arrives
    /// (a one-shot descriptor, see [`Poller::add_oneshot`]). Returns whether
    /// arriving data wakes the agent at all: a poll-mode device cannot, and
    /// an adaptive agent then sleeps only briefly.
    fn before_sleep(&mut self, poller: &Poller) -> bool {
        let _ = poller;
        true
    }
    /// The transport's own counters and facts that are not counts (e.g. the
    /// dpdk transport's tx path), by name, for `wyvern stat`.
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }
    /// Close the link to `node` ([`Close`] says how); returns the blocks its
    /// queue referenced. After a [`Close::Fault`] that the transport could
    /// inject, the link is still up ([`Transport::last_tx`]) until it finds
    /// the fault and reports it down.
    fn close(&mut self, poller: &Poller, node: u32, how: Close) -> Vec<u64>;
}

/// What every handshake checks of a peer's `Hello` before its MAC (tcp and
/// the verbs bootstrap): our job, our node count, another node, and, when
/// the node list names a real address for that node, a connection `from`
/// that node's IP (IPs only: the peer's end of a connection has an
/// ephemeral port).
pub(crate) fn check_peer_hello(
    h: &Hello,
    job: u64,
    nodes: &[std::net::SocketAddr],
    me: u32,
    from: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    if h.job != job {
        return Err(format!(
            "Hello from node {} of another job (job tag {:#x}, ours {job:#x})",
            h.node, h.job
        ));
    }
    let n = nodes.len();
    if h.nodes as usize != n || h.node as usize >= n || h.node == me {
        return Err(format!(
            "Hello from node {} with a node list of {} (ours has {n})",
            h.node, h.nodes
        ));
    }
    let listed = nodes[h.node as usize].ip();
    if !listed.is_unspecified() {
        if let Some(from) = from.filter(|f| f.ip() != listed) {
            return Err(format!(
                "Hello claiming node {} from {from}, but node {} is at {listed}",
                h.node, h.node
            ));
        }
    }
    Ok(())
}

/// Whether a connection from `from` may be a peer's: its IP is one of the
/// node list's (other than ours), or the list names a node by an unspecified
/// address (any).
pub(crate) fn may_be_a_peer(
    nodes: &[std::net::SocketAddr],
    me: u32,
    from: std::net::SocketAddr,
) -> bool {
    nodes
        .iter()
        .enumerate()
        .any(|(i, a)| i as u32 != me && (a.ip().is_unspecified() || a.ip() == from.ip()))
}

/// Warnings about failed handshakes (tcp and the verbs bootstrap): at most
/// `max` per spell of `every` at warn level, the rest at debug, since a
/// stranger may try many times and must not flood the log.
#[derive(Debug, Default)]
pub(crate) struct WarnSpell {
    /// When the current spell began.
    since: Option<Instant>,
    /// Failures in it so far.
    count: u32,
}

impl WarnSpell {
    /// One more failure at `now`: whether it is logged at warn level.
    pub(crate) fn warn(&mut self, now: Instant, every: std::time::Duration, max: u32) -> bool {
        if self.since.is_none_or(|t| now.duration_since(t) >= every) {
            self.since = Some(now);
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn warnings_are_limited_per_spell() {
        let t0 = Instant::now();
        let every = Duration::from_secs(1);
        let mut w = WarnSpell::default();
        let first: Vec<bool> = (0..12).map(|_| w.warn(t0, every, 10)).collect();
        assert_eq!(first.iter().filter(|&&b| b).count(), 10);
        assert!(!first[10] && !first[11]);
        // Still the same spell just before its end; a new one after.
        assert!(!w.warn(t0 + every - Duration::from_millis(1), every, 10));
        assert!(w.warn(t0 + every, every, 10));
        assert_eq!(w.count, 1);
    }
}
