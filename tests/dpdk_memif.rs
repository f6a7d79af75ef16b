//! The dpdk transport between two real agent processes on a memif pair
//! (`net_memif`: DPDK's shared-memory packet interface, no kernel on the data path):
//! node 0 the memif server, node 1 the client (or the other way round), one socket
//! name in the abstract namespace, `--no-pci`, `--vdev` only, an EAL file prefix per
//! process, no hugepages, no namespaces. What is memif's own: frames counted on both
//! sides (nothing received that was not sent), an agent killed and restarted on
//! either side (memif does not reconnect by itself; the agent does), a client started
//! before its server, and jumbo frames (memif's `bsize`). The end-to-end suite runs on
//! memif too (`WYVERN_TEST_TRANSPORT=dpdk WYVERN_TEST_DPDK_DEV=memif --test e2e`).

#![cfg(feature = "dpdk")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::testbed::memif_agent_args;
use common::{assert_ok, counter, stat_settled, Cluster};
use wyvern::transport::datagram::PacketIo;
use wyvern::transport::dpdk::{DpdkIo, DpdkIoConfig, Eal};
use wyvern::wire::packet::{self, PacketHeader, PktKind};
use wyvern::wire::reliable::Ack;

const T: Duration = Duration::from_secs(120);

/// Every size class from 0 B to 64 MiB, inline and block paths on both sides.
const SIZES: &str =
    "0,1,7,8,63,64,65,200,4095,4096,4097,65536,262144,262145,1048576,3000001,67108864";

