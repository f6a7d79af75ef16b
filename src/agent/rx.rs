//! The receive walk: frames from a peer's link, split into records,
//! reassembled (large messages, straight into their block where the
//! transport can) and deposited into receive rings, or parked while a ring
//! is full.

use crate::proto::Status;
use crate::shm::blocks::Owner;
use crate::transport::{LinkRx, SteerState};
use crate::wire::{self, FrameKind, RecordHeader, RecordKind, FLAG_ACK};

use super::deliver::Handled;
use super::inbox::{reserved, RemoteData, ReplyTo};
use super::peers::{Deposit, PeerState, RxLarge};
use super::Agent;

/// Chunks at least this large are read straight into their block.
const STEER_MIN: usize = 64 * 1024;

/// Where a chunk of a large message from a peer goes.
enum ChunkTarget {
    /// Into this pool block (at the chunk's offset).
    Block(u64),
    /// Nowhere: its message was refused.
    Discard,
    /// Not now: the pool has no room; the peer's frames wait.
    Wait,
}

/// What became of the frame at the head of a link.
enum FrameStep {
    /// The frame was handled whole.
    Next,
    /// No complete frame buffered.
    Empty,
    /// Handled up to this body offset; a ring is full.
    Partial(usize),
    /// The link was declared lost.
    Broken,
    /// The link was closed for idleness (the peer's idle `Bye`).
    Closed,
}

/// Whom to answer about record `h` of peer `j`, if its sender waits for
/// delivery.
fn ack_of(j: usize, h_src: u32, h_dst: u32, cookie: u64, flags: u8) -> Option<ReplyTo> {
    (flags & FLAG_ACK != 0).then_some(ReplyTo {
        peer: j,
        src_ep: h_src,
        dst_ep: h_dst,
        cookie,
    })
}

impl Agent {
    /// Whether the bytes queued towards peer `j` (our frames it has not
    /// taken yet) reached the bound past which its messages wait instead of
    /// adding replies: the retain limit plus 2 × `peer_queue_bytes` (6 ×
    /// `peer_queue_bytes`, 48 MiB by default). Why that much: every Data
    /// frame we queue is also retained until acknowledged, and client sends
    /// and chunks stop once the retained bytes reach the retain limit (4 ×),
    /// so an honest queue (even all of it sent again after a resume) stays
    /// below that plus a frame or chunk; what lies above is replies to a peer
    /// that does not read them. Stopping below that could make two honest
    /// agents that both resent a full window stop reading each other at once.
    /// Without any bound a peer that sends Delivered messages and never reads
    /// grew the agent without limit (every reply queued, and kept again
    /// until acknowledged).
    fn replies_backlogged(&self, j: usize) -> bool {
        let bound = self
            .retain_limit()
            .saturating_add(self.cfg.peer_queue_bytes.saturating_mul(2));
        self.transport.link(j as u32).queued >= bound
    }

    pub(super) fn process_rx(&mut self) -> bool {
        let mut work = false;
        // Only peers ever written can be connected (see `Peers`).
        let n = self.peers.touched();
        // Round robin: start with the first peer that stalled last round
        // without getting anything through (a full ring, the overflow budget
        // spent); a peer served passes the turn. From peer 0 every round,
        // the lowest peer took all the room the reader freed.
        let start = self.rx_turn % n.max(1);
        let mut waiting: Option<usize> = None;
        for k in 0..n {
            let j = self.peers.touched_at((start + k) % n);
            if self.peers[j].state().connected() {
                let moved = self.process_peer(j);
                work |= moved;
                if !moved && waiting.is_none() && self.peers.get(j).is_some_and(|p| p.rx_stalled) {
                    waiting = Some((start + k) % n);
                }
            }
        }
        self.rx_turn = waiting.unwrap_or(start + 1);
        work
    }

