//! Reliable links over a lossy packet network: what the `udp` transport
//! runs on UDP sockets and the `dpdk` transport on a poll-mode driver.
//!
//! Each peer's link is a reliable, ordered byte stream of frames, like a
//! TCP connection, built here from packets ([`crate::wire::packet`]): the
//! stream is cut into packets as large as the device takes, each numbered
//! and kept by a [`reliable::Sender`] until acknowledged, resent when its
//! loss detection (RACK-TLP, by time) or its timeout says so; a timerfd
//! wakes a sleeping agent at those deadlines; the receiving side's
//! [`reliable::Receiver`] drops duplicates, puts packets back in order and
//! hands their bytes to the link's [`FrameReader`]. It stops doing so while
//! the agent leaves too much unread there, which closes the window it
//! offers: credit-based flow control down to the sending agent. Damaged
//! packets fail their CRC-32C and are counted and dropped; the sender's
//! retransmission repairs them like lost ones.
//!
//! ## Link set-up
//! Every link instance has an *epoch*: 64 random bits, new whenever a link is
//! closed and made again. A `Hello` packet says "my epoch is E, I know yours
//! as F" and carries the job's node count and, with a job key, a MAC
//! ([`crate::wire::auth`]) over both epochs, the header's nodes and flags and
//! every `Hello` field; a `Hello` whose MAC fails is counted
//! (`packets_unauthenticated`) and changes nothing. A side is up once it hears
//! from the peer a packet that names its own current epoch. Packets of other
//! epochs are stale and dropped.
//!
//! A `Hello` acts on the link (a new peer epoch taking an up link down, an
//! address learned) only when it is *fresh*: it names this side's current
//! epoch, which is random and new per link instance, so a `Hello` recorded
//! earlier cannot be replayed to take a link down. A peer that restarted
//! (new epoch, ours unknown to it) is answered with our `Hello`, which tells
//! it our epoch; its next `Hello` is fresh and the link is made again; the
//! agent's session layer (`Resume`) then sends again what the peer had not
//! handled. After the handshake, every packet must carry both link epochs:
//! 128 bits an off-path party cannot guess (they travel in the clear, so an
//! on-path one is outside this model; see `docs/security.md` for
//! why not a MAC per packet). Peer addresses are learned only while a link is
//! not up (from an authenticated `Hello`, or the first packet with both epochs
//! right) or from the fresh `Hello` of a restarted peer, so agents may bind
//! port 0, as tests do; an up link's address is never rewritten otherwise.
//!
//! ## Packet size
//! Each side's `Hello` also says the largest packet its device receives
//! ([`PacketLimits`]: an interface's MTU, `dpdk_mtu`, udp's `packet_bytes`),
//! and a link's packets are at most the smaller of the two ends' sizes: a node
//! at 9000 and one at 1500 send each other packets of 1500, where packets of
//! 9000 would be dropped by the smaller node's interface (or read cut short by
//! its socket) without a word, and resent at the same size forever. The size
//! is taken only from an authenticated `Hello`, only while the link is not up
//! (it is fixed for a link instance, so nothing queued or unacknowledged was
//! cut to another size: packets are cut only once the link is up), and a
//! `Hello` saying less than [`PACKET_MIN`] is refused (counted in
//! `hellos_refused_packet`, logged at warn); one saying more than this side's
//! own size changes nothing. A link cut below this side's own size is logged
//! once per peer and size at info (the smaller node lists its own shortfall).
//!
//! The device is a [`PacketIo`]: [`UdpIo`] here; `DpdkIo` in
//! `transport::dpdk` (feature `dpdk`: packets in Ethernet frames).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::shm::Pool;
use crate::wire::auth::{self, JobKey, MAC_LEN};
use crate::wire::bytes::FieldsMut;
use crate::wire::packet::{self, PacketHeader, PktKind, FLAG_NOT_UP, PACKET_MIN, PKT_HEADER};
use crate::wire::reliable::{self, Ack};
use crate::wire::{caps, FrameReader, Hello, PacketLimits};

use super::stream::Inflow;

use super::{Close, LinkEvent, LinkView, Out, Poller, Transport, TransportStats};

/// How often a link that is not up says `Hello`.
const HELLO_EVERY: Duration = Duration::from_millis(100);
/// Bytes of a `Hello` packet's payload before its MAC: the [`Hello`] and the
/// [`PacketLimits`] (the MAC covers both).
const HELLO_BODY: usize = Hello::LEN + PacketLimits::LEN;
// Every device receives a whole `Hello` packet (see `PACKET_MIN`).
const _: () = assert!(PKT_HEADER + HELLO_BODY + MAC_LEN <= PACKET_MIN);
/// The poller token of the reliability timer ([`DatagramTransport::wake`]);
/// the device registers under token 0.
const TIMER_TOKEN: u32 = 1;
/// Packets taken from the device per call (fairness).
const RX_BURST: usize = 256;
/// Payload buffers kept for reuse (acknowledged packets' and delivered
/// ones'), so that a packet in steady state allocates nothing.
const SPARE_MAX: usize = 1024;

