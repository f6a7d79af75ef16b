//! The agent: one polling thread that drains the clients' submission rings,
//! routes messages (to a local endpoint, or into the frame being built for
//! their destination node), moves frames over the transport, deposits what
//! arrives into receive rings, and serves the control socket.
//!
//! ## A poll round
//! 1. every client's submission ring, up to [`BURST`] records each;
//! 2. partly built frames go out: a round that found no more work for a
//!    destination flushes it, so aggregation never holds back a lone message
//!    (unless `flush_delay_us` asks for that);
//! 3. large messages queued per peer are cut into chunks as the link drains;
//! 4. readiness of sockets (`epoll_wait` with timeout 0, or a real wait when
//!    an adaptive agent goes to sleep): peer links, accepted connections, the
//!    control socket, the clients' bells and the agent's own doorbell
//!    (its transport threads' wake-up; never handed to a client);
//! 5. frames that arrived are split and deposited into receive rings; a full
//!    ring pauses that peer's frames (and TCP's window pauses the sender);
//! 6. timers: heartbeats, lost peers, dialing;
//! 7. clients that sleep and got something are woken.
//!
//! Everything a client wrote into shared memory is copied out by the ring
//! layer before it is parsed, and every offset, length and endpoint is checked
//! against what that client owns ([`BlockAlloc`] records owners).

mod control;
use control::bind_control;
mod rx;

pub mod config;
pub mod metrics;
pub mod stats;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::proto::{
    CompKind, Completion, CtlReply, CtlRequest, Delivery, Mode, Op, Status, Submit, RECV_HEADER,
};
use crate::shm::blocks::{BlockAlloc, Owner};
use crate::shm::handoff::{LineReader, ReadOutcome};
use crate::shm::{announce_awake, announce_sleep, needs_wake, Pool, RingRx, RingTx, BLOCK_UNIT};
use crate::transport::datagram::{DatagramTransport, UdpIo};
use crate::transport::tcp::TcpTransport;
use crate::transport::{LinkEvent, Out, Poller, Transport};
use crate::wire::{
    self, control_frame, reliable, FrameBuilder, FrameKind, RecordHeader, RecordKind, FLAG_ACK,
};

pub use config::{AgentConfig, IdlePolicy, TransportKind};
use stats::{ClientSnapshot, PeerCounters, PeerSnapshot, Snapshot};