/// A memif socket name of its own (abstract: no file is made).
fn socket_dir() -> PathBuf {
    static K: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "wyvern-memif-{}-{}",
        std::process::id(),
        K.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Per node: the agent's flags for a memif pair. `client_first`: node 0 is the
/// client (started first, before its server); `vdev_extra` goes on the `--vdev`,
/// `mem` is the EAL's memory in MB. The transport flags are in here, not in the
/// cluster's `extra`, so that a restarted agent gets them too.
fn pair_args(client_first: bool, vdev_extra: &str, mem: u32, more: &[&str]) -> Vec<Vec<String>> {
    let dir = socket_dir();
    let mut args: Vec<Vec<String>> = (0..2)
        .map(|i| {
            let mut a: Vec<String> = ["--transport", "dpdk", "--no-hugepages"]
                .iter()
                .chain(more)
                .map(|s| s.to_string())
                .collect();
            let mut eal = memif_agent_args(&dir, i, vdev_extra);
            eal[1] = eal[1].replace(" -m 64 ", &format!(" -m {mem} "));
            a.extend(eal);
            a
        })
        .collect();
    if client_first {
        args.swap(0, 1);
    }
    args
}

fn pair(client_first: bool, vdev_extra: &str, mem: u32, more: &[&str]) -> Cluster {
    Cluster::start_wrapped(
        2,
        &[],
        vec![],
        pair_args(client_first, vdev_extra, mem, more),
        |_, a| a,
    )
}

/// No loss, nothing malformed, no block leaked; and no frame received that the
/// other side did not send (DPDK 22.11's memif receiver, fed chained descriptors,
/// once handed out an endless stream of frames never sent).
fn check_clean(c: &Cluster) {
    let s: Vec<_> = (0..2).map(|i| stat_settled(c, i)).collect();
    for (i, s) in s.iter().enumerate() {
        let p = &s["peers"][0];
        assert_eq!(p["transport"], "dpdk", "{s}");
        assert_eq!(p["counters"]["losses"], 0, "agent {i}: {s}");
        assert_eq!(p["counters"]["malformed"], 0, "agent {i}: {s}");
        assert_eq!(
            s["blocks_free"], s["blocks_total"],
            "agent {i} leaked blocks: {s}"
        );
        assert_eq!(counter(s, "frames_oversize"), 0, "agent {i}: {s}");
        assert_eq!(counter(s, "frames_foreign_ethertype"), 0, "agent {i}: {s}");
        assert_eq!(counter(s, "packets_corrupt"), 0, "agent {i}: {s}");
    }
    for i in 0..2 {
        // The other side's frames_tx is read after ours' frames_rx: it can only be
        // larger.
        let rx = counter(&c.stat(i), "frames_rx");
        let tx = counter(&c.stat(1 - i), "frames_tx");
        assert!(
            rx <= tx,
            "agent {i} received {rx} frames, agent {} sent {tx}",
            1 - i
        );
    }
}

/// `n` messages of `sizes` each way at once, checked (pattern, order, count).
fn exchange(c: &Cluster, sizes: &str, n: u32, eps: [&str; 4]) {
    let n_s = n.to_string();
    let tmo = ["--timeout-ms", "60000"];
    let rx1 = c.peer(
        1,
        &[
            &tmo[..],
            &["--ep", eps[0], "--sizes", sizes, "recv", "--count", &n_s],
        ]
        .concat(),
    );
    let rx0 = c.peer(
        0,
        &[
            &tmo[..],
            &["--ep", eps[1], "--sizes", sizes, "recv", "--count", &n_s],
        ]
        .concat(),
    );
    let to1 = format!("1:{}", eps[0]);
    let to0 = format!("0:{}", eps[1]);
    let tx0 = c.peer(
        0,
        &[
            &tmo[..],
            &["--ep", eps[2], "--sizes", sizes, "send", "--to", &to1],
            &["--count", &n_s, "--delivered"],
        ]
        .concat(),
    );
    let tx1 = c.peer(
        1,
        &[
            &tmo[..],
            &["--ep", eps[3], "--sizes", sizes, "send", "--to", &to0],
            &["--count", &n_s, "--delivered"],
        ]
        .concat(),
    );
    for (name, p) in [("sender on node 0", tx0), ("sender on node 1", tx1)] {
        let r = p.result(T);
        assert_ok(name, &r);
        assert_eq!(r.0["sent"], n, "{name}: {}", r.0);
    }
    for (name, p) in [("receiver on node 1", rx1), ("receiver on node 0", rx0)] {
        let r = p.result(T);
        assert_ok(name, &r);
        assert_eq!(r.0["received"], n, "{name}: {}", r.0);
        assert_eq!(r.0["corrupt"], 0, "{name}: {}", r.0);
        assert_eq!(r.0["out_of_order"], 0, "{name}: {}", r.0);
    }
}

#[test]
fn every_size_class_arrives_intact_and_in_order_both_ways_on_memif() {
    let c = pair(false, "", 64, &[]);
    let per = 17u64; // each size once per sender
    let tmo = ["--timeout-ms", "100000"];
    let rx1 = c.peer(
        1,
        &[
            &tmo[..],
            &["--ep", "100", "--sizes", SIZES, "recv", "--count", "34"],
        ]
        .concat(),
    );
    let rx0 = c.peer(
        0,
        &[
            &tmo[..],
            &["--ep", "7", "--sizes", SIZES, "recv", "--count", "34"],
        ]
        .concat(),
    );
    let started = Instant::now();
    let mut tx = Vec::new();
    // Endpoints of the senders' own choosing (see tests/dpdk_transport.rs).
    for (node, to, eps) in [(0, "1:100", ["201", "202"]), (1, "0:7", ["203", "204"])] {
        for (delivered, ep) in [false, true].into_iter().zip(eps) {
            let mut args = tmo.to_vec();
            args.extend(["--ep", ep]);
            args.extend(["--sizes", SIZES, "send", "--to", to, "--count", "17"]);
            if delivered {
                args.push("--delivered");
            }
            tx.push(c.peer(node, &args));
        }
    }
    for (k, t) in tx.into_iter().enumerate() {
        let r = t.result(T);
        assert_ok(&format!("sender {k}"), &r);
        assert_eq!(r.0["sent"], per);
    }
    for (name, p) in [("receiver on node 1", rx1), ("receiver on node 0", rx0)] {
        let r = p.result(T);
        assert_ok(name, &r);
        assert_eq!(r.0["received"], per * 2, "{name}: {}", r.0);
        assert_eq!(r.0["corrupt"], 0, "{name}: {}", r.0);
        assert_eq!(r.0["out_of_order"], 0, "{name}: {}", r.0);
        assert_eq!(r.0["senders"].as_object().unwrap().len(), 2, "{}", r.0);
    }
    let secs = started.elapsed().as_secs_f64();
    check_clean(&c);
    let (s0, s1) = (c.stat(0), c.stat(1));
    for s in [&s0, &s1] {
        // memif has no descriptor to wait on here: the agent polls.
        assert_eq!(counter(s, "port_wakes_agent"), 0, "{s}");
        assert!(counter(s, "frames_tx") > 100_000, "{s}");
        assert!(counter(s, "frames_rx") > 100_000, "{s}");
        assert!(counter(s, "frames_tx_broadcast") < 100, "{s}");
        // `dpdk_extbuf = auto` (the default) on memif: large messages' packets go out
        // attached to their blocks.
        assert_eq!(s["transport_info"]["dpdk_tx_path"], "extbuf", "{s}");
        assert!(counter(s, "tx_bytes_attached") > 64 << 20, "{s}");
        assert_eq!(counter(s, "frames_tx_attached_out"), 0, "{s}");
        assert!(counter(s, "packets_rx_in_place") > 0, "{s}");
        // Nobody went away: nothing to connect again.
        assert_eq!(counter(s, "port_restarts"), 0, "{s}");
    }
    let bytes: u64 = 4 * SIZES
        .split(',')
        .map(|s| s.parse::<u64>().unwrap())
        .sum::<u64>();
    eprintln!(
        "dpdk over memif: {:.1} MiB of messages both ways in {secs:.2} s ({:.1} MiB/s); \
         frames tx {} + {}, resent {} + {}",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64 / secs,
        counter(&s0, "frames_tx"),
        counter(&s1, "frames_tx"),
        counter(&s0, "packets_resent"),
        counter(&s1, "packets_resent"),
    );
}

/// The link of a memif pair comes back when either agent is killed (SIGKILL: no
/// goodbye) and started again: the killed client connects to its server again when
/// it starts; the surviving client of a killed server finds its link down and
/// connects to the new server by itself (`port_restarts`), within seconds.
#[test]
fn a_memif_pair_comes_back_when_either_agent_is_killed_and_restarted() {
    let mut c = pair(false, "", 64, &[]);
    let sizes = "8,1500,70000";
    exchange(&c, sizes, 60, ["10", "11", "201", "202"]);
    for (round, victim) in [1, 0, 1, 0].into_iter().enumerate() {
        let t0 = Instant::now();
        c.kill_agent(victim);
        // The survivor notices (its peer stops answering) and the new agent starts.
        std::thread::sleep(Duration::from_millis(300));
        c.restart_agent(victim);
        c.wait_up(victim, 1 - victim as u32);
        c.wait_up(1 - victim, victim as u32);
        let eps = [
            20 + round * 4,
            21 + round * 4,
            300 + round * 4,
            301 + round * 4,
        ]
        .map(|e| e.to_string());
        exchange(&c, sizes, 60, [&eps[0], &eps[1], &eps[2], &eps[3]]);
        eprintln!(
            "round {round}: node {victim} killed, restarted, link up and 120 messages \
             through in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
    }
    // The client (node 1, itself restarted in round 2) lost its server in round 3
    // and connected to the new one by itself.
    let s1 = c.stat(1);
    assert!(counter(&s1, "port_restarts") >= 1, "{s1}");
    assert!(
        c.log(1)
            .contains("(memif client) started again: connecting to its server"),
        "{}",
        c.log(1)
    );
    for i in 0..2 {
        let s = stat_settled(&c, i);
        assert_eq!(s["blocks_free"], s["blocks_total"], "agent {i}: {s}");
        assert_eq!(counter(&s, "frames_oversize"), 0, "agent {i}: {s}");
    }
}

/// Agents of a job start in any order: a memif client whose server is not listening
/// yet starts anyway and connects once the server is there.
#[test]
fn a_memif_client_started_before_its_server_connects_when_the_server_comes() {
    // Node 0 is the client here: the harness starts it (and waits for it to be
    // ready) before node 1, the server.
    let c = pair(true, "", 64, &[]);
    let s0 = c.stat(0);
    assert!(counter(&s0, "port_restarts") >= 1, "{s0}");
    assert!(
        c.log(0).contains("cannot connect to its server yet"),
        "{}",
        c.log(0)
    );
    exchange(&c, "0,8,4097,300000", 40, ["10", "11", "201", "202"]);
    check_clean(&c);
}

/// A jumbo MTU on memif: memif's ethdev says 1518-byte frames at most, but its rings
/// carry whatever their buffers (`bsize`) hold; with bsize=9216 on both ends, 9000-byte
/// packets go through, each in one buffer.
#[test]
fn jumbo_frames_on_memif_carry_messages_when_bsize_holds_them() {
    let c = pair(false, ",bsize=9216", 256, &["--dpdk-mtu", "9000"]);
    for i in 0..2 {
        assert!(c.log(i).contains("MTU 9000"), "{}", c.log(i));
    }
    exchange(
        &c,
        "0,1,64,4097,8999,9000,65536,262145,1048576,3000001",
        30,
        ["100", "7", "201", "202"],
    );
    check_clean(&c);
    for i in 0..2 {
        let s = c.stat(i);
        // Packets longer than a 1500-byte MTU allows went out.
        let bytes = counter(&s, "tx_bytes_copied") + counter(&s, "tx_bytes_attached");
        let frames = counter(&s, "frames_tx");
        assert!(frames > 0 && bytes / frames > 3000, "node {i}: {s}");
    }
}

/// Loud fallback: a jumbo MTU that memif's buffers cannot hold in one piece (`bsize`
/// 2048, the default, against `--dpdk-mtu 9000`; chained descriptors garble DPDK
/// 22.11's receiver) runs at what a buffer holds, 2034 B packets, and says so: once in
/// the log at warn, in `wyvern stat` with the reason and the fix (`bsize=`). Every
/// message, large ones too, arrives intact, nothing chained.
#[test]
fn memif_buffers_smaller_than_dpdk_mtu_run_at_the_buffer_size_and_say_so() {
    // `wyvern doctor` finds it before the agents start: it fails, with the fix.
    let dir = tempfile::tempdir().unwrap();
    let doctor = |more: &[&str]| {
        let o = Command::new(common::WYVERN)
            .args(["doctor", "--json", "--socket"])
            .arg(dir.path().join("a.sock"))
            .args(&pair_args(false, "", 256, more)[1])
            .output()
            .unwrap();
        common::doctor_check(&o, "memif_bsize")
    };
    let (code, v, found, fix) = doctor(&["--dpdk-mtu", "9000"]);
    assert_eq!((code, v.as_str()), (1, "fail"), "{found}");
    assert!(
        found.contains("net_memif0 bsize=2048") && found.contains("dpdk_mtu asks 9000"),
        "{found}"
    );
    assert!(fix.contains("bsize=9014 or more"), "{fix}");
    let (_, v, found, _) = doctor(&["--dpdk-mtu", "2000"]);
    assert_eq!(v, "ok", "{found}");
    let c = pair(false, "", 256, &["--dpdk-mtu", "9000"]);
    exchange(
        &c,
        "0,1,64,2034,2035,4097,9000,65536,262145,1048576",
        20,
        ["100", "7", "201", "202"],
    );
    check_clean(&c);
    for i in 0..2 {
        let s = c.stat(i);
        assert!(counter(&s, "frames_tx_largest") <= 2034, "node {i}: {s}");
        assert!(counter(&s, "frames_tx_largest") > 1500, "node {i}: {s}");
        assert_eq!(s["peers"][0]["packet_bytes"], 2034, "node {i}: {s}");
        let (why, fix) = common::check::degraded_entry(&s, "mtu");
        assert!(
            why.contains("net_memif0's buffers are 2048 B") && why.contains("dpdk_mtu asks 9000"),
            "{why}"
        );
        assert!(
            fix.contains("bsize=9014 or more") && fix.contains("lower dpdk_mtu to 2034"),
            "{fix}"
        );
        common::check::degraded_said(&c, i, "mtu");
    }
}

/// The two ends of a memif pair with different sizes: the server's `bsize` holds 9000
/// B frames, the client's only 2048 (the client's buffers are the pair's). Each agent
/// says in its `Hello` what it receives; the link's packets are the smaller, so the
/// server sends nothing the client would get in chained buffers (dropped).
#[test]
fn a_memif_pair_with_different_bsizes_sends_what_the_smaller_holds() {
    let mut args = pair_args(false, "", 256, &["--dpdk-mtu", "9000"]);
    for a in &mut args[0] {
        *a = a.replace("memif.sock ", "memif.sock,bsize=9216 ");
    }
    assert!(args[0].iter().any(|a| a.contains("bsize=9216")), "{args:?}");
    let c = Cluster::start_wrapped(2, &[], vec![], args, |_, a| a);
    exchange(
        &c,
        "0,1,2034,2035,9000,65536,1048576",
        14,
        ["100", "7", "201", "202"],
    );
    check_clean(&c);
    for i in 0..2 {
        let s = c.stat(i);
        assert!(counter(&s, "frames_tx_largest") <= 2034, "node {i}: {s}");
        assert!(counter(&s, "frames_rx_largest") <= 2034, "node {i}: {s}");
        assert_eq!(s["peers"][0]["packet_bytes"], 2034, "node {i}: {s}");
    }
    // The server runs at 9000 and cuts its packets to the client: said at info.
    let log = c.log(0);
    assert!(log.contains("MTU 9000"), "{log}");
    assert!(
        log.contains("node 1 receives packets of at most 2034 B"),
        "{log}"
    );
}

/// Buffers too small for any packet (`bsize=256`): nothing smaller can run, a clear
/// start-up error naming `bsize`.
#[test]
fn memif_buffers_too_small_for_a_packet_are_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = pair_args(false, ",bsize=256", 256, &[]).remove(0);
    args.splice(
        0..0,
        [
            "agent",
            "--node-id",
            "0",
            "--nodes",
            "127.0.0.1:0,127.0.0.1:0",
            "--socket",
        ]
        .map(String::from),
    );
    args.insert(6, dir.path().join("a.sock").display().to_string());
    let out = Command::new("timeout")
        .arg("60")
        .arg(common::WYVERN)
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "{err}");
    assert!(
        err.contains("net_memif0") && err.contains("bsize=256") && err.contains("bsize=1514"),
        "{err}"
    );
}

