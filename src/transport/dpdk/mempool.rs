//! Pools of packet buffers (`rte_pktmbuf_pool_create`).

use std::ffi::CString;
use std::ptr::NonNull;

use dpdk_sys::{rte_mbuf, rte_mempool};

use super::eal::Eal;
use super::error::{Error, Result, RteError};
use super::mbuf::Mbuf;

/// A pool of packet buffers (mbufs) in DPDK memory, freed when dropped.
///
/// Every [`Mbuf`] borrows its pool, and a [`Port`](super::Port) borrows the pool its
/// receive queues fill from, so the pool outlives everything that points into it.
/// Pools may be used from any thread (DPDK's default `ring_mp_mc` ops are
/// multi-producer, multi-consumer; per-lcore caches serve only EAL threads, each of
/// which is one OS thread).
#[derive(Debug)]
pub struct PktPool {
    raw: NonNull<rte_mempool>,
    name: String,
    count: u32,
}

// SAFETY: the pool is DPDK shared memory whose operations are thread-safe (ring_mp_mc;
// see the type's doc); PktPool holds no thread-affine state.
unsafe impl Send for PktPool {}
// SAFETY: every &self method is an MT-safe mempool operation (alloc, counts).
unsafe impl Sync for PktPool {}

impl PktPool {
    /// The data room of [`PktPool::new`]'s default: 2048 B of data plus
    /// `RTE_PKTMBUF_HEADROOM` (128 B).
    pub const DEFAULT_DATA_ROOM: u16 = dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;

    /// Creates a pool of `count` mbufs (best a power of two minus one), each with
    /// `data_room` bytes of buffer (headroom included), with a per-lcore cache of
    /// `cache` mbufs (0 for none; at most 512). The name must be unique in the process
    /// (DPDK refuses a second pool of the same name) and short (< 26 bytes).
    pub fn new(_eal: &Eal, name: &str, count: u32, cache: u32, data_room: u16) -> Result<PktPool> {
        let c = CString::new(name).map_err(|_| Error::NulByte {
            what: "pool name",
            value: name.to_owned(),
        })?;
        // SAFETY: the EAL is up (we hold an &Eal); c is a valid C string for the call.
        let raw = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(
                c.as_ptr(),
                count,
                cache,
                0,
                data_room,
                dpdk_sys::SOCKET_ID_ANY,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| Error::PoolCreate {
            name: name.to_owned(),
            count,
            data_room,
            source: RteError::last(),
        })?;
        Ok(PktPool {
            raw,
            name: name.to_owned(),
            count,
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many mbufs it was created with.
    pub fn capacity(&self) -> u32 {
        self.count
    }

    /// Free mbufs now (including those in per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is live (self owns it).
        unsafe { dpdk_sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs now allocated (held by us, a port's queues, or in flight).
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is live.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// Buffer bytes per mbuf, headroom included.
    pub fn data_room(&self) -> u16 {
        // SAFETY: the pool is live and a pktmbuf pool (it has the private area read).
        unsafe { dpdk_sys::rte_pktmbuf_data_room_size(self.raw.as_ptr()) }
    }

    /// One empty mbuf (`rte_pktmbuf_alloc`). For more than one, [`PktPool::alloc_bulk`]
    /// is cheaper.
    pub fn alloc(&self) -> Result<Mbuf<'_>> {
        // SAFETY: the pool is live; the mbuf returned (if any) is fresh and ours.
        let m = unsafe { dpdk_sys::rte_pktmbuf_alloc(self.raw.as_ptr()) };
        match NonNull::new(m) {
            // SAFETY: m is a freshly allocated mbuf of this pool, owned by nobody else.
            Some(m) => Ok(unsafe { Mbuf::from_raw(m.as_ptr()) }),
            None => Err(Error::PoolEmpty {
                pool: self.name.clone(),
                count: 1,
            }),
        }
    }

    /// Appends `count` empty mbufs to `out`, all or none (`rte_pktmbuf_alloc_bulk`).
    pub fn alloc_bulk<'p>(&'p self, out: &mut Vec<Mbuf<'p>>, count: usize) -> Result<()> {
        let n = u32::try_from(count).map_err(|_| Error::PoolEmpty {
            pool: self.name.clone(),
            count,
        })?;
        out.reserve(count);
        let spare = out.spare_capacity_mut();
        // SAFETY: spare has room for `count` entries; Mbuf is repr(transparent) over a
        // non-null *mut rte_mbuf, so the C array of mbuf pointers fits it exactly; on
        // success DPDK wrote `count` fresh mbufs of this pool, on failure nothing.
        let rc = unsafe {
            dpdk_sys::rte_pktmbuf_alloc_bulk(
                self.raw.as_ptr(),
                spare.as_mut_ptr().cast::<*mut rte_mbuf>(),
                n,
            )
        };
        if rc != 0 {
            return Err(Error::PoolEmpty {
                pool: self.name.clone(),
                count,
            });
        }
        // SAFETY: the `count` entries after len were just initialised with valid mbufs.
        unsafe { out.set_len(out.len() + count) };
        Ok(())
    }

    /// The raw pool, for what this layer does not wrap. It stays owned by `self`.
    pub fn as_raw(&self) -> *mut rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for PktPool {
    fn drop(&mut self) {
        let in_use = self.in_use();
        if in_use != 0 {
            // Only mbufs the drivers still hold (e.g. in a closed ring port) can be
            // out: every Mbuf borrows the pool. They are never touched again.
            log::debug!("mbuf pool {}: freed with {in_use} mbufs out", self.name);
        }
        // SAFETY: self owns the pool; no Mbuf or Port borrowing it is alive (the borrow
        // checker ended them first), so nothing uses it after this.
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) };
    }
}
