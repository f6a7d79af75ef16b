//! The clients room: the attached processes (one slot each), their rings,
//! endpoints and completions, and which of them to wake.
//!
//! It knows nothing of peers or links; time comes in as `now`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::proto::{Completion, Op, Status, Submit};
use crate::shm::blocks::Owner;
use crate::shm::{sleeping_for, Pool, RingRx, RingTx, SLEEP_FOR_ROOM};

use super::inbox::Parked;

/// Completions kept for a client whose completion ring is full; beyond
/// this its submissions are not taken (the agent's memory stays bounded).
pub(super) const COMP_BACKLOG_MAX: usize = 4096;
/// Completions a peer's Nacks of buffered sends may queue for one client
/// whose completion ring is full; beyond, they are dropped and counted
/// (`replies_dropped`). (Replies to Delivered sends are bounded by the sends
/// themselves: one each.)
pub(super) const PEER_COMP_BACKLOG_MAX: usize = COMP_BACKLOG_MAX;
/// How long a departed client's published submissions may take to go out.
pub(super) const CLOSING_GRACE: Duration = Duration::from_secs(10);
/// The first endpoint id the agent hands out itself (lower ones are for
/// clients that choose their own).
const FIRST_AUTO_EP: u32 = 1 << 16;

/// An endpoint's place: its client's slot and its slot in that client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EpAddr {
    pub(super) slot: u32,
    pub(super) ep: u32,
}

pub(super) struct RecvEp {
    pub(super) id: u32,
    pub(super) ring: RingTx,
    /// Messages from peers that found the ring full, in arrival order. They
    /// wait here (up to `overflow_bytes` per agent) so that one slow endpoint
    /// does not hold back a peer link that carries traffic for others too.
    pub(super) parked: VecDeque<Parked>,
}

pub(super) struct ClientState {
    pub(super) gen: u32,
    pub(super) pid: u32,
    pub(super) name: String,
    /// Its control connection (an index of the agent's connections).
    pub(super) conn: usize,
    pub(super) sub: RingRx,
    pub(super) comp: RingTx,
    pub(super) comp_backlog: VecDeque<Completion>,
    pub(super) recv: Vec<Option<RecvEp>>,
    /// The agent's end of this client's bell (a datagram socket pair made
    /// by the agent at attach): a byte from the client rings the agent, a
    /// byte from the agent wakes the client. Non-blocking, and the client
    /// never holds this file description, so it cannot make it block.
    pub(super) bell: std::os::unix::net::UnixDatagram,
    /// A submission that could not be handled yet (a ring or link full).
    pub(super) stalled: Option<Vec<u8>>,
    /// Its large send waits to be queued; its submissions wait too.
    pub(super) waiting_large: bool,
    /// Set when the client left; its slot is reclaimed once drained.
    pub(super) closing: Option<Instant>,
    /// Nodes it sent buffered messages to since the last loss report: told
    /// when such a node is lost (those messages may be lost with it).
    pub(super) sent_to: Vec<bool>,
    pub(super) submitted: u64,
    pub(super) delivered: u64,
    pub(super) errors: u64,
}

impl ClientState {
    pub(super) fn owner(&self, slot: u32) -> Owner {
        Owner::Client {
            slot,
            gen: self.gen,
        }
    }

    /// Whether it holds its submissions back until something else happens
    /// (its large send is queued, it reads its completions).
    pub(super) fn held_back(&self) -> bool {
        self.waiting_large || self.comp_backlog.len() >= COMP_BACKLOG_MAX
    }
}

/// What a departed client's slot is ready for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Departure {
    /// Still attached, or still sending what it published.
    Draining,
    /// Everything it published went out: reclaim it.
    Drained,
    /// Its grace ran out with sends still waiting: reclaim it, dropping them.
    Overdue,
}

/// Why a client was touched this round (ordered: the most waking wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Touch {
    None,
    /// Records taken from its submission ring: room made.
    Room,
    /// Something given: a completion, a message.
    Given,
}

