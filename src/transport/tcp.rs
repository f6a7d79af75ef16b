//! The TCP transport: one non-blocking connection per peer pair.
//!
//! Frames of aggregated messages are written with one `write(2)` each; the
//! chunks of large messages are written straight from their pool block (no
//! copy into a user-space buffer). Reading fills a [`FrameReader`]; the agent
//! takes frames from it as its receive rings have room, and stops reading
//! the socket while too much is buffered, so TCP's own window pushes back on
//! the sending agent.
//!
//! ## Handshake
//! The accepting side speaks first: a `Challenge` frame with a fresh random
//! nonce. The dialing side answers with its `Hello`, its own nonce and a MAC
//! (keyed by the job key, [`crate::wire::auth`]) over a label naming the
//! direction, both nonces and every `Hello` field; the accepting side checks
//! it and answers with its own `Hello` and a MAC under the other label over
//! the same nonces. A captured `Hello` therefore cannot be replayed (the
//! acceptor's nonce is new on every connection), and nothing a connection
//! sends is acted on (no link replaced, no session reset) before its `Hello`
//! verifies. After it, TCP's own sequence numbers keep an off-path party from
//! injecting into the stream (an on-path one is outside this model). Without a
//! job key the MACs are zero and not checked (`peer_auth: none`): the job
//! hash alone keeps jobs apart, for trusted fabrics.
//!
//! Connections whose handshake is not done are bounded: at most
//! [`MAX_PENDING`] accepted ones at a time (more are closed at once), each
//! buffering at most one handshake frame ([`HANDSHAKE_BODY_MAX`] bytes of body;
//! a frame header that announces more closes it) for at most
//! [`HANDSHAKE_TIMEOUT`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::shm::Pool;
use crate::wire::auth::{self, JobKey, MAC_LEN, NONCE_LEN};
use crate::wire::{
    control_frame, FrameHeader, FrameKind, FrameReader, Hello, FRAME_HEADER, HANDSHAKE_BODY_MAX,
};

use super::{
    Close, Inflow, LinkEvent, LinkRx, LinkView, Out, Poller, Transport, TransportStats, WarnSpell,
};

/// Read at most this much from one socket per poll round (fairness).
const RX_PER_ROUND: usize = 1 << 20;

/// One established TCP connection to a peer agent.
pub struct Link {
    stream: TcpStream,
    /// Handshake frames read and not yet consumed (once the link is up,
    /// its bytes go to the agent's stream of the peer).
    handshake: FrameReader,
    out: VecDeque<Out>,
    queued: usize,
    /// When something was last written.
    pub last_tx: Instant,
    /// Not watched for readability: the agent's stream of the peer is full.
    pub paused: bool,
}