/// Records taken from one submission ring per round.
pub const BURST: usize = 64;
const TICK: Duration = Duration::from_millis(5);
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Longest sleep of an adaptive agent whose transport must be polled (no
/// descriptor to wake it when packets arrive).
const POLL_MODE_SLEEP: Duration = Duration::from_millis(1);
/// Completions kept for a client whose completion ring is full; beyond
/// this its submissions are not taken (the agent's memory stays bounded).
const COMP_BACKLOG_MAX: usize = 4096;
/// How long a link that takes none of what is queued for it still counts
/// as work (keeps an adaptive agent polling); then the tick retries it.
const TX_STUCK_SPIN: Duration = Duration::from_millis(100);
/// Chunks at least this large are read straight into their block.
const STEER_MIN: usize = 64 * 1024;
/// Acknowledge a peer's frames at least every this many (and every tick).
const ACK_EVERY: u64 = 32;
/// At most one heap trim ([`crate::shm::release_free_heap`]) this often.
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(5);
/// How long a departed client's published submissions may take to go out.
const CLOSING_GRACE: Duration = Duration::from_secs(10);

const T_CTL_LISTEN: u64 = 1;
const T_CTL_CONN: u64 = 2;
const T_DOORBELL: u64 = 3;
const T_TRANSPORT: u64 = 4;
/// A client's bell (index: its slot).
const T_BELL: u64 = 5;

fn token(kind: u64, idx: usize) -> u64 {
    (kind << 32) | idx as u64
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The pool could not be created.
    #[error("cannot create the shared-memory pool")]
    Pool(#[from] crate::shm::ShmError),
    /// The control socket could not be bound.
    #[error("cannot listen on the control socket {path}")]
    Socket {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another agent serves this socket.
    #[error("another agent is already listening on {0}")]
    SocketBusy(PathBuf),
    /// The socket's directory, or a file at the socket's path, is not safe
    /// to use (another uid could put its own listener there).
    #[error("refusing to use the control socket {path}: {why}")]
    SocketUnsafe {
        /// Socket path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The TCP listener could not be bound.
    #[error("cannot listen for peer agents on {addr}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The packet device (the dpdk transport's port) could not be started.
    #[error("cannot start the {name} device")]
    Device {
        /// The transport.
        name: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// epoll/eventfd failed.
    #[error("cannot set up the poller")]
    Poller(#[source] io::Error),
    /// Pinning failed.
    #[error("cannot pin the polling thread to core {core}")]
    Pin {
        /// Core.
        core: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum PeerState {
    /// This node.
    Local,
    /// Not connected yet (since start, or since the last loss).
    Connecting,
    /// Connected; our `Resume` sent, waiting for the peer's.
    Resuming,
    /// Exchanging frames.
    Up,
    /// The connection broke; the session waits (up to the peer timeout)
    /// for a new connection to resume it. Sends wait meanwhile.
    Disconnected(Instant, String),
    /// Declared lost; sends fail until it comes back.
    Lost(String),
}

impl PeerState {
    fn name(&self) -> String {
        match self {
            PeerState::Local => "local".into(),
            PeerState::Connecting => "connecting".into(),
            PeerState::Resuming => "resuming".into(),
            PeerState::Up => "up".into(),
            PeerState::Disconnected(_, r) => format!("disconnected ({r})"),
            PeerState::Lost(r) => format!("lost ({r})"),
        }
    }
}

/// A `Data` frame kept until the peer acknowledges it, so that a broken
/// connection can be resumed without losing it.
enum Retained {
    /// A whole frame.
    Bytes(Vec<u8>),
    /// A chunk of a large message: frame and record header, the payload's
    /// range of a pool block (sent from there), and padding.
    Chunk {
        hdr: Vec<u8>,
        off: u64,
        len: u64,
        pad: usize,
        /// The block to free once acknowledged (the message's last chunk).
        free_after: Option<u64>,
    },
}

impl Retained {
    fn len(&self) -> usize {
        match self {
            Retained::Bytes(b) => b.len(),
            Retained::Chunk { hdr, len, pad, .. } => hdr.len() + *len as usize + pad,
        }
    }

    /// Queue the frame on a link (again).
    fn push_to(&self, t: &mut dyn Transport, node: u32) {
        match self {
            Retained::Bytes(b) => t.push(node, Out::bytes(b.clone())),
            Retained::Chunk {
                hdr, off, len, pad, ..
            } => {
                t.push(node, Out::bytes(hdr.clone()));
                if *len > 0 {
                    t.push(
                        node,
                        Out::Block {
                            off: *off,
                            len: *len,
                            pos: 0,
                            free_after: None,
                        },
                    );
                }
                if *pad > 0 {
                    t.push(node, Out::bytes(vec![0; *pad]));
                }
            }
        }
    }
}

/// Sequence numbers never run out; acks carry no window (the byte bound
/// `retain_limit` is the agent's).
fn session_config() -> reliable::Config {
    reliable::Config {
        window: u32::MAX / 2,
        congestion: false,
        ..reliable::Config::default()
    }
}

/// What two agents share about the frames between them, across connections.
struct Session {
    /// The peer's incarnation this session is with.
    peer_inc: u64,
    /// `Data` frames sent and not yet acknowledged.
    tx: reliable::Sender<Retained>,
    /// Their bytes.
    tx_bytes: usize,
    /// `Data` frames of the peer handled.
    rx_count: u64,
    /// The last count acknowledged to the peer.
    rx_acked: u64,
}

impl Session {
    /// The peer handled our `Data` frames below `n`: forget them; blocks
    /// their last chunks held go to `freed`.
    fn acknowledged(
        &mut self,
        n: u64,
        now: Instant,
        freed: &mut Vec<u64>,
    ) -> Result<(), reliable::AckError> {
        let ack = reliable::Ack {
            next: n,
            sack: 0,
            window: session_config().window,
            dsack: None,
        };
        let mut acked = Vec::new();
        self.tx.on_ack(&ack, now, &mut acked)?;
        for f in acked {
            self.tx_bytes -= f.len();
            if let Retained::Chunk {
                free_after: Some(b),
                ..
            } = f
            {
                freed.push(b);
            }
        }
        Ok(())
    }

    fn new(peer_inc: u64) -> Session {
        Session {
            peer_inc,
            tx: reliable::Sender::new(session_config(), Instant::now()),
            tx_bytes: 0,
            rx_count: 0,
            rx_acked: 0,
        }
    }
}

struct LargeSend {
    block: u64,
    total: u64,
    sent: u64,
    src_ep: u32,
    dst_ep: u32,
    cookie: u64,
    flags: u8,
    client: Owner,
}

struct RxLarge {
    src_ep: u32,
    dst_ep: u32,
    cookie: u64,
    total: u64,
    got: u64,
    /// Where it is reassembled; `None`: refused (larger than this agent
    /// takes from one peer), its chunks are checked and dropped.
    block: Option<u64>,
    flags: u8,
}

/// Completions a peer's Nacks of buffered sends may queue for one client
/// whose completion ring is full; beyond, they are dropped and counted
/// (`replies_dropped`). (Replies to Delivered sends are bounded by the sends
/// themselves: one each.)
const PEER_COMP_BACKLOG_MAX: usize = COMP_BACKLOG_MAX;
/// Set in the cookies the agent puts on the wire for Delivered sends.
const WIRE_SEQ_BIT: u64 = 1 << 63;

/// A Delivered send waiting for the peer's Ack or Nack.
struct PendingAck {
    owner: Owner,
    src_ep: u32,
    /// The client's cookie, for its completion.
    cookie: u64,
}

/// The Delivered sends to one peer waiting for its reply. The cookie on the
/// wire is the agent's own sequence number, unique per peer (not the
/// client's cookie): two clients that use the same endpoint id one after
/// the other and the same cookies never complete each other's sends, and a
/// reply completes a send only if that send was made to this peer.
#[derive(Default)]
struct AckTable {
    next: u64,
    map: HashMap<u64, PendingAck>,
}

impl AckTable {
    /// Remember a send; returns the cookie to put on the wire.
    fn insert(&mut self, owner: Owner, src_ep: u32, cookie: u64) -> u64 {
        self.next += 1;
        let wire = self.next | WIRE_SEQ_BIT;
        self.map.insert(
            wire,
            PendingAck {
                owner,
                src_ep,
                cookie,
            },
        );
        wire
    }

    /// The send a reply names, if it was made.
    fn take(&mut self, src_ep: u32, wire: u64) -> Option<PendingAck> {
        match self.map.get(&wire) {
            Some(a) if a.src_ep == src_ep => self.map.remove(&wire),
            _ => None,
        }
    }
}

struct Deposit {
    src_ep: u32,
    dst_ep: u32,
    block: u64,
    len: u64,
    cookie: u64,
    flags: u8,
}

struct Peer {
    node: u32,
    addr: SocketAddr,
    state: PeerState,
    batch: FrameBuilder,
    batch_msgs: u64,
    batch_since: Option<Instant>,
    large: VecDeque<LargeSend>,
    acks: AckTable,
    rx_pos: usize,
    rx_large: Option<RxLarge>,
    rx_deposit: Option<Deposit>,
    /// Frames wait for a full ring: we are not reading, so the peer's
    /// silence proves nothing.
    rx_stalled: bool,
    /// A chunk whose payload the transport is reading into its block.
    rx_steered: Option<RecordHeader>,
    /// Since when the link took none of what is queued for it.
    tx_stuck_since: Option<Instant>,
    counters: PeerCounters,
    since: Instant,
    /// Frames sent and received in this session (None before the first
    /// `Resume` exchange and after a loss).
    session: Option<Session>,
}

impl Peer {
    /// Send a `Data` frame and keep it until acknowledged.
    fn send_frame(&mut self, t: &mut dyn Transport, r: Retained, freed: &mut Vec<u64>) {
        r.push_to(t, self.node);
        self.counters.frames_tx += 1;
        let Some(s) = self.session.as_mut() else {
            // Not in a session (cannot happen while up): nothing to keep.
            if let Retained::Chunk {
                free_after: Some(b),
                ..
            } = r
            {
                freed.push(b);
            }
            return;
        };
        s.tx_bytes += r.len();
        if let Err(Retained::Chunk {
            free_after: Some(b),
            ..
        }) = s.tx.send(r, Instant::now())
        {
            freed.push(b);
        }
    }

    /// Bytes sent and not yet acknowledged.
    fn unacked_bytes(&self) -> usize {
        self.session.as_ref().map_or(0, |s| s.tx_bytes)
    }
}

struct RecvEp {
    id: u32,
    ring: RingTx,
    /// Messages from peers that found the ring full, in arrival order. They
    /// wait here (up to `overflow_bytes` per agent) so that one slow endpoint
    /// does not hold back a peer link that carries traffic for others too.
    parked: VecDeque<Parked>,
}

/// A message from a peer waiting for room in an endpoint's ring.
struct Parked {
    src_node: u32,
    src_ep: u32,
    data: ParkedData,
    /// `(peer, src_ep, dst_ep, cookie)` of an `Ack` owed once deposited.
    ack: Option<(usize, u32, u32, u64)>,
}

enum ParkedData {
    Inline(Vec<u8>),
    /// An agent-owned block.
    Block {
        off: u64,
        len: u64,
    },
}

/// A message held for an endpoint that is not open yet.
struct Orphan {
    since: Instant,
    /// `(peer, src_ep, dst_ep, cookie)` to refuse it with.
    nack: (usize, u32, u32, u64),
    parked: Parked,
}

/// Heap bytes glibc's malloc takes for an allocation of `len` bytes: the
/// request plus its 8-byte chunk header, rounded up to 16, at least 32 (an
/// empty `Vec` allocates nothing).
fn malloc_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len + 8).next_multiple_of(16).max(32)
    }
}

/// What one held message costs the agent beyond its payload, as charged
/// against `overflow_bytes` (the real cost, an upper bound, not a guess):
/// - its slot in a `VecDeque<Orphan>` (an orphan is the larger form of a
///   parked message), twice: a deque grows by doubling, so up to half its
///   slots are empty;
/// - its entry `(since, dst_ep)` in the expiry FIFO, twice for the same
///   reason.
///
/// On x86-64: Orphan = 104 B, the FIFO entry 24 B, so 256 B + payload.
const HELD_MSG_COST: usize =
    2 * std::mem::size_of::<Orphan>() + 2 * std::mem::size_of::<(Instant, u32)>();

/// What one endpoint with held messages costs beyond its messages: its
/// entry in the `orphans` map (key and deque header, plus hashbrown's
/// control byte), twice (load factor 7/8 and growth by doubling), and the
/// deque's first allocation, which is 4 slots (2 of them charged to its
/// first message already). On x86-64: 2 × (40 + 1) + 2 × 104 = 290 B.
const HELD_EP_COST: usize =
    2 * (std::mem::size_of::<(u32, VecDeque<Orphan>)>() + 1) + 2 * std::mem::size_of::<Orphan>();

impl Parked {
    /// Its real cost: [`HELD_MSG_COST`] and an inline payload's heap
    /// allocation (a block's payload lives in the pool, not the heap). Was 64
    /// + payload, about 8 × too little for small messages.
    fn cost(&self) -> usize {
        HELD_MSG_COST
            + match &self.data {
                ParkedData::Inline(v) => malloc_bytes(v.capacity()),
                ParkedData::Block { .. } => 0,
            }
    }
}

struct ClientState {
    gen: u32,
    pid: u32,
    name: String,
    conn: usize,
    sub: RingRx,
    comp: RingTx,
    comp_backlog: VecDeque<Completion>,
    recv: Vec<Option<RecvEp>>,
    /// The agent's end of this client's bell (a datagram socket pair made
    /// by the agent at attach): a byte from the client rings the agent, a
    /// byte from the agent wakes the client. Non-blocking, and the client
    /// never holds this file description, so it cannot make it block.
    bell: std::os::unix::net::UnixDatagram,
    stalled: Option<Vec<u8>>,
    waiting_large: bool,
    /// Set when the client left; its slot is reclaimed once drained.
    closing: Option<Instant>,
    /// Nodes it sent buffered messages to since the last loss report: told
    /// when such a node is lost (those messages may be lost with it).
    sent_to: Vec<bool>,
    submitted: u64,
    delivered: u64,
    errors: u64,
}

impl ClientState {
    fn owner(&self, slot: u32) -> Owner {
        Owner::Client {
            slot,
            gen: self.gen,
        }
    }
}

enum FrameStep {
    /// The frame was handled whole.
    Next,
    /// No complete frame buffered.
    Empty,
    /// Handled up to this body offset; a ring is full.
    Partial(usize),
    /// The link was declared lost.
    Broken,
}

struct CtlConn {
    stream: UnixStream,
    reader: LineReader,
    client: Option<u32>,
    /// Replies not yet taken by the connection (bounded; see `control`).
    out: control::Outbox,
    /// Whether it comes from another uid than the agent's own or root (an
    /// allowed group's member): those share part of the connection cap.
    guest: bool,
}

/// A message's payload before it is deposited: inline bytes, or a block.
#[derive(Clone, Copy)]
enum RemoteData<'a> {
    Inline(&'a [u8]),
    Block { off: u64, len: u64 },
}

impl RemoteData<'_> {
    fn to_parked(self) -> ParkedData {
        match self {
            RemoteData::Inline(p) => ParkedData::Inline(p.to_vec()),
            RemoteData::Block { off, len } => ParkedData::Block { off, len },
        }
    }
}

impl ParkedData {
    fn as_data(&self) -> RemoteData<'_> {
        match self {
            ParkedData::Inline(v) => RemoteData::Inline(v),
            ParkedData::Block { off, len } => RemoteData::Block {
                off: *off,
                len: *len,
            },
        }
    }
}

/// What became of a message offered to an endpoint's receive ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deposited {
    /// In the ring; a block now belongs to the endpoint's client.
    Delivered,
    /// The ring has no room now: nothing changed, try again later.
    Full,
    /// The endpoint or its client is gone (it may have been detached just
    /// now, for a corrupt ring): the message was not delivered, and a block
    /// still belongs to whoever offered it, who must free it (once) and tell
    /// a sender waiting for delivery that it failed.
    Gone,
}

enum Handled {
    /// Processed.
    Done,
    /// Not processed: retry later (a ring or the pool is full).
    Stall,
    /// Processed, but what follows must wait (a deposit is pending).
    DoneStop,
}

/// The agent.
pub struct Agent {
    cfg: AgentConfig,
    pool: Arc<Pool>,
    blocks: BlockAlloc,
    clients: Vec<Option<ClientState>>,
    gens: Vec<u32>,
    endpoints: HashMap<u32, (u32, u32)>,
    next_ep: u32,
    peers: Vec<Peer>,
    conns: Vec<Option<CtlConn>>,
    ctl: UnixListener,
    /// When accepting failed for want of descriptors: the listener is not
    /// watched until then (so a full fd table does not make the agent spin).
    ctl_paused: Option<Instant>,
    transport: Box<dyn Transport>,
    events: Vec<LinkEvent>,
    poller: Poller,
    doorbell: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    start: Instant,
    /// Bytes of messages parked in endpoints' overflow queues.
    parked_bytes: usize,
    /// Messages parked.
    parked_count: usize,
    /// Messages from peers for endpoints not open yet, by endpoint id.
    orphans: HashMap<u32, VecDeque<Orphan>>,
    /// `(since, dst_ep)` of every orphan in arrival order, so that expiry
    /// looks only at what expires (entries whose orphan was taken by an
    /// endpoint that opened are skipped as they come up).
    orphan_fifo: VecDeque<(Instant, u32)>,
    /// Clients given something this round, to wake if they sleep.
    touched: Vec<u32>,
    touched_flag: Vec<bool>,
    freed: Vec<u64>,
    rec: Vec<u8>,
    rounds: u64,
    sleeps: u64,
    local_msgs: u64,
    evicted: u64,
    /// Departed clients' slots taken back early for a new client.
    departed_reclaimed: u64,
    /// A client was reclaimed since the heap was last trimmed.
    heap_dirty: bool,
    /// No heap trim before this.
    trim_after: Instant,
    /// Damage records of the pool's SIGBUS guard (see [`Agent::pool_damage`]).
    damage: crate::shm::guard::DamageReader,
    /// Pool pages a client punched out that the agent now holds privately.
    pool_pages_damaged: u64,
    /// Client slots whose memory is no longer shared with clients: never
    /// given to a client again (until restart).
    retired: Vec<bool>,
    uid: u32,
    /// This run of the agent (start time in ns): tells a restarted agent apart.
    incarnation: u64,
}

/// Pin the calling thread to `core`.
fn pin_to(core: usize) -> Result<(), AgentError> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).map_err(|e| AgentError::Pin {
        core,
        source: e.into(),
    })?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| {
        AgentError::Pin {
            core,
            source: e.into(),
        }
    })
}

