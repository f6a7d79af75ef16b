//! An authenticated but hostile peer that makes the receiving agent reserve
//! pool blocks for large messages it never finishes (the `peer_rx_bytes`
//! bound, `src/agent/rx.rs`: `chunk_target` on the normal path, the sum in
//! `try_steer` on the path that reads a chunk straight into its block).
//!
//! The fake peer (tests/common/fakepeer.rs) plays node 1 of three on tcp;
//! nodes 0 and 2 are real agents and exchange honest traffic meanwhile. What
//! the agent holds for the peer is read from `wyvern stat`
//! (`rx_reassembly_bytes` per peer, and `blocks_free`).
//!
//! On tcp a stream carries the chunks' bytes, so one steer is under way at a
//! time and a steered chunk ends before the next frame is read: the sum in
//! `try_steer` meets at most the message it is asked about (it refuses a
//! message larger than the bound alone, before `chunk_target` would refuse
//! it a second time). Several messages held at once (the sum of more than
//! one) only happen on verbs (steer depth 8), which no fake peer plays: see
//! `messages_steered_at_once_from_one_peer_stay_within_peer_rx_bytes` in
//! tests/verbs_transport.rs (the Soft-RoCE VM, an honest sender).

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::fakepeer::FakePeer;
use common::*;
use serde_json::Value;
use wyvern::wire::{FrameBuilder, RecordHeader, RecordKind, MAX_BODY};

const T: Duration = Duration::from_secs(60);
/// What one peer may hold for reassembly (`--peer-rx-bytes`).
const LIMIT: u64 = 1 << 20;
/// A message below the bound (a multiple of the block unit: reserved as is).
const BELOW: u64 = 768 << 10;
/// The endpoint on node 0 the fake peer writes to.
const VICTIM_EP: u32 = 33;

/// Nodes 0 and 2 real, node 1 played by the test; every agent takes at most
/// [`LIMIT`] from one peer.
fn cluster() -> Cluster {
    let absent: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let limit = LIMIT.to_string();
    Cluster::start_partial_with(
        &[true, false, true],
        absent,
        &["--transport", "tcp", "--peer-rx-bytes", &limit],
        vec![],
    )
}

/// Peer `node`'s entry in agent stat `s`.
fn peer(s: &Value, node: u32) -> Value {
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == node)
        .cloned()
        .unwrap_or(Value::Null)
}

fn held(s: &Value, node: u32) -> u64 {
    peer(s, node)["rx_reassembly_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx_reassembly_bytes for node {node}: {s}"))
}

fn peer_counter(s: &Value, node: u32, name: &str) -> u64 {
    peer(s, node)["counters"][name].as_u64().unwrap_or(0)
}