impl Link {
    /// Wrap a connected stream (made non-blocking, Nagle off).
    pub fn new(stream: TcpStream) -> io::Result<Link> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let now = Instant::now();
        Ok(Link {
            stream,
            handshake: FrameReader::new(),
            out: VecDeque::new(),
            queued: 0,
            last_tx: now,
            paused: false,
        })
    }

    /// The socket, for the poller.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.stream)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queue an item.
    pub fn push(&mut self, item: Out) {
        self.queued += item.remaining();
        self.out.push_back(item);
    }

    /// Write as much as the socket takes. Blocks whose last byte went out are
    /// appended to `freed`. Returns `Ok(true)` when everything was written.
    pub fn flush(&mut self, pool: &Pool, freed: &mut Vec<u64>) -> io::Result<bool> {
        while let Some(front) = self.out.front_mut() {
            if front.remaining() == 0 {
                if let Some(Out::Block {
                    free_after: Some(b),
                    ..
                }) = self.out.pop_front()
                {
                    freed.push(b);
                }
                continue;
            }
            let r = match front {
                Out::Bytes { buf, pos } => self.stream.write(&buf[*pos..]),
                Out::Block { off, len, pos, .. } => {
                    pool.write_block_to(self.stream.as_raw_fd(), *off + *pos, *len - *pos)
                }
            };
            let n = match r {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped reading",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.last_tx = Instant::now();
            self.queued -= n;
            let done = match front {
                Out::Bytes { buf, pos } => {
                    *pos += n;
                    *pos == buf.len()
                }
                Out::Block { len, pos, .. } => {
                    *pos += n as u64;
                    *pos == *len
                }
            };
            if done {
                if let Some(Out::Block {
                    free_after: Some(b),
                    ..
                }) = self.out.pop_front()
                {
                    freed.push(b);
                }
            }
        }
        Ok(true)
    }

    /// Blocks still referenced by queued items (to free when the link dies).
    pub fn drain_blocks(&mut self) -> Vec<u64> {
        let v = self
            .out
            .iter()
            .filter_map(|o| match o {
                Out::Block { free_after, .. } => *free_after,
                _ => None,
            })
            .collect();
        self.out.clear();
        self.queued = 0;
        v
    }

    /// Read what the socket has into the peer's stream, up to the
    /// per-round limit (a steer's bytes straight into the pool). `Ok(false)`:
    /// the peer closed the connection.
    pub fn fill(&mut self, rx: &mut LinkRx, pool: &Pool, now: Instant) -> io::Result<bool> {
        rx.fill_from(self.stream.as_raw_fd(), pool, RX_PER_ROUND, now)
    }

    /// Read until `want` bytes are buffered, not one byte more (a connection
    /// whose handshake is not done: what it may make the agent hold is one
    /// handshake frame). `Ok(false)`: the peer closed the connection.
    fn fill_upto(&mut self, want: usize) -> io::Result<bool> {
        while self.handshake.buffered() < want {
            let n = want - self.handshake.buffered();
            let spare = self.handshake.spare(n);
            let r = self.stream.read(&mut spare[..n]);
            self.handshake.filled(n, *r.as_ref().unwrap_or(&0));
            match r {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                },
            }
        }
        Ok(true)
    }

    /// Shut the connection down both ways.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Result of a dial attempt made off the poll thread.
pub struct Dialed {
    /// The node dialed.
    pub node: u32,
    /// The connection, or why not.
    pub result: io::Result<TcpStream>,
}

/// Dials peers on helper threads so that `connect(2)` never blocks the poll
/// loop.
pub struct Dialer {
    tx: mpsc::Sender<Dialed>,
    rx: mpsc::Receiver<Dialed>,
}

impl Default for Dialer {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Dialer { tx, rx }
    }
}

impl Dialer {
    /// Start dialing `addr` for `node`; `wake` is called when done.
    pub fn dial(&self, node: u32, addr: SocketAddr, wake: impl FnOnce() + Send + 'static) {
        let tx = self.tx.clone();
        std::thread::Builder::new()
            .name(format!("wyvern-dial-{node}"))
            .spawn(move || {
                let result = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
                let _ = tx.send(Dialed { node, result });
                wake();
            })
            .map(drop)
            .unwrap_or_else(|e| log::error!("cannot spawn a dialer thread: {e}"));
    }

    /// A finished attempt, if any.
    pub fn poll(&self) -> Option<Dialed> {
        self.rx.try_recv().ok()
    }
}

/// How long an accepted or dialed connection may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Accepted connections whose handshake is not done, at most; more are
/// closed as soon as they are accepted.
pub const MAX_PENDING: usize = 64;
/// At most one warning about refused connections this often.
const REFUSE_WARN_EVERY: Duration = Duration::from_secs(1);
/// Pause between two dial attempts to a peer that is not up.
const REDIAL: Duration = Duration::from_millis(100);
/// On-demand links: the lower node id waits this long before it dials a
/// higher one it wants, so that two agents that want each other at once (the
/// first messages both ways, `wyvern wait` on every node) make one connection,
/// the higher one's. A second one is settled by [`TcpTransport::keep_new`].
const DIAL_DEFER: Duration = Duration::from_millis(100);
/// Dials under way at most (each on a thread of its own).
const MAX_DIALS: usize = 64;

const TOK_LISTEN: u32 = 0;
const TOK_PEER: u32 = 1 << 30;
const TOK_PENDING: u32 = 2 << 30;
const TOK_MASK: u32 = 3 << 30;

/// Where a connection's handshake stands.
#[derive(Clone, Copy)]
enum Role {
    /// We accepted it and sent our challenge `ours`; its `Hello` is due.
    Accepted { ours: [u8; NONCE_LEN] },
    /// We dialed `node`: its challenge is due (`theirs: None`), then its
    /// `Hello` (our `Hello` with our nonce `ours` went out in between).
    Dialed {
        node: u32,
        ours: [u8; NONCE_LEN],
        theirs: Option<[u8; NONCE_LEN]>,
    },
}

