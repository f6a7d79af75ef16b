//! The agent logic in an in-process simulation (`tests/common/sim.rs`): two
//! real agents on one thread, joined by a simulated, seeded network in
//! virtual time (the only stand-in: the network; everything else is the real
//! agent, its shared memory and real clients). What takes seconds of timers
//! on real agents (a partition outlasting the peer timeout, heartbeats through
//! it) runs here in a fraction of that, on a network whose every drop,
//! duplicate and reordering comes from a seed.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::sim::{payload, size_of, Sim};
use wyvern::client::{Client, Error};
use wyvern::proto::Mode;
use wyvern::transport::sim::Impair;

/// The receiving endpoint on every node.
const RX_EP: u32 = 1;
/// The sending endpoint on every node.
const TX_EP: u32 = 2;

/// Every node sends `n` messages of every size class to every other node's
/// [`RX_EP`] (one sender and one receiver client per node, each on its own
/// thread), and every receiver checks it got each node's messages once, in
/// order and intact. `during` runs on the test's thread while they do.
fn exchange(sim: &Sim, n: u32, during: impl FnOnce()) {
    let nodes = sim.sockets.len();
    let start = Arc::new(Barrier::new(2 * nodes + 1));
    let mut threads = vec![];
    for i in 0..nodes {
        let sock = sim.sockets[i].clone();
        let go = start.clone();
        threads.push(std::thread::spawn(move || {
            let c = Client::attach(&sock, &format!("rx{i}")).expect("attach");
            let ep = c.open_endpoint(Some(RX_EP)).expect("endpoint");
            go.wait();
            let mut next = vec![0u32; nodes];
            let want = n * (nodes as u32 - 1);
            for got in 0..want {
                let m = ep
                    .recv(Duration::from_secs(60))
                    .unwrap_or_else(|e| panic!("node {i}: message {got} of {want}: {e}"));
                let src = m.src_node;
                let k = next[src as usize];
                assert_eq!(m.src_ep, TX_EP);
                let want = payload(src, k, size_of(k));
                if m.data() != want.as_slice() {
                    let same: Vec<u32> = (0..n)
                        .filter(|&j| size_of(j) == m.data().len() && m.data() == payload(src, j, size_of(j)))
                        .collect();
                    panic!(
                        "node {i}: message {k} from node {src} is not what was sent: {}; it is message {same:?}",
                        mismatch(m.data(), &want)
                    );
                }
                next[src as usize] += 1;
            }
            assert!(
                ep.try_recv().unwrap().is_none(),
                "node {i}: a message too many"
            );
        }));
        let sock = sim.sockets[i].clone();
        let go = start.clone();
        threads.push(std::thread::spawn(move || {
            let c = Client::attach(&sock, &format!("tx{i}")).expect("attach");
            let ep = c.open_endpoint(Some(TX_EP)).expect("endpoint");
            go.wait();
            for k in 0..n {
                for j in (0..nodes as u32).filter(|&j| j != i as u32) {
                    let data = payload(i as u32, k, size_of(k));
                    ep.send(j, RX_EP, &data, Mode::Buffered, Duration::from_secs(60))
                        .unwrap_or_else(|e| panic!("node {i}: send {k} to {j}: {e}"));
                }
            }
            assert!(c.take_errors().is_empty(), "node {i}: send errors");
        }));
    }
    start.wait();
    during();
    for t in threads {
        t.join().expect("a client thread failed");
    }
}

/// Where `got` differs from `want`: lengths, the first and last differing
/// byte, how many differ (to tell a shifted, stale or foreign range apart).
fn mismatch(got: &[u8], want: &[u8]) -> String {
    let n = got.len().min(want.len());
    let diff: Vec<usize> = (0..n).filter(|&i| got[i] != want[i]).collect();
    format!(
        "{} bytes (sent {}), {} differ, first at {:?}, last at {:?}",
        got.len(),
        want.len(),
        diff.len(),
        diff.first(),
        diff.last()
    )
}

fn report(sim: &Sim, what: &str, wall: Duration) {
    let s = sim.stat(0);
    println!(
        "{what}: {:.2} s virtual in {:.2} s wall, {} rounds; network {:?}; node 0 transport {:?}",
        sim.elapsed().as_secs_f64(),
        wall.as_secs_f64(),
        sim.rounds(),
        sim.net_stats(),
        s.transport
    );
}

