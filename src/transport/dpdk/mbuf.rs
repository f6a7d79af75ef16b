//! Owned packet buffers (`rte_mbuf`).

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::slice;

use dpdk_sys::rte_mbuf;

use super::mempool::PktPool;

/// One packet buffer, owned: freed back to its pool when dropped.
///
/// The data accessors see the first segment. Everything this layer makes is one
/// segment (no scatter on receive), so for it [`Mbuf::data`] is the whole packet; a
/// chained mbuf (from [`Mbuf::from_raw`]) has `data().len() < len()`.
///
/// `repr(transparent)` over a non-null `*mut rte_mbuf`: a `[Mbuf]` is a C array of
/// mbuf pointers, which the burst calls fill and drain in place.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf<'p> {
    raw: NonNull<rte_mbuf>,
    _pool: PhantomData<&'p PktPool>,
}

// SAFETY: an Mbuf owns its buffer outright (refcount 1, no other handle), and freeing
// it returns it to a thread-safe pool (see PktPool), so it may move between threads.
unsafe impl Send for Mbuf<'_> {}
// SAFETY: &Mbuf gives only reads of the mbuf's own fields and bytes.
unsafe impl Sync for Mbuf<'_> {}

impl<'p> Mbuf<'p> {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `raw` must be a valid, initialised mbuf that nothing else owns or references
    /// (refcount 1, its data buffer not shared), from a pool that lives at least `'p`.
    ///
    /// # Panics
    /// If `raw` is null.
    pub unsafe fn from_raw(raw: *mut rte_mbuf) -> Mbuf<'p> {
        Mbuf {
            raw: NonNull::new(raw).expect("Mbuf::from_raw: null mbuf"),
            _pool: PhantomData,
        }
    }

    /// Gives up ownership: the caller must free the mbuf (or hand it to DPDK, which
    /// frees it after sending).
    pub fn into_raw(self) -> *mut rte_mbuf {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// The raw mbuf, still owned by `self`.
    pub fn as_raw(&self) -> *const rte_mbuf {
        self.raw.as_ptr()
    }

    fn m(&self) -> &rte_mbuf {
        // SAFETY: raw is a valid mbuf that self owns (type invariant); shared access is
        // tied to &self.
        unsafe { self.raw.as_ref() }
    }

    /// Packet length: the bytes of all segments.
    pub fn len(&self) -> usize {
        self.m().pkt_len as usize
    }

    /// Whether the packet has no bytes.
    pub fn is_empty(&self) -> bool {
        self.m().pkt_len == 0
    }

    /// Number of segments (1 for everything this layer creates).
    pub fn segments(&self) -> u16 {
        self.m().nb_segs
    }

    /// Free bytes before the data (room for [`Mbuf::prepend`]).
    pub fn headroom(&self) -> usize {
        // SAFETY: raw is a valid mbuf owned by self.
        usize::from(unsafe { dpdk_sys::rte_pktmbuf_headroom(self.raw.as_ptr()) })
    }

    /// Free bytes after the data of the last segment (room for [`Mbuf::append`]).
    pub fn tailroom(&self) -> usize {
        // SAFETY: raw is a valid mbuf owned by self.
        usize::from(unsafe { dpdk_sys::rte_pktmbuf_tailroom(self.raw.as_ptr()) })
    }

    /// The bytes of the first segment (`rte_pktmbuf_mtod`, `data_len` bytes).
    pub fn data(&self) -> &[u8] {
        let len = usize::from(self.m().data_len);
        // SAFETY: mtod points at data_len initialised bytes inside the mbuf's buffer
        // (DPDK invariant data_off + data_len <= buf_len); self owns the buffer, and
        // the slice borrows self, so nothing writes it meanwhile.
        unsafe { slice::from_raw_parts(dpdk_sys::rte_pktmbuf_mtod(self.raw.as_ptr()), len) }
    }

    /// The bytes of the first segment, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.m().data_len);
        // SAFETY: as in data(); &mut self makes the access exclusive, and the buffer
        // is not shared with another mbuf (from_raw's contract, fresh mbufs otherwise).
        unsafe { slice::from_raw_parts_mut(dpdk_sys::rte_pktmbuf_mtod(self.raw.as_ptr()), len) }
    }

    /// Grows the packet by `n` bytes at its end (`rte_pktmbuf_append`) and returns them
    /// to be filled; `None` (and no change) if the tailroom is smaller.
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let n16 = u16::try_from(n).ok()?;
        // SAFETY: raw is a valid mbuf owned exclusively by self.
        let p = unsafe { dpdk_sys::rte_pktmbuf_append(self.raw.as_ptr(), n16) };
        let p = NonNull::new(p.cast::<u8>())?;
        // SAFETY: DPDK reserved n bytes at p inside the buffer; they are ours through
        // &mut self. Their content is whatever the buffer held (initialised memory from
        // DPDK's allocator), so reading them is defined.
        Some(unsafe { slice::from_raw_parts_mut(p.as_ptr(), n) })
    }

    /// Appends a copy of `bytes`; `false` (and no change) if they do not fit.
    #[must_use]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> bool {
        match self.append(bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// Grows the packet by `n` bytes at its start (`rte_pktmbuf_prepend`), e.g. for a
    /// header, and returns them; `None` (and no change) if the headroom is smaller.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let n16 = u16::try_from(n).ok()?;
        // SAFETY: raw is a valid mbuf owned exclusively by self.
        let p = unsafe { dpdk_sys::rte_pktmbuf_prepend(self.raw.as_ptr(), n16) };
        let p = NonNull::new(p.cast::<u8>())?;
        // SAFETY: as in append(): n bytes at p inside the buffer, ours through &mut self.
        Some(unsafe { slice::from_raw_parts_mut(p.as_ptr(), n) })
    }

    /// Removes `n` bytes from the end (`rte_pktmbuf_trim`); `false` (and no change) if
    /// the last segment has fewer.
    #[must_use]
    pub fn trim(&mut self, n: usize) -> bool {
        let Ok(n16) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: raw is a valid mbuf owned exclusively by self.
        unsafe { dpdk_sys::rte_pktmbuf_trim(self.raw.as_ptr(), n16) == 0 }
    }

    /// Removes `n` bytes from the start (`rte_pktmbuf_adj`), e.g. a parsed header;
    /// `false` (and no change) if the first segment has fewer.
    #[must_use]
    pub fn adj(&mut self, n: usize) -> bool {
        let Ok(n16) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: raw is a valid mbuf owned exclusively by self.
        unsafe { !dpdk_sys::rte_pktmbuf_adj(self.raw.as_ptr(), n16).is_null() }
    }

    /// Empties the packet and restores the default headroom (`rte_pktmbuf_reset`).
    pub fn reset(&mut self) {
        // SAFETY: raw is a valid single-owner mbuf; reset rewrites only its own fields.
        unsafe { dpdk_sys::rte_pktmbuf_reset(self.raw.as_ptr()) }
    }

    /// Appends `tail` (all its segments) to this packet (`rte_pktmbuf_chain`): the
    /// chain owns it from then on and frees it with `self`. Gives it back if the
    /// chain would have too many segments.
    pub fn chain(&mut self, tail: Mbuf<'p>) -> Result<(), Mbuf<'p>> {
        // SAFETY: both are valid mbufs owned by us (type invariant), distinct (two
        // owners cannot hold one mbuf); on success the chain holds tail, whose
        // ownership passes to self (forgotten below), on failure nothing changed.
        let rc = unsafe { dpdk_sys::rte_pktmbuf_chain(self.raw.as_ptr(), tail.raw.as_ptr()) };
        if rc == 0 {
            std::mem::forget(tail);
            Ok(())
        } else {
            Err(tail)
        }
    }

    /// Copies the packet's bytes, every segment in order, to the start of `out`;
    /// returns how many (at most `out.len()`).
    pub fn read_into(&self, out: &mut [u8]) -> usize {
        let mut at = 0;
        let mut seg: *const rte_mbuf = self.raw.as_ptr();
        // Bounded: a chain has at most nb_segs segments (u16).
        for _ in 0..self.segments() {
            if seg.is_null() || at == out.len() {
                break;
            }
            // SAFETY: seg is a segment of the chain self owns (the head, then each
            // `next`, valid while self lives); its data is data_len initialised bytes
            // at mtod (DPDK invariant), read only.
            let (data, next) = unsafe {
                let s = &*seg;
                let p = dpdk_sys::rte_pktmbuf_mtod(seg);
                (
                    slice::from_raw_parts(p.cast_const(), usize::from(s.data_len)),
                    s.next.cast_const(),
                )
            };
            let n = data.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&data[..n]);
            at += n;
            seg = next;
        }
        at
    }

    /// Frees every mbuf in `mbufs` in one call (`rte_pktmbuf_free_bulk`), leaving it
    /// empty. Cheaper than dropping them one by one.
    pub fn free_bulk(mbufs: &mut Vec<Mbuf<'p>>) {
        let n = u32::try_from(mbufs.len()).expect("fewer than 2^32 mbufs");
        // SAFETY: forget the Vec's elements first (len 0) so no Drop runs on them; the
        // buffer still holds n valid, owned mbuf pointers (repr(transparent)), which
        // rte_pktmbuf_free_bulk takes and frees.
        unsafe {
            mbufs.set_len(0);
            dpdk_sys::rte_pktmbuf_free_bulk(mbufs.as_mut_ptr().cast::<*mut rte_mbuf>(), n);
        }
    }
}

impl Drop for Mbuf<'_> {
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf (type invariant) and nothing uses it after this.
        unsafe { dpdk_sys::rte_pktmbuf_free(self.raw.as_ptr()) }
    }
}