/// Sizes for the extbuf tests: small ones (copied), and large ones whose packets
/// are cut from their pool blocks (attached where the path is on).
const LARGE: &str = "0,64,4097,65536,262145,1048576,3000001";

/// Large-message bytes one sender of `n` messages of [`LARGE`] (by turns) sends.
fn large_bytes(n: u64) -> u64 {
    let sizes: Vec<u64> = LARGE.split(',').map(|s| s.parse().unwrap()).collect();
    (0..n).map(|k| sizes[k as usize % sizes.len()]).sum()
}

/// The extbuf tx path on memif (`--dpdk-extbuf auto`; memif copies every frame into
/// its ring inside `tx_burst`): a large message's packets leave as a header mbuf
/// chained to an mbuf attached to its pool block range, and every message arrives
/// intact and in order both ways, at MTU 1500 and at 9000 (`bsize=9216`). With
/// `off`, the same exchange attaches nothing.
#[test]
fn large_messages_go_out_attached_to_their_blocks_with_extbuf_and_copied_with_it_off() {
    for (vdev, mem, more) in [
        ("", 64, vec!["--dpdk-extbuf", "auto"]),
        (
            ",bsize=9216",
            256,
            vec!["--dpdk-extbuf", "auto", "--dpdk-mtu", "9000"],
        ),
        ("", 64, vec!["--dpdk-extbuf", "off"]),
    ] {
        let on = more[1] == "auto";
        let c = pair(false, vdev, mem, &more);
        exchange(&c, LARGE, 21, ["100", "7", "201", "202"]);
        check_clean(&c);
        for i in 0..2 {
            let s = c.stat(i);
            let attached = counter(&s, "tx_bytes_attached");
            let info = &s["transport_info"];
            eprintln!(
                "node {i} {more:?}: frames_tx {} attached {} (copied at the end of a call: \
                 {}), bytes attached {attached} copied {}",
                counter(&s, "frames_tx"),
                counter(&s, "frames_tx_attached"),
                counter(&s, "frames_tx_attached_copied"),
                counter(&s, "tx_bytes_copied"),
            );
            if on {
                assert_eq!(info["dpdk_tx_path"], "extbuf", "node {i} {more:?}: {s}");
                assert_eq!(info["dpdk_extbuf"], "on", "node {i} {more:?}: {s}");
                // Nearly all of the 1 MiB and 3 MB messages (a chunk's first packet
                // carries its frame header too, and is copied).
                let big = 3 * (1048576 + 3000001);
                assert!(attached > big * 9 / 10, "node {i} {more:?}: {s}");
                assert!(counter(&s, "frames_tx_attached") > 0, "node {i}: {s}");
                // Every attached byte was some message's (nothing attached twice:
                // resends are copied, and memif loses nothing).
                assert!(attached <= large_bytes(21), "node {i} {more:?}: {s}");
            } else {
                assert_eq!(info["dpdk_tx_path"], "copy", "node {i}: {s}");
                assert_eq!(
                    info["dpdk_extbuf"], "off: dpdk_extbuf = off",
                    "node {i}: {s}"
                );
                assert_eq!(attached, 0, "node {i}: {s}");
                assert_eq!(counter(&s, "frames_tx_attached"), 0, "node {i}: {s}");
            }
            assert_eq!(counter(&s, "frames_tx_attached_out"), 0, "node {i}: {s}");
        }
    }
}