fn peer_counters(sim: &Sim, i: usize, j: usize) -> wyvern::agent::stats::PeerCounters {
    let s = sim.stat(i);
    let p = s.peers.into_iter().find(|p| p.node == j as u32);
    p.expect("the peer in the stat").counters
}

#[test]
fn sim_every_size_class_crosses_an_impaired_network_once_in_order_and_intact() {
    let im = Impair {
        loss: 0.05,
        reorder: 0.25,
        dup: 0.02,
        corrupt: 0.01,
        ..Impair::clean()
    };
    let sim = Sim::start(2, im, 0x5eed_0001, |_| {});
    let t0 = Instant::now();
    exchange(&sim, 160, || {});
    report(&sim, "impaired", t0.elapsed());
    let net = sim.net_stats();
    assert!(net.dropped > 0 && net.held > 0 && net.duplicated > 0 && net.corrupted > 0);
    let s = sim.stat(1);
    let t = |k: &str| s.transport.get(k).copied().unwrap_or(0);
    assert!(
        t("packets_resent") > 0,
        "losses were repaired without a resend?"
    );
    assert!(
        t("packets_corrupt") > 0,
        "corrupted packets were not caught"
    );
    for i in 0..2 {
        let c = peer_counters(&sim, i, 1 - i);
        assert_eq!(
            c.losses, 0,
            "node {i} lost its peer on a lossy (not dead) network"
        );
        assert_eq!(c.malformed, 0);
    }
}

#[test]
fn sim_a_partition_shorter_than_the_peer_timeout_loses_and_repeats_nothing() {
    let sim = Sim::start(2, Impair::clean(), 2, |_| {});
    let t0 = Instant::now();
    exchange(&sim, 200, || {
        // Mid-stream: cut for 2 s of virtual time (the peer timeout is 3 s;
        // after the heal the links' resends back off at most 500 ms). The
        // network heals itself at that instant of virtual time (the sim
        // thread runs on while this one is scheduled or asks for a stat).
        sim.run_for(Duration::from_millis(3));
        let cut_at = sim.elapsed();
        sim.net.cut_for(0, 1, Duration::from_secs(2));
        sim.run_for(Duration::from_millis(2100));
        let (a, b) = (sim.state(0, 1), sim.state(1, 0));
        assert!(
            a == "up" && b == "up",
            "a 2 s partition took a link down: {a}, {b}"
        );
        println!("cut from {cut_at:?} for 2 s");
    });
    report(&sim, "partition 2 s", t0.elapsed());
    assert!(
        sim.net_stats().cut > 0,
        "the partition cut nothing: too late?"
    );
    for i in 0..2 {
        let c = peer_counters(&sim, i, 1 - i);
        assert_eq!(c.losses, 0, "node {i} declared its peer lost");
        assert_eq!(c.msgs_tx, 200, "node {i}");
        assert_eq!(c.msgs_rx, 200, "node {i}");
    }
}

