//! The `verbs` transport: one reliable-connected queue pair per peer agent.
//!
//! ## Connection set-up (out of band, like perftest)
//! Each pair of agents keeps one TCP *bootstrap* connection: the higher node id dials
//! the lower one's bootstrap address. The accepting side speaks first: a `Challenge`
//! with a fresh 32-byte random nonce. The dialer then sends its `Hello` (node, node
//! count, incarnation, job: another job's agent is refused) with its own nonce and a MAC
//! (job key, [`crate::wire::auth`]) and its queue pair's endpoint (`Info`): QP number,
//! first PSN, LID, GID, active MTU, and the pool's address, block region and remote
//! key, plus how many receive buffers the peer may fill (credits). The MAC covers a
//! label naming the direction, both nonces, the `Hello` and the `Info` bytes: a forger
//! can neither replay a recorded handshake (the challenge is new on every connection)
//! nor swap the addresses or the rkey. The accepting side checks it before it acts on
//! anything (no queue pair made, no link replaced), moves its QP to RTR/RTS and answers
//! with its own `Hello` (echoing the dialer's nonce, MAC under the acceptor's label over
//! both nonces, its `Hello` and its `Info`) and `Info`; the dialing side checks that,
//! connects its QP and sends `Ready`. The connection then stays open and silent: its
//! close means the peer agent went away. Without a job key the MACs are zero and not
//! checked (`peer_auth: none`).
//!
//! Accepted connections are bounded like the tcp transport's: from node addresses only
//! (when the node list names real ones), at most [`MAX_PENDING`] in their handshake,
//! each reading one bootstrap message at a time (a header announcing more than
//! [`BOOT_BODY_MAX`] bytes closes it before its body is read), done within
//! [`HANDSHAKE_TIMEOUT`].
//!
//! ## The stream
//! The agent's byte stream to a peer (frames) is cut into SENDs of at most [`MSG`]
//! bytes, each a small header (credits returned, rendezvous completions) and items:
//! `DATA` (stream bytes, copied into a registered send slot, inline when they fit) and
//! `RDV` (a pool range of `len` stream bytes the receiver fetches with an RDMA READ:
//! pool offset, length, rkey). Receives come from one shared receive queue refilled in
//! batches; every peer may have at most its credits' worth of SENDs unconsumed, so the
//! queue never runs dry (an RNR retry would be a bug; the device's counter shows it).
//!
//! ## Rendezvous (zero copy both ways)
//! An `Out::Block` of at least [`RDV_MIN`] bytes is not copied: its descriptor goes in
//! the stream. When the receiver reaches it, the agent has already seen the chunk's
//! frame header in the reader and (given a round to do so) called
//! [`Transport::steer`]: the READ then lands straight in the agent's block. Otherwise
//! the receiver READs into a bounce buffer and appends the bytes to the reader. Once
//! the whole range has landed the receiver says so (`rdv_done` in a header), and only
//! then is the sender's block released (`free_after`) - the peer's NIC may still be
//! reading it before that. READ rather than WRITE-with-immediate: the receiver knows
//! where the bytes must go only after its agent parsed the header, and pulling needs no
//! extra round trip to grant a target block; a WRITE would need the receiver to
//! pre-grant blocks per peer (pool memory held idle) or a request/grant exchange.
//!
//! The stream holds no chunk bytes, so the agent parses on past a steered chunk: while its
//! READs are under way it steers the next ones (up to [`STEER_DEPTH`] per peer; the
//! stream's steers end, and the agent handles the chunks, in stream order, whatever
//! order their READs complete in). A path takes no new READ past `max_reads` or
//! [`READ_WINDOW`] bytes outstanding.
//!
//! Descriptors are checked before any READ is posted: the rkey must be the one the peer
//! advertised and the range inside the block region it advertised.
//!
//! ## Rails (several devices)
//! `verbs_device = "rxe0,rxe2"` names several devices ("rails"), paired by position
//! with the peer's (rail i to rail i; a job uses as many as the node with the fewest
//! has). Each rail has its own context, protection domain, completion queue, shared
//! receive queue and registration of the pool (its own rkey); a link has one RC queue
//! pair per rail (a *path*), all connected by the one bootstrap exchange (the `Info`
//! message carries every rail's QP and rkey, under the same MAC). SENDs (small
//! messages, descriptors, credits) go on one path, the link's *home*: rail
//! `(a + b) mod rails` for nodes a and b, or the next rail whose port is up, so the
//! stream stays in order. The receiver stripes a rendezvous chunk's READs over every
//! path that is up (pieces of about `len / paths`, round robin): they land in the
//! chunk's block in any order, and a descriptor is reported fetched only once all its
//! pieces completed, in descriptor order. A path that fails (a work completion error,
//! its QP found in ERR, its port going down) and carried no SENDs is dropped from the
//! link and its outstanding READs are posted again on the other paths; the home path
//! failing (or the last one) fails the link, and the agent's session resumes over a new
//! one as for any failed link. A rail whose port came back is taken up again: links
//! without a path on it are failed once idle, and the new link has it.
//!
//! The bytes of all this (bootstrap messages, `Info`, SENDs and their items, the check
//! of a descriptor) are written and parsed by [`crate::wire::verbs`], which does no
//! I/O; this module moves them over the TCP bootstrap connection and the queue pairs.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shm::Pool;
use crate::transport::tcp::Dialer;
use crate::transport::{
    Close, Inflow, LinkEvent, LinkView, Out, Poller, Shortfall, Transport, TransportStats,
    WarnSpell,
};
use crate::wire::auth::{self, JobKey, NONCE_LEN};
use crate::wire::verbs::{
    boot_hello, boot_msg, parse_challenge, take_boot_msg, BadRdv, BootHeader, BootHello, BootKind,
    BootMsg, Info, InfoMsg, Item, QpAddr, RailAddr, Rdv, StreamMsg, StreamWriter, BOOT_BODY_MAX,
    BOOT_HEADER, MAX_RAILS, SEND_MAX,
};
use crate::wire::{FrameReader, Hello};

use super::{
    qp_state_name, Access, CompChannel, Context, Cq, Error, Gid, GidEntry, Mr, Pd, Qp, QpCaps,
    QpEndpoint, RecvWr, RegBuf, SendOp, SendWr, Sge, Srq, Wc, QPS_ERR, QPS_SQE, WC_FLUSH_ERR,
    WC_RECV, WC_RNR_RETRY_EXC_ERR,
};

/// Bytes of one SEND: a send slot and a receive buffer.
pub const MSG: usize = SEND_MAX;
/// Receive buffers each peer may fill before it hears of more (its credits). A
/// sender keeps its last credit for a SEND that returns credits (see `transmit`).
const CREDITS: u32 = 32;
/// Send slots per peer.
const SEND_SLOTS: u64 = 64;
/// Ask for a completion at least every this many sends.
const SIGNAL_EVERY: u32 = 16;
/// RDMA READs a QP has outstanding at most (capped by the device).
const MAX_READS: u32 = 16;
/// Blocks at least this large go by rendezvous (smaller ones are copied into SENDs).
pub const RDV_MIN: u64 = 64 * 1024;
/// Rendezvous descriptors a peer may have outstanding to us.
const RDV_MAX_OUT: usize = 64;
/// Chunks of one peer the agent may have steered (their READs in flight or
/// waiting for room on a path) at once: the receive pipeline's depth. Each
/// holds only what its message's block already holds; the READs themselves
/// are bounded by `max_reads` per path.
const STEER_DEPTH: usize = 8;
/// The bounce buffer: a READ the agent did not steer lands here first.
const BOUNCE: usize = 256 * 1024;
/// Largest single READ into the pool.
const READ_PIECE: u64 = 1 << 20;
/// A path takes no new READ while this many bytes of its READs are outstanding
/// (one READ of any size when none is). Measured on Soft-RoCE
/// (bench/verbs_rails.sh, 1 MiB messages): 8 READs of 256 KiB outstanding on one
/// queue pair (2 MiB) made rxe drop and retransmit ~300 times per 48 MiB and
/// ran 0.7x one READ at a time; 8 of 128 KiB per queue pair ~30 times. 512 KiB
/// is still ~40 us of a 100 Gb/s port per queue pair.
const READ_WINDOW: u64 = 512 << 10;
/// Smallest piece a chunk is cut into to stripe it over several paths.
const STRIPE_MIN: u64 = 32 * 1024;
/// How often `tick` reads each rail's port state (its events say so sooner).
const PORT_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long after a rail's port came back its links are remade to take it up
/// again (time for the peer's end of the rail to come up too).
const REJOIN_AFTER: Duration = Duration::from_secs(1);
/// Completions taken per poll call at most (fairness with the rest of the round).
const CQ_PER_POLL: usize = 256;
/// How long a bootstrap connection may take to complete its handshake (as tcp's).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Accepted bootstrap connections whose handshake is not done, at most; more are
/// closed as soon as they are accepted (as tcp's).
pub const MAX_PENDING: usize = 64;
/// At most one warning about refused connections this often, and at most
/// [`FAIL_WARNS`] warnings about failed handshakes in such a spell.
const REFUSE_WARN_EVERY: Duration = Duration::from_secs(1);
const FAIL_WARNS: u32 = 10;
/// Pause between two dial attempts.
const REDIAL: Duration = Duration::from_millis(100);
/// How often `tick` asks the device for an up link's QP state (`ibv_query_qp`, a
/// system call). A QP that went to the error state with nothing posted on it (its
/// receives come from the shared receive queue, which is not flushed) reports no
/// completion and, on rxe, no event: this is how such a link is found dead.
const QP_CHECK_EVERY: Duration = Duration::from_millis(100);

const TOK_LISTEN: u32 = 0;
/// Rail r's completion channel: `TOK_CQ + r`; its asynchronous events: `TOK_ASYNC + r`.
const TOK_CQ: u32 = 16;
const TOK_ASYNC: u32 = 32;
const TOK_LINK: u32 = 1 << 30;
const TOK_PENDING: u32 = 2 << 30;
const TOK_MASK: u32 = 3 << 30;

const RECV_BIT: u64 = 1 << 63;

// ------------------------------------------------------------------------ config

/// What a [`VerbsTransport`] needs besides the pool and the poller.
#[derive(Clone, Debug)]
pub struct VerbsConfig {
    /// This agent: node id, node count, incarnation, job (sent in the bootstrap Hello).
    pub hello: Hello,
    /// The device and port (`rxe0`, `mlx5_0:1`), or several, comma-separated (rails:
    /// `rxe0,rxe2`); none: the first active port.
    pub device: Option<String>,
    /// The GID index to use; none: chosen (RoCE v2, IPv4-mapped).
    pub gid_index: Option<u32>,
    /// Every node's bootstrap TCP address, by node id; this node's is bound.
    pub bootstrap: Vec<SocketAddr>,
    /// The job key; `None`: peers are not authenticated (see the module docs).
    pub key: Option<JobKey>,
}

/// The transport's counters (for `wyvern stat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerbsCounters {
    /// SENDs posted.
    pub sends: u64,
    /// ... of them inline.
    pub inline_sends: u64,
    /// Bytes in SENDs.
    pub send_bytes: u64,
    /// `ibv_post_send` calls (each posts a linked list).
    pub post_calls: u64,
    /// SENDs received.
    pub recvs: u64,
    /// Bytes received in SENDs.
    pub recv_bytes: u64,
    /// Rendezvous descriptors sent.
    pub rdv_sent: u64,
    /// Bytes sent by rendezvous (read by the peer).
    pub rdv_bytes: u64,
    /// RDMA READs straight into the pool (steered).
    pub reads: u64,
    /// Bytes of those.
    pub read_bytes: u64,
    /// RDMA READs into the bounce buffer (then copied into the reader).
    pub bounce_reads: u64,
    /// Bytes copied out of the bounce buffer.
    pub bounce_bytes: u64,
    /// Spells in which data waited for credits.
    pub credit_stalls: u64,
    /// Receive buffers posted again.
    pub srq_reposts: u64,
    /// Wake-ups by the completion channel.
    pub cq_events: u64,
    /// Work completions with an error status.
    pub wc_errors: u64,
    /// Asynchronous events of the device.
    pub async_events: u64,
    /// Rendezvous descriptors refused (key or range outside what the peer advertised).
    pub bad_descriptors: u64,
    /// Up links whose queue pair was found in the error state (by the periodic state
    /// query or a "last WQE reached" event) rather than by a failed work completion.
    pub qp_errors_found: u64,
    /// Bootstrap connections closed at once: [`MAX_PENDING`] handshakes under way.
    pub pending_refused: u64,
    /// Bootstrap handshakes that failed: a bad or missing MAC, another job, a wrong
    /// node or address, oversized or out-of-turn messages, an older wyvern, timeouts.
    pub handshakes_failed: u64,
    /// Bootstrap handshakes given up before a queue pair was connected: the
    /// two GIDs cannot reach each other (see [`super::gids_can_reach`]).
    pub gids_unreachable: u64,
    /// Paths (a link's queue pair on one rail) that failed while the link lived on.
    pub path_downs: u64,
    /// RDMA READs posted again on another rail after theirs failed.
    pub reads_reissued: u64,
    /// Links remade (when idle) to take up again a rail whose port came back.
    pub rails_rejoined: u64,
    /// The most chunks of one peer steered into our blocks at once (their
    /// READs posted or waiting for room, not all landed): the receive
    /// pipeline's depth reached.
    pub chunks_in_flight_max: u64,
    /// The most READs into the pool outstanding at once on one link (all
    /// its paths).
    pub reads_in_flight_max: u64,
    /// The most bytes of READs outstanding at once on one path (queue
    /// pair): what [`READ_WINDOW`] bounds (a path takes a READ only while
    /// fewer are outstanding, so at most the window plus one READ).
    pub read_bytes_in_flight_max: u64,
}

/// One rail's counters (for `wyvern stat`, as `verbs_railR_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RailCounters {
    /// SENDs posted on it.
    pub sends: u64,
    /// Bytes of those.
    pub send_bytes: u64,
    /// SENDs received on it.
    pub recvs: u64,
    /// RDMA READs into the pool posted on it (steered, reissued included).
    pub reads: u64,
    /// Bytes of those.
    pub read_bytes: u64,
    /// READs moved off it (posted again on another rail) when a path failed.
    pub reissued: u64,
    /// Paths on it that failed (queue pair error, port down).
    pub downs: u64,
    /// Times its port was found down.
    pub port_downs: u64,
}