/// A device that moves whole packets to and from peer nodes.
pub trait PacketIo {
    /// Short name for the statistics ("udp", "dpdk").
    fn name(&self) -> &'static str;
    /// Where peers reach this node, for logs.
    fn local_addr(&self) -> String;
    /// Largest packet, header included, the device sends and receives.
    fn max_packet(&self) -> usize;
    /// Packets to `node` are at most `max` bytes from now on (its link's
    /// size: the smaller of this device's and what the peer receives).
    fn peer_packet(&mut self, _node: u32, _max: usize) {}
    /// Send one packet of `len` bytes to `node`, written by `fill` straight
    /// into the device's buffer (an mbuf's data room, a reusable send
    /// buffer): no intermediate copy. `Ok(false)`: not sent now (no address
    /// known yet, or the device is full; `fill` was not called); the
    /// reliability layer resends.
    fn send_with<F: FnOnce(&mut [u8])>(
        &mut self,
        node: u32,
        len: usize,
        fill: F,
    ) -> io::Result<bool>;
    /// Send the packet of header `h` and `payload` to `node` (as
    /// [`PacketIo::send_with`]). `pinned`: the payload is a pool block range
    /// its owner keeps unchanged until the peer has it ([`TxItem::Pool`]), so
    /// a device may send it from where it is instead of copying it, provided
    /// it lets go of it by the end of its next [`PacketIo::flush`] (after the
    /// transport call the agent may free the block). The default copies.
    fn send_packet(
        &mut self,
        node: u32,
        h: &PacketHeader,
        payload: &[u8],
        pinned: bool,
    ) -> io::Result<bool> {
        let _ = pinned;
        self.send_with(node, PKT_HEADER + payload.len(), |out| {
            packet::encode_into(h, payload, out)
        })
    }
    /// Send a copy of `pkt` (see [`PacketIo::send_with`]).
    fn send(&mut self, node: u32, pkt: &[u8]) -> io::Result<bool> {
        self.send_with(node, pkt.len(), |out| out.copy_from_slice(pkt))
    }
    /// A received packet, read in place (the device's buffer: an mbuf, a
    /// reusable receive buffer); give it back with [`PacketIo::release`].
    type Rx: std::ops::Deref<Target = [u8]>;
    /// The next waiting packet, or `None`.
    fn recv(&mut self) -> io::Result<Option<Self::Rx>>;
    /// The caller is done with a packet [`PacketIo::recv`] gave it.
    fn release(&mut self, _pkt: Self::Rx) {}
    /// The packet just received was `node`'s: remember where it came from.
    fn learn(&mut self, node: u32);
    /// Register with the agent's poller (a descriptor that becomes readable
    /// when packets arrive), if the device has one.
    fn register(&mut self, poller: &Poller, token: u32) -> io::Result<()>;
    /// Whether the device must be polled every round (a DPDK poll-mode
    /// driver). Unless it [`wakes`](PacketIo::wakes) the agent too, an
    /// adaptive agent then sleeps at most 1 ms at a time.
    fn poll_mode(&self) -> bool {
        false
    }
    /// Whether [`PacketIo::register`] gave the poller a descriptor that
    /// becomes readable when packets arrive, so a sleeping agent is woken by
    /// them (a socket; a poll-mode device whose driver has one).
    fn wakes(&self) -> bool {
        !self.poll_mode()
    }
    /// Whether the agent on this device ever sleeps: a simulated network's
    /// agents never do, so they need no timer to wake them (a descriptor
    /// fewer each: 4,096 of them in one process meet the open-file limit).
    fn agent_sleeps(&self) -> bool {
        true
    }
    /// The agent is about to sleep (see [`Transport::before_sleep`](super::Transport::before_sleep)).
    fn before_sleep(&mut self, _poller: &Poller) {}
    /// Hand packets `send` queued (a device that batches) to the device. The
    /// datagram layer calls it at the end of every transport call that may
    /// have sent, before the agent can go to sleep.
    fn flush(&mut self) {}
    /// The device's own counters, by name, for `wyvern stat`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The device's own facts that are not counts (e.g. which tx path is in
    /// use), by name, for `wyvern stat`.
    fn info(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Packets a [`UdpIo`] gathers for one `sendmmsg` (a flush sends fewer).
const UDP_TX_BATCH: usize = 32;
/// Datagrams a [`UdpIo`] takes with one `recvmmsg` at most.
const UDP_RX_BATCH: usize = 32;

/// UDP/IPv4 or IPv6 sockets: the datagram transport for routed networks,
/// and the lossy-network test bed. Packets sent are gathered and leave
/// together, [`UDP_TX_BATCH`] to a `sendmmsg` call, at the latest at
/// [`PacketIo::flush`] (the end of every transport call that sent): one
/// system call per batch instead of per packet.
pub struct UdpIo {
    sock: UdpSocket,
    peers: Vec<Option<SocketAddr>>,
    last_from: Option<SocketAddr>,
    max_packet: usize,
    /// The gathered packets, back to back in slots of `max_packet` bytes...
    txq: Vec<u8>,
    /// ...their destinations and lengths.
    txq_to: Vec<(SocketAddr, usize)>,
    /// Gathered packets the socket refused at a flush (its buffer full):
    /// lost, as on a wire; the reliability layer resends them.
    tx_dropped: u64,
    /// `sendmmsg` calls made, and packets they sent.
    tx_batches: u64,
    tx_batched: u64,
    /// Datagrams one `recvmmsg` took and [`PacketIo::recv`] has not handed
    /// out yet: buffer, length, sender...
    rxq: VecDeque<(Vec<u8>, usize, SocketAddr)>,
    /// ...and receive buffers given back by [`PacketIo::release`], reused.
    rxfree: Vec<Vec<u8>>,
    /// `recvmmsg` calls that took something, and datagrams they took.
    rx_batches: u64,
    rx_batched: u64,
}

/// A packet [`UdpIo`] received: its buffer and length.
pub struct UdpRx {
    buf: Vec<u8>,
    len: usize,
}

impl std::ops::Deref for UdpRx {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl UdpIo {
    /// Bind `nodes[me]`; peers are first sought at their listed addresses
    /// (port 0: unknown until they speak).
    pub fn bind(me: u32, nodes: &[SocketAddr], max_packet: usize) -> io::Result<UdpIo> {
        let sock = UdpSocket::bind(nodes[me as usize])?;
        sock.set_nonblocking(true)?;
        // Room for bursts: the reliability layer repairs drops, but each one
        // costs a timeout.
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
        let peers = nodes
            .iter()
            .map(|a| (a.port() != 0).then_some(*a))
            .collect();
        Ok(UdpIo {
            sock,
            peers,
            last_from: None,
            max_packet,
            txq: Vec::new(),
            txq_to: Vec::with_capacity(UDP_TX_BATCH),
            tx_dropped: 0,
            tx_batches: 0,
            tx_batched: 0,
            rxq: VecDeque::with_capacity(UDP_RX_BATCH),
            rxfree: Vec::new(),
            rx_batches: 0,
            rx_batched: 0,
        })
    }

    /// Take up to [`UDP_RX_BATCH`] waiting datagrams with one `recvmmsg`
    /// into `rxq`.
    fn fill_rx(&mut self) -> io::Result<()> {
        use nix::errno::Errno;
        use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;
        let size = self.max_packet.max(PACKET_MIN);
        let mut bufs: Vec<Vec<u8>> = (0..UDP_RX_BATCH)
            .map(|_| self.rxfree.pop().unwrap_or_else(|| vec![0; size]))
            .collect();
        let got: io::Result<Vec<(usize, Option<SocketAddr>)>> = {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_RX_BATCH, None);
            match recvmmsg(
                self.sock.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(r) => Ok(r
                    .map(|m| {
                        let from = m.address.and_then(|a| match a.family() {
                            Some(nix::sys::socket::AddressFamily::Inet) => {
                                a.as_sockaddr_in().map(|a| SocketAddr::V4((*a).into()))
                            }
                            Some(nix::sys::socket::AddressFamily::Inet6) => {
                                a.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into()))
                            }
                            _ => None,
                        });
                        (m.bytes, from)
                    })
                    .collect()),
                // Nothing waiting; or an ICMP error for an earlier send (the
                // datagrams behind it are read at the next poll).
                Err(Errno::EAGAIN | Errno::ECONNREFUSED) => Ok(Vec::new()),
                Err(e) => Err(io::Error::from(e)),
            }
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                self.rxfree.extend(bufs);
                return Err(e);
            }
        };
        if !got.is_empty() {
            self.rx_batches += 1;
            self.rx_batched += got.len() as u64;
        }
        let rest = bufs.split_off(got.len());
        for (b, (len, from)) in bufs.into_iter().zip(got) {
            match from {
                Some(from) => self.rxq.push_back((b, len, from)),
                None => self.rxfree.push(b),
            }
        }
        self.rxfree.extend(rest);
        Ok(())
    }

    /// Send the gathered packets: `sendmmsg` until all are taken; what the
    /// socket will not take now is dropped (counted), as a full queue on a
    /// wire drops.
    fn flush_tx(&mut self) -> io::Result<()> {
        use nix::errno::Errno;
        use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let n = self.txq_to.len();
        let mut done = 0;
        let mut result = Ok(());
        while done < n {
            let slot = self.max_packet;
            let slices: Vec<[IoSlice<'_>; 1]> = self.txq_to[done..]
                .iter()
                .enumerate()
                .map(|(i, &(_, len))| [IoSlice::new(&self.txq[(done + i) * slot..][..len])])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = self.txq_to[done..]
                .iter()
                .map(|&(a, _)| Some(SockaddrStorage::from(a)))
                .collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
            let sent = sendmmsg(
                self.sock.as_raw_fd(),
                &mut headers,
                &slices,
                &addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|r| r.count());
            match sent {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(k) => {
                    self.tx_batches += 1;
                    self.tx_batched += k as u64;
                    done += k;
                }
                // The first packet's port is closed (its agent is down): lost.
                Err(Errno::ECONNREFUSED) => done += 1,
                Err(e) => {
                    result = Err(io::Error::from(e));
                    break;
                }
            }
        }
        self.tx_dropped += (n - done) as u64;
        self.txq_to.clear();
        result
    }

    /// The bound address.
    pub fn addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
}

