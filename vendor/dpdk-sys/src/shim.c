/* Hand-written C for what bindgen cannot wrap: rte_errno (a macro over a
 * thread-local), a flag bindgen drops (RTE_BIT64) and, for tests only, the mbuf accessor macros as functions. */
#include "wrapper.h"

int wyvern_rte_errno(void) { return rte_errno; }

void wyvern_rte_errno_set(int value) { rte_errno = value; }

uint64_t wyvern_tx_offload_multi_segs(void)
{
	return RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
}

void *wyvern_macro_pktmbuf_mtod(const struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, void *);
}

void *wyvern_macro_pktmbuf_mtod_offset(const struct rte_mbuf *m, uint32_t off)
{
	return rte_pktmbuf_mtod_offset(m, void *, off);
}

uint32_t wyvern_macro_pktmbuf_pkt_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_pkt_len(m);
}

uint16_t wyvern_macro_pktmbuf_data_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_data_len(m);
}

rte_iova_t wyvern_macro_pktmbuf_iova(const struct rte_mbuf *m)
{
	return rte_pktmbuf_iova(m);
}
