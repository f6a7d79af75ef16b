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
//!
//! ## Rooms
//! The agent's state lives in rooms that know nothing of each other and take
//! time as `now`: `clients` (slots, rings, endpoints, completions, who to
//! wake), `peers` (each node's state machine and session), `inbox`
//! (messages waiting for a ring or an endpoint, and their budget), `conns`
//! (control connections and their replies). The [`Agent`] holds them and
//! carries out what crosses rooms, in files that only call downwards
//! (`tests/architecture.rs` checks it):
//!
//! ```text
//! run ─┬─> submit ─────────────> deliver ──> rooms
//!      ├─> control ─┬─> jobstat ─┬─> links ──┘
//!      └─> rx ──────┘            │
//!                   └────────────┘
//! ```
//! - `run`: the poll round, the idle [`Backoff`](crate::idle::Backoff),
//!   readiness events, link events, shutdown;
//! - `submit`: clients' submission rings, routing a send;
//! - `control`: control requests (attach, endpoints, stat, break-link,
//!   connect, the job view);
//! - `jobstat`: `wyvern stat --job`, a query to every peer and their answers
//!   (`jobview` renders it);
//! - `rx`: the receive walk, frame → records → deposit;
//! - `links`: peers coming up, resuming, lost; the send side of links; timers;
//! - `deliver`: completions, deposits into receive rings, held messages,
//!   replies to peers, detaching a client.
//!
//! Start-up runs one way too (`plan`): configuration → plan → parts.
//! docs/architecture.md has the whole picture.

mod clients;
mod conns;
mod control;
mod degraded;
mod deliver;
mod inbox;
pub mod jobstat;
pub mod jobview;
mod links;
mod peers;
mod plan;
mod run;
mod rx;
mod submit;

pub mod config;
pub mod metrics;
pub mod stats;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::clock::Clock;
use crate::shm::blocks::BlockAlloc;
use crate::shm::{Pool, BLOCK_UNIT};
use crate::transport::{Inflow, LinkEvent, LinkRx, Poller, Transport};

pub use config::{AgentConfig, ConnectPolicy, IdlePolicy, TransportKind};
pub use run::Rounds;

use clients::Clients;
use conns::{token, Conns, T_CTL_LISTEN, T_DOORBELL, T_TRANSPORT};
use inbox::Inbox;
use peers::{Peer, Peers, Timing};
use plan::Plan;

/// Records taken from one submission ring per round.
pub const BURST: usize = 64;
/// How often timers run (heartbeats, timeouts, expiry).
const TICK: Duration = Duration::from_millis(5);
/// Longest sleep of an adaptive agent.
const MAX_SLEEP: Duration = Duration::from_millis(50);

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

/// Counters of the agent as a whole (the rooms keep their own).
#[derive(Default)]
struct AgentCounters {
    rounds: u64,
    sleeps: u64,
    local_msgs: u64,
    /// Pool pages a client punched out that the agent now holds privately.
    pool_pages_damaged: u64,
    /// Times a spinning polling thread was preempted (involuntary context
    /// switches: another thread wanted its core).
    preempted: u64,
    /// A spinning agent found its core shared and now yields it when idle.
    spin_shared: bool,
    /// Rounds that found work, by where they found it ([`BUSY_SOURCES`]): why
    /// an adaptive agent does not sleep.
    busy: [u64; BUSY_SOURCES.len()],
}

/// Where a poll round finds work (the keys of `busy_rounds` in `wyvern stat`).
const BUSY_SOURCES: [&str; 7] = [
    "clients",
    "links_tx",
    "transport",
    "events",
    "parked",
    "rx",
    "control",
];

/// Every peer's incoming stream, each made when first written (a link came
/// up): a peer never talked to costs a pointer here, not a [`LinkRx`]'s
/// 100-odd bytes. Reading one not made reads an empty stream.
struct Inflows {
    v: Vec<Option<Box<LinkRx>>>,
}

