//! The batch API: `Endpoint::send_many` and `recv_many`/`try_recv_many`, with
//! real agents (loopback, the suite's transport) and real clients.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::scenarios::T;
use common::*;
use wyvern::client::{Client, Error, Outgoing};

fn size(k: u32) -> usize {
    if k % 50 == 49 {
        100_000
    } else {
        1 + (k as usize * 7) % 300
    }
}

fn bytes(k: u32) -> Vec<u8> {
    (0..size(k))
        .map(|i| (i as u32 ^ k.wrapping_mul(2_654_435_761)) as u8)
        .collect()
}

/// Every message of a mixed batch (small ones and, in their place, large
/// ones) arrives once, in order, intact, to a remote and to a local endpoint;
/// `recv_many` never hands more than asked.
#[test]
fn a_mixed_batch_arrives_in_order_remotely_and_locally() {
    let c = Cluster::start(2, &[]);
    let a = Client::attach(c.socket(0), "batch-tx").unwrap();
    let tx = a.open_endpoint(None).unwrap();
    let local = a.open_endpoint(None).unwrap();
    let b = Client::attach(c.socket(1), "batch-rx").unwrap();
    let rx = b.open_endpoint(None).unwrap();
    let n = 2000u32;
    let data: Vec<Vec<u8>> = (0..n).map(bytes).collect();
    for (node, ep, r) in [(1, rx.id(), &rx), (0, local.id(), &local)] {
        let msgs: Vec<Outgoing<'_>> = data
            .iter()
            .map(|d| Outgoing {
                dst_node: node,
                dst_ep: ep,
                data: d,
            })
            .collect();
        // In batches of 250, each read before the next is sent (the local
        // endpoint's ring holds about a thousand: a client that sends more
        // to itself before reading waits for itself).
        let mut next = 0u32;
        let mut batches = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        for chunk in msgs.chunks(250) {
            let sent = tx.send_many(chunk, Duration::from_secs(30)).unwrap();
            assert_eq!(sent, chunk.len(), "to node {node}");
            let until = next + chunk.len() as u32;
            while next < until {
                assert!(
                    Instant::now() < deadline,
                    "to node {node}: {next} of {n} arrived"
                );
                let got = r
                    .recv_many(64, Duration::from_secs(30), |m| {
                        assert_eq!((m.src_node, m.src_ep), (0, tx.id()));
                        assert!(
                            m.data == data[next as usize].as_slice(),
                            "message {next} to node {node}"
                        );
                        next += 1;
                    })
                    .unwrap();
                assert!((1..=64).contains(&got), "recv_many gave {got}");
                batches += 1;
            }
        }
        assert!(
            r.try_recv_many(64, |_| panic!("a message too many"))
                .unwrap()
                == 0
        );
        println!("node {node}: {n} messages in {batches} receive batches");
    }
    assert!(a.take_errors().is_empty());
    assert!(matches!(
        rx.recv_many(8, Duration::from_millis(50), |_| {}),
        Err(Error::Timeout)
    ));
}

/// A batch larger than the submission ring, to a node that is not there yet
/// (its sends wait): `send_many` submits what fits and says how many when
/// its time runs out; a second call finds no room at all (`WouldBlock`).
#[test]
fn a_batch_the_ring_cannot_take_is_submitted_in_part_and_says_how_much() {
    let absent: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let c = Cluster::start_partial(&[true, false], absent);
    let a = Client::attach(c.socket(0), "batch-partial").unwrap();
    let tx = a.open_endpoint(None).unwrap();
    let payload = vec![7u8; 1000];
    let msgs: Vec<Outgoing<'_>> = (0..100_000)
        .map(|_| Outgoing {
            dst_node: 1,
            dst_ep: 1,
            data: &payload,
        })
        .collect();
    let t0 = Instant::now();
    let sent = tx.send_many(&msgs, Duration::from_millis(300)).unwrap();
    let took = t0.elapsed();
    assert!(sent > 0 && sent < msgs.len(), "sent {sent}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    assert!(matches!(
        tx.send_many(&msgs[sent..], Duration::from_millis(100)),
        Err(Error::WouldBlock)
    ));
    println!("{sent} of {} submitted in {took:?}", msgs.len());
}

/// An endpoint's wait descriptor: armed and nothing there, it stays quiet; a
/// message makes it readable; with a message already waiting, `arm` says so
/// and arms nothing.
#[test]
fn the_wait_descriptor_is_readable_once_a_message_comes() {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use wyvern::client::Mode;
    let c = Cluster::start(2, &[]);
    let a = Client::attach(c.socket(0), "fd-tx").unwrap();
    let tx = a.open_endpoint(None).unwrap();
    let b = Client::attach(c.socket(1), "fd-rx").unwrap();
    let rx = b.open_endpoint(None).unwrap();
    let readable = |ms: u16| {
        let mut fds = [PollFd::new(rx.wait_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(ms)).unwrap() == 1
    };
    assert!(rx.arm().unwrap());
    assert!(!readable(100), "readable with nothing sent");
    let t0 = Instant::now();
    tx.send(1, rx.id(), b"wake", Mode::Buffered, Duration::from_secs(10))
        .unwrap();
    assert!(readable(10_000), "not readable after a message came");
    println!("woken {:?} after the send", t0.elapsed());
    rx.disarm();
    assert!(!rx.arm().unwrap(), "arm did not see the waiting message");
    assert_eq!(rx.try_recv().unwrap().unwrap().data(), b"wake");
    assert!(rx.arm().unwrap());
    rx.disarm();
    assert!(!readable(50), "readable after disarm with nothing new");
}

/// `wyvern-peer --batch` (the node benchmark's batched clients): senders
/// calling `send_many` and a receiver calling `recv_many` move checked
/// streams from a remote node and from its own node (a local deposit), of
/// small and of block-sized messages, every payload intact and in order.
#[test]
fn batched_peers_move_checked_streams_remotely_and_locally() {
    let c = Cluster::start(2, &[]);
    let n = 30_000u64;
    let sizes = "8,64,200,9000";
    let count = (2 * n).to_string();
    let rx = c.peer(
        1,
        &[
            "--batch", "64", "--ep", "7", "--sizes", sizes, "recv", "--count", &count,
        ],
    );
    let n_s = n.to_string();
    let send = |node: usize| {
        c.peer(
            node,
            &[
                "--batch", "64", "--sizes", sizes, "send", "--to", "1:7", "--count", &n_s,
            ],
        )
    };
    let (remote, local) = (send(0), send(1));
    for (name, p) in [("remote sender", remote), ("local sender", local)] {
        let r = p.result(T);
        assert_ok(name, &r);
        assert_eq!(r.0["sent"], n, "{name}: {}", r.0);
    }
    let r = rx.result(T);
    assert_ok("receiver", &r);
    assert_eq!(r.0["received"], 2 * n, "{}", r.0);
    assert_eq!(r.0["corrupt"], 0, "{}", r.0);
    assert_eq!(r.0["out_of_order"], 0, "{}", r.0);
    assert_eq!(
        r.0["senders"].as_object().map(|m| m.len()),
        Some(2),
        "{}",
        r.0
    );
}