// ------------------------------------------------------------------- bootstrap

impl From<QpAddr> for QpEndpoint {
    fn from(a: QpAddr) -> QpEndpoint {
        QpEndpoint {
            qpn: a.qpn,
            psn: a.psn,
            lid: a.lid,
            gid: a.gid.map(Gid),
        }
    }
}

/// Read from a non-blocking stream until `buf` holds `want` bytes, and no further;
/// `Ok(false)`: closed by the peer.
fn read_upto(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    let mut tmp = [0u8; BOOT_HEADER + BOOT_BODY_MAX];
    while buf.len() < want {
        let n = (want - buf.len()).min(tmp.len());
        match s.read(&mut tmp[..n]) {
            Ok(0) => return Ok(false),
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Read what a non-blocking stream has into `buf`; `Ok(false)`: closed by the peer.
fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut tmp = [0u8; 512];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                if buf.len() < 64 * 1024 {
                    buf.extend_from_slice(&tmp[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Write a short bootstrap message on a non-blocking stream (an empty socket buffer
/// takes it whole; anything else is an error).
fn write_boot(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let n = s.write(msg)?;
    if n != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write on the bootstrap connection",
        ));
    }
    Ok(())
}

// -------------------------------------------------------------- stream messages

/// A rendezvous descriptor of the peer's being fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fetch {
    /// The descriptor (checked: [`Rdv::check`]).
    rdv: Rdv,
    /// How much has been fetched (or is being).
    done: u64,
    /// Its number among the link's descriptors (see [`Link::fetches`]).
    id: u64,
    /// Bytes per READ (striped over the paths up when it was first reached).
    piece: u64,
}

/// A descriptor being fetched: READs outstanding, and whether all are posted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FetchState {
    pending: u32,
    all_posted: bool,
}

/// The peer's descriptors being fetched, in the order they came, until each is
/// fully fetched: READs of several paths complete in any order, and the peer
/// hears of descriptors done in its own order (it frees its blocks in that order).
#[derive(Debug, Default)]
struct Fetches {
    states: VecDeque<FetchState>,
    /// The id of `states[0]`.
    base: u64,
    /// The id the next descriptor gets.
    next: u64,
}

impl Fetches {
    /// A new descriptor, behind the others: its id.
    fn add(&mut self) -> u64 {
        self.states.push_back(FetchState::default());
        self.next += 1;
        self.next - 1
    }

    fn get(&mut self, id: u64) -> Option<&mut FetchState> {
        let i = id.checked_sub(self.base)?;
        self.states.get_mut(usize::try_from(i).ok()?)
    }

    /// A READ of descriptor `id` is posted (`last`: its last one).
    fn posted(&mut self, id: u64, last: bool) {
        if let Some(f) = self.get(id) {
            f.pending += 1;
            f.all_posted |= last;
        }
    }

    /// A READ of descriptor `id` completed: how many descriptors at the front
    /// are now wholly fetched (all READs posted and done), forgotten here.
    fn done(&mut self, id: u64) -> u32 {
        if let Some(f) = self.get(id) {
            f.pending = f.pending.saturating_sub(1);
        }
        let mut n = 0;
        while self
            .states
            .front()
            .is_some_and(|f| f.all_posted && f.pending == 0)
        {
            self.states.pop_front();
            self.base += 1;
            n += 1;
        }
        n
    }
}

/// One RDMA READ of a descriptor's range: again on another path if its own fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    /// The descriptor it belongs to.
    fetch: u64,
    /// Offset in the peer's pool.
    remote_off: u64,
    /// Offset in our pool (a steered READ) or in the bounce buffer.
    local_off: u64,
    len: u32,
    /// The stream's steer it lands in ([`crate::transport::stream::Steer::id`];
    /// a steered READ).
    steer: u64,
}

/// What arrived, in stream order, waiting to be absorbed.
#[derive(Debug)]
enum RxItem {
    /// Bytes `[start, end)` of receive slot `slot` of rail `rail`.
    Data {
        rail: u8,
        slot: u32,
        start: u32,
        end: u32,
    },
    Rdv(Fetch),
}

// ------------------------------------------------------------------------ links

/// Where a link's handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Dialed: nothing sent, waiting for the acceptor's challenge.
    AwaitChallenge,
    /// Dialed: our Hello and Info sent, waiting for the peer's.
    AwaitInfo,
    /// Accepted: QP ready, our Info sent, waiting for the dialer's Ready.
    AwaitReady,
    /// Frames flow.
    Up,
    /// Failed (reported down, waiting for the agent to close it).
    Broken,
}

/// A work request on a link's send queue, until its completion (or a later signalled
/// one's) is seen.
#[derive(Debug)]
struct SqEntry {
    seq: u64,
    kind: SqKind,
}

#[derive(Debug)]
enum SqKind {
    /// A SEND from send slot number `slot` (a running count).
    Send { slot: u64 },
    /// A READ into the pool.
    ReadPool(Piece),
    /// A READ into the bounce buffer.
    ReadBounce(Piece),
}

/// A link's queue pair on one rail.
struct Path {
    qp: Qp,
    psn: u32,
    /// The peer's queue pair and rkey on this rail (once known).
    remote: Option<RailAddr>,
    /// Connected and not failed.
    up: bool,
    /// SENDs went or came on it: its failure may lose stream bytes (the link fails).
    sends: bool,
    sq: VecDeque<SqEntry>,
    wr_seq: u64,
    unsignaled: u32,
    reads_out: u32,
    /// Bytes of those READs.
    read_bytes: u64,
    wrs: Vec<SendWr>,
    wr_kinds: Vec<SqKind>,
    /// When `tick` next queries the QP's state (while up).
    next_qp_check: Instant,
}

struct Link {
    node: u32,
    epoch: u16,
    phase: Phase,
    since: Instant,
    ctl: TcpStream,
    ctl_in: Vec<u8>,
    /// Dialed links: our nonce, the acceptor's challenge (once it came) and its
    /// `Hello` (once it came; checked with the `Info` that follows).
    ours: [u8; NONCE_LEN],
    challenge: Option<[u8; NONCE_LEN]>,
    peer_hello: Option<BootHello>,
    /// One per rail of ours (a rail the peer lacks stays down).
    paths: Vec<Path>,
    /// The path SENDs go on (and bounce READs).
    home: usize,
    /// Rails both ends have (the first this many paths may be up).
    common: usize,
    /// The next path a READ is tried on (round robin).
    next_path: usize,
    /// The peer's rail-0 `Info` (pool, block region, credits).
    remote: Option<Info>,
    /// Send slots ([`SEND_SLOTS`] × [`MSG`]) and the bounce buffer, registered
    /// with the home rail's protection domain once the link is connected.
    slots: Option<RegBuf>,
    bounce: Option<RegBuf>,
    // ---- sending
    outq: VecDeque<Out>,
    queued: usize,
    credits: u32,
    /// Data waits for credits (counted once per such spell).
    credit_stalled: bool,
    /// Receive buffers of the peer's SENDs we posted again and have not told it of.
    owed: u32,
    /// Descriptors of the peer's fully fetched, not yet reported.
    rdv_done_owed: u32,
    /// Our descriptors the peer has not finished fetching, with the block to free then.
    rdv_out: VecDeque<Option<u64>>,
    /// Blocks to report freed at the next `flush`.
    freed: Vec<u64>,
    slot_next: u64,
    slot_free: u64,
    // ---- receiving
    rxq: VecDeque<RxItem>,
    /// The peer's chunks steered into our blocks and not yet landed (the
    /// stream's [`crate::transport::LinkRx::steers`] when last looked at).
    in_flight: u32,
    bounce_busy: bool,
    /// The poll round in which a descriptor at the head was first seen unsteered.
    rdv_seen: Option<u64>,
    /// The peer's descriptors being fetched.
    fetches: Fetches,
    /// READs of a failed path, to post again on another.
    reissue: VecDeque<Piece>,
    last_tx: Instant,
}

/// One link instance: the peer node and the link's epoch (a new queue pair to the same
/// node gets a new epoch, so what belonged to the old one is told apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinkId {
    node: u32,
    epoch: u16,
}

/// Per receive slot: who filled it and how many of its items are not absorbed.
#[derive(Clone, Copy, Default)]
struct RxSlot {
    refs: u32,
    node: u32,
    epoch: u16,
}

/// Why a link broke (the text for `LinkEvent::Down`).
type Broken = String;

/// An accepted bootstrap connection in its handshake: our challenge went out, the
/// dialer's `Hello` and then `Info` are due. `buf` holds at most one message.
struct Pending {
    s: TcpStream,
    buf: Vec<u8>,
    since: Instant,
    from: SocketAddr,
    /// Our challenge.
    ours: [u8; NONCE_LEN],
    /// The dialer's `Hello`, once it came (its MAC is checked with the `Info`).
    hello: Option<BootHello>,
}

/// What an accepted connection's handshake brought, verified: the dialer's `Hello`, its
/// nonce (echoed in the answer) and its `Info`.
struct Dialed {
    hello: Hello,
    nonce: [u8; NONCE_LEN],
    info: InfoMsg,
}

/// The names of one rail's counters in stat (`verbs_railR_*`).
struct RailNames {
    sends: &'static str,
    send_bytes: &'static str,
    recvs: &'static str,
    reads: &'static str,
    read_bytes: &'static str,
    reissued: &'static str,
    downs: &'static str,
    port_downs: &'static str,
    port_up: &'static str,
    device: &'static str,
    gid: &'static str,
}

impl RailNames {
    fn new(r: usize) -> RailNames {
        // Leaked once per rail per transport (at most MAX_RAILS): the counters'
        // names are `&'static str`.
        let n = |what: &str| -> &'static str { Box::leak(format!("verbs_rail{r}_{what}").into()) };
        RailNames {
            sends: n("sends"),
            send_bytes: n("send_bytes"),
            recvs: n("recvs"),
            reads: n("reads"),
            read_bytes: n("read_bytes"),
            reissued: n("reissued"),
            downs: n("downs"),
            port_downs: n("port_downs"),
            port_up: n("port_up"),
            device: n("device"),
            gid: n("gid"),
        }
    }
}

/// One RDMA device (a rail): everything of the transport's that belongs to one
/// device. Field order is drop order (the objects also hold `Arc`s of what they
/// were made from).
struct Rail {
    srq: Arc<Srq>,
    rx_bufs: RegBuf,
    rx_slots: Vec<RxSlot>,
    reposts: Vec<u32>,
    cq: Arc<Cq>,
    channel: Arc<CompChannel>,
    /// The pool's region (none for a job of one node: nobody to share it with).
    pool_mr: Option<Mr>,
    pd: Arc<Pd>,
    ctx: Arc<Context>,
    gid: Option<GidEntry>,
    /// The GID chosen and why ([`Context::choose_gid`]), for stat.
    gid_why: Option<String>,
    lid: u16,
    mtu: u32,
    max_reads: u32,
    sq_depth: u32,
    armed: bool,
    /// Whose queue pair a QP number is (the link a completion belongs to).
    qpn_node: HashMap<u32, LinkId>,
    /// The port was active when last seen (event or query); new links use
    /// only rails whose port is up.
    port_up: bool,
    /// What the port runs below what it can (see [`VerbsTransport::shortfall`]).
    shortfall: Option<Shortfall>,
    /// The port came back: from then on, links without a path on this rail are
    /// remade when idle (see [`VerbsTransport::rejoin`]).
    rejoin_at: Option<Instant>,
    c: RailCounters,
    names: RailNames,
}

impl Rail {
    fn pool_rkey(&self) -> u32 {
        self.pool_mr.as_ref().map_or(0, |m| m.rkey())
    }

    fn pool_lkey(&self) -> u32 {
        self.pool_mr.as_ref().map_or(0, |m| m.lkey())
    }
}

/// The verbs transport. See the module docs.
pub struct VerbsTransport {
    // Field order is drop order: queue pairs (in `links`/`pending`) go before the
    // rails' shared receive queues, CQs and memory regions, and the pool stays
    // mapped until its regions are deregistered.
    links: Vec<Option<Link>>,
    pending: Vec<Option<Pending>>,
    rails: Vec<Rail>,
    pool: Arc<Pool>,
    me: u32,
    hello: Hello,
    key: Option<JobKey>,
    bootstrap: Vec<SocketAddr>,
    listener: TcpListener,
    addr: SocketAddr,
    credits: u32,
    next_epoch: u16,
    dialing: Vec<bool>,
    next_dial: Vec<Instant>,
    dialer: Dialer,
    wake: Arc<dyn Fn() + Send + Sync>,
    round: u64,
    stats: VerbsCounters,
    wcs: Vec<Wc>,
    /// When a refusal was last logged, and how many since.
    refuse_warned: Option<Instant>,
    refused_quiet: u64,
    /// Failed handshakes logged at warn level.
    fail_warned: WarnSpell,
    /// The rails' shortfalls, for [`VerbsTransport::shortfall`].
    shortfalls: Vec<Shortfall>,
    next_port_check: Instant,
}

fn wr_id(node: u32, epoch: u16, seq: u64) -> u64 {
    ((node as u64 & 0x7fff) << 48) | ((epoch as u64) << 32) | (seq & 0xffff_ffff)
}

fn random_psn(node: u32, epoch: u16) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ (node.wrapping_mul(0x9e37_79b9)) ^ ((epoch as u32) << 8)) & 0xff_ffff
}

/// The devices `verbs_device` names: none (the first active port), one, or
/// several comma-separated (rails), each at most once.
fn rail_specs(device: Option<&str>) -> Result<Vec<Option<String>>, Error> {
    let Some(spec) = device else {
        return Ok(vec![None]);
    };
    let names: Vec<String> = spec
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let bad = |why: String| Error::BadRails {
        spec: spec.to_string(),
        why,
    };
    if names.is_empty() {
        return Err(bad("names no device".into()));
    }
    if names.len() > MAX_RAILS {
        return Err(bad(format!(
            "{} devices, at most {MAX_RAILS} rails",
            names.len()
        )));
    }
    for (i, a) in names.iter().enumerate() {
        if names[..i].contains(a) {
            return Err(bad(format!("{a} named twice")));
        }
    }
    Ok(names.into_iter().map(Some).collect())
}

