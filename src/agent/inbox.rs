//! The inbox room: messages from peers that cannot go into a receive ring
//! yet, and the budget (`overflow_bytes`) they are held within.
//!
//! Two kinds wait: *parked* messages found their endpoint's ring full (they
//! sit in the endpoint's queue, [`super::clients::RecvEp::parked`], and the
//! inbox only counts them), and *orphans* are for an endpoint not open yet
//! (held here, by endpoint id, until it opens or their grace ends). Both are
//! charged at their real cost ([`Parked::cost`]). Sans-IO: time comes in as
//! `now`; what to refuse goes back to the caller.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::shm::BLOCK_UNIT;

/// Whom to answer about a message from a peer, and with which cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ReplyTo {
    /// The peer (its node index).
    pub(super) peer: usize,
    pub(super) src_ep: u32,
    pub(super) dst_ep: u32,
    pub(super) cookie: u64,
}

/// A message's payload before it is deposited: inline bytes, or a block.
#[derive(Clone, Copy)]
pub(super) enum RemoteData<'a> {
    Inline(&'a [u8]),
    Block { off: u64, len: u64 },
}

impl RemoteData<'_> {
    pub(super) fn to_parked(self) -> ParkedData {
        match self {
            RemoteData::Inline(p) if p.len() <= SMALL_PARKED => {
                let mut bytes = [0u8; SMALL_PARKED];
                bytes[..p.len()].copy_from_slice(p);
                ParkedData::Small {
                    len: p.len() as u8,
                    bytes,
                }
            }
            RemoteData::Inline(p) => ParkedData::Inline(p.to_vec()),
            RemoteData::Block { off, len } => ParkedData::Block { off, len },
        }
    }

    /// The agent-owned block it is in, if any.
    pub(super) fn block(&self) -> Option<u64> {
        match self {
            RemoteData::Block { off, .. } => Some(*off),
            RemoteData::Inline(_) => None,
        }
    }
}

/// A message from a peer waiting for room in an endpoint's ring.
pub(super) struct Parked {
    pub(super) src_node: u32,
    pub(super) src_ep: u32,
    pub(super) data: ParkedData,
    /// The `Ack` owed once deposited (a Delivered send).
    pub(super) ack: Option<ReplyTo>,
}

/// The largest payload parked in place (in [`ParkedData::Small`], no heap
/// allocation). A receiver slower than its senders has every message parked
/// on its way into the ring: a `Vec` each was 3.5 % of a 64 B stream's
/// samples on a memif pair (malloc and free).
pub(super) const SMALL_PARKED: usize = 64;
const _: () = assert!(SMALL_PARKED <= u8::MAX as usize);

pub(super) enum ParkedData {
    /// A payload of at most [`SMALL_PARKED`] bytes, in place.
    Small {
        len: u8,
        bytes: [u8; SMALL_PARKED],
    },
    Inline(Vec<u8>),
    /// An agent-owned block.
    Block {
        off: u64,
        len: u64,
    },
}

impl ParkedData {
    pub(super) fn as_data(&self) -> RemoteData<'_> {
        match self {
            ParkedData::Small { len, bytes } => RemoteData::Inline(&bytes[..usize::from(*len)]),
            ParkedData::Inline(v) => RemoteData::Inline(v),
            ParkedData::Block { off, len } => RemoteData::Block {
                off: *off,
                len: *len,
            },
        }
    }
}

/// A message held for an endpoint that is not open yet.
pub(super) struct Orphan {
    since: Instant,
    /// To refuse it with.
    pub(super) nack: ReplyTo,
    pub(super) parked: Parked,
}

/// Heap bytes glibc's malloc takes for an allocation of `len` bytes: the
/// request plus its 8-byte chunk header, rounded up to 16, at least 32 (an
/// empty `Vec` allocates nothing).
fn malloc_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len + 8).next_multiple_of(16).max(32)
    }
}

/// What one held message costs the agent beyond its payload, as charged
/// against `overflow_bytes` (the real cost, an upper bound, not a guess):
/// - its slot in a `VecDeque<Orphan>` (an orphan is the larger form of a
///   parked message), twice: a deque grows by doubling, so up to half its
///   slots are empty;
/// - its entry `(since, dst_ep)` in the expiry FIFO, twice for the same
///   reason.
///
/// On x86-64: Orphan = 152 B (a payload of up to [`SMALL_PARKED`] bytes
/// inside it), the FIFO entry 24 B, so 352 B + a larger payload's heap
/// allocation.
const HELD_MSG_COST: usize =
    2 * std::mem::size_of::<Orphan>() + 2 * std::mem::size_of::<(Instant, u32)>();