struct Pending {
    link: Link,
    since: Instant,
    role: Role,
}

/// What one handshake frame did.
enum Step {
    /// Handled; more is due.
    More,
    /// The peer's `Hello` verified: the connection is its link.
    Done(Hello),
}

/// The MAC of a TCP `Hello` (see the module doc).
fn hello_mac(
    key: &JobKey,
    label: &[u8],
    challenge: &[u8; NONCE_LEN],
    nonce: &[u8; NONCE_LEN],
    h: &Hello,
) -> [u8; MAC_LEN] {
    key.mac(label, &[challenge, nonce, &h.to_bytes()])
}

/// The TCP transport: a listener, one connection per peer, dialing and the
/// `Hello` handshake. The higher node id dials the lower one; a connection
/// becomes a peer's link once its `Hello` names a node of the same job.
pub struct TcpTransport {
    me: u32,
    nodes: Vec<SocketAddr>,
    hello: Hello,
    /// Per node: the transports our `Hello` to it names (a hybrid agent
    /// may name fewer to one peer: see [`Transport::set_hello_caps`]).
    hello_caps: Vec<u32>,
    job: u64,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    pool: Arc<Pool>,
    /// (Boxed: a peer without a link costs a pointer.)
    links: Vec<Option<Box<Link>>>,
    /// Links not watched for readability (their stream was full).
    paused: usize,
    /// Its own handle on the agent's poller (to watch paused links again).
    poller: Poller,
    /// What each peer said in its last `Hello`.
    peer_hellos: Vec<Option<Hello>>,
    pending: Vec<Option<Pending>>,
    dialing: Vec<bool>,
    /// Dials under way.
    dials: usize,
    next_dial: Vec<Instant>,
    /// On-demand links ([`Transport::want`]): only the peers wanted
    /// (since when) are dialed. Otherwise the higher node id dials every
    /// lower one from the start.
    on_demand: bool,
    wanted: Vec<Option<Instant>>,
    /// Links closed for idleness ([`Close::Idle`]) not wanted since.
    idle_closed: Vec<bool>,
    /// Per link: whether this agent dialed it (else: accepted it).
    dialed: Vec<bool>,
    /// A second connection with a peer settled in favour of the other one.
    duplicates: u64,
    dialer: Dialer,
    wake: Arc<dyn Fn() + Send + Sync>,
    /// The job key; `None`: peers are not authenticated.
    key: Option<JobKey>,
    /// Connections closed at once: too many handshakes under way.
    pending_refused: u64,
    /// Connections whose handshake failed (bad or missing MAC, wrong job,
    /// wrong node or address, oversized or unexpected frames, timeouts).
    handshakes_failed: u64,
    /// When a refusal was last logged, and how many since.
    refuse_warned: Option<Instant>,
    refused_quiet: u64,
    /// Failed handshakes logged at warn level.
    fail_warned: WarnSpell,
}

impl TcpTransport {
    /// Listen on `nodes[hello.node]`, introducing this agent with `hello`
    /// (its incarnation tells a restarted agent apart); `wake` is called
    /// from a dialer thread when a dial finished (so a sleeping agent looks
    /// at it). With `key`, peers must prove they hold it (see the module doc).
    pub fn new(
        hello: Hello,
        nodes: Vec<SocketAddr>,
        poller: &Poller,
        pool: Arc<Pool>,
        wake: Arc<dyn Fn() + Send + Sync>,
        key: Option<JobKey>,
    ) -> io::Result<TcpTransport> {
        let me = hello.node;
        let job = hello.job;
        let listener = std::net::TcpListener::bind(nodes[me as usize])?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        poller.add(std::os::fd::AsFd::as_fd(&listener), TOK_LISTEN)?;
        let n = nodes.len();
        let now = Instant::now();
        Ok(TcpTransport {
            me,
            nodes,
            hello,
            hello_caps: vec![hello.caps; n],
            job,
            listener,
            addr,
            pool,
            links: (0..n).map(|_| None).collect(),
            paused: 0,
            poller: poller.clone(),
            peer_hellos: vec![None; n],
            pending: Vec::new(),
            dialing: vec![false; n],
            dials: 0,
            next_dial: vec![now; n],
            on_demand: false,
            wanted: vec![None; n],
            idle_closed: vec![false; n],
            dialed: vec![false; n],
            duplicates: 0,
            dialer: Dialer::default(),
            wake,
            key,
            pending_refused: 0,
            handshakes_failed: 0,
            refuse_warned: None,
            refused_quiet: 0,
            fail_warned: WarnSpell::default(),
        })
    }