/// Open rail `r` on `ctx`: its GID, protection domain, the pool's registration,
/// completion channel and queue, shared receive queue and its buffers.
fn open_rail(
    r: usize,
    ctx: Arc<Context>,
    cfg: &VerbsConfig,
    address: Option<std::net::Ipv4Addr>,
    pool: &Arc<Pool>,
    credits: u32,
    peers: u32,
) -> Result<Rail, Error> {
    let n = cfg.bootstrap.len();
    let port = ctx.query_port()?;
    let chosen = ctx.choose_gid(cfg.gid_index, address)?;
    if let Some((e, why @ super::device::GidChoice::FirstV2(Some(_), _))) = &chosen {
        log::warn!(
            "verbs: {}: GID index {} ({}): {why}",
            ctx.name(),
            e.index,
            e.gid
        );
    }
    let gid_why = chosen
        .as_ref()
        .map(|(e, why)| format!("index {} {}: {why}", e.index, e.gid));
    let gid = chosen.map(|(e, _)| e);
    let caps = ctx.caps();
    let pd = Pd::new(&ctx)?;
    let pool_mr = if n > 1 {
        // Only the block region is registered, and for remote READ only: peers
        // READ the blocks of large messages (rendezvous); nothing else of the pool
        // (header, clients' rings) is theirs to see, and no peer ever writes into
        // it. LOCAL_WRITE: our own READs land in blocks (steered chunks).
        let (region_off, region_len) = pool.block_region();
        let region = pool.base_addr() + region_off as usize;
        // SAFETY: the transport holds `pool` (an `Arc`) in a field dropped after
        // its rails (and so this region), so the mapping outlives the
        // registration; `region` .. `region + region_len` is the block region,
        // inside the mapping (`Pool::block_region`); the pool is shared memory the
        // agent already treats as written by others (clients), and peers may only
        // READ the block region, through descriptors this transport checks.
        Some(unsafe {
            Mr::register(
                &pd,
                region as *mut u8,
                region_len as usize,
                Access::LOCAL_WRITE.with(Access::REMOTE_READ),
            )?
        })
    } else {
        None
    };
    let max_srq = caps.max_srq_wr.max(64);
    let srq_depth = (credits * peers + 16).min(max_srq);
    let max_reads = MAX_READS
        .min(caps.max_qp_init_rd_atom.max(1))
        .min(caps.max_qp_rd_atom.max(1));
    let sq_depth = (SEND_SLOTS as u32 + max_reads + 4).min(caps.max_qp_wr.max(16));
    let cq_entries = (srq_depth + peers * sq_depth).min(caps.max_cqe.max(64));
    let channel = CompChannel::new(&ctx)?;
    let cq = Cq::new(&ctx, cq_entries, Some(&channel))?;
    let srq = Srq::new(&pd, srq_depth)?;
    let rx_bufs = RegBuf::new(&pd, srq_depth as usize * MSG, Access::LOCAL_WRITE)?;
    log::info!(
        "verbs: rail {r}: {}:{} ({}), MTU {} B, {}, block region of {} MiB registered for remote READ (rkey {:#x})",
        ctx.name(),
        ctx.port(),
        if port.is_roce() { "RoCE" } else { "InfiniBand" },
        port.mtu_bytes(),
        match &gid_why {
            Some(why) => format!("GID {why}"),
            None => format!("LID {}", port.lid),
        },
        pool.block_region().1 >> 20,
        pool_mr.as_ref().map_or(0, |m| m.rkey())
    );
    // A RoCE port cut below its largest MTU by its netdev's: listed as degraded.
    let netdev = ctx.netdev(gid.map(|e| e.index));
    let shortfall = port
        .is_roce()
        .then(|| {
            super::device::roce_mtu_shortfall(
                ctx.name(),
                ctx.port(),
                port.mtu_bytes(),
                super::device::mtu_bytes(port.max_mtu),
                netdev.as_ref().map(|(n, m)| (n.as_str(), *m)),
            )
        })
        .flatten();
    Ok(Rail {
        srq,
        rx_slots: vec![RxSlot::default(); srq_depth as usize],
        reposts: (0..srq_depth).collect(),
        rx_bufs,
        cq,
        channel,
        pool_mr,
        pd,
        ctx,
        gid,
        gid_why,
        lid: port.lid,
        mtu: port.active_mtu,
        max_reads,
        sq_depth,
        armed: false,
        qpn_node: HashMap::new(),
        port_up: port.is_active(),
        shortfall,
        rejoin_at: None,
        c: RailCounters::default(),
        names: RailNames::new(r),
    })
}

impl VerbsTransport {
    /// Open the device, register the pool once as one memory region (local write,
    /// remote read and write), make the completion channel and queue and the shared
    /// receive queue, and listen for bootstrap connections on
    /// `cfg.bootstrap[me]`. `wake` is called from a dialer thread when a dial
    /// finished (so a sleeping agent looks at it).
    ///
    /// Poller tokens used: 0 the bootstrap listener, 1 the completion channel, 2 the
    /// device's asynchronous events, `1<<30 | node` a peer's bootstrap connection,
    /// `2<<30 | slot` a connection not yet identified.
    pub fn new(
        cfg: VerbsConfig,
        poller: &Poller,
        pool: Arc<Pool>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<VerbsTransport, Error> {
        let me = cfg.hello.node;
        let n = cfg.bootstrap.len();
        let specs = rail_specs(cfg.device.as_deref())?;
        // The address peers reach this node at (its bootstrap address in the
        // node list), unless it is loopback (one host: no GID carries it).
        let address = cfg.bootstrap.get(me as usize).and_then(|a| match a.ip() {
            std::net::IpAddr::V4(v) if !v.is_loopback() && !v.is_unspecified() => Some(v),
            _ => None,
        });
        let ctxs = specs
            .iter()
            .map(|s| Context::open(s.as_deref()))
            .collect::<Result<Vec<_>, Error>>()?;
        let peers = n.saturating_sub(1).max(1) as u32;
        // Every rail's shared receive queue takes all of a peer's credits (its
        // SENDs go on one path, whichever), so the credits fit the smallest.
        let credits = ctxs
            .iter()
            .map(|c| (c.caps().max_srq_wr.max(64) / peers).clamp(4, CREDITS))
            .min()
            .unwrap_or(4);
        let mut rails = Vec::with_capacity(ctxs.len());
        for (r, ctx) in ctxs.into_iter().enumerate() {
            rails.push(open_rail(r, ctx, &cfg, address, &pool, credits, peers)?);
        }
        let listener =
            TcpListener::bind(cfg.bootstrap[me as usize]).map_err(|source| Error::Listen {
                addr: cfg.bootstrap[me as usize],
                source,
            })?;
        let watch = |what| move |source| Error::Watch { what, source };
        listener
            .set_nonblocking(true)
            .map_err(watch("bootstrap listener"))?;
        let addr = listener.local_addr().map_err(watch("bootstrap listener"))?;
        poller
            .add(listener.as_fd(), TOK_LISTEN)
            .map_err(watch("bootstrap listener"))?;
        for (r, rail) in rails.iter().enumerate() {
            poller
                .add(rail.channel.fd(), TOK_CQ + r as u32)
                .map_err(watch("completion channel"))?;
            rail.ctx
                .set_async_nonblocking()
                .map_err(watch("asynchronous event"))?;
            poller
                .add(rail.ctx.async_fd(), TOK_ASYNC + r as u32)
                .map_err(watch("asynchronous event"))?;
        }
        log::info!(
            "verbs: {} rail(s), {credits} credits per peer, bootstrap on {addr}",
            rails.len()
        );
        let shortfalls = rails.iter().filter_map(|r| r.shortfall.clone()).collect();
        let now = Instant::now();
        let mut t = VerbsTransport {
            links: (0..n).map(|_| None).collect(),
            pending: Vec::new(),
            rails,
            pool,
            me,
            hello: cfg.hello,
            key: cfg.key,
            bootstrap: cfg.bootstrap,
            listener,
            addr,
            credits,
            next_epoch: 1,
            dialing: vec![false; n],
            next_dial: vec![now; n],
            dialer: Dialer::default(),
            wake,
            round: 0,
            stats: VerbsCounters::default(),
            wcs: Vec::with_capacity(64),
            refuse_warned: None,
            refused_quiet: 0,
            fail_warned: WarnSpell::default(),
            shortfalls,
            next_port_check: now + PORT_CHECK_EVERY,
        };
        for r in 0..t.rails.len() {
            t.repost(r)?;
        }
        Ok(t)
    }

    /// What the ports run below what they can: a RoCE port whose active MTU is
    /// below its largest because of its netdev's (see [`super::roce_mtu_shortfall`]),
    /// one per rail at most.
    pub fn shortfall(&self) -> std::slice::Iter<'_, Shortfall> {
        self.shortfalls.iter()
    }

    /// The bootstrap listener's address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The device in use (the first rail's).
    pub fn context(&self) -> &Arc<Context> {
        &self.rails[0].ctx
    }

    /// The counters.
    pub fn stats(&self) -> VerbsCounters {
        self.stats
    }

    /// Rail `r`'s counters.
    pub fn rail_stats(&self, r: usize) -> Option<RailCounters> {
        self.rails.get(r).map(|rail| rail.c)
    }

    /// Post rail `r`'s receive buffers that are free again, as one list.
    fn repost(&mut self, r: usize) -> Result<(), Error> {
        let rail = &mut self.rails[r];
        if rail.reposts.is_empty() {
            return Ok(());
        }
        let lkey = rail.rx_bufs.mr().lkey();
        let list: Vec<RecvWr> = rail
            .reposts
            .iter()
            .map(|&s| RecvWr {
                wr_id: RECV_BIT | s as u64,
                buf: Sge {
                    addr: rail.rx_bufs.addr(s as usize * MSG),
                    len: MSG as u32,
                    lkey,
                },
            })
            .collect();
        // SAFETY: each slot lies in the rail's `rx_bufs` (registered with local
        // write, owned by the rail, dropped after its SRQ); a slot is reposted only
        // once no item refers to it (its bytes are not read again before its next
        // completion).
        unsafe { rail.srq.post_recv(&list)? };
        self.stats.srq_reposts += list.len() as u64;
        for &s in &rail.reposts {
            let rs = rail.rx_slots[s as usize];
            if let Some(l) = self.links[rs.node as usize]
                .as_mut()
                .filter(|l| l.epoch == rs.epoch && rs.epoch != 0)
            {
                l.owed += 1;
            }
            rail.rx_slots[s as usize] = RxSlot::default();
        }
        rail.reposts.clear();
        Ok(())
    }

    /// Post every rail's free receive buffers.
    fn repost_all(&mut self) {
        for r in 0..self.rails.len() {
            if let Err(e) = self.repost(r) {
                log::error!("verbs: reposting receive buffers: {e}");
            }
        }
    }

