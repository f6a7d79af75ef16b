//! One test per wrapper we expose, on the real DPDK with virtual devices only.
//!
//! The EAL can start once per process: every test takes [`eal`], which starts it on first
//! use (`--no-pci --no-huge -m 256`, a file prefix of its own, `net_ring0` and
//! `net_null0`) and then holds a lock, so the tests of this binary use DPDK one at a time.

use super::*;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

static EAL: OnceLock<()> = OnceLock::new();
static LOCK: Mutex<()> = Mutex::new(());
static POOL: OnceLock<PoolPtr> = OnceLock::new();

/// The test pool's pointer, shareable across test threads.
struct PoolPtr(*mut rte_mempool);
// SAFETY: a pktmbuf pool (ops "ring_mp_mc") may be used from any thread; the tests that
// touch it hold LOCK anyway.
unsafe impl Send for PoolPtr {}
// SAFETY: as above.
unsafe impl Sync for PoolPtr {}

fn eal() -> MutexGuard<'static, ()> {
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    EAL.get_or_init(|| {
        let args = [
            "dpdk-sys-test".to_owned(),
            "--no-pci".to_owned(),
            "--no-huge".to_owned(),
            "--no-shconf".to_owned(),
            "-m".to_owned(),
            "256".to_owned(),
            "--no-telemetry".to_owned(),
            "-l".to_owned(),
            "0".to_owned(),
            format!("--file-prefix=wyvern-sys-test-{}", std::process::id()),
            "--vdev=net_ring0".to_owned(),
            "--vdev=net_null0".to_owned(),
            "--log-level=lib.eal:warning".to_owned(),
        ];
        // The EAL may keep pointers into argv: leak it (once per process).
        let argv: Vec<*mut c_char> = args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap().into_raw())
            .collect();
        let argv = Box::leak(argv.into_boxed_slice());
        // SAFETY: argv holds argc valid NUL-terminated strings that live forever; this
        // is the only rte_eal_init call in the process (OnceLock).
        let rc = unsafe { rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        assert!(rc >= 0, "rte_eal_init failed: {}", strerror(rte_errno()));
    });
    guard
}

fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a NUL-terminated string (static, or a thread-local
    // buffer for unknown codes) that we copy at once.
    unsafe { CStr::from_ptr(rte_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

fn pool() -> *mut rte_mempool {
    POOL.get_or_init(|| {
        let name = CString::new("sys_test_pool").unwrap();
        // SAFETY: EAL is up (callers hold eal()); the name is a valid C string.
        let mp = unsafe {
            rte_pktmbuf_pool_create(
                name.as_ptr(),
                1023,
                0,
                0,
                RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                SOCKET_ID_ANY,
            )
        };
        assert!(!mp.is_null(), "pool create: {}", strerror(rte_errno()));
        PoolPtr(mp)
    })
    .0
}

fn avail(mp: *mut rte_mempool) -> u32 {
    // SAFETY: mp is the live test pool.
    unsafe { rte_mempool_avail_count(mp) }
}

fn alloc() -> *mut rte_mbuf {
    // SAFETY: the pool is live.
    let m = unsafe { rte_pktmbuf_alloc(pool()) };
    assert!(!m.is_null());
    m
}

fn port_by_name(name: &str) -> u16 {
    let c = CString::new(name).unwrap();
    let mut id = u16::MAX;
    // SAFETY: c is a valid C string, id a valid out-pointer.
    let rc = unsafe { rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    assert_eq!(rc, 0, "no port {name}");
    id
}

/// Configures one rx and one tx queue with 256 descriptors and starts the port.
fn start_port(port: u16) {
    let conf = rte_eth_conf::default();
    // SAFETY: port is valid; conf and the pool outlive the calls; NULL queue configs
    // mean the driver's defaults.
    unsafe {
        assert_eq!(rte_eth_dev_configure(port, 1, 1, &conf), 0);
        assert_eq!(
            rte_eth_rx_queue_setup(port, 0, 256, SOCKET_ID_ANY as u32, ptr::null(), pool()),
            0
        );
        assert_eq!(
            rte_eth_tx_queue_setup(port, 0, 256, SOCKET_ID_ANY as u32, ptr::null()),
            0
        );
        assert_eq!(rte_eth_dev_start(port), 0);
    }
}

#[test]
fn errno_accessor_reads_what_c_wrote() {
    let _g = eal();
    for v in [0, libc_einval(), 1234] {
        // SAFETY: writes this thread's rte_errno only.
        unsafe { wyvern_rte_errno_set(v) };
        assert_eq!(rte_errno(), v);
    }
    // A failing call sets it: an unknown port name is ENODEV (or EINVAL) in 22.11.
    let c = CString::new("no_such_port").unwrap();
    let mut id = 0u16;
    // SAFETY: valid C string and out-pointer.
    let rc = unsafe { rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    assert!(rc < 0);
    assert!(strerror(libc_einval()).contains("Invalid argument"));
}

fn libc_einval() -> i32 {
    22
}

#[test]
fn lcore_functions() {
    let _g = eal();
    // SAFETY: plain queries after EAL init.
    unsafe {
        assert_eq!(rte_lcore_count(), 1, "-l 0 gives one lcore");
        assert_eq!(rte_get_main_lcore(), 0);
        // This test thread is not the EAL main thread unless it happened to start the EAL.
        let id = rte_lcore_id();
        assert!(id == 0 || id == LCORE_ID_ANY, "lcore id {id}");
        assert!(rte_socket_id() < 64 || rte_socket_id() == SOCKET_ID_ANY as u32);
    }
}

#[test]
fn rust_macro_equivalents_match_the_c_macros() {
    let _g = eal();
    let m = alloc();
    // SAFETY: m is a valid mbuf of the test pool; append/prepend/adj keep it valid.
    unsafe {
        for step in 0..4 {
            match step {
                0 => {}
                1 => assert!(!rte_pktmbuf_append(m, 100).is_null()),
                2 => assert!(!rte_pktmbuf_prepend(m, 14).is_null()),
                _ => assert!(!rte_pktmbuf_adj(m, 7).is_null()),
            }
            assert_eq!(
                rte_pktmbuf_mtod(m) as *mut c_void,
                wyvern_macro_pktmbuf_mtod(m)
            );
            for off in [0usize, 1, 13, 99] {
                assert_eq!(
                    rte_pktmbuf_mtod_offset(m, off) as *mut c_void,
                    wyvern_macro_pktmbuf_mtod_offset(m, off as u32)
                );
            }
            assert_eq!(rte_pktmbuf_pkt_len(m), wyvern_macro_pktmbuf_pkt_len(m));
            assert_eq!(rte_pktmbuf_data_len(m), wyvern_macro_pktmbuf_data_len(m));
            assert_eq!(rte_pktmbuf_iova(m), wyvern_macro_pktmbuf_iova(m));
        }
        assert_eq!(rte_pktmbuf_pkt_len(m), 107);
        rte_pktmbuf_free(m);
    }
}

#[test]
fn pktmbuf_alloc_and_free() {
    let _g = eal();
    let mp = pool();
    let before = avail(mp);
    let m = alloc();
    assert_eq!(avail(mp), before - 1);
    // SAFETY: m is a fresh mbuf from mp.
    unsafe {
        assert_eq!((*m).pool, mp);
        assert_eq!(rte_mbuf_refcnt_read(m), 1);
        assert_eq!(rte_pktmbuf_pkt_len(m), 0);
        assert_eq!(rte_pktmbuf_headroom(m), RTE_PKTMBUF_HEADROOM as u16);
        assert_eq!(
            rte_pktmbuf_data_room_size(mp),
            RTE_MBUF_DEFAULT_BUF_SIZE as u16
        );
        rte_pktmbuf_free(m);
    }
    assert_eq!(avail(mp), before);
}

#[test]
fn pktmbuf_alloc_bulk_and_free_bulk() {
    let _g = eal();
    let mp = pool();
    let before = avail(mp);
    let mut ms = [ptr::null_mut::<rte_mbuf>(); 32];
    // SAFETY: ms has room for 32 pointers.
    let rc = unsafe { rte_pktmbuf_alloc_bulk(mp, ms.as_mut_ptr(), 32) };
    assert_eq!(rc, 0);
    assert!(ms.iter().all(|m| !m.is_null()));
    assert_eq!(avail(mp), before - 32);
    // SAFETY: all 32 are valid mbufs we own; free_bulk takes them back.
    unsafe { rte_pktmbuf_free_bulk(ms.as_mut_ptr(), 32) };
    assert_eq!(avail(mp), before);

    // Asking for more than the pool holds fails whole and takes nothing.
    let mut many = vec![ptr::null_mut::<rte_mbuf>(); before as usize + 1];
    // SAFETY: many has room for the count we pass.
    let rc = unsafe { rte_pktmbuf_alloc_bulk(mp, many.as_mut_ptr(), many.len() as u32) };
    assert!(rc < 0);
    assert_eq!(avail(mp), before);
}

#[test]
fn pktmbuf_append_prepend_trim_adj() {
    let _g = eal();
    let m = alloc();
    // SAFETY: m is a valid single-segment mbuf we own.
    unsafe {
        let room = rte_pktmbuf_tailroom(m);
        let head = rte_pktmbuf_headroom(m);
        let p = rte_pktmbuf_append(m, 10) as *mut u8;
        assert_eq!(p, rte_pktmbuf_mtod(m));
        assert_eq!((rte_pktmbuf_pkt_len(m), rte_pktmbuf_data_len(m)), (10, 10));
        assert_eq!(rte_pktmbuf_tailroom(m), room - 10);

        let h = rte_pktmbuf_prepend(m, 4) as *mut u8;
        assert_eq!(h, p.sub(4));
        assert_eq!(rte_pktmbuf_headroom(m), head - 4);
        assert_eq!(rte_pktmbuf_pkt_len(m), 14);

        assert_eq!(rte_pktmbuf_trim(m, 3), 0);
        assert_eq!(rte_pktmbuf_pkt_len(m), 11);
        assert_eq!(rte_pktmbuf_tailroom(m), room - 7);
        assert!(
            rte_pktmbuf_trim(m, 12) < 0,
            "cannot trim more than there is"
        );

        let a = rte_pktmbuf_adj(m, 4) as *mut u8;
        assert_eq!(a, p);
        assert_eq!(rte_pktmbuf_pkt_len(m), 7);

        assert!(
            rte_pktmbuf_append(m, room).is_null(),
            "no tailroom left for that"
        );
        assert!(rte_pktmbuf_prepend(m, head + 1).is_null());

        rte_pktmbuf_reset(m);
        assert_eq!(rte_pktmbuf_pkt_len(m), 0);
        assert_eq!(rte_pktmbuf_headroom(m), head);
        rte_pktmbuf_free(m);
    }
}

static EXT_FREED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn ext_free(_addr: *mut c_void, opaque: *mut c_void) {
    assert_eq!(opaque as usize, 0xfeed);
    EXT_FREED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn pktmbuf_attach_extbuf_and_its_free_callback() {
    let _g = eal();
    let mp = pool();
    let before = avail(mp);
    // A buffer of our own; the helper puts the shared info at its end.
    let buf: &'static mut [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
    buf[..5].copy_from_slice(b"hello");
    let mut len = buf.len() as u16;
    let m = alloc();
    // SAFETY: buf is a live 4 KiB buffer that is never freed; the helper writes the
    // shared info in its last bytes and shrinks len accordingly; m is a fresh mbuf.
    unsafe {
        let shinfo = rte_pktmbuf_ext_shinfo_init_helper(
            buf.as_mut_ptr() as *mut c_void,
            &mut len,
            Some(ext_free),
            0xfeed as *mut c_void,
        );
        assert!(!shinfo.is_null());
        assert!(len < 4096);
        assert_eq!(rte_mbuf_ext_refcnt_read(shinfo), 1);
        let iova = rte_mem_virt2iova(buf.as_ptr() as *const c_void);
        rte_pktmbuf_attach_extbuf(m, buf.as_mut_ptr() as *mut c_void, iova, len, shinfo);
        assert_eq!((*m).buf_addr as *mut u8, buf.as_mut_ptr());
        assert_eq!((*m).buf_len, len);
        // The data starts at offset 0 of the attached buffer; make the 5 bytes the packet.
        assert_eq!(rte_pktmbuf_mtod(m), buf.as_mut_ptr());
        assert!(!rte_pktmbuf_append(m, 5).is_null());
        let data = std::slice::from_raw_parts(rte_pktmbuf_mtod(m), 5);
        assert_eq!(data, b"hello");
        assert_eq!(EXT_FREED.load(Ordering::SeqCst), 0);
        rte_pktmbuf_free(m);
    }
    assert_eq!(
        EXT_FREED.load(Ordering::SeqCst),
        1,
        "free callback ran once"
    );
    assert_eq!(avail(mp), before, "the mbuf itself went back to its pool");
}

static CHAIN_FREED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn chain_free(addr: *mut c_void, opaque: *mut c_void) {
    assert_eq!(opaque as usize, 0xbeef);
    assert!(!addr.is_null());
    CHAIN_FREED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn pktmbuf_chain_of_a_header_and_an_extbuf_with_its_shared_info_kept_apart() {
    let _g = eal();
    let mp = pool();
    let before = avail(mp);
    // The payload lives in memory of our own that DPDK never writes (the shared
    // info is a separate struct, not the helper's tail of the buffer).
    let payload: &'static mut [u8] = Box::leak(vec![7u8; 1000].into_boxed_slice());
    let shinfo: &'static mut rte_mbuf_ext_shared_info =
        Box::leak(Box::new(rte_mbuf_ext_shared_info::default()));
    shinfo.free_cb = Some(chain_free);
    shinfo.fcb_opaque = 0xbeef as *mut c_void;
    let (head, tail) = (alloc(), alloc());
    // SAFETY: head and tail are fresh mbufs of the test pool; payload and shinfo are
    // leaked, so they outlive every mbuf that points at them.
    unsafe {
        rte_mbuf_ext_refcnt_set(shinfo, 1);
        assert_eq!(rte_mbuf_ext_refcnt_read(shinfo), 1);
        ptr::copy_nonoverlapping(b"head".as_ptr(), rte_pktmbuf_append(head, 4).cast(), 4);
        rte_pktmbuf_attach_extbuf(
            tail,
            payload.as_mut_ptr().cast(),
            RTE_BAD_IOVA as rte_iova_t,
            payload.len() as u16,
            shinfo,
        );
        assert!(!rte_pktmbuf_append(tail, 1000).is_null());
        assert_eq!(rte_pktmbuf_chain(head, tail), 0);
        assert_eq!((*head).nb_segs, 2);
        assert_eq!((*head).pkt_len, 1004);
        assert_eq!((*head).data_len, 4);
        assert_eq!((*head).next, tail);
        assert_eq!(rte_pktmbuf_mtod((*head).next), payload.as_mut_ptr());
        assert_eq!(CHAIN_FREED.load(Ordering::SeqCst), 0);
        rte_pktmbuf_free(head);
    }
    assert_eq!(
        CHAIN_FREED.load(Ordering::SeqCst),
        1,
        "free callback ran once"
    );
    assert!(
        payload.iter().all(|&b| b == 7),
        "DPDK wrote nothing into the payload"
    );
    assert_eq!(avail(mp), before, "both mbufs went back to their pool");
}

#[test]
fn tx_offload_multi_segs_is_bit_15() {
    // SAFETY: returns a constant.
    assert_eq!(unsafe { wyvern_tx_offload_multi_segs() }, 1 << 15);
}

#[test]
fn ethdev_control_on_net_null() {
    let _g = eal();
    // SAFETY: plain queries and control calls on a valid port, out-pointers valid.
    unsafe {
        assert!(rte_eth_dev_count_avail() >= 2);
        let port = port_by_name("net_null0");
        assert_eq!(rte_eth_dev_is_valid_port(port), 1);
        let mut name = [0 as c_char; RTE_ETH_NAME_MAX_LEN as usize];
        assert_eq!(rte_eth_dev_get_name_by_port(port, name.as_mut_ptr()), 0);
        assert_eq!(CStr::from_ptr(name.as_ptr()).to_str().unwrap(), "net_null0");

        let mut info = rte_eth_dev_info::default();
        assert_eq!(rte_eth_dev_info_get(port, &mut info), 0);
        assert!(info.max_rx_queues >= 1 && info.max_tx_queues >= 1);
        assert!(!info.driver_name.is_null());
        assert_eq!(
            CStr::from_ptr(info.driver_name).to_str().unwrap(),
            "net_null"
        );

        let mut mac = rte_ether_addr::default();
        assert_eq!(rte_eth_macaddr_get(port, &mut mac), 0);
        assert_ne!(mac.addr_bytes, [0u8; 6], "net_null has a random MAC");

        let mut mtu = 0u16;
        assert_eq!(rte_eth_dev_get_mtu(port, &mut mtu), 0);
        assert_eq!(mtu, RTE_ETHER_MTU as u16);
        let _ = rte_eth_dev_socket_id(port);
        assert!(rte_eth_dev_get_port_by_name(c"nope".as_ptr(), &mut 0).is_negative());
    }
}

#[test]
fn tx_burst_on_net_null_counts_in_stats() {
    let _g = eal();
    let port = port_by_name("net_null0");
    start_port(port);
    let mp = pool();
    let before = avail(mp);
    let mut ms = [ptr::null_mut::<rte_mbuf>(); 16];
    // SAFETY: port started with queues 0; ms holds 16 valid mbufs that tx_burst takes
    // (net_null frees what it sends).
    unsafe {
        assert_eq!(rte_eth_stats_reset(port), 0);
        assert_eq!(rte_pktmbuf_alloc_bulk(mp, ms.as_mut_ptr(), 16), 0);
        for &m in &ms {
            assert!(!rte_pktmbuf_append(m, 64).is_null());
        }
        let sent = rte_eth_tx_burst(port, 0, ms.as_mut_ptr(), 16);
        assert_eq!(sent, 16);
        assert_eq!(avail(mp), before, "net_null freed what it sent");

        // net_null's rx allocates packets from the rx pool.
        let mut rx = [ptr::null_mut::<rte_mbuf>(); 8];
        let got = rte_eth_rx_burst(port, 0, rx.as_mut_ptr(), 8);
        assert_eq!(got, 8);
        rte_pktmbuf_free_bulk(rx.as_mut_ptr(), u32::from(got));

        let mut st = rte_eth_stats::default();
        assert_eq!(rte_eth_stats_get(port, &mut st), 0);
        assert_eq!(st.opackets, 16);
        assert_eq!(st.ipackets, 8);

        let mut link = rte_eth_link::default();
        assert_eq!(rte_eth_link_get_nowait(port, &mut link), 0);
        assert_eq!(u32::from(link.link_status()), RTE_ETH_LINK_UP);

        assert_eq!(rte_eth_dev_stop(port), 0);
    }
}

#[test]
fn tx_burst_on_net_ring_comes_back_on_rx_burst() {
    let _g = eal();
    let port = port_by_name("net_ring0");
    start_port(port);
    let mp = pool();
    let before = avail(mp);
    let mut tx = [ptr::null_mut::<rte_mbuf>(); 4];
    // SAFETY: port started; the mbufs are ours until tx_burst takes them, then rx_burst
    // hands the same ones back and we free them.
    unsafe {
        assert_eq!(rte_pktmbuf_alloc_bulk(mp, tx.as_mut_ptr(), 4), 0);
        for (i, &m) in tx.iter().enumerate() {
            let p = rte_pktmbuf_append(m, 60 + i as u16) as *mut u8;
            ptr::write_bytes(p, 0xa0 + i as u8, 60 + i);
        }
        assert_eq!(rte_eth_tx_burst(port, 0, tx.as_mut_ptr(), 4), 4);
        let mut rx = [ptr::null_mut::<rte_mbuf>(); 8];
        let got = rte_eth_rx_burst(port, 0, rx.as_mut_ptr(), 8);
        assert_eq!(got, 4);
        for (i, &m) in rx[..4].iter().enumerate() {
            assert_eq!(rte_pktmbuf_pkt_len(m) as usize, 60 + i);
            let d = std::slice::from_raw_parts(rte_pktmbuf_mtod(m), 60 + i);
            assert!(d.iter().all(|&b| b == 0xa0 + i as u8), "packet {i} bytes");
        }
        rte_pktmbuf_free_bulk(rx.as_mut_ptr(), 4);
        assert_eq!(rte_eth_rx_burst(port, 0, rx.as_mut_ptr(), 8), 0);
        assert_eq!(avail(mp), before);
        assert_eq!(rte_eth_dev_stop(port), 0);
    }
}

#[test]
fn dev_probe_a_vdev_at_run_time_then_close_it() {
    let _g = eal();
    // SAFETY: valid C strings; the device is ours (created here, removed here).
    unsafe {
        assert_eq!(rte_dev_probe(c"net_null7".as_ptr()), 0);
        let port = port_by_name("net_null7");
        assert_eq!(rte_eth_dev_close(port), 0);
        assert_eq!(rte_eth_dev_is_valid_port(port), 0);
    }
}

#[test]
fn mempool_counts() {
    let _g = eal();
    let mp = pool();
    // SAFETY: mp is live; the lookup name is a valid C string.
    unsafe {
        assert_eq!(rte_mempool_lookup(c"sys_test_pool".as_ptr()), mp);
        let m = alloc();
        assert!(rte_mempool_in_use_count(mp) >= 1);
        assert_eq!(
            rte_mempool_avail_count(mp) + rte_mempool_in_use_count(mp),
            1023
        );
        rte_pktmbuf_free(m);
    }
    // A second pool of the same name fails, with rte_errno EEXIST.
    let name = CString::new("sys_test_pool").unwrap();
    // SAFETY: EAL up; name valid.
    let dup = unsafe { rte_pktmbuf_pool_create(name.as_ptr(), 63, 0, 0, 2048, SOCKET_ID_ANY) };
    assert!(dup.is_null());
    assert_eq!(rte_errno(), 17, "EEXIST");
    // A throwaway pool can be freed.
    let other = CString::new("sys_test_tmp").unwrap();
    // SAFETY: EAL up; the pool is ours and unused when freed.
    unsafe {
        let mp2 = rte_pktmbuf_pool_create(other.as_ptr(), 63, 0, 0, 2048, SOCKET_ID_ANY);
        assert!(!mp2.is_null());
        rte_mempool_free(mp2);
        assert!(rte_mempool_lookup(other.as_ptr()).is_null());
    }
}
