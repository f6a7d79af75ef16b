//! The agent's side of its links: peers coming up, resuming, breaking and
//! lost (the state machine itself is [`super::peers`]'s), what goes out on
//! each link every round, and the peers' timers.

use std::time::{Duration, Instant};

use crate::proto::{Completion, Status};
use crate::shm::blocks::Owner;
use crate::transport::{Close, LinkRx, Out};
use crate::wire::{self, control_frame, FrameKind, RecordHeader, RecordKind};

use super::peers::{IdleStep, PeerState, Resumed, Retained};
use super::Agent;

/// The body of a `Bye` that closes an idle link (an empty `Bye`: the agent
/// shuts down). The sender was quiet (`Peer::quiet`: nothing in flight
/// either way) and keeps its session; the receiver answers with its own and
/// closes its end at once, the sender when that answer comes (or the link
/// breaks, or after `bye_wait`). Neither end takes it for a failure; a
/// frame that crossed it is sent again on the next link (the sessions say
/// whether it is needed), so nothing is lost or handled twice.
pub(super) const BYE_IDLE: &[u8] = &[1];

/// How long a link that takes none of what is queued for it still counts
/// as work (keeps an adaptive agent polling); then the tick retries it.
const TX_STUCK_SPIN: Duration = Duration::from_millis(100);

impl Agent {
    /// Unacknowledged bytes a session may hold before sends wait.
    pub(super) fn retain_limit(&self) -> usize {
        self.cfg.peer_queue_bytes.saturating_mul(4)
    }

    /// Queue a control frame (`Ack`, `Heartbeat`) on peer `j`'s link.
    fn push_control(&mut self, j: usize, kind: FrameKind, body: &[u8]) {
        let f = control_frame(kind, self.cfg.node_id, body);
        self.transport.push(j as u32, Out::bytes(f));
    }

    /// What goes out this round: frames being built, chunks of large
    /// messages while the links have room, then each link's queue.
    pub(super) fn flush_peers(&mut self) -> bool {
        let mut work = false;
        let delay = Duration::from_micros(self.cfg.flush_delay_us);
        let limit = self.cfg.peer_queue_bytes;
        let retain = self.retain_limit();
        let now = self.now;
        // Only peers ever written can be up or resuming (see `Peers`).
        for k in 0..self.peers.touched() {
            let j = self.peers.touched_at(k);
            let node = j as u32;
            let state = self.peers[j].state().clone();
            if state == PeerState::Resuming && self.transport.link(node).queued > 0 {
                // Handshake frames only: data waits for the peer's Resume.
                work = true;
                self.transport
                    .flush(node, &self.pool, &mut self.freed, &mut self.events);
            }
            if state != PeerState::Up {
                continue;
            }
            let p = &mut self.peers[j];
            if p.batch_since
                .is_some_and(|t| delay.is_zero() || now.saturating_duration_since(t) >= delay)
            {
                p.flush_batch(&mut *self.transport, now, &mut self.freed);
            }
            // Cut large messages into chunks while the link has room.
            while !self.peers[j].large.is_empty()
                && self.transport.link(node).queued < limit
                && self.peers[j].unacked_bytes() < retain
            {
                self.send_chunk(j);
                work = true;
            }
            let before = self.transport.link(node).queued;
            if before > 0 {
                self.transport
                    .flush(node, &self.pool, &mut self.freed, &mut self.events);
                let after = self.transport.link(node);
                let p = &mut self.peers[j];
                if after.queued < before {
                    p.tx_stuck_since = None;
                    work = true;
                } else if after.held {
                    // Held by the link's own window or pacer: the transport
                    // wakes the agent when it can send. Polling for the
                    // rate model's next token kept a sending agent at 100 %
                    // of a core it shares (issue 14).
                    p.tx_stuck_since = None;
                } else {
                    // Nothing went out. A link that takes nothing for a while
                    // (a peer that does not read) is not urgent: the tick
                    // retries it. Counting it kept an adaptive agent at
                    // 100 % CPU for as long as the peer did not read.
                    let since = *p.tx_stuck_since.get_or_insert(now);
                    work |= now.saturating_duration_since(since) < TX_STUCK_SPIN;
                }
            }
        }
        for b in std::mem::take(&mut self.freed) {
            self.blocks.free(b, Owner::Agent);
        }
        work
    }