/// The attached clients.
pub(super) struct Clients {
    slots: Vec<Option<ClientState>>,
    /// Generation of each slot, bumped at every attach.
    gens: Vec<u32>,
    /// Open endpoints by id, looked up for every message delivered. Fx, not
    /// SipHash: the keys are chosen by clients, but each client opens at most
    /// `endpoints_per_client`, so no client can make a long collision chain.
    endpoints: FxHashMap<u32, EpAddr>,
    next_ep: u32,
    /// Clients given something this round, to wake if they sleep.
    touched: Vec<u32>,
    touched_flag: Vec<Touch>,
    /// Slots whose memory is no longer shared with clients: never given to
    /// a client again (until restart).
    retired: Vec<bool>,
    /// Clients detached by the agent.
    pub(super) evicted: u64,
    /// Departed clients' slots taken back early for a new client.
    pub(super) departed_reclaimed: u64,
}

impl Clients {
    pub(super) fn new(max: usize) -> Clients {
        Clients {
            slots: (0..max).map(|_| None).collect(),
            gens: vec![0; max],
            endpoints: FxHashMap::default(),
            next_ep: FIRST_AUTO_EP,
            touched: Vec::new(),
            touched_flag: vec![Touch::None; max],
            retired: vec![false; max],
            evicted: 0,
            departed_reclaimed: 0,
        }
    }

    /// Number of slots.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn get(&self, slot: u32) -> Option<&ClientState> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut ClientState> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// The client `owner` names, if it is still the one in its slot.
    pub(super) fn live(&mut self, owner: Owner) -> Option<&mut ClientState> {
        let Owner::Client { slot, gen } = owner else {
            return None;
        };
        self.get_mut(slot).filter(|c| c.gen == gen)
    }