/// What one endpoint with held messages costs beyond its messages: its
/// entry in the `orphans` map (key and deque header, plus hashbrown's
/// control byte), twice (load factor 7/8 and growth by doubling), and the
/// deque's first allocation, which is 4 slots (2 of them charged to its
/// first message already). On x86-64: 2 × (40 + 1) + 2 × 152 = 386 B.
const HELD_EP_COST: usize =
    2 * (std::mem::size_of::<(u32, VecDeque<Orphan>)>() + 1) + 2 * std::mem::size_of::<Orphan>();

impl Parked {
    /// Its real cost: [`HELD_MSG_COST`] and an inline payload's heap
    /// allocation (a block's payload lives in the pool, not the heap). Was 64
    /// + payload, about 8 × too little for small messages.
    pub(super) fn cost(&self) -> usize {
        HELD_MSG_COST
            + match &self.data {
                ParkedData::Inline(v) => malloc_bytes(v.capacity()),
                // In the `Orphan` (and so in `HELD_MSG_COST`) already.
                ParkedData::Small { .. } | ParkedData::Block { .. } => 0,
            }
    }

    /// The pool block bytes it holds (its block as reserved, in whole
    /// units), counted against its peer's `peer_rx_bytes`, not the budget.
    pub(super) fn block_bytes(&self) -> u64 {
        match &self.data {
            ParkedData::Block { len, .. } => reserved(*len),
            ParkedData::Small { .. } | ParkedData::Inline(_) => 0,
        }
    }
}

/// The block bytes a message of `len` bytes from a peer reserves (whole
/// [`BLOCK_UNIT`]s, at least one).
pub(super) fn reserved(len: u64) -> u64 {
    len.max(1).saturating_add(BLOCK_UNIT - 1) / BLOCK_UNIT * BLOCK_UNIT
}

/// Held messages and their budget.
pub(super) struct Inbox {
    /// `overflow_bytes`: what held messages may cost in all.
    budget: usize,
    /// Bytes of messages held (parked and orphans), at their cost.
    bytes: usize,
    /// Messages held.
    count: usize,
    /// Messages from peers for endpoints not open yet, by endpoint id.
    orphans: HashMap<u32, VecDeque<Orphan>>,
    /// `(since, dst_ep)` of every orphan in arrival order, so that expiry
    /// looks only at what expires (entries whose orphan was taken by an
    /// endpoint that opened are skipped as they come up).
    fifo: VecDeque<(Instant, u32)>,
    /// Pool block bytes of the held messages, by the peer they came from
    /// (indexed by node; what `peer_rx_bytes` bounds with the peer's
    /// messages in reassembly).
    peer_blocks: Vec<u64>,
}

impl Inbox {
    pub(super) fn new(budget: usize) -> Inbox {
        Inbox {
            budget,
            bytes: 0,
            count: 0,
            orphans: HashMap::new(),
            fifo: VecDeque::new(),
            peer_blocks: Vec::new(),
        }
    }

    /// Bytes of memory held for messages from peers (parked and orphans,
    /// at their real cost) against the budget. The endpoints' share is
    /// counted from the map itself, so it cannot drift.
    pub(super) fn held_bytes(&self) -> usize {
        self.bytes + self.orphans.len() * HELD_EP_COST
    }

    /// Bytes of the messages held, at their cost (without the endpoints').
    pub(super) fn msg_bytes(&self) -> usize {
        self.bytes
    }

    /// Messages held.
    pub(super) fn held_count(&self) -> usize {
        self.count
    }

    /// Charge a message about to be parked; false (nothing charged) when
    /// the budget has no room for it.
    pub(super) fn charge(&mut self, m: &Parked) -> bool {
        if self.held_bytes() + m.cost() > self.budget {
            return false;
        }
        self.add(m);
        true
    }

    /// Count a message as held.
    fn add(&mut self, m: &Parked) {
        self.bytes += m.cost();
        self.count += 1;
        let node = m.src_node as usize;
        if node >= self.peer_blocks.len() {
            self.peer_blocks.resize(node + 1, 0);
        }
        self.peer_blocks[node] += m.block_bytes();
    }

