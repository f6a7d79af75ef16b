//! The shared-memory pool: one mapping created by the agent and handed to
//! every client over the control socket (SCM_RIGHTS).
//!
//! The pool is a `memfd` backed by 2 MiB hugepages (`MFD_HUGETLB`) when the
//! kernel has enough free; otherwise by normal shared pages, and the agent
//! says so ([`Backing`]). It is sealed against shrinking and growing, so a
//! client cannot truncate it under the agent's feet (that would raise SIGBUS in
//! the agent).
//!
//! ## Layout (layout version [`LAYOUT_VERSION`])
//! | offset | content |
//! | --- | --- |
//! | 0 | [`PoolHeader`]: magic, version, geometry, offsets |
//! | 256 | the agent's `sleeping` word, alone on its 128-byte line |
//! | `clients_off + i * client_stride` | client slot `i`: control line, submission ring, completion ring, one receive ring per endpoint slot |
//! | `blocks_off` | the block region: payloads of messages too large for a ring |
//!
//! Everything is `#[repr(C)]` and addressed by offsets; no pointer is ever
//! stored in the pool.
//!
//! ## Isolation
//! Every client of one agent maps the whole pool read-write: the pool does
//! **not** isolate clients of one job from each other. What it guarantees is
//! that the agent never trusts the pool: it copies every record out before
//! checking it, validates every offset against what that client owns, and
//! keeps its own indices privately (see [`ring`]).

pub mod blocks;
pub mod guard;
pub mod handoff;
pub mod ring;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

pub use ring::{Consumer, Producer, RingError, RingGeometry};

/// "WYVERNPL" as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"WYVERNPL");
/// Bumped whenever anything in the pool's layout or record formats changes.
pub const LAYOUT_VERSION: u32 = 2;
/// Hugepage size the pool uses when it can.
pub const HUGEPAGE: usize = 2 << 20;
/// Granularity of the block region.
pub const BLOCK_UNIT: u64 = 4096;

const HEADER_BYTES: usize = 4096;
const SLEEP_WORD_OFF: usize = 256;
const CLIENT_CTL_BYTES: usize = 256;

/// What backs the pool's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// 2 MiB hugepages (`memfd` with `MFD_HUGETLB`).
    Hugepages,
    /// Normal 4 KiB shared pages: no hugepages were free.
    Normal,
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backing::Hugepages => "hugepages (2 MiB)",
            Backing::Normal => "normal pages (no free hugepages)",
        })
    }
}

/// Errors of the shared-memory layer.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// `memfd_create` failed.
    #[error("cannot create the pool memfd")]
    Create(#[source] io::Error),
    /// Sizing the memfd failed.
    #[error("cannot size the pool to {bytes} bytes")]
    Size {
        /// Requested size.
        bytes: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `mmap` failed.
    #[error("cannot map the pool ({bytes} bytes)")]
    Map {
        /// Requested size.
        bytes: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The fd handed over is not a wyvern pool.
    #[error("not a wyvern pool (bad magic {0:#x})")]
    Magic(u64),
    /// The agent speaks another layout version.
    #[error("pool layout version {found} is not supported by this client (it speaks version {expected}); use a client library matching the agent")]
    Version {
        /// Version in the pool.
        found: u32,
        /// Version this library speaks.
        expected: u32,
    },
    /// Header fields disagree with each other or with the mapping.
    #[error("pool header is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// Parameters make no sense.
    #[error("invalid pool parameters: {0}")]
    Params(String),
}

/// The sizes an agent chooses for its pool. As the `[pool]` table of the
/// agent's TOML configuration, a key left out takes its default and an
/// unknown key (a typo) is an error, like the top-level keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolParams {
    /// Clients that can be attached at once.
    pub max_clients: u32,
    /// Endpoints one client can open.
    pub endpoints_per_client: u32,
    /// Slots of a client's submission ring.
    pub sub_slots: u32,
    /// Slots of a client's completion ring.
    pub comp_slots: u32,
    /// Slots of an endpoint's receive ring.
    pub recv_slots: u32,
    /// Bytes of the block region (large payloads).
    #[serde(deserialize_with = "crate::config::size_de::block_bytes")]
    pub block_bytes: u64,
}

impl Default for PoolParams {
    fn default() -> Self {
        PoolParams {
            max_clients: 32,
            endpoints_per_client: 4,
            sub_slots: 4096,
            comp_slots: 1024,
            recv_slots: 4096,
            block_bytes: 192 << 20,
        }
    }
}

/// Where everything lives in a pool, derived from [`PoolParams`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The parameters.
    pub params: PoolParams,
    /// Submission ring shape.
    pub sub: RingGeometry,
    /// Completion ring shape.
    pub comp: RingGeometry,
    /// Receive ring shape.
    pub recv: RingGeometry,
    /// Offset of client slot 0.
    pub clients_off: u64,
    /// Bytes per client slot.
    pub client_stride: u64,
    /// Offset of the block region.
    pub blocks_off: u64,
    /// Total pool bytes (rounded to the hugepage size).
    pub total: u64,
}