impl PacketIo for UdpIo {
    fn name(&self) -> &'static str {
        "udp"
    }

    fn local_addr(&self) -> String {
        self.addr().map(|a| a.to_string()).unwrap_or_default()
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
        let Some(addr) = self.peers.get(node as usize).copied().flatten() else {
            return Ok(false);
        };
        if len > self.max_packet {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a packet of {len} B is above {} B", self.max_packet),
            ));
        }
        if self.txq_to.len() == UDP_TX_BATCH {
            self.flush_tx()?;
        }
        let at = self.txq_to.len() * self.max_packet;
        if self.txq.len() < at + self.max_packet {
            self.txq.resize(at + self.max_packet, 0);
        }
        fill(&mut self.txq[at..at + len]);
        self.txq_to.push((addr, len));
        Ok(true)
    }

    fn flush(&mut self) {
        if let Err(e) = self.flush_tx() {
            log::warn!("udp send: {e}");
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("udp_tx_dropped", self.tx_dropped),
            ("udp_tx_batches", self.tx_batches),
            ("udp_tx_batched", self.tx_batched),
            ("udp_rx_batches", self.rx_batches),
            ("udp_rx_batched", self.rx_batched),
        ]
    }

    type Rx = UdpRx;

    fn recv(&mut self) -> io::Result<Option<UdpRx>> {
        if self.rxq.is_empty() {
            self.fill_rx()?;
        }
        Ok(self.rxq.pop_front().map(|(buf, len, from)| {
            self.last_from = Some(from);
            UdpRx { buf, len }
        }))
    }

    fn release(&mut self, pkt: UdpRx) {
        if self.rxfree.len() < UDP_RX_BATCH {
            self.rxfree.push(pkt.buf);
        }
    }

    fn learn(&mut self, node: u32) {
        if let (Some(slot), Some(from)) = (self.peers.get_mut(node as usize), self.last_from) {
            *slot = Some(from);
        }
    }

    fn register(&mut self, poller: &Poller, token: u32) -> io::Result<()> {
        poller.add(self.sock.as_fd(), token)
    }
}

/// Counters of the datagram layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DgramStats {
    /// Packets that failed their checksum.
    pub corrupt: u64,
    /// Packets that were not ours or were malformed.
    pub foreign: u64,
    /// Packets of an older link epoch.
    pub stale: u64,
    /// `Hello` packets whose MAC failed (or that had none while this agent
    /// has a job key).
    pub unauthenticated: u64,
    /// `Hello` packets with a valid MAC that were not fresh (they did not
    /// name this side's current epoch) and so changed nothing.
    pub hello_not_fresh: u64,
    /// Packets from a peer whose link is held down ([`Close::Hold`]),
    /// dropped.
    pub held: u64,
    /// `Hello`s refused because one end runs a hybrid agent and the other
    /// this transport alone.
    pub mixed: u64,
    /// Authenticated `Hello`s refused because they said their sender receives
    /// packets smaller than [`PACKET_MIN`].
    pub refused_packet: u64,
    /// Packets sent again.
    pub retransmits: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Packets handed to the device (first sends, control packets).
    pub packets_tx: u64,
    /// Packets received (ours or not).
    pub packets_rx: u64,
    /// Data packets whose payload went from the device's buffer straight to
    /// the stream (the frame reader, or a steered pool block): in order,
    /// nothing waiting before them.
    pub rx_in_place: u64,
    /// Data packets kept (a copy of the payload) for reordering or while the
    /// frame reader was full.
    pub rx_kept: u64,
    /// Payload buffers allocated (none spare to reuse).
    pub payload_allocs: u64,
    /// Data packets encoded straight from a pool block (one copy: block →
    /// device buffer), and sent again from it when lost.
    pub tx_from_pool: u64,
    /// Data packets sent straight from a queued frame (not copied, and kept
    /// for a resend as a reference to the frame).
    pub tx_from_frame: u64,
    /// Of the packets sent again, those read again from their pool block.
    pub resent_from_pool: u64,
}

/// What the reliability layer keeps of a sent data packet, to send it again.
enum TxItem {
    /// A copy of the payload: a packet that gathers the queue's byte buffers
    /// (frame headers, small messages, padding), or a block the transport frees.
    Owned(Vec<u8>),
    /// A packet whose payload is one range of a pool block that its owner keeps
    /// unchanged until the peer has it ([`Out::Block`] without `free_after`: the
    /// agent frees it on the peer's session ack), read again for a resend. A
    /// resend after that ack can only be a needless one, which the peer drops as
    /// a duplicate by its sequence number before looking at the bytes.
    Pool { off: u64, len: u64 },
    /// A packet whose payload is one range of a frame the agent queued
    /// ([`Out::Bytes`]): the frame is shared, not copied (the agent's session
    /// keeps the same frame until the peer acknowledges it).
    Frame {
        buf: Arc<Vec<u8>>,
        start: usize,
        len: usize,
    },
}

impl TxItem {
    /// The payload's bytes (a pool range that no longer resolves, which cannot
    /// happen for ranges checked when sent, reads as empty).
    fn bytes<'a>(&'a self, pool: &'a Pool) -> &'a [u8] {
        match self {
            TxItem::Owned(v) => v,
            TxItem::Pool { off, len } => pool.block_slice(*off, *len).unwrap_or(&[]),
            TxItem::Frame { buf, start, len } => &buf[*start..*start + *len],
        }
    }
}

struct DLink {
    /// This side's epoch.
    epoch: u64,
    /// The peer's, once heard (0: not yet).
    peer_epoch: u64,
    up: bool,
    tx: reliable::Sender<TxItem>,
    rx: reliable::Receiver<Vec<u8>>,
    outq: VecDeque<Out>,
    queued: usize,
    /// The largest packet, header included, sent on this link: the smaller of
    /// the device's and the peer's (its authenticated `Hello`). Set with
    /// `peer_epoch`, before the link is up, and fixed for the link instance;
    /// 0 until then.
    packet: usize,
    last_tx: Instant,
    last_hello: Option<Instant>,
    last_dbg: Option<Instant>,
}

/// The links, one per node, each made when first needed (a `Hello` to send
/// or answer, on-demand links): a peer never talked to costs a pointer.
/// Indexing for reading expects the link made; indexing for writing makes it.
struct Links {
    v: Vec<Option<Box<DLink>>>,
    cfg: reliable::Config,
    /// The time a link made by indexing starts at (the transport's round).
    now: Instant,
}

impl Links {
    fn len(&self) -> usize {
        self.v.len()
    }

    fn get(&self, j: usize) -> Option<&DLink> {
        self.v.get(j)?.as_deref()
    }

    fn get_mut(&mut self, j: usize) -> Option<&mut DLink> {
        self.v.get_mut(j)?.as_deref_mut()
    }

    /// Whether link `j` is made and up.
    fn up(&self, j: usize) -> bool {
        self.get(j).is_some_and(|l| l.up)
    }

    /// The links made.
    fn iter(&self) -> impl Iterator<Item = &DLink> {
        self.v.iter().flatten().map(|b| &**b)
    }
}

impl std::ops::Index<usize> for Links {
    type Output = DLink;
    fn index(&self, j: usize) -> &DLink {
        self.get(j)
            .unwrap_or_else(|| panic!("datagram link {j} read before it was made"))
    }
}

impl std::ops::IndexMut<usize> for Links {
    fn index_mut(&mut self, j: usize) -> &mut DLink {
        let (cfg, now) = (self.cfg, self.now);
        // Epochs: random, new per link instance (unguessable off the path).
        self.v[j].get_or_insert_with(|| Box::new(DLink::new(auth::random_u64(), cfg, now)))
    }
}

