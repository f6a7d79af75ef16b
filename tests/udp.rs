//! The udp transport's own set-ups for shared scenarios (the whole end-to-end
//! suite also runs on it: `WYVERN_TEST_TRANSPORT=udp cargo test --test e2e`): an
//! impaired hop between two agents (a relay in front of node 0), and garbage
//! datagrams from the network (a socket of this test).

mod common;

use std::net::UdpSocket;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::relay::{Impair, Relay};
use common::scenarios::{self, Impaired};
use common::{assert_ok, check, counter, Cluster};
use wyvern::wire::packet::{encode, PacketHeader, PktKind, FLAG_NOT_UP};
use wyvern::wire::{job_hash, Hello};

/// How long a client process of these tests may take.
const T: Duration = Duration::from_secs(120);

#[test]
fn impaired_link_delivers_every_message_once_in_order_and_intact() {
    // (`--connect all`: node 0 learns node 1's address from what the relay
    // brings, so both directions cross it, under any WYVERN_TEST_CONNECT.)
    // Node 1 reaches node 0 only through a relay that loses 5 %, holds back
    // (reorders) 25 %, duplicates 2 % and damages 1 % of the datagrams, both
    // ways.
    let mut relay = None;
    let c = Cluster::start_via(2, &["--transport", "udp", "--connect", "all"], |i, a| {
        if i != 0 {
            return a;
        }
        let r = Relay::start(
            a,
            Impair {
                loss: 5,
                reorder: 25,
                duplicate: 2,
                corrupt: 1,
            },
        );
        let addr = r.addr;
        relay = Some(r);
        addr
    });
    let relay = relay.unwrap();
    let label = format!("(relay seed {}, replay with WYVERN_RELAY_SEED)", relay.seed);
    scenarios::impaired_link(&c, 240, &label, || {
        let st = &relay.stats;
        Impaired {
            forwarded: st.forwarded.load(Relaxed),
            dropped: st.dropped.load(Relaxed),
            held: st.held.load(Relaxed),
            duplicated: st.duplicated.load(Relaxed),
            corrupted: st.corrupted.load(Relaxed),
        }
    });
}

/// Goodput through the impaired relay (5 % loss, 25 % reordering, 2 %
/// duplicates, 1 % damage, both ways) against the same transfer through a
/// clean relay in the same run, and pure reordering (50 %) likewise: at
/// least `FLOOR` of it (loose: a loaded 2-core CI machine; the relay is one
/// user-space thread). On the 2-core dev VM, debug build, 2026-12-07: at
/// load 10 before loss by count and the ack every second packet, 1.5 MB/s
/// against 17.8 (0.08); after, at load ~7, 3.6 and 5.2 (pure reordering)
/// against 16.0 (0.22, 0.33).
#[test]
fn impaired_link_goodput_keeps_a_floor_of_the_clean_link() {
    const FLOOR: f64 = 0.05;
    let mib = 32;
    let goodput = |imp: Impair| {
        let mut relay = None;
        let c = Cluster::start_via(2, &["--transport", "udp", "--connect", "all"], |i, a| {
            if i != 0 {
                return a;
            }
            let r = Relay::start(a, imp);
            let addr = r.addr;
            relay = Some(r);
            addr
        });
        let relay = relay.unwrap();
        let n = mib.to_string();
        let rx = c.peer(
            0,
            &[
                "--ep", "10", "--raw", "--sizes", "1048576", "recv", "--count", &n,
            ],
        );
        let tx = c.peer(
            1,
            &[
                "--raw", "--sizes", "1048576", "send", "--to", "0:10", "--count", &n,
            ],
        );
        assert_ok(
            &format!("sender (relay seed {})", relay.seed),
            &tx.result(T),
        );
        let r = rx.result(T);
        assert_ok(&format!("receiver (relay seed {})", relay.seed), &r);
        assert_eq!(r.0["received"], mib, "{}", r.0);
        assert_eq!(r.0["out_of_order"], 0, "{}", r.0);
        let secs = r.0["secs"].as_f64().unwrap_or(f64::INFINITY);
        let s = c.stat(1);
        eprintln!(
            "{imp:?}: {:.1} MB/s; sender: resent {} (RACK {}, tail probes {}, timeouts {}), spurious {}, undos {}, random {} / congestion {} episodes",
            mib as f64 * 1.048576 / secs,
            counter(&s, "packets_resent"),
            counter(&s, "packets_resent_fast"),
            counter(&s, "packets_resent_tail_probe"),
            counter(&s, "packets_resent_timeout"),
            counter(&s, "packets_resent_spurious"),
            counter(&s, "congestion_undos"),
            counter(&s, "loss_episodes_random"),
            counter(&s, "loss_episodes_congestion"),
        );
        if imp.reorder > 0 && imp.loss == 0 && imp.duplicate == 0 && imp.corrupt == 0 {
            // Nothing doubled on the way: the receiver's duplicates are
            // needless resends (tail probes' among them), each reported to
            // the sender (D-SACK), which must see most of them so (through
            // the bench hop it saw 40 of 1,945 before resends were
            // remembered apart from their loss episode).
            let dups = counter(&c.stat(0), "packets_duplicate");
            let needless = dups.saturating_sub(counter(&s, "packets_resent_tail_probe"));
            let seen = counter(&s, "packets_resent_spurious");
            assert!(
                needless < 8 || seen * 2 >= needless,
                "{imp:?}: {seen} of {needless} needless resends seen as such ({dups} duplicates)"
            );
        }
        // The sender's socket sends gathered packets, several per call; the
        // receiver's takes what waits with recvmmsg.
        let r0 = c.stat(0);
        let (rcalls, rgot) = (
            counter(&r0, "udp_rx_batches"),
            counter(&r0, "udp_rx_batched"),
        );
        assert!(
            rcalls > 0 && rgot >= rcalls,
            "{imp:?}: {rgot} datagrams in {rcalls} recvmmsg calls"
        );
        let (calls, sent) = (counter(&s, "udp_tx_batches"), counter(&s, "udp_tx_batched"));
        assert!(
            calls > 0 && sent > calls,
            "{imp:?}: {sent} packets in {calls} sendmmsg calls"
        );
        mib as f64 / secs
    };
    let clean = goodput(Impair {
        loss: 0,
        reorder: 0,
        duplicate: 0,
        corrupt: 0,
    });
    // The worst setting, and pure reordering (nothing lost: every
    // resend a mistake of the loss detection).
    let imp = |loss, reorder, duplicate, corrupt| Impair {
        loss,
        reorder,
        duplicate,
        corrupt,
    };
    let mut low = Vec::new();
    for i in [imp(5, 25, 2, 1), imp(0, 50, 0, 0)] {
        let impaired = goodput(i);
        if impaired < clean * FLOOR {
            low.push(format!(
                "{i:?}: {impaired:.1} MiB/s, clean {clean:.1} MiB/s: below {FLOOR} of it"
            ));
        }
    }
    assert!(low.is_empty(), "{low:?}");
}

