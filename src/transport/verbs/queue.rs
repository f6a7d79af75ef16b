//! Completion channels and queues, shared receive queues, reliable-connected queue
//! pairs, and posting work to them.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_sys as sys;

use super::device::{set_nonblocking, Context, Gid};
use super::error::{from_ret, last_os, Error, Result};
use super::memory::{Access, Pd};

/// A completion channel: a descriptor that becomes readable when an armed completion
/// queue gets an entry. Destroyed on drop, after its queues (they hold an `Arc`).
pub struct CompChannel {
    ch: NonNull<sys::ibv_comp_channel>,
    ctx: Arc<Context>,
}

// SAFETY: libibverbs objects may be used from any thread; the pointer is owned here.
unsafe impl Send for CompChannel {}
// SAFETY: as above.
unsafe impl Sync for CompChannel {}

impl CompChannel {
    /// A channel on `ctx`, its descriptor non-blocking.
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<CompChannel>> {
        // SAFETY: an open context; the channel is ours until destroyed in Drop.
        let p = unsafe { sys::ibv_create_comp_channel(ctx.as_ptr()) };
        let ch = NonNull::new(p).ok_or_else(|| Error::Create {
            what: "ibv_create_comp_channel",
            device: ctx.name().into(),
            source: last_os(),
        })?;
        let c = CompChannel {
            ch,
            ctx: ctx.clone(),
        };
        set_nonblocking(c.raw_fd()).map_err(|source| Error::Create {
            what: "fcntl(O_NONBLOCK) on the completion channel",
            device: ctx.name().into(),
            source,
        })?;
        Ok(Arc::new(c))
    }

    fn raw_fd(&self) -> RawFd {
        // SAFETY: reads a field of the live channel.
        unsafe { (*self.ch.as_ptr()).fd }
    }

    /// The descriptor, for a poller.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor lives as long as the channel, so as long as `&self`.
        unsafe { BorrowedFd::borrow_raw(self.raw_fd()) }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: every CQ using the channel holds an `Arc` to it and is gone.
        let r = unsafe { sys::ibv_destroy_comp_channel(self.ch.as_ptr()) };
        if r != 0 {
            log::warn!(
                "ibv_destroy_comp_channel on {}: {}",
                self.ctx.name(),
                from_ret(r)
            );
        }
    }
}

/// One work completion, copied out of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wc {
    /// The work request's id.
    pub wr_id: u64,
    /// `IBV_WC_SUCCESS` (0) or an error.
    pub status: u32,
    /// `IBV_WC_SEND`, `IBV_WC_RDMA_READ`, `IBV_WC_RECV`, ... (meaningful on success).
    pub opcode: u32,
    /// Bytes received (receives).
    pub byte_len: u32,
    /// The local queue pair.
    pub qp_num: u32,
    /// The vendor's error code.
    pub vendor_err: u32,
}

/// `IBV_WC_SUCCESS`.
pub const WC_SUCCESS: u32 = sys::ibv_wc_status::IBV_WC_SUCCESS;
/// `IBV_WC_WR_FLUSH_ERR`: flushed because the QP is in the error state.
pub const WC_FLUSH_ERR: u32 = sys::ibv_wc_status::IBV_WC_WR_FLUSH_ERR;
/// `IBV_WC_RNR_RETRY_EXC_ERR`: the peer had no receive posted, retries exhausted.
pub const WC_RNR_RETRY_EXC_ERR: u32 = sys::ibv_wc_status::IBV_WC_RNR_RETRY_EXC_ERR;
/// `IBV_WC_RECV`.
pub const WC_RECV: u32 = sys::ibv_wc_opcode::IBV_WC_RECV;
/// `IBV_WC_SEND`.
pub const WC_SEND: u32 = sys::ibv_wc_opcode::IBV_WC_SEND;
/// `IBV_WC_RDMA_READ`.
pub const WC_RDMA_READ: u32 = sys::ibv_wc_opcode::IBV_WC_RDMA_READ;

impl Wc {
    /// Whether it succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == WC_SUCCESS
    }

    /// The status as libibverbs words it.
    pub fn status_str(&self) -> String {
        status_str(self.status)
    }
}