impl DLink {
    fn new(epoch: u64, cfg: reliable::Config, now: Instant) -> DLink {
        DLink {
            epoch,
            peer_epoch: 0,
            up: false,
            tx: reliable::Sender::new(cfg, now),
            rx: reliable::Receiver::new(cfg),
            outq: VecDeque::new(),
            queued: 0,
            packet: 0,
            last_tx: now,
            last_hello: None,
            last_dbg: None,
        }
    }
}

/// A [`Transport`] over a [`PacketIo`].
pub struct DatagramTransport<I: PacketIo> {
    me: u32,
    nodes: u32,
    hello: Hello,
    io: I,
    pool: Arc<Pool>,
    cfg: reliable::Config,
    links: Links,
    /// On-demand links ([`Transport::want`]): `Hello`s go only to the
    /// peers wanted (every peer's are answered). Otherwise to every peer.
    on_demand: bool,
    wanted: Vec<bool>,
    peer_timeout: Duration,
    /// The job key; `None`: peers are not authenticated.
    key: Option<JobKey>,
    /// When a failed `Hello` MAC was last logged at warn level.
    auth_warned: Option<Instant>,
    /// When a refused hybrid/single-transport `Hello` was last logged.
    mixed_warned: Option<Instant>,
    /// When a `Hello` refused for its packet size was last logged.
    packet_warned: Option<Instant>,
    /// By node: the link packet size last logged (a link cut below this
    /// device's size is said once per peer and size).
    packet_said: Vec<u32>,
    /// A bit per node: a link to it was up since this agent started.
    was_up: Vec<u64>,
    /// Links held down until then ([`Close::Hold`]; a few at most).
    held: Vec<(usize, Instant)>,
    /// Payload buffers to reuse.
    spare: Vec<Vec<u8>>,
    /// Scratch: what an ack freed.
    acked: Vec<TxItem>,
    /// The time of this agent round (`poll`, `tick`): `flush` goes by it
    /// instead of reading the clock once more per call. `None` after the agent
    /// slept (`before_sleep`), until the next `poll`: then `flush` reads the clock.
    now: Option<Instant>,
    stats: DgramStats,
    /// Reliability counters of link instances replaced since.
    retired: reliable::SenderStats,
    /// Wakes a sleeping agent at the links' next reliability deadline
    /// (loss detection's reordering timer, a tail loss probe, a delayed
    /// ack): the agent's own timers run every 5 ms, and a sleep that long
    /// turned a 25 µs reordering window into milliseconds of idle link.
    /// `None` where the kernel refused one (then the tick serves).
    wake: Option<TimerFd>,
}

impl<I: PacketIo> DatagramTransport<I> {
    /// Links from node `hello.node` to the other `hello.nodes - 1` over
    /// `io`; `hello` (this agent's node, node count, incarnation and job) is
    /// what its `Hello` packets say. A peer that acknowledges nothing for
    /// `peer_timeout` while data waits is declared down. With `key`, `Hello`
    /// packets carry a MAC and peers' are checked (see the module doc).
    pub fn new(
        hello: Hello,
        mut io: I,
        pool: Arc<Pool>,
        poller: &Poller,
        peer_timeout: Duration,
        key: Option<JobKey>,
    ) -> io::Result<DatagramTransport<I>> {
        io.register(poller, 0)?;
        let timer = match io.agent_sleeps() {
            true => TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .map(Some),
            false => Ok(None),
        };
        let wake = match timer {
            Ok(None) => None,
            Ok(Some(t)) => {
                poller.add(t.as_fd(), TIMER_TOKEN)?;
                Some(t)
            }
            Err(e) => {
                log::warn!("{}: no timerfd ({e}): retransmissions wait for the agent's tick while it sleeps", io.name());
                None
            }
        };
        let cfg = reliable::Config::datagram();
        let now = Instant::now();
        let (me, nodes) = (hello.node, hello.nodes);
        let links = Links {
            v: (0..nodes).map(|_| None).collect(),
            cfg,
            now,
        };
        Ok(DatagramTransport {
            me,
            nodes,
            hello,
            io,
            pool,
            cfg,
            wanted: vec![false; nodes as usize],
            on_demand: false,
            links,
            peer_timeout,
            key,
            auth_warned: None,
            held: Vec::new(),
            mixed_warned: None,
            packet_warned: None,
            packet_said: vec![0; nodes as usize],
            was_up: vec![0; (nodes as usize).div_ceil(64)],
            spare: Vec::new(),
            acked: Vec::new(),
            now: None,
            stats: DgramStats::default(),
            retired: reliable::SenderStats::default(),
            wake,
        })
    }

    /// Use congestion model `model` for the links made from now on (the
    /// agent's `congestion` setting; [`reliable::Config::datagram`]'s by
    /// default).
    pub fn with_congestion(mut self, model: reliable::Model) -> Self {
        self.cfg.model = model;
        self.links.cfg.model = model;
        self
    }

    /// Counters of the datagram layer.
    pub fn dgram_stats(&self) -> DgramStats {
        self.stats
    }

    /// The largest payload of a packet on link `j` (see [`DLink::packet`]; an
    /// up link always has its size, the device's is the fallback).
    fn payload_max(&self, j: usize) -> usize {
        let p = self.links[j].packet;
        debug_assert!(
            p >= PACKET_MIN || !self.links[j].up,
            "link {j} up without a packet size"
        );
        match p {
            0 => self.io.max_packet(),
            p => p,
        }
        .saturating_sub(PKT_HEADER)
        .max(1)
    }

    fn header(&self, j: usize, kind: PktKind, seq: u64, ack: Ack) -> PacketHeader {
        let l = &self.links[j];
        PacketHeader {
            kind,
            flags: if l.up { 0 } else { FLAG_NOT_UP },
            src_node: self.me,
            dst_node: j as u32,
            src_epoch: l.epoch,
            dst_epoch: l.peer_epoch,
            seq,
            ack,
        }
    }

    /// Encode a packet straight into the device's buffer and send it.
    fn send_raw(&mut self, j: usize, h: &PacketHeader, payload: &[u8], pinned: bool, now: Instant) {
        match self.io.send_packet(j as u32, h, payload, pinned) {
            Ok(sent) => {
                self.links[j].last_tx = now;
                self.stats.packets_tx += sent as u64;
            }
            Err(e) => log::debug!("{} send to node {j}: {e}", self.io.name()),
        }
    }

    /// Whether link `j` is held down now (holds that ended are dropped).
    fn held(&mut self, j: usize, now: Instant) -> bool {
        if self.held.is_empty() {
            return false;
        }
        self.held.retain(|&(_, until)| until > now);
        self.held.iter().any(|&(k, _)| k == j)
    }

    fn send_hello(&mut self, j: usize, now: Instant) {
        if self.held(j, now) {
            return;
        }
        self.links.now = now;
        self.links[j].last_hello = Some(now);
        let h = self.header(j, PktKind::Hello, 0, Ack::default());
        let mut payload = [0u8; HELLO_BODY + MAC_LEN];
        payload[..Hello::LEN].copy_from_slice(&self.hello.to_bytes());
        let limits = PacketLimits {
            max_packet: u32::try_from(self.io.max_packet()).unwrap_or(u32::MAX),
        };
        payload[Hello::LEN..HELLO_BODY].copy_from_slice(&limits.to_bytes());
        let mac = self
            .key
            .as_ref()
            .map_or([0; MAC_LEN], |k| hello_mac(k, &h, &payload[..HELLO_BODY]));
        payload[HELLO_BODY..].copy_from_slice(&mac);
        self.send_raw(j, &h, &payload, false, now);
    }

