//! The safe DPDK layer (`wyvern::transport::dpdk`) on the real DPDK, with virtual devices
//! only (`--no-pci`, no hugepages, `--no-shconf`: no 3 MB of runtime files left in
//! /var/run/dpdk per run).
//!
//! One EAL per process: every test takes [`dpdk`], which starts it on first use and then
//! holds a lock, so the tests of this binary use DPDK one at a time. A port is closed
//! when its `Port` drops and cannot be opened again, so each test has its own devices.

#![cfg(feature = "dpdk")]

use std::sync::{Mutex, MutexGuard, OnceLock};

use wyvern::transport::datagram::PacketIo;
use wyvern::transport::dpdk::{DpdkIo, DpdkIoConfig, Eal, Error, Mbuf, PktPool, Port, PortConfig};
use wyvern::wire::packet::{PacketHeader, PktKind};
use wyvern::wire::reliable::Ack;

static EAL: OnceLock<Eal> = OnceLock::new();
static LOCK: Mutex<()> = Mutex::new(());

/// Devices created at EAL start: (name, used by).
const VDEVS: &[&str] = &[
    "net_ring0", // ring_loopback_carries_the_bytes
    "net_ring1", // tx_burst_keeps_what_did_not_fit
    "net_ring2", // queues_are_separate_rings
    "net_ring3", // jumbo_mtu
    "net_ring4", // open_errors
    "net_ring5", // bad_queue_panics
    "net_null0", // null_port_control_and_stats
    "net_ring6", // a_driver_that_keeps_attached_mbufs_turns_the_extbuf_path_off
];

fn eal_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "--no-pci",
        "--no-huge",
        "--no-shconf",
        "-m",
        "256",
        "--no-telemetry",
        "-l",
        "0",
        "--log-level=lib.eal:warning",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--file-prefix=wyvern-test-{}", std::process::id()));
    args.extend(VDEVS.iter().map(|v| format!("--vdev={v}")));
    args
}

fn dpdk() -> (MutexGuard<'static, ()>, &'static Eal) {
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let eal = EAL.get_or_init(|| Eal::init(&eal_args()).expect("EAL starts with virtual devices"));
    (guard, eal)
}

/// A frame of `len` bytes whose every byte is `tag`.
fn frame(tag: u8, len: usize) -> Vec<u8> {
    vec![tag; len]
}

#[test]
fn eal_starts_once_and_refuses_a_second_start() {
    let (_g, eal) = dpdk();
    assert!(Eal::started());
    assert_eq!(eal.lcore_count(), 1, "-l 0");
    assert!(usize::from(eal.port_count()) >= 1);
    let err = Eal::init(&eal_args()).unwrap_err();
    assert!(matches!(err, Error::EalAlreadyInitialised), "{err}");
    let err = Eal::init(&["bad\0arg".to_owned()]).unwrap_err();
    assert!(matches!(err, Error::NulByte { .. }), "{err}");
}

#[test]
fn ring_loopback_carries_the_bytes() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_ring_loop", 511, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut port = Port::open(eal, "net_ring0", &PortConfig::default(), &pool).unwrap();
    assert_eq!(port.name(), "net_ring0");

    let mut tx = Vec::new();
    pool.alloc_bulk(&mut tx, 8).unwrap();
    assert_eq!(pool.in_use(), 8);
    for (i, m) in tx.iter_mut().enumerate() {
        assert!(m.extend_from_slice(&frame(i as u8 + 1, 60 + i * 100)));
        assert_eq!(m.len(), 60 + i * 100);
    }
    assert_eq!(port.tx_burst(0, &mut tx), 8);
    assert!(tx.is_empty(), "sent frames leave the Vec");

    let mut rx = Vec::new();
    // Bounded: net_ring delivers synchronously, but allow a few polls.
    for _ in 0..100 {
        port.rx_burst(0, &mut rx, 32);
        if rx.len() >= 8 {
            break;
        }
    }
    assert_eq!(rx.len(), 8);
    for (i, m) in rx.iter().enumerate() {
        assert_eq!(m.segments(), 1);
        assert_eq!(
            m.data(),
            frame(i as u8 + 1, 60 + i * 100).as_slice(),
            "frame {i}"
        );
    }
    let st = port.stats().unwrap();
    assert_eq!((st.tx_packets, st.rx_packets), (8, 8));
    // net_ring counts frames, not bytes (its stats leave the byte counters at 0).
    port.reset_stats().unwrap();
    assert_eq!(port.stats().unwrap().tx_packets, 0);

    Mbuf::free_bulk(&mut rx);
    assert!(rx.is_empty());
    assert_eq!(pool.in_use(), 0, "every mbuf back in the pool");
    assert_eq!(port.rx_burst(0, &mut rx, 32), 0);
}