/// `ibv_wc_status_str`: libibverbs' words for a completion status.
pub fn status_str(status: u32) -> String {
    // SAFETY: takes any number (unknown ones give "unknown") and returns a static
    // string, copied out.
    unsafe { CStr::from_ptr(sys::ibv_wc_status_str(status)) }
        .to_string_lossy()
        .into_owned()
}

/// A completion queue; destroyed on drop, after the queue pairs using it (they hold an
/// `Arc<Cq>`), then its channel.
pub struct Cq {
    cq: NonNull<sys::ibv_cq>,
    channel: Option<Arc<CompChannel>>,
    ctx: Arc<Context>,
}

// SAFETY: libibverbs objects may be used from any thread; the pointer is owned here.
unsafe impl Send for Cq {}
// SAFETY: as above (polling a CQ from two threads at once is serialised by the
// provider's lock; the transport polls from one).
unsafe impl Sync for Cq {}

impl Cq {
    /// A queue of at least `entries` entries, reporting to `channel` when armed.
    pub fn new(
        ctx: &Arc<Context>,
        entries: u32,
        channel: Option<&Arc<CompChannel>>,
    ) -> Result<Arc<Cq>> {
        let ch = channel.map_or(ptr::null_mut(), |c| c.ch.as_ptr());
        // SAFETY: an open context and a live channel (or null); the CQ is ours until
        // destroyed in Drop.
        let p = unsafe { sys::ibv_create_cq(ctx.as_ptr(), entries as i32, ptr::null_mut(), ch, 0) };
        let cq = NonNull::new(p).ok_or_else(|| Error::Create {
            what: "ibv_create_cq",
            device: ctx.name().into(),
            source: last_os(),
        })?;
        Ok(Arc::new(Cq {
            cq,
            channel: channel.cloned(),
            ctx: ctx.clone(),
        }))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_cq {
        self.cq.as_ptr()
    }

    /// Its channel.
    pub fn channel(&self) -> Option<&Arc<CompChannel>> {
        self.channel.as_ref()
    }

    /// Take up to `max` completions (at most 32 per call), appended to `out`.
    pub fn poll(&self, out: &mut Vec<Wc>, max: usize) -> Result<usize> {
        const N: usize = 32;
        let mut wc: [MaybeUninit<sys::ibv_wc>; N] = [const { MaybeUninit::uninit() }; N];
        let want = max.min(N) as i32;
        // SAFETY: a live CQ and room for `want` entries; the provider writes the
        // first `n` it returns.
        let n = unsafe { sys::ibv_poll_cq(self.cq.as_ptr(), want, wc[0].as_mut_ptr()) };
        if n < 0 {
            return Err(Error::Poll(from_ret(n)));
        }
        for w in &wc[..n as usize] {
            // SAFETY: the first `n` entries were written by `ibv_poll_cq`.
            let w = unsafe { w.assume_init_ref() };
            out.push(Wc {
                wr_id: w.wr_id,
                status: w.status,
                opcode: w.opcode,
                byte_len: w.byte_len,
                qp_num: w.qp_num,
                vendor_err: w.vendor_err,
            });
        }
        Ok(n as usize)
    }

    /// Arm the queue: its channel becomes readable at the next completion.
    pub fn arm(&self) -> Result<()> {
        // SAFETY: a live CQ.
        let r = unsafe { sys::ibv_req_notify_cq(self.cq.as_ptr(), 0) };
        if r != 0 {
            return Err(Error::Notify {
                what: "ibv_req_notify_cq",
                source: from_ret(r),
            });
        }
        Ok(())
    }

    /// Take (and acknowledge) the events waiting on the channel; returns how many.
    /// The queue is disarmed by each.
    pub fn take_events(&self) -> Result<u32> {
        let Some(ch) = self.channel.as_ref() else {
            return Ok(0);
        };
        let mut n = 0;
        loop {
            let mut cq = ptr::null_mut();
            let mut cq_ctx = ptr::null_mut();
            // SAFETY: a live, non-blocking channel and two out-parameters.
            let r = unsafe { sys::ibv_get_cq_event(ch.ch.as_ptr(), &mut cq, &mut cq_ctx) };
            if r != 0 {
                let e = last_os();
                if e.kind() == std::io::ErrorKind::WouldBlock || n > 0 {
                    break;
                }
                return Err(Error::Notify {
                    what: "ibv_get_cq_event",
                    source: e,
                });
            }
            // SAFETY: the event is for a CQ of this channel (this one: the transport
            // makes one CQ per channel); acknowledged once.
            unsafe { sys::ibv_ack_cq_events(cq, 1) };
            n += 1;
        }
        Ok(n)
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: queue pairs using it hold an `Arc<Cq>` and are gone; every channel
        // event was acknowledged when taken.
        let r = unsafe { sys::ibv_destroy_cq(self.cq.as_ptr()) };
        if r != 0 {
            log::warn!("ibv_destroy_cq on {}: {}", self.ctx.name(), from_ret(r));
        }
    }
}

/// A scatter/gather entry: registered memory a work request reads or writes.
#[derive(Clone, Copy, Debug)]
pub struct Sge {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// The region's local key.
    pub lkey: u32,
}

/// A shared receive queue: receive buffers every queue pair made with it takes from.
/// Destroyed on drop, after those queue pairs.
pub struct Srq {
    srq: NonNull<sys::ibv_srq>,
    pd: Arc<Pd>,
}

// SAFETY: libibverbs objects may be used from any thread; the pointer is owned here.
unsafe impl Send for Srq {}
// SAFETY: as above.
unsafe impl Sync for Srq {}

impl Srq {
    /// A queue of `max_wr` receives of one entry each.
    pub fn new(pd: &Arc<Pd>, max_wr: u32) -> Result<Arc<Srq>> {
        let mut attr = sys::ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: sys::ibv_srq_attr {
                max_wr,
                max_sge: 1,
                srq_limit: 0,
            },
        };
        // SAFETY: a live PD and a filled attribute struct.
        let p = unsafe { sys::ibv_create_srq(pd.as_ptr(), &mut attr) };
        let srq = NonNull::new(p).ok_or_else(|| Error::Create {
            what: "ibv_create_srq",
            device: pd.context().name().into(),
            source: last_os(),
        })?;
        Ok(Arc::new(Srq {
            srq,
            pd: pd.clone(),
        }))
    }

