/* Hand-written C for what bindgen cannot wrap: rte_errno (a macro over a
 * thread-local) and, for tests only, the mbuf accessor macros as functions. */
#include "wrapper.h"

int wyvern_rte_errno(void) { return rte_errno; }

void wyvern_rte_errno_set(int value) { rte_errno = value; }

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
