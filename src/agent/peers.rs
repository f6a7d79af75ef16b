//! The peers room: one [`Peer`] per node of the job, its state machine and
//! the session two agents share across connections.
//!
//! Sans-IO: nothing here reads the clock (every step takes `now`) or talks
//! to a client. A step that has consequences elsewhere returns them (the
//! blocks to free, the sends to fail, the frames to queue) for the agent to
//! carry out; the only outside thing a peer touches is the link it queues
//! frames on ([`Transport::push`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shm::blocks::Owner;
use crate::transport::{Out, Transport};
use crate::wire::{self, control_frame, reliable, FrameKind};

/// Acknowledge a peer's frames at least every this many (and every tick).
pub(super) const ACK_EVERY: u64 = 32;

/// Set in the cookies the agent puts on the wire for Delivered sends.
const WIRE_SEQ_BIT: u64 = 1 << 63;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum PeerState {
    /// This node.
    Local,
    /// Not connected, and no link wanted yet (on-demand links: nothing was
    /// sent to it and it sent nothing).
    Idle,
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
    pub(super) fn name(&self) -> String {
        match self {
            PeerState::Local => "local".into(),
            PeerState::Idle => "idle".into(),
            PeerState::Connecting => "connecting".into(),
            PeerState::Resuming => "resuming".into(),
            PeerState::Up => "up".into(),
            PeerState::Disconnected(_, r) => format!("disconnected ({r})"),
            PeerState::Lost(r) => format!("lost ({r})"),
        }
    }

    /// Connected, or about to be (a session is being agreed).
    pub(super) fn connected(&self) -> bool {
        matches!(self, PeerState::Up | PeerState::Resuming)
    }
}

/// A `Data` frame kept until the peer acknowledges it, so that a broken
/// connection can be resumed without losing it.
pub(super) enum Retained {
    /// A whole frame (shared with the link that sends it: not copied).
    Bytes(Arc<Vec<u8>>),
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

impl Drop for Retained {
    /// An acknowledged (or dropped) batch frame no link still holds gives
    /// its buffer back for the next frame (`wire::recycle_frame`).
    fn drop(&mut self) {
        if let Retained::Bytes(b) = self {
            if let Some(v) = Arc::get_mut(b) {
                crate::wire::recycle_frame(std::mem::take(v));
            }
        }
    }
}

impl Retained {
    pub(super) fn len(&self) -> usize {
        match self {
            Retained::Bytes(b) => b.len(),
            Retained::Chunk { hdr, len, pad, .. } => hdr.len() + *len as usize + pad,
        }
    }

    /// The block this frame frees once acknowledged (or dropped).
    fn frees(&self) -> Option<u64> {
        match self {
            Retained::Chunk { free_after, .. } => *free_after,
            Retained::Bytes(_) => None,
        }
    }

