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
//!    control socket and the doorbell clients ring;
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
pub mod stats;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
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
use crate::shm::handoff::{send_line, LineReader, ReadOutcome};
use crate::shm::{announce_awake, announce_sleep, needs_wake, Pool, RingRx, RingTx, BLOCK_UNIT};
use crate::transport::tcp::TcpTransport;
use crate::transport::{LinkEvent, Out, Poller, Transport};
use crate::wire::{
    self, control_frame, FrameBuilder, FrameKind, RecordHeader, RecordKind, FLAG_ACK,
};

pub use config::{AgentConfig, IdlePolicy};
use stats::{ClientSnapshot, PeerCounters, PeerSnapshot, Snapshot};

/// Records taken from one submission ring per round.
pub const BURST: usize = 64;
const TICK: Duration = Duration::from_millis(5);
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Completions kept for a client whose completion ring is full; beyond
/// this its submissions are not taken (the agent's memory stays bounded).
const COMP_BACKLOG_MAX: usize = 4096;
/// Chunks at least this large are read straight into their block.
const STEER_MIN: usize = 64 * 1024;
/// How long a departed client's published submissions may take to go out.
const CLOSING_GRACE: Duration = Duration::from_secs(10);

const T_CTL_LISTEN: u64 = 1;
const T_CTL_CONN: u64 = 2;
const T_DOORBELL: u64 = 3;
const T_TRANSPORT: u64 = 4;

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
    /// The TCP listener could not be bound.
    #[error("cannot listen for peer agents on {addr}")]
    Listen {
        /// Address.
        addr: SocketAddr,
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
    /// Exchanging frames.
    Up,
    /// Declared lost; sends fail until it comes back.
    Lost(String),
}