/// What a stream not made reads as.
static NO_INFLOW: std::sync::LazyLock<LinkRx> = std::sync::LazyLock::new(LinkRx::default);

impl Inflows {
    fn new(peers: usize) -> Inflows {
        Inflows {
            v: (0..peers).map(|_| None).collect(),
        }
    }

    /// The streams made.
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut LinkRx> {
        self.v.iter_mut().flatten().map(|b| &mut **b)
    }

    /// How many were made.
    #[cfg(feature = "testing")]
    fn made(&self) -> usize {
        self.v.iter().filter(|x| x.is_some()).count()
    }
}

impl std::ops::Index<usize> for Inflows {
    type Output = LinkRx;
    fn index(&self, j: usize) -> &LinkRx {
        self.v[j].as_deref().unwrap_or(&NO_INFLOW)
    }
}

impl std::ops::IndexMut<usize> for Inflows {
    fn index_mut(&mut self, j: usize) -> &mut LinkRx {
        self.v[j].get_or_insert_with(|| {
            let mut rx = LinkRx::default();
            // The smallest share of the unread bound until the next tick
            // gives this link its share of it.
            rx.set_high_water(0);
            Box::new(rx)
        })
    }
}

impl Inflow for Inflows {
    fn link(&mut self, node: u32) -> &mut LinkRx {
        &mut self[node as usize]
    }
}

/// A simulated agent's peers by state, and how many hold each part of the
/// per-peer state that is made on first contact ([`Agent::sim_census`]).
#[cfg(feature = "testing")]
#[derive(Clone, Debug, Default)]
pub struct SimCensus {
    /// Nodes in the job (this one included).
    pub peers: usize,
    /// Peers by state.
    pub idle: usize,
    /// Connecting.
    pub connecting: usize,
    /// Resuming.
    pub resuming: usize,
    /// Up.
    pub up: usize,
    /// Disconnected, waiting to resume.
    pub disconnected: usize,
    /// Lost.
    pub lost: usize,
    /// Peers whose link state (frame builder, queues, counters) was made.
    pub link_states: usize,
    /// Peers with a session.
    pub sessions: usize,
    /// Peers whose incoming stream was made.
    pub inflows: usize,
    /// Times peers were declared lost, all peers together.
    pub losses: u64,
    /// Every peer not idle (nor this node): its node and state.
    pub active: Vec<(u32, String)>,
}

/// The agent.
pub struct Agent {
    cfg: AgentConfig,
    timing: Timing,
    pool: Arc<Pool>,
    blocks: BlockAlloc,
    clients: Clients,
    peers: Peers,
    inbox: Inbox,
    conns: Conns,
    transport: Box<dyn Transport>,
    /// Per peer: its link's incoming stream (the transport fills it, the
    /// receive walk reads it), made when first written.
    inflow: Inflows,
    /// Where `process_rx` starts this round in the list of peers written
    /// (rotates; see `Peers`).
    rx_turn: usize,
    /// The client slot `poll_clients` starts with this round (rotates).
    sub_turn: usize,
    events: Vec<LinkEvent>,
    poller: Poller,
    doorbell: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    /// Where time comes from (real; virtual in a simulation).
    clock: Clock,
    start: Instant,
    /// The clock of this round (read once per round by [`Agent::run`], and
    /// again after a sleep).
    now: Instant,
    /// Agent-owned blocks the links gave back, to free.
    freed: Vec<u64>,
    /// The submission record being handled (kept for its capacity).
    rec: Vec<u8>,
    counters: AgentCounters,
    /// What runs degraded, for stat and the metrics (logged once each).
    degraded: degraded::Degraded,
    /// A client was reclaimed since the heap was last trimmed.
    heap_dirty: bool,
    /// No heap trim before this.
    trim_after: Instant,
    /// Damage records of the pool's SIGBUS guard (see `Agent::pool_damage`).
    damage: crate::shm::guard::DamageReader,
    uid: u32,
    /// This run of the agent (start time in ns): tells a restarted agent apart.
    incarnation: u64,
    /// The job-wide view: the query in flight, peers' answer budgets.
    jobstat: jobstat::JobStat,
}