    /// Queue the frame on a link (again).
    pub(super) fn push_to(&self, t: &mut dyn Transport, node: u32) {
        match self {
            Retained::Bytes(b) => t.push(node, Out::shared(b.clone())),
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
pub(super) struct Session {
    /// The peer's incarnation this session is with.
    pub(super) peer_inc: u64,
    /// `Data` frames sent and not yet acknowledged.
    tx: reliable::Sender<Retained>,
    /// Their bytes.
    pub(super) tx_bytes: usize,
    /// `Data` frames of the peer handled.
    pub(super) rx_count: u64,
    /// The last count acknowledged to the peer.
    pub(super) rx_acked: u64,
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
            freed.extend(f.frees());
        }
        Ok(())
    }

    fn new(peer_inc: u64, now: Instant) -> Session {
        Session {
            peer_inc,
            tx: reliable::Sender::new(session_config(), now),
            tx_bytes: 0,
            rx_count: 0,
            rx_acked: 0,
        }
    }

    /// An `Ack` frame for what was handled, if anything is not acknowledged yet.
    fn take_ack(&mut self) -> Option<u64> {
        (self.rx_count > self.rx_acked).then(|| {
            self.rx_acked = self.rx_count;
            self.rx_count
        })
    }
}

/// A large message queued for a peer, cut into chunks as the link drains.
pub(super) struct LargeSend {
    pub(super) block: u64,
    pub(super) total: u64,
    pub(super) sent: u64,
    pub(super) src_ep: u32,
    pub(super) dst_ep: u32,
    pub(super) cookie: u64,
    pub(super) flags: u8,
    pub(super) client: Owner,
}

/// A large message from a peer being reassembled.
pub(super) struct RxLarge {
    pub(super) src_ep: u32,
    pub(super) dst_ep: u32,
    pub(super) cookie: u64,
    pub(super) total: u64,
    /// Bytes of it in its block (chunks handled, in order).
    pub(super) got: u64,
    /// Bytes of it given a place: `got` and the chunks steered after them
    /// (being read into the block). The next chunk must start here.
    pub(super) next: u64,
    /// Where it is reassembled; `None`: refused (larger than this agent
    /// takes from one peer), its chunks are checked and dropped.
    pub(super) block: Option<u64>,
    pub(super) flags: u8,
}

/// A Delivered send waiting for the peer's Ack or Nack.
pub(super) struct PendingAck {
    pub(super) owner: Owner,
    pub(super) src_ep: u32,
    /// The client's cookie, for its completion.
    pub(super) cookie: u64,
}

/// The Delivered sends to one peer waiting for its reply. The cookie on the
/// wire is the agent's own sequence number, unique per peer (not the
/// client's cookie): two clients that use the same endpoint id one after
/// the other and the same cookies never complete each other's sends, and a
/// reply completes a send only if that send was made to this peer.
#[derive(Default)]
pub(super) struct AckTable {
    next: u64,
    map: HashMap<u64, PendingAck>,
}

impl AckTable {
    /// Remember a send; returns the cookie to put on the wire.
    pub(super) fn insert(&mut self, owner: Owner, src_ep: u32, cookie: u64) -> u64 {
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
    pub(super) fn take(&mut self, src_ep: u32, wire: u64) -> Option<PendingAck> {
        match self.map.get(&wire) {
            Some(a) if a.src_ep == src_ep => self.map.remove(&wire),
            _ => None,
        }
    }
}

/// A finished large message from a peer waiting for room in its ring.
pub(super) struct Deposit {
    pub(super) src_ep: u32,
    pub(super) dst_ep: u32,
    pub(super) block: u64,
    pub(super) len: u64,
    pub(super) cookie: u64,
    pub(super) flags: u8,
}

/// A send (by its client and cookie) that failed with its peer.
pub(super) struct FailedSend {
    pub(super) owner: Owner,
    pub(super) cookie: u64,
}

/// What a peer's loss leaves for the agent to do.
#[derive(Default)]
pub(super) struct Loss {
    /// Agent-owned blocks to free (each once).
    pub(super) blocks: Vec<u64>,
    /// Sends that waited for this peer and failed.
    pub(super) failed: Vec<FailedSend>,
    /// Clients whose large send to this peer no longer holds them back.
    pub(super) unblocked: Vec<Owner>,
}

/// How a `Resume` from the peer was taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resumed {
    /// The session carries on: this many frames were queued again.
    Carried { resent: u64 },
    /// A new session (the peer or we restarted, or there was none).
    Fresh,
}

/// What a tick found for a peer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TickOutcome {
    /// Declare it lost, for this reason.
    pub(super) lose: Option<String>,
}

/// The agent's timing rules for its peers.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    pub(super) heartbeat: Duration,
    pub(super) peer_timeout: Duration,
    pub(super) connect_timeout: Duration,
}

/// One node of the job as this agent sees it. What every peer needs (its
/// state, since when, its session if any) is inline; everything that only a
/// peer the agent talks to uses (the frame being built, queued large sends,
/// pending acks, reassembly, counters: [`PeerLink`]) is boxed and made on
/// first mutable use, so a peer never talked to costs about 100 bytes, not
/// 528 (4,096 simulated agents in one process hold 16.7 M peers).
///
/// `Peer` dereferences to its [`PeerLink`]: reading a peer that has none
/// reads an empty one (nothing queued, counters zero); writing makes it.
/// A walk over every peer must therefore only read (`&Peer`, or a
/// `&mut Peer` used for reading), or it would make every peer's link state.
pub(super) struct Peer {
    pub(super) node: u32,
    /// This agent's node and its frame size (for the link state made later).
    me: u32,
    frame_bytes: u32,
    pub(super) addr: SocketAddr,
    state: PeerState,
    /// Since when it is in its state.
    since: Instant,
    /// Frames sent and received in this session (None before the first
    /// `Resume` exchange and after a loss). Boxed: a peer never talked to
    /// costs a pointer, not the session's 650 bytes.
    pub(super) session: Option<Box<Session>>,
    /// The state of a peer talked to (`None`: never written since start).
    link: Option<Box<PeerLink>>,
}

