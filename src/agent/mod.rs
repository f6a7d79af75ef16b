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

/// A message from a peer, before it is deposited.
enum RemoteData<'a> {
    Inline(&'a [u8]),
    Block { off: u64, len: u64 },
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

    fn any_client_work(&mut self) -> bool {
        self.clients.iter_mut().flatten().any(|c| {
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
                let res = if s.op == Op::SendBlock {
                    self.deposit_block(dslot, dep, self.cfg.node_id, src_ep, s.off, s.len)
                } else {
                    self.deposit_inline(dslot, dep, self.cfg.node_id, src_ep, payload)
                };
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

    /// Push a message into an endpoint's receive ring, inline.
    fn deposit_inline(
        &mut self,
        slot: u32,
        ep: u32,
        src_node: u32,
        src_ep: u32,
        payload: &[u8],
    ) -> Handled {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return Handled::Done;
        };
        let Some(r) = c.recv.get_mut(ep as usize).and_then(|r| r.as_mut()) else {
            return Handled::Done;
        };
        let d = Delivery {
            src_node,
            src_ep,
            len: payload.len() as u64,
            off: Delivery::INLINE,
        };
        match r.ring.try_push(&[&d.to_bytes(), payload]) {
            Ok(true) => {
                c.delivered += 1;
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

    /// Hand a block to an endpoint's client and tell it through its ring.
    fn deposit_block(
        &mut self,
        slot: u32,
        ep: u32,
        src_node: u32,
        src_ep: u32,
        block: u64,
        len: u64,
    ) -> Handled {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return Handled::Done;
        };
        let owner = c.owner(slot);
        let Some(r) = c.recv.get_mut(ep as usize).and_then(|r| r.as_mut()) else {
            return Handled::Done;
        };
        let d = Delivery {
            src_node,
            src_ep,
            len,
            off: block,
        };
        match r.ring.try_push(&[&d.to_bytes()]) {
            Ok(true) => {
                c.delivered += 1;
                self.blocks.transfer(block, owner);
                self.blocks.set_len(block, len);
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

    /// Deliver a message from peer `j`: into the ring when nothing waits
    /// before it there, else parked behind what waits (within the overflow
    /// budget). `Stall` only when the budget is spent: then the peer's
    /// frames wait, and TCP pushes back on the sender.
    fn deposit_remote(
        &mut self,
        slot: u32,
        ep: u32,
        j: usize,
        src_ep: u32,
        data: RemoteData<'_>,
        ack: Option<(usize, u32, u32, u64)>,
    ) -> Handled {
        let src_node = j as u32;
        let empty = self.clients[slot as usize]
            .as_ref()
            .and_then(|c| c.recv.get(ep as usize))
            .and_then(|r| r.as_ref())
            .is_some_and(|r| r.parked.is_empty());
        if empty {
            let r = match data {
                RemoteData::Inline(p) => self.deposit_inline(slot, ep, src_node, src_ep, p),
                RemoteData::Block { off, len } => {
                    self.deposit_block(slot, ep, src_node, src_ep, off, len)
                }
            };
            if !matches!(r, Handled::Stall) {
                if let Some((j, s, d, cookie)) = ack {
                    self.queue_reply(j, RecordKind::Ack, Status::Ok, s, d, cookie);
                }
                return r;
            }
        }
        let parked = Parked {
            src_node,
            src_ep,
            data: match data {
                RemoteData::Inline(p) => ParkedData::Inline(p.to_vec()),
                RemoteData::Block { off, len } => ParkedData::Block { off, len },
            },
            ack,
        };
        if self.parked_bytes + parked.cost() > self.cfg.overflow_bytes {
            return Handled::Stall;
        }
        let Some(r) = self.clients[slot as usize]
            .as_mut()
            .and_then(|c| c.recv.get_mut(ep as usize))
            .and_then(|r| r.as_mut())
        else {
            return Handled::Stall;
        };
        self.parked_bytes += parked.cost();
        self.parked_count += 1;
        r.parked.push_back(parked);
        Handled::Done
    }

    /// Move parked messages into rings that have room again.
    fn drain_parked(&mut self) -> bool {
        if self.parked_count == 0 {
            return false;
        }
        let mut work = false;
        for slot in 0..self.clients.len() as u32 {
            let eps = match self.clients[slot as usize].as_ref() {
                Some(c) => c.recv.len() as u32,
                None => continue,
            };
            for ep in 0..eps {
                while let Some(front) = self.clients[slot as usize]
                    .as_mut()
                    .and_then(|c| c.recv.get_mut(ep as usize))
                    .and_then(|r| r.as_mut())
                    .and_then(|r| r.parked.pop_front())
                {
                    let r = match &front.data {
                        ParkedData::Inline(v) => {
                            self.deposit_inline(slot, ep, front.src_node, front.src_ep, v)
                        }
                        ParkedData::Block { off, len } => {
                            self.deposit_block(slot, ep, front.src_node, front.src_ep, *off, *len)
                        }
                    };
                    if let Handled::Stall = r {
                        if let Some(r) = self.clients[slot as usize]
                            .as_mut()
                            .and_then(|c| c.recv.get_mut(ep as usize))
                            .and_then(|r| r.as_mut())
                        {
                            r.parked.push_front(front);
                        }
                        break;
                    }
                    work = true;
                    self.parked_bytes -= front.cost();
                    self.parked_count -= 1;
                    if let Some((j, s, d, cookie)) = front.ack {
                        self.queue_reply(j, RecordKind::Ack, Status::Ok, s, d, cookie);
                    }
                }
            }
        }
        work
    }

    /// Drop what is parked for an endpoint that goes away: blocks return to
    /// the pool, senders waiting for delivery hear why.
    fn drop_parked(&mut self, parked: VecDeque<Parked>) {
        for p in parked {
            self.parked_bytes -= p.cost();
            self.parked_count -= 1;
            if let ParkedData::Block { off, .. } = p.data {
                self.blocks.free(off, Owner::Agent);
            }
            if let Some((j, s, d, cookie)) = p.ack {
                self.queue_reply(j, RecordKind::Nack, Status::EndpointClosed, s, d, cookie);
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
            if let Some(cc) = self.conns.get(conn).and_then(|c| c.as_ref()) {
                let _ = send_line(
                    &cc.stream,
                    &serde_json::to_string(&CtlReply::Error {
                        message: format!("detached by the agent: {why}"),
                    })
                    .unwrap_or_default(),
                    &[],
                );
            }
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

    // ------------------------------------------------------------- receiving

    fn on_event(&mut self, t: u64, now: Instant) -> bool {
        let (kind, idx) = (t >> 32, (t & 0xFFFF_FFFF) as usize);
        match kind {
            T_CTL_LISTEN => self.accept_control(),
            T_CTL_CONN => self.serve_control(idx),
            T_DOORBELL => {
                let _ = self.doorbell.read();
            }
            T_TRANSPORT => {
                self.transport
                    .on_ready(&self.poller, idx as u32, now, &mut self.events);
                self.link_events();
            }
            _ => {}
        }
        true
    }

    fn process_rx(&mut self) -> bool {
        let mut work = false;
        for j in 0..self.peers.len() {
            if self.peers[j].state == PeerState::Up {
                work |= self.process_peer(j);
            }
        }
        work
    }

    /// Deposit what a peer sent, as far as the receive rings take it.
    fn process_peer(&mut self, j: usize) -> bool {
        let mut work = false;
        // A finished large message that found its ring full goes first.
        if let Some(d) = self.peers[j].rx_deposit.take() {
            match self.finish_large(j, d) {
                Handled::Stall => {
                    if !self.peers[j].rx_stalled {
                        self.peers[j].counters.rx_stalls += 1;
                    }
                    self.peers[j].rx_stalled = true;
                    return false;
                }
                Handled::Done | Handled::DoneStop => work = true,
            }
        }
        let node = j as u32;
        if let Some(h) = self.peers[j].rx_steered {
            if self.transport.steering(node) {
                return work;
            }
            self.peers[j].rx_steered = None;
            self.peers[j].counters.frames_rx += 1;
            work = true;
            if let Handled::DoneStop = self.chunk_arrived(j, &h) {
                // Its deposit waits for ring room; nothing may overtake it.
                return work;
            }
        }
        loop {
            let Some(reader) = self.transport.reader(node) else {
                return work;
            };
            // Take the reader out of the link so records can be handled with
            // `&mut self` while they borrow the reader's buffer.
            let reader = std::mem::take(reader);
            let step = self.process_frame(j, &reader);
            let mut reader = reader;
            match step {
                FrameStep::Next => {
                    reader.consume();
                    self.peers[j].rx_pos = 0;
                    work = true;
                }
                FrameStep::Empty => {
                    self.peers[j].rx_stalled = false;
                    if self.peers[j].rx_pos == 0 && self.try_steer(j, &mut reader) {
                        work = true;
                    }
                }
                FrameStep::Partial(pos) => {
                    if !self.peers[j].rx_stalled {
                        self.peers[j].counters.rx_stalls += 1;
                    }
                    self.peers[j].rx_stalled = true;
                    work |= pos != self.peers[j].rx_pos;
                    self.peers[j].rx_pos = pos;
                }
                FrameStep::Broken => work = true,
            }
            let more = matches!(step, FrameStep::Next);
            self.transport.restore_reader(node, reader);
            if work {
                self.transport.rx_resume(&self.poller, node);
            }
            if !more {
                return work;
            }
        }
    }

    fn process_frame(&mut self, j: usize, reader: &wire::FrameReader) -> FrameStep {
        let (fh, body) = match reader.peek_frame() {
            Ok(Some(x)) => x,
            Ok(None) => return FrameStep::Empty,
            Err(e) => {
                self.peers[j].counters.malformed += 1;
                self.peer_lost(j, &format!("malformed frame: {e}"), true);
                return FrameStep::Broken;
            }
        };
        if fh.src_node as usize != j {
            self.peers[j].counters.malformed += 1;
            self.peer_lost(j, "frame names another source node", true);
            return FrameStep::Broken;
        }
        match fh.kind {
            FrameKind::Heartbeat | FrameKind::Hello => FrameStep::Next,
            FrameKind::Bye => {
                self.peer_lost(j, "peer agent shut down", true);
                FrameStep::Broken
            }
            FrameKind::Data => {
                let start = self.peers[j].rx_pos;
                match self.process_records(j, body, start) {
                    Ok(None) => {
                        self.peers[j].counters.frames_rx += 1;
                        FrameStep::Next
                    }
                    Ok(Some(pos)) => FrameStep::Partial(pos),
                    Err(e) => {
                        self.peers[j].counters.malformed += 1;
                        self.peer_lost(j, &format!("malformed record: {e}"), true);
                        FrameStep::Broken
                    }
                }
            }
        }
    }

    /// Returns `Ok(Some(pos))` when a ring is full at body offset `pos`.
    fn process_records(
        &mut self,
        j: usize,
        body: &[u8],
        start: usize,
    ) -> Result<Option<usize>, wire::WireError> {
        let mut pos = start;
        for r in wire::records(&body[start..]) {
            let (h, payload) = r?;
            match self.handle_record(j, &h, payload)? {
                Handled::Done => pos += h.wire_len(),
                Handled::Stall => return Ok(Some(pos)),
                Handled::DoneStop => return Ok(Some(pos + h.wire_len())),
            }
        }
        Ok(None)
    }

    fn queue_reply(
        &mut self,
        j: usize,
        kind: RecordKind,
        status: Status,
        src_ep: u32,
        dst_ep: u32,
        cookie: u64,
    ) {
        let p = &mut self.peers[j];
        let h = RecordHeader {
            kind,
            flags: 0,
            status: status as u16,
            src_ep,
            dst_ep,
            chunk_len: 0,
            total: 0,
            offset: 0,
            cookie,
        };
        if !p.batch.fits(0) {
            Self::flush_batch(p, &mut *self.transport);
        }
        p.batch.push(&h, &[]);
        p.batch_since.get_or_insert_with(Instant::now);
    }

    fn handle_record(
        &mut self,
        j: usize,
        h: &RecordHeader,
        payload: &[u8],
    ) -> Result<Handled, wire::WireError> {
        match h.kind {
            RecordKind::Ack | RecordKind::Nack => {
                let status = if h.kind == RecordKind::Ack {
                    Status::Ok
                } else {
                    Status::from_u16(h.status)
                };
                let owner = self.peers[j]
                    .acks
                    .remove(&(h.src_ep, h.cookie))
                    .or_else(|| {
                        // A Nack for a buffered send: find the sender by endpoint.
                        self.endpoints.get(&h.src_ep).and_then(|&(slot, _)| {
                            self.clients[slot as usize].as_ref().map(|c| c.owner(slot))
                        })
                    });
                if status != Status::Ok {
                    self.peers[j].counters.errors += 1;
                }
                if let Some(o) = owner {
                    self.complete_owner(o, h.cookie, status);
                }
                Ok(Handled::Done)
            }
            RecordKind::Msg => {
                let whole = h.offset == 0 && h.chunk_len as u64 == h.total;
                let inline_max = self.pool.layout().recv.max_record() - RECV_HEADER;
                if whole && (h.total as usize) <= inline_max.min(self.cfg.eager_max) {
                    let Some(&(slot, ep)) = self.endpoints.get(&h.dst_ep) else {
                        self.queue_reply(
                            j,
                            RecordKind::Nack,
                            Status::UnknownEndpoint,
                            h.src_ep,
                            h.dst_ep,
                            h.cookie,
                        );
                        return Ok(Handled::Done);
                    };
                    let ack =
                        (h.flags & FLAG_ACK != 0).then_some((j, h.src_ep, h.dst_ep, h.cookie));
                    let r = self.deposit_remote(
                        slot,
                        ep,
                        j,
                        h.src_ep,
                        RemoteData::Inline(payload),
                        ack,
                    );
                    if let Handled::Done = r {
                        let p = &mut self.peers[j];
                        p.counters.msgs_rx += 1;
                        p.counters.bytes_rx += h.total;
                    }
                    return Ok(r);
                }
                self.handle_chunk(j, h, payload)
            }
        }
    }

    fn handle_chunk(
        &mut self,
        j: usize,
        h: &RecordHeader,
        payload: &[u8],
    ) -> Result<Handled, wire::WireError> {
        let Some(block) = self.chunk_target(j, h)? else {
            // No room in the pool now: hold the peer back until blocks free up.
            return Ok(Handled::Stall);
        };
        if self.pool.write_block(block + h.offset, payload).is_none() {
            return Err(wire::WireError::Record("chunk outside its block"));
        }
        Ok(self.chunk_arrived(j, h))
    }

    /// The block a chunk goes into: a new one for the first chunk of a
    /// message (`None` when the pool has no room now), else the block of the
    /// message in progress, which the chunk must continue.
    fn chunk_target(&mut self, j: usize, h: &RecordHeader) -> Result<Option<u64>, wire::WireError> {
        if h.offset == 0 {
            if self.peers[j].rx_large.is_some() {
                return Err(wire::WireError::Record(
                    "a new large message before the last one ended",
                ));
            }
            let Some(b) = self.blocks.alloc(h.total, Owner::Agent) else {
                return Ok(None);
            };
            self.peers[j].rx_large = Some(RxLarge {
                src_ep: h.src_ep,
                dst_ep: h.dst_ep,
                cookie: h.cookie,
                total: h.total,
                got: 0,
                block: b.off,
                flags: h.flags,
            });
        }
        let Some(r) = self.peers[j].rx_large.as_ref() else {
            return Err(wire::WireError::Record("a chunk with no message started"));
        };
        if r.src_ep != h.src_ep
            || r.dst_ep != h.dst_ep
            || r.cookie != h.cookie
            || r.total != h.total
            || r.got != h.offset
        {
            return Err(wire::WireError::Record(
                "chunk does not continue the message in progress",
            ));
        }
        Ok(Some(r.block))
    }

    /// A chunk's bytes are in its block: count them, deposit a finished message.
    fn chunk_arrived(&mut self, j: usize, h: &RecordHeader) -> Handled {
        let p = &mut self.peers[j];
        let Some(r) = p.rx_large.as_mut() else {
            return Handled::Done;
        };
        r.got += h.chunk_len as u64;
        if r.got < r.total {
            return Handled::Done;
        }
        let r = p.rx_large.take().expect("checked above");
        p.counters.msgs_rx += 1;
        p.counters.bytes_rx += r.total;
        let d = Deposit {
            src_ep: r.src_ep,
            dst_ep: r.dst_ep,
            block: r.block,
            len: r.total,
            cookie: r.cookie,
            flags: r.flags,
        };
        match self.finish_large(j, d) {
            // The record is consumed; the deposit waits in `rx_deposit` and
            // nothing after it may overtake it.
            Handled::Stall => Handled::DoneStop,
            _ => Handled::Done,
        }
    }

    /// A large chunk whose frame is only partly read: have the transport
    /// read the rest of its payload straight into the message's block,
    /// sparing a copy. Returns whether it did.
    fn try_steer(&mut self, j: usize, reader: &mut wire::FrameReader) -> bool {
        let Some((fh, body)) = reader.peek_partial() else {
            return false;
        };
        if fh.kind != FrameKind::Data
            || (fh.body_len as usize) < STEER_MIN
            || body.len() < wire::RECORD_HEADER
            || fh.src_node as usize != j
        {
            return false;
        }
        let Ok(h) = RecordHeader::parse(body) else {
            return false; // the normal path reports it
        };
        let whole = h.offset == 0 && h.chunk_len as u64 == h.total;
        let inline_max = self.pool.layout().recv.max_record() - RECV_HEADER;
        let inline = whole && (h.total as usize) <= inline_max.min(self.cfg.eager_max);
        if h.kind != RecordKind::Msg || inline || h.wire_len() != fh.body_len as usize {
            return false;
        }
        let have = (body.len() - wire::RECORD_HEADER).min(h.chunk_len as usize);
        let left = h.chunk_len as usize - have;
        if left < STEER_MIN / 4 {
            return false;
        }
        let block = match self.chunk_target(j, &h) {
            Ok(Some(b)) => b,
            _ => return false, // no room, or malformed: the normal path decides
        };
        let at = block + h.offset;
        let head = &body[wire::RECORD_HEADER..wire::RECORD_HEADER + have];
        if self.pool.write_block(at, head).is_none() {
            return false;
        }
        let pad = wire::padded(h.chunk_len as usize) - h.chunk_len as usize;
        if !self
            .transport
            .steer(j as u32, at + have as u64, left as u64, pad)
        {
            if h.offset == 0 {
                // Undo what `chunk_target` began; the normal path redoes it.
                if let Some(r) = self.peers[j].rx_large.take() {
                    self.blocks.free(r.block, Owner::Agent);
                }
            }
            return false;
        }
        reader.discard_partial();
        self.peers[j].rx_steered = Some(h);
        self.peers[j].counters.bytes_rx_direct += left as u64;
        true
    }

    fn finish_large(&mut self, j: usize, d: Deposit) -> Handled {
        let Some(&(slot, ep)) = self.endpoints.get(&d.dst_ep) else {
            self.blocks.free(d.block, Owner::Agent);
            self.queue_reply(
                j,
                RecordKind::Nack,
                Status::UnknownEndpoint,
                d.src_ep,
                d.dst_ep,
                d.cookie,
            );
            return Handled::Done;
        };
        let ack = (d.flags & FLAG_ACK != 0).then_some((j, d.src_ep, d.dst_ep, d.cookie));
        let data = RemoteData::Block {
            off: d.block,
            len: d.len,
        };
        match self.deposit_remote(slot, ep, j, d.src_ep, data, ack) {
            Handled::Done | Handled::DoneStop => Handled::Done,
            Handled::Stall => {
                self.peers[j].rx_deposit = Some(d);
                Handled::Stall
            }
        }
    }

    // --------------------------------------------------------- control socket

    fn accept_control(&mut self) {
        while let Ok((stream, _)) = self.ctl.accept() {
            let cred =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
            let allowed = match &cred {
                Ok(c) => c.uid() == self.uid || c.uid() == 0 || self.cfg.allow_gid == Some(c.gid()),
                Err(_) => false,
            };
            if !allowed {
                let who = cred
                    .map(|c| format!("uid {} gid {}", c.uid(), c.gid()))
                    .unwrap_or_default();
                log::warn!("refusing a control connection from {who}");
                let _ = send_line(
                    &stream,
                    &serde_json::to_string(&CtlReply::Error {
                        message: format!(
                            "permission denied: {who} is neither the agent's uid {} nor in its allowed group",
                            self.uid
                        ),
                    })
                    .unwrap_or_default(),
                    &[],
                );
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let idx = crate::slab::vacant(&mut self.conns);
            if self
                .poller
                .epoll()
                .add(
                    stream.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, token(T_CTL_CONN, idx)),
                )
                .is_err()
            {
                continue;
            }
            self.conns[idx] = Some(CtlConn {
                stream,
                reader: LineReader::new(),
                client: None,
            });
        }
    }

    fn close_conn(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx).and_then(|c| c.take()) {
            let _ = self.poller.epoll().delete(c.stream.as_fd());
            if let Some(slot) = c.client {
                self.start_closing(slot);
            }
        }
    }

    /// The client left (detached, exited or died): its endpoints stop
    /// receiving at once, but what it already published in its submission
    /// ring is still sent; then its slot is reclaimed.
    fn start_closing(&mut self, slot: u32) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        if c.closing.is_some() {
            return;
        }
        c.closing = Some(Instant::now());
        for ep in c.recv.iter().flatten() {
            self.endpoints.remove(&ep.id);
        }
        self.maybe_reclaim(slot);
    }

    fn maybe_reclaim(&mut self, slot: u32) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        let Some(since) = c.closing else {
            return;
        };
        let drained = c.stalled.is_none()
            && !c.waiting_large
            && matches!(c.sub.is_empty(), Ok(true) | Err(_));
        if drained || since.elapsed() > CLOSING_GRACE {
            if !drained {
                log::warn!(
                    "client slot {slot}: dropping what it left unsent after {CLOSING_GRACE:?}"
                );
            }
            self.reclaim(slot);
        }
    }

    fn serve_control(&mut self, idx: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                return;
            };
            let line = conn.reader.next_line();
            let Some((line, fds)) = line else {
                match conn.reader.read_from(&conn.stream) {
                    Ok(ReadOutcome::Data) => continue,
                    Ok(ReadOutcome::WouldBlock) => return,
                    Ok(ReadOutcome::Closed) => {}
                    Err(e) => log::warn!("control connection: {e}"),
                }
                self.close_conn(idx);
                return;
            };
            let req: CtlRequest = match serde_json::from_str(&line) {
                Ok(r) => r,
                Err(e) => {
                    self.reply(
                        idx,
                        &CtlReply::Error {
                            message: format!("malformed control request: {e}"),
                        },
                        &[],
                    );
                    self.close_conn(idx);
                    return;
                }
            };
            if !self.handle_ctl(idx, req, fds) {
                self.close_conn(idx);
                return;
            }
        }
    }

    fn reply(&mut self, idx: usize, rep: &CtlReply, fds: &[BorrowedFd<'_>]) {
        if let Some(c) = self.conns.get(idx).and_then(|c| c.as_ref()) {
            let line = serde_json::to_string(rep).unwrap_or_default();
            if let Err(e) = send_line(&c.stream, &line, fds) {
                log::debug!("control reply failed: {e}");
            }
        }
    }

    /// Returns false when the connection must be closed.
    fn handle_ctl(&mut self, idx: usize, req: CtlRequest, fds: Vec<OwnedFd>) -> bool {
        let attached = self.conns[idx].as_ref().and_then(|c| c.client);
        match req {
            CtlRequest::Stat => {
                let s = self.snapshot();
                self.reply(idx, &CtlReply::Stat(Box::new(s)), &[]);
                true
            }
            CtlRequest::Attach { version, pid, name } => {
                if attached.is_some() {
                    self.reply(
                        idx,
                        &CtlReply::Error {
                            message: "already attached".into(),
                        },
                        &[],
                    );
                    return true;
                }
                if version != crate::shm::LAYOUT_VERSION {
                    self.reply(
                        idx,
                        &CtlReply::Error {
                            message: format!(
                                "client speaks layout version {version}, this agent speaks {}; use a matching client library",
                                crate::shm::LAYOUT_VERSION
                            ),
                        },
                        &[],
                    );
                    return false;
                }
                let Some(wake) = fds.into_iter().next() else {
                    self.reply(
                        idx,
                        &CtlReply::Error {
                            message: "attach needs the client's eventfd".into(),
                        },
                        &[],
                    );
                    return false;
                };
                let Some(slot) = self.clients.iter().position(|c| c.is_none()) else {
                    self.reply(
                        idx,
                        &CtlReply::Error {
                            message: format!("all {} client slots are in use", self.clients.len()),
                        },
                        &[],
                    );
                    return false;
                };
                let slot32 = slot as u32;
                self.gens[slot] = self.gens[slot].wrapping_add(1);
                let eps = self.cfg.pool.endpoints_per_client as usize;
                announce_awake(self.pool.client_sleeping(slot32));
                self.clients[slot] = Some(ClientState {
                    gen: self.gens[slot],
                    pid,
                    name: name.chars().take(32).collect(),
                    conn: idx,
                    sub: self.pool.sub_consumer(slot32, true),
                    comp: self.pool.comp_producer(slot32, true),
                    comp_backlog: VecDeque::new(),
                    recv: (0..eps).map(|_| None).collect(),
                    wake: File::from(wake),
                    stalled: None,
                    waiting_large: false,
                    closing: None,
                    sent_to: vec![false; self.peers.len()],
                    submitted: 0,
                    delivered: 0,
                    errors: 0,
                });
                if let Some(c) = self.conns[idx].as_mut() {
                    c.client = Some(slot32);
                }
                let rep = CtlReply::Attached {
                    slot: slot32,
                    node: self.cfg.node_id,
                    nodes: self.cfg.nodes.len() as u32,
                    eager_max: self.cfg.eager_max as u64,
                };
                let pool_fd = self.pool.clone();
                let db = self.doorbell.clone();
                self.reply(idx, &rep, &[pool_fd.fd().as_fd(), db.as_fd()]);
                log::info!("client pid {pid} ({name}) attached in slot {slot}");
                true
            }
            CtlRequest::OpenEndpoint { id } => {
                let Some(slot) = attached else {
                    self.reply(
                        idx,
                        &CtlReply::Error {
                            message: "attach first".into(),
                        },
                        &[],
                    );
                    return true;
                };
                let id = match id {
                    Some(id) if id == u32::MAX => {
                        self.reply(
                            idx,
                            &CtlReply::Error {
                                message: "endpoint id 4294967295 is reserved".into(),
                            },
                            &[],
                        );
                        return true;
                    }
                    Some(id) if self.endpoints.contains_key(&id) => {
                        self.reply(
                            idx,
                            &CtlReply::Error {
                                message: format!("endpoint {id} is already open on this node"),
                            },
                            &[],
                        );
                        return true;
                    }
                    Some(id) => id,
                    None => {
                        while self.endpoints.contains_key(&self.next_ep) || self.next_ep == u32::MAX
                        {
                            self.next_ep = self.next_ep.wrapping_add(1).max(1 << 16);
                        }
                        self.next_ep
                    }
                };
                let pool = self.pool.clone();
                let c = self.clients[slot as usize]
                    .as_mut()
                    .expect("attached client");
                let Some(e) = c.recv.iter().position(|r| r.is_none()) else {
                    let n = c.recv.len();
                    self.reply(
                        idx,
                        &CtlReply::Error {
                            message: format!("all {n} endpoint slots of this client are in use"),
                        },
                        &[],
                    );
                    return true;
                };
                c.recv[e] = Some(RecvEp {
                    id,
                    ring: pool.recv_producer(slot, e as u32, true),
                    parked: VecDeque::new(),
                });
                self.endpoints.insert(id, (slot, e as u32));
                self.reply(idx, &CtlReply::Endpoint { id, slot: e as u32 }, &[]);
                true
            }
            CtlRequest::CloseEndpoint { id } => {
                let Some(slot) = attached else {
                    self.reply(
                        idx,
                        &CtlReply::Error {
                            message: "attach first".into(),
                        },
                        &[],
                    );
                    return true;
                };
                match self.endpoints.get(&id) {
                    Some(&(s, e)) if s == slot => {
                        self.endpoints.remove(&id);
                        let gone = self.clients[slot as usize]
                            .as_mut()
                            .and_then(|c| c.recv[e as usize].take());
                        if let Some(r) = gone {
                            self.drop_parked(r.parked);
                        }
                        self.reply(idx, &CtlReply::Ok, &[]);
                    }
                    _ => self.reply(
                        idx,
                        &CtlReply::Error {
                            message: format!("endpoint {id} is not yours"),
                        },
                        &[],
                    ),
                }
                true
            }
            CtlRequest::Detach => {
                self.reply(idx, &CtlReply::Ok, &[]);
                false
            }
        }
    }

    /// Current statistics.
    pub fn snapshot(&mut self) -> Snapshot {
        let peers = self
            .peers
            .iter()
            .filter(|p| p.state != PeerState::Local)
            .map(|p| PeerSnapshot {
                node: p.node,
                addr: p.addr.to_string(),
                transport: "tcp".into(),
                state: p.state.name(),
                aggregation: if p.counters.frames_tx == 0 {
                    0.0
                } else {
                    p.counters.msgs_tx as f64 / p.counters.frames_tx as f64
                },
                queued_bytes: self.transport.queued(p.node) as u64,
                counters: p.counters.clone(),
            })
            .collect();
        let mut clients = Vec::new();
        for (slot, c) in self.clients.iter_mut().enumerate() {
            let Some(c) = c.as_mut() else { continue };
            let owner = c.owner(slot as u32);
            clients.push(ClientSnapshot {
                slot: slot as u32,
                pid: c.pid,
                name: c.name.clone(),
                endpoints: c.recv.iter().flatten().map(|e| e.id).collect(),
                submitted: c.submitted,
                delivered: c.delivered,
                errors: c.errors,
                sub_ring_used: c.sub.pending().unwrap_or(0),
                blocks: self.blocks.count_of(owner) as u64,
            });
        }
        Snapshot {
            node: self.cfg.node_id,
            nodes: self.cfg.nodes.len() as u32,
            backing: self.pool.backing().to_string(),
            pool_bytes: self.pool.len() as u64,
            blocks_free: self.blocks.free_bytes(),
            blocks_total: self.blocks.total_bytes(),
            idle: format!("{:?}", self.cfg.idle).to_lowercase(),
            uptime_s: self.start.elapsed().as_secs_f64(),
            rounds: self.rounds,
            sleeps: self.sleeps,
            local_msgs: self.local_msgs,
            clients_evicted: self.evicted,
            peers,
            clients,
        }
    }
}

fn bind_control(cfg: &AgentConfig) -> Result<UnixListener, AgentError> {
    let path = &cfg.socket;
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(AgentError::SocketBusy(path.clone()));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let l = UnixListener::bind(path).map_err(|source| AgentError::Socket {
        path: path.clone(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    let mode = if cfg.allow_gid.is_some() {
        0o770
    } else {
        0o700
    };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if let Some(gid) = cfg.allow_gid {
        let _ = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)));
    }
    l.set_nonblocking(true)
        .map_err(|source| AgentError::Socket {
            path: path.clone(),
            source,
        })?;
    Ok(l)
}
