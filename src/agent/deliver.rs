//! What the agent hands to its clients and owes its peers: completions,
//! deposits into receive rings, messages held for a full ring or an
//! endpoint not open yet, replies to peers, and detaching a client.
//!
//! Calls only into the rooms; everything above calls into it.

use std::collections::VecDeque;

use crate::proto::{CompKind, Completion, Delivery, Status, RECV_HEADER};
use crate::shm::blocks::Owner;
use crate::wire::{RecordHeader, RecordKind, FLAG_ACK};

use super::clients::{Departure, EpAddr, CLOSING_GRACE, PEER_COMP_BACKLOG_MAX};
use super::inbox::{Parked, ParkedData, RemoteData, ReplyTo};
use super::{Agent, MAX_SLEEP};

/// Slots of deposits a receive ring holds staged before they are shown to
/// its reader (all staged ones are shown at the end of every round): a
/// small part of a ring (4096 slots by default), so a reader keeps busy on
/// the first messages of a long run of deposits while the agent writes the
/// rest, and one store of the ring's tail serves 64 small messages.
const PUBLISH_EVERY: u64 = 64;

/// What became of a message offered to an endpoint's receive ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deposited {
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

/// What became of a record (a submission, or a message from a peer).
pub(super) enum Handled {
    /// Processed.
    Done,
    /// Not processed: retry later (a ring or the pool is full).
    Stall,
    /// Processed, but what follows must wait (a deposit is pending).
    DoneStop,
}