    /// What `node` said in its last `Hello` (a hybrid agent routes by it).
    pub fn peer_hello(&self, node: u32) -> Option<Hello> {
        self.peer_hellos.get(node as usize).copied().flatten()
    }

    /// Name only the transports `caps` in the `Hello`s of this agent's next
    /// connections to `node` (a hybrid agent: a transport forced for that
    /// peer, or one that failed it).
    pub fn set_hello_caps(&mut self, node: u32, caps: u32) {
        if let Some(c) = self.hello_caps.get_mut(node as usize) {
            *c = caps;
        }
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Our `Hello` frame for `node`, with our nonce and its MAC under
    /// `label` over the challenge and our nonce (zero without a key).
    fn hello_for(
        &self,
        node: u32,
        label: &[u8],
        challenge: &[u8; NONCE_LEN],
        nonce: &[u8; NONCE_LEN],
    ) -> Vec<u8> {
        let mut h = self.hello;
        h.caps = self.hello_caps[node as usize];
        let mac = self
            .key
            .as_ref()
            .map_or([0; MAC_LEN], |k| hello_mac(k, label, challenge, nonce, &h));
        let mut body = h.to_bytes().to_vec();
        body.extend_from_slice(nonce);
        body.extend_from_slice(&mac);
        control_frame(FrameKind::Hello, self.me, &body)
    }

    /// Whether a connection from `from` may be a peer's: its IP is one of the
    /// node list's, or the list names a node by an unspecified address (any).
    fn may_be_a_peer(&self, from: SocketAddr) -> bool {
        super::may_be_a_peer(&self.nodes, self.me, from)
    }

    /// Accepted connections whose handshake is under way.
    fn pending_accepted(&self) -> usize {
        self.pending
            .iter()
            .flatten()
            .filter(|p| matches!(p.role, Role::Accepted { .. }))
            .count()
    }

    /// A connection closed at once (too many handshakes under way): counted,
    /// and logged at most once a second.
    fn refuse(&mut self, from: SocketAddr, now: Instant) {
        self.pending_refused += 1;
        self.refused_quiet += 1;
        if self
            .refuse_warned
            .is_none_or(|t| now.duration_since(t) >= REFUSE_WARN_EVERY)
        {
            log::warn!(
                "{} peer connection(s) closed at once (last from {from}): {MAX_PENDING} handshakes \
                 already under way",
                self.refused_quiet
            );
            self.refuse_warned = Some(now);
            self.refused_quiet = 0;
        }
    }

    /// Dials that finished (on the dialer's threads): their connections
    /// start their handshake. Every round while dials are under way, not
    /// only at the tick, so a link made again (an idle one) waits for no
    /// timer.
    fn take_dials(&mut self, poller: &Poller, now: Instant) {
        while let Some(d) = self.dialer.poll() {
            let j = d.node as usize;
            self.dialing[j] = false;
            self.dials -= 1;
            if self.links[j].is_some() {
                continue;
            }
            match d.result.and_then(Link::new) {
                Ok(link) => {
                    // Our Hello goes out once the acceptor's challenge came.
                    let role = Role::Dialed {
                        node: d.node,
                        ours: auth::random_bytes::<NONCE_LEN>(),
                        theirs: None,
                    };
                    self.add_pending(poller, link, role, now);
                }
                Err(e) => {
                    log::debug!("dial node {j}: {e}");
                    self.next_dial[j] = now + REDIAL;
                }
            }
        }
    }

    /// Dial node `j` if this end dials it (the higher node id dials the
    /// lower; on demand: the wanted ones, and a lower id a higher one after
    /// `DIAL_DEFER`) and it is not linked or being dialed.
    fn maybe_dial(&mut self, j: usize, now: Instant) {
        let me = self.me as usize;
        let may = match (self.on_demand, self.wanted[j]) {
            (false, _) => j < me,
            (true, None) => false,
            (true, Some(t)) => j < me || (j > me && now >= t + DIAL_DEFER),
        };
        if may && self.links[j].is_none() && !self.dialing[j] && now >= self.next_dial[j] {
            self.dialing[j] = true;
            self.dials += 1;
            self.next_dial[j] = now + REDIAL;
            let wake = self.wake.clone();
            self.dialer.dial(j as u32, self.nodes[j], move || wake());
        }
    }

    fn add_pending(&mut self, poller: &Poller, link: Link, role: Role, now: Instant) {
        let slot = crate::slab::vacant(&mut self.pending);
        if let Err(e) = poller.add(link.as_fd(), TOK_PENDING | slot as u32) {
            log::warn!("cannot watch a peer connection: {e}");
            return;
        }
        self.pending[slot] = Some(Pending {
            link,
            since: now,
            role,
        });
    }

    fn down(&mut self, poller: &Poller, node: u32, reason: String, events: &mut Vec<LinkEvent>) {
        let blocks = self.close(poller, node, Close::Now);
        events.push(LinkEvent::Down {
            node,
            reason,
            blocks,
            closed: true,
        });
    }

    /// Check a peer's `Hello` (and its MAC under `label` over `challenge` and
    /// the peer's nonce) on a connection from `from`.
    fn check_hello(
        &self,
        fh: &FrameHeader,
        body: &[u8],
        label: &[u8],
        challenge: &[u8; NONCE_LEN],
        from: Option<SocketAddr>,
    ) -> Result<Hello, String> {
        let h = Hello::parse(body).map_err(|e| format!("bad Hello ({e})"))?;
        super::check_peer_hello(&h, self.job, &self.nodes, self.me, from)?;
        if fh.src_node != h.node {
            return Err(format!(
                "Hello from node {} in a frame from node {}",
                h.node, fh.src_node
            ));
        }
        if let Some(key) = &self.key {
            if body.len() != crate::wire::HELLO_BODY {
                return Err(format!(
                    "Hello from node {} without a MAC (peer has no job key?)",
                    h.node
                ));
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&body[Hello::LEN..Hello::LEN + NONCE_LEN]);
            let tag = &body[Hello::LEN + NONCE_LEN..];
            if !key.verify(label, &[challenge, &nonce, &h.to_bytes()], tag) {
                return Err(format!(
                    "Hello claiming node {} failed its MAC (another job key, or a replay)",
                    h.node
                ));
            }
        }
        Ok(h)
    }

    /// One complete handshake frame of pending connection `p`.
    fn handshake_step(
        &self,
        p: &mut Pending,
        fh: &FrameHeader,
        body: &[u8],
    ) -> Result<Step, String> {
        let from = p.link.peer_addr();
        match (p.role, fh.kind) {
            (Role::Accepted { ours }, FrameKind::Hello) => {
                let theirs = body
                    .get(Hello::LEN..Hello::LEN + NONCE_LEN)
                    .and_then(|b| <[u8; NONCE_LEN]>::try_from(b).ok())
                    .unwrap_or([0; NONCE_LEN]);
                let h = self.check_hello(fh, body, auth::label::TCP_HELLO_DIALER, &ours, from)?;
                if h.node < self.me && !self.on_demand {
                    return Err(format!(
                        "node {} dialed node {} (the higher id dials; on-demand links are off here)",
                        h.node, self.me
                    ));
                }
                // The side that accepted answers with its own Hello.
                let reply = self.hello_for(h.node, auth::label::TCP_HELLO_ACCEPTOR, &ours, &theirs);
                p.link.push(Out::bytes(reply));
                Ok(Step::Done(h))
            }
            (
                Role::Dialed {
                    node,
                    ours,
                    theirs: None,
                },
                FrameKind::Challenge,
            ) => {
                let c = <[u8; NONCE_LEN]>::try_from(body)
                    .map_err(|_| format!("challenge of {} bytes", body.len()))?;
                let hello = self.hello_for(node, auth::label::TCP_HELLO_DIALER, &c, &ours);
                p.link.push(Out::bytes(hello));
                let _ = p.link.flush(&self.pool, &mut Vec::new());
                p.role = Role::Dialed {
                    node,
                    ours,
                    theirs: Some(c),
                };
                Ok(Step::More)
            }
            (
                Role::Dialed {
                    node,
                    ours,
                    theirs: Some(c),
                },
                FrameKind::Hello,
            ) => {
                let h = self.check_hello(fh, body, auth::label::TCP_HELLO_ACCEPTOR, &c, from)?;
                let nonce = body.get(Hello::LEN..Hello::LEN + NONCE_LEN);
                if self.key.is_some() && nonce != Some(&ours[..]) {
                    return Err("Hello that does not echo our nonce".into());
                }
                if h.node != node {
                    return Err(format!(
                        "node {} answered where node {node} was dialed",
                        h.node
                    ));
                }
                Ok(Step::Done(h))
            }
            (_, k) => Err(format!("sent {k:?} out of its turn in the handshake")),
        }
    }

    /// A connection with `node` finished its handshake while the pair has
    /// a link already: whether the new one replaces it. It does when the peer
    /// restarted (another incarnation), or when the new one was dialed by the
    /// higher node id or the old one was not (a reconnection after a break
    /// this side has not noticed yet). Two connections made at once (both
    /// agents wanted the link) thus settle on the higher id's at both ends.
    fn keep_new(&self, node: u32, h: &Hello, we_dialed: bool) -> bool {
        let restarted =
            self.peer_hellos[node as usize].is_none_or(|old| old.incarnation != h.incarnation);
        let by_higher = |we: bool| we == (self.me > node);
        restarted || by_higher(we_dialed) || !by_higher(self.dialed[node as usize])
    }

    /// Close a connection whose handshake failed.
    fn drop_pending(&mut self, poller: &Poller, p: Pending, why: String) {
        // At most 10 warnings a second (a stranger may try many times).
        if self.fail_warned.warn(Instant::now(), REFUSE_WARN_EVERY, 10) {
            log::warn!(
                "closing a peer connection from {:?}: {why}",
                p.link.peer_addr()
            );
        } else {
            log::debug!(
                "closing a peer connection from {:?}: {why}",
                p.link.peer_addr()
            );
        }
        self.handshakes_failed += 1;
        poller.delete(p.link.as_fd());
    }

    fn serve_pending(
        &mut self,
        poller: &Poller,
        idx: usize,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        let Some(mut p) = self.pending.get_mut(idx).and_then(|p| p.take()) else {
            return;
        };
        // One frame at a time, and never more than it: its header first
        // (refused by it if too long), then its body.
        let h = loop {
            let want = match p.link.handshake.peek_header() {
                Err(e) => return self.drop_pending(poller, p, format!("sent garbage ({e})")),
                Ok(None) => FRAME_HEADER,
                Ok(Some(h)) if h.body_len as usize > HANDSHAKE_BODY_MAX => {
                    return self.drop_pending(
                        poller,
                        p,
                        format!(
                            "announced a {:?} frame of {} bytes during its handshake (at most {HANDSHAKE_BODY_MAX})",
                            h.kind, h.body_len
                        ),
                    )
                }
                Ok(Some(h)) => FRAME_HEADER + h.body_len as usize,
            };
            if p.link.handshake.buffered() < want {
                match p.link.fill_upto(want) {
                    Ok(true) => {}
                    Ok(false) => {
                        return self.drop_pending(poller, p, "closed during its handshake".into())
                    }
                    Err(e) => return self.drop_pending(poller, p, e.to_string()),
                }
                if p.link.handshake.buffered() < want {
                    self.pending[idx] = Some(p);
                    return;
                }
                continue;
            }
            let step = match p.link.handshake.peek_frame() {
                Ok(Some((fh, body))) => {
                    let body = body.to_vec();
                    self.handshake_step(&mut p, &fh, &body)
                }
                Ok(None) => Err("incomplete frame".into()),
                Err(e) => Err(format!("sent garbage ({e})")),
            };
            match step {
                Ok(Step::More) => p.link.handshake.consume(),
                Ok(Step::Done(h)) => {
                    p.link.handshake.consume();
                    break h;
                }
                Err(why) => return self.drop_pending(poller, p, why),
            }
        };
        let node = h.node;
        let we_dialed = matches!(p.role, Role::Dialed { .. });
        if self.links[node as usize].is_some() {
            if !self.keep_new(node, &h, we_dialed) {
                // The pair's other connection stays (see `keep_new`).
                log::debug!("node {node}: a second connection closed, the other one stays");
                self.duplicates += 1;
                poller.delete(p.link.as_fd());
                return;
            }
            self.down(poller, node, "peer reconnected (restarted?)".into(), events);
        }
        poller.delete(p.link.as_fd());
        if let Err(e) = poller.add(p.link.as_fd(), TOK_PEER | node) {
            log::error!("cannot watch the link to node {node}: {e}");
            return;
        }
        // A new stream for the peer, with what came after the handshake.
        rx.link(node)
            .reset(std::mem::take(&mut p.link.handshake), now);
        self.links[node as usize] = Some(Box::new(p.link));
        self.dialed[node as usize] = we_dialed;
        self.peer_hellos[node as usize] = Some(h);
        events.push(LinkEvent::Up { node });
    }
}

impl Transport for TcpTransport {
    fn name(&self, _node: Option<u32>) -> &'static str {
        "tcp"
    }

