//! The agent's private allocator for the pool's block region.
//!
//! Nothing of it lives in shared memory: clients cannot corrupt it. It hands
//! out runs of [`BLOCK_UNIT`](super::BLOCK_UNIT)-byte units over a map of
//! free ranges that coalesces neighbours on free. Every live block is
//! recorded with its owner so the agent can check that an offset a client
//! names is one it holds, and reclaim everything a dead client held.
//!
//! ## Blocks to send and blocks that arrive
//! Two kinds of block must not starve each other. A block a client sends
//! from stays allocated until the peer acknowledges it; a block for a
//! message arriving from a peer is needed *before* the agent can read on in
//! that peer's stream, and the peer's acknowledgements travel in that very
//! stream, behind the message. If blocks being sent (waiting for acks) held
//! the space an arriving message needs, neither would ever move: the two
//! agents of a link would each wait for the other's acks, which neither
//! reads (this happened: two agents each sending two 64 MiB messages and
//! receiving two, in 192 MiB of blocks, 64 MiB of it free but not in one
//! piece). So the region's top [`BlockAlloc::with_reserve`] bytes are never
//! given to blocks to send ([`BlockAlloc::alloc`], first fit from the
//! bottom, below the reserve), and arriving messages are placed from the top
//! ([`BlockAlloc::alloc_top`], last fit, anywhere). Blocks in the reserve
//! are freed by local receivers consuming their messages, never by a peer,
//! so an arriving message no larger than the reserve always finds room once
//! the local receivers have read what came before it.

use std::collections::{BTreeMap, HashMap};

/// Who holds a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A client slot, with its generation (so a recycled slot is not confused
    /// with the client that held it before).
    Client {
        /// Slot index.
        slot: u32,
        /// Slot generation.
        gen: u32,
    },
    /// The agent itself (a message in flight).
    Agent,
}

/// A live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Pool offset.
    pub off: u64,
    /// Usable bytes (what was asked for).
    pub len: u64,
    /// Bytes reserved (a multiple of the unit).
    pub reserved: u64,
    /// Holder.
    pub owner: Owner,
}

/// Block allocator with ownership records (see the module doc).
pub struct BlockAlloc {
    unit: u64,
    /// Where the region starts.
    start: u64,
    /// start -> length of each free range.
    free: BTreeMap<u64, u64>,
    live: BTreeMap<u64, Block>,
    /// Bytes reserved per owner.
    held: HashMap<Owner, u64>,
    free_bytes: u64,
    total: u64,
    /// Bytes at the top of the region that [`BlockAlloc::alloc`] never uses.
    reserve: u64,
    /// Quarantined ranges (start -> length): memory the agent no longer
    /// shares with clients (see [`BlockAlloc::quarantine`]); never handed out.
    bad: BTreeMap<u64, u64>,
}

impl BlockAlloc {
    /// An allocator over `[start, start+len)` in units of `unit` bytes.
    pub fn new(start: u64, len: u64, unit: u64) -> BlockAlloc {
        let len = len / unit * unit;
        let mut free = BTreeMap::new();
        if len > 0 {
            free.insert(start, len);
        }
        BlockAlloc {
            unit,
            start,
            free,
            live: BTreeMap::new(),
            held: HashMap::new(),
            free_bytes: len,
            total: len,
            reserve: 0,
            bad: BTreeMap::new(),
        }
    }

    /// Keep the top `reserve` bytes (rounded down to units) for
    /// [`BlockAlloc::alloc_top`] (arriving messages): blocks to send never
    /// take them.
    pub fn with_reserve(mut self, reserve: u64) -> BlockAlloc {
        self.reserve = reserve.min(self.total) / self.unit * self.unit;
        self
    }

    /// The largest block [`BlockAlloc::alloc`] can ever give.
    pub fn max_alloc(&self) -> u64 {
        self.total - self.reserve
    }

    /// Bytes kept for arriving messages.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Bytes managed.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Allocate `len` bytes (at least one unit) for `owner` to send from:
    /// first fit from the bottom, never in the reserve.
    pub fn alloc(&mut self, len: u64, owner: Owner) -> Option<Block> {
        let reserved = len.max(1).checked_next_multiple_of(self.unit)?;
        let end = self.start + self.total - self.reserve;
        let (&start, &flen) = self
            .free
            .iter()
            .take_while(|(&s, _)| s < end)
            .find(|(&s, &l)| l >= reserved && s + reserved <= end)?;
        self.free.remove(&start);
        if flen > reserved {
            self.free.insert(start + reserved, flen - reserved);
        }
        Some(self.record(start, len, reserved, owner))
    }