impl Agent {
    /// Resolve the configuration, create the pool, bind the sockets, start
    /// dialing peers.
    pub fn new(cfg: AgentConfig) -> Result<Agent, AgentError> {
        Agent::build(
            Plan::resolve(cfg)?,
            Clock::Real,
            |plan, poller, pool, wake| plan.open_transports(poller, pool, wake),
        )
    }

    /// An agent of the in-process simulation (`tests/sim.rs`): its peers are
    /// reached through `io`, a simulated network, by the datagram transport
    /// (the one udp and dpdk run), and its time is `clock`'s. Drive it with
    /// [`Agent::sim_rounds`] and [`Agent::sim_round`]; everything else (the
    /// pool, the control socket, the rooms) is as in a real agent.
    #[cfg(feature = "testing")]
    pub fn simulated(
        cfg: AgentConfig,
        io: crate::transport::sim::SimIo,
        clock: crate::clock::VirtualClock,
    ) -> Result<Agent, AgentError> {
        let plan = Plan::resolve(cfg)?;
        Agent::build(
            plan,
            Clock::Virtual(clock),
            move |plan, poller, pool, _wake| {
                let t = plan
                    .datagram(io, poller, pool)
                    .map_err(|source| AgentError::Device {
                        name: "sim",
                        source,
                    })?;
                Ok(Box::new(t) as Box<dyn Transport>)
            },
        )
    }

    fn build(
        mut plan: Plan,
        clock: Clock,
        open: impl FnOnce(
            &Plan,
            &Poller,
            &Arc<Pool>,
            Arc<dyn Fn() + Send + Sync>,
        ) -> Result<Box<dyn Transport>, AgentError>,
    ) -> Result<Agent, AgentError> {
        let cfg = &plan.cfg;
        if let Some(&core) = cfg.cores.first() {
            plan::pin_to(core)?;
        }
        let mut pool = Pool::create(cfg.pool, cfg.node_id, cfg.hugepages)?;
        // A client can punch a hole in the pool memfd (fallocate); on
        // hugetlbfs with no free huge page left, the agent's next touch of
        // that range would be a SIGBUS: the guard makes it a private zero
        // page and a damage record instead (see `pool_damage`).
        let mut degraded = std::mem::take(&mut plan.degraded);
        if let Err(e) = pool.guard() {
            degraded.note(
                "pool_guard",
                format!("cannot guard the pool against SIGBUS ({e}): a client punching a hole in a hugepage pool may crash the agent"),
                "none while the pool is on normal pages; otherwise report it (the guard's handler or \
                 its table of regions could not be set up)",
            );
        }
        if cfg.hugepages && pool.backing() != crate::shm::Backing::Hugepages {
            degraded.note(
                "hugepages",
                format!(
                    "the {} MiB pool is on normal pages: no free hugepages for it (more TLB \
                     misses on every ring and block access)",
                    pool.len() >> 20
                ),
                format!(
                    "reserve {} more 2 MiB pages (scripts/setup-hugepages.sh, `wyvern doctor` \
                     checks), or hugepages = false to say normal pages are meant",
                    pool.len().div_ceil(2 << 20)
                ),
            );
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

        let ctl = conns::bind_control(cfg)?;
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
        let db = doorbell.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let _ = db.write(1);
        });
        let mut transport = open(&plan, &poller, &pool, wake)?;
        for s in plan.shortfall.take() {
            degraded.note(s.what, s.why, s.fix);
        }
        let on_demand = cfg.connect == ConnectPolicy::OnDemand && transport.want(None, clock.now());
        if cfg.connect == ConnectPolicy::OnDemand && !on_demand {
            log::info!(
                "connect = on-demand: the {} transport links to every peer from the start",
                transport.name(None)
            );
        }