    fn release_slot(slots: &mut [RxSlot], reposts: &mut Vec<u32>, slot: u32) {
        let s = &mut slots[slot as usize];
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            reposts.push(slot);
        }
    }

    /// Our `Info` message for link `l`: every rail's queue pair and rkey.
    fn my_info(&self, l: &Link) -> Vec<u8> {
        let (region_off, region_len) = self.pool.block_region();
        let addr = |r: usize| {
            let rail = &self.rails[r];
            let p = &l.paths[r];
            RailAddr {
                qp: QpAddr {
                    qpn: p.qp.qpn(),
                    psn: p.psn,
                    lid: rail.lid,
                    gid: rail.gid.map(|e| e.gid.0),
                },
                mtu: rail.mtu as u8,
                rkey: rail.pool_rkey(),
            }
        };
        let first = addr(0);
        InfoMsg {
            info: Info {
                qp: first.qp,
                mtu: first.mtu,
                base: self.pool.base_addr() as u64,
                region_off,
                region_len,
                rkey: first.rkey,
                credits: self.credits,
            },
            rails: (1..self.rails.len()).map(addr).collect(),
        }
        .to_bytes()
    }

    /// A new link to `node` over `ctl`, a queue pair per rail in INIT.
    fn new_link(&mut self, node: u32, ctl: TcpStream, phase: Phase) -> Result<Link, Error> {
        let epoch = self.next_epoch;
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        let now = Instant::now();
        let mut paths = Vec::with_capacity(self.rails.len());
        for (r, rail) in self.rails.iter().enumerate() {
            let qp = Qp::new_rc(
                &rail.pd,
                &rail.cq,
                Some(&rail.srq),
                QpCaps {
                    max_send_wr: rail.sq_depth,
                    max_recv_wr: 0,
                    max_inline: 128,
                },
            )?;
            // Peers READ our blocks; they never WRITE.
            qp.to_init(
                rail.ctx.port(),
                Access::LOCAL_WRITE.with(Access::REMOTE_READ),
            )?;
            paths.push(Path {
                qp,
                psn: random_psn(node, epoch) ^ ((r as u32) << 16) & 0xff_ffff,
                remote: None,
                up: false,
                sends: false,
                sq: VecDeque::new(),
                wr_seq: 0,
                unsignaled: 0,
                reads_out: 0,
                read_bytes: 0,
                wrs: Vec::new(),
                wr_kinds: Vec::new(),
                next_qp_check: now,
            });
        }
        Ok(Link {
            node,
            epoch,
            phase,
            since: now,
            ctl,
            ctl_in: Vec::new(),
            ours: auth::random_bytes::<NONCE_LEN>(),
            challenge: None,
            peer_hello: None,
            paths,
            home: 0,
            common: 0,
            next_path: 0,
            remote: None,
            slots: None,
            bounce: None,
            outq: VecDeque::new(),
            queued: 0,
            credits: 0,
            credit_stalled: false,
            owed: 0,
            rdv_done_owed: 0,
            rdv_out: VecDeque::new(),
            freed: Vec::new(),
            slot_next: 0,
            slot_free: 0,
            rxq: VecDeque::new(),
            in_flight: 0,
            bounce_busy: false,
            rdv_seen: None,
            fetches: Fetches::default(),
            reissue: VecDeque::new(),
            last_tx: now,
        })
    }

    /// Why a queue pair could not be connected to `node`'s: most often the two
    /// GIDs cannot reach each other (a wrong `verbs_gid_index` at either end), so
    /// say which they were and where to look.
    fn cannot_connect(&self, r: usize, node: u32, e: &Error, theirs: &RailAddr) -> String {
        let cause = std::error::Error::source(e)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        self.gids_hint(r, node, format!("{e}{cause}"), theirs)
    }

    /// Whether rail `r`'s GID can reach the one `theirs` names, before a queue
    /// pair is connected to it (the acceptor checks before it makes one; see
    /// [`super::gids_can_reach`]): `Err` is the warning.
    fn check_gids(
        &self,
        r: usize,
        node: u32,
        theirs: &RailAddr,
    ) -> std::result::Result<(), String> {
        super::gids_can_reach(self.rails[r].gid.map(|e| e.gid), theirs.qp.gid.map(Gid)).map_err(
            |why| {
                self.gids_hint(
                    r,
                    node,
                    format!("checked before connecting a queue pair: {why}"),
                    theirs,
                )
            },
        )
    }

    /// `what` went wrong connecting to `node` on rail `r`: say it with both GIDs
    /// and where to look.
    fn gids_hint(&self, r: usize, node: u32, what: String, theirs: &RailAddr) -> String {
        let theirs = theirs
            .qp
            .gid
            .map_or("none (LID addressing)".to_string(), |g| Gid(g).to_string());
        let rail = if self.rails.len() > 1 {
            format!(" (rail {r}, {})", self.rails[r].ctx.name())
        } else {
            String::new()
        };
        format!(
            "{what}; this node's GID{rail} {}, node {node}'s {theirs}: if these two cannot reach \
             each other, check verbs_gid_index at both ends (`wyvern info --node-id N --nodes \
             ...` shows which GID verbs takes and why)",
            self.rails[r]
                .gid_why
                .as_deref()
                .unwrap_or("none (LID addressing)")
        )
    }

    /// Connect `l`'s queue pairs to the peer's (`msg`): RTR, then RTS, on every
    /// rail both have whose port is up and whose GIDs can reach each other; then
    /// choose the home path and register the send slots and bounce buffer with its
    /// device. `Err`: no path could be connected (the first rail's reason; a
    /// `true` says the GIDs cannot reach each other).
    fn connect_qp(&mut self, l: &mut Link, msg: &InfoMsg) -> Result<(), (String, bool)> {
        let rails = self.rails.len().min(msg.rail_count());
        l.common = rails;
        let mut first_err: Option<(String, bool)> = None;
        for r in 0..rails {
            let theirs = msg.rail(r).expect("r < rail_count");
            let rail = &self.rails[r];
            if !rail.port_up {
                log::warn!(
                    "verbs: node {}: rail {r} ({}) not used: its port is down",
                    l.node,
                    rail.ctx.name()
                );
                first_err.get_or_insert((format!("rail {r}'s port is down"), false));
                continue;
            }
            if let Err(why) = self.check_gids(r, l.node, &theirs) {
                self.stats.gids_unreachable += 1;
                first_err.get_or_insert((why, true));
                continue;
            }
            let mtu = (theirs.mtu as u32).min(rail.mtu).max(1);
            let p = &mut l.paths[r];
            let res =
                p.qp.to_rtr(
                    rail.ctx.port(),
                    &theirs.qp.into(),
                    mtu,
                    rail.gid.map(|e| e.index),
                    rail.max_reads as u8,
                )
                .and_then(|_| p.qp.to_rts(p.psn, rail.max_reads as u8));
            match res {
                Ok(()) => {
                    p.up = true;
                    p.remote = Some(theirs);
                }
                Err(e) => {
                    let why = self.cannot_connect(r, l.node, &e, &theirs);
                    first_err.get_or_insert((why, false));
                }
            }
        }
        let up: Vec<usize> = (0..l.paths.len()).filter(|&r| l.paths[r].up).collect();
        if up.is_empty() {
            return Err(first_err.unwrap_or(("no rail in common".into(), false)));
        }
        if let Some((why, _)) = first_err.filter(|_| up.len() < rails) {
            log::warn!(
                "verbs: node {}: {} of {rails} rail(s) connected; first failure: {why}",
                l.node,
                up.len()
            );
        }
        // The home rail: the same at both ends when both see the same rails up.
        let want = (self.me as usize + l.node as usize) % rails;
        l.home = (0..rails)
            .map(|k| (want + k) % rails)
            .find(|r| l.paths[*r].up)
            .expect("one path is up");
        l.next_path = l.home;
        let pd = &self.rails[l.home].pd;
        let mk = |len| {
            RegBuf::new(pd, len, Access::LOCAL_WRITE)
                .map_err(|e| (format!("send slots: {e}"), false))
        };
        l.slots = Some(mk(SEND_SLOTS as usize * MSG)?);
        l.bounce = Some(mk(BOUNCE)?);
        l.credits = msg.info.credits;
        l.remote = Some(msg.info);
        Ok(())
    }

    /// Check a peer's Hello: same job, same node count, another node, and (when the
    /// node list names a real address for it) from that node's IP.
    fn check_hello(&self, h: &Hello, from: Option<SocketAddr>) -> Result<(), String> {
        crate::transport::check_peer_hello(h, self.hello.job, &self.bootstrap, self.me, from)
    }

    /// Whether a connection from `from` may be a peer's: its IP is one of the node
    /// list's, or the list names a node by an unspecified address (any).
    fn may_be_a_peer(&self, from: SocketAddr) -> bool {
        crate::transport::may_be_a_peer(&self.bootstrap, self.me, from)
    }

    /// A connection closed at once (too many handshakes under way): counted, and
    /// logged at most once a second.
    fn refuse(&mut self, from: SocketAddr, now: Instant) {
        self.stats.pending_refused += 1;
        self.refused_quiet += 1;
        if self
            .refuse_warned
            .is_none_or(|t| now.duration_since(t) >= REFUSE_WARN_EVERY)
        {
            log::warn!(
                "verbs: {} bootstrap connection(s) closed at once (last from {from}): \
                 {MAX_PENDING} handshakes already under way",
                self.refused_quiet
            );
            self.refuse_warned = Some(now);
            self.refused_quiet = 0;
        }
    }

    /// A handshake failed: counted, and logged at warn at most [`FAIL_WARNS`] times
    /// a second (a stranger may try many times), at debug beyond.
    fn handshake_failed(&mut self, what: &str, why: &str) {
        self.stats.handshakes_failed += 1;
        if self
            .fail_warned
            .warn(Instant::now(), REFUSE_WARN_EVERY, FAIL_WARNS)
        {
            log::warn!("verbs: {what}: {why}");
        } else {
            log::debug!("verbs: {what}: {why}");
        }
    }

    /// Accepted connections whose handshake is under way.
    fn pending_count(&self) -> usize {
        self.pending.iter().flatten().count()
    }

    fn install(&mut self, poller: &Poller, l: Link, events: &mut Vec<LinkEvent>) {
        let node = l.node;
        if self.links[node as usize].is_some() {
            let blocks = self.close(poller, node, Close::Now);
            events.push(LinkEvent::Down {
                node,
                reason: "peer reconnected (restarted?)".into(),
                blocks,
                closed: true,
            });
        }
        if let Err(e) = poller.add(l.ctl.as_fd(), TOK_LINK | node) {
            log::error!("verbs: cannot watch the bootstrap connection of node {node}: {e}");
            return;
        }
        for (rail, p) in self.rails.iter_mut().zip(&l.paths) {
            rail.qpn_node.insert(
                p.qp.qpn(),
                LinkId {
                    node,
                    epoch: l.epoch,
                },
            );
        }
        self.links[node as usize] = Some(l);
    }

    /// Close a pending connection whose handshake failed.
    fn drop_pending(&mut self, poller: &Poller, p: Pending, why: &str) {
        poller.delete(p.s.as_fd());
        self.handshake_failed(
            &format!("closing a bootstrap connection from {}", p.from),
            why,
        );
    }

    /// One complete bootstrap message of pending connection `p`: `Ok(Some(..))` when
    /// the dialer's `Hello` and `Info` are both in and its MAC verified.
    fn pending_step(&self, p: &mut Pending, msg: &BootMsg) -> Result<Option<Dialed>, String> {
        let body = &msg.body[..];
        match (p.hello, msg.kind) {
            (None, BootKind::Hello) => {
                let bh = BootHello::parse(body).map_err(|e| e.to_string())?;
                let h = bh.hello;
                self.check_hello(&h, Some(p.from))?;
                if h.node < self.me {
                    return Err(format!(
                        "node {} dialed node {} (the higher id dials)",
                        h.node, self.me
                    ));
                }
                if self.key.is_some() && !bh.has_mac() {
                    // A Hello that cannot be right whatever follows (the other side
                    // has no key): refused here, with the likely cause.
                    return Err(format!(
                        "Hello claiming node {} without a MAC (peer has no job key?)",
                        h.node
                    ));
                }
                p.hello = Some(bh);
                Ok(None)
            }
            (Some(bh), BootKind::Info) => {
                if !bh.verify(
                    self.key.as_ref(),
                    auth::label::VERBS_BOOT_DIALER,
                    &p.ours,
                    &bh.nonce,
                    body,
                ) {
                    return Err(format!(
                        "Hello and Info claiming node {} failed their MAC (another job key, \
                         a replay, or a changed Info)",
                        bh.hello.node
                    ));
                }
                let info = InfoMsg::parse(body).map_err(|e| e.to_string())?;
                Ok(Some(Dialed {
                    hello: bh.hello,
                    nonce: bh.nonce,
                    info,
                }))
            }
            (_, k) => Err(format!(
                "sent bootstrap message {k:?} out of its turn in the handshake"
            )),
        }
    }

    /// An accepted connection has something to read: its Hello, then its Info. One
    /// message at a time and not one byte more: its header first (refused by it if
    /// too long), then its body. Nothing is acted on before both verified.
    fn serve_pending(&mut self, poller: &Poller, idx: usize, events: &mut Vec<LinkEvent>) {
        let Some(mut p) = self.pending.get_mut(idx).and_then(|p| p.take()) else {
            return;
        };
        let Dialed { hello, nonce, info } = loop {
            let want = match BootHeader::peek(&p.buf) {
                Err(e) => return self.drop_pending(poller, p, &e.to_string()),
                Ok(None) => BOOT_HEADER,
                Ok(Some(h)) => BOOT_HEADER + h.body_len,
            };
            if p.buf.len() < want {
                match read_upto(&mut p.s, &mut p.buf, want) {
                    Ok(true) => {}
                    Ok(false) => {
                        return self.drop_pending(poller, p, "closed during its handshake")
                    }
                    Err(e) => return self.drop_pending(poller, p, &e.to_string()),
                }
                if p.buf.len() < want {
                    self.pending[idx] = Some(p);
                    return;
                }
                continue;
            }
            let msg = match take_boot_msg(&mut p.buf) {
                Ok(Some(m)) => m,
                Ok(None) => return self.drop_pending(poller, p, "incomplete message"),
                Err(e) => return self.drop_pending(poller, p, &e.to_string()),
            };
            match self.pending_step(&mut p, &msg) {
                Ok(None) => {}
                Ok(Some(done)) => break done,
                Err(e) => return self.drop_pending(poller, p, &e),
            }
        };
        poller.delete(p.s.as_fd());
        let node = hello.node;
        // The first rail's GIDs checked before any queue pair is made (the other
        // rails' are checked by `connect_qp`, which leaves such a rail out).
        if let Some(theirs) = info.rail(0) {
            if let Err(why) = self.check_gids(0, node, &theirs) {
                self.stats.gids_unreachable += 1;
                self.handshake_failed(&format!("cannot connect to node {node}"), &why);
                return;
            }
        }
        let mut l = match self.new_link(node, p.s, Phase::AwaitReady) {
            Ok(l) => l,
            Err(e) => {
                log::error!("verbs: cannot make a queue pair for node {node}: {e}");
                return;
            }
        };
        if let Err((why, _)) = self.connect_qp(&mut l, &info) {
            // Retried: said at most a few times a second.
            self.handshake_failed(&format!("cannot connect to node {node}"), &why);
            return;
        }
        let mine = self.my_info(&l);
        let mut reply = boot_hello(
            self.key.as_ref(),
            auth::label::VERBS_BOOT_ACCEPTOR,
            &p.ours,
            &nonce,
            &self.hello,
            &mine,
        );
        reply.extend(boot_msg(BootKind::Info, &mine));
        if let Err(e) = write_boot(&mut l.ctl, &reply) {
            log::warn!("verbs: bootstrap write to node {node}: {e}");
            return;
        }
        log::debug!(
            "verbs: node {node} dialed in (QP {} -> {})",
            l.paths[0].qp.qpn(),
            info.info.qp.qpn
        );
        self.install(poller, l, events);
        // A Ready sent right behind the Info is read on the next readiness event.
    }

    /// A link's bootstrap connection has something to read.
    fn serve_link(
        &mut self,
        poller: &Poller,
        node: u32,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        let Some(mut l) = self.links.get_mut(node as usize).and_then(|l| l.take()) else {
            return;
        };
        let handshake = matches!(
            l.phase,
            Phase::AwaitChallenge | Phase::AwaitInfo | Phase::AwaitReady
        );
        let r = self.serve_link_inner(&mut l, rx, events);
        self.links[node as usize] = Some(l);
        if let Err(why) = r {
            if handshake {
                self.handshake_failed(&format!("handshake with node {node}"), &why);
                if let Some(l) = self.links[node as usize].take() {
                    // Never up: nobody else knows of it.
                    self.drop_link(Some(poller), l);
                }
                self.next_dial[node as usize] = Instant::now() + REDIAL;
            } else {
                self.fail(node, why, events);
            }
        }
    }

    fn serve_link_inner(
        &mut self,
        l: &mut Link,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) -> Result<(), Broken> {
        match read_some(&mut l.ctl, &mut l.ctl_in) {
            Ok(true) => {}
            Ok(false) => return Err("bootstrap connection closed by the peer".into()),
            Err(e) => return Err(format!("bootstrap connection: {e}")),
        }
        loop {
            let msg = take_boot_msg(&mut l.ctl_in).map_err(|e| format!("bootstrap: {e}"))?;
            let Some(BootMsg { kind, body }) = msg else {
                break;
            };
            match (l.phase, kind) {
                (Phase::AwaitChallenge, BootKind::Challenge) => {
                    let c = parse_challenge(&body).map_err(|e| e.to_string())?;
                    let mine = self.my_info(l);
                    let mut out = boot_hello(
                        self.key.as_ref(),
                        auth::label::VERBS_BOOT_DIALER,
                        &c,
                        &l.ours,
                        &self.hello,
                        &mine,
                    );
                    out.extend(boot_msg(BootKind::Info, &mine));
                    write_boot(&mut l.ctl, &out).map_err(|e| format!("bootstrap write: {e}"))?;
                    l.challenge = Some(c);
                    l.phase = Phase::AwaitInfo;
                }
                (Phase::AwaitInfo, BootKind::Hello) if l.peer_hello.is_none() => {
                    let bh = BootHello::parse(&body).map_err(|e| e.to_string())?;
                    self.check_hello(&bh.hello, None)?;
                    if bh.hello.node != l.node {
                        return Err(format!(
                            "dialed node {} but node {} answered",
                            l.node, bh.hello.node
                        ));
                    }
                    if self.key.is_some() && bh.nonce != l.ours {
                        return Err("a Hello that does not echo our nonce".into());
                    }
                    l.peer_hello = Some(bh);
                }
                (Phase::AwaitInfo, BootKind::Info) if l.peer_hello.is_some() => {
                    let bh = l.peer_hello.expect("checked by the guard");
                    let c = l.challenge.expect("set with the phase");
                    if !bh.verify(
                        self.key.as_ref(),
                        auth::label::VERBS_BOOT_ACCEPTOR,
                        &c,
                        &l.ours,
                        &body,
                    ) {
                        return Err(format!(
                            "node {}'s Hello and Info failed their MAC (another job key?)",
                            l.node
                        ));
                    }
                    let info = InfoMsg::parse(&body).map_err(|e| e.to_string())?;
                    self.connect_qp(l, &info).map_err(|(why, _)| why)?;
                    write_boot(&mut l.ctl, &boot_msg(BootKind::Ready, &[]))
                        .map_err(|e| format!("bootstrap write: {e}"))?;
                    self.link_up(l, rx, events);
                }
                (Phase::AwaitReady, BootKind::Ready) => self.link_up(l, rx, events),
                (Phase::Up | Phase::Broken, _) => {}
                (p, k) => return Err(format!("bootstrap message {k:?} unexpected in {p:?}")),
            }
        }
        Ok(())
    }

    fn link_up(&mut self, l: &mut Link, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) {
        l.phase = Phase::Up;
        let now = Instant::now();
        // The peer's stream starts afresh before the agent hears of the link
        // (it would read what the last link left otherwise).
        rx.link(l.node).reset(FrameReader::new(), now);
        // The stream carries descriptors, the bytes are READ: the agent may steer
        // the next chunks while earlier ones are being READ.
        rx.link(l.node).set_steer_depth(STEER_DEPTH);
        l.last_tx = now;
        for p in &mut l.paths {
            p.next_qp_check = now + QP_CHECK_EVERY;
        }
        let paths: Vec<String> = l
            .paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.up)
            .map(|(r, p)| {
                format!(
                    "{}QP {} -> {}",
                    if self.rails.len() > 1 {
                        format!("rail {r}: ")
                    } else {
                        String::new()
                    },
                    p.qp.qpn(),
                    p.remote.map_or(0, |a| a.qp.qpn)
                )
            })
            .collect();
        log::info!(
            "verbs: node {} up ({}, {} credits{})",
            l.node,
            paths.join(", "),
            l.credits,
            if self.rails.len() > 1 {
                format!(", home rail {}", l.home)
            } else {
                String::new()
            }
        );
        events.push(LinkEvent::Up { node: l.node });
    }

    /// The link to `node` failed: the QP goes to the error state (no more of the
    /// peer's READs are served), and the agent hears of it (it reads what arrived,
    /// then closes the link).
    fn fail(&mut self, node: u32, why: Broken, events: &mut Vec<LinkEvent>) {
        self.break_link(node, why, false, events)
    }

    /// The peer broke the protocol (a SEND that does not parse, a descriptor outside
    /// what it advertised, ...): like [`fail`](Self::fail), but the agent hears of it as
    /// [`LinkEvent::Malformed`], which it handles like a malformed frame on tcp (the
    /// peer is counted malformed and declared lost, not resumed: it would only send
    /// the same again).
    fn malformed(&mut self, node: u32, why: Broken, events: &mut Vec<LinkEvent>) {
        self.break_link(
            node,
            format!("protocol error from the peer: {why}"),
            true,
            events,
        )
    }

    fn break_link(&mut self, node: u32, why: Broken, malformed: bool, events: &mut Vec<LinkEvent>) {
        let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) else {
            return;
        };
        if l.phase == Phase::Broken {
            return;
        }
        let was_up = l.phase == Phase::Up;
        l.phase = Phase::Broken;
        for p in &l.paths {
            let _ = p.qp.to_error();
        }
        log::warn!("verbs: link to node {node} failed: {why}");
        if was_up && malformed {
            events.push(LinkEvent::Malformed { node, reason: why });
        } else if was_up {
            events.push(LinkEvent::Down {
                node,
                reason: why,
                blocks: Vec::new(),
                closed: false,
            });
        } else {
            // Never up: nobody else knows of it.
            let l = self.links[node as usize].take().expect("checked above");
            self.drop_link(None, l);
        }
    }

    /// Forget a link: its receive slots are posted again, its QP destroyed; returns
    /// the blocks its queue and descriptors still referenced.
    fn drop_link(&mut self, poller: Option<&Poller>, mut l: Link) -> Vec<u64> {
        if let Some(p) = poller {
            p.delete(l.ctl.as_fd());
        }
        let _ = l.ctl.shutdown(std::net::Shutdown::Both);
        for (rail, p) in self.rails.iter_mut().zip(&l.paths) {
            rail.qpn_node.remove(&p.qp.qpn());
        }
        for it in l.rxq.drain(..) {
            if let RxItem::Data { rail, slot, .. } = it {
                let rail = &mut self.rails[rail as usize];
                Self::release_slot(&mut rail.rx_slots, &mut rail.reposts, slot);
            }
        }
        let mut blocks: Vec<u64> = l
            .outq
            .drain(..)
            .filter_map(|o| match o {
                Out::Block { free_after, .. } => free_after,
                Out::Bytes { .. } => None,
            })
            .collect();
        blocks.extend(l.rdv_out.drain(..).flatten());
        blocks.append(&mut l.freed);
        // Slots still counted for this link are no longer credited to anyone.
        for s in self.rails.iter_mut().flat_map(|r| r.rx_slots.iter_mut()) {
            if s.node == l.node && s.epoch == l.epoch {
                s.epoch = 0;
            }
        }
        drop(l); // destroys the QPs: the devices stop using its buffers
        self.repost_all();
        blocks
    }

    /// Take rail `r`'s completions; returns whether there were any.
    fn poll_cq(&mut self, r: usize, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        let mut any = false;
        let mut taken = 0;
        while taken < CQ_PER_POLL {
            self.wcs.clear();
            let mut wcs = std::mem::take(&mut self.wcs);
            let n = match self.rails[r].cq.poll(&mut wcs, 32) {
                Ok(n) => n,
                Err(e) => {
                    log::error!("verbs: {e}");
                    0
                }
            };
            for wc in &wcs {
                self.on_wc(r, wc, rx, events);
            }
            self.wcs = wcs;
            if n == 0 {
                break;
            }
            any = true;
            taken += n;
        }
        any
    }

    /// Take every rail's completions.
    fn poll_cqs(&mut self, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        let mut any = false;
        for r in 0..self.rails.len() {
            any |= self.poll_cq(r, rx, events);
        }
        any
    }

    /// Path `r` of the link to `node` failed (`why`). A path that carried no
    /// SENDs, while another is up, is dropped from the link: its queue pair goes to
    /// ERR and its outstanding READs are posted again on the others. Otherwise
    /// (stream bytes may be lost with it) the whole link fails.
    fn fail_path(&mut self, node: u32, r: usize, why: Broken, events: &mut Vec<LinkEvent>) {
        let rails = self.rails.len();
        let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) else {
            return;
        };
        if l.phase != Phase::Up || !l.paths.get(r).is_some_and(|p| p.up) {
            // A link in its handshake, broken already, or a path dropped before.
            return;
        }
        let others = l.paths.iter().enumerate().any(|(k, p)| k != r && p.up);
        let p = &l.paths[r];
        if rails == 1 || r == l.home || p.sends || !others {
            self.rails[r].c.downs += 1;
            let why = if rails > 1 {
                format!("rail {r} ({}): {why}", self.rails[r].ctx.name())
            } else {
                why
            };
            self.fail(node, why, events);
            return;
        }
        let p = &mut l.paths[r];
        p.up = false;
        let _ = p.qp.to_error();
        let mut moved = 0u64;
        let mut bounce = false;
        // Posted and not seen complete, then queued and not posted yet.
        let kinds: Vec<SqKind> =
            p.sq.drain(..)
                .map(|e| e.kind)
                .chain(p.wr_kinds.drain(..))
                .collect();
        for kind in kinds {
            match kind {
                SqKind::ReadPool(piece) => {
                    l.reissue.push_back(piece);
                    moved += 1;
                }
                SqKind::ReadBounce(_) => bounce = true,
                SqKind::Send { .. } => {}
            }
        }
        p.reads_out = 0;
        p.read_bytes = 0;
        p.wrs.clear();
        self.stats.path_downs += 1;
        self.stats.reads_reissued += moved;
        let rail = &mut self.rails[r];
        rail.c.downs += 1;
        rail.c.reissued += moved;
        log::warn!(
            "verbs: node {node}: rail {r} ({}) failed: {why}; {moved} READ(s) moved to the other rails",
            rail.ctx.name()
        );
        if bounce {
            // Bounce READs go on the home path only: cannot happen.
            self.fail(
                node,
                format!("rail {r} failed with a bounce READ on it"),
                events,
            );
        }
    }

    fn on_wc(&mut self, r: usize, wc: &Wc, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) {
        if !wc.is_ok() {
            self.stats.wc_errors += 1;
        }
        if wc.wr_id & RECV_BIT != 0 {
            let slot = (wc.wr_id & 0xffff_ffff) as u32;
            if slot as usize >= self.rails[r].rx_slots.len() {
                return;
            }
            let owner = self.rails[r].qpn_node.get(&wc.qp_num).copied();
            let Some(LinkId { node, epoch }) = owner.filter(|_| wc.is_ok() && wc.opcode == WC_RECV)
            else {
                // A QP that is gone, or a flushed/failed receive: the buffer goes back.
                if let (Some(LinkId { node, .. }), false) =
                    (owner, wc.status == WC_FLUSH_ERR || wc.is_ok())
                {
                    self.fail_path(
                        node,
                        r,
                        format!(
                            "receive failed: {} (vendor error {:#x})",
                            wc.status_str(),
                            wc.vendor_err
                        ),
                        events,
                    );
                }
                self.rails[r].reposts.push(slot);
                return;
            };
            self.on_recv(r, node, epoch, slot, wc.byte_len as usize, rx, events);
            return;
        }
        let node = ((wc.wr_id >> 48) & 0x7fff) as u32;
        let epoch = ((wc.wr_id >> 32) & 0xffff) as u16;
        let seq = wc.wr_id & 0xffff_ffff;
        let Some(l) = self
            .links
            .get_mut(node as usize)
            .and_then(|l| l.as_mut())
            .filter(|l| l.epoch == epoch)
        else {
            return; // a completion of a link that is gone
        };
        if !l.paths.get(r).is_some_and(|p| p.up) || (l.phase == Phase::Broken && !wc.is_ok()) {
            // A path dropped (its READs were moved to others), or more errors of
            // a link that failed already.
            return;
        }
        if !wc.is_ok() {
            let hint = if wc.status == WC_RNR_RETRY_EXC_ERR {
                " (the peer had no receive buffer: credits out of step?)"
            } else {
                ""
            };
            let why = format!(
                "work completion error: {} (status {}, vendor error {:#x}){hint}",
                wc.status_str(),
                wc.status,
                wc.vendor_err
            );
            // What completed before it on this queue is done (completions come
            // in order); the rest goes again elsewhere (or with the link).
            done_upto(l, r, seq, false, &self.pool, rx, &mut self.stats);
            self.fail_path(node, r, why, events);
            return;
        }
        done_upto(l, r, seq, true, &self.pool, rx, &mut self.stats);
        l.in_flight = rx.link(l.node).steers() as u32;
    }

    #[allow(clippy::too_many_arguments)]
    fn on_recv(
        &mut self,
        r: usize,
        node: u32,
        epoch: u16,
        slot: u32,
        len: usize,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) else {
            self.rails[r].reposts.push(slot);
            return;
        };
        let rail = &mut self.rails[r];
        self.stats.recvs += 1;
        self.stats.recv_bytes += len as u64;
        rail.c.recvs += 1;
        if let Some(p) = l.paths.get_mut(r) {
            p.sends = true;
        }
        rx.link(l.node).heard(Instant::now());
        let buf = rail.rx_bufs.slice(slot as usize * MSG, len.min(MSG));
        let msg = match StreamMsg::parse(buf) {
            Ok(m) => m,
            Err(why) => {
                rail.reposts.push(slot);
                self.malformed(node, why.to_string(), events);
                return;
            }
        };
        l.credits += msg.credits() as u32;
        for _ in 0..msg.rdv_done() {
            match l.rdv_out.pop_front() {
                Some(b) => l.freed.extend(b),
                None => {
                    rail.reposts.push(slot);
                    self.malformed(node, "a rendezvous completion for nothing".into(), events);
                    return;
                }
            }
        }
        let mut refs = 0;
        for it in msg.items() {
            let it = match it {
                Item::Data(d) => RxItem::Data {
                    rail: r as u8,
                    slot,
                    start: d.start as u32,
                    end: d.end as u32,
                },
                Item::Rdv(rdv) => RxItem::Rdv(Fetch {
                    rdv,
                    done: 0,
                    id: 0,
                    piece: 0,
                }),
            };
            if let RxItem::Rdv(Fetch { rdv, .. }) = &it {
                // Checked before any READ is posted: see `Rdv::check`.
                let checked = match l.remote.as_ref() {
                    Some(rm) => rdv.check(rm),
                    None => Err(BadRdv::WrongKey {
                        got: rdv.rkey,
                        advertised: 0,
                    }),
                };
                if let Err(bad) = checked {
                    self.stats.bad_descriptors += 1;
                    // Items of this SEND already queued keep their slot references;
                    // the link is closed soon and releases them.
                    rail.rx_slots[slot as usize] = RxSlot { refs, node, epoch };
                    if refs == 0 {
                        rail.reposts.push(slot);
                    }
                    self.malformed(
                        node,
                        format!("a bad rendezvous descriptor ({bad}); refused before any READ"),
                        events,
                    );
                    return;
                }
            } else {
                refs += 1;
            }
            let it = match it {
                RxItem::Rdv(mut f) => {
                    f.id = l.fetches.add();
                    RxItem::Rdv(f)
                }
                d => d,
            };
            l.rxq.push_back(it);
        }
        rail.rx_slots[slot as usize] = RxSlot { refs, node, epoch };
        if refs == 0 {
            rail.reposts.push(slot);
        }
    }

    /// Move what arrived for `node` on, as far as it can go: into the reader, into the
    /// pool, or READs posted. `stamp`: the round to mark a newly seen descriptor with.
    fn drain(&mut self, node: u32, stamp: u64, rx: &mut dyn Inflow) {
        let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) else {
            return;
        };
        if l.phase == Phase::Broken {
            return;
        }
        let stream = rx.link(l.node);
        let pool = &self.pool;
        let rails = &mut self.rails;
        // READs of a failed path first: their pool ranges were given out already.
        while let Some(&piece) = l.reissue.front() {
            let Some(r) = pick_path(l, rails) else {
                break;
            };
            let out = post_read(l, r, piece, false, &mut rails[r], pool);
            let s = &mut self.stats;
            s.read_bytes_in_flight_max = s.read_bytes_in_flight_max.max(out);
            l.reissue.pop_front();
        }
        loop {
            if l.bounce_busy {
                break;
            }
            let Some(front) = l.rxq.front_mut() else {
                break;
            };
            match front {
                RxItem::Data {
                    rail,
                    slot,
                    start,
                    end,
                } => {
                    let steering = stream.steer_mut().is_some();
                    if !steering && stream.full() {
                        break;
                    }
                    let (rail, s, a, e) = (*rail as usize, *slot, *start as usize, *end as usize);
                    let bytes = rails[rail].rx_bufs.slice(s as usize * MSG + a, e - a);
                    let used = stream.absorb(pool, bytes);
                    let RxItem::Data { start, .. } = l.rxq.front_mut().expect("still there") else {
                        unreachable!("the front is a Data item")
                    };
                    *start += used as u32;
                    if (*start as usize) == e {
                        l.rxq.pop_front();
                        let rail = &mut rails[rail];
                        Self::release_slot(&mut rail.rx_slots, &mut rail.reposts, s);
                    }
                }
                RxItem::Rdv(f) => {
                    let mut f = *f;
                    if let Some(st) = stream.steer_mut().filter(|s| s.left > 0) {
                        if f.piece == 0 {
                            let up = l.paths.iter().filter(|p| p.up).count();
                            f.piece = stripe_piece(f.rdv.len, up);
                        }
                        let Some(r) = pick_path(l, rails) else {
                            break;
                        };
                        let n = st.left.min(f.rdv.len - f.done).min(f.piece);
                        let last = f.done + n == f.rdv.len;
                        let piece = Piece {
                            fetch: f.id,
                            remote_off: f.rdv.off + f.done,
                            local_off: st.off,
                            len: n as u32,
                            steer: st.id,
                        };
                        l.fetches.posted(f.id, last);
                        let out = post_read(l, r, piece, false, &mut rails[r], pool);
                        self.stats.reads += 1;
                        self.stats.read_bytes += n;
                        st.off += n;
                        st.left -= n;
                        st.reads += 1;
                        f.done += n;
                        // Chunks steered and not yet landed, this one included.
                        let chunks = stream.steers() as u64;
                        let reads: u32 = l.paths.iter().map(|p| p.reads_out).sum();
                        let s = &mut self.stats;
                        s.chunks_in_flight_max = s.chunks_in_flight_max.max(chunks);
                        s.reads_in_flight_max = s.reads_in_flight_max.max(reads as u64);
                        s.read_bytes_in_flight_max = s.read_bytes_in_flight_max.max(out);
                        if last {
                            l.rxq.pop_front();
                            l.rdv_seen = None;
                        } else if let Some(RxItem::Rdv(g)) = l.rxq.front_mut() {
                            *g = f;
                        }
                        continue;
                    }
                    let skipping = stream.steer_mut().is_some_and(|s| s.skip > 0);
                    if stream.steering() && !skipping {
                        // Earlier steers' READs are under way: the agent steers this
                        // one when it has room to (or when they landed); no bounce.
                        break;
                    }
                    if !skipping {
                        if stream.full() {
                            break;
                        }
                        match l.rdv_seen {
                            None => {
                                l.rdv_seen = Some(stamp);
                                break;
                            }
                            // Give the agent the round to see the chunk's header and steer.
                            Some(r) if r >= self.round => break,
                            Some(_) => {}
                        }
                        if matches!(stream.reader.peek_frame(), Ok(Some(_))) {
                            break; // it has frames to take first
                        }
                    }
                    // Into the bounce buffer, registered with the home rail's device.
                    let home = l.home;
                    if l.bounce.is_none() || !path_has_room(&l.paths[home], &rails[home]) {
                        break;
                    }
                    let n = (f.rdv.len - f.done).min(BOUNCE as u64);
                    let last = f.done + n == f.rdv.len;
                    let piece = Piece {
                        fetch: f.id,
                        remote_off: f.rdv.off + f.done,
                        local_off: 0,
                        len: n as u32,
                        steer: 0,
                    };
                    l.fetches.posted(f.id, last);
                    let out = post_read(l, home, piece, true, &mut rails[home], pool);
                    l.bounce_busy = true;
                    self.stats.bounce_reads += 1;
                    let s = &mut self.stats;
                    s.read_bytes_in_flight_max = s.read_bytes_in_flight_max.max(out);
                    f.done += n;
                    if last {
                        l.rxq.pop_front();
                        l.rdv_seen = None;
                    } else if let Some(RxItem::Rdv(g)) = l.rxq.front_mut() {
                        *g = f;
                    }
                    break;
                }
            }
        }
        l.in_flight = stream.steers() as u32;
    }

    /// Build and queue SENDs for `node`: stream bytes and descriptors while credits,
    /// slots and send queue room last; a header-only SEND when credits or rendezvous
    /// completions are owed.
    fn transmit(&mut self, node: u32) {
        let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) else {
            return;
        };
        if l.phase != Phase::Up {
            return;
        }
        // Descriptors name the first rail's rkey (the one the peer checks them
        // against); its READs on another rail use that rail's.
        let rkey = self.rails[0].pool_rkey();
        let home = l.home;
        let sq_depth = self.rails[home].sq_depth;
        let owe_threshold = (self.credits / 2).max(2);
        loop {
            let data = l.queued > 0 && !(l.rdv_out.len() >= RDV_MAX_OUT && front_is_rdv(l));
            let control = l.rdv_done_owed > 0 || l.owed >= owe_threshold;
            if !data && !control {
                break;
            }
            // The last credit is kept for a SEND that returns credits: if both sides
            // spent their last one on anything else (a rendezvous completion, data),
            // neither could ever tell the other of its free buffers again.
            if l.credits < 2 {
                if data && !l.credit_stalled {
                    l.credit_stalled = true;
                    self.stats.credit_stalls += 1;
                }
                if l.credits == 0 || !control || l.owed == 0 {
                    break;
                }
            }
            if l.slot_next - l.slot_free >= SEND_SLOTS || sq_used(&l.paths[home]) + 1 >= sq_depth {
                break;
            }
            let with_data = data && l.credits >= 2;
            if with_data {
                l.credit_stalled = false;
            }
            let slot = l.slot_next;
            let at = (slot % SEND_SLOTS) as usize * MSG;
            let slots = l.slots.as_mut().expect("an up link has its send slots");
            let mut w = StreamWriter::new(slots.slice_mut(at, MSG));
            let credits = l.owed.min(u16::MAX as u32);
            let done = l.rdv_done_owed.min(u16::MAX as u32);
            w.set_header(credits as u16, done as u16);
            l.owed -= credits;
            l.rdv_done_owed -= done;
            while let (true, Some(front)) = (with_data, l.outq.front_mut()) {
                if front.remaining() == 0 {
                    if let Some(Out::Block {
                        free_after: Some(b),
                        ..
                    }) = l.outq.pop_front()
                    {
                        l.freed.push(b);
                    }
                    continue;
                }
                let finished = match front {
                    Out::Bytes { buf, pos } => {
                        let n = w.data_room().min(buf.len() - *pos);
                        if n == 0 {
                            break;
                        }
                        w.data(n).copy_from_slice(&buf[*pos..*pos + n]);
                        *pos += n;
                        l.queued -= n;
                        *pos == buf.len()
                    }
                    Out::Block {
                        off,
                        len,
                        pos,
                        free_after,
                    } => {
                        let rem = *len - *pos;
                        let valid = self.pool.block_slice(*off + *pos, rem).is_some();
                        if rem >= RDV_MIN && valid {
                            if l.rdv_out.len() >= RDV_MAX_OUT || !w.rdv_fits() {
                                break;
                            }
                            w.rdv(&Rdv {
                                off: *off + *pos,
                                len: rem,
                                rkey,
                            });
                            self.stats.rdv_sent += 1;
                            self.stats.rdv_bytes += rem;
                            l.rdv_out.push_back(free_after.take());
                            *pos = *len;
                            l.queued -= rem as usize;
                            true
                        } else {
                            let n = (w.data_room() as u64).min(rem);
                            if n == 0 {
                                break;
                            }
                            let dst = w.data(n as usize);
                            match self.pool.block_slice(*off + *pos, n) {
                                Some(src) => dst.copy_from_slice(src),
                                // Cannot happen for blocks the agent queued; zeros keep
                                // the stream's framing intact.
                                None => dst.fill(0),
                            }
                            *pos += n;
                            l.queued -= n as usize;
                            if *pos == *len {
                                l.freed.extend(free_after.take());
                                true
                            } else {
                                false
                            }
                        }
                    }
                };
                if finished {
                    l.outq.pop_front();
                } else if w.data_room() == 0 {
                    break;
                }
            }
            let len = w.len();
            if w.is_empty() && credits == 0 && done == 0 {
                break;
            }
            l.credits -= 1;
            l.slot_next += 1;
            let slots = l.slots.as_ref().expect("an up link has its send slots");
            let (slots_addr, slots_lkey) = (slots.addr(at), slots.mr().lkey());
            let full = l.slot_next - l.slot_free >= SEND_SLOTS;
            let (node, epoch) = (l.node, l.epoch);
            let p = &mut l.paths[home];
            p.sends = true;
            let inline = len <= p.qp.max_inline() as usize;
            p.unsignaled += 1;
            let signaled =
                p.unsignaled >= SIGNAL_EVERY || full || sq_used(p) + 2 + SIGNAL_EVERY >= sq_depth;
            if signaled {
                p.unsignaled = 0;
            }
            p.wrs.push(SendWr {
                wr_id: wr_id(node, epoch, p.wr_seq),
                op: SendOp::Send { inline },
                local: Sge {
                    addr: slots_addr,
                    len: len as u32,
                    lkey: slots_lkey,
                },
                signaled,
            });
            p.wr_kinds.push(SqKind::Send { slot });
            p.wr_seq += 1;
            self.stats.sends += 1;
            self.stats.send_bytes += len as u64;
            self.rails[home].c.sends += 1;
            self.rails[home].c.send_bytes += len as u64;
            if inline {
                self.stats.inline_sends += 1;
            }
            l.last_tx = Instant::now();
        }
    }

    /// Post what `transmit`/`drain` queued for `node`, one list per path.
    fn post(&mut self, node: u32, events: &mut Vec<LinkEvent>) {
        for r in 0..self.rails.len() {
            let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) else {
                return;
            };
            let Some(p) = l.paths.get_mut(r).filter(|p| !p.wrs.is_empty()) else {
                continue;
            };
            // Even an all-unsignalled list must end signalled when the queue could not
            // otherwise be seen to drain: READs are always signalled; sends every Nth.
            // SAFETY: every local buffer lies in a region of this QP's PD: send slots
            // and the bounce buffer (owned by the link, registered with its home rail,
            // the only path that posts into them; dropped after its QPs: field order)
            // or the pool (registered with every rail for the transport's life, mapped
            // while `self.pool` lives; the lkey is this rail's). A send slot is reused
            // only after a later signalled completion shows its request done
            // (`slot_free`); the bounce buffer is read only after its READ's
            // completion; pool ranges are checked against the block region (the
            // agent's steer target) when steered. Remote ranges were checked against
            // what the peer advertised (the rkey is this rail's, from its Info).
            let res = unsafe { p.qp.post_send(&p.wrs) };
            let n = p.wrs.len();
            p.wrs.clear();
            let kinds = std::mem::take(&mut p.wr_kinds);
            self.stats.post_calls += 1;
            match res {
                Ok(()) => {
                    let first = p.wr_seq - n as u64;
                    for (i, kind) in kinds.into_iter().enumerate() {
                        p.sq.push_back(SqEntry {
                            seq: first + i as u64,
                            kind,
                        });
                    }
                }
                Err(e) => {
                    // Not posted: READs go again on another path (or with the link).
                    for k in kinds {
                        p.sq.push_back(SqEntry {
                            seq: u64::MAX,
                            kind: k,
                        });
                    }
                    self.fail_path(node, r, e.to_string(), events)
                }
            }
        }
    }

    /// Arm the CQs so the channels wake a sleeping agent; look once more after
    /// arming (completions that came in between do not raise an event).
    fn arm(&mut self, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        let mut any = false;
        for r in 0..self.rails.len() {
            if self.rails[r].armed {
                continue;
            }
            match self.rails[r].cq.arm() {
                Ok(()) => self.rails[r].armed = true,
                Err(e) => log::warn!("verbs: {e}"),
            }
            any |= self.poll_cq(r, rx, events);
        }
        any
    }

    /// After completions: move bytes on, post READs and SENDs, refill the SRQs.
    fn service(&mut self, stamp: u64, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        let mut any = false;
        let seqs = |l: &Link| l.paths.iter().map(|p| p.wr_seq).sum::<u64>();
        for j in 0..self.links.len() as u32 {
            let Some(l) = self.links[j as usize].as_ref() else {
                continue;
            };
            if l.phase != Phase::Up {
                continue;
            }
            let before = (l.rxq.len(), rx.link(j).reader.buffered(), seqs(l));
            self.drain(j, stamp, rx);
            self.transmit(j);
            self.post(j, events);
            if let Some(l) = self.links[j as usize].as_ref() {
                any |= before != (l.rxq.len(), rx.link(j).reader.buffered(), seqs(l));
            }
        }
        self.repost_all();
        any
    }

    /// Ask the device for the state of each up link's QPs, every [`QP_CHECK_EVERY`]
    /// per path, and fail a path whose QP is in the error state. A QP that went to
    /// ERR (forced by `wyvern break-link`, or on its own) only reports it through the
    /// completion of a work request posted on it: its receives come from the shared
    /// receive queue, whose buffers are not flushed, so a link with nothing to send
    /// (or whose data waits for credits the dead QP will never bring) would
    /// otherwise stay "up" and silent until the agent's peer timeout, or forever
    /// while the agent keeps it alive for a stalled receiver.
    fn check_qp_states(&mut self, now: Instant, events: &mut Vec<LinkEvent>) {
        for j in 0..self.links.len() {
            for r in 0..self.rails.len() {
                let Some(l) = self.links[j].as_mut() else {
                    break;
                };
                if l.phase != Phase::Up {
                    break;
                }
                let Some(p) = l.paths.get_mut(r).filter(|p| p.up) else {
                    continue;
                };
                if now < p.next_qp_check {
                    continue;
                }
                p.next_qp_check = now + QP_CHECK_EVERY;
                let state = match p.qp.state() {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("verbs: node {j}: {e}");
                        continue;
                    }
                };
                if state == QPS_ERR || state == QPS_SQE {
                    self.stats.qp_errors_found += 1;
                    let why = format!(
                        "queue pair {} found in the {} state",
                        p.qp.qpn(),
                        qp_state_name(state)
                    );
                    self.fail_path(j as u32, r, why, events);
                }
            }
        }
    }

    /// Read each rail's port state every [`PORT_CHECK_EVERY`] (in case its event
    /// did not come): a port found down fails its paths.
    fn check_ports(&mut self, now: Instant, events: &mut Vec<LinkEvent>) {
        if now < self.next_port_check {
            return;
        }
        self.next_port_check = now + PORT_CHECK_EVERY;
        for r in 0..self.rails.len() {
            let Ok(port) = self.rails[r].ctx.query_port() else {
                continue;
            };
            self.port_state(r, port.is_active(), "its port is not active", events);
        }
    }

    /// A rail whose port came back (at least [`REJOIN_AFTER`] ago): each up link
    /// that has no path on it, once idle (nothing queued, nothing arriving or
    /// being READ), fails with that reason, so that the agent's session resumes
    /// over a new link, which takes the rail up again; nothing is lost (as for any
    /// failed link). Done for the rail once no such link is left.
    fn rejoin(&mut self, now: Instant, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) {
        for r in 0..self.rails.len() {
            let rail = &self.rails[r];
            if !rail.port_up || rail.rejoin_at.is_none_or(|t| now < t) {
                continue;
            }
            let name = rail.ctx.name().to_string();
            let mut waiting = false;
            for j in 0..self.links.len() {
                let Some(l) = self.links[j].as_ref() else {
                    continue;
                };
                if l.phase != Phase::Up || r >= l.common || l.paths[r].up {
                    continue;
                }
                let idle = l.queued == 0
                    && l.outq.is_empty()
                    && l.rxq.is_empty()
                    && l.rdv_out.is_empty()
                    && l.reissue.is_empty()
                    && l.paths.iter().all(|p| p.reads_out == 0)
                    && !rx.link(j as u32).steering();
                if !idle {
                    waiting = true;
                    continue;
                }
                self.stats.rails_rejoined += 1;
                self.fail(
                    j as u32,
                    format!("rail {r} ({name}) is back: a new link takes it up again"),
                    events,
                );
            }
            if !waiting {
                self.rails[r].rejoin_at = None;
            }
        }
    }

    /// Rail `r`'s port was found up or down: down fails its paths (their READs
    /// move to the other rails, or their links fail); new links use it again once up.
    fn port_state(&mut self, r: usize, active: bool, why: &str, events: &mut Vec<LinkEvent>) {
        let rail = &mut self.rails[r];
        if rail.port_up == active {
            return;
        }
        rail.port_up = active;
        if active {
            log::info!(
                "verbs: rail {r} ({}): port up again: links without it are remade to use it \
                 when idle",
                rail.ctx.name()
            );
            rail.rejoin_at = Some(Instant::now() + REJOIN_AFTER);
            return;
        }
        rail.rejoin_at = None;
        rail.c.port_downs += 1;
        log::warn!("verbs: rail {r} ({}): {why}", rail.ctx.name());
        let name = rail.ctx.name().to_string();
        for j in 0..self.links.len() as u32 {
            self.fail_path(j, r, format!("port of {name} down ({why})"), events);
        }
    }

    fn async_events(&mut self, r: usize, events: &mut Vec<LinkEvent>) {
        while let Some(ev) = self.rails[r].ctx.next_async_event() {
            self.stats.async_events += 1;
            let rail = &self.rails[r];
            let name = rail.ctx.name().to_string();
            let node = ev
                .qp_num
                .and_then(|q| rail.qpn_node.get(&q))
                .map(|id| id.node);
            if ev.is_qp_fatal() || ev.is_qp_last_wqe() {
                log::warn!(
                    "verbs: {} on QP {:?} of {name} (node {node:?})",
                    ev.name,
                    ev.qp_num
                );
                if let Some(n) = node {
                    // "Last WQE reached": a QP attached to the shared receive queue
                    // entered the error state (on its own, or forced by us - then
                    // the path is already failed and this does nothing).
                    let path_up = self.links[n as usize]
                        .as_ref()
                        .is_some_and(|l| l.phase == Phase::Up && l.paths[r].up);
                    if ev.is_qp_last_wqe() && path_up {
                        self.stats.qp_errors_found += 1;
                    }
                    if path_up {
                        self.fail_path(n, r, format!("asynchronous event: {}", ev.name), events);
                    }
                }
            } else if ev.is_device_fatal() {
                log::error!("verbs: device {name}: {}", ev.name);
                for j in 0..self.links.len() as u32 {
                    self.fail_path(j, r, format!("device {name}: {}", ev.name), events);
                }
            } else if ev.is_port_err() {
                self.port_state(
                    r,
                    false,
                    &format!("asynchronous event: {}", ev.name),
                    events,
                );
            } else if ev.is_port_active() {
                self.port_state(r, true, ev.name, events);
            } else {
                log::info!(
                    "verbs: device {name}: {} (port {:?}, QP {:?})",
                    ev.name,
                    ev.port,
                    ev.qp_num
                );
            }
        }
    }
}