impl Peer {
    pub(super) fn new(
        node: u32,
        addr: SocketAddr,
        me: u32,
        frame_bytes: usize,
        now: Instant,
    ) -> Peer {
        Peer {
            node,
            me,
            frame_bytes: u32::try_from(frame_bytes).unwrap_or(u32::MAX),
            addr,
            state: if node == me {
                PeerState::Local
            } else {
                PeerState::Connecting
            },
            since: now,
            session: None,
            link: None,
        }
    }

    /// Whether the link state was made (the peer was written to since start).
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn has_link_state(&self) -> bool {
        self.link.is_some()
    }

    pub(super) fn state(&self) -> &PeerState {
        &self.state
    }

    /// Start without a link (on-demand links).
    pub(super) fn idle(&mut self, now: Instant) {
        self.set_state(PeerState::Idle, now);
    }

    /// A link is wanted (a message waits for it, or the agent was asked to
    /// connect): an idle peer starts connecting (and is reported unreachable
    /// after the connect timeout). Returns whether it was idle.
    pub(super) fn wanted(&mut self, now: Instant) -> bool {
        if self.state != PeerState::Idle {
            return false;
        }
        self.set_state(PeerState::Connecting, now);
        true
    }

    /// The one place a peer changes state: logged as `A -> B`.
    fn set_state(&mut self, to: PeerState, now: Instant) {
        log::debug!(
            "peer node {}: {} -> {}",
            self.node,
            self.state.name(),
            to.name()
        );
        self.state = to;
        self.since = now;
    }

    /// Send a `Data` frame and keep it until acknowledged.
    pub(super) fn send_frame(
        &mut self,
        t: &mut dyn Transport,
        r: Retained,
        now: Instant,
        freed: &mut Vec<u64>,
    ) {
        r.push_to(t, self.node);
        self.counters.frames_tx += 1;
        let Some(s) = self.session.as_mut() else {
            // Not in a session (cannot happen while up): nothing to keep.
            freed.extend(r.frees());
            return;
        };
        s.tx_bytes += r.len();
        if let Err(r) = s.tx.send(r, now) {
            freed.extend(r.frees());
        }
    }

    /// Send the frame being built, if any.
    pub(super) fn flush_batch(
        &mut self,
        t: &mut dyn Transport,
        now: Instant,
        freed: &mut Vec<u64>,
    ) {
        if self.batch.is_empty() {
            return;
        }
        let frame = self.batch.finish();
        self.batch_since = None;
        self.send_frame(t, Retained::Bytes(Arc::new(frame)), now, freed);
    }

    /// Bytes sent and not yet acknowledged.
    pub(super) fn unacked_bytes(&self) -> usize {
        self.session.as_ref().map_or(0, |s| s.tx_bytes)
    }

    /// Chunks being read straight into their blocks when the connection
    /// broke are not handled and come again whole: forget them, and the
    /// messages they began (their blocks): only a message with chunks
    /// handled (at most the oldest) stays, to continue where they end.
    pub(super) fn drop_steered(&mut self, freed: &mut Vec<u64>) {
        self.rx_steered.clear();
        self.rx_large.retain_mut(|r| {
            r.next = r.got;
            if r.got == 0 {
                freed.extend(r.block);
            }
            r.got > 0
        });
    }

    /// A new connection: our `Resume` (where our session stands) to send.
    /// The caller first reports a connection we still thought alive as
    /// broken ([`Peer::disconnected`]).
    pub(super) fn connected(&mut self, me: u32, incarnation: u64, now: Instant) -> Vec<u8> {
        self.set_state(PeerState::Resuming, now);
        self.rx_stalled = false;
        self.idle = IdleWatch::new(self.frames(), now);
        let (known, received) = self
            .session
            .as_ref()
            .map_or((0, 0), |s| (s.peer_inc, s.rx_count));
        let body = wire::Resume {
            incarnation,
            known,
            received,
        };
        log::debug!("peer node {}: connected, resuming ({body:?})", self.node);
        control_frame(FrameKind::Resume, me, &body.to_bytes())
    }