        // Idle links are closed only where the next message makes them again.
        let link_idle_ms = if on_demand { cfg.link_idle_ms } else { 0 };
        let now = clock.now();
        let peers = Peers::new(
            cfg.addrs
                .iter()
                .enumerate()
                .map(|(i, &addr)| {
                    let mut p = Peer::new(i as u32, addr, cfg.node_id, cfg.frame_bytes, now);
                    if on_demand && i as u32 != cfg.node_id {
                        p.idle(now);
                    }
                    p
                })
                .collect(),
        );
        let max = cfg.pool.max_clients as usize;
        log::info!(
            "node {} of {}: peers on {} {}, control socket {}",
            cfg.node_id,
            cfg.nodes.len(),
            transport.name(None),
            transport.local_addr(),
            cfg.socket.display()
        );
        Ok(Agent {
            timing: plan.timing,
            pool,
            blocks,
            clients: Clients::new(max),
            peers,
            inbox: Inbox::new(cfg.overflow_bytes),
            conns: Conns::new(ctl),
            transport,
            inflow: Inflows::new(cfg.addrs.len()),
            rx_turn: 0,
            sub_turn: 0,
            events: Vec::new(),
            poller,
            doorbell,
            stop: Arc::new(AtomicBool::new(false)),
            clock,
            start: now,
            now,
            freed: Vec::new(),
            rec: Vec::with_capacity(64 * 1024),
            counters: AgentCounters::default(),
            degraded,
            heap_dirty: false,
            trim_after: now,
            damage: crate::shm::guard::DamageReader::new(),
            uid: nix::unistd::geteuid().as_raw(),
            incarnation: plan.incarnation,
            jobstat: Default::default(),
            cfg: AgentConfig {
                link_idle_ms,
                ..plan.cfg
            },
        })
    }

    /// The descriptor that is readable when this agent has a descriptor
    /// ready (its epoll): a simulation of thousands of agents polls these
    /// together instead of every agent's.
    #[cfg(feature = "testing")]
    pub fn sim_fd(&self) -> BorrowedFd<'_> {
        self.poller.epoll().0.as_fd()
    }

    /// What a simulated agent holds per peer, counted (see [`SimCensus`]).
    #[cfg(feature = "testing")]
    pub fn sim_census(&self) -> SimCensus {
        use peers::PeerState as S;
        let mut c = SimCensus {
            peers: self.peers.len(),
            inflows: self.inflow.made(),
            ..SimCensus::default()
        };
        for p in &self.peers {
            match p.state() {
                S::Local => {}
                S::Idle => c.idle += 1,
                S::Connecting => c.connecting += 1,
                S::Resuming => c.resuming += 1,
                S::Up => c.up += 1,
                S::Disconnected(..) => c.disconnected += 1,
                S::Lost(_) => c.lost += 1,
            }
            c.link_states += p.has_link_state() as usize;
            c.sessions += p.session.is_some() as usize;
            c.losses += p.counters.losses;
            if !matches!(p.state(), S::Idle | S::Local) {
                c.active.push((p.node, p.state().name()));
            }
        }
        c
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
        self.transport.name(None)
    }

    /// The line an agent prints when it is ready, for scripts and people:
    /// `wyvern agent ready: <transport> <address>`, then the choices made at
    /// start that decide whether peers can reach it (the RoCE GID and why).
    pub fn ready_line(&self) -> String {
        let mut l = format!(
            "wyvern agent ready: {} {}",
            self.transport_name(),
            self.local_addr()
        );
        for (k, v) in self.transport.stats().info {
            if k == "verbs_gid" {
                l.push_str(&format!(" ({k}: {v})"));
            }
        }
        l
    }
}