#[test]
fn sim_a_partition_longer_than_the_peer_timeout_fails_sends_and_the_peer_comes_back() {
    let sim = Sim::start(2, Impair::clean(), 3, |_| {});
    let c = Client::attach(&sim.sockets[0], "tx").unwrap();
    let ep = c.open_endpoint(Some(TX_EP)).unwrap();
    let r = Client::attach(&sim.sockets[1], "rx").unwrap();
    let rx = r.open_endpoint(Some(RX_EP)).unwrap();
    let t = Duration::from_secs(30);
    ep.send(1, RX_EP, b"before", Mode::Delivered, t).unwrap();
    assert_eq!(rx.recv(t).unwrap().data(), b"before");

    sim.net.set_cut(0, 1, true);
    let cut_at = sim.elapsed();
    // Waits (in wall time) while virtual time runs past the peer timeout.
    let e = ep
        .send(1, RX_EP, b"during", Mode::Delivered, t)
        .expect_err("a send into a partition outlasting the peer timeout succeeded");
    let waited = sim.elapsed() - cut_at;
    assert!(matches!(e, Error::Send(_)), "{e}");
    assert!(e.to_string().contains("lost"), "{e}");
    assert!(
        // From the peer's last word (a heartbeat, at most 100 ms before the
        // cut) plus the peer timeout, not twice the timeout (as it was when
        // the datagram link timed out first and the session then waited
        // another timeout for a new link).
        waited >= Duration::from_millis(2850) && waited < Duration::from_millis(3500),
        "the peer was given up after {waited:?} of virtual time (timeout 3 s)"
    );
    let st = sim.state(0, 1);
    assert!(st.starts_with("lost"), "{st}");
    assert!(
        rx.try_recv().unwrap().is_none(),
        "a message crossed the cut"
    );

    sim.net.set_cut(0, 1, false);
    sim.wait_virtual(Duration::from_secs(10), "the peer back up", |s| {
        s.state(0, 1) == "up" && s.state(1, 0) == "up"
    });
    ep.send(1, RX_EP, b"after", Mode::Delivered, t).unwrap();
    assert_eq!(rx.recv(t).unwrap().data(), b"after");
    assert!(peer_counters(&sim, 0, 1).losses >= 1);
    println!(
        "lost after {waited:?} virtual; whole test {:?} virtual",
        sim.elapsed()
    );
}

#[test]
fn sim_a_restarted_agent_is_a_new_session_and_its_partner_says_so() {
    let sim = Sim::start(2, Impair::clean(), 4, |_| {});
    let t = Duration::from_secs(30);
    let c = Client::attach(&sim.sockets[0], "tx").unwrap();
    let ep = c.open_endpoint(Some(TX_EP)).unwrap();
    {
        let r = Client::attach(&sim.sockets[1], "rx").unwrap();
        let rx = r.open_endpoint(Some(RX_EP)).unwrap();
        ep.send(1, RX_EP, b"to the first", Mode::Delivered, t)
            .unwrap();
        assert_eq!(rx.recv(t).unwrap().data(), b"to the first");
        sim.restart(1);
        // The old agent is gone: its client hears so.
        assert!(
            rx.recv(t).is_err(),
            "a client of a dead agent still receives"
        );
    }
    let r = Client::attach(&sim.sockets[1], "rx again").unwrap();
    let rx = r.open_endpoint(Some(RX_EP)).unwrap();
    // Node 0 notices the new incarnation (its Hello) and starts a new
    // session; what it sends from then on reaches the new agent.
    sim.wait_virtual(
        Duration::from_secs(10),
        "node 0 up with the new agent",
        |s| s.state(0, 1) == "up" && s.state(1, 0) == "up" && peer_counters(s, 0, 1).losses >= 1,
    );
    ep.send(1, RX_EP, b"to the second", Mode::Delivered, t)
        .unwrap();
    assert_eq!(rx.recv(t).unwrap().data(), b"to the second");
    assert_eq!(
        peer_counters(&sim, 1, 0).msgs_rx,
        1,
        "the new agent got an old message"
    );
    println!("restart: {:?} of virtual time in all", sim.elapsed());
}

/// On-demand links (the default): a restarted agent says nothing to the
/// peers its old incarnation talked to (it has no link it wants); the
/// peer that had a session with the old one must not stay stuck on it: its
/// next packet (a heartbeat) makes the new agent say who it is, the old
/// session is given up at once (what was in flight in it failed to its
/// sender), and its next send reaches the new agent.
#[test]
fn sim_on_demand_a_partner_of_a_restarted_agent_is_not_stuck() {
    let sim = Sim::start_on_demand(3, Impair::clean(), 5);
    let t = Duration::from_secs(30);
    let c = Client::attach(&sim.sockets[0], "tx").unwrap();
    let ep = c.open_endpoint(Some(TX_EP)).unwrap();
    {
        let r = Client::attach(&sim.sockets[1], "rx").unwrap();
        let rx = r.open_endpoint(Some(RX_EP)).unwrap();
        ep.send(1, RX_EP, b"to the first", Mode::Delivered, t)
            .unwrap();
        assert_eq!(rx.recv(t).unwrap().data(), b"to the first");
        assert_eq!(sim.state(0, 1), "up");
        sim.restart(1);
    }
    let r = Client::attach(&sim.sockets[1], "rx again").unwrap();
    let rx = r.open_endpoint(Some(RX_EP)).unwrap();
    let restarted = sim.elapsed();
    let took = sim.watch(
        Duration::from_secs(10),
        "node 0 done with the old incarnation",
        |a| a[0].sim_census().losses >= 1,
    ) - restarted;
    println!(
        "node 0 gave the old incarnation up after {took:?}: {}",
        sim.state(0, 1)
    );
    // Its heartbeat (every 100 ms) reached the new agent, which answered
    // with its Hello: not the 3 s peer timeout of silence.
    assert!(
        took < Duration::from_millis(300),
        "node 0 held on to the old incarnation for {took:?}"
    );
    ep.send(1, RX_EP, b"to the second", Mode::Delivered, t)
        .unwrap();
    assert_eq!(rx.recv(t).unwrap().data(), b"to the second");
    assert_eq!(sim.state(0, 1), "up");
    assert_eq!(sim.state(1, 0), "up");
    assert_eq!(
        sim.state(1, 2),
        "idle",
        "the new agent linked to a peer it never wanted"
    );
}