    /// Allocate `len` bytes for a message arriving from a peer: last fit,
    /// from the top (the reserve first), anywhere in the region.
    pub fn alloc_top(&mut self, len: u64, owner: Owner) -> Option<Block> {
        let reserved = len.max(1).checked_next_multiple_of(self.unit)?;
        let (&start, &flen) = self.free.iter().rev().find(|(_, &l)| l >= reserved)?;
        self.free.remove(&start);
        if flen > reserved {
            self.free.insert(start, flen - reserved);
        }
        Some(self.record(start + flen - reserved, len, reserved, owner))
    }

    fn record(&mut self, start: u64, len: u64, reserved: u64, owner: Owner) -> Block {
        self.free_bytes -= reserved;
        *self.held.entry(owner).or_default() += reserved;
        let b = Block {
            off: start,
            len,
            reserved,
            owner,
        };
        self.live.insert(start, b);
        b
    }

    /// The live block starting at `off`.
    pub fn get(&self, off: u64) -> Option<&Block> {
        self.live.get(&off)
    }

    /// Hand a live block to another owner.
    pub fn transfer(&mut self, off: u64, to: Owner) -> Option<Block> {
        let b = self.live.get_mut(&off)?;
        let from = std::mem::replace(&mut b.owner, to);
        let (b, n) = (*b, b.reserved);
        self.unhold(from, n);
        *self.held.entry(to).or_default() += n;
        Some(b)
    }

    fn unhold(&mut self, owner: Owner, n: u64) {
        if let Some(h) = self.held.get_mut(&owner) {
            *h -= n;
            if *h == 0 {
                self.held.remove(&owner);
            }
        }
    }

    /// Bytes `owner` holds.
    pub fn held_by(&self, owner: Owner) -> u64 {
        self.held.get(&owner).copied().unwrap_or(0)
    }

    /// Shrink what a block reports as usable (it keeps its reservation).
    pub fn set_len(&mut self, off: u64, len: u64) -> Option<()> {
        let b = self.live.get_mut(&off)?;
        if len > b.reserved {
            return None;
        }
        b.len = len;
        Some(())
    }

    /// Free the block at `off` if `owner` holds it. Returns it.
    pub fn free(&mut self, off: u64, owner: Owner) -> Option<Block> {
        match self.live.get(&off) {
            Some(b) if b.owner == owner => {}
            _ => return None,
        }
        let b = self.live.remove(&off)?;
        self.unhold(owner, b.reserved);
        self.release(b.off, b.reserved);
        Some(b)
    }

    /// Never hand out `[start, start+len)` again (rounded out to units,
    /// clipped to the region): a client punched that memory out of the pool,
    /// so the agent's copy of it is no longer shared with clients. Free parts
    /// leave the free map now; a live block across it keeps working (its
    /// owner may see zeros there) and, when freed, gives back only what lies
    /// outside. Returns the free bytes taken out now.
    pub fn quarantine(&mut self, start: u64, len: u64) -> u64 {
        let lo = (start.max(self.start) - self.start) / self.unit * self.unit + self.start;
        let end = start.saturating_add(len).min(self.start + self.total);
        if end <= lo {
            return 0;
        }
        let hi = (end - self.start).next_multiple_of(self.unit) + self.start;
        let hit: Vec<(u64, u64)> = self
            .free
            .range(..hi)
            .filter(|(&s, &l)| s + l > lo)
            .map(|(&s, &l)| (s, l))
            .collect();
        let mut taken = 0;
        for (s, l) in hit {
            self.free.remove(&s);
            let e = s + l;
            if s < lo {
                self.free.insert(s, lo - s);
            }
            if e > hi {
                self.free.insert(hi, e - hi);
            }
            taken += e.min(hi) - s.max(lo);
        }
        self.free_bytes -= taken;
        let len = self.bad.get(&lo).copied().unwrap_or(0).max(hi - lo);
        self.bad.insert(lo, len);
        taken
    }

    /// Bytes of the region quarantined (see [`BlockAlloc::quarantine`]).
    pub fn quarantined_bytes(&self) -> u64 {
        let (mut sum, mut upto) = (0, 0);
        for (&s, &l) in &self.bad {
            let e = s + l;
            if e > upto {
                sum += e - s.max(upto);
                upto = e;
            }
        }
        sum
    }