    /// Every attached client with its slot.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut ClientState)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| Some((i as u32, c.as_mut()?)))
    }

    /// The endpoint with this id.
    pub(super) fn endpoint(&self, id: u32) -> Option<EpAddr> {
        self.endpoints.get(&id).copied()
    }

    /// The id of endpoint slot `ep_slot` of client `slot`, if open.
    pub(super) fn src_ep(&self, slot: u32, ep_slot: u32) -> Option<u32> {
        let c = self.get(slot)?;
        c.recv.get(ep_slot as usize)?.as_ref().map(|e| e.id)
    }

    /// The receive endpoint at `a`, while its client is not leaving.
    pub(super) fn recv_ep(&mut self, a: EpAddr) -> Option<&mut RecvEp> {
        self.get_mut(a.slot)
            .filter(|c| c.closing.is_none())?
            .recv
            .get_mut(a.ep as usize)?
            .as_mut()
    }

    /// Remember `slot` for waking at the end of the round: it was given
    /// something (a completion, a message).
    pub(super) fn touch(&mut self, slot: u32) {
        self.mark(slot, Touch::Given);
    }

    /// Remember `slot` for waking at the end of the round, if it sleeps
    /// waiting for room: records were taken from its submission ring.
    pub(super) fn touch_room(&mut self, slot: u32) {
        self.mark(slot, Touch::Room);
    }

    fn mark(&mut self, slot: u32, t: Touch) {
        let f = &mut self.touched_flag[slot as usize];
        if *f == Touch::None {
            self.touched.push(slot);
        }
        *f = (*f).max(t);
    }

    /// Wake the clients given something this round that sleep. A client
    /// that sleeps only for room in its submission ring, and was given
    /// nothing but room, is woken once half its ring is free, not for every
    /// burst taken (it would fill the few slots and sleep again: a wake-up,
    /// two context switches, per burst).
    pub(super) fn wake(&mut self, pool: &Pool) {
        for slot in self.touched.drain(..) {
            let t = std::mem::replace(&mut self.touched_flag[slot as usize], Touch::None);
            if let Some(c) = self.slots[slot as usize].as_mut() {
                // Show what was deposited this round (staged by `deposit`;
                // every deposit touches its slot) before looking whether the
                // client sleeps: the fence in `sleeping_for` orders the two.
                for r in c.recv.iter_mut().flatten() {
                    r.ring.publish();
                }
                let wake = match sleeping_for(pool.client_sleeping(slot)) {
                    None => false,
                    Some(SLEEP_FOR_ROOM) if t == Touch::Room => c.sub.half_free(),
                    Some(_) => true,
                };
                if wake {
                    // Non-blocking: a full queue means wake-ups are already
                    // pending there (EAGAIN is ignored); a closed peer end
                    // is the client leaving (seen on its control socket).
                    let _ = c.bell.send(&[1]);
                }
            }
        }
    }

    /// Post a completion (to the backlog when the ring is full).
    pub(super) fn complete(&mut self, slot: u32, comp: Completion) {
        let Some(c) = self.get_mut(slot) else {
            return;
        };
        if c.closing.is_some() {
            // Nobody will read it.
            return;
        }
        if !c.comp_backlog.is_empty() || !matches!(c.comp.try_push(&[&comp.to_bytes()]), Ok(true)) {
            c.comp_backlog.push_back(comp);
        }
        self.touch(slot);
    }

    /// Complete a send of `owner`'s, if that client is still there.
    pub(super) fn complete_send(&mut self, owner: Owner, cookie: u64, status: Status) {
        if let Owner::Client { slot, gen } = owner {
            if self.get(slot).map(|c| c.gen) == Some(gen) {
                self.complete(slot, Completion::send(status, cookie));
            }
        }
    }

    /// `owner`'s large send was queued (or failed): its submissions go on.
    pub(super) fn unblock(&mut self, owner: Owner) {
        if let Some(c) = self.live(owner) {
            c.waiting_large = false;
        }
    }

    /// A free slot for a new client (never a retired one).
    pub(super) fn free_slot(&self) -> Option<usize> {
        self.slots
            .iter()
            .zip(&self.retired)
            .position(|(c, &retired)| c.is_none() && !retired)
    }

    /// The slot of the client that left first, among those still draining.
    pub(super) fn oldest_departed(&self) -> Option<u32> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((c.as_ref()?.closing?, i as u32)))
            .min()
            .map(|(_, i)| i)
    }

    /// Slots retired (see [`Clients::retire`]).
    pub(super) fn retired(&self) -> usize {
        self.retired.iter().filter(|&&r| r).count()
    }

    /// Never give `slot` to a client again; returns whether it is new.
    pub(super) fn retire(&mut self, slot: u32) -> bool {
        !std::mem::replace(&mut self.retired[slot as usize], true)
    }

    /// Put a client in `slot` (from [`Clients::free_slot`]); its generation
    /// is bumped and given to `make`.
    pub(super) fn attach(&mut self, slot: usize, make: impl FnOnce(u32) -> ClientState) {
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        self.slots[slot] = Some(make(self.gens[slot]));
    }

    /// An endpoint id for a new endpoint: the one asked for, if free and
    /// not reserved, else one of the agent's own.
    pub(super) fn new_ep_id(&mut self, asked: Option<u32>) -> Result<u32, String> {
        match asked {
            Some(u32::MAX) => Err("endpoint id 4294967295 is reserved".into()),
            Some(id) if self.endpoints.contains_key(&id) => {
                Err(format!("endpoint {id} is already open on this node"))
            }
            Some(id) => Ok(id),
            None => {
                while self.endpoints.contains_key(&self.next_ep) || self.next_ep == u32::MAX {
                    self.next_ep = self.next_ep.wrapping_add(1).max(FIRST_AUTO_EP);
                }
                // Not handed out again before the counter wraps: a late
                // message for a closed endpoint must not reach its successor.
                let id = self.next_ep;
                self.next_ep = self.next_ep.wrapping_add(1).max(FIRST_AUTO_EP);
                Ok(id)
            }
        }
    }

    /// Whether client `slot` has a free endpoint slot; else how many it has.
    pub(super) fn free_ep_slot(&self, slot: u32) -> Result<(), usize> {
        match self.get(slot) {
            Some(c) if c.recv.iter().any(|r| r.is_none()) => Ok(()),
            Some(c) => Err(c.recv.len()),
            None => Err(0),
        }
    }

    /// Open endpoint `id` in a free endpoint slot of client `slot` (checked
    /// with [`Clients::free_ep_slot`]), with what waited for it; returns the
    /// endpoint slot.
    pub(super) fn open_ep(
        &mut self,
        slot: u32,
        id: u32,
        ring: impl FnOnce(u32) -> RingTx,
        parked: VecDeque<Parked>,
    ) -> u32 {
        let c = self.get_mut(slot).expect("an attached client");
        let e = c
            .recv
            .iter()
            .position(|r| r.is_none())
            .expect("a free endpoint slot");
        c.recv[e] = Some(RecvEp {
            id,
            ring: ring(e as u32),
            parked,
        });
        self.endpoints.insert(id, EpAddr { slot, ep: e as u32 });
        e as u32
    }

    /// Close endpoint `id` of client `slot`; returns what was parked there.
    pub(super) fn close_ep(&mut self, slot: u32, id: u32) -> Option<VecDeque<Parked>> {
        match self.endpoints.get(&id) {
            Some(a) if a.slot == slot => {
                let a = *a;
                self.endpoints.remove(&id);
                let r = self.get_mut(slot)?.recv.get_mut(a.ep as usize)?.take()?;
                Some(r.parked)
            }
            _ => None,
        }
    }

    /// The client left: its endpoints stop receiving at once (what it
    /// published is still sent). Returns false if it was already leaving.
    pub(super) fn start_closing(&mut self, slot: u32, now: Instant) -> bool {
        let Some(c) = self.slots[slot as usize].as_mut() else {
            return false;
        };
        if c.closing.is_some() {
            return false;
        }
        c.closing = Some(now);
        for ep in c.recv.iter().flatten() {
            self.endpoints.remove(&ep.id);
        }
        true
    }

    /// Where a departed client stands.
    pub(super) fn departure(&mut self, slot: u32, now: Instant) -> Departure {
        let Some(c) = self.get_mut(slot) else {
            return Departure::Draining;
        };
        let Some(since) = c.closing else {
            return Departure::Draining;
        };
        let drained = c.stalled.is_none()
            && !c.waiting_large
            && matches!(c.sub.is_empty(), Ok(true) | Err(_));
        if drained {
            Departure::Drained
        } else if now.saturating_duration_since(since) > CLOSING_GRACE {
            Departure::Overdue
        } else {
            Departure::Draining
        }
    }

    /// Take client `slot` out (its endpoints closed).
    pub(super) fn take(&mut self, slot: u32) -> Option<ClientState> {
        let c = self.slots[slot as usize].take()?;
        for ep in c.recv.iter().flatten() {
            self.endpoints.remove(&ep.id);
        }
        Some(c)
    }

    /// Whether any client has work a sleep would delay (see
    /// [`super::Agent::any_client_work`]): `remote(s)` says whether a stalled
    /// submission waits on a remote peer (not urgent).
    pub(super) fn any_work(&mut self, remote: impl Fn(&Submit) -> bool) -> bool {
        self.slots.iter_mut().flatten().any(|c| {
            if c.closing.is_some() || c.held_back() {
                return false;
            }
            match &c.stalled {
                Some(rec) => !Submit::parse(rec)
                    .is_ok_and(|(s, _)| matches!(s.op, Op::Send | Op::SendBlock) && remote(&s)),
                None => !matches!(c.sub.is_empty(), Ok(true)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids_are_checked_and_not_reused_before_the_counter_wraps() {
        let mut c = Clients::new(2);
        assert!(c.new_ep_id(Some(u32::MAX)).is_err());
        assert_eq!(c.new_ep_id(Some(7)), Ok(7));
        let a = c.new_ep_id(None).unwrap();
        let b = c.new_ep_id(None).unwrap();
        assert!(a >= FIRST_AUTO_EP && b == a + 1);
        c.endpoints.insert(b + 1, EpAddr { slot: 0, ep: 0 });
        assert_eq!(c.new_ep_id(None), Ok(b + 2), "an id in use is skipped");
        assert!(c.new_ep_id(Some(b + 1)).is_err());
        c.next_ep = u32::MAX;
        assert_eq!(
            c.new_ep_id(None),
            Ok(FIRST_AUTO_EP),
            "wraps past the reserved id"
        );
    }

    #[test]
    fn touched_slots_are_listed_once() {
        let mut c = Clients::new(4);
        c.touch(2);
        c.touch(2);
        c.touch(1);
        assert_eq!(c.touched, vec![2, 1]);
    }

    #[test]
    fn retired_slots_are_never_free_again() {
        let mut c = Clients::new(2);
        assert!(c.retire(0));
        assert!(!c.retire(0));
        assert_eq!(c.free_slot(), Some(1));
        assert_eq!(c.retired(), 1);
    }
}