/// Path `r`'s work requests up to `seq` completed (`through`: `seq` itself too;
/// otherwise it failed, and it and what follows stay for [`VerbsTransport::fail_path`]).
fn done_upto(
    l: &mut Link,
    r: usize,
    seq: u64,
    through: bool,
    pool: &Pool,
    rx: &mut dyn Inflow,
    stats: &mut VerbsCounters,
) {
    let mut bounce_done = None;
    while let Some(e) = l.paths[r].sq.front() {
        let this = e.seq & 0xffff_ffff == seq;
        if this && !through {
            break;
        }
        let e = l.paths[r].sq.pop_front().expect("looked at above");
        match e.kind {
            SqKind::Send { slot } => l.slot_free = l.slot_free.max(slot + 1),
            SqKind::ReadPool(piece) => {
                l.paths[r].reads_out -= 1;
                l.paths[r].read_bytes -= piece.len as u64;
                rx.link(l.node).read_landed(piece.steer);
                fetch_done(l, piece.fetch);
            }
            SqKind::ReadBounce(piece) => {
                l.paths[r].reads_out -= 1;
                l.paths[r].read_bytes -= piece.len as u64;
                bounce_done = Some(piece);
            }
        }
        if this {
            break;
        }
    }
    if let Some(piece) = bounce_done {
        l.bounce_busy = false;
        let len = piece.len as usize;
        stats.bounce_bytes += len as u64;
        let bounce = l.bounce.as_ref().expect("an up link has its bounce buffer");
        let bytes = bounce.slice(0, len);
        let stream = rx.link(l.node);
        let mut at = 0;
        while at < bytes.len() {
            at += stream.absorb(pool, &bytes[at..]);
        }
        fetch_done(l, piece.fetch);
    }
}