    /// A held message left (deposited, refused or dropped).
    pub(super) fn release(&mut self, m: &Parked) {
        self.bytes -= m.cost();
        self.count -= 1;
        if let Some(b) = self.peer_blocks.get_mut(m.src_node as usize) {
            *b -= m.block_bytes();
        }
    }

    /// Pool block bytes of the held messages that came from peer `node`.
    pub(super) fn peer_block_bytes(&self, node: usize) -> u64 {
        self.peer_blocks.get(node).copied().unwrap_or(0)
    }

    /// Hold a message for endpoint `dst_ep`, not open yet; gives it back
    /// when the budget has no room.
    pub(super) fn hold_orphan(
        &mut self,
        dst_ep: u32,
        nack: ReplyTo,
        parked: Parked,
        now: Instant,
    ) -> Result<(), Parked> {
        let new_ep = if self.orphans.contains_key(&dst_ep) {
            0
        } else {
            HELD_EP_COST
        };
        if self.held_bytes() + new_ep + parked.cost() > self.budget {
            return Err(parked);
        }
        self.add(&parked);
        self.orphans.entry(dst_ep).or_default().push_back(Orphan {
            since: now,
            nack,
            parked,
        });
        self.fifo.push_back((now, dst_ep));
        Ok(())
    }

    /// Endpoint `id` opened: what waited for it, in arrival order, to park
    /// there (still held, still charged).
    pub(super) fn adopt(&mut self, id: u32) -> VecDeque<Parked> {
        self.orphans
            .remove(&id)
            .map(|q| q.into_iter().map(|o| o.parked).collect())
            .unwrap_or_default()
    }

    /// Take the held messages whose endpoint did not open within `grace`
    /// (released: the caller refuses them). Looks at the expiry FIFO from
    /// its oldest entry and stops at the first that has not expired: the
    /// cost is the number of entries expired (was: a walk over every held
    /// endpoint every tick).
    pub(super) fn expire(&mut self, now: Instant, grace: Duration) -> Vec<Orphan> {
        let mut expired = Vec::new();
        while let Some(&(since, ep)) = self.fifo.front() {
            if now.duration_since(since) <= grace {
                break;
            }
            self.fifo.pop_front();
            // The orphans of one endpoint are in arrival order too: this
            // entry's orphan is the front of its queue, unless the endpoint
            // opened and took them (then nothing is there, or younger ones).
            let Some(q) = self.orphans.get_mut(&ep) else {
                continue;
            };
            if q.front().is_some_and(|o| o.since == since) {
                expired.extend(q.pop_front());
            }
            if q.is_empty() {
                self.orphans.remove(&ep);
            }
        }
        for o in &expired {
            self.release(&o.parked);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures the cost comments give (x86-64), so a change of the
    /// structs shows up here and in the comments.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn held_message_costs_are_what_the_comments_say() {
        assert_eq!(std::mem::size_of::<Orphan>(), 152);
        assert_eq!(HELD_MSG_COST, 352);
        assert_eq!(HELD_EP_COST, 386);
        assert_eq!(malloc_bytes(0), 0);
        assert_eq!(malloc_bytes(1), 32);
        assert_eq!(malloc_bytes(24), 32);
        assert_eq!(malloc_bytes(25), 48);
    }

    #[test]
    fn a_small_payload_is_parked_in_place_and_comes_back_whole() {
        for len in [0, 1, 8, SMALL_PARKED - 1, SMALL_PARKED, SMALL_PARKED + 1] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let d = RemoteData::Inline(&payload).to_parked();
            let small = matches!(d, ParkedData::Small { .. });
            assert_eq!(small, len <= SMALL_PARKED, "len {len}");
            match d.as_data() {
                RemoteData::Inline(p) => assert_eq!(p, &payload[..], "len {len}"),
                RemoteData::Block { .. } => panic!("an inline payload came back as a block"),
            }
            let p = Parked {
                src_node: 1,
                src_ep: 2,
                data: d,
                ack: None,
            };
            // In place, a small payload costs only its slot; a larger one
            // its heap allocation on top.
            let heap = if small { 0 } else { malloc_bytes(len) };
            assert_eq!(p.cost(), HELD_MSG_COST + heap, "len {len}");
        }
    }

    fn msg(len: usize) -> Parked {
        Parked {
            src_node: 1,
            src_ep: 2,
            data: ParkedData::Inline(vec![7; len]),
            ack: None,
        }
    }