/// The [`crate::wire::caps`] bit of a transport.
fn transport_cap(k: TransportKind) -> u32 {
    use crate::wire::caps;
    match k {
        TransportKind::Tcp => caps::TCP,
        TransportKind::Udp => caps::UDP,
        TransportKind::Dpdk => caps::DPDK,
        TransportKind::Verbs => caps::VERBS,
    }
}

/// Start one transport back end of this agent.
fn open_transport(
    kind: TransportKind,
    cfg: &AgentConfig,
    hello: crate::wire::Hello,
    poller: &Poller,
    pool: &Arc<Pool>,
    wake: Arc<dyn Fn() + Send + Sync>,
    key: &Option<crate::wire::auth::JobKey>,
) -> Result<Box<dyn Transport>, AgentError> {
    let me = cfg.addrs[cfg.node_id as usize];
    let listen = |source| AgentError::Listen { addr: me, source };
    Ok(match kind {
        TransportKind::Tcp => Box::new(
            TcpTransport::new(
                hello,
                cfg.addrs.clone(),
                poller,
                pool.clone(),
                wake,
                key.clone(),
            )
            .map_err(listen)?,
        ),
        TransportKind::Udp => {
            let _ = wake;
            let io = UdpIo::bind(cfg.node_id, &cfg.addrs, cfg.packet_bytes).map_err(listen)?;
            Box::new(
                DatagramTransport::new(
                    hello,
                    io,
                    pool.clone(),
                    poller,
                    cfg.peer_timeout(),
                    key.clone(),
                )
                .map_err(listen)?,
            )
        }
        #[cfg(feature = "dpdk")]
        TransportKind::Dpdk => {
            use crate::transport::dpdk::{DpdkIo, DpdkIoConfig, MacAddr};
            let _ = wake;
            let dev = |source| AgentError::Device {
                name: "dpdk",
                source,
            };
            let io = DpdkIo::open(&DpdkIoConfig {
                me: cfg.node_id,
                nodes: cfg.addrs.len() as u32,
                eal_args: cfg.dpdk_eal_args.clone(),
                port: cfg.dpdk_port.clone(),
                mtu: cfg.dpdk_mtu,
                peer_macs: cfg
                    .peer_macs()
                    .into_iter()
                    .map(|m| m.map(MacAddr))
                    .collect(),
            })
            .map_err(dev)?;
            // The EAL pinned this thread to its main lcore's CPU (`-l`/`--lcores`;
            // without them, the first CPU): `cores`, when given, wins.
            if let Some(&core) = cfg.cores.first() {
                pin_to(core)?;
            }
            Box::new(
                DatagramTransport::new(
                    hello,
                    io,
                    pool.clone(),
                    poller,
                    cfg.peer_timeout(),
                    key.clone(),
                )
                .map_err(dev)?,
            )
        }
        #[cfg(not(feature = "dpdk"))]
        TransportKind::Dpdk => {
            let _ = (wake, poller, pool, listen);
            return Err(AgentError::Config(config::ConfigError::Invalid(
                "transport \"dpdk\" needs a wyvern built with the `dpdk` cargo feature".into(),
            )));
        }
        #[cfg(feature = "verbs")]
        TransportKind::Verbs => {
            use crate::transport::verbs::{VerbsConfig, VerbsTransport};
            let _ = listen;
            let t = VerbsTransport::new(
                VerbsConfig {
                    hello,
                    device: cfg.verbs_device.clone(),
                    gid_index: cfg.verbs_gid_index,
                    bootstrap: cfg.verbs_bootstrap()?,
                    key: key.clone(),
                },
                poller,
                pool.clone(),
                wake,
            )
            .map_err(|e| AgentError::Device {
                name: "verbs",
                source: io::Error::other(e),
            })?;
            Box::new(t)
        }
        #[cfg(not(feature = "verbs"))]
        TransportKind::Verbs => {
            let _ = (wake, poller, pool, listen);
            return Err(AgentError::Config(config::ConfigError::Invalid(
                "transport \"verbs\" needs a wyvern built with the `verbs` cargo feature".into(),
            )));
        }
    })
}