/// Poll agent 0's stat every 20 ms until `f` holds, for at most 10 s; gives
/// the last stat and whether it held.
fn wait_stat(c: &Cluster, mut f: impl FnMut(&Value) -> bool) -> (Value, bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.stat(0);
        if f(&s) {
            return (s, true);
        }
        if Instant::now() > deadline {
            return (s, false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Honest traffic from node 2 to node 0: `n` messages of `size` bytes (large
/// ones are reassembled in pool blocks too), all delivered.
fn honest(c: &Cluster, ep: u32, n: u64, size: u64) {
    let (n_s, size_s, ep_s) = (n.to_string(), size.to_string(), ep.to_string());
    let rx = c.peer(
        0,
        &["--ep", &ep_s, "--sizes", &size_s, "recv", "--count", &n_s],
    );
    let to = format!("0:{ep}");
    let tx = c.peer(
        2,
        &[
            "--sizes",
            &size_s,
            "send",
            "--to",
            &to,
            "--count",
            &n_s,
            "--delivered",
        ],
    );
    assert_ok("honest sender on node 2", &tx.result(T));
    let r = rx.result(T);
    assert_ok("honest receiver on node 0", &r);
    assert_eq!(r.0["received"], n, "{}", r.0);
}

/// The first chunk of a large message of `total` bytes with `chunk` bytes.
fn first_chunk(dst_ep: u32, total: u64, chunk: usize, cookie: u64) -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Msg,
        flags: 0,
        status: 0,
        src_ep: 5,
        dst_ep,
        chunk_len: chunk as u32,
        total,
        offset: 0,
        cookie,
    }
}

/// One Data frame holding a whole message of `len` bytes (a single chunk,
/// too large to go inline: reassembled in a block).
fn whole_message_frame(me: u32, dst_ep: u32, payload: &[u8], cookie: u64) -> Vec<u8> {
    let mut b = FrameBuilder::new(me, MAX_BODY);
    let h = first_chunk(dst_ep, payload.len() as u64, payload.len(), cookie);
    assert!(b.fits(payload.len()));
    b.push(&h, payload);
    b.finish()
}

/// The steer path on tcp: a frame whose first 256 KiB arrive and the rest
/// only later is read straight into its block once its message is reserved.
/// (1) A message above the bound is refused once (one `TooLarge` Nack, one
/// error, a log line), never steered, nothing reserved, and the link carries
/// on. Without the sum in `try_steer`, `chunk_target` refused it there every
/// time the agent looked at the partial frame, then again on the normal
/// path. (2) A message below the bound is steered (`bytes_rx_direct`), holds
/// exactly its size (`rx_reassembly_bytes`) while the peer withholds the
/// rest, and is delivered whole once it comes; honest traffic from node 2
/// flows meanwhile.
#[test]
fn steered_message_is_held_within_the_bound_and_a_larger_one_refused_once() {
    if transport() != "tcp" {
        eprintln!("this test plays a tcp peer (tests/common/fakepeer.rs)");
        return;
    }
    let c = cluster();
    let victim = wyvern::client::Client::attach(c.socket(0), "victim").unwrap();
    let ep = victim.open_endpoint(Some(VICTIM_EP)).unwrap();
    let mut fake = FakePeer::connect(&c, 0, 1, 3);
    fake.drain_in_background();
    honest(&c, 40, 20, 256 << 10);
    let base = stat_settled(&c, 0)["blocks_free"].as_u64().unwrap();

    // (1) 2 MiB > LIMIT, its frame withheld after 256 KiB for 1 s.
    let big = vec![0xa5u8; 2 << 20];
    let frame = whole_message_frame(1, VICTIM_EP, &big, 1);
    fake.stream.write_all(&frame[..256 << 10]).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let s = c.stat(0);
    assert_eq!(held(&s, 1), 0, "a message above the bound reserved: {s}");
    assert_eq!(s["blocks_free"].as_u64(), Some(base), "{s}");
    assert_eq!(peer_counter(&s, 1, "bytes_rx_direct"), 0, "steered: {s}");
    fake.stream.write_all(&frame[256 << 10..]).unwrap();
    let mut most = 0;
    let (s, _) = wait_stat(&c, |s| {
        most = most.max(held(s, 1));
        most > LIMIT || peer_counter(s, 1, "errors") >= 1
    });
    assert!(most <= LIMIT, "{most} bytes held for the peer: {s}");
    assert!(
        peer_counter(&s, 1, "errors") >= 1,
        "the 2 MiB message was not refused: {s}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let s = c.stat(0);
    assert_eq!(
        peer_counter(&s, 1, "errors"),
        1,
        "the message was refused more than once: {s}"
    );
    assert_eq!(
        fake.rx.nacks.load(Ordering::Relaxed),
        1,
        "the peer was told more than once"
    );
    assert_eq!(peer_counter(&s, 1, "malformed"), 0, "{s}");
    assert_eq!(peer(&s, 1)["state"], "up", "{s}");
    let log = c.log(0);
    assert!(log.contains("refusing a message of 2097152 bytes"), "{log}");

    // (2) 768 KiB < LIMIT, withheld after 256 KiB: steered and held.
    let payload: Vec<u8> = (0..BELOW).map(|i| (i % 251) as u8).collect();
    let frame = whole_message_frame(1, VICTIM_EP, &payload, 2);
    fake.stream.write_all(&frame[..256 << 10]).unwrap();
    let (s, steered) = wait_stat(&c, |s| held(s, 1) == BELOW);
    assert!(steered, "the message is not reserved: {s}");
    assert!(
        peer_counter(&s, 1, "bytes_rx_direct") > 0,
        "the message was not steered: {s}"
    );
    assert!(held(&s, 1) <= LIMIT);
    assert_eq!(
        base - s["blocks_free"].as_u64().unwrap(),
        BELOW,
        "the agent holds more than the message: {s}"
    );
    // Others are served while the peer holds its block.
    honest(&c, 41, 20, 256 << 10);
    let s = c.stat(0);
    assert_eq!(held(&s, 1), BELOW, "{s}");
    fake.stream.write_all(&frame[256 << 10..]).unwrap();
    let m = ep.recv(T).expect("the steered message");
    assert_eq!((m.src_node, m.data().len()), (1, BELOW as usize));
    assert!(
        m.data() == &payload[..],
        "the steered message's bytes differ"
    );
    drop(m);
    let (s, freed) = wait_stat(&c, |s| {
        held(s, 1) == 0 && s["blocks_free"].as_u64() == Some(base)
    });
    assert!(freed, "blocks not back to {base}: {s}");
    assert_eq!(peer_counter(&s, 1, "malformed"), 0, "{s}");
    assert_eq!(peer_counter(&s, 1, "errors"), 1, "{s}");
}

/// The normal path: the peer sends the first chunks (16 KiB each, never
/// steered) of 32 messages of 768 KiB each (24 MiB, 24 × the bound) and
/// never the rest. The agent reserves the first (768 KiB: within the bound;
/// `rx_reassembly_bytes`), takes the next first chunk for what it is (a new
/// message before the last one ended: malformed, logged, the peer dropped)
/// and frees the block. The peer reconnects and does it again, 5 times:
/// nothing is left held, and honest traffic from node 2 is delivered.
#[test]
fn peer_pipelining_first_chunks_holds_at_most_the_bound() {
    if transport() != "tcp" {
        eprintln!("this test plays a tcp peer (tests/common/fakepeer.rs)");
        return;
    }
    let c = cluster();
    let _victim = wyvern::client::Client::attach(c.socket(0), "victim").unwrap();
    let _ep = _victim.open_endpoint(Some(VICTIM_EP)).unwrap();
    honest(&c, 40, 20, 256 << 10);
    let base = stat_settled(&c, 0)["blocks_free"].as_u64().unwrap();
    let chunk = vec![0x5au8; 16 << 10];
    for round in 0..5u64 {
        let mut fake = FakePeer::connect(&c, 0, 1, 3);
        fake.drain_in_background();
        // One message's first chunk: reserved whole, within the bound.
        let first = first_chunk(VICTIM_EP, BELOW, chunk.len(), 1000 * round);
        fake.send_records(64 << 10, [(first, &chunk[..])]).unwrap();
        let (s, took) = wait_stat(&c, |s| held(s, 1) == BELOW);
        assert!(
            took,
            "round {round}: the first message is not reserved: {s}"
        );
        assert_eq!(base - s["blocks_free"].as_u64().unwrap(), BELOW, "{s}");
        // The first chunks of 31 more.
        let recs = (1..32u64).map(|k| {
            let h = first_chunk(VICTIM_EP, BELOW, chunk.len(), 1000 * round + k);
            (h, &chunk[..])
        });
        fake.send_records(64 << 10, recs).unwrap();
        // What it holds for the peer, seen every 20 ms until it is dropped
        // (or holds more than the bound).
        let mut most = 0;
        let (s, _) = wait_stat(&c, |s| {
            most = most.max(held(s, 1));
            most > LIMIT || peer_counter(s, 1, "malformed") > round
        });
        assert!(
            most <= LIMIT,
            "round {round}: {most} bytes held for the peer > the {LIMIT} B bound: {s}"
        );
        assert!(
            peer_counter(&s, 1, "malformed") > round,
            "round {round}: the peer was not dropped: {s}"
        );
        let (s, freed) = wait_stat(&c, |s| {
            held(s, 1) == 0 && s["blocks_free"].as_u64() == Some(base)
        });
        assert!(freed, "round {round}: blocks not back to {base}: {s}");
        assert_eq!(peer_counter(&s, 1, "malformed"), round + 1, "{s}");
        honest(&c, 50 + round as u32, 10, 256 << 10);
    }
    let log = c.log(0);
    assert!(
        log.contains("a new large message before the last one ended"),
        "{log}"
    );
    honest(&c, 60, 50, 1000);
}

/// Messages of [`UNREAD_SIZE`] bytes the fake peer sends the endpoint whose
/// client never reads: a full ring's worth ([`UNREAD_SLOTS`]) and then 3 ×
/// the bound more.
const UNREAD_SLOTS: u64 = 512;
const UNREAD_SIZE: u64 = 16 << 10;
const UNREAD_MORE: u64 = 3 * LIMIT / UNREAD_SIZE;

/// The first bytes of message `i` say which it is.
fn tagged(i: u64) -> Vec<u8> {
    let mut p: Vec<u8> = (0..UNREAD_SIZE).map(|k| (k % 253) as u8).collect();
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

/// Nodes 0 and 2 real, node 1 played by the test, every agent bounding
/// what one peer holds at [`LIMIT`], with receive rings of
/// [`UNREAD_SLOTS`] slots and orphans held for 10 s.
fn unread_cluster() -> Cluster {
    let absent: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (limit, slots) = (LIMIT.to_string(), UNREAD_SLOTS.to_string());
    Cluster::start_partial_with(
        &[true, false, true],
        absent,
        &[
            "--transport",
            "tcp",
            "--peer-rx-bytes",
            &limit,
            "--recv-slots",
            &slots,
            "--unknown-ep-grace-ms",
            "10000",
        ],
        vec![],
    )
}

/// Messages 0..n ([`tagged`]) from the fake peer to [`VICTIM_EP`], written
/// in a thread of their own: the agent stops reading the peer, so the
/// writes block (bounded by the stream's 10 s write timeout).
fn send_tagged(fake: &FakePeer, n: u64) -> std::thread::JoinHandle<std::io::Result<()>> {
    let mut out = fake.stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut b = FrameBuilder::new(1, 64 << 10);
        let mut buf = Vec::new();
        for i in 0..n {
            let p = tagged(i);
            if !b.fits(p.len()) {
                buf.extend_from_slice(&b.finish());
            }
            b.push(&first_chunk(VICTIM_EP, UNREAD_SIZE, p.len(), i), &p);
        }
        buf.extend_from_slice(&b.finish());
        out.write_all(&buf)
    })
}

/// Messages agent stat `s` says it put into the ring of client "victim".
fn delivered_to_victim(s: &Value) -> u64 {
    s["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "victim")
        .and_then(|c| c["delivered"].as_u64())
        .unwrap_or(0)
}

/// The victim reads the `n` tagged messages: every one arrives, in order,
/// intact; the peer's writer ends; every pool block comes back to `base`.
/// Returns agent 0's stat then.
fn read_all_and_settle(
    c: &Cluster,
    ep: &wyvern::client::Endpoint,
    n: u64,
    writer: std::thread::JoinHandle<std::io::Result<()>>,
    base: u64,
) -> Value {
    for i in 0..n {
        let m = ep
            .recv(T)
            .unwrap_or_else(|e| panic!("message {i} of {n}: {e}"));
        assert_eq!((m.src_node, m.data().len()), (1, UNREAD_SIZE as usize));
        assert!(m.data() == &tagged(i)[..], "message {i} differs");
    }
    writer
        .join()
        .unwrap()
        .expect("the peer's writes were taken");
    let (s, freed) = wait_stat(c, |s| s["blocks_free"].as_u64() == Some(base));
    assert!(freed, "blocks not back to {base}: {s}");
    s
}

/// Sample agent 0 every 20 ms until nothing changes for 1 s (the peer is
/// held back, or all its messages are in), at most 20 s: the last stat, and
/// the most the agent held for node 1 seen from the pool (blocks in use
/// since `base` less those delivered into the victim's ring) and from its
/// own sum (`rx_reassembly_bytes + rx_delivery_bytes`).
fn settle(c: &Cluster, base: u64) -> (Value, u64, u64) {
    let (mut most_sum, mut most_pool) = (0u64, 0u64);
    let mut last = (u64::MAX, u64::MAX);
    let mut same_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.stat(0);
        let delivered = delivered_to_victim(&s);
        let in_use = base - s["blocks_free"].as_u64().unwrap();
        let sum = held(&s, 1) + peer(&s, 1)["rx_delivery_bytes"].as_u64().unwrap_or(0);
        most_sum = most_sum.max(sum);
        most_pool = most_pool.max(in_use.saturating_sub(delivered * UNREAD_SIZE));
        let now = (delivered, in_use);
        if now != last {
            last = now;
            same_since = Instant::now();
        } else if same_since.elapsed() > Duration::from_secs(1) {
            return (s, most_pool, most_sum);
        }
        assert!(Instant::now() < deadline, "the agent never settled: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finished messages waiting for a receiver's ring count against the bound
/// too (`rx_delivery_bytes`). The fake peer sends 16 KiB messages (each in
/// a pool block) to an endpoint whose client does not read: the first 512
/// fill its ring (512 slots, `--recv-slots`; those blocks are the client's
/// now), what comes after waits in the agent for ring room (parked). Before,
/// nothing but the overflow budget (which charges a parked block a few
/// hundred bytes) and the pool bounded what waited: the peer's 3 MiB past the
/// ring were all held, 3 × the 1 MiB bound, and a peer that kept sending
/// took the whole pool. Now the agent holds at most the bound for the peer
/// (`rx_reassembly_bytes + rx_delivery_bytes`, and the same seen from
/// `blocks_free`), stops reading its link (back-pressure, `rx_stalls`; the
/// rest waits in the stream), keeps serving node 2, and once the receiver
/// reads, every message arrives, in order, intact.
#[test]
fn messages_waiting_for_an_unread_ring_count_against_the_bound() {
    if transport() != "tcp" {
        eprintln!("this test plays a tcp peer (tests/common/fakepeer.rs)");
        return;
    }
    let c = unread_cluster();
    let victim = wyvern::client::Client::attach(c.socket(0), "victim").unwrap();
    let ep = victim.open_endpoint(Some(VICTIM_EP)).unwrap();
    let fake = FakePeer::connect(&c, 0, 1, 3);
    fake.drain_in_background();
    let base = stat_settled(&c, 0)["blocks_free"].as_u64().unwrap();
    let n = UNREAD_SLOTS + UNREAD_MORE;
    let writer = send_tagged(&fake, n);
    let (s, most_pool, most_sum) = settle(&c, base);
    let delivered = delivered_to_victim(&s);
    eprintln!(
        "held for the peer beyond the ring: at most {most_pool} B (pool), {most_sum} B (its sum); {} B waiting at the end",
        peer(&s, 1)["rx_delivery_bytes"]
    );
    assert_eq!(delivered, UNREAD_SLOTS, "the ring is not full: {s}");
    assert!(
        most_pool <= LIMIT,
        "the agent held {most_pool} B of pool blocks for the peer beyond the ring (bound {LIMIT}): {s}"
    );
    assert!(
        most_sum <= LIMIT,
        "rx_reassembly_bytes + rx_delivery_bytes reached {most_sum} (bound {LIMIT}): {s}"
    );
    assert!(
        peer(&s, 1)["rx_delivery_bytes"].as_u64().unwrap() > 0,
        "nothing waits for the ring: {s}"
    );
    assert!(
        peer_counter(&s, 1, "rx_stalls") >= 1,
        "the peer was not held back: {s}"
    );
    assert_eq!(peer(&s, 1)["state"], "up", "{s}");
    // Another peer is served meanwhile (its own messages in pool blocks too).
    honest(&c, 40, 20, 256 << 10);
    // The receiver reads: everything comes, in order, intact.
    let s = read_all_and_settle(&c, &ep, n, writer, base);
    assert_eq!(peer_counter(&s, 1, "malformed"), 0, "{s}");
    assert_eq!(peer_counter(&s, 1, "errors"), 0, "{s}");
    assert_eq!(peer(&s, 1)["state"], "up", "{s}");
}

/// The same for messages to an endpoint not open yet (held for
/// `unknown_ep_grace_ms` in case it opens): the fake peer sends 3 × the
/// bound in 16 KiB messages to an endpoint nobody opened. The agent holds at
/// most the bound for them and holds the peer back; once the endpoint opens,
/// every message arrives, in order, intact, and none was refused.
#[test]
fn messages_for_an_endpoint_not_open_count_against_the_bound() {
    if transport() != "tcp" {
        eprintln!("this test plays a tcp peer (tests/common/fakepeer.rs)");
        return;
    }
    let c = unread_cluster();
    let fake = FakePeer::connect(&c, 0, 1, 3);
    fake.drain_in_background();
    let base = stat_settled(&c, 0)["blocks_free"].as_u64().unwrap();
    let n = UNREAD_MORE;
    let writer = send_tagged(&fake, n);
    let (s, most_pool, most_sum) = settle(&c, base);
    eprintln!("held for the peer's orphans: at most {most_pool} B (pool), {most_sum} B (its sum)");
    assert!(
        most_pool <= LIMIT,
        "the agent held {most_pool} B of pool blocks for the peer (bound {LIMIT}): {s}"
    );
    assert!(
        most_sum <= LIMIT,
        "rx_reassembly_bytes + rx_delivery_bytes reached {most_sum} (bound {LIMIT}): {s}"
    );
    assert_eq!(
        peer(&s, 1)["rx_delivery_bytes"].as_u64(),
        Some(LIMIT),
        "the peer's messages do not wait for the endpoint: {s}"
    );
    assert!(
        peer_counter(&s, 1, "rx_stalls") >= 1,
        "the peer was not held back: {s}"
    );
    let victim = wyvern::client::Client::attach(c.socket(0), "victim").unwrap();
    let ep = victim.open_endpoint(Some(VICTIM_EP)).unwrap();
    let s = read_all_and_settle(&c, &ep, n, writer, base);
    assert_eq!(
        fake.rx.unknown_ep.load(Ordering::Relaxed),
        0,
        "refused: {s}"
    );
    assert_eq!(peer_counter(&s, 1, "malformed"), 0, "{s}");
}