    fn to(ep: u32) -> ReplyTo {
        ReplyTo {
            peer: 1,
            src_ep: 2,
            dst_ep: ep,
            cookie: 3,
        }
    }

    #[test]
    fn the_budget_counts_every_held_message_at_its_cost_and_gives_it_back() {
        let one = msg(100).cost();
        let mut inbox = Inbox::new(3 * one);
        assert!(inbox.charge(&msg(100)));
        assert!(inbox.charge(&msg(100)));
        assert!(inbox.charge(&msg(100)));
        assert!(!inbox.charge(&msg(100)), "over the budget");
        assert_eq!((inbox.held_bytes(), inbox.held_count()), (3 * one, 3));
        for _ in 0..3 {
            inbox.release(&msg(100));
        }
        assert_eq!((inbox.held_bytes(), inbox.held_count()), (0, 0));
    }

    #[test]
    fn held_blocks_are_counted_by_peer_in_whole_units() {
        let block = |node: u32, len: u64| Parked {
            src_node: node,
            src_ep: 2,
            data: ParkedData::Block { off: 0, len },
            ack: None,
        };
        assert_eq!(reserved(1), BLOCK_UNIT);
        assert_eq!(reserved(BLOCK_UNIT), BLOCK_UNIT);
        assert_eq!(reserved(BLOCK_UNIT + 1), 2 * BLOCK_UNIT);
        let mut inbox = Inbox::new(1 << 20);
        assert!(inbox.charge(&block(3, 5000)));
        assert!(inbox.charge(&msg(100)));
        inbox
            .hold_orphan(9, to(9), block(3, 100), Instant::now())
            .ok()
            .unwrap();
        assert!(inbox.charge(&block(1, 3 * BLOCK_UNIT)));
        assert_eq!(inbox.peer_block_bytes(3), 3 * BLOCK_UNIT);
        assert_eq!(inbox.peer_block_bytes(1), 3 * BLOCK_UNIT);
        assert_eq!(inbox.peer_block_bytes(7), 0, "a peer never seen");
        inbox.release(&block(3, 5000));
        assert_eq!(inbox.peer_block_bytes(3), BLOCK_UNIT);
        // The orphan expires: released with it.
        assert_eq!(
            inbox
                .expire(Instant::now() + Duration::from_secs(1), Duration::ZERO)
                .len(),
            1
        );
        assert_eq!(inbox.peer_block_bytes(3), 0);
        assert_eq!(inbox.peer_block_bytes(1), 3 * BLOCK_UNIT);
    }

    #[test]
    fn orphans_expire_in_arrival_order_and_not_once_adopted() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut inbox = Inbox::new(1 << 20);
        inbox.hold_orphan(5, to(5), msg(1), t0).ok().unwrap();
        inbox
            .hold_orphan(6, to(6), msg(1), t0 + ms(1))
            .ok()
            .unwrap();
        inbox
            .hold_orphan(5, to(5), msg(1), t0 + ms(2))
            .ok()
            .unwrap();
        assert_eq!(inbox.held_count(), 3);
        // Endpoint 6 opens: its orphan is parked there, still held.
        assert_eq!(inbox.adopt(6).len(), 1);
        assert_eq!(inbox.held_count(), 3);
        let grace = ms(10);
        assert!(inbox.expire(t0 + ms(10), grace).is_empty());
        let first = inbox.expire(t0 + ms(11), grace);
        assert_eq!(
            first.iter().map(|o| o.nack.dst_ep).collect::<Vec<_>>(),
            vec![5]
        );
        // The entry of the adopted orphan is skipped, the second of 5 expires.
        let rest = inbox.expire(t0 + ms(13), grace);
        assert_eq!(rest.len(), 1);
        assert_eq!(
            inbox.held_count(),
            1,
            "the adopted one is still held (parked)"
        );
        assert_eq!(inbox.held_bytes(), msg(1).cost());
    }

    #[test]
    fn an_orphan_over_the_budget_is_given_back() {
        let mut inbox = Inbox::new(msg(1).cost());
        // The endpoint's own cost does not fit alongside.
        assert!(inbox.hold_orphan(5, to(5), msg(1), Instant::now()).is_err());
        assert_eq!((inbox.held_bytes(), inbox.held_count()), (0, 0));
    }
}