impl Layout {
    /// Compute the layout, checking the parameters.
    pub fn compute(params: PoolParams) -> Result<Layout, ShmError> {
        let bad = |s: &str| Err(ShmError::Params(s.to_string()));
        if params.max_clients == 0 || params.max_clients > 4096 {
            return bad("max_clients must be 1..=4096");
        }
        if params.endpoints_per_client == 0 || params.endpoints_per_client > 64 {
            return bad("endpoints_per_client must be 1..=64");
        }
        for (n, what) in [
            (params.sub_slots, "sub_slots"),
            (params.comp_slots, "comp_slots"),
            (params.recv_slots, "recv_slots"),
        ] {
            if !(16..=1 << 20).contains(&n) || !n.is_power_of_two() {
                return Err(ShmError::Params(format!(
                    "{what} must be a power of two in 16..=1048576, not {n}"
                )));
            }
        }
        if params.block_bytes % BLOCK_UNIT != 0 || params.block_bytes > 1 << 40 {
            return bad("block_bytes must be a multiple of 4096 and at most 1 TiB");
        }
        let sub = RingGeometry::new(params.sub_slots);
        let comp = RingGeometry::new(params.comp_slots);
        let recv = RingGeometry::new(params.recv_slots);
        let client_stride = (CLIENT_CTL_BYTES
            + sub.bytes()
            + comp.bytes()
            + recv.bytes() * params.endpoints_per_client as usize)
            .next_multiple_of(4096) as u64;
        let clients_off = HEADER_BYTES as u64;
        let blocks_off = (clients_off + client_stride * params.max_clients as u64)
            .next_multiple_of(HUGEPAGE as u64);
        let total = (blocks_off + params.block_bytes).next_multiple_of(HUGEPAGE as u64);
        Ok(Layout {
            params,
            sub,
            comp,
            recv,
            clients_off,
            client_stride,
            blocks_off,
            total,
        })
    }

    fn client_base(&self, client: u32) -> usize {
        (self.clients_off + self.client_stride * client as u64) as usize
    }

    /// The pool range `[start, end)` of client slot `c` (its control line
    /// and all its rings).
    pub fn client_range(&self, c: u32) -> (u64, u64) {
        let s = self.client_base(c) as u64;
        (s, s + self.client_stride)
    }

    /// Offset of client `c`'s submission ring.
    pub fn sub_off(&self, c: u32) -> usize {
        self.client_base(c) + CLIENT_CTL_BYTES
    }

    /// Offset of client `c`'s completion ring.
    pub fn comp_off(&self, c: u32) -> usize {
        self.sub_off(c) + self.sub.bytes()
    }

    /// Offset of client `c`'s receive ring for endpoint slot `e`.
    pub fn recv_off(&self, c: u32, e: u32) -> usize {
        self.comp_off(c) + self.comp.bytes() + self.recv.bytes() * e as usize
    }
}

/// The header at offset 0 of every pool. Written once by the agent before
/// any client sees the pool. Informational only: it lies in memory every
/// client may write, so neither the agent nor the client library trusts it
/// (clients take the geometry from the agent's attach reply, see
/// [`Pool::open_with`]); [`Pool::open`] reads it for tools and tests.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PoolHeader {
    magic: u64,
    version: u32,
    node_id: u32,
    total: u64,
    max_clients: u32,
    endpoints_per_client: u32,
    sub_slots: u32,
    comp_slots: u32,
    recv_slots: u32,
    backing: u32,
    block_bytes: u64,
    clients_off: u64,
    client_stride: u64,
    blocks_off: u64,
}