impl Agent {
    /// Create the pool, bind the sockets, start dialing peers.
    pub fn new(mut cfg: AgentConfig) -> Result<Agent, AgentError> {
        cfg.validate()?;
        if let Some(&core) = cfg.cores.first() {
            pin_to(core)?;
            if cfg.cores.len() > 1 {
                log::warn!(
                    "one polling thread for now: using core {core}, ignoring the rest of {:?}",
                    cfg.cores
                );
            }
        }
        if cfg.idle == IdlePolicy::Spin && cfg.cores.is_empty() {
            log::warn!(
                "idle policy 'spin' without --cores: the agent takes a whole core it shares with others; \
                 where cores are fewer than spinning processes this starves clients (use 'adaptive')"
            );
        }
        let key = cfg.job_key()?;
        if key.is_none() && cfg.addrs.len() > 1 {
            log::warn!(
                "NO JOB KEY (job_key_file, --job-key-file, WYVERN_JOB_KEY): peers are NOT \
                 authenticated (peer_auth: none); whoever reaches this agent's port and knows \
                 the job name can speak as a peer. Run like this on a trusted fabric only."
            );
        }
        let mut pool = Pool::create(cfg.pool, cfg.node_id, cfg.hugepages)?;
        // A client can punch a hole in the pool memfd (fallocate); on
        // hugetlbfs with no free huge page left, the agent's next touch of
        // that range would be a SIGBUS: the guard makes it a private zero
        // page and a damage record instead (see `pool_damage`).
        if let Err(e) = pool.guard() {
            log::warn!("cannot guard the pool against SIGBUS: {e}; a client punching a hole in a hugepage pool may crash the agent");
        }
        let pool = Arc::new(pool);
        log::info!(
            "pool: {} MiB on {}, {} client slots, {} MiB of blocks",
            pool.len() >> 20,
            pool.backing(),
            cfg.pool.max_clients,
            cfg.pool.block_bytes >> 20
        );
        let l = *pool.layout();
        // A third of the blocks is kept for messages arriving from peers
        // (see `shm::blocks`: sends waiting for acks must not take the room
        // an arriving message needs, or two agents can wait for each other).
        let blocks = BlockAlloc::new(l.blocks_off, l.params.block_bytes, BLOCK_UNIT)
            .with_reserve(l.params.block_bytes / 3);

        let ctl = bind_control(&cfg)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| AgentError::Poller(e.into()))?;
        let doorbell = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| AgentError::Poller(e.into()))?,
        );
        let add = |fd: BorrowedFd<'_>, t: u64| {
            epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, t))
                .map_err(|e| AgentError::Poller(e.into()))
        };
        add(ctl.as_fd(), token(T_CTL_LISTEN, 0))?;
        add(doorbell.as_fd(), token(T_DOORBELL, 0))?;
        let poller = Poller::new(epoll, T_TRANSPORT);
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let db = doorbell.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let _ = db.write(1);
        });
        let set = cfg.transport_set();
        let hello = crate::wire::Hello {
            node: cfg.node_id,
            nodes: cfg.addrs.len() as u32,
            incarnation,
            job: crate::wire::job_hash(cfg.job.as_deref()),
            caps: set.iter().fold(0, |c, &k| c | transport_cap(k)),
            fabric: if set.contains(&TransportKind::Verbs) {
                crate::wire::fabric_id(cfg.verbs_fabric.as_deref().unwrap_or("default"))
            } else {
                0
            },
        };
        let transport: Box<dyn Transport> = if set.len() == 1 {
            open_transport(set[0], &cfg, hello, &poller, &pool, wake, &key)?
        } else {
            let mut backs = Vec::new();
            // Every back end listens on the port TCP got (peers know one
            // address per node); `cfg` itself keeps what was configured.
            let mut at = cfg.clone();
            for (i, &k) in set.iter().enumerate() {
                let p = poller.sub(i as u32);
                let t = open_transport(k, &at, hello, &p, &pool, wake.clone(), &key)?;
                if i == 0 {
                    if let Ok(a) = t.local_addr().parse() {
                        at.addrs[cfg.node_id as usize] = a;
                    }
                }
                backs.push(crate::transport::multi::Backend {
                    transport: t,
                    poller: p,
                    cap: transport_cap(k),
                });
            }
            let forced: Vec<Option<u32>> = cfg
                .forced_transports()?
                .into_iter()
                .map(|f| f.map(transport_cap))
                .collect();
            Box::new(crate::transport::multi::Multi::new(
                backs,
                pool.clone(),
                &hello,
                &forced,
                cfg.hybrid_fallback(),
            ))
        };

        let now = Instant::now();
        let peers = cfg
            .addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| Peer {
                node: i as u32,
                addr,
                state: if i as u32 == cfg.node_id {
                    PeerState::Local
                } else {
                    PeerState::Connecting
                },
                batch: FrameBuilder::new(cfg.node_id, cfg.frame_bytes),
                batch_msgs: 0,
                batch_since: None,
                large: VecDeque::new(),
                acks: AckTable::default(),
                rx_pos: 0,
                rx_large: None,
                rx_deposit: None,
                rx_stalled: false,
                rx_steered: None,
                tx_stuck_since: None,
                counters: PeerCounters::default(),
                since: now,
                session: None,
            })
            .collect();
        let max = cfg.pool.max_clients as usize;
        log::info!(
            "node {} of {}: peers on {} {}, control socket {}",
            cfg.node_id,
            cfg.nodes.len(),
            transport.name(),
            transport.local_addr(),
            cfg.socket.display()
        );
        Ok(Agent {
            pool,
            blocks,
            clients: (0..max).map(|_| None).collect(),
            gens: vec![0; max],
            endpoints: HashMap::new(),
            next_ep: 1 << 16,
            peers,
            conns: Vec::new(),
            ctl,
            ctl_paused: None,
            transport,
            events: Vec::new(),
            poller,
            doorbell,
            stop: Arc::new(AtomicBool::new(false)),
            start: now,
            parked_bytes: 0,
            parked_count: 0,
            orphans: HashMap::new(),
            orphan_fifo: VecDeque::new(),
            touched: Vec::new(),
            touched_flag: vec![false; max],
            freed: Vec::new(),
            rec: Vec::with_capacity(64 * 1024),
            rounds: 0,
            sleeps: 0,
            local_msgs: 0,
            evicted: 0,
            departed_reclaimed: 0,
            heap_dirty: false,
            trim_after: now,
            damage: crate::shm::guard::DamageReader::new(),
            pool_pages_damaged: 0,
            retired: vec![false; max],
            uid: nix::unistd::geteuid().as_raw(),
            incarnation,
            cfg,
        })
    }

    /// A flag that stops [`Agent::run`] when set (signal handlers set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The address peers reach this agent at (useful with port 0).
    pub fn local_addr(&self) -> String {
        self.transport.local_addr()
    }

    /// The transport's name ("tcp", "udp").
    pub fn transport_name(&self) -> &'static str {
        self.transport.name()
    }

    /// Run until the stop flag is set.
    pub fn run(&mut self) {
        let mut events = vec![EpollEvent::empty(); 64];
        let mut idle_since = Instant::now();
        let mut next_tick = Instant::now();
        let spin = Duration::from_micros(self.cfg.spin_us);
        // One clock read per round: the end of the previous round stands for
        // the start of this one.
        let mut now = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            self.rounds += 1;
            if self.damage.pending() {
                self.pool_damage();
            }
            let mut work = self.poll_clients();
            work |= self.flush_peers();
            work |= self.transport.poll(now, &mut self.events);
            self.link_events();
            let sleep = self.cfg.idle == IdlePolicy::Adaptive
                && !work
                && now.duration_since(idle_since) > spin;
            if !sleep && !work && self.cfg.idle == IdlePolicy::Adaptive {
                // Polling without work: let a client sharing this core run
                // (returns at once when nothing else is runnable).
                std::thread::yield_now();
            }
            let n = if sleep {
                announce_sleep(self.pool.agent_sleeping());
                // Dekker: after announcing sleep, look once more, so a client
                // that published just before reading our word is not missed.
                let pending = self.any_client_work();
                let timeout = if pending {
                    EpollTimeout::ZERO
                } else {
                    // A poll-mode device that cannot wake us: sleep 1 ms at most.
                    let cap = if self.transport.poll_mode() {
                        POLL_MODE_SLEEP
                    } else {
                        MAX_SLEEP
                    };
                    let until_tick = next_tick.saturating_duration_since(now).min(cap);
                    // epoll counts whole milliseconds: round up, or a sleep that ends
                    // short of the tick is followed by zero-length ones (one per spin)
                    // until the tick passes (~5 wake-ups per tick instead of one).
                    let ms = until_tick.as_micros().div_ceil(1000) as u64;
                    EpollTimeout::try_from(Duration::from_millis(ms)).unwrap_or(EpollTimeout::ZERO)
                };
                if !pending {
                    self.transport.before_sleep(&self.poller);
                    if self.heap_dirty && now >= self.trim_after {
                        // Idle after clients left: hand their heap back.
                        crate::shm::release_free_heap();
                        self.heap_dirty = false;
                        self.trim_after = now + HEAP_TRIM_EVERY;
                    }
                }
                let n = self.poller.epoll().wait(&mut events, timeout).unwrap_or(0);
                announce_awake(self.pool.agent_sleeping());
                self.sleeps += 1;
                idle_since = Instant::now();
                n
            } else if !work || self.rounds % 4 == 0 {
                self.poller
                    .epoll()
                    .wait(&mut events, EpollTimeout::ZERO)
                    .unwrap_or(0)
            } else {
                // Busy with clients: look at the sockets every 4th round only
                // (a system call each round would cost more than it finds).
                0
            };
            for ev in &events[..n] {
                work |= self.on_event(ev.data(), now);
            }
            work |= self.drain_parked();
            work |= self.process_rx();
            now = Instant::now();
            if now >= next_tick {
                self.timers(now);
                self.expire_conns(now);
                next_tick = now + TICK;
            }
            self.wake_clients();
            if work {
                idle_since = now;
            }
        }
        self.shutdown();
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
        self.peers.iter().any(|p| p.batch_since.is_some())
            || self.clients.iter_mut().flatten().any(|c| {
                if c.closing.is_some()
                    || c.waiting_large
                    || c.comp_backlog.len() >= COMP_BACKLOG_MAX
                {
                    return false;
                }
                match &c.stalled {
                    Some(rec) => !Submit::parse(rec).is_ok_and(|(s, _)| {
                        matches!(s.op, Op::Send | Op::SendBlock)
                            && s.dst_node != me
                            && (s.dst_node as usize) < peers
                    }),
                    None => !matches!(c.sub.is_empty(), Ok(true)),
                }
            })
    }

    fn shutdown(&mut self) {
        log::info!("agent stopping: saying goodbye to peers");
        let bye = control_frame(FrameKind::Bye, self.cfg.node_id, &[]);
        for j in 0..self.peers.len() as u32 {
            if !self.transport.is_up(j) {
                continue;
            }
            self.transport.push(j, Out::bytes(bye.clone()));
            let deadline = Instant::now() + Duration::from_millis(200);
            while self.transport.queued(j) > 0 && Instant::now() < deadline {
                self.transport
                    .flush(j, &self.pool, &mut self.freed, &mut self.events);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = std::fs::remove_file(&self.cfg.socket);
    }

    // ---------------------------------------------------------------- clients

    fn poll_clients(&mut self) -> bool {
        let mut work = false;
        for slot in 0..self.clients.len() as u32 {
            let Some(c) = self.clients[slot as usize].as_mut() else {
                continue;
            };
            if c.closing.is_some() {
                // Nobody reads a departed client's completions: drop them, or
                // a full backlog would keep its submissions (and its slot)
                // waiting forever.
                c.comp_backlog.clear();
            }
            // Completions that did not fit earlier go first.
            let mut moved = false;
            while let Some(comp) = c.comp_backlog.front() {
                match c.comp.try_push(&[&comp.to_bytes()]) {
                    Ok(true) => {
                        c.comp_backlog.pop_front();
                        moved = true;
                    }
                    _ => break,
                }
            }
            if moved {
                work = true;
                self.touch(slot);
            }
            let Some(c) = self.clients[slot as usize].as_mut() else {
                continue;
            };
            if c.waiting_large || c.comp_backlog.len() >= COMP_BACKLOG_MAX {
                // Waiting for its large send to be queued, or for it to read
                // its completions: its submissions wait too. A departed
                // client is still reclaimed (after its grace period if a
                // large send holds it).
                self.maybe_reclaim(slot);
                continue;
            }
            let mut rec = std::mem::take(&mut self.rec);
            for _ in 0..BURST {
                let Some(c) = self.clients[slot as usize].as_mut() else {
                    break;
                };
                if c.waiting_large {
                    break;
                }
                let from_stall = if let Some(s) = c.stalled.take() {
                    rec = s;
                    true
                } else {
                    match c.sub.try_pop(&mut rec) {
                        Ok(true) => {
                            c.submitted += 1;
                            false
                        }
                        Ok(false) => break,
                        Err(e) => {
                            self.evict(slot, &format!("submission ring: {e}"));
                            break;
                        }
                    }
                };
                work = true;
                self.touch(slot);
                match self.handle_submit(slot, &rec) {
                    Handled::Done | Handled::DoneStop => {}
                    Handled::Stall => {
                        if let Some(c) = self.clients[slot as usize].as_mut() {
                            c.stalled = Some(std::mem::take(&mut rec));
                        }
                        // A stall retried without progress is not work.
                        if from_stall {
                            work = false;
                        }
                        break;
                    }
                }
            }
            self.rec = rec;
            self.maybe_reclaim(slot);
        }
        work
    }

    fn complete(&mut self, slot: u32, comp: Completion) {
        if let Some(c) = self.clients[slot as usize].as_mut() {
            if c.closing.is_some() {
                // Nobody will read it.
                return;
            }
            if !c.comp_backlog.is_empty()
                || !matches!(c.comp.try_push(&[&comp.to_bytes()]), Ok(true))
            {
                c.comp_backlog.push_back(comp);
            }
            self.touch(slot);
        }
    }

    fn complete_owner(&mut self, owner: Owner, cookie: u64, status: Status) {
        if let Owner::Client { slot, gen } = owner {
            if self
                .clients
                .get(slot as usize)
                .and_then(|c| c.as_ref())
                .map(|c| c.gen)
                == Some(gen)
            {
                self.complete(
                    slot,
                    Completion {
                        kind: CompKind::Send,
                        status,
                        cookie,
                        off: 0,
                        len: 0,
                    },
                );
            }
        }
    }

    fn refuse(&mut self, slot: u32, cookie: u64, why: &str) -> Handled {
        let max = self.cfg.max_client_errors;
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return Handled::Done;
        };
        c.errors += 1;
        let errors = c.errors;
        log::debug!("client slot {slot}: bad request: {why}");
        if errors > max {
            self.evict(slot, &format!("{errors} bad requests, last: {why}"));
        } else if errors <= 64 || c.comp_backlog.len() < 1024 {
            self.complete(
                slot,
                Completion {
                    kind: CompKind::Refused,
                    status: Status::BadRequest,
                    cookie,
                    off: 0,
                    len: 0,
                },
            );
        }
        Handled::Done
    }

    fn src_ep(&self, slot: u32, ep_slot: u32) -> Option<u32> {
        let c = self.clients[slot as usize].as_ref()?;
        c.recv.get(ep_slot as usize)?.as_ref().map(|e| e.id)
    }

    fn handle_submit(&mut self, slot: u32, rec: &[u8]) -> Handled {
        let (s, payload) = match Submit::parse(rec) {
            Ok(x) => x,
            Err(why) => return self.refuse(slot, u64::MAX, why),
        };
        let owner = match self.clients[slot as usize].as_ref() {
            Some(c) => c.owner(slot),
            None => return Handled::Done,
        };
        match s.op {
            Op::Alloc => {
                let quota = self.cfg.client_block_quota.min(self.blocks.max_alloc());
                let comp = if s.len > quota {
                    Completion {
                        kind: CompKind::Alloc,
                        status: Status::TooLarge,
                        cookie: s.cookie,
                        off: 0,
                        len: 0,
                    }
                } else if self.blocks.held_by(owner) + s.len > quota {
                    // Over its share for now: it may ask again once it has
                    // sent or returned blocks.
                    Completion {
                        kind: CompKind::Alloc,
                        status: Status::NoMemory,
                        cookie: s.cookie,
                        off: 0,
                        len: 0,
                    }
                } else {
                    match self.blocks.alloc(s.len, owner) {
                        Some(b) => Completion {
                            kind: CompKind::Alloc,
                            status: Status::Ok,
                            cookie: s.cookie,
                            off: b.off,
                            len: b.len,
                        },
                        None => Completion {
                            kind: CompKind::Alloc,
                            status: Status::NoMemory,
                            cookie: s.cookie,
                            off: 0,
                            len: 0,
                        },
                    }
                };
                self.complete(slot, comp);
                Handled::Done
            }
            Op::Free => match self.blocks.free(s.off, owner) {
                Some(_) => Handled::Done,
                None => self.refuse(slot, s.cookie, "free of a block the client does not hold"),
            },
            Op::Send | Op::SendBlock => self.handle_send(slot, owner, &s, payload),
        }
    }

    fn handle_send(&mut self, slot: u32, owner: Owner, s: &Submit, payload: &[u8]) -> Handled {
        let Some(src_ep) = self.src_ep(slot, s.src_slot) else {
            return self.refuse(
                slot,
                s.cookie,
                "send from an endpoint slot that is not open",
            );
        };
        if s.op == Op::SendBlock {
            match self.blocks.get(s.off) {
                Some(b) if b.owner == owner && s.len <= b.reserved => {}
                _ => {
                    return self.refuse(slot, s.cookie, "send of a block the client does not hold")
                }
            }
        } else if s.len as usize > self.cfg.eager_max {
            return self.refuse(slot, s.cookie, "inline payload above eager_max");
        }
        let fail = |a: &mut Agent, status| {
            if s.op == Op::SendBlock {
                a.blocks.free(s.off, owner);
            }
            a.complete_owner(owner, s.cookie, status);
            Handled::Done
        };
        let Some(peer) = self.peers.get(s.dst_node as usize) else {
            return fail(self, Status::UnknownNode);
        };
        let flags = if s.mode == Mode::Delivered {
            FLAG_ACK
        } else {
            0
        };
        match &peer.state {
            PeerState::Local => {
                let Some(&(dslot, dep)) = self.endpoints.get(&s.dst_ep) else {
                    return fail(self, Status::UnknownEndpoint);
                };
                let data = if s.op == Op::SendBlock {
                    RemoteData::Block {
                        off: s.off,
                        len: s.len,
                    }
                } else {
                    RemoteData::Inline(payload)
                };
                match self.deposit(dslot, dep, self.cfg.node_id, src_ep, data) {
                    Deposited::Full => Handled::Stall,
                    // The block (still the sender's) is freed, the sender told.
                    Deposited::Gone => fail(self, Status::EndpointClosed),
                    Deposited::Delivered => {
                        self.local_msgs += 1;
                        if s.mode == Mode::Delivered {
                            self.complete_owner(owner, s.cookie, Status::Ok);
                        }
                        Handled::Done
                    }
                }
            }
            PeerState::Lost(_) => {
                let j = s.dst_node as usize;
                self.peers[j].counters.errors += 1;
                fail(self, Status::PeerLost)
            }
            PeerState::Connecting
            | PeerState::Resuming
            | PeerState::Disconnected(..)
            | PeerState::Up => {
                let j = s.dst_node as usize;
                let limit = self.cfg.peer_queue_bytes;
                if self.peers[j].state != PeerState::Up
                    || self.transport.queued(s.dst_node) >= limit
                    || self.peers[j].unacked_bytes() >= self.retain_limit()
                {
                    return Handled::Stall;
                }
                if s.mode == Mode::Buffered {
                    if let Some(c) = self.clients[slot as usize].as_mut() {
                        c.sent_to[j] = true;
                    }
                }
                let p = &mut self.peers[j];
                // A Delivered send goes out under the agent's own cookie
                // (see `AckTable`); a buffered one under the client's, which a
                // Nack brings back.
                let cookie = if s.mode == Mode::Delivered {
                    p.acks.insert(owner, src_ep, s.cookie)
                } else {
                    s.cookie
                };
                if s.op == Op::SendBlock {
                    self.blocks.transfer(s.off, Owner::Agent);
                    // Everything this client sent before goes first.
                    Self::flush_batch(p, &mut *self.transport, &mut self.freed);
                    p.large.push_back(LargeSend {
                        block: s.off,
                        total: s.len,
                        sent: 0,
                        src_ep,
                        dst_ep: s.dst_ep,
                        cookie,
                        flags,
                        client: owner,
                    });
                    if let Some(c) = self.clients[slot as usize].as_mut() {
                        c.waiting_large = true;
                    }
                } else {
                    let h = RecordHeader {
                        kind: RecordKind::Msg,
                        flags,
                        status: 0,
                        src_ep,
                        dst_ep: s.dst_ep,
                        chunk_len: payload.len() as u32,
                        total: payload.len() as u64,
                        offset: 0,
                        cookie,
                    };
                    if !p.batch.fits(payload.len()) {
                        Self::flush_batch(p, &mut *self.transport, &mut self.freed);
                    }
                    p.batch.push(&h, payload);
                    p.batch_msgs += 1;
                    p.batch_since.get_or_insert_with(Instant::now);
                    p.counters.msgs_tx += 1;
                    p.counters.bytes_tx += payload.len() as u64;
                }
                Handled::Done
            }
        }
    }

    /// Deposit a message into an endpoint's receive ring: inline bytes, or
    /// a block handed to the endpoint's client.
    fn deposit(
        &mut self,
        slot: u32,
        ep: u32,
        src_node: u32,
        src_ep: u32,
        data: RemoteData<'_>,
    ) -> Deposited {
        let Some(c) = self.clients[slot as usize]
            .as_mut()
            .filter(|c| c.closing.is_none())
        else {
            return Deposited::Gone;
        };
        let owner = c.owner(slot);
        let Some(r) = c.recv.get_mut(ep as usize).and_then(|r| r.as_mut()) else {
            return Deposited::Gone;
        };
        let (len, off, inline) = match data {
            RemoteData::Inline(p) => (p.len() as u64, Delivery::INLINE, p),
            RemoteData::Block { off, len } => (len, off, &[][..]),
        };
        let d = Delivery {
            src_node,
            src_ep,
            len,
            off,
        };
        match r.ring.try_push(&[&d.to_bytes(), inline]) {
            Ok(true) => {
                c.delivered += 1;
                if let RemoteData::Block { off, len } = data {
                    self.blocks.transfer(off, owner);
                    self.blocks.set_len(off, len);
                }
                self.touch(slot);
                Deposited::Delivered
            }
            Ok(false) => Deposited::Full,
            Err(e) => {
                self.evict(slot, &format!("receive ring: {e}"));
                Deposited::Gone
            }
        }
    }

    fn evict(&mut self, slot: u32, why: &str) {
        log::warn!("detaching client slot {slot}: {why}");
        self.evicted += 1;
        if let Some(c) = self.clients[slot as usize].as_mut() {
            // Nothing more of this client is processed.
            c.stalled = None;
            c.closing = Some(
                Instant::now()
                    .checked_sub(CLOSING_GRACE)
                    .unwrap_or_else(Instant::now),
            );
            // `conn` is a slab index, reused once the client's connection
            // closed (it may have, if the client was already leaving): only
            // a connection that still belongs to this client is told and
            // closed, never the one a later client got in its place. (A
            // slot's connection is closed before the slot can be reused, so
            // the slot number alone identifies the client here.)
            let conn = c.conn;
            let ours = self
                .conns
                .get(conn)
                .and_then(|k| k.as_ref())
                .is_some_and(|k| k.client == Some(slot));
            if ours {
                self.reply_error(conn, format!("detached by the agent: {why}"));
                self.close_conn(conn);
            }
        }
        self.reclaim(slot);
    }

    /// Act on pool pages the SIGBUS guard replaced: a client punched a hole
    /// in the pool memfd (fallocate PUNCH_HOLE) and no page could be faulted
    /// back in, so the agent now has a private zero copy of that page. What
    /// it held is no longer shared with clients: the clients whose slots
    /// overlap it are detached and their slots retired, the block range is
    /// quarantined, and the agent serves everyone else as before.
    fn pool_damage(&mut self) {
        let mut found = Vec::new();
        self.damage.take(&mut found);
        let Some(region) = self.pool.guard_region() else {
            return;
        };
        let page = self.pool.page_size() as u64;
        let l = *self.pool.layout();
        for d in found.into_iter().filter(|d| d.region == region) {
            let (lo, hi) = (d.offset, d.offset + page);
            self.pool_pages_damaged += 1;
            log::error!(
                "a client punched a hole in the pool at offset {lo:#x} ({} KiB; fallocate PUNCH_HOLE?) \
                 and no free page was left to fault it back in; the agent now holds a private copy of \
                 that page (zeros) and stops sharing it with clients",
                page >> 10
            );
            let sleep = self.pool.layout_sleep_word();
            if (lo..hi).contains(&sleep) {
                log::error!(
                    "the damaged page holds the agent's sleeping word: clients no longer see the agent \
                     asleep, so it wakes at least every {} ms to look at their rings",
                    MAX_SLEEP.as_millis()
                );
            }
            for slot in 0..l.params.max_clients {
                let (s, e) = l.client_range(slot);
                if s >= hi || e <= lo {
                    continue;
                }
                if !std::mem::replace(&mut self.retired[slot as usize], true) {
                    log::error!(
                        "client slot {slot} lies in the damaged page: retired until the agent restarts"
                    );
                }
                if self.clients[slot as usize].is_some() {
                    self.evict(
                        slot,
                        &format!(
                            "its rings are in a pool page a client punched out (offset {lo:#x}): \
                             they are no longer shared with the agent"
                        ),
                    );
                }
            }
            let (bs, bl) = self.pool.block_region();
            if lo < bs + bl && hi > bs {
                let taken = self.blocks.quarantine(lo, page);
                log::error!(
                    "blocks at {:#x}..{:#x} quarantined ({} KiB were free); messages in flight there may arrive as zeros",
                    lo.max(bs),
                    hi.min(bs + bl),
                    taken >> 10
                );
            }
        }
        let lost = crate::shm::guard::overflow();
        if lost > 0 {
            log::error!("{lost} more damaged pool page(s) could not be recorded (table full)");
        }
    }

    fn reclaim(&mut self, slot: u32) {
        let Some(c) = self.clients[slot as usize].take() else {
            return;
        };
        self.heap_dirty = true;
        let owner = c.owner(slot);
        for ep in c.recv.iter().flatten() {
            self.endpoints.remove(&ep.id);
        }
        let mut c = c;
        for ep in c.recv.iter_mut().flatten() {
            let parked = std::mem::take(&mut ep.parked);
            self.drop_parked(parked);
        }
        let n = self.blocks.free_all_of(owner);
        log::info!(
            "client slot {slot} (pid {}, {}) gone: {} endpoint(s) closed, {n} block(s) reclaimed",
            c.pid,
            c.name,
            c.recv.iter().flatten().count()
        );
    }

    fn touch(&mut self, slot: u32) {
        if !std::mem::replace(&mut self.touched_flag[slot as usize], true) {
            self.touched.push(slot);
        }
    }

    fn wake_clients(&mut self) {
        for slot in self.touched.drain(..) {
            self.touched_flag[slot as usize] = false;
            if let Some(c) = self.clients[slot as usize].as_mut() {
                if needs_wake(self.pool.client_sleeping(slot)) {
                    // Non-blocking: a full queue means wake-ups are already
                    // pending there (EAGAIN is ignored); a closed peer end
                    // is the client leaving (seen on its control socket).
                    let _ = c.bell.send(&[1]);
                }
            }
        }
    }

    // ------------------------------------------------------------------ peers

    fn flush_batch(p: &mut Peer, t: &mut dyn Transport, freed: &mut Vec<u64>) {
        if p.batch.is_empty() {
            return;
        }
        let frame = p.batch.finish();
        p.batch_msgs = 0;
        p.batch_since = None;
        p.send_frame(t, Retained::Bytes(frame), freed);
    }

    /// Unacknowledged bytes a session may hold before sends wait.
    fn retain_limit(&self) -> usize {
        self.cfg.peer_queue_bytes.saturating_mul(4)
    }

    fn flush_peers(&mut self) -> bool {
        let mut work = false;
        let delay = Duration::from_micros(self.cfg.flush_delay_us);
        let chunk = self.cfg.chunk_bytes as u64;
        let limit = self.cfg.peer_queue_bytes;
        let retain = self.retain_limit();
        let me = self.cfg.node_id;
        for j in 0..self.peers.len() {
            let p = &mut self.peers[j];
            let node = j as u32;
            if p.state == PeerState::Resuming && self.transport.queued(node) > 0 {
                // Handshake frames only: data waits for the peer's Resume.
                work = true;
                self.transport
                    .flush(node, &self.pool, &mut self.freed, &mut self.events);
            }
            if p.state != PeerState::Up {
                continue;
            }
            if p.batch_since
                .is_some_and(|t| delay.is_zero() || t.elapsed() >= delay)
            {
                Self::flush_batch(p, &mut *self.transport, &mut self.freed);
            }
            // Cut large messages into chunks while the link has room.
            while let Some(ls) = p.large.front_mut() {
                let link = &mut *self.transport;
                if link.queued(node) >= limit
                    || p.session.as_ref().is_some_and(|s| s.tx_bytes >= retain)
                {
                    break;
                }
                let n = chunk.min(ls.total - ls.sent);
                let h = RecordHeader {
                    kind: RecordKind::Msg,
                    flags: ls.flags,
                    status: 0,
                    src_ep: ls.src_ep,
                    dst_ep: ls.dst_ep,
                    chunk_len: n as u32,
                    total: ls.total,
                    offset: ls.sent,
                    cookie: ls.cookie,
                };
                let body = (h.wire_len()) as u32;
                let mut hdr = wire::FrameHeader {
                    kind: FrameKind::Data,
                    src_node: me,
                    body_len: body,
                }
                .to_bytes()
                .to_vec();
                hdr.extend_from_slice(&h.to_bytes());
                let last = ls.sent + n == ls.total;
                let frame = Retained::Chunk {
                    hdr,
                    off: ls.block + ls.sent,
                    len: n,
                    pad: wire::padded(n as usize) - n as usize,
                    free_after: (last && n > 0).then_some(ls.block),
                };
                if n == 0 {
                    self.freed.push(ls.block);
                }
                ls.sent += n;
                let ls_done = (ls.total, ls.client);
                p.send_frame(link, frame, &mut self.freed);
                work = true;
                if last {
                    let (total, client) = ls_done;
                    p.counters.msgs_tx += 1;
                    p.counters.bytes_tx += total;
                    p.large.pop_front();
                    if let Owner::Client { slot, gen } = client {
                        if let Some(c) = self.clients[slot as usize]
                            .as_mut()
                            .filter(|c| c.gen == gen)
                        {
                            c.waiting_large = false;
                        }
                    }
                }
            }
            let before = self.transport.queued(node);
            if before > 0 {
                self.transport
                    .flush(node, &self.pool, &mut self.freed, &mut self.events);
                let after = self.transport.queued(node);
                let p = &mut self.peers[j];
                if after < before {
                    p.tx_stuck_since = None;
                    work = true;
                } else {
                    // Nothing went out. A link that takes nothing for a while
                    // (a peer that does not read) is not urgent: the tick
                    // retries it. Counting it kept an adaptive agent at
                    // 100 % CPU for as long as the peer did not read.
                    let since = *p.tx_stuck_since.get_or_insert_with(Instant::now);
                    work |= since.elapsed() < TX_STUCK_SPIN;
                }
            }
        }
        self.link_events();
        for b in std::mem::take(&mut self.freed) {
            self.blocks.free(b, Owner::Agent);
        }
        work
    }

    /// Peer `j` is gone: fail what waited on it, free what it held. With
    /// `close_link`, the transport's link is closed too.
    fn peer_lost(&mut self, j: usize, why: &str, close_link: bool) {
        let p = &mut self.peers[j];
        if let PeerState::Lost(_) = p.state {
            if close_link {
                for b in self.transport.close(&self.poller, j as u32) {
                    self.blocks.free(b, Owner::Agent);
                }
            }
            return;
        }
        log::warn!("peer node {} ({}) lost: {why}", p.node, p.addr);
        p.state = PeerState::Lost(why.to_string());
        p.counters.losses += 1;
        p.since = Instant::now();
        p.rx_stalled = false;
        p.rx_steered = None;
        let mut blocks = Vec::new();
        if close_link {
            blocks = self.transport.close(&self.poller, j as u32);
        }
        let p = &mut self.peers[j];
        p.batch.finish();
        p.batch_msgs = 0;
        p.batch_since = None;
        p.rx_pos = 0;
        if let Some(mut sess) = p.session.take() {
            for r in sess.tx.drain() {
                if let Retained::Chunk {
                    free_after: Some(b),
                    ..
                } = r
                {
                    if !blocks.contains(&b) {
                        blocks.push(b);
                    }
                }
            }
        }
        let mut fails: Vec<(Owner, u64)> = p
            .acks
            .map
            .drain()
            .map(|(_, a)| (a.owner, a.cookie))
            .collect();
        let mut unblock = Vec::new();
        for ls in p.large.drain(..) {
            // A block whose last chunk never went out was not in the link's
            // queue: free it here.
            if !blocks.contains(&ls.block) {
                blocks.push(ls.block);
            }
            if ls.flags & FLAG_ACK == 0 {
                fails.push((ls.client, ls.cookie));
            }
            unblock.push(ls.client);
        }
        if let Some(b) = p.rx_large.take().and_then(|r| r.block) {
            blocks.push(b);
        }
        if let Some(d) = p.rx_deposit.take() {
            blocks.push(d.block);
        }
        p.counters.errors += fails.len() as u64;
        for b in blocks {
            self.blocks.free(b, Owner::Agent);
        }
        for o in unblock {
            if let Owner::Client { slot, gen } = o {
                if let Some(c) = self.clients[slot as usize]
                    .as_mut()
                    .filter(|c| c.gen == gen)
                {
                    c.waiting_large = false;
                }
            }
        }
        for (o, cookie) in fails {
            self.complete_owner(o, cookie, Status::PeerLost);
        }
        // Buffered sends are not tracked one by one: tell every client that
        // sent some to this node since the last report.
        for slot in 0..self.clients.len() as u32 {
            let Some(c) = self.clients[slot as usize].as_mut() else {
                continue;
            };
            if std::mem::take(&mut c.sent_to[j]) {
                self.complete(
                    slot,
                    Completion {
                        kind: CompKind::Send,
                        status: Status::PeerLost,
                        cookie: crate::proto::LOSS_COOKIE,
                        off: j as u64,
                        len: 0,
                    },
                );
            }
        }
        // Clients stalled on this peer retry and now fail fast.
    }

    /// A new connection to peer `j`: say where our session stands; frames
    /// flow once the peer said the same ([`Agent::handle_resume`]).
    fn peer_up(&mut self, j: usize) {
        let me = self.cfg.node_id;
        if matches!(self.peers[j].state, PeerState::Up | PeerState::Resuming) {
            // A new connection replaced one we still thought alive.
            self.peer_disconnected(j, "peer reconnected".into());
        }
        let p = &mut self.peers[j];
        p.state = PeerState::Resuming;
        p.rx_stalled = false;
        let (known, received) = p
            .session
            .as_ref()
            .map_or((0, 0), |s| (s.peer_inc, s.rx_count));
        let body = wire::Resume {
            incarnation: self.incarnation,
            known,
            received,
        };
        let frame = control_frame(FrameKind::Resume, me, &body.to_bytes());
        self.transport.push(j as u32, Out::bytes(frame));
        log::debug!("peer node {j}: connected, resuming ({body:?})");
    }

    /// The peer's `Resume` arrived: carry the session on, or start afresh
    /// (and report what the old one had in flight as lost).
    pub(super) fn handle_resume(&mut self, j: usize, r: wire::Resume) -> bool {
        let me = self.cfg.node_id;
        let resumable = self.peers[j]
            .session
            .as_ref()
            .is_some_and(|s| s.peer_inc == r.incarnation && r.known == self.incarnation);
        let now = Instant::now();
        if resumable {
            let p = &mut self.peers[j];
            let s = p.session.as_mut().expect("checked above");
            if let Err(e) = s.acknowledged(r.received, now, &mut self.freed) {
                p.counters.malformed += 1;
                self.peer_lost(j, &format!("cannot resume: {e}"), true);
                return false;
            }
            let mut resent = 0u64;
            let t = &mut *self.transport;
            s.tx.retransmit_all(now, |_, f| {
                f.push_to(t, j as u32);
                resent += 1;
            });
            // A chunk that was being read straight into its block when the
            // connection broke comes again whole.
            if let Some(h) = p.rx_steered.take() {
                if h.offset == 0 {
                    if let Some(b) = p.rx_large.take().and_then(|l| l.block) {
                        self.freed.push(b);
                    }
                }
            }
            p.counters.resumes += 1;
            p.counters.frames_resent += resent;
            log::info!(
                "peer node {} ({}) resumed: {resent} frames sent again",
                p.node,
                p.addr
            );
        } else {
            if self.peers[j].session.is_some() {
                self.peer_lost(j, "peer restarted or gave this node up", false);
            }
            let p = &mut self.peers[j];
            p.session = Some(Session::new(r.incarnation));
            p.rx_pos = 0;
            p.rx_steered = None;
            p.batch = FrameBuilder::new(me, self.cfg.frame_bytes);
            log::info!("peer node {} ({}) up", p.node, p.addr);
        }
        let p = &mut self.peers[j];
        p.state = PeerState::Up;
        p.since = now;
        true
    }

    /// The connection to peer `j` broke: keep the session for a new one.
    fn peer_disconnected(&mut self, j: usize, why: String) {
        let p = &mut self.peers[j];
        match p.state {
            PeerState::Up | PeerState::Resuming => {}
            _ => return,
        }
        p.rx_stalled = false;
        if p.session.is_none() {
            // Nothing to resume yet: back to connecting.
            p.state = PeerState::Connecting;
            return;
        }
        // A chunk being read into its block is incomplete; it comes again.
        if let Some(h) = p.rx_steered.take() {
            if h.offset == 0 {
                if let Some(b) = p.rx_large.take().and_then(|l| l.block) {
                    self.freed.push(b);
                }
            }
        }
        log::warn!(
            "peer node {} ({}): connection broke ({why}); waiting to resume",
            p.node,
            p.addr
        );
        p.state = PeerState::Disconnected(Instant::now(), why);
    }

    /// The peer handled our `Data` frames up to `n`: forget them.
    pub(super) fn handle_ack(&mut self, j: usize, n: u64) -> bool {
        let now = Instant::now();
        let p = &mut self.peers[j];
        let Some(s) = p.session.as_mut() else {
            return true;
        };
        if let Err(e) = s.acknowledged(n, now, &mut self.freed) {
            p.counters.malformed += 1;
            self.peer_lost(j, &format!("bad ack: {e}"), true);
            return false;
        }
        true
    }

    /// A `Data` frame of peer `j` was handled whole.
    pub(super) fn frame_done(&mut self, j: usize) {
        let me = self.cfg.node_id;
        let p = &mut self.peers[j];
        p.counters.frames_rx += 1;
        if let Some(s) = p.session.as_mut() {
            s.rx_count += 1;
            if s.rx_count - s.rx_acked >= ACK_EVERY {
                s.rx_acked = s.rx_count;
                let f = control_frame(FrameKind::Ack, me, &s.rx_count.to_le_bytes());
                self.transport.push(j as u32, Out::bytes(f));
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        let me = self.cfg.node_id;
        let hb = self.cfg.heartbeat();
        let timeout = self.cfg.peer_timeout();
        let connect_timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        self.transport.tick(&self.poller, now, &mut self.events);
        self.expire_orphans(now);
        self.link_events();
        for j in 0..self.peers.len() {
            let p = &mut self.peers[j];
            let node = j as u32;
            match p.state {
                PeerState::Local | PeerState::Lost(_) => {}
                PeerState::Disconnected(since, ref why) => {
                    if now.duration_since(since) > timeout {
                        let why = format!(
                            "connection broke ({why}) and was not restored within {} ms",
                            timeout.as_millis()
                        );
                        self.peer_lost(j, &why, true);
                    }
                }
                PeerState::Up | PeerState::Resuming => {
                    // Acks only once both sides agreed on the session.
                    let up = p.state == PeerState::Up;
                    if let Some(s) = p.session.as_mut().filter(|s| up && s.rx_count > s.rx_acked) {
                        s.rx_acked = s.rx_count;
                        let f = control_frame(FrameKind::Ack, me, &s.rx_count.to_le_bytes());
                        self.transport.push(node, Out::bytes(f));
                    }
                    if p.rx_stalled || self.transport.rx_full(node) {
                        self.transport.mark_alive(node, now);
                    }
                    let Some((last_rx, last_tx)) = self.transport.activity(node) else {
                        continue;
                    };
                    if now.duration_since(last_rx) > timeout {
                        let ms = timeout.as_millis();
                        self.peer_lost(j, &format!("silent for more than {ms} ms"), true);
                        continue;
                    }
                    if now.duration_since(last_tx) > hb && self.transport.queued(node) == 0 {
                        let hb = control_frame(FrameKind::Heartbeat, me, &[]);
                        self.transport.push(node, Out::bytes(hb));
                    }
                }
                PeerState::Connecting => {
                    if now.duration_since(p.since) > connect_timeout {
                        let ms = connect_timeout.as_millis();
                        self.peer_lost(j, &format!("unreachable for {ms} ms"), true);
                    }
                }
            }
        }
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
        {
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
                    if !closed {
                        // Deliver what arrived before the failure.
                        self.process_peer(node as usize);
                        for b in self.transport.close(&self.poller, node) {
                            self.blocks.free(b, Owner::Agent);
                        }
                    }
                    self.peer_disconnected(node as usize, reason);
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
    }
}