    fn send_control(&mut self, j: usize, kind: PktKind, now: Instant) {
        let (ack, more) = self.links[j].rx.make_wide_ack();
        let h = self.header(j, kind, 0, ack);
        match more {
            Some(m) => self.send_raw(j, &h, &packet::sack_more_bytes(&m), false, now),
            None => self.send_raw(j, &h, &[], false, now),
        }
    }

    /// A buffer for a payload: a spare one, else a new one.
    fn payload_buf(&mut self, cap: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(v) => v,
            None => {
                self.stats.payload_allocs += 1;
                Vec::with_capacity(cap)
            }
        }
    }

    /// A fresh link instance for `j` (new epoch); returns the blocks its
    /// queue referenced that are to be freed.
    fn reset(&mut self, j: usize, now: Instant) -> Vec<u64> {
        let epoch = auth::random_u64();
        let old = std::mem::replace(&mut self.links[j], DLink::new(epoch, self.cfg, now));
        self.links[j].peer_epoch = old.peer_epoch;
        self.links[j].packet = old.packet;
        self.retired.add(&old.tx.stats());
        old.outq
            .into_iter()
            .filter_map(|o| match o {
                Out::Block { free_after, .. } => free_after,
                Out::Bytes { .. } => None,
            })
            .collect()
    }

    fn link_down(&mut self, j: usize, reason: String, now: Instant, events: &mut Vec<LinkEvent>) {
        let blocks = self.reset(j, now);
        events.push(LinkEvent::Down {
            node: j as u32,
            reason,
            blocks,
            closed: true,
        });
        self.send_hello(j, now);
    }

    /// Take what the device has; returns whether anything came. Each packet
    /// is parsed and checked where the device received it.
    fn receive(&mut self, now: Instant, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        let mut any = false;
        for _ in 0..RX_BURST {
            let pkt = match self.io.recv() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("{} receive: {e}", self.io.name());
                    break;
                }
            };
            any = true;
            self.stats.packets_rx += 1;
            match packet::decode(&pkt) {
                Ok((h, payload)) => self.on_packet(&h, payload, now, rx, events),
                Err(packet::PacketError::Checksum) => self.stats.corrupt += 1,
                Err(e) => {
                    self.stats.foreign += 1;
                    log::debug!("dropped a packet: {e}");
                }
            }
            self.io.release(pkt);
        }
        any
    }

    fn on_packet(
        &mut self,
        h: &PacketHeader,
        payload: &[u8],
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        let j = h.src_node as usize;
        if h.dst_node != self.me || j >= self.links.len() || h.src_node == self.me {
            self.stats.foreign += 1;
            return;
        }
        if self.held(j, now) {
            self.stats.held += 1;
            return;
        }
        self.links.now = now;
        let was_up = self.was_up[j / 64] & (1 << (j % 64)) != 0;
        if h.kind != PktKind::Hello && self.links.get(j).is_none() && was_up {
            // No link now, though there was one (closed for idleness: its
            // last acks and resends come late): stale, and not worth making
            // a link for. (A peer this agent never had a link with speaks to
            // an earlier incarnation of it: answered below with a Hello.)
            self.stats.stale += 1;
            return;
        }
        // (Made now if it was not: a peer's `Hello` is answered, and a node
        // that exists may send at most this one link's worth of state.)
        let _ = &mut self.links[j];
        if h.kind == PktKind::Hello {
            // Of this job (see `Hello::job`), naming its sender and our node count.
            let Some(x) = Hello::parse(payload).ok().filter(|x| {
                x.node == h.src_node && x.nodes == self.nodes && x.job == self.hello.job
            }) else {
                self.stats.foreign += 1;
                return;
            };
            let Some(limits) = payload
                .get(Hello::LEN..)
                .and_then(|b| PacketLimits::parse(b).ok())
            else {
                self.stats.foreign += 1;
                return;
            };
            // With a job key: nothing from a Hello is acted on before its MAC checks.
            if let Some(k) = &self.key {
                let authentic = payload.len() == HELLO_BODY + MAC_LEN
                    && k.verify(
                        auth::label::DGRAM_HELLO,
                        &hello_mac_fields(h, &payload[..HELLO_BODY]).each(),
                        &payload[HELLO_BODY..],
                    );
                if !authentic {
                    self.stats.unauthenticated += 1;
                    // Said at warn level at most every 5 s (a forger may send many).
                    if self
                        .auth_warned
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
                    {
                        self.auth_warned = Some(now);
                        log::warn!(
                            "{}: a Hello claiming node {j} failed its MAC (forged, or a peer with \
                             another job key or none); {} so far",
                            self.io.name(),
                            self.stats.unauthenticated
                        );
                    }
                    return;
                }
            }
            // A hybrid agent (tcp among its transports: its control path) and
            // an agent of this transport alone cannot be peers: the hybrid
            // one reads a link only once the tcp control connection chose it.
            if (x.caps & caps::TCP != 0) != (self.hello.caps & caps::TCP != 0) {
                self.stats.mixed += 1;
                if self
                    .mixed_warned
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
                {
                    self.mixed_warned = Some(now);
                    let (hybrid, alone) = if x.caps & caps::TCP != 0 {
                        (format!("node {j}"), "this agent".to_string())
                    } else {
                        ("this agent".to_string(), format!("node {j}"))
                    };
                    log::warn!(
                        "{}: node {j} refused: {hybrid} runs a hybrid agent (several transports, \
                         tcp its control path) and {alone} runs {} alone; a job's agents must \
                         all run tcp (--transports {},tcp) or all run {} alone",
                        self.io.name(),
                        self.io.name(),
                        self.io.name(),
                        self.io.name()
                    );
                }
                return;
            }
            // The peer's packet size, bounded: below the least a link runs on
            // it is refused (the link never comes up, said at warn); above
            // this device's own it changes nothing.
            let Some(packet) = self.link_packet(j, limits, now) else {
                return;
            };
            // Fresh: it names our current epoch (random, new per link
            // instance), so it was made for this instance, not replayed
            // from an earlier one.
            let l = &self.links[j];
            let fresh = h.dst_epoch == l.epoch;
            if l.up && l.peer_epoch != h.src_epoch && !fresh {
                // A restarted peer that does not know our epoch yet, or a
                // replay: answer with our epoch (at most every 10 ms), change
                // nothing.
                self.stats.hello_not_fresh += 1;
                if l.last_hello
                    .is_none_or(|t| now.duration_since(t) >= HELLO_EVERY / 10)
                {
                    self.send_hello(j, now);
                }
                return;
            }
            if l.up && l.peer_epoch != h.src_epoch {
                self.io.learn(h.src_node);
                self.link_down(j, "peer's link restarted".into(), now, events);
            } else if !l.up {
                // A link that is not up carries nothing to divert: a peer that
                // restarted elsewhere (another port) must be answered where it is.
                self.io.learn(h.src_node);
            }
            let l = &mut self.links[j];
            // Again: a link just made afresh has a new epoch the peer does not know.
            let (fresh, up) = (h.dst_epoch == l.epoch, l.up);
            if !up {
                l.peer_epoch = h.src_epoch;
                // The link's packet size, fixed once it is up: nothing is cut
                // into packets before.
                l.packet = packet;
                self.peer_packet(j, packet);
            }
            if fresh && !up {
                self.become_up(j, now, rx, events);
            }
            if fresh {
                rx.link(j as u32).heard(now);
            }
            let l = &self.links[j];
            if h.flags & FLAG_NOT_UP != 0 || h.dst_epoch != l.epoch {
                self.send_hello(j, now);
            }
            return;
        }
        let l = &mut self.links[j];
        if h.src_epoch != l.peer_epoch || h.dst_epoch != l.epoch {
            self.stats.stale += 1;
            // The peer sends on a link instance we do not have (we
            // restarted: on-demand links, we want nothing from it, so we
            // would never say so): tell it our epoch, at most every 10 ms,
            // and it gives the old instance up at once, not after its peer
            // timeout of silence (sends failing meanwhile).
            if !l.up
                && l.last_hello
                    .is_none_or(|t| now.duration_since(t) >= HELLO_EVERY / 10)
            {
                self.send_hello(j, now);
            }
            return;
        }
        if !self.links[j].up {
            // Both epochs right: the peer heard our (authenticated) Hello.
            self.io.learn(h.src_node);
            self.become_up(j, now, rx, events);
        }
        rx.link(j as u32).heard(now);
        let l = &mut self.links[j];
        let mut acked = std::mem::take(&mut self.acked);
        let more = match h.kind {
            PktKind::Ack | PktKind::Probe => packet::sack_more(payload),
            _ => None,
        };
        if let Err(e) = l.tx.on_wide_ack(&h.ack, more.as_ref(), now, &mut acked) {
            self.stats.foreign += 1;
            log::debug!("node {j}: {e}");
        }
        l.tx.account(now, l.queued > 0);
        for it in acked.drain(..) {
            if let TxItem::Owned(v) = it {
                recycle(&mut self.spare, v);
            }
        }
        self.acked = acked;
        let l = &mut self.links[j];
        match h.kind {
            PktKind::Data => {
                let stream = rx.link(j as u32);
                if !stream.full() && l.rx.accept_in_order(h.seq, now) {
                    // Next in the stream and nothing before it: straight from the
                    // device's buffer to where the stream goes.
                    self.stats.rx_in_place += 1;
                    stream.absorb(&self.pool, payload);
                } else {
                    let mut v = self.payload_buf(payload.len());
                    v.extend_from_slice(payload);
                    self.stats.rx_kept += 1;
                    let l = &mut self.links[j];
                    if l.rx.on_packet(h.seq, v, now) == reliable::Verdict::Duplicate {
                        self.stats.duplicates += 1;
                    }
                }
            }
            PktKind::Probe => l.rx.on_probe(),
            PktKind::Ack | PktKind::Hello => {}
        }
    }

    /// The packet size of a link to `j` whose authenticated `Hello` says
    /// `limits`: the smaller of this device's and the peer's; `None` (refused,
    /// counted, said at warn at most every 5 s) when the peer's is below
    /// [`PACKET_MIN`].
    fn link_packet(&mut self, j: usize, limits: PacketLimits, now: Instant) -> Option<usize> {
        let theirs = limits.max_packet as usize;
        if theirs >= PACKET_MIN {
            return Some(theirs.min(self.io.max_packet()));
        }
        self.stats.refused_packet += 1;
        if self
            .packet_warned
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            self.packet_warned = Some(now);
            log::warn!(
                "{}: node {j} refused: it says it receives packets of at most {theirs} B, \
                 below the {PACKET_MIN} B a link needs; raise node {j}'s MTU (its interface, \
                 dpdk_mtu or packet_bytes); {} refused so far",
                self.io.name(),
                self.stats.refused_packet
            );
        }
        None
    }

    /// Link `j`'s packets are at most `packet` bytes from now on: the device
    /// is told, and a size below this device's own is said once per peer and
    /// size.
    fn peer_packet(&mut self, j: usize, packet: usize) {
        self.io.peer_packet(j as u32, packet);
        let ours = self.io.max_packet();
        let said = &mut self.packet_said[j];
        if *said as usize == packet || (packet >= ours && *said == 0) {
            return;
        }
        *said = packet as u32;
        if packet < ours {
            log::info!(
                "{}: node {j} receives packets of at most {packet} B: packets to it are cut to \
                 {packet} B (this node's are {ours} B)",
                self.io.name()
            );
        } else {
            log::info!(
                "{}: node {j} receives packets of {ours} B again: packets to it are {ours} B",
                self.io.name()
            );
        }
    }

    fn become_up(
        &mut self,
        j: usize,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        self.links[j].up = true;
        self.was_up[j / 64] |= 1 << (j % 64);
        // A new stream: the link's epochs are new.
        rx.link(j as u32).reset(FrameReader::new(), now);
        events.push(LinkEvent::Up { node: j as u32 });
    }

    /// Move in-order bytes into the peer's stream (or a steered block) while
    /// it has room.
    fn deliver(&mut self, j: usize, rx: &mut dyn Inflow) -> bool {
        let l = &mut self.links[j];
        let stream = rx.link(j as u32);
        let mut any = false;
        while !stream.full() {
            let Some(p) = l.rx.pop() else { break };
            stream.absorb(&self.pool, &p);
            recycle(&mut self.spare, p);
            any = true;
        }
        any
    }

    /// Cut queued bytes into packets while the window allows.
    fn transmit(&mut self, j: usize, now: Instant, freed: &mut Vec<u64>) -> bool {
        let max = self.payload_max(j);
        let mut any = false;
        // (Its own handle: the slices it gives out outlive `send_raw`'s `&mut self`.)
        let pool = Arc::clone(&self.pool);
        while self.links[j].queued > 0 && self.links[j].tx.can_send(now) {
            // A packet that starts at a pool block range its owner keeps (the
            // rest of a large chunk) is encoded straight from the block, and the
            // reliability layer keeps only where it is: one copy, not two.
            if let Some(Out::Block {
                off,
                len,
                pos,
                free_after: None,
            }) = self.links[j].outq.front_mut()
            {
                let n = (max as u64).min(*len - *pos);
                let at = *off + *pos;
                if pool.block_slice(at, n).filter(|_| n > 0).is_some() {
                    *pos += n;
                    if *pos == *len {
                        self.links[j].outq.pop_front();
                    }
                    self.links[j].queued -= n as usize;
                    self.stats.tx_from_pool += 1;
                    self.send_data(j, TxItem::Pool { off: at, len: n }, now);
                    any = true;
                    continue;
                }
            }
            // A packet within one queued frame (a whole packet's worth of it,
            // or all there is to send): sent from the frame and kept as a
            // reference to it, not copied. Packets that would gather several
            // items (a frame's tail and the next frame's head) are copied
            // together below, so small frames still share packets.
            let l = &mut self.links[j];
            if let Some(Out::Bytes { buf, pos }) = l.outq.front_mut() {
                let left = buf.len() - *pos;
                if left > 0 && (left >= max || left == l.queued) {
                    let n = left.min(max);
                    let item = TxItem::Frame {
                        buf: buf.clone(),
                        start: *pos,
                        len: n,
                    };
                    *pos += n;
                    if *pos == buf.len() {
                        l.outq.pop_front();
                    }
                    l.queued -= n;
                    self.stats.tx_from_frame += 1;
                    self.send_data(j, item, now);
                    any = true;
                    continue;
                }
            }
            let mut payload = self.payload_buf(max);
            payload.clear();
            let l = &mut self.links[j];
            while payload.len() < max {
                let Some(front) = l.outq.front_mut() else {
                    break;
                };
                let room = max - payload.len();
                let done = match front {
                    Out::Bytes { buf, pos } => {
                        let n = room.min(buf.len() - *pos);
                        payload.extend_from_slice(&buf[*pos..*pos + n]);
                        *pos += n;
                        *pos == buf.len()
                    }
                    Out::Block { off, len, pos, .. } => {
                        let n = (room as u64).min(*len - *pos);
                        match self.pool.block_slice(*off + *pos, n) {
                            Some(s) => payload.extend_from_slice(s),
                            // Cannot happen for blocks the agent queued;
                            // zeros keep the stream's framing intact.
                            None => payload.resize(payload.len() + n as usize, 0),
                        }
                        *pos += n;
                        *pos == *len
                    }
                };
                if done {
                    if let Some(Out::Block {
                        free_after: Some(b),
                        ..
                    }) = l.outq.pop_front()
                    {
                        freed.push(b);
                    }
                }
            }
            l.queued -= payload.len();
            self.send_data(j, TxItem::Owned(payload), now);
            any = true;
        }
        let l = &mut self.links[j];
        l.tx.account(now, l.queued > 0);
        any
    }

    /// Send `item` as link `j`'s next `Data` packet (with the ack it owes)
    /// and hand it to the reliability layer to keep until acknowledged.
    fn send_data(&mut self, j: usize, item: TxItem, now: Instant) {
        // (Its own handle: the bytes outlive `send_raw`'s `&mut self`.)
        let pool = Arc::clone(&self.pool);
        let l = &mut self.links[j];
        let ack = l.rx.make_piggyback_ack();
        let seq = l.tx.next_seq();
        let h = self.header(j, PktKind::Data, seq, ack);
        let pinned = matches!(item, TxItem::Pool { .. });
        self.send_raw(j, &h, item.bytes(&pool), pinned, now);
        if let Err(TxItem::Owned(p)) = self.links[j].tx.send(item, now) {
            recycle(&mut self.spare, p);
        }
    }

    /// A debug line with link `j`'s reliability state (once a second).
    fn log_link(&mut self, j: usize, now: Instant) {
        let l = &mut self.links[j];
        l.last_dbg = Some(now);
        let (tx, rx) = (&l.tx, &l.rx);
        log::debug!(
            "link {j}: queued {} in flight {} cwnd {} ssthresh {} srtt {:?} rto {:?} {:?}; \
             receiver next {} ready {} window {} {:?}",
            l.queued,
            tx.in_flight(),
            tx.cwnd(),
            tx.ssthresh(),
            tx.srtt(),
            tx.rto(),
            tx.stats(),
            rx.next_expected(),
            rx.ready_len(),
            rx.window(),
            rx.stats()
        );
    }

    /// The reliability counters of every link, past instances included.
    fn sender_stats(&self) -> reliable::SenderStats {
        let mut t = self.retired;
        for l in self.links.iter() {
            t.add(&l.tx.stats());
        }
        t
    }

    /// Set the wake-up timer to the earliest reliability deadline of an up
    /// link (disarmed when there is none).
    fn arm_wake(&mut self) {
        let Some(t) = &self.wake else { return };
        let now = Instant::now();
        let due = self
            .links
            .iter()
            .filter(|l| l.up)
            .flat_map(|l| [l.tx.next_deadline(), l.rx.ack_deadline(now)])
            .flatten()
            .min();
        let r = match due {
            // (A deadline already passed: as soon as possible; 0 would disarm.)
            Some(d) => t.set(
                Expiration::OneShot(TimeSpec::from_duration(
                    d.saturating_duration_since(now)
                        .max(Duration::from_micros(1)),
                )),
                TimerSetTimeFlags::empty(),
            ),
            None => t.unset(),
        };
        if let Err(e) = r {
            log::debug!("{}: wake-up timer: {e}", self.io.name());
        }
    }

    /// Timers of an up link: retransmissions, acks, window probes.
    fn service(&mut self, j: usize, now: Instant) -> bool {
        let mut any = false;
        let (me, epoch, peer_epoch) = (self.me, self.links[j].epoch, self.links[j].peer_epoch);
        if self.links[j].tx.next_deadline().is_some_and(|d| d <= now) {
            let DLink { tx, rx, .. } = &mut self.links[j];
            let (io, stats, pool) = (&mut self.io, &mut self.stats, &self.pool);
            tx.poll_retransmit(now, |seq, p| {
                let ack = rx.make_piggyback_ack();
                let h = PacketHeader {
                    kind: PktKind::Data,
                    flags: 0,
                    src_node: me,
                    dst_node: j as u32,
                    src_epoch: epoch,
                    dst_epoch: peer_epoch,
                    seq,
                    ack,
                };
                // (A resend is copied: its bytes and checksum are read together.)
                if let Err(e) = io.send_packet(j as u32, &h, p.bytes(pool), false) {
                    log::debug!("resend to node {j}: {e}");
                }
                stats.retransmits += 1;
                if matches!(p, TxItem::Pool { .. }) {
                    stats.resent_from_pool += 1;
                }
                any = true;
            });
            let l = &mut self.links[j];
            l.tx.account(now, l.queued > 0);
        }
        if self.links[j].rx.ack_due(now) {
            self.send_control(j, PktKind::Ack, now);
            any = true;
        }
        if self.links[j].queued > 0 && self.links[j].tx.probe_due(now) {
            self.links[j].tx.probed(now);
            self.send_control(j, PktKind::Probe, now);
        }
        any
    }
}

