//! Single-producer single-consumer record ring in shared memory.
//!
//! The algorithm is the classic Lamport ring with free-running 64-bit indices
//! (`tail` counts slots ever produced, `head` counts slots ever consumed; the
//! slot of index `i` is `i & (cap - 1)`), as in Lamport's "Proving the
//! correctness of multiprocess programs" and every SPSC queue since.
//!
//! A *record* is a byte string of up to [`RingGeometry::max_record`] bytes that
//! occupies one or more consecutive 64-byte slots. The first 8 bytes of its
//! first slot are a framing word: the record length as a little-endian `u32`
//! and four reserved bytes. Slots are published all at once by one release
//! store of `tail`, so an honest producer never exposes half a record.
//!
//! ## Trust
//! Either side of a ring can be a process we do not trust (a client may write
//! anything into its submission ring, and may scribble over the indices of a
//! ring it consumes). Therefore:
//! - each side keeps its own index privately and only *publishes* it; it never
//!   reads its own index back from shared memory;
//! - the other side's index is loaded once per operation and checked
//!   (`tail - head` must lie in `0..=cap`); a violation is [`RingError::Corrupt`];
//! - a record is copied out of the ring into private memory before anything
//!   looks at it, and its framing word is checked against what was published.
//!
//! ## Layout (`#[repr(C)]`, offsets from the ring's base, which is 128-aligned)
//! | offset | content |
//! | --- | --- |
//! | 0 | `tail: AtomicU64` (producer), padded to 128 bytes |
//! | 128 | `head: AtomicU64` (consumer), padded to 128 bytes |
//! | 256 | `cap` slots of [`SLOT`] bytes |
//!
//! Head and tail sit on separate 128-byte lines because x86-64's adjacent-line
//! prefetcher pulls cache lines in pairs (the reason crossbeam's `CachePadded`
//! is 128 bytes there).

use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes per slot: one cache line.
pub const SLOT: usize = 64;
/// Bytes of the framing word at the start of every record.
pub const FRAMING: usize = 8;
/// Bytes of the ring header (two padded indices).
pub const HEADER: usize = 256;

/// Size and shape of one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    /// Number of slots; a power of two.
    pub slots: u32,
}

impl RingGeometry {
    /// A geometry with `slots` slots (rounded up to a power of two, at least 4).
    pub fn new(slots: u32) -> Self {
        RingGeometry {
            slots: slots.max(4).next_power_of_two(),
        }
    }

    /// Bytes the ring occupies in the pool (header and slots).
    pub fn bytes(&self) -> usize {
        HEADER + self.slots as usize * SLOT
    }

    /// The largest record the ring accepts: a quarter of the ring, so that a
    /// big record never waits for the whole ring to drain.
    pub fn max_record(&self) -> usize {
        (self.slots as usize / 4).max(1) * SLOT - FRAMING
    }

    /// Slots a record of `len` bytes occupies.
    pub fn slots_for(len: usize) -> u64 {
        (len + FRAMING).div_ceil(SLOT) as u64
    }
}

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// The other side published an index or framing word that cannot be
    /// right; the ring must not be used again.
    #[error("ring corrupt: {0}")]
    Corrupt(&'static str),
    /// The record is larger than [`RingGeometry::max_record`].
    #[error("record of {len} bytes exceeds the ring's limit of {max}")]
    TooLarge {
        /// Length asked for.
        len: usize,
        /// The limit.
        max: usize,
    },
}

#[repr(C, align(128))]
struct Padded(AtomicU64);

#[repr(C)]
struct Header {
    tail: Padded,
    head: Padded,
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER);

/// Shared part common to both ends.
struct Raw {
    hdr: *const Header,
    slots: *mut u8,
    mask: u64,
    geo: RingGeometry,
}

// SAFETY: `Raw` only holds addresses into a shared mapping that outlives it
// (the owner of a `Producer`/`Consumer` guarantees that, see `Raw::new`); all
// access to shared words goes through atomics or raw copies, never through
// Rust references to shared data.
unsafe impl Send for Raw {}