    fn local_addr(&self) -> String {
        self.addr.to_string()
    }

    fn stats(&self) -> TransportStats {
        let auth = if self.key.is_some() { "mac" } else { "none" };
        TransportStats {
            counters: vec![
                ("tcp_pending_refused", self.pending_refused),
                ("tcp_handshakes_failed", self.handshakes_failed),
                ("tcp_duplicate_connections", self.duplicates),
            ],
            info: vec![("peer_auth", auth.to_string())],
        }
    }

    fn on_ready(
        &mut self,
        _sub: u32,
        poller: &Poller,
        token: u32,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        let idx = token & !TOK_MASK;
        match token & TOK_MASK {
            TOK_LISTEN => {
                let mut room = MAX_PENDING.saturating_sub(self.pending_accepted());
                while let Ok((s, addr)) = self.listener.accept() {
                    if !self.may_be_a_peer(addr) {
                        // Not from any node's address: closed before it takes a slot.
                        self.handshakes_failed += 1;
                        log::debug!("closed a connection from {addr}: no node has that address");
                        continue;
                    }
                    if room == 0 {
                        // Closed on drop, before anything is read.
                        self.refuse(addr, now);
                        continue;
                    }
                    let ours = auth::random_bytes::<NONCE_LEN>();
                    match Link::new(s) {
                        Ok(mut link) => {
                            // The acceptor speaks first: its challenge.
                            link.push(Out::bytes(control_frame(
                                FrameKind::Challenge,
                                self.me,
                                &ours,
                            )));
                            let _ = link.flush(&self.pool, &mut Vec::new());
                            self.add_pending(poller, link, Role::Accepted { ours }, now);
                            room -= 1;
                        }
                        Err(e) => log::warn!("cannot set up a connection from {addr}: {e}"),
                    }
                }
            }
            TOK_PEER => {
                let Some(link) = self.links.get_mut(idx as usize).and_then(|l| l.as_mut()) else {
                    return;
                };
                let stream = rx.link(idx);
                let reason = match link.fill(stream, &self.pool, now) {
                    Ok(true) => {
                        if stream.full() && !link.paused {
                            // Stop watching until the agent catches up, so a
                            // level-triggered poller does not spin on it.
                            poller.delete(link.as_fd());
                            link.paused = true;
                            self.paused += 1;
                        }
                        return;
                    }
                    Ok(false) => "connection closed by the peer".to_string(),
                    Err(e) => format!("read failed: {e}"),
                };
                // Left open: what arrived before the close is still to be
                // read; the agent closes the link when done.
                events.push(LinkEvent::Down {
                    node: idx,
                    reason,
                    blocks: Vec::new(),
                    closed: false,
                });
            }
            TOK_PENDING => self.serve_pending(poller, idx as usize, now, rx, events),
            _ => {}
        }
    }

