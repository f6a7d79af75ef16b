//! The safe layer over rdma-core (`--features verbs`), on a real device: Soft-RoCE in
//! the VM of `scripts/rxe-vm.sh` (device names in `WYVERN_RXE_DEVS`, e.g. `rxe0,rxe1`),
//! or the first active port of this machine. Where there is no RDMA device at all the
//! device tests print why and return; the error tests run everywhere.
//!
//! Some rxe builds have dropped completions on two-sided transfers: every payload is
//! checksummed, and every wait is bounded (seconds: emulation is slow).
#![cfg(feature = "verbs")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use wyvern::transport::verbs::{
    device_names, Access, Context, Cq, Error, Pd, Qp, QpCaps, QpEndpoint, RecvWr, RegBuf, SendOp,
    SendWr, Sge, Srq, Wc, WC_FLUSH_ERR, WC_RDMA_READ, WC_RECV,
};

/// The devices to test on: `WYVERN_RXE_DEVS`, else whatever this machine has; `None`
/// (with the reason printed) when there is none.
fn devices(test: &str) -> Option<Vec<String>> {
    if let Ok(v) = std::env::var("WYVERN_RXE_DEVS") {
        let d: Vec<String> = v
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if !d.is_empty() {
            return Some(d);
        }
    }
    match Context::open(None) {
        Ok(c) => Some(vec![c.name().to_string()]),
        Err(e) => {
            eprintln!("{test}: skipped: no RDMA device here ({e}); scripts/rxe-vm.sh runs it on Soft-RoCE");
            None
        }
    }
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// Poll `cq` until `n` completions are in, or fail after `t`.
fn wait_for(cq: &Cq, n: usize, t: Duration) -> Vec<Wc> {
    let deadline = Instant::now() + t;
    let mut out = Vec::new();
    while out.len() < n {
        let want = n - out.len();
        cq.poll(&mut out, want).expect("ibv_poll_cq");
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions within {t:?} (a dropped completion?): {out:?}",
            out.len()
        );
        if out.len() < n {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out
}

#[test]
fn a_missing_device_is_named_with_those_that_exist() {
    let e = Context::open(Some("no-such-device0")).expect_err("no such device");
    let msg = e.to_string();
    match &e {
        Error::UnknownDevice { available, .. } => {
            assert!(msg.contains("no-such-device0"), "{msg}");
            for d in available {
                assert!(msg.contains(d.as_str()), "{msg}");
            }
        }
        // No RDMA at all on this machine: the error says so.
        Error::DeviceList(_) | Error::NoDevice => {
            assert!(msg.contains("no RDMA device"), "{msg}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(matches!(
        Context::open(Some("rxe0:x")),
        Err(Error::BadSpec(_))
    ));
}

#[test]
fn open_a_port_pick_its_gid_and_refuse_absent_ones() {
    let Some(devs) = devices("open_a_port") else {
        return;
    };
    let names = device_names().expect("device list");
    for d in &devs {
        assert!(names.contains(d), "{d} not in {names:?}");
        let ctx = Context::open(Some(d)).expect("open");
        assert_eq!(ctx.name(), d);
        let port = ctx.query_port().expect("query port");
        assert!(port.is_active());
        let chosen = ctx.choose_gid(None, None).expect("a GID");
        if port.is_roce() {
            let (wyvern::transport::verbs::GidEntry { index: i, gid: g }, _) =
                chosen.expect("RoCE ports address by GID");
            assert!(g.ipv4().is_some(), "not IPv4-mapped: {g}");
            assert_eq!(ctx.gid_type(i).as_deref(), Some("RoCE v2"));
            assert_eq!(ctx.gid(i).unwrap(), g);
            gid_follows_the_node_address(d, &ctx, i, g.ipv4().unwrap());
        }
        // Explicit ports and indices outside the device are refused clearly.
        let e = Context::open(Some(&format!("{d}:9"))).expect_err("no port 9");
        assert!(e.to_string().contains("no port 9"), "{e}");
        let e = ctx.choose_gid(Some(10_000), None).expect_err("no such GID");
        assert!(e.to_string().contains("no GID at index 10000"), "{e}");
    }
}

/// Several GIDs on one port, as a RoCE host has: a second IPv4 address on the
/// device's netdev adds v1 and v2 entries for it. The node's address decides:
/// the v2 entry carrying it is chosen, with the reason; an address the port
/// does not carry gets the first v2 entry and a reason that says so.
fn gid_follows_the_node_address(
    dev: &str,
    ctx: &Context,
    first: u32,
    first_addr: std::net::Ipv4Addr,
) {
    use wyvern::transport::verbs::GidChoice;
    let netdev = std::fs::read_to_string(format!(
        "/sys/class/infiniband/{dev}/ports/{}/gid_attrs/ndevs/{first}",
        ctx.port()
    ))
    .expect("the GID's netdev")
    .trim()
    .to_string();
    let second = std::net::Ipv4Addr::new(10, 213, 7, 1 + first_addr.octets()[3] % 200);
    let ip = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("ip");
        assert!(o.status.success(), "ip {args:?}: {o:?}");
    };
    let cidr = format!("{second}/32");
    ip(&["addr", "add", &cidr, "dev", &netdev]);
    // Taken away again however the checks go.
    struct Del(String, String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["addr", "del", &self.0, "dev", &self.1])
                .output();
        }
    }
    let del = Del(cidr.clone(), netdev.clone());
    // The kernel adds the GID entries at once, or nearly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let chosen = loop {
        let c = ctx.choose_gid(None, Some(second)).expect("a GID");
        if matches!(&c, Some((_, GidChoice::CarriesAddress(..))))
            || std::time::Instant::now() > deadline
        {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (e, why) = chosen.expect("RoCE");
    assert_eq!(e.gid.ipv4(), Some(second), "{why}");
    assert_ne!(e.index, first);
    assert_eq!(ctx.gid_type(e.index).as_deref(), Some("RoCE v2"));
    assert_eq!(why, GidChoice::CarriesAddress(second, Some(netdev.clone())));
    drop(del);
    // The first address again, by its own entry.
    let (e, _) = ctx.choose_gid(None, Some(first_addr)).unwrap().unwrap();
    assert_eq!(e.index, first);
    // An address nobody carries: the first v2 entry, and a reason saying so.
    let nowhere = std::net::Ipv4Addr::new(192, 0, 2, 77);
    let (e, why) = ctx.choose_gid(None, Some(nowhere)).unwrap().unwrap();
    assert_eq!(e.index, first);
    assert!(why.to_string().contains("NONE carries"), "{why}");
}

/// Two RC QPs on one device (or across two, when there are two), connected by hand:
/// SENDs into a shared receive queue, checksummed; an RDMA READ, checksummed; then
/// one QP forced into the error state flushes its work with an error status.
#[test]
fn a_queue_pair_pair_sends_and_reads_checksummed_payloads() {
    let Some(devs) = devices("qp_pair") else {
        return;
    };
    let ca = Context::open(Some(&devs[0])).expect("open a");
    let cb = Context::open(Some(devs.get(1).unwrap_or(&devs[0]))).expect("open b");
    let (pa, pb) = (Pd::new(&ca).unwrap(), Pd::new(&cb).unwrap());
    let (qa, qb) = (
        Cq::new(&ca, 256, None).unwrap(),
        Cq::new(&cb, 256, None).unwrap(),
    );
    let srq = Srq::new(&pb, 64).unwrap();
    let caps = QpCaps {
        max_send_wr: 64,
        max_recv_wr: 64,
        max_inline: 64,
    };
    let a = Qp::new_rc(&pa, &qa, None, caps).unwrap();
    let b = Qp::new_rc(&pb, &qb, Some(&srq), caps).unwrap();
    let access = Access::LOCAL_WRITE.with(Access::REMOTE_READ);
    a.to_init(ca.port(), access).unwrap();
    b.to_init(cb.port(), access).unwrap();
    let ep = |c: &Arc<Context>, q: &Qp, psn| {
        let gid = c.choose_gid(None, None).unwrap().map(|(e, _)| e);
        (
            QpEndpoint {
                qpn: q.qpn(),
                psn,
                lid: c.query_port().unwrap().lid,
                gid: gid.map(|e| e.gid),
            },
            gid.map(|e| e.index),
        )
    };
    let (ea, ia) = ep(&ca, &a, 100);
    let (eb, ib) = ep(&cb, &b, 200);
    let mtu = ca
        .query_port()
        .unwrap()
        .active_mtu
        .min(cb.query_port().unwrap().active_mtu);
    a.to_rtr(ca.port(), &eb, mtu, ia, 4).unwrap();
    a.to_rts(ea.psn, 4).unwrap();
    b.to_rtr(cb.port(), &ea, mtu, ib, 4).unwrap();
    b.to_rts(eb.psn, 4).unwrap();

    // SENDs of several sizes (inline and not) into the SRQ.
    const SLOT: usize = 8192;
    const N: usize = 24;
    let mut tx = RegBuf::new(&pa, N * SLOT, Access::LOCAL_WRITE).unwrap();
    let rx = RegBuf::new(&pb, N * SLOT, Access::LOCAL_WRITE).unwrap();
    let recvs: Vec<RecvWr> = (0..N)
        .map(|i| RecvWr {
            wr_id: i as u64,
            buf: Sge {
                addr: rx.addr(i * SLOT),
                len: SLOT as u32,
                lkey: rx.mr().lkey(),
            },
        })
        .collect();
    // SAFETY: `rx` outlives the QPs' use of it (it is dropped at the end of the test,
    // after every completion was polled) and is read only after its completion.
    unsafe { srq.post_recv(&recvs).unwrap() };
    let sizes: Vec<usize> = (0..N)
        .map(|i| [1, 7, 60, 64, 65, 1000, 4096, 8192][i % 8])
        .collect();
    let mut sums = Vec::new();
    let mut wrs = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let s = tx.slice_mut(i * SLOT, n);
        fill(s, i as u64 + 1);
        sums.push(crc(s));
        wrs.push(SendWr {
            wr_id: i as u64,
            op: SendOp::Send {
                inline: n <= a.max_inline() as usize,
            },
            local: Sge {
                addr: tx.addr(i * SLOT),
                len: n as u32,
                lkey: tx.mr().lkey(),
            },
            // Signalled every 8th and the last: the rest complete silently.
            signaled: i % 8 == 7 || i == N - 1,
        });
    }
    // SAFETY: `tx` stays untouched until the signalled completions are polled below.
    unsafe { a.post_send(&wrs).unwrap() };
    let done = wait_for(
        &qa,
        wrs.iter().filter(|w| w.signaled).count(),
        Duration::from_secs(60),
    );
    assert!(done.iter().all(|w| w.is_ok()), "{done:?}");
    let mut got = wait_for(&qb, N, Duration::from_secs(60));
    assert!(
        got.iter().all(|w| w.is_ok() && w.opcode == WC_RECV),
        "{got:?}"
    );
    // In order, each of its size, each intact.
    got.sort_by_key(|w| w.wr_id);
    for (i, w) in got.iter().enumerate() {
        assert_eq!(w.byte_len as usize, sizes[i], "message {i}");
        assert_eq!(w.qp_num, b.qpn());
        let slot = w.wr_id as usize;
        assert_eq!(
            crc(rx.slice(slot * SLOT, sizes[i])),
            sums[i],
            "message {i} corrupt"
        );
    }

    // An RDMA READ of 1 MiB of b's memory into a's.
    const R: usize = 1 << 20;
    let mut src = RegBuf::new(&pb, R, Access::REMOTE_READ).unwrap();
    fill(src.slice_mut(0, R), 99);
    let want = crc(src.slice(0, R));
    let dst = RegBuf::new(&pa, R, Access::LOCAL_WRITE).unwrap();
    let read = SendWr {
        wr_id: 1000,
        op: SendOp::Read {
            remote_addr: src.addr(0),
            rkey: src.mr().rkey(),
        },
        local: Sge {
            addr: dst.addr(0),
            len: R as u32,
            lkey: dst.mr().lkey(),
        },
        signaled: true,
    };
    // SAFETY: `dst` is read only after the READ's completion; `src` is registered for
    // remote read and outlives it.
    unsafe { a.post_send(&[read]).unwrap() };
    let w = wait_for(&qa, 1, Duration::from_secs(60));
    assert!(w[0].is_ok() && w[0].opcode == WC_RDMA_READ, "{w:?}");
    assert_eq!(crc(dst.slice(0, R)), want, "READ payload corrupt");

    // Forced into the error state, the QP flushes what is posted, with a status
    // libibverbs names.
    a.to_error().unwrap();
    assert_eq!(
        wyvern::transport::verbs::qp_state_name(a.state().unwrap()),
        "ERR"
    );
    let again = SendWr {
        wr_id: 2000,
        signaled: true,
        ..wrs[0]
    };
    // SAFETY: as above; the request is flushed, `tx` is not touched meanwhile.
    unsafe { a.post_send(&[again]).unwrap() };
    let w = wait_for(&qa, 1, Duration::from_secs(30));
    assert_eq!(w[0].wr_id, 2000);
    assert_eq!(w[0].status, WC_FLUSH_ERR, "{w:?}");
    assert!(
        w[0].status_str().to_lowercase().contains("flush"),
        "{}",
        w[0].status_str()
    );
}

#[test]
fn registering_more_than_the_memlock_limit_says_so() {
    let Some(devs) = devices("memlock") else {
        return;
    };
    let ctx = Context::open(Some(&devs[0])).unwrap();
    let pd = Pd::new(&ctx).unwrap();
    // 1 TiB cannot be mapped here, so the failure is the mmap's or the region's:
    // either way a clear error, never a panic.
    match RegBuf::new(&pd, 1 << 40, Access::LOCAL_WRITE) {
        Ok(_) => eprintln!("registered 1 TiB?! (overcommit and no memlock limit)"),
        Err(e) => assert!(e.to_string().contains(ctx.name()), "{e}"),
    }
}