    /// Send the next chunk of peer `j`'s first large message (its header
    /// frame is made here, its payload goes from the block).
    fn send_chunk(&mut self, j: usize) {
        let me = self.cfg.node_id;
        let chunk = self.cfg.chunk_bytes as u64;
        let now = self.now;
        let p = &mut self.peers[j];
        let Some(ls) = p.large.front_mut() else {
            return;
        };
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
        let mut hdr = wire::FrameHeader {
            kind: FrameKind::Data,
            src_node: me,
            body_len: h.wire_len() as u32,
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
        let (total, client) = (ls.total, ls.client);
        p.send_frame(&mut *self.transport, frame, now, &mut self.freed);
        if last {
            p.counters.msgs_tx += 1;
            p.counters.bytes_tx += total;
            p.large.pop_front();
            self.clients.unblock(client);
        }
    }

    /// Peer `j` is gone: fail what waited on it, free what it held. With
    /// `close_link`, the transport's link is closed too.
    pub(super) fn peer_lost(&mut self, j: usize, why: &str, close_link: bool) {
        let closed = if close_link {
            self.transport.close(&self.poller, j as u32, Close::Now)
        } else {
            Vec::new()
        };
        let loss = match self.peers[j].lose(why, closed, self.now) {
            Ok(loss) => loss,
            Err(closed) => {
                // Already lost: only what the link gave back is freed.
                for b in closed {
                    self.blocks.free(b, Owner::Agent);
                }
                return;
            }
        };
        for b in loss.blocks {
            self.blocks.free(b, Owner::Agent);
        }
        for o in loss.unblocked {
            self.clients.unblock(o);
        }
        for f in loss.failed {
            self.clients
                .complete_send(f.owner, f.cookie, Status::PeerLost);
        }
        // Buffered sends are not tracked one by one: tell every client that
        // sent some to this node since the last report.
        let told: Vec<u32> = self
            .clients
            .iter_mut()
            .filter_map(|(slot, c)| std::mem::take(&mut c.sent_to[j]).then_some(slot))
            .collect();
        for slot in told {
            // The lost node rides in `off`.
            let mut c = Completion::send(Status::PeerLost, crate::proto::LOSS_COOKIE);
            c.off = j as u64;
            self.clients.complete(slot, c);
        }
        // Clients stalled on this peer retry and now fail fast.
    }

    /// How long our idle `Bye` waits for the peer's before the link is
    /// closed anyway (a datagram link resends it meanwhile).
    fn bye_wait(&self) -> Duration {
        self.timing.heartbeat * 2
    }

    /// The peer said its link is idle (an idle `Bye`): answer with ours
    /// (unless we said it first) and close the link.
    pub(super) fn peer_said_idle(&mut self, j: usize) {
        if self.peers[j].idle.bye_sent.is_none() {
            self.push_control(j, FrameKind::Bye, BYE_IDLE);
        }
        self.idle_close(j);
    }

    /// Close peer `j`'s link for idleness: the peer goes back to idle with
    /// its session kept, the link and its read buffer are released, and
    /// the link is made again at once if something waits for it (what
    /// crossed the close).
    pub(super) fn idle_close(&mut self, j: usize) {
        let node = j as u32;
        // Our `Bye` (or the answer to the peer's) goes out first.
        self.transport
            .flush(node, &self.pool, &mut self.freed, &mut self.events);
        for b in self.transport.close(&self.poller, node, Close::Idle) {
            self.blocks.free(b, Owner::Agent);
        }
        self.inflow[j] = LinkRx::default();
        self.heap_dirty = true;
        let pending = self.peers[j].closed_idle(self.now, &mut self.freed);
        log::debug!("peer node {j}: idle link closed (again at once: {pending})");
        if pending {
            self.want_peer(j);
        }
    }

    /// Make (and keep) a link to peer `j` (on-demand links): an idle peer
    /// starts connecting.
    pub(super) fn want_peer(&mut self, j: usize) {
        if self.peers[j].wanted(self.now) {
            log::debug!("peer node {j}: a link is wanted");
        }
        self.transport.want(Some(j as u32), self.now);
    }

    /// A new connection to peer `j`: say where our session stands; frames
    /// flow once the peer said the same ([`Agent::handle_resume`]).
    pub(super) fn peer_up(&mut self, j: usize) {
        // Once linked, a pair stays linked: a link that breaks is made again
        // from this side too (on-demand links; otherwise a no-op).
        self.transport.want(Some(j as u32), self.now);
        if self.peers[j].state().connected() {
            // A new connection replaced one we still thought alive.
            self.peer_disconnected(j, "peer reconnected".into());
        }
        let frame = self.peers[j].connected(self.cfg.node_id, self.incarnation, self.now);
        self.transport.push(j as u32, Out::bytes(frame));
    }

    /// The peer's `Resume` arrived: carry the session on, or start afresh
    /// (and report what the old one had in flight as lost). Returns false
    /// when the peer was dropped instead.
    pub(super) fn handle_resume(&mut self, j: usize, r: wire::Resume) -> bool {
        let p = &self.peers[j];
        if !p.resumable(&r, self.incarnation) && p.session.is_some() && !p.half_open(&r) {
            self.peer_lost(j, "peer restarted or gave this node up", false);
        }
        let p = &mut self.peers[j];
        match p.resumed(
            &r,
            self.incarnation,
            &mut *self.transport,
            self.now,
            &mut self.freed,
        ) {
            Ok(Resumed::Carried { .. } | Resumed::Fresh) => true,
            Err(why) => {
                self.peer_lost(j, &why, true);
                false
            }
        }
    }

    /// The connection to peer `j` broke: keep the session for a new one.
    pub(super) fn peer_disconnected(&mut self, j: usize, why: String) {
        // The stream stays: the transport starts a fresh one when the next
        // link comes up, and may already have (with the new link's first
        // bytes in it) when this is heard.
        let heard = self.inflow[j].last_rx().unwrap_or(self.now);
        self.peers[j].disconnected(why, heard, self.now, &mut self.freed);
    }

    /// The peer handled our `Data` frames up to `n`: forget them.
    pub(super) fn handle_ack(&mut self, j: usize, n: u64) -> bool {
        match self.peers[j].acked(n, self.now, &mut self.freed) {
            Ok(()) => true,
            Err(why) => {
                self.peer_lost(j, &why, true);
                false
            }
        }
    }

    /// A `Data` frame of peer `j` was handled whole.
    pub(super) fn frame_done(&mut self, j: usize) {
        if let Some(n) = self.peers[j].frame_handled() {
            self.push_control(j, FrameKind::Ack, &n.to_le_bytes());
        }
    }

    /// Every tick: acknowledge what was handled, send heartbeats on quiet
    /// links, declare silent or unreachable peers lost.
    pub(super) fn peer_timers(&mut self, now: Instant) {
        let timing = self.timing;
        // An idle peer has no timer (see `Peers`: only those written can be
        // anything else).
        for k in 0..self.peers.touched() {
            let j = self.peers.touched_at(k);
            let node = j as u32;
            if let Some(why) = self.peers[j].tick(&timing, now).lose {
                self.peer_lost(j, &why, true);
                continue;
            }
            if !self.peers[j].state().connected() {
                continue;
            }
            if let Some(n) = self.peers[j].ack_due() {
                self.push_control(j, FrameKind::Ack, &n.to_le_bytes());
            }
            if self.peers[j].rx_stalled || self.inflow[j].full() {
                // We are not reading: the peer's silence proves nothing.
                self.inflow[j].heard(now);
            }
            let (Some(last_tx), Some(last_rx)) =
                (self.transport.link(node).last_tx, self.inflow[j].last_rx())
            else {
                continue;
            };
            if let Some(why) = self.peers[j].silent(&timing, last_rx, now) {
                self.peer_lost(j, &why, true);
                continue;
            }
            let idle = Duration::from_millis(self.cfg.link_idle_ms);
            let link_quiet =
                self.transport.link(node).queued == 0 && self.inflow[j].reader.buffered() == 0;
            let wait = self.bye_wait();
            match self.peers[j].idle_tick(idle, wait, link_quiet, now) {
                IdleStep::Keep => {}
                IdleStep::Bye => {
                    log::debug!("peer node {j}: link idle for {idle:?}: saying so");
                    self.push_control(j, FrameKind::Bye, BYE_IDLE);
                    continue;
                }
                IdleStep::Close => {
                    self.idle_close(j);
                    continue;
                }
            }
            if now.duration_since(last_tx) > timing.heartbeat
                && self.transport.link(node).queued == 0
            {
                self.push_control(j, FrameKind::Heartbeat, &[]);
            }
        }
    }
}