    /// Post receives, one buffer each, as one linked list.
    ///
    /// # Safety
    /// Each buffer must lie in a registered region with local write, and stay valid and
    /// unread until its completion is polled (or the queue is destroyed).
    pub unsafe fn post_recv(&self, bufs: &[RecvWr]) -> Result<()> {
        if bufs.is_empty() {
            return Ok(());
        }
        let mut sges: Vec<sys::ibv_sge> = bufs
            .iter()
            .map(|r| sys::ibv_sge {
                addr: r.buf.addr,
                length: r.buf.len,
                lkey: r.buf.lkey,
            })
            .collect();
        let mut wrs: Vec<sys::ibv_recv_wr> = Vec::with_capacity(bufs.len());
        for (i, r) in bufs.iter().enumerate() {
            wrs.push(sys::ibv_recv_wr {
                wr_id: r.wr_id,
                next: ptr::null_mut(),
                sg_list: &mut sges[i],
                num_sge: 1,
            });
        }
        let base = wrs.as_mut_ptr();
        for i in 0..wrs.len() - 1 {
            // SAFETY: `i + 1` is inside `wrs`, which is not resized from here on.
            wrs[i].next = unsafe { base.add(i + 1) };
        }
        let mut bad = ptr::null_mut();
        // SAFETY: a live SRQ; the list and its entries live until the call returns
        // (the provider copies them); the caller vouches for the buffers.
        let r = unsafe { sys::ibv_post_srq_recv(self.srq.as_ptr(), base, &mut bad) };
        if r != 0 {
            return Err(Error::Post {
                what: "ibv_post_srq_recv",
                qpn: 0,
                source: from_ret(r),
            });
        }
        Ok(())
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        // SAFETY: queue pairs using it hold an `Arc<Srq>` and are gone.
        let r = unsafe { sys::ibv_destroy_srq(self.srq.as_ptr()) };
        if r != 0 {
            log::warn!(
                "ibv_destroy_srq on {}: {}",
                self.pd.context().name(),
                from_ret(r)
            );
        }
    }
}