    /// Give `[start, start+len)` back, minus what is quarantined.
    fn release(&mut self, start: u64, len: u64) {
        if self.bad.is_empty() {
            return self.release_clean(start, len);
        }
        let end = start + len;
        let mut at = start;
        let bad: Vec<(u64, u64)> = self
            .bad
            .range(..end)
            .filter(|(&s, &l)| s + l > start)
            .map(|(&s, &l)| (s, s + l))
            .collect();
        for (bs, be) in bad {
            if bs > at {
                self.release_clean(at, bs - at);
            }
            at = at.max(be);
        }
        if at < end {
            self.release_clean(at, end - at);
        }
    }

    fn release_clean(&mut self, mut start: u64, mut len: u64) {
        self.free_bytes += len;
        // Merge with the free range just before, if adjacent.
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        // And with the one just after.
        if let Some(&nl) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += nl;
        }
        self.free.insert(start, len);
    }

    /// Free every block held by `owner`; returns how many.
    pub fn free_all_of(&mut self, owner: Owner) -> usize {
        let offs: Vec<u64> = self
            .live
            .values()
            .filter(|b| b.owner == owner)
            .map(|b| b.off)
            .collect();
        for off in &offs {
            self.free(*off, owner);
        }
        offs.len()
    }

    /// Blocks held by `owner`.
    pub fn count_of(&self, owner: Owner) -> usize {
        self.live.values().filter(|b| b.owner == owner).count()
    }

    /// Live blocks.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const C0: Owner = Owner::Client { slot: 0, gen: 1 };
    const C1: Owner = Owner::Client { slot: 1, gen: 1 };

    #[test]
    fn alloc_free_coalesces_back_to_one_range() {
        let mut a = BlockAlloc::new(4096, 64 * 4096, 4096);
        let x = a.alloc(5000, C0).unwrap();
        let y = a.alloc(1, C0).unwrap();
        let z = a.alloc(4096 * 3, C1).unwrap();
        assert_eq!(x.reserved, 8192);
        assert_eq!(y.off, x.off + 8192);
        assert!(a.free(y.off, C1).is_none(), "wrong owner cannot free");
        a.free(y.off, C0).unwrap();
        a.free(x.off, C0).unwrap();
        a.free(z.off, C1).unwrap();
        assert_eq!(a.free_bytes(), 64 * 4096);
        assert_eq!(a.free.len(), 1);
        assert_eq!(a.held_by(C0), 0);
        assert_eq!(a.held_by(C1), 0);
    }

    #[test]
    fn exhaustion_returns_none_and_reclaim_restores() {
        let mut a = BlockAlloc::new(0, 8 * 4096, 4096);
        assert!(a.alloc(9 * 4096, C0).is_none());
        for _ in 0..8 {
            a.alloc(1, C0).unwrap();
        }
        assert!(a.alloc(1, C1).is_none());
        assert_eq!(a.free_all_of(C0), 8);
        assert_eq!(a.free_bytes(), 8 * 4096);
        assert!(a.alloc(8 * 4096, C1).is_some());
    }

    /// The deadlock the reserve prevents, at small scale: two big blocks
    /// being sent, and small ones that came and went between them, leave a
    /// third of the region free but in pieces; a big arrival finds no room
    /// while the big sends wait for acks that come behind it.
    #[test]
    fn sends_cannot_take_the_room_an_arrival_needs() {
        let unit = 4096;
        let big = 64 * unit;
        // One first-fit policy for both kinds (as before the reserve).
        let mut old = BlockAlloc::new(0, 3 * big, unit);
        let t1 = old.alloc(3 * unit, C0).unwrap();
        old.alloc(big, C0).unwrap();
        let t2 = old.alloc(3 * unit, C1).unwrap();
        old.alloc(big, C1).unwrap();
        old.free(t1.off, C0).unwrap();
        old.free(t2.off, C1).unwrap();
        assert_eq!(old.free_bytes(), big);
        assert!(
            old.alloc(big, Owner::Agent).is_none(),
            "free, but in pieces"
        );
        // With a reserve: the second big send waits (for the first one's
        // acks, which keep coming), and the arrival finds the reserve whole.
        let mut a = BlockAlloc::new(0, 3 * big, unit).with_reserve(big);
        let t1 = a.alloc(3 * unit, C0).unwrap();
        a.alloc(big, C0).unwrap();
        let t2 = a.alloc(3 * unit, C1).unwrap();
        assert!(a.alloc(big, C1).is_none(), "sends stay below the reserve");
        a.free(t1.off, C0).unwrap();
        a.free(t2.off, C1).unwrap();
        let arrival = a.alloc_top(big, Owner::Agent).unwrap();
        assert_eq!(arrival.off, 2 * big, "from the top");
        assert_eq!(a.max_alloc(), 2 * big);
    }

    #[test]
    fn quarantined_memory_is_never_handed_out_again() {
        let unit = 4096;
        let mut a = BlockAlloc::new(1 << 20, 64 * unit, unit);
        let x = a.alloc(8 * unit, C0).unwrap();
        assert_eq!(x.off, 1 << 20);
        // A damaged range across the live block and the free space after it.
        let taken = a.quarantine(x.off + 6 * unit + 100, 4 * unit);
        assert_eq!(taken, 3 * unit, "units 8..11 left the free map");
        assert_eq!(a.free_bytes(), 56 * unit - 3 * unit);
        assert_eq!(a.quarantined_bytes(), 5 * unit);
        // The block still works; freed, it gives back only its clean part.
        a.free(x.off, C0).unwrap();
        assert_eq!(a.free_bytes(), 64 * unit - 5 * unit);
        let mut got = Vec::new();
        while let Some(b) = a.alloc(1, C1) {
            got.push(b);
        }
        while let Some(b) = a.alloc_top(1, C1) {
            got.push(b);
        }
        assert_eq!(got.len(), 59);
        let (qs, qe) = (x.off + 6 * unit, x.off + 11 * unit);
        for b in &got {
            assert!(
                b.off + b.reserved <= qs || b.off >= qe,
                "{b:?} in quarantine"
            );
        }
        // Outside the region: nothing happens.
        assert_eq!(a.quarantine(0, 4096), 0);
        assert_eq!(a.quarantine(1 << 30, 4096), 0);
    }

    proptest! {
        /// Whatever blocks to send hold, once the arrivals are freed an
        /// arrival as large as the reserve fits.
        #[test]
        fn the_reserve_is_whole_once_arrivals_are_read(
            ops in proptest::collection::vec((0u8..3, 1u64..200_000), 1..200),
        ) {
            let unit = 4096;
            let mut a = BlockAlloc::new(1 << 20, 256 * unit, unit).with_reserve(64 * unit);
            let (mut sends, mut arrivals) = (Vec::new(), Vec::new());
            for (op, n) in ops {
                match op {
                    0 => sends.extend(a.alloc(n, C0)),
                    1 => arrivals.extend(a.alloc_top(n, Owner::Agent)),
                    _ if !sends.is_empty() => {
                        let b: Block = sends.swap_remove(n as usize % sends.len());
                        prop_assert!(a.free(b.off, C0).is_some());
                    }
                    _ => {}
                }
                for b in &sends {
                    prop_assert!(b.off + b.reserved <= (1 << 20) + a.max_alloc());
                }
            }
            for b in arrivals {
                prop_assert!(a.free(b.off, Owner::Agent).is_some());
            }
            prop_assert!(a.alloc_top(64 * unit, Owner::Agent).is_some());
        }

        #[test]
        fn never_overlaps_and_conserves_bytes(ops in proptest::collection::vec((any::<bool>(), 1u64..40_000), 1..300)) {
            let mut a = BlockAlloc::new(1 << 20, 256 * 4096, 4096);
            let mut live: Vec<Block> = Vec::new();
            for (alloc, n) in ops {
                if alloc || live.is_empty() {
                    if let Some(b) = a.alloc(n, C0) {
                        for o in &live {
                            prop_assert!(b.off + b.reserved <= o.off || o.off + o.reserved <= b.off);
                        }
                        prop_assert!(b.off >= 1 << 20 && b.off + b.reserved <= (1 << 20) + 256 * 4096);
                        live.push(b);
                    }
                } else {
                    let b = live.swap_remove(n as usize % live.len());
                    prop_assert!(a.free(b.off, C0).is_some());
                }
                let used: u64 = live.iter().map(|b| b.reserved).sum();
                prop_assert_eq!(used + a.free_bytes(), 256 * 4096);
                prop_assert_eq!(a.held_by(C0), used);
            }
        }
    }
}