impl<I: PacketIo> Transport for DatagramTransport<I> {
    fn name(&self, _node: Option<u32>) -> &'static str {
        self.io.name()
    }

    fn local_addr(&self) -> String {
        self.io.local_addr()
    }

    fn on_ready(
        &mut self,
        _sub: u32,
        _poller: &Poller,
        token: u32,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        if token == TIMER_TOKEN {
            // Only to wake the agent: its next round's `poll` serves the
            // links. Read the expiry so the descriptor is quiet again
            // (nonblocking: an early wake-up finds nothing to read).
            if let Some(t) = &self.wake {
                let _ = t.wait();
            }
            return;
        }
        // (Not behind the sends' time: see `poll`.)
        let now = self.now.map_or(now, |t| t.max(now));
        if self.receive(now, rx, events) {
            for j in 0..self.links.len() {
                if self.links.up(j) {
                    self.deliver(j, rx);
                }
            }
        }
        self.io.flush();
    }

    fn tick(
        &mut self,
        _poller: &Poller,
        now: Instant,
        _rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        self.now = self.now.max(Some(now));
        for j in 0..self.links.len() {
            if j as u32 == self.me {
                continue;
            }
            if !self.links.up(j) {
                if (!self.on_demand || self.wanted[j])
                    && self.links.get(j).is_none_or(|l| {
                        l.last_hello
                            .is_none_or(|t| now.duration_since(t) >= HELLO_EVERY)
                    })
                {
                    self.send_hello(j, now);
                }
                continue;
            }
            let l = &self.links[j];
            if log::log_enabled!(log::Level::Debug)
                && l.last_dbg
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.log_link(j, now);
            }
            let l = &self.links[j];
            if l.tx.stalled(now, self.peer_timeout) {
                let ms = self.peer_timeout.as_millis();
                self.link_down(
                    j,
                    format!("peer acknowledged nothing for {ms} ms"),
                    now,
                    events,
                );
                continue;
            }
            self.service(j, now);
        }
        self.io.flush();
    }

    fn want(&mut self, node: Option<u32>, now: Instant) -> bool {
        let Some(node) = node else {
            self.on_demand = true;
            return true;
        };
        let j = node as usize;
        if j < self.wanted.len() && j as u32 != self.me && !self.wanted[j] {
            self.wanted[j] = true;
            if !self.links.up(j) {
                // At once, not at the next tick.
                self.send_hello(j, now);
                self.io.flush();
            }
        }
        self.on_demand
    }

    fn poll(&mut self, now: Instant, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        self.now = self.now.max(Some(now));
        // Never behind what `flush` stamped sends with: an ack taken in at an
        // earlier time gave round trips of 0 (the rate model's minimum round
        // trip, and with it its window, fell to nothing on the dpdk links).
        let now = self.now.unwrap_or(now);
        let mut any = self.io.poll_mode() && self.receive(now, rx, events);
        for j in 0..self.links.len() {
            if self.links.up(j) {
                any |= self.deliver(j, rx);
                any |= self.service(j, now);
            }
        }
        self.io.flush();
        any
    }

    fn push(&mut self, node: u32, item: Out) {
        if let Some(l) = self.links.get_mut(node as usize).filter(|l| l.up) {
            l.queued += item.remaining();
            l.outq.push_back(item);
        }
    }

    fn flush(
        &mut self,
        node: u32,
        _pool: &Pool,
        freed: &mut Vec<u64>,
        _events: &mut Vec<LinkEvent>,
    ) {
        if self.links.get(node as usize).is_some_and(|l| l.up) {
            // The agent's clock of this round (one read per round, not per call).
            let now = *self.now.get_or_insert_with(Instant::now);
            self.transmit(node as usize, now, freed);
        }
        self.io.flush();
    }

    fn link(&self, node: u32) -> LinkView {
        let l = self.links.get(node as usize);
        // Acks come on a descriptor the agent waits on and the reliability
        // deadlines (the pacer's next token too) arm its wake-up timer
        // (`arm_wake`); a poll-mode device that cannot wake the agent, or
        // an agent that never sleeps, polls. So does a sender of the AIMD
        // model: it judges a loss by the round trip, which an agent asleep
        // when the ack comes stretches (through the bench's lossy hop it
        // then read most losses as congestion and moved half as much).
        let wakes = self.io.agent_sleeps() && (!self.io.poll_mode() || self.io.wakes());
        let now = self.now.unwrap_or_else(Instant::now);
        LinkView {
            last_tx: l.filter(|l| l.up).map(|l| l.last_tx),
            queued: l.map_or(0, |l| l.queued),
            packet: l.filter(|l| l.up).map_or(0, |l| l.packet),
            held: wakes
                && l.is_some_and(|l| l.up && l.queued > 0 && l.tx.paced() && !l.tx.can_send(now)),
        }
    }

    fn before_sleep(&mut self, poller: &Poller) -> bool {
        // Time passes while the agent sleeps: `flush` reads the clock again.
        self.now = None;
        self.arm_wake();
        self.io.before_sleep(poller);
        !self.io.poll_mode() || self.io.wakes()
    }

    fn stats(&self) -> TransportStats {
        let s = &self.stats;
        let mut c = vec![
            ("packets_corrupt", s.corrupt),
            ("packets_foreign", s.foreign),
            ("packets_stale", s.stale),
            ("packets_unauthenticated", s.unauthenticated),
            ("packets_dropped_held", s.held),
            ("hellos_refused_mixed", s.mixed),
            ("hellos_refused_packet", s.refused_packet),
            ("packets_hello_not_fresh", s.hello_not_fresh),
            ("packets_resent", s.retransmits),
            ("packets_duplicate", s.duplicates),
            ("packets_tx", s.packets_tx),
            ("packets_rx", s.packets_rx),
            ("packets_rx_in_place", s.rx_in_place),
            ("packets_rx_kept", s.rx_kept),
            ("packets_tx_from_pool", s.tx_from_pool),
            ("packets_tx_from_frame", s.tx_from_frame),
            ("packets_resent_from_pool", s.resent_from_pool),
            ("payload_allocs", s.payload_allocs),
        ];
        let r = self.sender_stats();
        c.extend([
            ("packets_resent_timeout", r.timeouts),
            ("packets_resent_fast", r.fast_retransmits),
            ("packets_resent_spurious", r.spurious),
            ("congestion_undos", r.undone),
            ("packets_resent_tail_probe", r.tail_probes),
            ("reorder_window_widened", r.reorder_widened),
            ("loss_episodes_random", r.random_losses),
            ("loss_episodes_congestion", r.congestion_cuts),
            ("tx_us_sending", r.us_open),
            ("tx_us_cwnd_limited", r.us_cwnd),
            ("tx_us_peer_window_limited", r.us_rwnd),
            ("tx_us_send_window_limited", r.us_window),
            ("tx_us_drained", r.us_drained),
            ("tx_us_idle", r.us_idle),
            ("tx_us_stalled_before_probe", r.us_before_probe),
            ("tx_us_stalled_before_timeout", r.us_before_timeout),
            (
                "tx_cwnd_mean",
                r.cwnd_us / (r.us_open + r.us_cwnd + r.us_rwnd + r.us_window).max(1),
            ),
        ]);
        c.extend(self.io.counters());
        let mut info = self.io.info();
        let auth = if self.key.is_some() { "mac" } else { "none" };
        info.push(("peer_auth", auth.to_string()));
        TransportStats { counters: c, info }
    }

    fn close(&mut self, _poller: &Poller, node: u32, how: Close) -> Vec<u64> {
        let j = node as usize;
        if how == Close::Idle && j < self.wanted.len() {
            self.wanted[j] = false;
        }
        if self.links.get(j).is_none() || j as u32 == self.me {
            // (Never made: nothing to close, and no `Hello` to send.)
            return Vec::new();
        }
        if how == Close::Idle {
            // Forgotten whole (its buffers, its reliability state): the next
            // `Hello` either way makes a new link, as with a peer never
            // talked to. Packets of the old one still coming are stale.
            let Some(old) = self.links.v[j].take() else {
                return Vec::new();
            };
            self.retired.add(&old.tx.stats());
            return old
                .outq
                .into_iter()
                .filter_map(|o| match o {
                    Out::Block { free_after, .. } => free_after,
                    Out::Bytes { .. } => None,
                })
                .collect();
        }
        // The clock of this round when there is one (a simulation's is virtual).
        let now = self.now.unwrap_or_else(Instant::now);
        if let Close::Hold(d) = how {
            self.held.retain(|&(k, _)| k != j);
            self.held.push((j, now + d));
        }
        let blocks = self.reset(j, now);
        self.send_hello(j, now);
        self.io.flush();
        blocks
    }
}