/// A mapped pool.
pub struct Pool {
    base: *mut u8,
    layout: Layout,
    fd: OwnedFd,
    backing: Backing,
    node_id: u32,
    /// The SIGBUS guard's handle for this mapping (see [`Pool::guard`]).
    guard: Option<usize>,
}

// SAFETY: the mapping is process-wide and stays valid until `Drop`; every
// access to shared words is atomic or a raw copy, never a `&`/`&mut` to data
// another thread may write, so the pool can move and be shared between threads.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

fn memfd(name: &str, huge: bool) -> io::Result<OwnedFd> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if huge {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: `cname` is a valid C string; memfd_create has no other inputs.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn map(fd: RawFd, bytes: usize, populate: bool) -> io::Result<*mut u8> {
    let mut flags = libc::MAP_SHARED;
    if populate {
        flags |= libc::MAP_POPULATE;
    } else {
        // A client's mapping of a pool the agent populated: nothing to
        // reserve. Without this, a hugetlb mmap reserves a huge page for
        // every page not in the file, so once a client punched a hole in the
        // pool (fallocate PUNCH_HOLE) and no huge page is free, no client
        // could map the pool (attach) any more. The punched range itself
        // is retired by the agent (see `guard`); touching it is a SIGBUS in
        // whoever touches it.
        flags |= libc::MAP_NORESERVE;
    }
    // SAFETY: a fresh mapping chosen by the kernel (addr null) of a file we
    // hold open; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

impl Pool {
    /// Create a pool for node `node_id` with the given parameters. Tries
    /// hugepages first when `want_huge`; falls back to normal pages.
    pub fn create(params: PoolParams, node_id: u32, want_huge: bool) -> Result<Pool, ShmError> {
        let layout = Layout::compute(params)?;
        let total = layout.total as usize;
        let attempt = |huge: bool| -> Result<(OwnedFd, *mut u8), ShmError> {
            let fd = memfd("wyvern-pool", huge).map_err(ShmError::Create)?;
            nix::unistd::ftruncate(&fd, total as i64).map_err(|e| ShmError::Size {
                bytes: total,
                source: e.into(),
            })?;
            let base = map(fd.as_raw_fd(), total, huge).map_err(|e| ShmError::Map {
                bytes: total,
                source: e,
            })?;
            Ok((fd, base))
        };
        let (fd, base, backing) = match want_huge.then(|| attempt(true)) {
            Some(Ok((fd, base))) => (fd, base, Backing::Hugepages),
            other => {
                if let Some(Err(e)) = other {
                    // The cause, for the log; the agent says it once at warn
                    // with the fix (its `hugepages` degraded path).
                    log::info!(
                        "no hugepages for a {} MiB pool ({e}: {}); falling back to normal shared pages",
                        total >> 20,
                        std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                    );
                }
                let (fd, base) = attempt(false)?;
                (fd, base, Backing::Normal)
            }
        };
        // Seal the size: a client must not be able to shrink the file and
        // make the agent fault. Failure is logged, not fatal (old kernels).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on an fd we own with integer arguments.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            log::warn!("cannot seal the pool memfd: {}", io::Error::last_os_error());
        }
        let hdr = PoolHeader {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            node_id,
            total: layout.total,
            max_clients: params.max_clients,
            endpoints_per_client: params.endpoints_per_client,
            sub_slots: params.sub_slots,
            comp_slots: params.comp_slots,
            recv_slots: params.recv_slots,
            backing: backing as u32,
            block_bytes: params.block_bytes,
            clients_off: layout.clients_off,
            client_stride: layout.client_stride,
            blocks_off: layout.blocks_off,
        };
        // SAFETY: the mapping is at least HEADER_BYTES long and page-aligned;
        // nobody else has the fd yet.
        unsafe { ptr::write(base as *mut PoolHeader, hdr) };
        Ok(Pool {
            base,
            layout,
            fd,
            backing,
            node_id,
            guard: None,
        })
    }

    /// Map a pool received from an agent whose geometry the agent gave over
    /// the control socket (not read from the pool's header, which any client
    /// may overwrite): the layout is computed from `params`, and the memfd's
    /// size must match it.
    pub fn open_with(
        fd: OwnedFd,
        params: PoolParams,
        node_id: u32,
        backing: Backing,
    ) -> Result<Pool, ShmError> {
        let layout = Layout::compute(params)?;
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| ShmError::Map {
            bytes: 0,
            source: e.into(),
        })?;
        if st.st_size < 0 || st.st_size as u64 != layout.total {
            return Err(ShmError::Inconsistent(
                "the pool's size disagrees with the geometry the agent sent",
            ));
        }
        let len = layout.total as usize;
        let base = map(fd.as_raw_fd(), len, false).map_err(|e| ShmError::Map {
            bytes: len,
            source: e,
        })?;
        Ok(Pool {
            base,
            layout,
            fd,
            backing,
            node_id,
            guard: None,
        })
    }

    /// Map a pool, taking its geometry from the header in the pool itself.
    /// Only for tools and tests: a client could have overwritten the header
    /// (clients use [`Pool::open_with`]).
    pub fn open(fd: OwnedFd) -> Result<Pool, ShmError> {
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| ShmError::Map {
            bytes: 0,
            source: e.into(),
        })?;
        let len = st.st_size as usize;
        if len < HEADER_BYTES {
            return Err(ShmError::Inconsistent("pool smaller than its header"));
        }
        let base = map(fd.as_raw_fd(), len, false).map_err(|e| ShmError::Map {
            bytes: len,
            source: e,
        })?;
        let unmap = |base: *mut u8| {
            // SAFETY: unmapping the mapping made just above, not yet shared.
            unsafe { libc::munmap(base as *mut libc::c_void, len) };
        };
        // SAFETY: the mapping holds at least HEADER_BYTES; the header is
        // plain old data and copied out once.
        let hdr = unsafe { ptr::read_volatile(base as *const PoolHeader) };
        let check = || -> Result<(Layout, Backing), ShmError> {
            if hdr.magic != MAGIC {
                return Err(ShmError::Magic(hdr.magic));
            }
            if hdr.version != LAYOUT_VERSION {
                return Err(ShmError::Version {
                    found: hdr.version,
                    expected: LAYOUT_VERSION,
                });
            }
            let layout = Layout::compute(PoolParams {
                max_clients: hdr.max_clients,
                endpoints_per_client: hdr.endpoints_per_client,
                sub_slots: hdr.sub_slots,
                comp_slots: hdr.comp_slots,
                recv_slots: hdr.recv_slots,
                block_bytes: hdr.block_bytes,
            })?;
            if layout.total != hdr.total
                || layout.total as usize != len
                || layout.clients_off != hdr.clients_off
                || layout.client_stride != hdr.client_stride
                || layout.blocks_off != hdr.blocks_off
            {
                return Err(ShmError::Inconsistent(
                    "offsets disagree with the parameters",
                ));
            }
            let backing = if hdr.backing == Backing::Hugepages as u32 {
                Backing::Hugepages
            } else {
                Backing::Normal
            };
            Ok((layout, backing))
        };
        match check() {
            Ok((layout, backing)) => Ok(Pool {
                base,
                layout,
                fd,
                backing,
                node_id: hdr.node_id,
                guard: None,
            }),
            Err(e) => {
                unmap(base);
                Err(e)
            }
        }
    }

    /// Put this mapping under the SIGBUS guard ([`guard`]): a page a client
    /// punched out of the memfd (`fallocate(FALLOC_FL_PUNCH_HOLE)`) that
    /// cannot be faulted back in (no free huge page) becomes a private zero
    /// page of this process and a damage record, instead of killing it.
    /// For the agent; installs the process-wide handler on first use.
    pub fn guard(&mut self) -> io::Result<()> {
        if self.guard.is_some() {
            return Ok(());
        }
        guard::install()?;
        let region = guard::register(self.base as usize, self.len(), self.page_size())
            .ok_or_else(|| io::Error::other("too many guarded pools in this process"))?;
        self.guard = Some(region);
        Ok(())
    }

    /// The guard's handle for this mapping, if it is guarded
    /// ([`guard::Damage::region`]).
    pub fn guard_region(&self) -> Option<usize> {
        self.guard
    }

    /// Bytes of one page of the backing (what a hole punch frees at least).
    pub fn page_size(&self) -> usize {
        match self.backing {
            Backing::Hugepages => HUGEPAGE,
            // SAFETY: sysconf has no memory inputs.
            Backing::Normal => match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
                n if n > 0 => n as usize,
                _ => 4096,
            },
        }
    }

    /// Offset of the agent's sleeping word (in the header page).
    pub fn layout_sleep_word(&self) -> u64 {
        SLEEP_WORD_OFF as u64
    }

    /// The pool's layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// What backs the pool.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The node id the agent wrote into the header.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    /// The memfd (to hand to clients).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Total bytes mapped.
    pub fn len(&self) -> usize {
        self.layout.total as usize
    }

    /// Never true: a pool has at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.len() && off % 4 == 0);
        // SAFETY: `off` is an aligned offset inside the mapping (callers pass
        // constants from the layout); atomics may be shared across processes.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    /// The agent's "I am asleep, ring my doorbell" word.
    pub fn agent_sleeping(&self) -> &AtomicU32 {
        self.word(SLEEP_WORD_OFF)
    }

    /// Client `c`'s "I am asleep, wake me" word.
    pub fn client_sleeping(&self, c: u32) -> &AtomicU32 {
        assert!(c < self.layout.params.max_clients);
        self.word(self.layout.client_base(c))
    }

    fn ring_base(&self, off: usize, geo: RingGeometry) -> *mut u8 {
        assert!(off + geo.bytes() <= self.len());
        // SAFETY: in bounds, checked above.
        unsafe { self.base.add(off) }
    }

    /// The submission ring of client `c`, consumer end (agent).
    pub fn sub_consumer(self: &std::sync::Arc<Self>, c: u32, reset: bool) -> RingRx {
        let geo = self.layout.sub;
        let base = self.ring_base(self.layout.sub_off(c), geo);
        // SAFETY: base is 128-aligned inside the mapping, which `RingRx`
        // keeps alive through its `Arc`; the layout gives each ring one consumer.
        let ring = unsafe { Consumer::attach(base, geo, reset) };
        RingRx {
            ring,
            _pool: self.clone(),
        }
    }

    /// The submission ring of client `c`, producer end (client).
    pub fn sub_producer(self: &std::sync::Arc<Self>, c: u32) -> RingTx {
        let geo = self.layout.sub;
        let base = self.ring_base(self.layout.sub_off(c), geo);
        // SAFETY: as in `sub_consumer`.
        let ring = unsafe { Producer::attach(base, geo, false) };
        RingTx {
            ring,
            _pool: self.clone(),
        }
    }

    /// The completion ring of client `c`, producer end (agent).
    pub fn comp_producer(self: &std::sync::Arc<Self>, c: u32, reset: bool) -> RingTx {
        let geo = self.layout.comp;
        let base = self.ring_base(self.layout.comp_off(c), geo);
        // SAFETY: as in `sub_consumer`.
        let ring = unsafe { Producer::attach(base, geo, reset) };
        RingTx {
            ring,
            _pool: self.clone(),
        }
    }

    /// The completion ring of client `c`, consumer end (client).
    pub fn comp_consumer(self: &std::sync::Arc<Self>, c: u32) -> RingRx {
        let geo = self.layout.comp;
        let base = self.ring_base(self.layout.comp_off(c), geo);
        // SAFETY: as in `sub_consumer`.
        let ring = unsafe { Consumer::attach(base, geo, false) };
        RingRx {
            ring,
            _pool: self.clone(),
        }
    }

    /// Receive ring of client `c`'s endpoint slot `e`, producer end (agent).
    pub fn recv_producer(self: &std::sync::Arc<Self>, c: u32, e: u32, reset: bool) -> RingTx {
        let geo = self.layout.recv;
        assert!(e < self.layout.params.endpoints_per_client);
        let base = self.ring_base(self.layout.recv_off(c, e), geo);
        // SAFETY: as in `sub_consumer`.
        let ring = unsafe { Producer::attach(base, geo, reset) };
        RingTx {
            ring,
            _pool: self.clone(),
        }
    }

    /// Receive ring of client `c`'s endpoint slot `e`, consumer end (client).
    pub fn recv_consumer(self: &std::sync::Arc<Self>, c: u32, e: u32) -> RingRx {
        let geo = self.layout.recv;
        assert!(e < self.layout.params.endpoints_per_client);
        let base = self.ring_base(self.layout.recv_off(c, e), geo);
        // SAFETY: as in `sub_consumer`.
        let ring = unsafe { Consumer::attach(base, geo, false) };
        RingRx {
            ring,
            _pool: self.clone(),
        }
    }

    /// Check that `[off, off+len)` lies inside the block region; returns the
    /// absolute pool offset range.
    fn block_range(&self, off: u64, len: u64) -> Option<usize> {
        let end = off.checked_add(len)?;
        if off < self.layout.blocks_off
            || end > self.layout.blocks_off + self.layout.params.block_bytes
        {
            return None;
        }
        Some(off as usize)
    }

    /// The address the pool is mapped at in this process (to register it with an
    /// RDMA device: `base_addr() .. base_addr() + len()`).
    pub fn base_addr(&self) -> usize {
        self.base as usize
    }

    /// The block region as `(pool offset, length)`.
    pub fn block_region(&self) -> (u64, u64) {
        (self.layout.blocks_off, self.layout.params.block_bytes)
    }

    /// Copy `src` into the block region at pool offset `off`.
    pub fn write_block(&self, off: u64, src: &[u8]) -> Option<()> {
        let at = self.block_range(off, src.len() as u64)?;
        // SAFETY: the range is inside the mapping (checked); `src` is private.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(at), src.len()) };
        Some(())
    }

    /// Copy from the block region at pool offset `off` into `dst`.
    pub fn read_block(&self, off: u64, dst: &mut [u8]) -> Option<()> {
        let at = self.block_range(off, dst.len() as u64)?;
        // SAFETY: the range is inside the mapping (checked); `dst` is private.
        unsafe { ptr::copy_nonoverlapping(self.base.add(at), dst.as_mut_ptr(), dst.len()) };
        Some(())
    }

    /// Copy `len` bytes from block offset `from` to block offset `to`.
    pub fn copy_block(&self, from: u64, to: u64, len: u64) -> Option<()> {
        let a = self.block_range(from, len)?;
        let b = self.block_range(to, len)?;
        // SAFETY: both ranges are inside the mapping; `copy` tolerates overlap.
        unsafe { ptr::copy(self.base.add(a), self.base.add(b), len as usize) };
        Some(())
    }

    /// Write up to `len` bytes of the block at `off` to a file descriptor
    /// (a socket). Returns what `write(2)` returns.
    pub fn write_block_to(&self, fd: RawFd, off: u64, len: u64) -> io::Result<usize> {
        let at = self.block_range(off, len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "block range outside the pool")
        })?;
        self.guarded_syscall(at, len as usize, || {
            // SAFETY: the source range lies inside the mapping (checked); the
            // kernel only reads it.
            unsafe { libc::write(fd, self.base.add(at) as *const libc::c_void, len as usize) }
        })
    }

    /// Run a system call on `[at, at+len)` of the pool. A page a client
    /// punched out that cannot be faulted back in makes the kernel's copy
    /// fail with EFAULT (no signal); in a guarded pool, the range is then
    /// touched from user space (the guard replaces such pages, see
    /// [`guard`]) and the call is made once more.
    fn guarded_syscall(
        &self,
        at: usize,
        len: usize,
        call: impl Fn() -> isize,
    ) -> io::Result<usize> {
        let mut n = call();
        if n < 0
            && self.guard.is_some()
            && io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
        {
            let page = self.page_size();
            let mut p = at / page * page;
            while p < at + len {
                // SAFETY: `p` is a page start inside the mapping (the range
                // was checked by the caller); a read of one byte faults the
                // page in, or lets the guard replace it.
                unsafe { std::ptr::read_volatile(self.base.add(p)) };
                p += page;
            }
            n = call();
        }
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Read up to `len` bytes from a file descriptor into the block at `off`.
    pub fn read_block_from(&self, fd: RawFd, off: u64, len: u64) -> io::Result<usize> {
        let at = self.block_range(off, len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "block range outside the pool")
        })?;
        self.guarded_syscall(at, len as usize, || {
            // SAFETY: the destination range lies inside the mapping (checked)
            // and is owned by the agent while it is being filled.
            unsafe { libc::read(fd, self.base.add(at) as *mut libc::c_void, len as usize) }
        })
    }

    /// A read-only view of a block for a client that owns it.
    ///
    /// The slice aliases shared memory: the agent does not write to a block
    /// while a client owns it, but other clients of the same pool could (the
    /// pool does not isolate clients of one job; see the module docs).
    pub fn block_slice(&self, off: u64, len: u64) -> Option<&[u8]> {
        let at = self.block_range(off, len)?;
        // SAFETY: in bounds (checked); lives as long as `&self`. The agent
        // hands the block to exactly one owner and does not touch it until
        // that owner returns it.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(at), len as usize) })
    }

    /// A writable view of a block the caller owns (see [`Pool::block_slice`]).
    #[allow(clippy::mut_from_ref)]
    pub fn block_slice_mut(&self, off: u64, len: u64) -> Option<&mut [u8]> {
        let at = self.block_range(off, len)?;
        // SAFETY: in bounds (checked). The agent allocated this block to the
        // caller alone; the caller's wrapper type hands out one `&mut` at a time.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.add(at), len as usize) })
    }

    /// The raw bytes at `[off, off+len)` for a test that plays a hostile
    /// client and scribbles over shared memory (feature `testing`).
    #[cfg(any(test, feature = "testing"))]
    pub fn scribble(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len());
        // SAFETY: in bounds (asserted). Racing with the agent is the point:
        // the agent must survive any byte pattern here.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len()) };
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(r) = self.guard.take() {
            guard::unregister(r);
        }
        // SAFETY: unmapping our own mapping; every ring end holds an `Arc`
        // to the pool, so none outlives it.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len()) };
    }
}

