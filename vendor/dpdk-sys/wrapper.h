/* The DPDK headers dpdk-sys binds (bindgen input, and included by the generated
 * static-function wrappers and by shim.c). */
#ifndef WYVERN_DPDK_SYS_WRAPPER_H
#define WYVERN_DPDK_SYS_WRAPPER_H

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_dev.h>
#include <rte_bus_vdev.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* shim.c: what DPDK has only as a macro or a thread-local. */

/** The calling thread's rte_errno (a macro over a per-lcore thread-local in DPDK). */
int wyvern_rte_errno(void);
/** Sets the calling thread's rte_errno (for tests of the accessor). */
void wyvern_rte_errno_set(int value);

/** RTE_ETH_TX_OFFLOAD_MULTI_SEGS (an RTE_BIT64 macro, which bindgen drops): the
 * device sends packets in chained mbufs. */
uint64_t wyvern_tx_offload_multi_segs(void);

/* The C macros themselves, as functions, so Rust tests can check the Rust
 * equivalents in dpdk-sys against them. Not for the data path. */
void *wyvern_macro_pktmbuf_mtod(const struct rte_mbuf *m);
void *wyvern_macro_pktmbuf_mtod_offset(const struct rte_mbuf *m, uint32_t off);
uint32_t wyvern_macro_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t wyvern_macro_pktmbuf_data_len(const struct rte_mbuf *m);
rte_iova_t wyvern_macro_pktmbuf_iova(const struct rte_mbuf *m);

#endif
