//! Mbufs attached to memory DPDK does not own (`rte_pktmbuf_attach_extbuf`): the
//! `extbuf` tx path, where a large message's payload goes to the driver straight
//! from its pool block instead of being copied into an mbuf first.
//!
//! # Lifetime
//! An attached mbuf points into memory that someone else frees: the agent frees a
//! pool block once the peer has acknowledged it, without asking the device. Each
//! attached mbuf therefore has an [`ExtSlot`] whose shared info's free callback
//! (run by DPDK, on the thread that frees the mbuf: ours, inside `tx_burst` or our
//! own frees) marks the slot free and counts the release; [`ExtSlots::outstanding`]
//! is the number of attached mbufs not yet freed. [`super::DpdkIo`] keeps it at 0
//! at the end of every transport call (see its `flush`): what the driver did not
//! take is copied or dropped, and a driver that kept an attached mbuf after
//! `tx_burst` turns the path off. So no mbuf refers to a block after the call that
//! queued it, which is what the copy path promises too.
//!
//! The shared info lives here, never in the attached memory: DPDK's helper
//! (`rte_pktmbuf_ext_shinfo_init_helper`) would write it into the block's last
//! bytes, which belong to a client's message.

use std::cell::UnsafeCell;
use std::os::raw::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dpdk_sys::{rte_iova_t, rte_mbuf_ext_shared_info};

use super::{Mbuf, PktPool};

/// One attached mbuf's shared info, and whether an mbuf uses it now.
struct ExtSlot {
    /// DPDK reads and decrements `refcnt` through a `*mut` when the mbuf is freed.
    shinfo: UnsafeCell<rte_mbuf_ext_shared_info>,
    /// Set when attached, cleared by the free callback.
    busy: AtomicBool,
    /// The owner's release counter (its `released`), bumped by the callback.
    released: *const AtomicU64,
}

/// The free callback of every attached mbuf: trivial, on the freeing thread.
///
/// # Safety
/// `opaque` is the [`ExtSlot`] the mbuf was attached with, alive (see
/// [`ExtSlots`]: slots outlive every mbuf attached with them).
unsafe extern "C" fn released(_addr: *mut c_void, opaque: *mut c_void) {
    // SAFETY: per the contract, opaque is a live ExtSlot and its `released` points
    // at the owner's counter, boxed next to it and as long-lived.
    unsafe {
        let slot = &*opaque.cast::<ExtSlot>();
        slot.busy.store(false, Ordering::Release);
        (*slot.released).fetch_add(1, Ordering::Release);
    }
}

/// Shared infos for attached mbufs, and the count of those not yet freed.
///
/// Leaked on drop if any attached mbuf is still out (DPDK may call back into a
/// slot later), freed otherwise.
pub(super) struct ExtSlots {
    slots: Box<[ExtSlot]>,
    /// Attached mbufs freed (by the driver or by us): the callbacks' count.
    released: Box<AtomicU64>,
    /// Attachments made.
    attached: u64,
    /// Where the search for a free slot starts.
    cursor: usize,
}

// SAFETY: the slots hold raw pointers into their own boxes (stable addresses), and
// every access from another thread would go through the atomics; in practice one
// polling thread owns the device.
unsafe impl Send for ExtSlots {}

impl ExtSlots {
    /// `n` slots: at most `n` attached mbufs out at once.
    pub(super) fn new(n: usize) -> ExtSlots {
        let released = Box::new(AtomicU64::new(0));
        let home: *const AtomicU64 = &*released;
        let slots = (0..n)
            .map(|_| ExtSlot {
                shinfo: UnsafeCell::new(rte_mbuf_ext_shared_info::default()),
                busy: AtomicBool::new(false),
                released: home,
            })
            .collect();
        ExtSlots {
            slots,
            released,
            attached: 0,
            cursor: 0,
        }
    }

    /// Attached mbufs not freed yet.
    pub(super) fn outstanding(&self) -> u64 {
        self.attached - self.released.load(Ordering::Acquire)
    }

    /// An mbuf of `pool` whose data is `payload` itself (not a copy), or `None`
    /// when no slot or mbuf is free or the payload is longer than an mbuf
    /// segment can say (64 KiB).
    ///
    /// # Safety
    /// `payload` must stay valid, and should stay unchanged, until the mbuf is freed
    /// (its slot's callback has run): the driver reads it when it sends. The caller
    /// never writes through the mbuf ([`Mbuf::data_mut`], `append`, `prepend`): its
    /// data is `payload`, for transmission only.
    pub(super) unsafe fn attach<'p>(
        &mut self,
        pool: &'p PktPool,
        payload: &[u8],
    ) -> Option<Mbuf<'p>> {
        let len = u16::try_from(payload.len()).ok()?;
        let n = self.slots.len();
        let i = (0..n)
            .map(|k| (self.cursor + k) % n)
            .find(|&i| !self.slots[i].busy.load(Ordering::Acquire))?;
        let m = pool.alloc().ok()?;
        self.cursor = (i + 1) % n;
        let slot = &self.slots[i];
        let shinfo = slot.shinfo.get();
        let raw = m.as_raw().cast_mut();
        // SAFETY:
        // 1. The slot is not busy, so no mbuf refers to its shared info: writing it
        //    races with nothing (the callback cleared `busy` after DPDK's last use).
        // 2. `m` is a fresh, owned mbuf (refcount 1, its own buffer); attaching makes
        //    it point at `payload` with this shared info (refcount 1), IOVA unknown
        //    (`RTE_BAD_IOVA`: only drivers that copy with the CPU are given these).
        //    Its data is then the whole payload (attach left data_off and data_len
        //    at 0; one segment, so pkt_len is the same).
        // 3. payload outlives the mbuf by this function's contract; DPDK only reads it.
        unsafe {
            (*shinfo).free_cb = Some(released);
            (*shinfo).fcb_opaque = ptr::from_ref(slot).cast_mut().cast();
            dpdk_sys::rte_mbuf_ext_refcnt_set(shinfo, 1);
            dpdk_sys::rte_pktmbuf_attach_extbuf(
                raw,
                payload.as_ptr().cast_mut().cast(),
                dpdk_sys::RTE_BAD_IOVA as rte_iova_t,
                len,
                shinfo,
            );
            (*raw).data_len = len;
            (*raw).pkt_len = u32::from(len);
        }
        slot.busy.store(true, Ordering::Release);
        self.attached += 1;
        Some(m)
    }
}

impl Drop for ExtSlots {
    fn drop(&mut self) {
        if self.outstanding() != 0 {
            // A driver still holds attached mbufs (a closed port's queue): their
            // callbacks may run later and must find their slots.
            log::debug!(
                "dpdk: {} attached mbufs still out at close; their shared infos are kept",
                self.outstanding()
            );
            std::mem::forget(std::mem::replace(&mut self.slots, Box::new([])));
            std::mem::forget(std::mem::replace(
                &mut self.released,
                Box::new(AtomicU64::new(0)),
            ));
        }
    }
}