/// A producer end that keeps its pool mapped.
pub struct RingTx {
    ring: Producer,
    _pool: std::sync::Arc<Pool>,
}

/// A consumer end that keeps its pool mapped.
pub struct RingRx {
    ring: Consumer,
    _pool: std::sync::Arc<Pool>,
}

impl std::ops::Deref for RingTx {
    type Target = Producer;
    fn deref(&self) -> &Producer {
        &self.ring
    }
}
impl std::ops::DerefMut for RingTx {
    fn deref_mut(&mut self) -> &mut Producer {
        &mut self.ring
    }
}
impl std::ops::Deref for RingRx {
    type Target = Consumer;
    fn deref(&self) -> &Consumer {
        &self.ring
    }
}
impl std::ops::DerefMut for RingRx {
    fn deref_mut(&mut self) -> &mut Consumer {
        &mut self.ring
    }
}

/// Give the heap memory the allocator keeps after frees back to the
/// system (glibc's `malloc_trim`; nothing elsewhere). The agent calls it
/// when it goes idle after clients left: a burst of clients (rings drained
/// into backlogs, parked messages) grows the heap to its peak, and glibc
/// would otherwise keep that peak resident for the agent's whole life.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists (it takes
    // the arena locks itself) and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raise the sleeping word's value and publish it before the caller checks