    fn tick(
        &mut self,
        poller: &Poller,
        now: Instant,
        _rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        self.take_dials(poller, now);
        // Pending connections: write our Hello, drop the silent ones.
        for slot in 0..self.pending.len() {
            let Some(p) = self.pending[slot].as_mut() else {
                continue;
            };
            let _ = p.link.flush(&self.pool, &mut Vec::new());
            if now.duration_since(p.since) > HANDSHAKE_TIMEOUT {
                log::warn!(
                    "dropping a peer connection from {:?} that did not finish its handshake within {HANDSHAKE_TIMEOUT:?}",
                    p.link.peer_addr()
                );
                self.handshakes_failed += 1;
                if let Some(p) = self.pending[slot].take() {
                    poller.delete(p.link.as_fd());
                }
            }
        }
        // The higher id dials the lower (on demand: the wanted ones, and a
        // lower id a higher one after `DIAL_DEFER`); it goes on dialing a
        // peer that is not up, so a restarted agent is picked up again.
        for j in 0..self.nodes.len() {
            if self.dials >= MAX_DIALS {
                break;
            }
            self.maybe_dial(j, now);
        }
        let _ = events;
    }

    fn want(&mut self, node: Option<u32>, now: Instant) -> bool {
        let Some(node) = node else {
            self.on_demand = true;
            return true;
        };
        let j = node as usize;
        if let Some(w) = self.wanted.get_mut(j) {
            if w.is_none() {
                // A link closed for idleness is made again without the
                // deferral: the peer closed it too and wants nothing yet (a
                // second connection, if both ends want it at once, is
                // settled as at start). Dialed now, not at the next tick.
                let reopen = std::mem::take(&mut self.idle_closed[j]);
                *w = Some(if reopen {
                    now.checked_sub(DIAL_DEFER).unwrap_or(now)
                } else {
                    now
                });
                if self.dials < MAX_DIALS {
                    self.maybe_dial(j, now);
                }
            }
        }
        self.on_demand
    }