impl Agent {
    /// Refuse a client's bad request; a client past `max_client_errors` is
    /// detached.
    pub(super) fn refuse(&mut self, slot: u32, cookie: u64, why: &str) -> Handled {
        let max = self.cfg.max_client_errors;
        let Some(c) = self.clients.get_mut(slot) else {
            return Handled::Done;
        };
        c.errors += 1;
        let errors = c.errors;
        log::debug!("client slot {slot}: bad request: {why}");
        if errors > max {
            self.evict(slot, &format!("{errors} bad requests, last: {why}"));
        } else if errors <= 64 || c.comp_backlog.len() < 1024 {
            self.clients.complete(
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

    /// Whether a message of `len` bytes from a peer is delivered inline
    /// (else it goes through a pool block).
    pub(super) fn fits_inline(&self, len: u64) -> bool {
        let ring_max = self.pool.layout().recv.max_record() - RECV_HEADER;
        len as usize <= ring_max.min(self.cfg.eager_max)
    }

    /// Deposit a message into an endpoint's receive ring: inline bytes, or
    /// a block handed to the endpoint's client.
    pub(super) fn deposit(
        &mut self,
        to: EpAddr,
        src_node: u32,
        src_ep: u32,
        data: RemoteData<'_>,
    ) -> Deposited {
        let Some(c) = self
            .clients
            .get_mut(to.slot)
            .filter(|c| c.closing.is_none())
        else {
            return Deposited::Gone;
        };
        let owner = c.owner(to.slot);
        let Some(r) = c.recv.get_mut(to.ep as usize).and_then(|r| r.as_mut()) else {
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
        // Staged, shown to the receiver every PUBLISH_EVERY slots and at the
        // end of the round (`Clients::wake`), not one store per message: the
        // receiver polling the ring's tail re-reads that cache line from this
        // core once per batch instead of once per message.
        match r.ring.try_stage(&[&d.to_bytes(), inline]) {
            Ok(true) => {
                if r.ring.unpublished_slots() >= PUBLISH_EVERY {
                    r.ring.publish();
                }
                c.delivered += 1;
                if let RemoteData::Block { off, len } = data {
                    self.blocks.transfer(off, owner);
                    self.blocks.set_len(off, len);
                }
                self.clients.touch(to.slot);
                Deposited::Delivered
            }
            Ok(false) => Deposited::Full,
            Err(e) => {
                self.evict(to.slot, &format!("receive ring: {e}"));
                Deposited::Gone
            }
        }
    }

    /// Deliver a message from peer `j`: into the ring when nothing waits
    /// before it there, else parked behind what waits (within the overflow
    /// budget). `Stall` only when the budget is spent: then the peer's
    /// frames wait, and TCP pushes back on the sender.
    pub(super) fn deposit_remote(
        &mut self,
        to: EpAddr,
        j: usize,
        src_ep: u32,
        data: RemoteData<'_>,
        ack: Option<ReplyTo>,
    ) -> Handled {
        let src_node = j as u32;
        let empty = self
            .clients
            .recv_ep(to)
            .is_some_and(|r| r.parked.is_empty());
        if empty {
            match self.deposit(to, src_node, src_ep, data) {
                Deposited::Delivered => {
                    if let Some(a) = ack {
                        self.queue_reply(a, RecordKind::Ack, Status::Ok);
                    }
                    return Handled::Done;
                }
                Deposited::Gone => {
                    self.undeliverable(data, ack);
                    return Handled::Done;
                }
                Deposited::Full => {}
            }
        }
        if self.clients.recv_ep(to).is_none() {
            // Nothing to wait for: the endpoint will not take it.
            self.undeliverable(data, ack);
            return Handled::Done;
        }
        let parked = Parked {
            src_node,
            src_ep,
            data: data.to_parked(),
            ack,
        };
        if !self.inbox.charge(&parked) {
            return Handled::Stall;
        }
        if let Some(r) = self.clients.recv_ep(to) {
            r.parked.push_back(parked);
        }
        Handled::Done
    }

    /// A Nack from peer `j` for a buffered send (not tracked one by one):
    /// reported to the client of endpoint `src_ep` only if it sent buffered
    /// messages to `j` since its last loss report, and only while its
    /// completion backlog is below [`PEER_COMP_BACKLOG_MAX`]; else dropped
    /// and counted, so a peer cannot flood a client with failures of sends
    /// it never made nor grow the agent with them.
    pub(super) fn buffered_nack(&mut self, j: usize, src_ep: u32, cookie: u64, status: Status) {
        let target = self.clients.endpoint(src_ep).and_then(|a| {
            let c = self.clients.get(a.slot)?;
            let sent = c.sent_to.get(j).copied().unwrap_or(false);
            (sent && c.comp_backlog.len() < PEER_COMP_BACKLOG_MAX).then_some(a.slot)
        });
        let Some(slot) = target else {
            let p = &mut self.peers[j];
            p.counters.replies_dropped += 1;
            if p.counters.replies_dropped.is_power_of_two() {
                log::warn!(
                    "peer node {j}: {} replies dropped (no matching send, or the sender's completions are not read)",
                    p.counters.replies_dropped
                );
            }
            return;
        };
        self.clients
            .complete(slot, Completion::send(status, cookie));
    }

    /// A message from a peer that its endpoint will never take (the client
    /// was detached while it was being deposited, or is leaving): its block
    /// returns to the pool, and a sender waiting for delivery hears that it
    /// failed. Called exactly once per such message, by whoever held it.
    pub(super) fn undeliverable(&mut self, data: RemoteData<'_>, ack: Option<ReplyTo>) {
        if let Some(b) = data.block() {
            self.blocks.free(b, Owner::Agent);
        }
        if let Some(a) = ack {
            self.queue_reply(a, RecordKind::Nack, Status::EndpointClosed);
        }
    }

    /// A message from peer `j` for an endpoint not open (yet): held for
    /// `unknown_ep_grace_ms` in case it opens (processes of a job start at
    /// different times), within the overflow budget; else refused.
    pub(super) fn orphan(&mut self, j: usize, h: &RecordHeader, data: RemoteData<'_>) {
        let nack = ReplyTo {
            peer: j,
            src_ep: h.src_ep,
            dst_ep: h.dst_ep,
            cookie: h.cookie,
        };
        let parked = Parked {
            src_node: j as u32,
            src_ep: h.src_ep,
            data: data.to_parked(),
            ack: (h.flags & FLAG_ACK != 0).then_some(nack),
        };
        let held = if self.cfg.unknown_ep_grace_ms == 0 {
            Err(parked)
        } else {
            self.inbox.hold_orphan(h.dst_ep, nack, parked, self.now)
        };
        if let Err(parked) = held {
            self.refuse_orphan(nack, parked);
        }
    }

    fn refuse_orphan(&mut self, nack: ReplyTo, parked: Parked) {
        if let ParkedData::Block { off, .. } = parked.data {
            self.blocks.free(off, Owner::Agent);
        }
        self.queue_reply(nack, RecordKind::Nack, Status::UnknownEndpoint);
    }

    /// Refuse held messages whose endpoint did not open in time.
    pub(super) fn expire_orphans(&mut self, now: std::time::Instant) {
        let grace = std::time::Duration::from_millis(self.cfg.unknown_ep_grace_ms);
        for o in self.inbox.expire(now, grace) {
            self.refuse_orphan(o.nack, o.parked);
        }
    }

    /// Move parked messages into rings that have room again.
    pub(super) fn drain_parked(&mut self) -> bool {
        if self.inbox.held_count() == 0 {
            return false;
        }
        let mut work = false;
        for slot in 0..self.clients.len() as u32 {
            let eps = match self.clients.get(slot) {
                Some(c) => c.recv.len() as u32,
                None => continue,
            };
            for ep in 0..eps {
                let to = EpAddr { slot, ep };
                while let Some(front) = self.clients.recv_ep(to).and_then(|r| r.parked.pop_front())
                {
                    let r = self.deposit(to, front.src_node, front.src_ep, front.data.as_data());
                    if r == Deposited::Full {
                        if let Some(r) = self.clients.recv_ep(to) {
                            r.parked.push_front(front);
                        }
                        break;
                    }
                    work = true;
                    self.inbox.release(&front);
                    if r == Deposited::Gone {
                        // The rest of its queue went with the endpoint.
                        self.undeliverable(front.data.as_data(), front.ack);
                        break;
                    }
                    if let Some(a) = front.ack {
                        self.queue_reply(a, RecordKind::Ack, Status::Ok);
                    }
                }
            }
        }
        work
    }

    /// Drop what is parked for an endpoint that goes away: blocks return to
    /// the pool, senders waiting for delivery hear why.
    pub(super) fn drop_parked(&mut self, parked: VecDeque<Parked>) {
        for p in parked {
            self.inbox.release(&p);
            if let ParkedData::Block { off, .. } = p.data {
                self.blocks.free(off, Owner::Agent);
            }
            if let Some(a) = p.ack {
                self.queue_reply(a, RecordKind::Nack, Status::EndpointClosed);
            }
        }
    }

    /// Queue an `Ack` or `Nack` record for a peer's message.
    pub(super) fn queue_reply(&mut self, to: ReplyTo, kind: RecordKind, status: Status) {
        let p = &mut self.peers[to.peer];
        let h = RecordHeader {
            kind,
            flags: 0,
            status: status as u16,
            src_ep: to.src_ep,
            dst_ep: to.dst_ep,
            chunk_len: 0,
            total: 0,
            offset: 0,
            cookie: to.cookie,
        };
        if !p.batch.fits(0) {
            p.flush_batch(&mut *self.transport, self.now, &mut self.freed);
        }
        p.batch.push(&h, &[]);
        p.batch_since.get_or_insert(self.now);
    }

    /// Detach a client that broke the rules: its connection is told why and
    /// closed, its slot reclaimed now.
    pub(super) fn evict(&mut self, slot: u32, why: &str) {
        log::warn!("detaching client slot {slot}: {why}");
        self.clients.evicted += 1;
        let now = self.now;
        if let Some(c) = self.clients.get_mut(slot) {
            // Nothing more of this client is processed.
            c.stalled = None;
            c.closing = Some(now.checked_sub(CLOSING_GRACE).unwrap_or(now));
            // `conn` is a slab index, reused once the client's connection
            // closed (it may have, if the client was already leaving): only
            // a connection that still belongs to this client is told and
            // closed, never the one a later client got in its place. (A
            // slot's connection is closed before the slot can be reused, so
            // the slot number alone identifies the client here.)
            let conn = c.conn;
            let ours = self.conns.get(conn).is_some_and(|k| k.client == Some(slot));
            if ours {
                let why = format!("detached by the agent: {why}");
                self.conns.reply_error(&self.poller, conn, why, self.now);
                let _ = self.conns.close(&self.poller, conn);
            }
        }
        self.reclaim(slot);
    }

    /// Take a client's slot back: its endpoints close, what was parked for
    /// them is dropped, its blocks return to the pool.
    pub(super) fn reclaim(&mut self, slot: u32) {
        let Some(mut c) = self.clients.take(slot) else {
            return;
        };
        self.heap_dirty = true;
        let owner = c.owner(slot);
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

    /// The client left (detached, exited or died): its endpoints stop
    /// receiving at once, but what it already published in its submission
    /// ring is still sent; then its slot is reclaimed.
    pub(super) fn start_closing(&mut self, slot: u32) {
        if self.clients.start_closing(slot, self.now) {
            self.maybe_reclaim(slot);
        }
    }

    /// Reclaim a departed client once drained, or once its grace is over.
    pub(super) fn maybe_reclaim(&mut self, slot: u32) {
        match self.clients.departure(slot, self.now) {
            Departure::Draining => {}
            Departure::Drained => self.reclaim(slot),
            Departure::Overdue => {
                log::warn!(
                    "client slot {slot}: dropping what it left unsent after {CLOSING_GRACE:?}"
                );
                self.reclaim(slot);
            }
        }
    }

    /// Every slot is taken: a client that already left but whose published
    /// sends still wait (for a peer, for ring room: up to [`CLOSING_GRACE`])
    /// gives its slot up to a live client now, the one that left first.
    /// Without this, clients that publish sends nobody can take and die,
    /// a few a second, would hold every slot.
    pub(super) fn reclaim_oldest_departed(&mut self) -> Option<usize> {
        let slot = self.clients.oldest_departed()?;
        log::warn!(
            "client slot {slot}: every slot is taken; dropping what its departed client left unsent to make room"
        );
        self.clients.departed_reclaimed += 1;
        self.reclaim(slot);
        self.clients.get(slot).is_none().then_some(slot as usize)
    }

    /// Act on pool pages the SIGBUS guard replaced: a client punched a hole
    /// in the pool memfd (fallocate PUNCH_HOLE) and no page could be faulted
    /// back in, so the agent now has a private zero copy of that page. What
    /// it held is no longer shared with clients: the clients whose slots
    /// overlap it are detached and their slots retired, the block range is
    /// quarantined, and the agent serves everyone else as before.
    pub(super) fn pool_damage(&mut self) {
        let mut found = Vec::new();
        self.damage.take(&mut found);
        let Some(region) = self.pool.guard_region() else {
            return;
        };
        let page = self.pool.page_size() as u64;
        let l = *self.pool.layout();
        for d in found.into_iter().filter(|d| d.region == region) {
            let (lo, hi) = (d.offset, d.offset + page);
            self.counters.pool_pages_damaged += 1;
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
                if self.clients.retire(slot) {
                    log::error!(
                        "client slot {slot} lies in the damaged page: retired until the agent restarts"
                    );
                }
                if self.clients.get(slot).is_some() {
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
}