/// A receiving agent holds the peer back mid-frame when a ring is full and
/// it may park nothing (`overflow_bytes` 0): part of a frame's messages are
/// delivered, the rest wait. A link broken then is resumed with that frame
/// sent again whole; the messages delivered from it already must not be
/// delivered twice (nor any lost). A slow receiver on node 1 (a pause every
/// few messages, in wall time), small messages from node 0 (many to a
/// frame), the link broken again and again from either side.
#[test]
fn sim_a_link_broken_while_a_full_ring_holds_a_frame_half_handled_repeats_nothing() {
    let sim = Sim::start(2, Impair::clean(), 6, |c| c.overflow_bytes = 0);
    let n = 20_000u32;
    let len = |k: u32| 8 + (k % 3) as usize * 40;
    let go = Arc::new(Barrier::new(3));
    let rx_sock = sim.sockets[1].clone();
    let ready = go.clone();
    let rx = std::thread::spawn(move || {
        let c = Client::attach(&rx_sock, "slow rx").expect("attach");
        let ep = c.open_endpoint(Some(RX_EP)).expect("endpoint");
        ready.wait();
        for k in 0..n {
            let m = ep
                .recv(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("message {k} of {n}: {e}"));
            let want = payload(0, k, len(k));
            if m.data() != want.as_slice() {
                let was = (0..k)
                    .rev()
                    .take(4096)
                    .find(|&j| m.data() == payload(0, j, len(j)).as_slice());
                panic!(
                    "message {k}: not what was sent ({}); it is message {was:?} again",
                    mismatch(m.data(), &want)
                );
            }
            if k % 64 == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        assert!(ep.try_recv().unwrap().is_none(), "a message too many");
    });
    let tx_sock = sim.sockets[0].clone();
    let ready = go.clone();
    let tx = std::thread::spawn(move || {
        let c = Client::attach(&tx_sock, "tx").expect("attach");
        let ep = c.open_endpoint(Some(TX_EP)).expect("endpoint");
        ready.wait();
        for k in 0..n {
            ep.send(
                1,
                RX_EP,
                &payload(0, k, len(k)),
                Mode::Buffered,
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("send {k}: {e}"));
        }
        assert!(c.take_errors().is_empty(), "send errors");
    });
    go.wait();
    let mut breaks = 0;
    while !rx.is_finished() && breaks < 40 {
        std::thread::sleep(Duration::from_millis(20));
        if peer_counters(&sim, 1, 0).rx_stalls == 0 {
            continue;
        }
        let side = breaks % 2;
        if wyvern::client::break_link(&sim.sockets[side], 1 - side as u32).is_ok() {
            breaks += 1;
        }
    }
    tx.join().expect("the sender failed");
    rx.join().expect("the receiver failed");
    let c = peer_counters(&sim, 1, 0);
    println!(
        "{breaks} breaks, {} stalls, {} resumes",
        c.rx_stalls, c.resumes
    );
    assert!(breaks >= 5 && c.rx_stalls > 0, "{breaks} breaks, {c:?}");
    assert_eq!(c.losses, 0);
    assert_eq!(c.msgs_rx, n as u64, "{c:?}");
}
