//! The safe layer over DPDK (`--features dpdk`): the only wyvern code that touches the
//! `dpdk-sys` FFI. The DPDK transport is built on it; nothing else sees DPDK.
//!
//! # Quick start
//! ```no_run
//! use wyvern::transport::dpdk::{Eal, PktPool, Port, PortConfig};
//! let args: Vec<String> = ["--no-pci", "--no-huge", "-m", "256", "--file-prefix=demo",
//!                          "--vdev=net_ring0", "-l", "0"].map(String::from).to_vec();
//! let eal = Eal::init(&args)?;
//! let pool = PktPool::new(&eal, "demo_pool", 1023, 0, PktPool::DEFAULT_DATA_ROOM)?;
//! let mut port = Port::open(&eal, "net_ring0", &PortConfig::default(), &pool)?;
//! let mut out = Vec::new();
//! pool.alloc_bulk(&mut out, 4)?;
//! for m in &mut out {
//!     m.append(64).expect("room for 64 B").fill(0xab);
//! }
//! let sent = port.tx_burst(0, &mut out);     // net_ring loops tx back to rx
//! let mut rx = Vec::new();
//! let got = port.rx_burst(0, &mut rx, 32);
//! assert_eq!((sent, got), (4, 4));
//! # Ok::<(), wyvern::transport::dpdk::Error>(())
//! ```
//!
//! # Pieces
//! - [`Eal`]: starts DPDK once per process; every other object is made from an `&Eal`.
//! - [`PktPool`]: a pool of packet buffers, freed on drop.
//! - [`Mbuf`]: one owned packet buffer, freed on drop; bulk alloc/free.
//! - [`DpdkIo`]: the `dpdk` transport's device (a [`PacketIo`](crate::transport::datagram::PacketIo)):
//!   datagram-layer packets in Ethernet frames of EtherType 0x88B5 on one port.
//! - [`Rails`]: several ports to the same peers as one `PacketIo` (multi-rail): large
//!   packets striped over them, small ones on a home rail per peer, a failed rail's
//!   traffic moved to the others.
//! - [`Port`]: an ethdev port, configured and started on open, stopped and closed on
//!   drop; `rx_burst`/`tx_burst` move owned [`Mbuf`]s in and out.
//!
//! # Lifetimes and threads
//! Mbufs borrow their pool and a port borrows its receive pool, so no buffer outlives
//! the memory it lives in. Pools and mbufs are `Send` (pools also `Sync`); a port is
//! `Send` but not `Sync`, and bursting takes `&mut Port`: one thread polls a port.
//!
//! # Needs
//! The system's DPDK >= 22.11 (Debian: `libdpdk-dev`) and libclang to build; tests and
//! development use only virtual devices with `--no-pci` (`net_ring`, `net_null`,
//! `net_af_packet` on a veth pair).
//!
//! # Not supported (yet)
//! Multi-segment (scatter) receive, offloads (checksum, TSO, RSS configuration), flow
//! rules, external buffers in the public safe API (the transport attaches pool memory to
//! mbufs inside `DpdkIo`, see `extbuf.rs`), secondary processes.

mod eal;
mod error;
mod extbuf;
mod io;
mod mbuf;
mod mempool;
mod port;
mod rails;

pub use eal::Eal;
pub use error::{Error, Result, RteError};
pub use io::{
    classify, write_header, DpdkIo, DpdkIoConfig, DpdkIoStats, FrameKind, RxFrame, BROADCAST,
    ETHERTYPE, ETH_HEADER, EXTBUF_MIN, TX_BURST,
};
pub use mbuf::Mbuf;
pub use mempool::PktPool;
pub use port::{Link, MacAddr, Port, PortConfig, PortStats};
pub use rails::{
    port_list, Rails, DOWN_AFTER, DOWN_COUNT, MAX_RAILS, PROBE_EVERY, STALE_AFTER, STRIPE_RUN,
    UP_AFTER,
};