impl Raw {
    /// # Safety
    /// `base` must be 128-byte aligned, point to `geo.bytes()` bytes of
    /// mapped, writable memory, and stay mapped for the life of the value.
    unsafe fn new(base: *mut u8, geo: RingGeometry) -> Raw {
        debug_assert!(geo.slots.is_power_of_two());
        debug_assert_eq!(base as usize % 128, 0);
        Raw {
            hdr: base as *const Header,
            // SAFETY: HEADER < geo.bytes(), within the mapping (caller).
            slots: unsafe { base.add(HEADER) },
            mask: geo.slots as u64 - 1,
            geo,
        }
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: `hdr` points to a live, aligned header (see `new`); an
        // atomic may be shared with other processes.
        unsafe { &(*self.hdr).tail.0 }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: as in `tail`.
        unsafe { &(*self.hdr).head.0 }
    }

    /// Copy `src` into the ring starting at slot index `idx`, byte `skip`
    /// within it, wrapping around the end of the slot array.
    fn write_at(&self, idx: u64, skip: usize, src: &[u8]) {
        let cap_bytes = self.geo.slots as usize * SLOT;
        let mut pos = ((idx & self.mask) as usize * SLOT + skip) % cap_bytes;
        let mut src = src;
        while !src.is_empty() {
            let n = src.len().min(cap_bytes - pos);
            // SAFETY: `pos + n <= cap_bytes`, so the destination lies in the
            // slot array; `src` is private memory, no overlap. The slots being
            // written are owned by the producer until `tail` is published.
            unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.slots.add(pos), n) };
            src = &src[n..];
            pos = (pos + n) % cap_bytes;
        }
    }

    /// Write a record of `len` bytes (the concatenation of `parts`) that
    /// fits one slot (`len + FRAMING <= SLOT`) at slot index `idx`: its
    /// framing word with one 8-byte store, each part with [`copy_small`].
    fn write_small(&self, idx: u64, len: usize, parts: &[&[u8]]) {
        debug_assert!(len + FRAMING <= SLOT);
        let slot = (idx & self.mask) as usize * SLOT;
        // SAFETY: `slot + SLOT` is within the slot array (`idx & mask` is a
        // slot index), and every write below stays inside that slot: the
        // framing word is its first 8 bytes, the parts (`len` bytes in all,
        // `len + FRAMING <= SLOT`) follow. The slot is the producer's until
        // `tail` is published; `parts` are private memory, no overlap.
        unsafe {
            let base = self.slots.add(slot);
            ptr::write_unaligned(base as *mut u64, (len as u64).to_le());
            let mut at = FRAMING;
            for p in parts {
                copy_small(p.as_ptr(), base.add(at), p.len());
                at += p.len();
            }
        }
    }

    /// Copy bytes out of the ring starting at slot `idx`, byte `skip`.
    fn read_at(&self, idx: u64, skip: usize, dst: &mut [u8]) {
        // SAFETY: `dst` is `dst.len()` writable bytes of our own.
        unsafe { self.copy_out(idx, skip, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copy `len` bytes out of the ring starting at slot `idx`, byte `skip`,
    /// to `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes of writes, private to the caller
    /// (it may be uninitialised: it is only written).
    unsafe fn copy_out(&self, idx: u64, skip: usize, dst: *mut u8, len: usize) {
        let cap_bytes = self.geo.slots as usize * SLOT;
        let mut pos = ((idx & self.mask) as usize * SLOT + skip) % cap_bytes;
        if len <= SLOT && pos + len <= cap_bytes {
            // A small record that does not wrap: inline copies, no call.
            // SAFETY: the source lies in the slot array (`pos + len <=
            // cap_bytes`), `dst` has `len` private bytes (caller); a hostile
            // producer may change the bytes while we copy: we only ever
            // interpret the private copy.
            unsafe { copy_small(self.slots.add(pos), dst, len) };
            return;
        }
        let mut off = 0;
        while off < len {
            let n = (len - off).min(cap_bytes - pos);
            // SAFETY: the source lies in the slot array (`pos + n <=
            // cap_bytes`); `dst + off .. + n` is within the caller's `len`
            // private bytes. A hostile producer may change the bytes while we
            // copy: we only ever interpret the private copy.
            unsafe { ptr::copy_nonoverlapping(self.slots.add(pos), dst.add(off), n) };
            off += n;
            pos = (pos + n) % cap_bytes;
        }
    }
}

/// Copy `n <= 64` bytes from `src` to `dst` with a few fixed-size
/// (possibly overlapping) loads and stores, inlined: for the few bytes of a
/// small message a `memcpy` call cost more than the copy.
///
/// # Safety
/// `src` must be valid for `n` bytes of reads, `dst` for `n` bytes of
/// writes, the two must not overlap, and `n <= 64`.
#[inline(always)]
unsafe fn copy_small(src: *const u8, dst: *mut u8, n: usize) {
    debug_assert!(n <= 64);
    /// Copy the first and the last `W` bytes of the `n` (`W <= n <= 2W`):
    /// together they cover all `n`.
    ///
    /// # Safety
    /// As for `copy_small`, with `W <= n <= 2 * W`.
    #[inline(always)]
    unsafe fn ends<const W: usize>(src: *const u8, dst: *mut u8, n: usize) {
        // SAFETY: `W <= n`, so both `0..W` and `n - W..n` lie within the
        // `n` bytes both pointers are valid for (caller); unaligned access.
        unsafe {
            let a = ptr::read_unaligned(src as *const [u8; W]);
            let b = ptr::read_unaligned(src.add(n - W) as *const [u8; W]);
            ptr::write_unaligned(dst as *mut [u8; W], a);
            ptr::write_unaligned(dst.add(n - W) as *mut [u8; W], b);
        }
    }
    // SAFETY: each branch's width satisfies `W <= n <= 2W`; the single
    // bytes are within `n`. Validity of the ranges is the caller's.
    unsafe {
        match n {
            32..=64 => ends::<32>(src, dst, n),
            16..=31 => ends::<16>(src, dst, n),
            8..=15 => ends::<8>(src, dst, n),
            4..=7 => ends::<4>(src, dst, n),
            2..=3 => ends::<2>(src, dst, n),
            1 => *dst = *src,
            _ => {}
        }
    }
}

/// The producing end of a ring.
pub struct Producer {
    raw: Raw,
    tail: u64,
    cached_head: u64,
    /// The tail last stored to shared memory (a publish with nothing new
    /// staged stores nothing: the consumer's core keeps its copy of the line).
    published: u64,
}

impl Producer {
    /// Attach a producer to a ring at `base`. With `reset`, the ring's
    /// indices are zeroed first (the agent does that when it hands a ring to
    /// a new owner); otherwise the producer continues from the published tail.
    ///
    /// # Safety
    /// `base` must be 128-byte aligned, point to `geo.bytes()` mapped writable
    /// bytes that stay mapped while the producer lives, and no other producer
    /// may use the same ring at the same time.
    pub unsafe fn attach(base: *mut u8, geo: RingGeometry, reset: bool) -> Producer {
        // SAFETY: forwarded from the caller.
        let raw = unsafe { Raw::new(base, geo) };
        if reset {
            raw.head().store(0, Ordering::Relaxed);
            raw.tail().store(0, Ordering::Release);
        }
        let tail = raw.tail().load(Ordering::Acquire);
        Producer {
            raw,
            tail,
            cached_head: tail,
            published: tail,
        }
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> RingGeometry {
        self.raw.geo
    }

    /// Free slots, refreshing the view of the consumer's index.
    fn free_slots(&mut self) -> Result<u64, RingError> {
        let head = self.raw.head().load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > self.raw.geo.slots as u64 {
            return Err(RingError::Corrupt("consumer index ahead of producer"));
        }
        self.cached_head = head;
        Ok(self.raw.geo.slots as u64 - used)
    }

    /// Whether a record of `len` bytes would fit now.
    pub fn has_room(&mut self, len: usize) -> Result<bool, RingError> {
        let need = RingGeometry::slots_for(len);
        let free = self.raw.geo.slots as u64 - self.tail.wrapping_sub(self.cached_head);
        if free >= need {
            return Ok(true);
        }
        Ok(self.free_slots()? >= need)
    }

    /// Append one record made of the concatenation of `parts`. Returns
    /// `Ok(false)` when the ring has no room now.
    pub fn try_push(&mut self, parts: &[&[u8]]) -> Result<bool, RingError> {
        let ok = self.try_stage(parts)?;
        if ok {
            self.publish();
        }
        Ok(ok)
    }

    /// Write one record like [`Producer::try_push`] but do not show it to
    /// the consumer yet: [`Producer::publish`] shows every record staged
    /// since, at once (a batch costs one store the consumer's core sees,
    /// not one per record).
    pub fn try_stage(&mut self, parts: &[&[u8]]) -> Result<bool, RingError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let max = self.raw.geo.max_record();
        if len > max {
            return Err(RingError::TooLarge { len, max });
        }
        if !self.has_room(len)? {
            return Ok(false);
        }
        let slots = RingGeometry::slots_for(len);
        if slots == 1 {
            // The common small record: one slot, which never wraps. The
            // framing word and the parts go in with inline copies, not a
            // `memcpy` call each (three calls per message were most of
            // the ring's cost in a small-message profile).
            self.raw.write_small(self.tail, len, parts);
        } else {
            let mut framing = [0u8; FRAMING];
            framing[..4].copy_from_slice(&(len as u32).to_le_bytes());
            self.raw.write_at(self.tail, 0, &framing);
            let mut skip = FRAMING;
            for p in parts {
                self.raw.write_at(self.tail, skip, p);
                skip += p.len();
            }
        }
        self.tail = self.tail.wrapping_add(slots);
        Ok(true)
    }

    /// Show the consumer every record staged so far.
    pub fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // Release: publishes the record bytes written before to the
        // consumer's Acquire load of `tail`.
        self.raw.tail().store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    /// Slots staged and not yet shown to the consumer.
    pub fn unpublished_slots(&self) -> u64 {
        self.tail.wrapping_sub(self.published)
    }

    /// Records (in slots) the consumer has not taken yet, as last seen.
    pub fn pending_slots(&mut self) -> Result<u64, RingError> {
        Ok(self.raw.geo.slots as u64 - self.free_slots()?)
    }
}

/// The consuming end of a ring.
pub struct Consumer {
    raw: Raw,
    head: u64,
    cached_tail: u64,
}

impl Consumer {
    /// Attach a consumer to a ring at `base` (see [`Producer::attach`]).
    ///
    /// # Safety
    /// As for [`Producer::attach`], with "consumer" for "producer".
    pub unsafe fn attach(base: *mut u8, geo: RingGeometry, reset: bool) -> Consumer {
        // SAFETY: forwarded from the caller.
        let raw = unsafe { Raw::new(base, geo) };
        if reset {
            raw.tail().store(0, Ordering::Relaxed);
            raw.head().store(0, Ordering::Release);
        }
        let head = raw.head().load(Ordering::Acquire);
        Consumer {
            raw,
            head,
            cached_tail: head,
        }
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> RingGeometry {
        self.raw.geo
    }

    /// Whether at least half of the ring is free for the producer: the
    /// records published and not yet given back are no more than half its
    /// slots (the producer's index read now; a hostile one only fools
    /// itself).
    pub fn half_free(&self) -> bool {
        let tail = self.raw.tail().load(Ordering::Acquire);
        let used = tail.wrapping_sub(self.raw.head().load(Ordering::Relaxed));
        used <= self.raw.geo.slots as u64 / 2
    }

    fn available(&mut self) -> Result<u64, RingError> {
        let mut avail = self.cached_tail.wrapping_sub(self.head);
        if avail == 0 {
            // Acquire: pairs with the producer's Release store of `tail`, so
            // the record bytes are visible before we copy them.
            let tail = self.raw.tail().load(Ordering::Acquire);
            avail = tail.wrapping_sub(self.head);
            if avail > self.raw.geo.slots as u64 {
                return Err(RingError::Corrupt("producer index beyond capacity"));
            }
            self.cached_tail = tail;
        }
        Ok(avail)
    }

    /// Slots published and not yet consumed.
    pub fn pending(&mut self) -> Result<u64, RingError> {
        self.cached_tail = self.head;
        self.available()
    }

    /// Whether a record is waiting.
    pub fn is_empty(&mut self) -> Result<bool, RingError> {
        Ok(self.available()? == 0)
    }

    /// Take the next record, copying it into `out` (cleared first). Returns
    /// `Ok(false)` when the ring is empty.
    pub fn try_pop(&mut self, out: &mut Vec<u8>) -> Result<bool, RingError> {
        let ok = self.try_take(out)?;
        if ok {
            self.release();
        }
        Ok(ok)
    }

    /// Take the next record like [`Consumer::try_pop`] but keep its slots
    /// from the producer until [`Consumer::release`] (one store for a batch).
    pub fn try_take(&mut self, out: &mut Vec<u8>) -> Result<bool, RingError> {
        let avail = self.available()?;
        if avail == 0 {
            return Ok(false);
        }
        let mut framing = [0u8; FRAMING];
        self.raw.read_at(self.head, 0, &mut framing);
        let len = u32::from_le_bytes([framing[0], framing[1], framing[2], framing[3]]) as usize;
        if len > self.raw.geo.max_record() {
            return Err(RingError::Corrupt("record length beyond the ring's limit"));
        }
        let slots = RingGeometry::slots_for(len);
        if slots > avail {
            return Err(RingError::Corrupt("record extends past the published tail"));
        }
        out.clear();
        out.reserve(len);
        // SAFETY: `out` has room for `len` bytes (reserved above), all of
        // which `copy_out` writes before `set_len` makes them the vector's
        // (no zeroing first: it was 1 % of a small-message stream).
        unsafe {
            self.raw.copy_out(self.head, FRAMING, out.as_mut_ptr(), len);
            out.set_len(len);
        }
        self.head = self.head.wrapping_add(slots);
        Ok(true)
    }

    /// Give the producer back the slots of every record taken so far.
    pub fn release(&mut self) {
        // Release: the slots copied before may now be overwritten.
        self.raw.head().store(self.head, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 128-aligned private buffer to host a ring in tests.
    struct Buf {
        mem: Vec<u128>,
    }

    impl Buf {
        fn new(geo: RingGeometry) -> Buf {
            // u128 gives 16-byte alignment; over-allocate and align by hand.
            Buf {
                mem: vec![0u128; geo.bytes() / 16 + 16],
            }
        }
        fn base(&mut self) -> *mut u8 {
            let p = self.mem.as_mut_ptr() as *mut u8;
            let off = p.align_offset(128);
            // SAFETY: `off < 128` and we allocated 256 spare bytes.
            unsafe { p.add(off) }
        }
    }

    fn pair(geo: RingGeometry, buf: &mut Buf) -> (Producer, Consumer) {
        let base = buf.base();
        // SAFETY: the buffer is aligned, large enough and outlives the ends
        // within each test; one producer and one consumer.
        unsafe {
            (
                Producer::attach(base, geo, true),
                Consumer::attach(base, geo, false),
            )
        }
    }

    #[test]
    fn staged_records_are_shown_at_publish_and_taken_slots_given_back_at_release() {
        let geo = RingGeometry::new(64);
        let mut buf = Buf::new(geo);
        let (mut p, mut c) = pair(geo, &mut buf);
        let mut out = Vec::new();
        for k in 0..3u8 {
            assert!(p.try_stage(&[&[k; 10]]).unwrap());
        }
        assert!(!c.try_pop(&mut out).unwrap(), "a staged record was visible");
        p.publish();
        let free_before = p.free_slots().unwrap();
        assert!(c.try_take(&mut out).unwrap());
        assert_eq!(out, vec![0; 10]);
        assert!(c.try_take(&mut out).unwrap());
        assert_eq!(out, vec![1; 10]);
        assert_eq!(
            p.free_slots().unwrap(),
            free_before,
            "taken slots freed before release"
        );
        c.release();
        assert!(p.free_slots().unwrap() > free_before);
        assert!(c.try_pop(&mut out).unwrap());
        assert_eq!(out, vec![2; 10]);
        assert!(!c.try_pop(&mut out).unwrap());
    }

    #[test]
    fn half_free_follows_what_the_consumer_gave_back() {
        let geo = RingGeometry::new(16);
        let mut buf = Buf::new(geo);
        let (mut p, mut c) = pair(geo, &mut buf);
        assert!(c.half_free(), "an empty ring");
        for n in 0..9u32 {
            assert!(p.try_push(&[&n.to_le_bytes()]).unwrap());
        }
        assert!(!c.half_free(), "9 of 16 slots used");
        let mut out = Vec::new();
        // Taken but not given back: still used, as the producer sees it.
        assert!(c.try_take(&mut out).unwrap());
        assert!(!c.half_free());
        c.release();
        assert!(c.half_free(), "8 of 16 used after the release");
        assert!(p.try_push(&[&9u32.to_le_bytes()]).unwrap());
        assert!(!c.half_free());
    }

    #[test]
    fn empty_ring_pops_nothing() {
        let geo = RingGeometry::new(16);
        let mut buf = Buf::new(geo);
        let (_p, mut c) = pair(geo, &mut buf);
        let mut out = Vec::new();
        assert_eq!(c.try_pop(&mut out), Ok(false));
    }

    #[test]
    fn fills_then_refuses_then_drains() {
        let geo = RingGeometry::new(16);
        let mut buf = Buf::new(geo);
        let (mut p, mut c) = pair(geo, &mut buf);
        let mut n = 0u32;
        while p.try_push(&[&n.to_le_bytes()]).unwrap() {
            n += 1;
        }
        assert_eq!(n, 16, "one 4-byte record per slot");
        let mut out = Vec::new();
        for i in 0..n {
            assert!(c.try_pop(&mut out).unwrap());
            assert_eq!(out, i.to_le_bytes());
        }
        assert!(!c.try_pop(&mut out).unwrap());
        assert!(p.try_push(&[b"again"]).unwrap());
    }

    #[test]
    fn too_large_is_refused() {
        let geo = RingGeometry::new(16);
        let mut buf = Buf::new(geo);
        let (mut p, _c) = pair(geo, &mut buf);
        let big = vec![0u8; geo.max_record() + 1];
        assert!(matches!(
            p.try_push(&[&big]),
            Err(RingError::TooLarge { .. })
        ));
        let ok = vec![7u8; geo.max_record()];
        assert_eq!(p.try_push(&[&ok]), Ok(true));
    }

    #[test]
    fn corrupt_tail_is_detected() {
        let geo = RingGeometry::new(16);
        let mut buf = Buf::new(geo);
        let base = buf.base();
        let (_p, mut c) = pair(geo, &mut buf);
        // A hostile producer publishes a tail far beyond capacity.
        // SAFETY: base points at the ring header's tail word.
        unsafe { (*(base as *const AtomicU64)).store(1000, Ordering::Release) };
        let mut out = Vec::new();
        assert!(matches!(c.try_pop(&mut out), Err(RingError::Corrupt(_))));
    }

    #[test]
    fn corrupt_framing_is_detected() {
        let geo = RingGeometry::new(16);
        let mut buf = Buf::new(geo);
        let base = buf.base();
        let (mut p, mut c) = pair(geo, &mut buf);
        assert!(p.try_push(&[b"hello"]).unwrap());
        // Overwrite the framing word with a huge length.
        // SAFETY: slot 0 starts at HEADER within the buffer.
        unsafe { ptr::write_unaligned(base.add(HEADER) as *mut u32, 0xFFFF_FFF0) };
        let mut out = Vec::new();
        assert!(matches!(c.try_pop(&mut out), Err(RingError::Corrupt(_))));
    }

    #[test]
    fn corrupt_head_is_detected() {
        let geo = RingGeometry::new(16);
        let mut buf = Buf::new(geo);
        let base = buf.base();
        let (mut p, _c) = pair(geo, &mut buf);
        // A hostile consumer claims to have consumed slots never produced.
        // SAFETY: the head word is at offset 128.
        unsafe { (*(base.add(128) as *const AtomicU64)).store(99, Ordering::Release) };
        // Fill the cached view first so the producer must reload head.
        let mut r = Ok(true);
        for _ in 0..17 {
            r = p.try_push(&[b"x"]);
            if r.is_err() {
                break;
            }
        }
        assert!(matches!(r, Err(RingError::Corrupt(_))));
    }

    #[test]
    fn multi_slot_records_wrap_around() {
        let geo = RingGeometry::new(8);
        let mut buf = Buf::new(geo);
        let (mut p, mut c) = pair(geo, &mut buf);
        let mut out = Vec::new();
        for round in 0..50u8 {
            let len = (round as usize * 7) % (geo.max_record() + 1);
            let rec: Vec<u8> = (0..len).map(|i| (i as u8) ^ round).collect();
            assert!(p.try_push(&[&rec[..len / 2], &rec[len / 2..]]).unwrap());
            assert!(c.try_pop(&mut out).unwrap());
            assert_eq!(out, rec);
        }
    }

    #[test]
    fn copy_small_copies_exactly_n_bytes() {
        let src: Vec<u8> = (1..=64).collect();
        for n in 0..=64 {
            let mut dst = [0xEEu8; 80];
            // SAFETY: `src` has 64 bytes, `dst` 80, separate buffers, n <= 64.
            unsafe { copy_small(src.as_ptr(), dst[8..].as_mut_ptr(), n) };
            assert_eq!(&dst[8..8 + n], &src[..n], "n = {n}");
            assert!(dst[..8].iter().all(|&b| b == 0xEE), "wrote before, n = {n}");
            assert!(
                dst[8 + n..].iter().all(|&b| b == 0xEE),
                "wrote past the end, n = {n}"
            );
        }
    }

    #[test]
    fn single_slot_records_of_every_length_and_split_round_trip() {
        let geo = RingGeometry::new(4);
        let mut buf = Buf::new(geo);
        let base = buf.base();
        let (mut p, mut c) = pair(geo, &mut buf);
        let mut out = Vec::new();
        let mut k = 0usize;
        for len in 0..=SLOT - FRAMING {
            for split in [0, len / 3, len / 2, len] {
                let rec: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8 | 1).collect();
                let slot = (k % 4) * SLOT;
                k += 1;
                // SAFETY: the slot is within the ring's slot array and not
                // published (the consumer took every record before).
                unsafe { ptr::write_bytes(base.add(HEADER + slot), 0, SLOT) };
                let (a, b) = rec.split_at(split);
                let (b, c2) = b.split_at(b.len() / 2);
                assert!(p.try_push(&[a, b, c2]).unwrap());
                // SAFETY: reading the slot just written, inside the ring.
                let tail = unsafe {
                    std::slice::from_raw_parts(
                        base.add(HEADER + slot + FRAMING + len),
                        SLOT - FRAMING - len,
                    )
                };
                assert!(
                    tail.iter().all(|&x| x == 0),
                    "wrote past the record, len {len}"
                );
                assert!(c.try_pop(&mut out).unwrap());
                assert_eq!(out, rec, "len {len} split {split}");
            }
        }
    }

    #[test]
    fn publish_shows_staged_records_once_and_counts_them() {
        let geo = RingGeometry::new(64);
        let mut buf = Buf::new(geo);
        let (mut p, mut c) = pair(geo, &mut buf);
        let mut out = Vec::new();
        assert_eq!(p.unpublished_slots(), 0);
        assert!(p.try_stage(&[&[1; 8]]).unwrap());
        assert!(p.try_stage(&[&[2; 100]]).unwrap());
        assert_eq!(p.unpublished_slots(), 1 + 2);
        assert!(!c.try_pop(&mut out).unwrap(), "a staged record was visible");
        p.publish();
        assert_eq!(p.unpublished_slots(), 0);
        p.publish();
        assert!(c.try_pop(&mut out).unwrap());
        assert_eq!(out, vec![1; 8]);
        assert!(c.try_pop(&mut out).unwrap());
        assert_eq!(out, vec![2; 100]);
        assert!(!c.try_pop(&mut out).unwrap());
    }

    proptest! {
        /// Any interleaving of pushes and pops behaves like a bounded FIFO
        /// queue whose capacity is counted in slots.
        #[test]
        fn behaves_like_a_bounded_fifo(ops in proptest::collection::vec((any::<bool>(), 0usize..200), 1..400)) {
            let geo = RingGeometry::new(32);
            let mut buf = Buf::new(geo);
            let (mut p, mut c) = pair(geo, &mut buf);
            let mut model: std::collections::VecDeque<Vec<u8>> = Default::default();
            let mut used = 0u64;
            let mut out = Vec::new();
            let mut counter = 0u8;
            for (push, len) in ops {
                if push {
                    let len = len.min(geo.max_record());
                    counter = counter.wrapping_add(1);
                    let rec = vec![counter; len];
                    let fits = used + RingGeometry::slots_for(len) <= geo.slots as u64;
                    prop_assert_eq!(p.try_push(&[&rec]).unwrap(), fits);
                    if fits {
                        used += RingGeometry::slots_for(len);
                        model.push_back(rec);
                    }
                } else {
                    let got = c.try_pop(&mut out).unwrap();
                    match model.pop_front() {
                        Some(want) => {
                            prop_assert!(got);
                            used -= RingGeometry::slots_for(want.len());
                            prop_assert_eq!(&out, &want);
                        }
                        None => prop_assert!(!got),
                    }
                }
            }
        }

        /// Whatever a hostile producer writes into the slots and the tail, the
        /// consumer returns records or an error; it never panics or reads
        /// outside the ring.
        #[test]
        fn garbage_never_panics(junk in proptest::collection::vec(any::<u8>(), 16 * SLOT), tail in any::<u64>()) {
            let geo = RingGeometry::new(16);
            let mut buf = Buf::new(geo);
            let base = buf.base();
            let (_p, mut c) = pair(geo, &mut buf);
            // SAFETY: writes stay inside the slot array and the tail word.
            unsafe {
                ptr::copy_nonoverlapping(junk.as_ptr(), base.add(HEADER), junk.len());
                (*(base as *const AtomicU64)).store(tail, Ordering::Release);
            }
            let mut out = Vec::new();
            for _ in 0..20 {
                match c.try_pop(&mut out) {
                    Ok(true) => prop_assert!(out.len() <= geo.max_record()),
                    Ok(false) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn threaded_stress_preserves_order_and_content() {
        let geo = RingGeometry::new(256);
        let mut buf = Buf::new(geo);
        let (mut p, mut c) = pair(geo, &mut buf);
        const N: u64 = 200_000;
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut i = 0u64;
                while i < N {
                    let len = (i % 97) as usize;
                    let mut rec = i.to_le_bytes().to_vec();
                    rec.extend(std::iter::repeat_n(i as u8, len));
                    if p.try_push(&[&rec]).unwrap() {
                        i += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
            let mut out = Vec::new();
            let mut want = 0u64;
            while want < N {
                if c.try_pop(&mut out).unwrap() {
                    let got = u64::from_le_bytes(out[..8].try_into().unwrap());
                    assert_eq!(got, want);
                    assert_eq!(out.len(), 8 + (want % 97) as usize);
                    assert!(out[8..].iter().all(|&b| b == want as u8));
                    want += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
    }
}