#[test]
fn tx_burst_keeps_what_did_not_fit() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_ring_full", 4095, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut port = Port::open(eal, "net_ring1", &PortConfig::default(), &pool).unwrap();
    // net_ring's rings hold 1023 frames: 1500 cannot all go.
    let mut tx = Vec::new();
    pool.alloc_bulk(&mut tx, 1500).unwrap();
    for (i, m) in tx.iter_mut().enumerate() {
        assert!(m.extend_from_slice(&(i as u32).to_le_bytes()));
    }
    let sent = port.tx_burst(0, &mut tx);
    assert!(sent > 0 && sent < 1500, "sent {sent}");
    assert_eq!(tx.len(), 1500 - sent);
    // The unsent ones are the tail, in order.
    for (k, m) in tx.iter().enumerate() {
        assert_eq!(m.data(), ((sent + k) as u32).to_le_bytes());
    }
    // Drain the ring and send the rest, bounded.
    let mut rx = Vec::new();
    for _ in 0..100 {
        if tx.is_empty() {
            break;
        }
        port.rx_burst(0, &mut rx, 512);
        port.tx_burst(0, &mut tx);
    }
    for _ in 0..100 {
        if port.rx_burst(0, &mut rx, 512) == 0 {
            break;
        }
    }
    assert!(tx.is_empty());
    assert_eq!(rx.len(), 1500);
    for (i, m) in rx.iter().enumerate() {
        assert_eq!(m.data(), (i as u32).to_le_bytes(), "frame {i} in order");
    }
    drop(rx); // one by one through Drop this time
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn queues_are_separate_rings() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_ring_queues", 255, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let cfg = PortConfig {
        rx_queues: 2,
        tx_queues: 2,
        rx_descriptors: 128,
        tx_descriptors: 128,
        ..PortConfig::default()
    };
    let mut port = Port::open(eal, "net_ring2", &cfg, &pool).unwrap();
    assert_eq!((port.rx_queues(), port.tx_queues()), (2, 2));
    let mut tx = vec![pool.alloc().unwrap()];
    assert!(tx[0].extend_from_slice(b"queue one"));
    assert_eq!(port.tx_burst(1, &mut tx), 1);
    let mut rx = Vec::new();
    assert_eq!(port.rx_burst(0, &mut rx, 8), 0, "nothing on queue 0");
    assert_eq!(port.rx_burst(1, &mut rx, 8), 1);
    assert_eq!(rx[0].data(), b"queue one");
}

#[test]
fn jumbo_mtu_with_a_pool_that_holds_the_frame() {
    let (_g, eal) = dpdk();
    let small = PktPool::new(eal, "t_mtu_small", 63, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let cfg = PortConfig {
        mtu: Some(9000),
        ..PortConfig::default()
    };
    let err = Port::open(eal, "net_ring3", &cfg, &small).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("MTU 9000"), "{err}");

    // A data room smaller than the headroom: refused, not an arithmetic overflow.
    let tiny = PktPool::new(eal, "t_mtu_tiny", 63, 0, 64).unwrap();
    let std_mtu = PortConfig {
        mtu: Some(1500),
        ..PortConfig::default()
    };
    let err = Port::open(eal, "net_ring3", &std_mtu, &tiny).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");

    let big = PktPool::new(eal, "t_mtu_big", 63, 0, 9216 + 128).unwrap();
    assert_eq!(big.data_room(), 9216 + 128);
    let mut port = Port::open(eal, "net_ring3", &cfg, &big).unwrap();
    assert_eq!(port.mtu().unwrap(), 9000);
    let mut m = big.alloc().unwrap();
    assert!(m.extend_from_slice(&frame(0x5a, 9014)));
    let mut tx = vec![m];
    assert_eq!(port.tx_burst(0, &mut tx), 1);
    let mut rx = Vec::new();
    assert_eq!(port.rx_burst(0, &mut rx, 4), 1);
    assert_eq!(rx[0].data(), frame(0x5a, 9014).as_slice());
}