    fn push(&mut self, node: u32, item: Out) {
        if let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) {
            l.push(item);
        }
    }

    fn flush(&mut self, node: u32, pool: &Pool, freed: &mut Vec<u64>, events: &mut Vec<LinkEvent>) {
        let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) else {
            return;
        };
        if l.queued() == 0 {
            return;
        }
        if let Err(e) = l.flush(pool, freed) {
            // Needs a poller to deregister; the socket closes on drop, which
            // removes it from epoll by itself.
            let blocks = self.links[node as usize].take().map(|mut l| {
                if l.paused {
                    self.paused -= 1;
                }
                l.shutdown();
                l.drain_blocks()
            });
            events.push(LinkEvent::Down {
                node,
                reason: format!("write failed: {e}"),
                blocks: blocks.unwrap_or_default(),
                closed: true,
            });
        }
    }

    fn link(&self, node: u32) -> LinkView {
        let l = self.links.get(node as usize).and_then(|l| l.as_ref());
        LinkView {
            last_tx: l.map(|l| l.last_tx),
            queued: l.map_or(0, |l| l.queued()),
            packet: 0,
            held: false,
        }
    }

    /// Watch again the links paused while their stream was full, once the
    /// agent read half of it.
    fn poll(&mut self, now: Instant, rx: &mut dyn Inflow, _events: &mut Vec<LinkEvent>) -> bool {
        if self.dials > 0 {
            let poller = self.poller.clone();
            self.take_dials(&poller, now);
        }
        if self.paused == 0 {
            return false;
        }
        for (node, link) in self.links.iter_mut().enumerate() {
            let Some(link) = link.as_mut().filter(|l| l.paused) else {
                continue;
            };
            if rx.link(node as u32).drained() {
                match self.poller.add(link.as_fd(), TOK_PEER | node as u32) {
                    Ok(()) => {
                        link.paused = false;
                        self.paused -= 1;
                    }
                    Err(e) => log::error!("cannot watch the link to node {node} again: {e}"),
                }
            }
        }
        false
    }

    fn close(&mut self, poller: &Poller, node: u32, how: Close) -> Vec<u64> {
        let idle = how == Close::Idle;
        if idle {
            // Not made again until wanted again; then at once (the pause
            // below is for links that failed).
            if let Some(w) = self.wanted.get_mut(node as usize) {
                *w = None;
                self.idle_closed[node as usize] = true;
            }
        }
        match self.links.get_mut(node as usize).and_then(|l| l.take()) {
            Some(mut l) => {
                if l.paused {
                    self.paused -= 1;
                } else {
                    poller.delete(l.as_fd());
                }
                l.shutdown();
                let pause = if idle {
                    Duration::ZERO
                } else {
                    Duration::from_millis(500)
                };
                self.next_dial[node as usize] = Instant::now() + pause;
                l.drain_blocks()
            }
            None => Vec::new(),
        }
    }
}