    /// Whether the peer's `Resume` continues our session.
    pub(super) fn resumable(&self, r: &wire::Resume, incarnation: u64) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.peer_inc == r.incarnation && r.known == incarnation)
    }

    /// Whether our session is one the peer (the same instance) never took
    /// up: its `Resume` knows no session with us. Two connections made at
    /// once (both ends wanted the link) can leave one side in a session
    /// whose link was replaced before the other side read our `Resume`; the
    /// peer was never up in it, so it handled none of our frames and sent
    /// none: they go again in a new session, nothing is lost.
    pub(super) fn half_open(&self, r: &wire::Resume) -> bool {
        r.known == 0
            && r.received == 0
            && self
                .session
                .as_ref()
                .is_some_and(|s| s.peer_inc == r.incarnation && s.rx_count == 0)
    }

    /// The peer's `Resume` arrived: carry the session on (its frames the
    /// peer did not get are queued on `t` again), or start a fresh one. A
    /// session that cannot carry on and had frames in flight must be
    /// reported lost by the caller first ([`Peer::lose`]).
    pub(super) fn resumed(
        &mut self,
        r: &wire::Resume,
        incarnation: u64,
        t: &mut dyn Transport,
        now: Instant,
        freed: &mut Vec<u64>,
    ) -> Result<Resumed, String> {
        let how = if self.resumable(r, incarnation) {
            let s = self.session.as_mut().expect("checked by resumable");
            if let Err(e) = s.acknowledged(r.received, now, freed) {
                self.counters.malformed += 1;
                return Err(format!("cannot resume: {e}"));
            }
            let mut resent = 0u64;
            let node = self.node;
            s.tx.retransmit_all(now, |_, f| {
                f.push_to(t, node);
                resent += 1;
            });
            self.drop_steered(freed);
            self.counters.resumes += 1;
            self.counters.frames_resent += resent;
            log::info!(
                "peer node {} ({}) resumed: {resent} frames sent again",
                self.node,
                self.addr
            );
            Resumed::Carried { resent }
        } else if self.half_open(r) {
            let mut old = self.session.take().expect("checked by half_open");
            self.session = Some(Box::new(Session::new(r.incarnation, now)));
            self.drop_steered(freed);
            let mut resent = 0u64;
            for f in old.tx.drain() {
                self.send_frame(t, f, now, freed);
                resent += 1;
            }
            log::info!(
                "peer node {} ({}) up (a session it never took up begun again: {resent} frames sent again)",
                self.node,
                self.addr
            );
            Resumed::Carried { resent }
        } else {
            self.session = Some(Box::new(Session::new(r.incarnation, now)));
            self.rx_pos = 0;
            self.rx_steered.clear();
            self.batch.finish();
            self.batch_since = None;
            log::info!("peer node {} ({}) up", self.node, self.addr);
            Resumed::Fresh
        };
        self.set_state(PeerState::Up, now);
        Ok(how)
    }

    /// The connection broke: keep the session for a new one (or go back to
    /// connecting when there is none yet). Returns whether it was connected.
    /// `heard`: when the peer last said anything; the session waits
    /// `peer_timeout` from then, not from now (a link that broke because it
    /// timed out was silent that long already: waiting again would make a
    /// silent peer lost after twice the timeout).
    pub(super) fn disconnected(
        &mut self,
        why: String,
        heard: Instant,
        now: Instant,
        freed: &mut Vec<u64>,
    ) -> bool {
        if !self.state.connected() {
            return false;
        }
        self.rx_stalled = false;
        if self.session.is_none() {
            // Nothing to resume yet.
            self.set_state(PeerState::Connecting, now);
            return true;
        }
        self.drop_steered(freed);
        log::warn!(
            "peer node {} ({}): connection broke ({why}); waiting to resume",
            self.node,
            self.addr
        );
        self.set_state(PeerState::Disconnected(heard.min(now), why), now);
        true
    }

    /// Declare the peer lost: everything that waited on it is returned for
    /// the agent to fail and free. `closed` are the blocks the link gave
    /// back when it was closed (not freed twice). `Err(closed)`: it already
    /// was; only those are the caller's to free.
    pub(super) fn lose(
        &mut self,
        why: &str,
        closed: Vec<u64>,
        now: Instant,
    ) -> Result<Loss, Vec<u64>> {
        if let PeerState::Lost(_) = self.state {
            return Err(closed);
        }
        log::warn!("peer node {} ({}) lost: {why}", self.node, self.addr);
        self.set_state(PeerState::Lost(why.to_string()), now);
        self.counters.losses += 1;
        self.rx_stalled = false;
        self.rx_steered.clear();
        self.batch.finish();
        self.batch_since = None;
        self.rx_pos = 0;
        let mut loss = Loss {
            blocks: closed,
            ..Loss::default()
        };
        if let Some(mut sess) = self.session.take() {
            for b in sess.tx.drain().into_iter().filter_map(|r| r.frees()) {
                if !loss.blocks.contains(&b) {
                    loss.blocks.push(b);
                }
            }
        }
        loss.failed = self
            .acks
            .map
            .drain()
            .map(|(_, a)| FailedSend {
                owner: a.owner,
                cookie: a.cookie,
            })
            .collect();
        for ls in self.large.drain(..) {
            // A block whose last chunk never went out was not in the link's
            // queue: free it here.
            if !loss.blocks.contains(&ls.block) {
                loss.blocks.push(ls.block);
            }
            if ls.flags & wire::FLAG_ACK == 0 {
                loss.failed.push(FailedSend {
                    owner: ls.client,
                    cookie: ls.cookie,
                });
            }
            loss.unblocked.push(ls.client);
        }
        loss.blocks
            .extend(self.rx_large.drain(..).filter_map(|r| r.block));
        loss.blocks.extend(self.rx_deposit.take().map(|d| d.block));
        self.counters.errors += loss.failed.len() as u64;
        Ok(loss)
    }

    /// The peer handled our `Data` frames up to `n`: forget them.
    pub(super) fn acked(
        &mut self,
        n: u64,
        now: Instant,
        freed: &mut Vec<u64>,
    ) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        s.acknowledged(n, now, freed).map_err(|e| {
            self.counters.malformed += 1;
            format!("bad ack: {e}")
        })
    }

    /// A `Data` frame of the peer was handled whole; returns the count to
    /// acknowledge when an `Ack` is due ([`ACK_EVERY`]).
    pub(super) fn frame_handled(&mut self) -> Option<u64> {
        self.counters.frames_rx += 1;
        let s = self.session.as_mut()?;
        s.rx_count += 1;
        (s.rx_count - s.rx_acked >= ACK_EVERY)
            .then(|| s.take_ack())
            .flatten()
    }

    /// An `Ack` of everything handled, if one is owed and both sides agreed
    /// on the session.
    pub(super) fn ack_due(&mut self) -> Option<u64> {
        if self.state != PeerState::Up {
            return None;
        }
        self.session.as_mut()?.take_ack()
    }

    /// The timeouts of states that wait: a broken connection not restored,
    /// a peer that never answered. (A connected peer's silence is judged by
    /// its link's activity, see [`Peer::silent`].)
    pub(super) fn tick(&self, timing: &Timing, now: Instant) -> TickOutcome {
        let lose = match &self.state {
            PeerState::Disconnected(since, why)
                if now.duration_since(*since) > timing.peer_timeout =>
            {
                Some(format!(
                    "connection broke ({why}) and was not restored within {} ms of the peer's last word",
                    timing.peer_timeout.as_millis()
                ))
            }
            PeerState::Connecting if now.duration_since(self.since) > timing.connect_timeout => {
                Some(format!(
                    "unreachable for {} ms",
                    timing.connect_timeout.as_millis()
                ))
            }
            _ => None,
        };
        TickOutcome { lose }
    }

    /// Whether a connected peer whose link last heard from it at `last_rx`
    /// counts as gone.
    pub(super) fn silent(&self, timing: &Timing, last_rx: Instant, now: Instant) -> Option<String> {
        (now.duration_since(last_rx) > timing.peer_timeout).then(|| {
            format!(
                "silent for more than {} ms",
                timing.peer_timeout.as_millis()
            )
        })
    }
}

#[path = "peers_idle.rs"]
mod idle;
pub(super) use idle::{IdleStep, IdleWatch};
#[path = "peer_table.rs"]
mod table;
pub(super) use table::{PeerLink, Peers};

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