/// Sizes of a queue pair.
#[derive(Clone, Copy, Debug)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth (ignored with a shared receive queue).
    pub max_recv_wr: u32,
    /// Largest inline send asked for (the device may grant more, or refuse).
    pub max_inline: u32,
}

/// What one side tells the other to connect a queue pair (exchanged out of band).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpEndpoint {
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number (24 bits).
    pub psn: u32,
    /// Local identifier (InfiniBand).
    pub lid: u16,
    /// GID (RoCE, or InfiniBand across subnets); `None`: address by LID alone.
    pub gid: Option<Gid>,
}

/// The kind of a work request on the send queue.
#[derive(Clone, Copy, Debug)]
pub enum SendOp {
    /// A two-sided send of the local buffer.
    Send {
        /// Copy the bytes into the work request (the buffer is free at return).
        inline: bool,
    },
    /// Read `len` bytes of the peer's memory into the local buffer.
    Read {
        /// The peer's address.
        remote_addr: u64,
        /// The peer region's remote key.
        rkey: u32,
    },
}

/// One receive for [`Srq::post_recv`]: a buffer and the id its completion returns.
#[derive(Clone, Copy, Debug)]
pub struct RecvWr {
    /// Returned in its completion.
    pub wr_id: u64,
    /// The buffer.
    pub buf: Sge,
}

/// One work request for [`Qp::post_send`].
#[derive(Clone, Copy, Debug)]
pub struct SendWr {
    /// Returned in its completion.
    pub wr_id: u64,
    /// Send or read.
    pub op: SendOp,
    /// The local buffer.
    pub local: Sge,
    /// Ask for a completion (unsignalled requests complete silently, known done when
    /// a later signalled one on the same queue completes).
    pub signaled: bool,
}

/// `IBV_QPS_SQE`: send queue error (a send failed; UC/UD queue pairs).
pub const QPS_SQE: u32 = sys::ibv_qp_state::IBV_QPS_SQE;
/// `IBV_QPS_ERR`: the error state (nothing is sent or received; work is flushed).
pub const QPS_ERR: u32 = sys::ibv_qp_state::IBV_QPS_ERR;

/// The name of a QP state.
pub fn qp_state_name(s: u32) -> &'static str {
    match s {
        0 => "RESET",
        1 => "INIT",
        2 => "RTR",
        3 => "RTS",
        4 => "SQD",
        5 => "SQE",
        6 => "ERR",
        _ => "UNKNOWN",
    }
}

/// A reliable-connected queue pair; destroyed on drop, before its PD, CQ and SRQ (it
/// holds an `Arc` of each).
pub struct Qp {
    qp: NonNull<sys::ibv_qp>,
    pd: Arc<Pd>,
    _cq: Arc<Cq>,
    _srq: Option<Arc<Srq>>,
    max_inline: u32,
}

// SAFETY: libibverbs objects may be used from any thread; the pointer is owned here.
unsafe impl Send for Qp {}
// SAFETY: as above.
unsafe impl Sync for Qp {}