/// One READ of descriptor `id` completed: the descriptors at the front whose
/// READs are all posted and done are reported fetched, in order.
fn fetch_done(l: &mut Link, id: u64) {
    l.rdv_done_owed += l.fetches.done(id);
}

/// The bytes of each READ of a descriptor of `len` bytes with `paths` paths up:
/// about an equal share per path (at least [`STRIPE_MIN`], at most
/// [`READ_PIECE`], a multiple of 4 KiB); one path: [`READ_PIECE`].
fn stripe_piece(len: u64, paths: usize) -> u64 {
    if paths <= 1 {
        return READ_PIECE;
    }
    let share = len.div_ceil(paths as u64).next_multiple_of(4096);
    share.clamp(STRIPE_MIN, READ_PIECE)
}

/// Whether path `p` (on `rail`) is up and can take one more READ: fewer than
/// the QP's `max_reads` outstanding, and fewer bytes than [`READ_WINDOW`].
fn path_has_room(p: &Path, rail: &Rail) -> bool {
    p.up && p.reads_out < rail.max_reads
        && p.read_bytes < READ_WINDOW
        && sq_used(p) + 1 < rail.sq_depth
}

/// The next path, round robin, that can take a READ.
fn pick_path(l: &mut Link, rails: &[Rail]) -> Option<usize> {
    let n = l.paths.len();
    let r = (0..n)
        .map(|k| (l.next_path + k) % n)
        .find(|&r| path_has_room(&l.paths[r], &rails[r]))?;
    l.next_path = (r + 1) % n;
    Some(r)
}