/// A client killed (SIGKILL) while its 3 MB messages go out attached to their
/// blocks: the agent frees its blocks as it does on the copy path, no mbuf refers
/// to one afterwards (`frames_tx_attached_out` 0, every block free once settled),
/// and the next messages, in the same blocks again, arrive intact and in order.
#[test]
fn a_client_killed_mid_send_leaves_no_block_attached_and_the_next_messages_intact() {
    let c = pair(false, "", 64, &["--dpdk-extbuf", "auto"]);
    let tmo = ["--timeout-ms", "60000"];
    let mut rx = c.peer(
        1,
        &[
            &tmo[..],
            &[
                "--ep", "100", "--sizes", "3000001", "recv", "--count", "100000",
            ],
        ]
        .concat(),
    );
    let mut tx = c.peer(
        0,
        &[
            &tmo[..],
            &["--ep", "201", "--sizes", "3000001", "send", "--to", "1:100"],
            &["--count", "100000"],
        ]
        .concat(),
    );
    // Killed once 20 messages' worth went out attached (bounded: 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = c.stat(0);
        if counter(&s, "tx_bytes_attached") > 60_000_000 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing attached in 60 s: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    tx.kill9();
    rx.kill9();
    exchange(&c, "65536,1048576,3000001", 30, ["101", "8", "202", "203"]);
    for i in 0..2 {
        let s = stat_settled(&c, i);
        assert_eq!(s["blocks_free"], s["blocks_total"], "agent {i}: {s}");
        assert_eq!(counter(&s, "frames_tx_attached_out"), 0, "agent {i}: {s}");
        assert_eq!(counter(&s, "packets_corrupt"), 0, "agent {i}: {s}");
        assert!(counter(&s, "tx_bytes_attached") > 0, "agent {i}: {s}");
    }
}