/// The fields a datagram `Hello`'s MAC covers: the header's kind, flags,
/// nodes and both epochs, then the `Hello` and the [`PacketLimits`].
struct HelloMacFields<'a> {
    head: [u8; 26],
    hello: &'a [u8],
}

impl<'a> HelloMacFields<'a> {
    fn each(&self) -> [&[u8]; 2] {
        [&self.head, self.hello]
    }
}

fn hello_mac_fields<'a>(h: &PacketHeader, hello: &'a [u8]) -> HelloMacFields<'a> {
    let mut head = [0u8; 26];
    let mut w = FieldsMut::of(&mut head);
    w.put_u8::<0>(h.kind as u8);
    w.put_u8::<1>(h.flags);
    w.put_u32::<2>(h.src_node);
    w.put_u32::<6>(h.dst_node);
    w.put_u64::<10>(h.src_epoch);
    w.put_u64::<18>(h.dst_epoch);
    HelloMacFields { head, hello }
}

/// The MAC of a datagram `Hello` packet with header `h` and body `hello` (the
/// `Hello` and the [`PacketLimits`]).
fn hello_mac(key: &JobKey, h: &PacketHeader, hello: &[u8]) -> [u8; MAC_LEN] {
    key.mac(auth::label::DGRAM_HELLO, &hello_mac_fields(h, hello).each())
}

/// Keep a payload buffer for reuse (up to [`SPARE_MAX`]).
fn recycle(spare: &mut Vec<Vec<u8>>, mut v: Vec<u8>) {
    if spare.len() < SPARE_MAX {
        v.clear();
        spare.push(v);
    }
}

#[cfg(test)]
#[path = "datagram_tests.rs"]
mod tests;