/// Queue a READ of `piece` on path `r`: into the pool (registered on every rail),
/// or into the bounce buffer (`bounce`: the home path only). Returns the bytes of
/// READs then outstanding on the path.
fn post_read(
    l: &mut Link,
    r: usize,
    piece: Piece,
    bounce: bool,
    rail: &mut Rail,
    pool: &Pool,
) -> u64 {
    let remote_base = l.remote.map_or(0, |i| i.base);
    let (addr, lkey, kind) = match (bounce, l.bounce.as_ref()) {
        (true, Some(b)) => (b.addr(0), b.mr().lkey(), SqKind::ReadBounce(piece)),
        // An up link has its bounce buffer (`connect_qp`): never into the pool instead.
        (true, None) => return l.paths[r].read_bytes,
        (false, _) => (
            pool.base_addr() as u64 + piece.local_off,
            rail.pool_lkey(),
            SqKind::ReadPool(piece),
        ),
    };
    let (node, epoch) = (l.node, l.epoch);
    let p = &mut l.paths[r];
    let rkey = p.remote.map_or(0, |a| a.rkey);
    p.wrs.push(SendWr {
        wr_id: wr_id(node, epoch, p.wr_seq),
        op: SendOp::Read {
            remote_addr: remote_base + piece.remote_off,
            rkey,
        },
        local: Sge {
            addr,
            len: piece.len,
            lkey,
        },
        signaled: true,
    });
    p.wr_kinds.push(kind);
    p.wr_seq += 1;
    p.unsignaled = 0;
    p.reads_out += 1;
    p.read_bytes += piece.len as u64;
    if !bounce {
        rail.c.reads += 1;
        rail.c.read_bytes += piece.len as u64;
    }
    p.read_bytes
}

/// Whether the next thing to send is a rendezvous descriptor.
fn front_is_rdv(l: &Link) -> bool {
    matches!(l.outq.front(), Some(Out::Block { len, pos, .. }) if *len - *pos >= RDV_MIN)
}

/// The send queue's entries in use: posted and not seen complete, plus queued to post.
fn sq_used(p: &Path) -> u32 {
    (p.sq.len() + p.wrs.len()) as u32
}

