//! The verbs (RDMA) transport and the safe layer over rdma-core it is built on
//! (`--features verbs`): the only wyvern code that touches the `rdma-sys` FFI.
//!
//! # Quick start (the safe layer)
//! ```no_run
//! use wyvern::transport::verbs::{Access, Context, Cq, Pd, Qp, QpCaps, RegBuf};
//! let ctx = Context::open(Some("rxe0:1"))?;         // or None: the first active port
//! let pd = Pd::new(&ctx)?;
//! let buf = RegBuf::new(&pd, 1 << 20, Access::REMOTE_READ)?;
//! let cq = Cq::new(&ctx, 256, None)?;
//! let qp = Qp::new_rc(&pd, &cq, None, QpCaps { max_send_wr: 64, max_recv_wr: 64, max_inline: 64 })?;
//! qp.to_init(ctx.port(), Access::REMOTE_READ)?;
//! // ... exchange QpEndpoint with the peer out of band, then to_rtr / to_rts, post_send
//! # Ok::<(), wyvern::transport::verbs::Error>(())
//! ```
//!
//! # Pieces
//! - [`Context`]: an open device and the port in use (`NAME`, `NAME:PORT`, or the first
//!   active port), its GID table ([`Context::choose_gid`]: the RoCE v2 IPv4-mapped
//!   entry carrying the node's address, else the first such, or an override;
//!   [`pick_gid`] is the rule), asynchronous events.
//! - [`Pd`], [`Mr`] (memory the caller owns, e.g. the agent's pool), [`RegBuf`] (memory
//!   this layer owns: send/receive slots, bounce buffers).
//! - [`CompChannel`], [`Cq`]: completions, polled in batches, or armed to wake a
//!   sleeping thread through the channel's descriptor.
//! - [`Srq`]: a shared receive queue; [`Qp`]: an RC queue pair (RESET → INIT → RTR →
//!   RTS, or ERR), posting linked lists of sends and RDMA READs.
//! - [`VerbsTransport`]: the agent's `verbs` transport, on top of them, on one device
//!   or several ("rails": a QP per peer and device, rendezvous READs striped over them).
//!
//! # Lifetimes and threads
//! Every object holds an `Arc` of what it was made from (a QP holds its PD, CQ and
//! SRQ; a CQ its channel and context; ...), so they are freed in the right order
//! whatever order the owner drops them in. libibverbs is thread-safe, so the wrappers
//! are `Send` and `Sync`; the transport drives them from its one thread. Posting is an
//! `unsafe fn`: the buffers must stay valid until their completion.
//!
//! # Needs
//! rdma-core's libibverbs and librdmacm with headers (Debian: `libibverbs-dev`,
//! `librdmacm-dev`) and libclang to build; an RDMA device to run (Soft-RoCE `rxe`
//! works: see `scripts/rxe-vm.sh`), and a locked-memory limit (`ulimit -l`) above the
//! agent's pool size.
//!
//! # Not supported (yet)
//! Several QPs per peer on one device (one per agent core), XRC/DC, on-demand
//! paging, device memory, RDMA CM (connection set-up is over the agents' own
//! TCP bootstrap connection).

mod device;
mod error;
#[cfg(feature = "testing")]
pub mod forge;
mod memory;
mod queue;
mod transport;

pub use device::{
    device_names, gids_can_reach, inventory, mtu_bytes, netdev_mtu, pick_gid, port_state_name,
    roce_mtu_shortfall, AsyncEvent, Context, DeviceCaps, DeviceReport, Gid, GidCandidate,
    GidChoice, GidEntry, GidReport, PortInfo, PortReport, LINK_LAYER_ETHERNET,
    LINK_LAYER_INFINIBAND, PORT_ACTIVE, ROCE_HEADERS,
};
pub use error::{Error, Result};
pub use memory::{Access, Mr, Pd, RegBuf};
pub use queue::{
    qp_state_name, status_str, CompChannel, Cq, Qp, QpCaps, QpEndpoint, RecvWr, SendOp, SendWr,
    Sge, Srq, Wc, QPS_ERR, QPS_SQE, WC_FLUSH_ERR, WC_RDMA_READ, WC_RECV, WC_RNR_RETRY_EXC_ERR,
    WC_SEND, WC_SUCCESS,
};
pub use transport::{RailCounters, VerbsConfig, VerbsCounters, VerbsTransport};
