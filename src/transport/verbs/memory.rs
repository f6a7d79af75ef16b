//! Protection domains and memory regions.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

use super::device::Context;
use super::error::{from_ret, last_os, Error, Result};

/// A protection domain; freed on drop after every memory region and queue pair made in
/// it (they hold an `Arc<Pd>`).
pub struct Pd {
    pd: NonNull<sys::ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: libibverbs objects may be used from any thread; the pointer is owned here.
unsafe impl Send for Pd {}
// SAFETY: as above; the PD is only passed to verbs.
unsafe impl Sync for Pd {}

impl Pd {
    /// Allocate a protection domain on `ctx`.
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Pd>> {
        // SAFETY: an open context; the PD is ours until `ibv_dealloc_pd`.
        let p = unsafe { sys::ibv_alloc_pd(ctx.as_ptr()) };
        let pd = NonNull::new(p).ok_or_else(|| Error::Create {
            what: "ibv_alloc_pd",
            device: ctx.name().into(),
            source: last_os(),
        })?;
        Ok(Arc::new(Pd {
            pd,
            ctx: ctx.clone(),
        }))
    }

    /// The device.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_pd {
        self.pd.as_ptr()
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: everything made in this PD holds an `Arc<Pd>` and is gone.
        let r = unsafe { sys::ibv_dealloc_pd(self.pd.as_ptr()) };
        if r != 0 {
            log::warn!("ibv_dealloc_pd on {}: {}", self.ctx.name(), from_ret(r));
        }
    }
}

/// Access rights of a memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(u32);

impl Access {
    /// The device may write into it (receives, RDMA READ targets).
    pub const LOCAL_WRITE: Access = Access(sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// Peers may RDMA WRITE into it.
    pub const REMOTE_WRITE: Access = Access(sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    /// Peers may RDMA READ from it.
    pub const REMOTE_READ: Access = Access(sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);

    /// Both sets of rights.
    pub const fn with(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    /// The raw flags.
    pub fn bits(self) -> u32 {
        self.0
    }
}

/// A registered memory region; deregistered on drop (before its PD).
pub struct Mr {
    mr: NonNull<sys::ibv_mr>,
    pd: Arc<Pd>,
    addr: usize,
    len: usize,
}

// SAFETY: libibverbs objects may be used from any thread; the pointer is owned here.
unsafe impl Send for Mr {}
// SAFETY: as above; only immutable fields are read.
unsafe impl Sync for Mr {}

impl Mr {
    /// Register `len` bytes at `addr`.
    ///
    /// # Safety
    /// The memory must stay mapped (and not be handed to anything that would be hurt
    /// by the device or a peer writing it, as `access` allows) until the region is
    /// dropped.
    pub unsafe fn register(pd: &Arc<Pd>, addr: *mut u8, len: usize, access: Access) -> Result<Mr> {
        // SAFETY: the caller guarantees the range stays valid for the region's life;
        // the PD is alive.
        let p = unsafe { sys::ibv_reg_mr(pd.as_ptr(), addr.cast(), len, access.bits() as i32) };
        let mr = NonNull::new(p).ok_or_else(|| {
            let source = last_os();
            let hint = if source.raw_os_error() == Some(libc::ENOMEM)
                || source.raw_os_error() == Some(libc::EPERM)
            {
                format!(
                    " (the locked-memory limit, RLIMIT_MEMLOCK, is {}: raise it, e.g. \
                     `ulimit -l unlimited`, or LimitMEMLOCK=infinity for a systemd service)",
                    memlock_limit()
                )
            } else {
                String::new()
            };
            Error::Register {
                device: pd.context().name().into(),
                len,
                hint,
                source,
            }
        })?;
        Ok(Mr {
            mr,
            pd: pd.clone(),
            addr: addr as usize,
            len,
        })
    }

    /// The key local work requests name it by.
    pub fn lkey(&self) -> u32 {
        // SAFETY: reads a field of the live region.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    /// The key peers name it by.
    pub fn rkey(&self) -> u32 {
        // SAFETY: reads a field of the live region.
        unsafe { (*self.mr.as_ptr()).rkey }
    }

    /// Its start address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `[addr, addr+len)` lies inside it.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|e| e <= self.addr + self.len)
    }

    /// The protection domain.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: the region is deregistered once; no work request still uses it
        // (the queue pairs that could were destroyed first, see `VerbsTransport`).
        let r = unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) };
        if r != 0 {
            log::warn!("ibv_dereg_mr: {}", from_ret(r));
        }
    }
}

/// RLIMIT_MEMLOCK, readable.
fn memlock_limit() -> String {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == libc::RLIM_INFINITY => "unlimited".into(),
        Ok((soft, _)) => format!("{} KiB", soft / 1024),
        Err(e) => format!("unknown ({e})"),
    }
}

/// A buffer of our own, page-aligned and registered: send slots, receive slots, a
/// bounce buffer. The memory is freed after the region is deregistered.
pub struct RegBuf {
    // Field order: the region is dropped (deregistered) before the memory it covers.
    mr: Mr,
    mem: PageBuf,
}

/// Page-aligned zeroed memory from mmap.
struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory owned by this value.
unsafe impl Send for PageBuf {}
// SAFETY: accessed only through `RegBuf`'s methods, which follow `&`/`&mut` rules.
unsafe impl Sync for PageBuf {}

impl PageBuf {
    fn new(len: usize) -> std::io::Result<PageBuf> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(PageBuf {
            ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len: len.max(1),
        })
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once, after its region was deregistered.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl RegBuf {
    /// `len` bytes, registered with `access` (always including local write).
    pub fn new(pd: &Arc<Pd>, len: usize, access: Access) -> Result<RegBuf> {
        let mem = PageBuf::new(len).map_err(|source| Error::Create {
            what: "mmap of a registered buffer",
            device: pd.context().name().into(),
            source,
        })?;
        // SAFETY: `mem` lives in the same value as the region and is dropped after it
        // (field order); nothing else sees it.
        let mr = unsafe {
            Mr::register(
                pd,
                mem.ptr.as_ptr(),
                mem.len,
                access.with(Access::LOCAL_WRITE),
            )?
        };
        Ok(RegBuf { mr, mem })
    }

    /// The region.
    pub fn mr(&self) -> &Mr {
        &self.mr
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.mem.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.mem.len == 0
    }

    /// The address of byte `off` (for a scatter/gather entry).
    pub fn addr(&self, off: usize) -> u64 {
        assert!(off <= self.mem.len);
        self.mem.ptr.as_ptr() as u64 + off as u64
    }

    /// Bytes `[off, off+len)`.
    ///
    /// The device may write a range that a posted receive or RDMA READ targets: read
    /// only ranges whose work request completed.
    pub fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.mem.len));
        // SAFETY: in bounds (asserted); the memory lives as long as `&self`.
        unsafe { std::slice::from_raw_parts(self.mem.ptr.as_ptr().add(off), len) }
    }

    /// Bytes `[off, off+len)`, writable (to fill a send slot before posting it).
    pub fn slice_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.mem.len));
        // SAFETY: in bounds (asserted); `&mut self` makes it the only view.
        unsafe { std::slice::from_raw_parts_mut(self.mem.ptr.as_ptr().add(off), len) }
    }
}