impl Transport for VerbsTransport {
    fn name(&self, _node: Option<u32>) -> &'static str {
        "verbs"
    }

    fn local_addr(&self) -> String {
        self.addr.to_string()
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
            TOK_LINK => self.serve_link(poller, idx, rx, events),
            TOK_PENDING => self.serve_pending(poller, idx as usize, events),
            _ => match token {
                TOK_LISTEN => {
                    let mut room = MAX_PENDING.saturating_sub(self.pending_count());
                    while let Ok((mut s, addr)) = self.listener.accept() {
                        if !self.may_be_a_peer(addr) {
                            // Not from any node's address: closed before it takes a slot.
                            self.stats.handshakes_failed += 1;
                            log::debug!(
                                "verbs: closed a bootstrap connection from {addr}: no node has that address"
                            );
                            continue;
                        }
                        if room == 0 {
                            // Closed on drop, before anything is read.
                            self.refuse(addr, now);
                            continue;
                        }
                        if let Err(e) = s.set_nonblocking(true).and_then(|_| s.set_nodelay(true)) {
                            log::warn!("verbs: cannot set up a connection from {addr}: {e}");
                            continue;
                        }
                        // The acceptor speaks first: its challenge.
                        let ours = auth::random_bytes::<NONCE_LEN>();
                        if let Err(e) = write_boot(&mut s, &boot_msg(BootKind::Challenge, &ours)) {
                            log::debug!("verbs: cannot challenge a connection from {addr}: {e}");
                            continue;
                        }
                        let slot = crate::slab::vacant(&mut self.pending);
                        if let Err(e) = poller.add(s.as_fd(), TOK_PENDING | slot as u32) {
                            log::warn!("verbs: cannot watch a connection from {addr}: {e}");
                            continue;
                        }
                        self.pending[slot] = Some(Pending {
                            s,
                            buf: Vec::new(),
                            since: now,
                            from: addr,
                            ours,
                            hello: None,
                        });
                        room -= 1;
                    }
                }
                t if (TOK_CQ..TOK_CQ + self.rails.len() as u32).contains(&t) => {
                    let r = (t - TOK_CQ) as usize;
                    match self.rails[r].cq.take_events() {
                        Ok(n) => self.stats.cq_events += n as u64,
                        Err(e) => log::warn!("verbs: {e}"),
                    }
                    self.rails[r].armed = false;
                    self.poll_cq(r, rx, events);
                    self.service(self.round, rx, events);
                }
                t if (TOK_ASYNC..TOK_ASYNC + self.rails.len() as u32).contains(&t) => {
                    self.async_events((t - TOK_ASYNC) as usize, events)
                }
                _ => {}
            },
        }
    }

    fn tick(
        &mut self,
        poller: &Poller,
        now: Instant,
        rx: &mut dyn Inflow,
        events: &mut Vec<LinkEvent>,
    ) {
        while let Some(d) = self.dialer.poll() {
            let j = d.node as usize;
            self.dialing[j] = false;
            if self.links[j].is_some() {
                continue;
            }
            let s = match d.result.and_then(|s| {
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("verbs: dial node {j}: {e}");
                    self.next_dial[j] = now + REDIAL;
                    continue;
                }
            };
            // Our Hello and Info go out once the acceptor's challenge came.
            let l = match self.new_link(d.node, s, Phase::AwaitChallenge) {
                Ok(l) => l,
                Err(e) => {
                    log::error!("verbs: cannot make a queue pair for node {j}: {e}");
                    self.next_dial[j] = now + Duration::from_secs(1);
                    continue;
                }
            };
            self.install(poller, l, events);
        }
        // Handshakes that take too long.
        for slot in 0..self.pending.len() {
            if self.pending[slot]
                .as_ref()
                .is_some_and(|p| now.duration_since(p.since) > HANDSHAKE_TIMEOUT)
            {
                if let Some(p) = self.pending[slot].take() {
                    self.drop_pending(
                        poller,
                        p,
                        &format!("no complete handshake within {HANDSHAKE_TIMEOUT:?}"),
                    );
                }
            }
        }
        for j in 0..self.links.len() {
            let stale = self.links[j].as_ref().and_then(|l| {
                (matches!(
                    l.phase,
                    Phase::AwaitChallenge | Phase::AwaitInfo | Phase::AwaitReady
                ) && now.duration_since(l.since) > HANDSHAKE_TIMEOUT)
                    .then_some(l.phase)
            });
            if let Some(phase) = stale {
                if let Some(l) = self.links[j].take() {
                    self.drop_link(Some(poller), l);
                }
                let why = match phase {
                    Phase::AwaitChallenge => format!(
                        "no challenge within {HANDSHAKE_TIMEOUT:?} (an older wyvern, whose \
                         verbs bootstrap sends none? every agent of a job must run the same version)"
                    ),
                    _ => format!("not done within {HANDSHAKE_TIMEOUT:?}"),
                };
                self.handshake_failed(&format!("handshake with node {j}"), &why);
                self.next_dial[j] = now + REDIAL;
            }
        }
        // The higher id dials the lower; it goes on dialing a peer that is not up.
        for j in 0..(self.me as usize) {
            if self.links[j].is_none() && !self.dialing[j] && now >= self.next_dial[j] {
                self.dialing[j] = true;
                self.next_dial[j] = now + REDIAL;
                let wake = self.wake.clone();
                self.dialer
                    .dial(j as u32, self.bootstrap[j], move || wake());
            }
        }
        // Credits owed to a quiet peer go out with the next SEND; a peer that
        // sends nothing needs none. The QP's own timeouts (retry count, RNR
        // retries) turn a dead peer into an error on the next work request.
        self.check_qp_states(now, events);
        self.check_ports(now, events);
        self.rejoin(now, rx, events);
    }

    fn poll(&mut self, _now: Instant, rx: &mut dyn Inflow, events: &mut Vec<LinkEvent>) -> bool {
        self.round += 1;
        let mut any = self.poll_cqs(rx, events);
        any |= self.service(self.round, rx, events);
        if !any {
            // Idle: arm, so that a sleeping agent wakes at the next completion.
            if self.arm(rx, events) {
                any = true;
                self.service(self.round, rx, events);
            }
        }
        any
    }

    fn push(&mut self, node: u32, item: Out) {
        if let Some(l) = self
            .links
            .get_mut(node as usize)
            .and_then(|l| l.as_mut())
            .filter(|l| l.phase == Phase::Up)
        {
            l.queued += item.remaining();
            l.outq.push_back(item);
        }
    }

    fn flush(
        &mut self,
        node: u32,
        _pool: &Pool,
        freed: &mut Vec<u64>,
        events: &mut Vec<LinkEvent>,
    ) {
        self.transmit(node);
        self.post(node, events);
        if let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) {
            freed.append(&mut l.freed);
        }
    }

    /// Bytes queued count one more while freed blocks wait to be reported,
    /// so that the agent calls [`Transport::flush`] (where they are).
    fn link(&self, node: u32) -> LinkView {
        let l = self.links.get(node as usize).and_then(|l| l.as_ref());
        LinkView {
            last_tx: l.filter(|l| l.phase == Phase::Up).map(|l| l.last_tx),
            queued: l.map_or(0, |l| l.queued + usize::from(!l.freed.is_empty())),
            packet: 0,
            held: false,
        }
    }

    fn stats(&self) -> TransportStats {
        let s = &self.stats;
        let mut c = vec![
            ("verbs_sends", s.sends),
            ("verbs_inline_sends", s.inline_sends),
            ("verbs_send_bytes", s.send_bytes),
            ("verbs_post_calls", s.post_calls),
            ("verbs_recvs", s.recvs),
            ("verbs_recv_bytes", s.recv_bytes),
            ("verbs_rdv_sent", s.rdv_sent),
            ("verbs_rdv_bytes", s.rdv_bytes),
            ("verbs_reads", s.reads),
            ("verbs_read_bytes", s.read_bytes),
            ("verbs_bounce_reads", s.bounce_reads),
            ("verbs_bounce_bytes", s.bounce_bytes),
            ("verbs_credit_stalls", s.credit_stalls),
            ("verbs_srq_reposts", s.srq_reposts),
            ("verbs_cq_events", s.cq_events),
            ("verbs_wc_errors", s.wc_errors),
            ("verbs_async_events", s.async_events),
            ("verbs_bad_descriptors", s.bad_descriptors),
            ("verbs_qp_errors_found", s.qp_errors_found),
            ("verbs_pending_refused", s.pending_refused),
            ("verbs_handshakes_failed", s.handshakes_failed),
            ("verbs_gids_unreachable", s.gids_unreachable),
        ];
        // RNR: the devices' own counters, where they have them (rxe, mlx5).
        for (name, file) in [
            ("verbs_rnr_naks_received", "rcvd_rnr_err"),
            ("verbs_rnr_naks_sent", "send_rnr_err"),
            ("verbs_rnr_retries_exceeded", "retry_rnr_exceeded_err"),
        ] {
            let vs: Vec<u64> = self
                .rails
                .iter()
                .filter_map(|r| r.ctx.hw_counter(file))
                .collect();
            if !vs.is_empty() {
                c.push((name, vs.iter().sum()));
            }
        }
        c.push(("verbs_rails", self.rails.len() as u64));
        c.push(("verbs_path_downs", s.path_downs));
        c.push(("verbs_reads_reissued", s.reads_reissued));
        c.push(("verbs_rails_rejoined", s.rails_rejoined));
        // Gauges: now (summed over the links), and the most seen on one link.
        let now: u32 = self.links.iter().flatten().map(|l| l.in_flight).sum();
        c.push(("verbs_chunks_in_flight", now as u64));
        c.push(("verbs_chunks_in_flight_max", s.chunks_in_flight_max));
        c.push(("verbs_reads_in_flight_max", s.reads_in_flight_max));
        c.push(("verbs_read_bytes_in_flight_max", s.read_bytes_in_flight_max));
        let mut info = vec![(
            "peer_auth",
            if self.key.is_some() { "mac" } else { "none" }.to_string(),
        )];
        info.extend(self.rails[0].gid_why.clone().map(|w| ("verbs_gid", w)));
        if self.rails.len() > 1 {
            for (r, rail) in self.rails.iter().enumerate() {
                let (n, k) = (&rail.names, &rail.c);
                c.extend([
                    (n.sends, k.sends),
                    (n.send_bytes, k.send_bytes),
                    (n.recvs, k.recvs),
                    (n.reads, k.reads),
                    (n.read_bytes, k.read_bytes),
                    (n.reissued, k.reissued),
                    (n.downs, k.downs),
                    (n.port_downs, k.port_downs),
                    (n.port_up, rail.port_up as u64),
                ]);
                info.push((n.device, format!("{}:{}", rail.ctx.name(), rail.ctx.port())));
                if r > 0 {
                    info.extend(rail.gid_why.clone().map(|w| (n.gid, w)));
                }
            }
        }
        TransportStats { counters: c, info }
    }

    /// The queue pair goes to ERR, as a device fault would put it: the link fails
    /// when a work request posted on it completes with a flush error, or when `tick`
    /// finds it in ERR (within [`QP_CHECK_EVERY`]: with nothing posted - the link
    /// idle, or its data waiting for credits - no completion would ever say so), or
    /// on a "last WQE reached" event, whichever comes first.
    fn close(&mut self, poller: &Poller, node: u32, how: Close) -> Vec<u64> {
        if how == Close::Fault && self.inject_fault(node) {
            return Vec::new();
        }
        match self.links.get_mut(node as usize).and_then(|l| l.take()) {
            Some(l) => {
                self.next_dial[node as usize] = Instant::now() + Duration::from_millis(500);
                self.drop_link(Some(poller), l)
            }
            None => Vec::new(),
        }
    }
}

impl VerbsTransport {
    /// Force `node`'s queue pair into ERR ([`Close::Fault`]); false when it
    /// is not up or the device refused.
    fn inject_fault(&mut self, node: u32) -> bool {
        let Some(l) = self.links.get_mut(node as usize).and_then(|l| l.as_mut()) else {
            return false;
        };
        if l.phase != Phase::Up {
            return false;
        }
        match l.paths[l.home].qp.to_error() {
            Ok(()) => {
                log::warn!(
                    "verbs: the queue pair of node {node} forced into the error state on request"
                );
                true
            }
            Err(e) => {
                log::warn!("verbs: cannot force the queue pair of node {node} into ERR: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One path: a READ of up to 1 MiB (as before rails); several: about an equal
    /// share each, in 4 KiB multiples, between 32 KiB and 1 MiB.
    #[test]
    fn stripe_pieces_share_a_chunk_among_the_paths() {
        assert_eq!(stripe_piece(256 << 10, 1), READ_PIECE);
        assert_eq!(stripe_piece(256 << 10, 0), READ_PIECE);
        assert_eq!(stripe_piece(256 << 10, 2), 128 << 10);
        assert_eq!(stripe_piece(256 << 10, 3), 88 << 10); // 85.3 KiB rounded up
        assert_eq!(stripe_piece(64 << 10, 4), STRIPE_MIN);
        assert_eq!(stripe_piece(4 << 20, 2), READ_PIECE);
        for len in [64 << 10, 100_000, 256 << 10, 1 << 20, 3 << 20, 64 << 20] {
            for paths in 1..=MAX_RAILS {
                let p = stripe_piece(len, paths);
                assert!((STRIPE_MIN..=READ_PIECE).contains(&p) && p % 4096 == 0);
                // Never more pieces than paths unless the cap or the floor says so.
                assert!(len.div_ceil(p) <= paths as u64 || p == READ_PIECE || p == STRIPE_MIN);
            }
        }
    }

    /// Descriptors are reported fetched in the order they came, each once all its
    /// READs were posted and completed, whatever order the READs complete in
    /// (several paths); one not wholly posted holds back those behind it.
    #[test]
    fn fetches_are_reported_done_in_descriptor_order() {
        let mut f = Fetches::default();
        let (a, b, c) = (f.add(), f.add(), f.add());
        assert_eq!((a, b, c), (0, 1, 2));
        // a: two pieces; b: one; c: two, the last not posted yet.
        f.posted(a, false);
        f.posted(a, true);
        f.posted(b, true);
        f.posted(c, false);
        assert_eq!(f.done(b), 0, "b is done but a is not");
        assert_eq!(f.done(a), 0, "a has one piece left");
        assert_eq!(f.done(c), 0, "c's last piece is not even posted");
        assert_eq!(f.done(a), 2, "a, then b behind it");
        f.posted(c, true);
        assert_eq!(f.done(c), 1);
        assert!(f.states.is_empty());
        // Stale or unknown ids change nothing.
        assert_eq!(f.done(a), 0);
        assert_eq!(f.done(99), 0);
        f.posted(99, true);
        let d = f.add();
        assert_eq!(d, 3);
        f.posted(d, true);
        assert_eq!(f.done(d), 1);
    }
}