/// The payload of test packet `k`: its own pattern.
fn pattern(k: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ k.wrapping_mul(131)) as u8)
        .collect()
}

/// What no attached mbuf may outlive: the transport call that queued it. Both ends
/// of a memif pair in this process (`DpdkIo` on each, extbuf on); one call (the
/// client's) sends more
/// attached packets than memif's ring (1024) and the send queue hold, so the ring
/// is full and frames wait in the queue when the call ends (`flush`). Those are
/// copied then: right after, every payload buffer is overwritten (as a block
/// reused by the agent would be), and yet every frame the other end receives is
/// the packet as sent (its checksum and bytes), none lost, the copied ones
/// counted (`frames_tx_attached_copied`) and no attached mbuf out.
#[test]
fn attached_frames_the_ring_did_not_take_are_copied_at_the_end_of_the_call() {
    let dir = socket_dir();
    let prefix = dir.file_name().unwrap().to_string_lossy().into_owned();
    let sock = format!("socket={}/memif.sock", dir.display());
    let args: Vec<String> = [
        "--no-pci".to_string(),
        format!("--vdev=net_memif0,role=server,{sock}"),
        format!("--vdev=net_memif1,role=client,{sock}"),
        format!("--file-prefix={prefix}"),
        "--no-shconf".into(),
        "--no-huge".into(),
        "-m".into(),
        "128".into(),
        "--no-telemetry".into(),
        "--lcores=0@(0-1)".into(),
        "--log-level=lib.eal:warning".into(),
    ]
    .to_vec();
    let eal = Eal::init(&args).expect("EAL with both ends of a memif pair");
    let cfg = |me| DpdkIoConfig {
        me,
        nodes: 2,
        eal_args: args.clone(),
        extbuf: true,
        ..DpdkIoConfig::default()
    };
    let mut a = DpdkIo::open_port(&eal, &cfg(0), Some("net_memif0"), "xa").unwrap();
    let mut b = DpdkIo::open_port(&eal, &cfg(1), Some("net_memif1"), "xb").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(a.link_up() && b.link_up()) {
        assert!(Instant::now() < deadline, "memif pair not up in 20 s");
        // (An empty poll lets the client look at its link.)
        let _ = b.recv().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    // The client sends: its ring to the server has every slot free at once (the
    // server's ring to it gets slots as the client receives).
    assert_eq!(b.tx_path(), "extbuf");
    const N: u64 = 2000;
    const LEN: usize = 1400;
    let mut payloads: Vec<Vec<u8>> = (0..N).map(|k| pattern(k, LEN)).collect();
    let header = |k: u64| PacketHeader {
        kind: PktKind::Data,
        flags: 0,
        src_node: 1,
        dst_node: 0,
        src_epoch: 1,
        dst_epoch: 2,
        seq: k,
        ack: Ack::default(),
    };
    // One "transport call": sends until the device refuses, then flushes.
    let mut sent = Vec::new();
    for (k, p) in payloads.iter().enumerate() {
        if b.send_packet(0, &header(k as u64), p, true).unwrap() {
            sent.push(k as u64);
        }
    }
    b.flush();
    let copied = b.stats().tx_attached_copied;
    let out = |io: &DpdkIo| {
        io.counters()
            .into_iter()
            .find(|(n, _)| *n == "frames_tx_attached_out")
            .unwrap()
            .1
    };
    assert_eq!(out(&b), 0, "{:?}", b.stats());
    assert!(copied > 0, "the ring never filled: {:?}", b.stats());
    assert!(sent.len() > 1024, "{} sent", sent.len());
    // The blocks are reused.
    for p in &mut payloads {
        p.fill(0xff);
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} frames arrived; {:?}",
            got.len(),
            sent.len(),
            b.stats()
        );
        while let Some(f) = a.recv().unwrap() {
            let (h, p) = packet::decode(&f).expect("a frame as sent (checksum)");
            assert_eq!(p, &pattern(h.seq, LEN)[..], "packet {}", h.seq);
            got.push(h.seq);
            a.release(f);
        }
        // What waited in the send queue (copies now) goes as the ring empties.
        b.flush();
    }
    assert_eq!(got, sent, "every frame once, in order");
    let s = b.stats();
    eprintln!(
        "{} sent, {} attached, {copied} of them copied at the end of the call",
        sent.len(),
        s.tx_attached + copied
    );
    assert_eq!(s.tx_attached + copied, sent.len() as u64, "{s:?}");
    assert_eq!(s.tx_bytes_attached, s.tx_attached * LEN as u64, "{s:?}");
    assert_eq!(out(&b), 0);
}
