//! Raw FFI bindings to the system's DPDK (>= 22.11), for wyvern's `dpdk` transport.
//!
//! Everything here is `unsafe` and follows DPDK's C contracts; the safe layer is
//! `wyvern::transport::dpdk`, and no other wyvern module uses this crate.
//!
//! # What is in it
//! - Bindings generated at build time by bindgen from the installed headers, over a tight
//!   allowlist (see `build.rs`): EAL start-up, ethdev control and bursts, mempools, mbufs.
//! - DPDK's `static inline` functions (`rte_eth_rx_burst`, `rte_eth_tx_burst`,
//!   `rte_pktmbuf_alloc`, `rte_pktmbuf_alloc_bulk`, `rte_pktmbuf_append`, …) are called
//!   through small C wrappers that bindgen writes (`wrap_static_fns`) and `build.rs`
//!   compiles; they cost 1–2 ns a call, nothing at burst size.
//! - [`rte_errno`]: DPDK's error number, a macro over a thread-local in C.
//! - Rust versions of the mbuf macros ([`rte_pktmbuf_mtod`], [`rte_pktmbuf_mtod_offset`],
//!   [`rte_pktmbuf_pkt_len`], [`rte_pktmbuf_data_len`], [`rte_pktmbuf_iova`]); the tests
//!   check each against the C macro (compiled into `src/shim.c` as `wyvern_macro_*`).
//!
//! # What it needs
//! DPDK >= 22.11 with its pkg-config file (Debian: `libdpdk-dev`) and libclang (Debian:
//! `libclang-dev`) at build time; the shared DPDK libraries at run time (the poll-mode
//! drivers are loaded from DPDK's PMD directory). The C is built with `-march=x86-64-v2`
//! (override: `WYVERN_DPDK_MARCH`), never `native`.
//!
//! # Constants
//! Enums are plain integer constants, never Rust enums: a value DPDK returns that the
//! headers did not know would be undefined behaviour in a Rust enum.

#![warn(missing_docs)]

mod bindings {
    #![allow(
        missing_docs,
        non_upper_case_globals,
        non_camel_case_types,
        non_snake_case,
        dead_code,
        unnecessary_transmutes,
        clippy::all,
        clippy::pedantic,
        clippy::undocumented_unsafe_blocks,
        clippy::missing_safety_doc,
        clippy::ptr_offset_with_cast,
        unsafe_op_in_unsafe_fn
    )]
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use bindings::*;

/// `RTE_BAD_IOVA` (`((rte_iova_t)-1)` in C, a cast bindgen cannot evaluate).
pub const RTE_BAD_IOVA: rte_iova_t = rte_iova_t::MAX;

/// The calling thread's `rte_errno`: the error number the last failing DPDK call on this
/// thread left (DPDK's `rte_errno` macro, read through the C shim).
pub fn rte_errno() -> i32 {
    // SAFETY: wyvern_rte_errno only reads a thread-local int of the calling thread;
    // it needs no EAL and touches nothing else.
    unsafe { wyvern_rte_errno() }
}

/// `rte_pktmbuf_mtod(m, void *)`: the start of the data in the mbuf's first segment,
/// `buf_addr + data_off`.
///
/// # Safety
/// `m` must point to a valid, initialised `rte_mbuf`.
#[inline]
pub unsafe fn rte_pktmbuf_mtod(m: *const rte_mbuf) -> *mut u8 {
    // SAFETY: the caller guarantees `m` is a valid mbuf (both field reads are in bounds);
    // `buf_addr + data_off` stays inside the mbuf's buffer by DPDK's invariant
    // data_off <= buf_len, so `add` does not leave the allocation.
    unsafe { ((*m).buf_addr as *mut u8).add(usize::from((*m).data_off)) }
}

/// `rte_pktmbuf_mtod_offset(m, void *, off)`: `off` bytes into the data of the mbuf's
/// first segment. Computed with wrapping arithmetic, like the C macro it need not stay
/// inside the buffer; dereferencing it is the caller's business.
///
/// # Safety
/// `m` must point to a valid, initialised `rte_mbuf`.
#[inline]
pub unsafe fn rte_pktmbuf_mtod_offset(m: *const rte_mbuf, off: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `m` is a valid mbuf.
    unsafe { rte_pktmbuf_mtod(m).wrapping_add(off) }
}

/// `rte_pktmbuf_pkt_len(m)`: the length of the whole packet (all segments).
///
/// # Safety
/// `m` must point to a valid, initialised `rte_mbuf`.
#[inline]
pub unsafe fn rte_pktmbuf_pkt_len(m: *const rte_mbuf) -> u32 {
    // SAFETY: the caller guarantees `m` is a valid mbuf.
    unsafe { (*m).pkt_len }
}

/// `rte_pktmbuf_data_len(m)`: the length of the data in this segment.
///
/// # Safety
/// `m` must point to a valid, initialised `rte_mbuf`.
#[inline]
pub unsafe fn rte_pktmbuf_data_len(m: *const rte_mbuf) -> u16 {
    // SAFETY: the caller guarantees `m` is a valid mbuf.
    unsafe { (*m).data_len }
}

/// `rte_pktmbuf_iova(m)`: the IO address of the start of the data, `buf_iova + data_off`.
///
/// # Safety
/// `m` must point to a valid, initialised `rte_mbuf`.
#[inline]
pub unsafe fn rte_pktmbuf_iova(m: *const rte_mbuf) -> rte_iova_t {
    // SAFETY: the caller guarantees `m` is a valid mbuf.
    unsafe { (*m).buf_iova.wrapping_add(rte_iova_t::from((*m).data_off)) }
}

#[cfg(test)]
mod tests;