#[test]
fn open_errors_say_what_went_wrong() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_open_err", 255, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let err = Port::open(eal, "net_nope9", &PortConfig::default(), &pool).unwrap_err();
    assert!(matches!(err, Error::PortNotFound { .. }), "{err}");
    assert!(err.to_string().contains("net_nope9"));
    let err = Port::open_id(eal, 999, &PortConfig::default(), &pool).unwrap_err();
    assert!(matches!(err, Error::NoSuchPort { port: 999 }), "{err}");

    let many = PortConfig {
        rx_queues: 1000,
        ..PortConfig::default()
    };
    let err = Port::open(eal, "net_ring4", &many, &pool).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("1000 rx queues"), "{err}");

    // The failed open released the port: it opens now, and a second handle is refused.
    let port = Port::open(eal, "net_ring4", &PortConfig::default(), &pool).unwrap();
    let err = Port::open(eal, "net_ring4", &PortConfig::default(), &pool).unwrap_err();
    let id = port.id();
    assert!(
        matches!(err, Error::PortBusy { port } if port == id),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "rx queue 1 of 1")]
fn bad_queue_panics_instead_of_reading_out_of_bounds() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_bad_queue", 63, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut port = Port::open(eal, "net_ring5", &PortConfig::default(), &pool).unwrap();
    let mut rx = Vec::new();
    port.rx_burst(1, &mut rx, 8);
}

#[test]
fn null_port_control_and_stats() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_null", 1023, 32, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let cfg = PortConfig {
        promiscuous: true,
        ..PortConfig::default()
    };
    let mut port = Port::open(eal, "net_null0", &cfg, &pool).unwrap();
    let mac = port.mac_address().unwrap();
    assert_ne!(mac.0, [0; 6]);
    assert_eq!(mac.to_string().len(), 17);
    let link = port.link().unwrap();
    assert!(link.up, "{link:?}");
    assert_eq!(port.mtu().unwrap(), 1500);

    let mut tx = Vec::new();
    pool.alloc_bulk(&mut tx, 32).unwrap();
    for m in &mut tx {
        m.append(64).unwrap().fill(0);
    }
    assert_eq!(port.tx_burst(0, &mut tx), 32, "net_null takes everything");
    // net_null's rx makes frames from the rx pool.
    let mut rx = Vec::new();
    assert_eq!(port.rx_burst(0, &mut rx, 16), 16);
    assert_eq!(pool.in_use(), 16, "what we hold, the sent ones freed");
    let st = port.stats().unwrap();
    assert_eq!((st.tx_packets, st.rx_packets), (32, 16));
    Mbuf::free_bulk(&mut rx);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn probe_vdev_at_run_time() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_probe", 63, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let before = eal.port_count();
    eal.probe_vdev("net_null9").unwrap();
    assert_eq!(eal.port_count(), before + 1);
    let mut port = Port::open(eal, "net_null9", &PortConfig::default(), &pool).unwrap();
    let mut tx = vec![pool.alloc().unwrap()];
    assert_eq!(port.tx_burst(0, &mut tx), 1);
    drop(port);
    assert_eq!(eal.port_count(), before, "closed on drop");
    let err = eal.probe_vdev("net_bogus_driver0").unwrap_err();
    assert!(matches!(err, Error::Probe { .. }), "{err}");
}

#[test]
fn mbuf_append_prepend_trim_adj() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_mbuf", 63, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut m = pool.alloc().unwrap();
    assert!(m.is_empty());
    assert_eq!(m.headroom(), 128);
    let room = m.tailroom();
    assert_eq!(room, 2048);

    assert!(m.append(room + 1).is_none(), "more than the tailroom");
    assert!(m.append(70_000).is_none(), "more than u16");
    assert!(m.is_empty(), "a refused append changes nothing");
    m.append(5).unwrap().copy_from_slice(b"world");
    m.prepend(6).unwrap().copy_from_slice(b"hello ");
    assert_eq!(m.data(), b"hello world");
    assert_eq!((m.len(), m.headroom(), m.tailroom()), (11, 122, 2043));
    assert!(m.prepend(123).is_none());

    m.data_mut()[0] = b'j';
    assert!(m.trim(6));
    assert_eq!(m.data(), b"jello");
    assert!(!m.trim(6), "cannot trim more than there is");
    assert!(m.adj(1));
    assert_eq!(m.data(), b"ello");
    assert!(!m.adj(5));

    m.reset();
    assert!(m.is_empty());
    assert_eq!(m.headroom(), 128);

    // into_raw / from_raw round trip keeps the mbuf alive and owned once.
    let raw = m.into_raw();
    assert_eq!(pool.in_use(), 1);
    // SAFETY: raw came from into_raw just above and nothing else holds it.
    let m = unsafe { Mbuf::from_raw(raw) };
    assert_eq!(m.as_raw(), raw.cast_const());
    drop(m);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn mbufs_chain_and_read_back_every_segment_in_order() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_chain", 63, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut head = pool.alloc().unwrap();
    assert!(head.extend_from_slice(b"header|"));
    let mut tail = pool.alloc().unwrap();
    let body: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    assert!(tail.extend_from_slice(&body));
    assert!(head.chain(tail).is_ok());
    assert_eq!((head.segments(), head.len()), (2, 7 + 2000));
    assert_eq!(head.data(), b"header|", "data() is the first segment");
    // A buffer first filled with a poison byte: every byte read shows.
    let mut out = vec![0xa5; 2100];
    assert_eq!(head.read_into(&mut out), 2007);
    assert_eq!(&out[..7], b"header|");
    assert_eq!(&out[7..2007], &body[..]);
    assert!(
        out[2007..].iter().all(|&b| b == 0xa5),
        "nothing past the packet"
    );
    // A shorter buffer takes what fits.
    let mut short = [0u8; 10];
    assert_eq!(head.read_into(&mut short), 10);
    assert_eq!(&short, b"header|\0\x01\x02");
    assert_eq!(pool.in_use(), 2);
    drop(head);
    assert_eq!(pool.in_use(), 0, "freeing the head frees the chain");
}