impl PeerState {
    fn name(&self) -> String {
        match self {
            PeerState::Local => "local".into(),
            PeerState::Connecting => "connecting".into(),
            PeerState::Up => "up".into(),
            PeerState::Lost(r) => format!("lost ({r})"),
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
    block: u64,
    flags: u8,
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
    acks: HashMap<(u32, u64), Owner>,
    rx_pos: usize,
    rx_large: Option<RxLarge>,
    rx_deposit: Option<Deposit>,
    /// Frames wait for a full ring: we are not reading, so the peer's
    /// silence proves nothing.
    rx_stalled: bool,
    /// A chunk whose payload the transport is reading into its block.
    rx_steered: Option<RecordHeader>,
    counters: PeerCounters,
    since: Instant,
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

impl Parked {
    fn cost(&self) -> usize {
        64 + match &self.data {
            ParkedData::Inline(v) => v.len(),
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
    wake: File,
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
    tcp_addr: SocketAddr,
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
    /// Clients given something this round, to wake if they sleep.
    touched: Vec<u32>,
    touched_flag: Vec<bool>,
    freed: Vec<u64>,
    rec: Vec<u8>,
    rounds: u64,
    sleeps: u64,
    local_msgs: u64,
    evicted: u64,
    uid: u32,
}

impl Agent {
    /// Create the pool, bind the sockets, start dialing peers.
    pub fn new(mut cfg: AgentConfig) -> Result<Agent, AgentError> {
        cfg.validate()?;
        if let Some(&core) = cfg.cores.first() {
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
            })?;
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
        let pool = Arc::new(Pool::create(cfg.pool, cfg.node_id, cfg.hugepages)?);
        log::info!(
            "pool: {} MiB on {}, {} client slots, {} MiB of blocks",
            pool.len() >> 20,
            pool.backing(),
            cfg.pool.max_clients,
            cfg.pool.block_bytes >> 20
        );
        let l = *pool.layout();
        let blocks = BlockAlloc::new(l.blocks_off, l.params.block_bytes, BLOCK_UNIT);

        let ctl = bind_control(&cfg)?;
        let me = cfg.addrs[cfg.node_id as usize];
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
        let tcp = TcpTransport::new(
            cfg.node_id,
            cfg.addrs.clone(),
            incarnation,
            &poller,
            pool.clone(),
            wake,
        )
        .map_err(|source| AgentError::Listen { addr: me, source })?;
        let tcp_addr = tcp.addr();

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
                acks: HashMap::new(),
                rx_pos: 0,
                rx_large: None,
                rx_deposit: None,
                rx_stalled: false,
                rx_steered: None,
                counters: PeerCounters::default(),
                since: now,
            })
            .collect();
        let max = cfg.pool.max_clients as usize;
        log::info!(
            "node {} of {}: peers on tcp {}, control socket {}",
            cfg.node_id,
            cfg.nodes.len(),
            tcp_addr,
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
            tcp_addr,
            transport: Box::new(tcp),
            events: Vec::new(),
            poller,
            doorbell,
            stop: Arc::new(AtomicBool::new(false)),
            start: now,
            parked_bytes: 0,
            parked_count: 0,
            orphans: HashMap::new(),
            touched: Vec::new(),
            touched_flag: vec![false; max],
            freed: Vec::new(),
            rec: Vec::with_capacity(64 * 1024),
            rounds: 0,
            sleeps: 0,
            local_msgs: 0,
            evicted: 0,
            uid: nix::unistd::geteuid().as_raw(),
            cfg,
        })
    }

    /// A flag that stops [`Agent::run`] when set (signal handlers set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The address peers reach this agent at (useful with port 0).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
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
            let mut work = self.poll_clients();
            work |= self.flush_peers();
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
                    let until_tick = next_tick.saturating_duration_since(now).min(MAX_SLEEP);
                    EpollTimeout::try_from(until_tick).unwrap_or(EpollTimeout::ZERO)
                };
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
    fn any_client_work(&mut self) -> bool {
        self.peers.iter().any(|p| p.batch_since.is_some())
            || self.clients.iter_mut().flatten().any(|c| {
                c.stalled.is_some()
                    || !c.comp_backlog.is_empty()
                    || !matches!(c.sub.is_empty(), Ok(true))
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
                // its completions: its submissions wait too.
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
                let quota = self.cfg.client_block_quota.min(self.blocks.total_bytes());
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
                let res = self.deposit(dslot, dep, self.cfg.node_id, src_ep, data);
                match res {
                    Handled::Stall => Handled::Stall,
                    Handled::Done | Handled::DoneStop => {
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
            PeerState::Connecting | PeerState::Up => {
                let j = s.dst_node as usize;
                let limit = self.cfg.peer_queue_bytes;
                if self.peers[j].state != PeerState::Up
                    || self.transport.queued(s.dst_node) >= limit
                {
                    return Handled::Stall;
                }
                if s.mode == Mode::Buffered {
                    if let Some(c) = self.clients[slot as usize].as_mut() {
                        c.sent_to[j] = true;
                    }
                }
                let p = &mut self.peers[j];
                if s.op == Op::SendBlock {
                    self.blocks.transfer(s.off, Owner::Agent);
                    // Everything this client sent before goes first.
                    Self::flush_batch(p, &mut *self.transport);
                    p.large.push_back(LargeSend {
                        block: s.off,
                        total: s.len,
                        sent: 0,
                        src_ep,
                        dst_ep: s.dst_ep,
                        cookie: s.cookie,
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
                        cookie: s.cookie,
                    };
                    if !p.batch.fits(payload.len()) {
                        Self::flush_batch(p, &mut *self.transport);
                    }
                    p.batch.push(&h, payload);
                    p.batch_msgs += 1;
                    p.batch_since.get_or_insert_with(Instant::now);
                    p.counters.msgs_tx += 1;
                    p.counters.bytes_tx += payload.len() as u64;
                }
                if s.mode == Mode::Delivered {
                    p.acks.insert((src_ep, s.cookie), owner);
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
    ) -> Handled {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return Handled::Done;
        };
        let owner = c.owner(slot);
        let Some(r) = c.recv.get_mut(ep as usize).and_then(|r| r.as_mut()) else {
            return Handled::Done;
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
                Handled::Done
            }
            Ok(false) => Handled::Stall,
            Err(e) => {
                self.evict(slot, &format!("receive ring: {e}"));
                Handled::Done
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
            let conn = c.conn;
            self.reply_error(conn, format!("detached by the agent: {why}"));
            self.close_conn(conn);
        }
        self.reclaim(slot);
    }

    fn reclaim(&mut self, slot: u32) {
        let Some(c) = self.clients[slot as usize].take() else {
            return;
        };
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
                    let _ = c.wake.write(&1u64.to_ne_bytes());
                }
            }
        }
    }

    // ------------------------------------------------------------------ peers

    fn flush_batch(p: &mut Peer, t: &mut dyn Transport) {
        if p.batch.is_empty() {
            return;
        }
        let frame = p.batch.finish();
        p.counters.frames_tx += 1;
        p.batch_msgs = 0;
        p.batch_since = None;
        t.push(p.node, Out::bytes(frame));
    }

    fn flush_peers(&mut self) -> bool {
        let mut work = false;
        let delay = Duration::from_micros(self.cfg.flush_delay_us);
        let chunk = self.cfg.chunk_bytes as u64;
        let limit = self.cfg.peer_queue_bytes;
        let me = self.cfg.node_id;
        for j in 0..self.peers.len() {
            let p = &mut self.peers[j];
            let node = j as u32;
            if p.state != PeerState::Up {
                continue;
            }
            if p.batch_since
                .is_some_and(|t| delay.is_zero() || t.elapsed() >= delay)
            {
                Self::flush_batch(p, &mut *self.transport);
            }
            // Cut large messages into chunks while the link has room.
            while let Some(ls) = p.large.front_mut() {
                let link = &mut *self.transport;
                if link.queued(node) >= limit {
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
                link.push(node, Out::bytes(hdr));
                let last = ls.sent + n == ls.total;
                if n > 0 {
                    link.push(
                        node,
                        Out::Block {
                            off: ls.block + ls.sent,
                            len: n,
                            pos: 0,
                            free_after: last.then_some(ls.block),
                        },
                    );
                } else {
                    self.freed.push(ls.block);
                }
                let pad = wire::padded(n as usize) - n as usize;
                if pad > 0 {
                    link.push(node, Out::bytes(vec![0; pad]));
                }
                p.counters.frames_tx += 1;
                ls.sent += n;
                work = true;
                if last {
                    p.counters.msgs_tx += 1;
                    p.counters.bytes_tx += ls.total;
                    let client = ls.client;
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
            if self.transport.queued(node) > 0 {
                work = true;
                self.transport
                    .flush(node, &self.pool, &mut self.freed, &mut self.events);
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
        let mut fails: Vec<(Owner, u64)> =
            p.acks.drain().map(|((_, cookie), o)| (o, cookie)).collect();
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
        if let Some(r) = p.rx_large.take() {
            blocks.push(r.block);
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

    fn peer_up(&mut self, j: usize) {
        let me = self.cfg.node_id;
        let p = &mut self.peers[j];
        if p.state == PeerState::Up {
            // A new connection replaced one we still thought alive.
            self.peer_lost(j, "peer reconnected", false);
        }
        let p = &mut self.peers[j];
        p.state = PeerState::Up;
        p.rx_pos = 0;
        p.rx_stalled = false;
        p.since = Instant::now();
        p.batch = FrameBuilder::new(me, self.cfg.frame_bytes);
        log::info!("peer node {} ({}) up", p.node, p.addr);
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
                PeerState::Up => {
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
                    }
                    self.peer_lost(node as usize, &reason, !closed);
                }
            }
        }
    }
}