    /// Deposit what a peer sent, as far as the receive rings take it.
    pub(super) fn process_peer(&mut self, j: usize) -> bool {
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
        // Steered chunks whose bytes all landed, in stream order.
        while let Some(&(h, ticket)) = self.peers[j].rx_steered.front() {
            match self.inflow[j].steer_state(ticket) {
                SteerState::UnderWay => break,
                SteerState::Landed => {
                    self.peers[j].rx_steered.pop_front();
                    self.frame_done(j);
                    work = true;
                    if let Handled::DoneStop = self.chunk_arrived(j, &h) {
                        // Its deposit waits for ring room; nothing may overtake it.
                        return work;
                    }
                }
                SteerState::Lost => {
                    // Over, but not all its bytes landed: the stream was
                    // started afresh under it, by a new connection the agent
                    // hears of later (the hybrid transport's control
                    // connection, made again to try a transport it fell back
                    // from, resets the stream of a link carried on tcp; the
                    // agent hears `Up` once the new link is chosen and up).
                    // It and the chunks steered after it come again at the
                    // resume. (Taken as arrived, a message was delivered with
                    // the rest of a chunk missing: issue 14.)
                    log::debug!(
                        "peer node {j}: a chunk's stream started afresh before it all came"
                    );
                    self.peers[j].drop_steered(&mut self.freed);
                    work = true;
                }
            }
        }
        if !self.peers[j].rx_steered.is_empty() {
            // Chunks are still being read into their blocks: nothing after
            // them is handled before them, but where the transport moves
            // the bytes itself (verbs) the next chunk can be steered now.
            let mut link = std::mem::take(&mut self.inflow[j]);
            work |= self.try_steer(j, &mut link);
            self.inflow[j] = link;
            return work;
        }
        // The stream leaves `inflow` while its frames are handled (they
        // borrow its buffer, handling needs `&mut self`) and goes back after:
        // it never leaves the agent.
        let mut link = std::mem::take(&mut self.inflow[j]);
        loop {
            match self.process_frame(j, &link.reader) {
                FrameStep::Next => {
                    link.reader.consume();
                    work = true;
                    continue;
                }
                FrameStep::Empty => {
                    self.peers[j].rx_stalled = false;
                    if self.peers[j].rx_pos == 0 && self.try_steer(j, &mut link) {
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
                // The peer was dropped: its stream goes with its link.
                FrameStep::Broken => return true,
                // Nothing after an idle `Bye` is read: the stream was let go
                // (what the peer sent after it comes again on the next link).
                FrameStep::Closed => return true,
            }
            break;
        }
        self.inflow[j] = link;
        work
    }

    /// Peer `j` broke the protocol: count it and drop the peer.
    fn malformed(&mut self, j: usize, why: String) -> FrameStep {
        self.peers[j].counters.malformed += 1;
        self.peer_lost(j, &why, true);
        FrameStep::Broken
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
            FrameKind::Heartbeat | FrameKind::Hello | FrameKind::Challenge => FrameStep::Next,
            FrameKind::Resume => match wire::Resume::parse(body) {
                _ if self.peers[j].state() != &PeerState::Resuming => {
                    self.malformed(j, "Resume in the middle of a session".into())
                }
                Ok(r) if self.handle_resume(j, r) => FrameStep::Next,
                Ok(_) => FrameStep::Broken,
                Err(e) => self.malformed(j, format!("malformed frame: {e}")),
            },
            FrameKind::Ack => match wire::parse_ack(body) {
                Ok(n) if self.handle_ack(j, n) => FrameStep::Next,
                Ok(_) => FrameStep::Broken,
                Err(e) => self.malformed(j, format!("malformed frame: {e}")),
            },
            FrameKind::Data if self.peers[j].state() != &PeerState::Up => {
                self.malformed(j, "Data frame before Resume".into())
            }
            FrameKind::StatQuery => match self.job_asked(j, body) {
                Ok(()) => FrameStep::Next,
                Err(e) => self.malformed(j, format!("malformed frame: {e}")),
            },
            FrameKind::StatReply => match self.job_answered(j, body) {
                Ok(()) => FrameStep::Next,
                Err(e) => self.malformed(j, format!("malformed frame: {e}")),
            },
            FrameKind::Bye if body == super::links::BYE_IDLE => {
                self.peer_said_idle(j);
                FrameStep::Closed
            }
            FrameKind::Bye => {
                self.peer_lost(j, "peer agent shut down", true);
                FrameStep::Broken
            }
            FrameKind::Data => {
                // Where handling stopped in the Data frame at the head, if
                // a full ring stopped it: the same frame, or, after a broken
                // link, the same frame sent again at the resume (what came
                // before it on the new stream is control frames only). The
                // messages before `start` were delivered: not twice.
                let start = self.peers[j].rx_pos;
                if start > body.len() {
                    return self
                        .malformed(j, "a Data frame sent again is not the one handled".into());
                }
                match self.process_records(j, body, start) {
                    Ok(None) => {
                        self.peers[j].rx_pos = 0;
                        self.frame_done(j);
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
                if status != Status::Ok {
                    self.peers[j].counters.errors += 1;
                }
                if let Some(a) = self.peers[j].acks.take(h.src_ep, h.cookie) {
                    // A Delivered send made to this peer: one reply each.
                    self.clients.complete_send(a.owner, a.cookie, status);
                } else if h.kind == RecordKind::Nack {
                    self.buffered_nack(j, h.src_ep, h.cookie, status);
                } else {
                    // An Ack for no send of ours.
                    self.peers[j].counters.replies_dropped += 1;
                }
                Ok(Handled::Done)
            }
            RecordKind::Msg if self.replies_backlogged(j) => {
                // Any message may need a reply (Ack, or a Nack when it is
                // refused): while the peer does not take what we already
                // queued for it, its messages wait, and TCP pushes back on it.
                if !self.peers[j].rx_stalled {
                    log::debug!("peer node {j}: not reading its replies; its messages wait");
                }
                Ok(Handled::Stall)
            }
            RecordKind::Msg => {
                let whole = h.offset == 0 && h.chunk_len as u64 == h.total;
                if whole && self.fits_inline(h.total) {
                    let Some(to) = self.clients.endpoint(h.dst_ep) else {
                        let p = &mut self.peers[j];
                        p.counters.msgs_rx += 1;
                        p.counters.bytes_rx += h.total;
                        self.orphan(j, h, RemoteData::Inline(payload));
                        return Ok(Handled::Done);
                    };
                    let ack = ack_of(j, h.src_ep, h.dst_ep, h.cookie, h.flags);
                    let r = self.deposit_remote(to, j, h.src_ep, RemoteData::Inline(payload), ack);
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
        match self.chunk_target(j, h)? {
            // No room in the pool now: hold the peer back until blocks free up.
            ChunkTarget::Wait => Ok(Handled::Stall),
            // A refused message: its bytes go nowhere.
            ChunkTarget::Discard => Ok(self.chunk_arrived(j, h)),
            ChunkTarget::Block(block) => {
                if self.pool.write_block(block + h.offset, payload).is_none() {
                    return Err(wire::WireError::Record("chunk outside its block"));
                }
                Ok(self.chunk_arrived(j, h))
            }
        }
    }

    /// The most block bytes one large message from a peer may reserve
    /// (`peer_rx_bytes`; 0: the block region divided among the peers, but
    /// at least what one client may hold, and never more than the region).
    /// It bounds everything of one peer's messages the pool holds for it
    /// ([`Agent::rx_held_bytes`]): those being reassembled (one, or several
    /// while chunks are steered ahead), and finished ones waiting for a
    /// receiver's ring or an endpoint to open. So a peer that declares a huge
    /// size and then sends nothing (or sends slowly), or one that sends to
    /// a receiver that does not read, takes at most that from everyone else.
    fn peer_rx_limit(&self) -> u64 {
        let region = self.blocks.total_bytes();
        if self.cfg.peer_rx_bytes > 0 {
            return self.cfg.peer_rx_bytes.min(region);
        }
        let peers = (self.peers.len() as u64).saturating_sub(1).max(1);
        let one_client = self.cfg.client_block_quota.min(self.blocks.max_alloc());
        (region / peers).max(one_client).min(region)
    }

    /// The block bytes reserved for peer `j`'s messages being reassembled
    /// (`rx_reassembly_bytes` per peer in `wyvern stat`).
    pub(super) fn rx_reassembly_bytes(&self, j: usize) -> u64 {
        self.peers[j]
            .rx_large
            .iter()
            .filter(|r| r.block.is_some())
            .map(|r| reserved(r.total))
            .sum()
    }

    /// The block bytes of peer `j`'s finished messages that wait for a
    /// receiver's ring (parked, or the one deposit held in `rx_deposit`) or
    /// for their endpoint to open (`rx_delivery_bytes` in `wyvern stat`).
    /// They were not counted: a peer sending to a receiver that did not
    /// read had every message past the ring's room held, up to the whole
    /// pool (tests/hostile_steer.rs).
    pub(super) fn rx_delivery_bytes(&self, j: usize) -> u64 {
        let waiting = self.peers[j]
            .rx_deposit
            .as_ref()
            .map_or(0, |d| reserved(d.len));
        self.inbox.peer_block_bytes(j) + waiting
    }

    /// Everything the pool holds for peer `j`'s messages (what
    /// [`Agent::peer_rx_limit`] bounds).
    fn rx_held_bytes(&self, j: usize) -> u64 {
        self.rx_reassembly_bytes(j) + self.rx_delivery_bytes(j)
    }

    /// Whether a new message of `total` bytes from peer `j` may have its
    /// block now: what the peer holds and it stay within
    /// [`Agent::peer_rx_limit`]. One alone always may (no larger than the
    /// bound: [`Agent::chunk_target`] refuses a larger one), so the bound is
    /// the limit, or one message's reservation (its size rounded up to a
    /// block unit) where that is more.
    fn peer_rx_room(&self, j: usize, total: u64) -> bool {
        let held = self.rx_held_bytes(j);
        held == 0 || held.saturating_add(reserved(total)) <= self.peer_rx_limit()
    }

    /// The block a chunk goes into: a new one for the first chunk of a
    /// message, else the block of the message in progress, which the chunk
    /// must continue. A message larger than [`Agent::peer_rx_limit`] is
    /// refused at its first chunk (the sender hears `TooLarge` at once) and
    /// its chunks are dropped as they come: the link carries on.
    /// The chunk's bytes are then counted as placed (`RxLarge::next`).
    fn chunk_target(&mut self, j: usize, h: &RecordHeader) -> Result<ChunkTarget, wire::WireError> {
        if h.offset == 0 {
            if self.peers[j]
                .rx_large
                .back()
                .is_some_and(|r| r.next < r.total)
            {
                return Err(wire::WireError::Record(
                    "a new large message before the last one ended",
                ));
            }
            let block = if h.total > self.peer_rx_limit() {
                let limit = self.peer_rx_limit();
                let p = &mut self.peers[j];
                p.counters.errors += 1;
                log::warn!(
                    "peer node {j}: refusing a message of {} bytes for endpoint {} (this agent takes at most {limit} from one peer)",
                    h.total,
                    h.dst_ep
                );
                let to = ReplyTo {
                    peer: j,
                    src_ep: h.src_ep,
                    dst_ep: h.dst_ep,
                    cookie: h.cookie,
                };
                self.queue_reply(to, RecordKind::Nack, Status::TooLarge);
                None
            } else {
                // Over what the peer may hold (its messages wait for a ring
                // that is not read, say), or no room in the pool: the peer
                // waits (its link is not read further) until some go.
                if !self.peer_rx_room(j, h.total) {
                    return Ok(ChunkTarget::Wait);
                }
                let Some(b) = self.blocks.alloc_top(h.total, Owner::Agent) else {
                    return Ok(ChunkTarget::Wait);
                };
                Some(b.off)
            };
            self.peers[j].rx_large.push_back(RxLarge {
                src_ep: h.src_ep,
                dst_ep: h.dst_ep,
                cookie: h.cookie,
                total: h.total,
                got: 0,
                next: 0,
                block,
                flags: h.flags,
            });
        }
        let Some(r) = self.peers[j]
            .rx_large
            .back_mut()
            .filter(|r| r.next < r.total)
        else {
            return Err(wire::WireError::Record("a chunk with no message started"));
        };
        if r.src_ep != h.src_ep
            || r.dst_ep != h.dst_ep
            || r.cookie != h.cookie
            || r.total != h.total
            || r.next != h.offset
        {
            return Err(wire::WireError::Record(
                "chunk does not continue the message in progress",
            ));
        }
        r.next += h.chunk_len as u64;
        Ok(r.block.map_or(ChunkTarget::Discard, ChunkTarget::Block))
    }

    /// A chunk's bytes are in its block: count them, deposit a finished
    /// message. Chunks are handled in stream order, so it belongs to the
    /// oldest message being reassembled.
    fn chunk_arrived(&mut self, j: usize, h: &RecordHeader) -> Handled {
        let p = &mut self.peers[j];
        let Some(r) = p.rx_large.front_mut() else {
            return Handled::Done;
        };
        r.got += h.chunk_len as u64;
        if r.got < r.total {
            return Handled::Done;
        }
        let r = p.rx_large.pop_front().expect("checked above");
        let Some(block) = r.block else {
            // Refused at its first chunk; the last one passed.
            return Handled::Done;
        };
        p.counters.msgs_rx += 1;
        p.counters.bytes_rx += r.total;
        let d = Deposit {
            src_ep: r.src_ep,
            dst_ep: r.dst_ep,
            block,
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
    fn try_steer(&mut self, j: usize, link: &mut LinkRx) -> bool {
        let Some((fh, body)) = link.reader.peek_partial() else {
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
        let inline = whole && self.fits_inline(h.total);
        if h.kind != RecordKind::Msg || inline || h.wire_len() != fh.body_len as usize {
            return false;
        }
        let have = (body.len() - wire::RECORD_HEADER).min(h.chunk_len as usize);
        let left = h.chunk_len as usize - have;
        if left < STEER_MIN / 4 || !link.can_steer() {
            return false;
        }
        if h.offset == 0 {
            // Steered ahead, messages are reassembled together: all of them
            // (and those waiting for delivery) within what one peer may
            // hold. One larger than that alone is refused: the normal path
            // refuses it once and drops its chunks (calling `chunk_target`
            // here would refuse it again every time the partial frame is
            // looked at: tens of thousands of Nacks for one slow frame,
            // tests/hostile_steer.rs).
            if h.total > self.peer_rx_limit() || !self.peer_rx_room(j, h.total) {
                return false;
            }
        }
        let block = match self.chunk_target(j, &h) {
            Ok(ChunkTarget::Block(b)) => b,
            Ok(ChunkTarget::Discard) => {
                // Of a refused message: the normal path drops it.
                self.unplace(j, &h);
                return false;
            }
            // No room, or malformed (nothing placed): the normal path decides.
            Ok(ChunkTarget::Wait) | Err(_) => return false,
        };
        let at = block + h.offset;
        let head = &body[wire::RECORD_HEADER..wire::RECORD_HEADER + have];
        let pad = wire::padded(h.chunk_len as usize) - h.chunk_len as usize;
        // Check that the steer will be taken before copying the head: one
        // refused would otherwise have the head copied again every round
        // until the whole chunk arrived (quadratic in its size).
        let rest_at = at + have as u64;
        if self.pool.block_slice(at, have as u64).is_none()
            || self.pool.block_slice(rest_at, left as u64).is_none()
        {
            self.unplace(j, &h);
            return false;
        }
        if self.pool.write_block(at, head).is_none() {
            // Cannot happen: the range was checked above.
            log::error!("node {j}: a chunk's head does not fit its block");
        }
        // The rest of the chunk goes straight into its block as it arrives
        // (checked above: taken).
        let _ = link.steer(&self.pool, rest_at, left as u64, pad);
        link.reader.discard_partial();
        self.peers[j].rx_steered.push_back((h, link.steer_ticket()));
        self.peers[j].counters.bytes_rx_direct += left as u64;
        true
    }

    /// Undo what [`Agent::chunk_target`] did for chunk `h` (the normal path
    /// redoes it): a first chunk's message and block go, another's bytes are
    /// no longer placed.
    fn unplace(&mut self, j: usize, h: &RecordHeader) {
        let large = &mut self.peers[j].rx_large;
        if h.offset == 0 {
            if let Some(b) = large.pop_back().and_then(|r| r.block) {
                self.blocks.free(b, Owner::Agent);
            }
        } else if let Some(r) = large.back_mut() {
            r.next -= h.chunk_len as u64;
        }
    }

    fn finish_large(&mut self, j: usize, d: Deposit) -> Handled {
        let data = RemoteData::Block {
            off: d.block,
            len: d.len,
        };
        let Some(to) = self.clients.endpoint(d.dst_ep) else {
            let h = RecordHeader {
                kind: RecordKind::Msg,
                flags: d.flags,
                status: 0,
                src_ep: d.src_ep,
                dst_ep: d.dst_ep,
                chunk_len: 0,
                total: d.len,
                offset: 0,
                cookie: d.cookie,
            };
            self.orphan(j, &h, data);
            return Handled::Done;
        };
        let ack = ack_of(j, d.src_ep, d.dst_ep, d.cookie, d.flags);
        match self.deposit_remote(to, j, d.src_ep, data, ack) {
            Handled::Done | Handled::DoneStop => Handled::Done,
            Handled::Stall => {
                self.peers[j].rx_deposit = Some(d);
                Handled::Stall
            }
        }
    }
}