/// for work once more (the Dekker pattern both sides of a doorbell follow).
pub fn announce_sleep(word: &AtomicU32) {
    word.store(1, Ordering::SeqCst);
    // StoreLoad: the caller's next look at the rings must not be ordered
    // before this store (the other side fences between its ring publish and
    // its load of this word: see `needs_wake`).
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Like [`announce_sleep`], for a client that waits only for room in its
/// submission ring: the agent may leave it asleep until half the ring is
/// free (a sender woken for every few slots freed paid a wake-up per burst).
pub fn announce_sleep_for_room(word: &AtomicU32) {
    word.store(SLEEP_FOR_ROOM, Ordering::SeqCst);
    // StoreLoad, as in `announce_sleep`.
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// The sleeping word's value of a client waiting only for submission room.
pub const SLEEP_FOR_ROOM: u32 = 2;

/// After publishing work, what the other side sleeps for: `None` awake, else
/// the word ([`SLEEP_FOR_ROOM`], or anything else: wake for anything).
pub fn sleeping_for(word: &AtomicU32) -> Option<u32> {
    // SeqCst fence: orders our preceding ring publish before this load, as
    // the sleeper's SeqCst store precedes its final check of the ring.
    std::sync::atomic::fence(Ordering::SeqCst);
    match word.load(Ordering::SeqCst) {
        0 => None,
        v => Some(v),
    }
}

/// Clear a sleeping word.
pub fn announce_awake(word: &AtomicU32) {
    word.store(0, Ordering::SeqCst);
}

/// After publishing work, whether the other side must be woken.
pub fn needs_wake(word: &AtomicU32) -> bool {
    sleeping_for(word).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn small() -> PoolParams {
        PoolParams {
            max_clients: 2,
            endpoints_per_client: 2,
            sub_slots: 64,
            comp_slots: 16,
            recv_slots: 64,
            block_bytes: 1 << 20,
        }
    }

    #[test]
    fn layout_regions_do_not_overlap() {
        let l = Layout::compute(PoolParams::default()).unwrap();
        let c = l.params.max_clients - 1;
        assert!(l.sub_off(0) >= HEADER_BYTES);
        assert!(l.comp_off(0) >= l.sub_off(0) + l.sub.bytes());
        let last_recv_end = l.recv_off(c, l.params.endpoints_per_client - 1) + l.recv.bytes();
        assert!(last_recv_end as u64 <= l.blocks_off);
        assert!(
            l.recv_off(0, l.params.endpoints_per_client - 1) + l.recv.bytes()
                <= l.sub_off(1) - CLIENT_CTL_BYTES
        );
        assert_eq!(l.total % HUGEPAGE as u64, 0);
        assert_eq!(l.sub_off(1) % 128, 0);
    }

    #[test]
    fn bad_params_are_refused() {
        let mut p = small();
        p.sub_slots = 100;
        assert!(matches!(Layout::compute(p), Err(ShmError::Params(_))));
        let mut p = small();
        p.max_clients = 0;
        assert!(Layout::compute(p).is_err());
    }

    #[test]
    fn client_maps_what_the_agent_created() {
        let pool = Arc::new(Pool::create(small(), 7, true).unwrap());
        let fd = pool.fd().try_clone().unwrap();
        let other = Arc::new(Pool::open(fd).unwrap());
        assert_eq!(other.node_id(), 7);
        assert_eq!(other.layout(), pool.layout());
        assert_eq!(other.backing(), pool.backing());
        // A record crosses from one mapping to the other.
        let mut tx = other.sub_producer(1);
        let mut rx = pool.sub_consumer(1, false);
        assert!(tx.try_push(&[b"through the pool"]).unwrap());
        let mut out = Vec::new();
        assert!(rx.try_pop(&mut out).unwrap());
        assert_eq!(out, b"through the pool");
        // Blocks, too.
        let off = pool.layout().blocks_off + 4096;
        pool.write_block(off, b"block").unwrap();
        assert_eq!(other.block_slice(off, 5).unwrap(), b"block");
        assert!(other.block_slice(pool.layout().blocks_off - 1, 2).is_none());
        assert!(other.block_slice(pool.layout().total, 1).is_none());
    }

    #[test]
    fn other_layout_version_is_refused_with_a_clear_error() {
        let pool = Pool::create(small(), 1, false).unwrap();
        pool.scribble(8, &99u32.to_le_bytes());
        let err = Pool::open(pool.fd().try_clone().unwrap()).err().unwrap();
        assert!(matches!(
            err,
            ShmError::Version {
                found: 99,
                expected: LAYOUT_VERSION
            }
        ));
        assert!(err.to_string().contains("version 99"));
        pool.scribble(0, &0u64.to_le_bytes());
        assert!(matches!(
            Pool::open(pool.fd().try_clone().unwrap()),
            Err(ShmError::Magic(0))
        ));
    }

    /// A system call on a pool page that cannot be faulted in fails with
    /// EFAULT (no signal): a guarded pool touches the range, the guard
    /// replaces the page, and the call goes through. (A shmem pool cannot
    /// lose a page to a hole punch, so the page is unmapped by hand here:
    /// MAP_FIXED of a file range beyond the memfd's end, which faults like a
    /// hugetlb page that cannot be allocated.)
    #[test]
    fn a_syscall_on_a_lost_pool_page_is_retried_after_the_guard() {
        let mut pool = Pool::create(small(), 1, false).unwrap();
        pool.guard().unwrap();
        let (boff, _) = pool.block_region();
        let at = boff as usize;
        let page = pool.page_size();
        let beyond = memfd("beyond", false).unwrap();
        // SAFETY: replaces one page of our own pool mapping (a block page
        // nobody uses) with a shared mapping of an empty memfd.
        let p = unsafe {
            libc::mmap(
                pool.base.add(at) as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                beyond.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let (r, w) = nix::unistd::pipe().unwrap();
        let n = pool.write_block_to(w.as_raw_fd(), boff, 100).unwrap();
        assert_eq!(n, 100);
        let mut buf = [1u8; 100];
        nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(buf, [0u8; 100]);
    }

    #[test]
    fn the_pool_cannot_be_shrunk_by_a_client() {
        let pool = Pool::create(small(), 1, false).unwrap();
        let r = nix::unistd::ftruncate(pool.fd(), 4096);
        assert!(r.is_err(), "sealed pool must refuse truncation");
    }
}