#[test]
fn pool_counts_exhaustion_and_errors() {
    let (_g, eal) = dpdk();
    let pool = PktPool::new(eal, "t_pool", 31, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    assert_eq!((pool.name(), pool.capacity()), ("t_pool", 31));
    assert_eq!(pool.available(), 31);

    let mut held = Vec::new();
    let err = pool.alloc_bulk(&mut held, 32).unwrap_err();
    assert!(matches!(err, Error::PoolEmpty { count: 32, .. }), "{err}");
    assert!(held.is_empty(), "all or nothing");
    pool.alloc_bulk(&mut held, 31).unwrap();
    assert_eq!((pool.available(), pool.in_use()), (0, 31));
    let err = pool.alloc().unwrap_err();
    assert!(matches!(err, Error::PoolEmpty { count: 1, .. }), "{err}");
    Mbuf::free_bulk(&mut held);
    assert_eq!(pool.available(), 31);

    let err = PktPool::new(eal, "t_pool", 31, 0, 2048).unwrap_err();
    match &err {
        Error::PoolCreate { source, .. } => {
            assert_eq!(source.code(), 17, "EEXIST: {source}");
            assert!(source.to_string().contains("exists"), "{source}");
        }
        other => panic!("{other}"),
    }
    let chain = std::error::Error::source(&err).expect("keeps DPDK's reason");
    assert!(chain.to_string().contains("errno 17"));
}

/// The extbuf path's backstop: a driver that still holds sent mbufs when the transport
/// call ends (`net_ring` keeps them in its ring until they are received) would let the
/// agent reuse a block it reads. Forced onto such a driver (`extbuf_any_driver`), the
/// path sees it at the first `flush` and turns itself off (copy from then on); the
/// mbufs it attached are freed later, when the ring is read, into shared infos that are
/// still there (kept, not freed).
#[test]
fn a_driver_that_keeps_attached_mbufs_turns_the_extbuf_path_off() {
    let (_g, eal) = dpdk();
    let cfg = DpdkIoConfig {
        me: 0,
        nodes: 2,
        eal_args: eal_args(),
        extbuf: true,
        extbuf_any_driver: true,
        ..DpdkIoConfig::default()
    };
    let mut io = DpdkIo::open_port(eal, &cfg, Some("net_ring6"), "t_ext").unwrap();
    assert_eq!(io.tx_path(), "extbuf");
    let payload = vec![0x3c; 1000];
    let h = |seq| PacketHeader {
        kind: PktKind::Data,
        flags: 0,
        src_node: 0,
        dst_node: 1,
        src_epoch: 1,
        dst_epoch: 1,
        seq,
        ack: Ack::default(),
    };
    for seq in 0..4 {
        assert!(io.send_packet(1, &h(seq), &payload, true).unwrap());
    }
    io.flush();
    assert_eq!(io.tx_path(), "copy", "{:?}", io.stats());
    let info = io.info();
    let why = &info.iter().find(|(k, _)| *k == "dpdk_extbuf").unwrap().1;
    assert!(why.contains("kept sent mbufs after tx_burst"), "{why}");
    assert_eq!(io.stats().tx_attached, 4);
    // Copied from now on.
    assert!(io.send_packet(1, &h(4), &payload, true).unwrap());
    io.flush();
    assert_eq!(io.stats().tx_attached, 4);
    // The ring loops back our own frames: reading them (dropped as our own) frees the
    // four chained ones, whose free callbacks find their shared infos still there.
    for _ in 0..100 {
        assert!(io.recv().unwrap().is_none(), "our own frames are dropped");
        if io.stats().own == 5 {
            break;
        }
    }
    assert_eq!(io.stats().own, 5, "{:?}", io.stats());
    drop(io);
}