impl Qp {
    /// An RC queue pair in the RESET state, sending and receiving through `cq`,
    /// receiving from `srq` when given.
    pub fn new_rc(pd: &Arc<Pd>, cq: &Arc<Cq>, srq: Option<&Arc<Srq>>, caps: QpCaps) -> Result<Qp> {
        let mut attr = sys::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: cq.as_ptr(),
            recv_cq: cq.as_ptr(),
            srq: srq.map_or(ptr::null_mut(), |s| s.srq.as_ptr()),
            cap: sys::ibv_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: if srq.is_some() { 0 } else { caps.max_recv_wr },
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: caps.max_inline,
            },
            qp_type: sys::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: a live PD, CQ and SRQ, and a filled attribute struct; on success
        // the provider writes the granted caps back into `attr.cap`.
        let p = unsafe { sys::ibv_create_qp(pd.as_ptr(), &mut attr) };
        let qp = NonNull::new(p).ok_or_else(|| Error::Create {
            what: "ibv_create_qp (RC)",
            device: pd.context().name().into(),
            source: last_os(),
        })?;
        Ok(Qp {
            qp,
            pd: pd.clone(),
            _cq: cq.clone(),
            _srq: srq.cloned(),
            max_inline: attr.cap.max_inline_data,
        })
    }

    /// Its number.
    pub fn qpn(&self) -> u32 {
        // SAFETY: reads a field of the live QP.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    /// The largest send that may go inline.
    pub fn max_inline(&self) -> u32 {
        self.max_inline
    }

    fn modify(&self, attr: &mut sys::ibv_qp_attr, mask: u32, state: &'static str) -> Result<()> {
        // SAFETY: a live QP and an attribute struct whose masked fields are set.
        let r = unsafe { sys::ibv_modify_qp(self.qp.as_ptr(), attr, mask as i32) };
        if r != 0 {
            return Err(Error::Modify {
                qpn: self.qpn(),
                state,
                source: from_ret(r),
            });
        }
        Ok(())
    }

    fn zeroed_attr() -> sys::ibv_qp_attr {
        // SAFETY: a plain C struct of integers (and one nested struct of integers and
        // a byte array); all-zero is valid and the documented way to start one.
        unsafe { MaybeUninit::<sys::ibv_qp_attr>::zeroed().assume_init() }
    }

    /// RESET → INIT on `port`, peers allowed `access` to this QP's regions.
    pub fn to_init(&self, port: u8, access: Access) -> Result<()> {
        use sys::ibv_qp_attr_mask as m;
        let mut a = Self::zeroed_attr();
        a.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = port;
        a.qp_access_flags = access.bits();
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_PKEY_INDEX.0
            | m::IBV_QP_PORT.0
            | m::IBV_QP_ACCESS_FLAGS.0;
        self.modify(&mut a, mask, "INIT")
    }

    /// INIT → RTR: ready to receive from `remote`. `mtu` is an `IBV_MTU_*`;
    /// `sgid_index` the local GID index when the path is global (RoCE);
    /// `max_dest_rd_atomic` the RDMA READs the peer may have outstanding here.
    pub fn to_rtr(
        &self,
        port: u8,
        remote: &QpEndpoint,
        mtu: u32,
        sgid_index: Option<u32>,
        max_dest_rd_atomic: u8,
    ) -> Result<()> {
        use sys::ibv_qp_attr_mask as m;
        let mut a = Self::zeroed_attr();
        a.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = mtu;
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = max_dest_rd_atomic.max(1);
        a.min_rnr_timer = 12; // 0.64 ms
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = port;
        if let (Some(gid), Some(idx)) = (remote.gid, sgid_index) {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid = sys::ibv_gid { raw: gid.0 };
            a.ah_attr.grh.sgid_index = idx as u8;
            a.ah_attr.grh.hop_limit = 64;
            a.ah_attr.grh.flow_label = 0;
            a.ah_attr.grh.traffic_class = 0;
        }
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_AV.0
            | m::IBV_QP_PATH_MTU.0
            | m::IBV_QP_DEST_QPN.0
            | m::IBV_QP_RQ_PSN.0
            | m::IBV_QP_MAX_DEST_RD_ATOMIC.0
            | m::IBV_QP_MIN_RNR_TIMER.0;
        self.modify(&mut a, mask, "RTR")
    }

    /// RTR → RTS: ready to send, first PSN `psn`, `max_rd_atomic` RDMA READs
    /// outstanding at most. A request unanswered after 7 retries of ~67 ms, or refused
    /// for want of a receive 6 times, fails (the link then goes down: nothing hangs).
    pub fn to_rts(&self, psn: u32, max_rd_atomic: u8) -> Result<()> {
        use sys::ibv_qp_attr_mask as m;
        let mut a = Self::zeroed_attr();
        a.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
        a.sq_psn = psn;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 6;
        a.max_rd_atomic = max_rd_atomic.max(1);
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_SQ_PSN.0
            | m::IBV_QP_TIMEOUT.0
            | m::IBV_QP_RETRY_CNT.0
            | m::IBV_QP_RNR_RETRY.0
            | m::IBV_QP_MAX_QP_RD_ATOMIC.0;
        self.modify(&mut a, mask, "RTS")
    }

    /// Any state → ERR: outstanding work is flushed with `IBV_WC_WR_FLUSH_ERR`, the
    /// peer's requests are no longer served.
    pub fn to_error(&self) -> Result<()> {
        let mut a = Self::zeroed_attr();
        a.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, sys::ibv_qp_attr_mask::IBV_QP_STATE.0, "ERR")
    }

    /// The current state (`IBV_QPS_*`; see [`qp_state_name`]).
    pub fn state(&self) -> Result<u32> {
        let mut a = Self::zeroed_attr();
        // SAFETY: as `zeroed_attr`: a plain C struct, all-zero is valid.
        let mut init = unsafe { MaybeUninit::<sys::ibv_qp_init_attr>::zeroed().assume_init() };
        // SAFETY: a live QP and two out-parameters.
        let r = unsafe {
            sys::ibv_query_qp(
                self.qp.as_ptr(),
                &mut a,
                sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                &mut init,
            )
        };
        if r != 0 {
            return Err(Error::Modify {
                qpn: self.qpn(),
                state: "(query)",
                source: from_ret(r),
            });
        }
        Ok(a.qp_state)
    }

    /// Post work requests as one linked list with one `ibv_post_send`.
    ///
    /// # Safety
    /// Each local buffer must lie in a region registered in this QP's PD (with local
    /// write for reads) and, unless it is an inline send, stay valid and untouched
    /// until its completion (or a later signalled one's) is polled; a read's remote
    /// range must be one the peer agreed to expose.
    pub unsafe fn post_send(&self, wrs: &[SendWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut sges: Vec<sys::ibv_sge> = wrs
            .iter()
            .map(|w| sys::ibv_sge {
                addr: w.local.addr,
                length: w.local.len,
                lkey: w.local.lkey,
            })
            .collect();
        let mut list: Vec<sys::ibv_send_wr> = Vec::with_capacity(wrs.len());
        for (i, w) in wrs.iter().enumerate() {
            // SAFETY: a plain C struct (integers, pointers and unions of them); all-zero
            // is valid and the conventional starting point.
            let mut s: sys::ibv_send_wr = unsafe { MaybeUninit::zeroed().assume_init() };
            s.wr_id = w.wr_id;
            s.sg_list = &mut sges[i];
            s.num_sge = 1;
            let mut flags = 0;
            if w.signaled {
                flags |= sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            match w.op {
                SendOp::Send { inline } => {
                    s.opcode = sys::ibv_wr_opcode::IBV_WR_SEND;
                    if inline {
                        flags |= sys::ibv_send_flags::IBV_SEND_INLINE.0;
                    }
                }
                SendOp::Read { remote_addr, rkey } => {
                    s.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_READ;
                    s.wr.rdma = sys::rdma_t { remote_addr, rkey };
                }
            }
            s.send_flags = flags;
            list.push(s);
        }
        let base = list.as_mut_ptr();
        for i in 0..list.len() - 1 {
            // SAFETY: `i + 1` is inside `list`, which is not resized from here on.
            list[i].next = unsafe { base.add(i + 1) };
        }
        let mut bad = ptr::null_mut();
        // SAFETY: a live QP; the list and scatter entries live until the call returns
        // (the provider copies them, and the inline bytes); the caller vouches for the
        // buffers.
        let r = unsafe { sys::ibv_post_send(self.qp.as_ptr(), base, &mut bad) };
        if r != 0 {
            return Err(Error::Post {
                what: "ibv_post_send",
                qpn: self.qpn(),
                source: from_ret(r),
            });
        }
        Ok(())
    }

    /// The protection domain.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        let qpn = self.qpn();
        // SAFETY: destroyed once; the device stops using its buffers, and its PD, CQ
        // and SRQ (held by `Arc`) outlive this call.
        let r = unsafe { sys::ibv_destroy_qp(self.qp.as_ptr()) };
        if r != 0 {
            log::warn!("ibv_destroy_qp({qpn}): {}", from_ret(r));
        }
    }
}