#[test]
fn garbage_datagrams_are_counted_and_dropped() {
    let c = Cluster::start(2, &["--transport", "udp"]);
    let target = c.nodes[1];
    let (before, s) = scenarios::garbage_is_counted_and_dropped(&c, || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let h = scenarios::garbage_header();
        for i in 0..200u32 {
            for p in scenarios::garbage_datagrams(i) {
                sock.send_to(&p, target).unwrap();
            }
            // A Hello claiming to be node 0, from an agent of another job (a
            // stale address reused on a shared host): it must not take node 0's
            // place (the scenario checks the link never resumed).
            let intruder = Hello {
                node: 0,
                nodes: 2,
                incarnation: 7,
                job: job_hash(Some("another job")),
                caps: wyvern::wire::caps::UDP,
                fabric: 0,
            };
            let mut p = Vec::new();
            let hh = PacketHeader {
                kind: PktKind::Hello,
                flags: FLAG_NOT_UP,
                src_epoch: 4242 + i as u64,
                dst_epoch: 0,
                ..h
            };
            encode(&hh, &intruder.to_bytes(), &mut p);
            sock.send_to(&p, target).unwrap();
        }
    });
    // The intruders' Hellos are foreign too: 200 junk (some), 200 from node 9,
    // 200 of another job.
    let d = |name| common::counter(&s, name) - common::counter(&before, name);
    assert!(d("packets_foreign") >= 500, "{s}");
    check::all_up(&s);
}

/// Peers with different datagram sizes: node 0 sends up to 8972 B (`--packet-bytes`,
/// a 9000-byte MTU), node 1 receives at most 1472. Node 1 read a longer datagram cut
/// short to its buffer (a failed checksum): every large packet was lost, resent at the
/// same size, lost again. Each end's Hello says what it receives and the link's
/// datagrams are the smaller: everything arrives, nothing damaged.
#[test]
fn peers_with_different_packet_bytes_send_each_other_what_the_smaller_receives() {
    let c = Cluster::start_wrapped(
        2,
        &["--transport", "udp"],
        vec![],
        vec![
            vec!["--packet-bytes".into(), "8972".into()],
            vec!["--packet-bytes".into(), "1472".into()],
        ],
        |_, a| a,
    );
    scenarios::Traffic::new(&c, "0,1,1400,1472,1473,8972,65536,1048576")
        .timeout_ms(30_000)
        .recv(1, 100, 16)
        .recv(0, 7, 16)
        .send(0, (1, 100), 16, scenarios::Mode::Delivered)
        .send(1, (0, 7), 16, scenarios::Mode::Delivered)
        .start()
        .finish("(packet_bytes 8972 and 1472)");
    for i in 0..2 {
        let s = check::settled_clean(&c, i);
        assert_eq!(counter(&s, "packets_corrupt"), 0, "node {i}: {s}");
        assert_eq!(s["peers"][0]["packet_bytes"], 1472, "node {i}: {s}");
    }
    let log = c.log(0);
    let said = "node 1 receives packets of at most 1472 B: packets to it are cut to 1472 B";
    assert_eq!(log.matches(said).count(), 1, "{log}");
}
