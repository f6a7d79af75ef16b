//! Clients' submissions: each round takes up to [`BURST`] records from every
//! client's submission ring and carries them out (allocate, free, send to a
//! local endpoint or into the frame being built for a peer).

use crate::proto::{CompKind, Completion, Mode, Op, Status, Submit};
use crate::shm::blocks::Owner;
use crate::wire::{RecordHeader, RecordKind, FLAG_ACK};

use super::deliver::{Deposited, Handled};
use super::inbox::RemoteData;
use super::peers::{LargeSend, PeerState};
use super::{Agent, BURST};

impl Agent {
    /// Take what clients submitted; returns whether anything was done.
    pub(super) fn poll_clients(&mut self) -> bool {
        let mut work = false;
        // Round robin: start with the first client that stalled last round
        // without getting anything through (it has waited longest); a
        // client served passes the turn. From slot 0 every round, the first
        // few clients took all the room a full link freed.
        let n = self.clients.len();
        let first = self.sub_turn % n.max(1);
        let mut waiting: Option<usize> = None;
        for k in 0..n {
            let slot = ((first + k) % n) as u32;
            let Some(c) = self.clients.get_mut(slot) else {
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
            let held_back = c.held_back();
            if moved {
                work = true;
                self.clients.touch(slot);
            }
            if held_back {
                // Waiting for its large send to be queued, or for it to read
                // its completions: its submissions wait too. A departed
                // client is still reclaimed (after its grace period if a
                // large send holds it).
                self.maybe_reclaim(slot);
                continue;
            }
            let mut rec = std::mem::take(&mut self.rec);
            let mut taken = 0;
            for _ in 0..BURST {
                let Some(c) = self.clients.get_mut(slot) else {
                    break;
                };
                if c.waiting_large {
                    break;
                }
                let from_stall = if let Some(s) = c.stalled.take() {
                    rec = s;
                    true
                } else {
                    // Taken now, the slots given back once for the burst
                    // (below): one store the client's core sees, not one
                    // per record. (A stalled record is kept as a copy.)
                    match c.sub.try_take(&mut rec) {
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
                self.clients.touch_room(slot);
                match self.handle_submit(slot, &rec) {
                    Handled::Done | Handled::DoneStop => {
                        work = true;
                        taken += 1;
                    }
                    Handled::Stall => {
                        if let Some(c) = self.clients.get_mut(slot) {
                            c.stalled = Some(std::mem::take(&mut rec));
                        }
                        // A stall retried without progress is not work (a
                        // record just taken from the ring is). Not `work =
                        // false`: that undid what the clients before did.
                        if !from_stall {
                            work = true;
                        }
                        if taken == 0 && waiting.is_none() {
                            waiting = Some(slot as usize);
                        }
                        break;
                    }
                }
            }
            self.rec = rec;
            if let Some(c) = self.clients.get_mut(slot) {
                c.sub.release();
            }
            self.maybe_reclaim(slot);
        }
        self.sub_turn = waiting.unwrap_or(first + 1);
        work
    }

    fn handle_submit(&mut self, slot: u32, rec: &[u8]) -> Handled {
        let (s, payload) = match Submit::parse(rec) {
            Ok(x) => x,
            Err(why) => return self.refuse(slot, u64::MAX, why),
        };
        let owner = match self.clients.get(slot) {
            Some(c) => c.owner(slot),
            None => return Handled::Done,
        };
        match s.op {
            Op::Alloc => {
                let quota = self.cfg.client_block_quota.min(self.blocks.max_alloc());
                let mut comp = Completion {
                    kind: CompKind::Alloc,
                    status: Status::NoMemory,
                    cookie: s.cookie,
                    off: 0,
                    len: 0,
                };
                if s.len > quota {
                    comp.status = Status::TooLarge;
                } else if self.blocks.held_by(owner) + s.len > quota {
                    // Over its share for now: it may ask again once it has
                    // sent or returned blocks (NoMemory).
                } else if let Some(b) = self.blocks.alloc(s.len, owner) {
                    comp.status = Status::Ok;
                    comp.off = b.off;
                    comp.len = b.len;
                }
                self.clients.complete(slot, comp);
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
        let Some(src_ep) = self.clients.src_ep(slot, s.src_slot) else {
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
            a.clients.complete_send(owner, s.cookie, status);
            Handled::Done
        };
        let j = s.dst_node as usize;
        let Some(peer) = self.peers.get(j) else {
            return fail(self, Status::UnknownNode);
        };
        match peer.state() {
            PeerState::Local => {
                let Some(to) = self.clients.endpoint(s.dst_ep) else {
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
                match self.deposit(to, self.cfg.node_id, src_ep, data) {
                    Deposited::Full => Handled::Stall,
                    // The block (still the sender's) is freed, the sender told.
                    Deposited::Gone => fail(self, Status::EndpointClosed),
                    Deposited::Delivered => {
                        self.counters.local_msgs += 1;
                        if s.mode == Mode::Delivered {
                            self.clients.complete_send(owner, s.cookie, Status::Ok);
                        }
                        Handled::Done
                    }
                }
            }
            PeerState::Lost(_) => {
                self.peers[j].counters.errors += 1;
                fail(self, Status::PeerLost)
            }
            PeerState::Idle => {
                // The first message for it: make the link; the send waits.
                self.want_peer(j);
                Handled::Stall
            }
            PeerState::Connecting
            | PeerState::Resuming
            | PeerState::Disconnected(..)
            | PeerState::Up => {
                if peer.state() != &PeerState::Up
                    || self.transport.link(s.dst_node).queued >= self.cfg.peer_queue_bytes
                    || peer.unacked_bytes() >= self.retain_limit()
                {
                    return Handled::Stall;
                }
                self.queue_send(slot, owner, s, src_ep, payload);
                Handled::Done
            }
        }
    }

    /// Queue a send to an up peer with room: a large one whole (cut into
    /// chunks as the link drains), a small one into the frame being built.
    fn queue_send(&mut self, slot: u32, owner: Owner, s: &Submit, src_ep: u32, payload: &[u8]) {
        let j = s.dst_node as usize;
        let flags = if s.mode == Mode::Delivered {
            FLAG_ACK
        } else {
            0
        };
        if s.mode == Mode::Buffered {
            if let Some(c) = self.clients.get_mut(slot) {
                c.sent_to[j] = true;
            }
        }
        let p = &mut self.peers[j];
        // A Delivered send goes out under the agent's own cookie (see
        // `AckTable`); a buffered one under the client's, which a Nack
        // brings back.
        let cookie = if s.mode == Mode::Delivered {
            p.acks.insert(owner, src_ep, s.cookie)
        } else {
            s.cookie
        };
        if s.op == Op::SendBlock {
            self.blocks.transfer(s.off, Owner::Agent);
            // Everything this client sent before goes first.
            p.flush_batch(&mut *self.transport, self.now, &mut self.freed);
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
            if let Some(c) = self.clients.get_mut(slot) {
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
                p.flush_batch(&mut *self.transport, self.now, &mut self.freed);
            }
            p.batch.push(&h, payload);
            p.batch_since.get_or_insert(self.now);
            p.counters.msgs_tx += 1;
            p.counters.bytes_tx += payload.len() as u64;
        }
    }
}
