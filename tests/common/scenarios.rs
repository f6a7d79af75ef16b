//! Scenarios written once and run on every transport (the test matrix, see
//! docs/development.md, "The test matrix"). Each takes a running [`Cluster`],
//! whatever started it (`Cluster::start` on the suite's transport, a testbed, a
//! cluster behind a relay), and is parameterised only by what really differs
//! between transports (how a link is impaired, how garbage reaches an agent, how
//! many messages an emulated device can move in time). What is true on every
//! transport is checked here; a caller checks its transport's own counters on the
//! stats a scenario returns.

use std::time::{Duration, Instant};

use serde_json::Value;
use wyvern::wire::packet::{PacketHeader, PktKind};

use super::check::{
    all_up, counter_sum, delivered, peer, peer_counter, peers_counter, senders, sent, settled_clean,
};
use super::{counter, transport, wrapped, Cluster, Proc, WYVERN};

/// How long a `wyvern-peer` may take to finish: a liveness bound, not a speed
/// requirement (emulated RDMA and lossy hops on 2 busy cores are slow).
pub const T: Duration = Duration::from_secs(300);

/// Every size class from 0 B to 64 MiB: inline and block paths on both sides, the
/// 4 KiB inline limit, the 64 KiB verbs rendezvous threshold and multi-chunk
/// messages, each side of each boundary.
pub const SIZES: &str = "0,1,7,8,63,64,65,200,4095,4096,4097,65535,65536,65537,\
                         262144,262145,1048576,3000001,67108864";

/// Small (aggregated), inline-limit, block and multi-chunk messages.
pub const MIXED: &str = "0,8,100,4096,4097,65536,300000,1048576";

/// How a sender waits: for the agent to take the message, or for the receiver's
/// agent to confirm it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Buffered,
    Delivered,
}

struct Sender {
    node: usize,
    /// Sent to in turn, each with its own sequence.
    to: Vec<(usize, u32)>,
    count: u64,
    mode: Mode,
}

/// Receivers and senders (`wyvern-peer`) sharing one size list, started together
/// and checked together: every sender sends its count, every receiver gets its
/// count, intact and in order.
pub struct Traffic<'a> {
    c: &'a Cluster,
    sizes: String,
    timeout_ms: u64,
    gap_us: u64,
    first_ep: u32,
    recv: Vec<(usize, u32, u64)>,
    send: Vec<Sender>,
}

impl<'a> Traffic<'a> {
    pub fn new(c: &'a Cluster, sizes: &str) -> Traffic<'a> {
        Traffic {
            c,
            sizes: sizes.into(),
            timeout_ms: 100_000,
            gap_us: 0,
            first_ep: 200,
            recv: vec![],
            send: vec![],
        }
    }

    /// How long each sender and receiver waits for its messages (100 s by default).
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// A pause between a sender's messages.
    pub fn gap_us(mut self, us: u64) -> Self {
        self.gap_us = us;
        self
    }

    /// The senders' endpoint ids start here (200 by default): traffic that runs
    /// beside other traffic on the same node takes ids of its own.
    pub fn first_ep(mut self, ep: u32) -> Self {
        self.first_ep = ep;
        self
    }

    /// A receiver on `node`, endpoint `ep`, expecting `count` messages.
    pub fn recv(mut self, node: usize, ep: u32, count: u64) -> Self {
        self.recv.push((node, ep, count));
        self
    }

    /// A sender on `node` of `count` messages to `to` (node, endpoint).
    pub fn send(self, node: usize, to: (usize, u32), count: u64, mode: Mode) -> Self {
        self.send_each(node, &[to], count, mode)
    }

    /// A sender on `node` of `count` messages to each of `to` in turn (one
    /// process, one sequence per destination: each receiver sees one sender).
    pub fn send_each(mut self, node: usize, to: &[(usize, u32)], count: u64, mode: Mode) -> Self {
        self.send.push(Sender {
            node,
            to: to.to_vec(),
            count: count * to.len() as u64,
            mode,
        });
        self
    }

    /// Starts the receivers, then the senders. Each sender opens an endpoint of
    /// its own (`first_ep` + k): the agent hands a closed endpoint's id to the next
    /// client that asks, and a receiver tells senders apart by (node, endpoint), so
    /// a sender that finished early must not pass its id on.
    pub fn start(self) -> Running {
        let tmo = self.timeout_ms.to_string();
        let common = ["--timeout-ms", &tmo, "--sizes", &self.sizes];
        let receivers = self
            .recv
            .iter()
            .map(|&(node, ep, count)| {
                let (ep_s, n) = (ep.to_string(), count.to_string());
                let args = [&common[..], &["--ep", &ep_s, "recv", "--count", &n]].concat();
                let name = format!("receiver {node}:{ep}");
                (name, self.c.peer(node, &args), count)
            })
            .collect();
        let gap = self.gap_us.to_string();
        let senders = self
            .send
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let ep = (self.first_ep + k as u32).to_string();
                let to =
                    s.to.iter()
                        .map(|(n, e)| format!("{n}:{e}"))
                        .collect::<Vec<_>>()
                        .join(",");
                let n = s.count.to_string();
                let mut args = [
                    &common[..],
                    &["--ep", &ep, "send", "--to", &to, "--count", &n],
                ]
                .concat();
                if self.gap_us > 0 {
                    args.extend(["--gap-us", &gap]);
                }
                if s.mode == Mode::Delivered {
                    args.push("--delivered");
                }
                let name = format!("{:?} sender {}:{ep} -> {to}", s.mode, s.node);
                (name, self.c.peer(s.node, &args), s.count)
            })
            .collect();
        Running { receivers, senders }
    }
}

/// Traffic under way.
pub struct Running {
    receivers: Vec<(String, Proc, u64)>,
    senders: Vec<(String, Proc, u64)>,
}

impl Running {
    /// Waits for every sender, then every receiver: each sender sent its count,
    /// each receiver got its count intact and in order. `label` goes into every
    /// failure message (a seed to replay, say). Gives the receivers' results in
    /// the order they were added.
    pub fn finish(self, label: &str) -> Vec<(Value, bool)> {
        for (name, p, n) in self.senders {
            sent(&format!("{name} {label}"), &p.result(T), n);
        }
        self.receivers
            .into_iter()
            .map(|(name, p, n)| {
                let r = p.result(T);
                delivered(&format!("{name} {label}"), &r, n);
                r
            })
            .collect()
    }
}

/// Every size class both ways between nodes 0 and 1, each sender sending each
/// size once: two senders from node 0 to node 1 (buffered and delivered), one on
/// node 1 to its own node (the local path), and two back from node 1 to node 0.
/// Large messages arrive as pool blocks, every block returns to its pool, the
/// local messages never touch the link. Gives the two agents' settled stats.
pub fn every_size_class_both_ways(c: &Cluster) -> [Value; 2] {
    let per = SIZES.split(',').count() as u64;
    let r = Traffic::new(c, SIZES)
        .recv(1, 100, per * 3)
        .recv(0, 7, per * 2)
        .send(0, (1, 100), per, Mode::Buffered)
        .send(0, (1, 100), per, Mode::Delivered)
        .send(1, (1, 100), per, Mode::Delivered)
        .send(1, (0, 7), per, Mode::Buffered)
        .send(1, (0, 7), per, Mode::Delivered)
        .start()
        .finish("");
    for (r, want) in r.iter().zip([3, 2]) {
        assert_eq!(senders(r), want, "{}", r.0);
        assert!(
            r.0["zero_copy"].as_u64().unwrap_or(0) > 0,
            "large messages must arrive as pool blocks: {}",
            r.0
        );
    }
    let s = [settled_clean(c, 0), settled_clean(c, 1)];
    assert!(peer_counter(&s[0], 1, "msgs_tx") >= per * 2, "{}", s[0]);
    assert!(peer_counter(&s[1], 0, "msgs_tx") >= per * 2, "{}", s[1]);
    assert!(s[1]["local_msgs"].as_u64().unwrap() >= per, "{}", s[1]);
    s
}

/// What the thing impairing a link (a udp relay, a DPDK forwarder) did to it.
#[derive(Debug, Default)]
pub struct Impaired {
    pub forwarded: u64,
    pub dropped: u64,
    pub held: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

/// Nodes 0 and 1 over a link that loses, reorders, duplicates and damages
/// packets (`c` was started behind it): `n` messages of [`MIXED`] sizes from
/// each of three senders, two from node 0 (buffered, delivered), one back. Every
/// message arrives once, in order, intact; losses were repaired by resending
/// (large messages' packets straight from their pool blocks, small ones' from
/// their frames), damage caught by the checksum, nobody declared lost, no block
/// leaked. `stop` ends the impairment and says what it did (`label` names its
/// seed).
pub fn impaired_link(
    c: &Cluster,
    n: u64,
    label: &str,
    stop: impl FnOnce() -> Impaired,
) -> [Value; 2] {
    Traffic::new(c, MIXED)
        .recv(1, 10, 2 * n)
        .recv(0, 20, n)
        .send(0, (1, 10), n, Mode::Buffered)
        .send(0, (1, 10), n, Mode::Delivered)
        .send(1, (0, 20), n, Mode::Buffered)
        .start()
        .finish(label);
    let imp = stop();
    let s = [settled_clean(c, 0), settled_clean(c, 1)];
    let sum = |name| counter_sum(&[&s[0], &s[1]], name);
    eprintln!(
        "impaired {label}: {imp:?}; agents: resent {} corrupt {} duplicate {}",
        sum("packets_resent"),
        sum("packets_corrupt"),
        sum("packets_duplicate")
    );
    assert!(imp.dropped > 0 && imp.corrupted > 0, "{label}: {imp:?}");
    assert!(imp.held > 0 && imp.duplicated > 0, "{label}: {imp:?}");
    assert!(
        sum("packets_resent") > 0,
        "losses were not repaired by resending"
    );
    assert!(sum("packets_tx_from_pool") > 0, "{} {}", s[0], s[1]);
    assert!(sum("packets_resent_from_pool") > 0, "{} {}", s[0], s[1]);
    // Small messages' frames too, packet by packet, not copied.
    assert!(sum("packets_tx_from_frame") > 0, "{} {}", s[0], s[1]);
    assert!(
        sum("packets_corrupt") > 0,
        "damaged packets were not caught by the checksum: {} {}",
        s[0],
        s[1]
    );
    for st in &s {
        all_up(st);
    }
    s
}

/// Round `i`'s garbage datagrams for [`garbage_is_counted_and_dropped`], as a
/// datagram transport's payloads (udp sends them as they are, dpdk in
/// Ethernet frames): junk, a well-formed packet damaged, one from a node
/// outside the job, and one of a link epoch that does not exist (stale),
/// forged from [`garbage_header`].
pub fn garbage_datagrams(i: u32) -> Vec<Vec<u8>> {
    use wyvern::wire::packet::encode;
    let h = garbage_header();
    let junk: Vec<u8> = (0..(i % 90 + 1)).map(|k| (k * 37 + i) as u8).collect();
    let mut damaged = Vec::new();
    encode(&h, b"not for you", &mut damaged);
    damaged[70] ^= 0x10;
    let mut foreign = Vec::new();
    encode(&PacketHeader { src_node: 9, ..h }, b"x", &mut foreign);
    let mut stale = Vec::new();
    encode(&PacketHeader { seq: i as u64, ..h }, b"stale", &mut stale);
    vec![junk, damaged, foreign, stale]
}

/// The header [`garbage_datagrams`] forges: node 0 to node 1, epochs no link has.
pub fn garbage_header() -> PacketHeader {
    PacketHeader {
        kind: PktKind::Data,
        flags: 0,
        src_node: 0,
        dst_node: 1,
        src_epoch: 12345,
        dst_epoch: 67890,
        seq: 0,
        ack: wyvern::wire::reliable::Ack::default(),
    }
}

/// Garbage reaching agent 1 from the network while node 0 streams 400 messages
/// to it: `inject` sends, per round of 200, junk, a damaged packet, one from a node
/// outside the job and one of a link epoch that does not exist (and whatever else
/// the transport allows). Every honest message arrives; the garbage is counted
/// (corrupt, foreign, stale) and dropped; the link is never broken (no resume),
/// nobody is lost. Gives agent 1's stat before and after.
pub fn garbage_is_counted_and_dropped(c: &Cluster, inject: impl FnOnce()) -> (Value, Value) {
    let before = c.stat(1);
    let run = Traffic::new(c, "8,5000")
        .gap_us(500)
        .recv(1, 3, 400)
        .send(0, (1, 3), 400, Mode::Buffered)
        .start();
    inject();
    run.finish("");
    let s = settled_clean(c, 1);
    let d = |name| counter(&s, name) - counter(&before, name);
    eprintln!("node 1 transport counters: {}", s["transport"]);
    assert!(d("packets_corrupt") >= 150, "{s}");
    assert!(d("packets_foreign") >= 200, "{s}");
    assert!(d("packets_stale") >= 150, "{s}");
    assert_eq!(
        peer_counter(&s, 0, "resumes"),
        peer_counter(&before, 0, "resumes"),
        "garbage broke the link: {s}"
    );
    assert_eq!(peer(&s, 0)["state"], "up", "{s}");
    (before, s)
}

/// Breaks the link between agents 0 and 1 `breaks` times (from `side` 0, or
/// alternating when `None`), every other time through `wyvern break-link` as an
/// operator runs it (in the node's namespace when it has one), else through the
/// library; a break is refused while the previous one is being mended, and tried
/// again. Panics when not all were made within `within`.
pub fn break_link(c: &Cluster, breaks: usize, side: Option<usize>, within: Duration) {
    let mut made = 0;
    let until = Instant::now() + within;
    while made < breaks && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(150));
        let from = side.unwrap_or(made % 2);
        let to = 1 - from;
        let ok = if made % 2 == 1 {
            let out = wrapped(c.wrap.get(from), WYVERN)
                .arg("break-link")
                .arg("--socket")
                .arg(c.socket(from))
                .args(["--peer", &to.to_string()])
                .output()
                .expect("run wyvern break-link");
            out.status.success()
        } else {
            wyvern::client::break_link(c.socket(from), to as u32).is_ok()
        };
        if ok {
            made += 1;
        }
    }
    assert_eq!(
        made, breaks,
        "could not break the link {breaks} times in {within:?}"
    );
}

/// A link broken again and again mid-stream resumes without losing or repeating
/// a message: `n` messages of [`MIXED`] sizes (paced by `gap_us`) from two
/// senders on node 0 (buffered, delivered) and one back, while [`break_link`]
/// breaks it `breaks` times. Every message arrives once, in order, intact; nobody
/// is declared lost; at least one resume per break; no block leaked. Gives the
/// two agents' settled stats.
pub fn broken_link_resumes(
    c: &Cluster,
    n: u64,
    gap_us: u64,
    breaks: usize,
    side: Option<usize>,
) -> [Value; 2] {
    let run = Traffic::new(c, MIXED)
        .gap_us(gap_us)
        .recv(1, 100, 2 * n)
        .recv(0, 7, n)
        .send(0, (1, 100), n, Mode::Buffered)
        .send(0, (1, 100), n, Mode::Delivered)
        .send(1, (0, 7), n, Mode::Buffered)
        .start();
    break_link(c, breaks, side, Duration::from_secs(120));
    run.finish(&format!("({breaks} breaks)"));
    let s = [settled_clean(c, 0), settled_clean(c, 1)];
    let resumes = peers_counter(&s[0], "resumes") + peers_counter(&s[1], "resumes");
    let resent = peers_counter(&s[0], "frames_resent") + peers_counter(&s[1], "frames_resent");
    eprintln!("{breaks} breaks: {resumes} resumes, {resent} frames sent again");
    assert!(
        resumes >= breaks as u64,
        "{resumes} resumes for {breaks} breaks"
    );
    assert!(c.log(0).contains("resumed"), "{}", c.log(0));
    s
}

/// A killed agent (node 2 of 3) is reported lost to its senders: delivered sends
/// to it fail with "destination node lost", buffered ones waiting there are
/// reported once; the survivors (nodes 0 and 1) go on talking; and when node 2
/// comes back (a new agent process) its link is made again and messages flow.
/// Start the cluster with `--peer-timeout-ms` [`killed_peer_timeout_ms`] (short).
pub fn killed_peer_is_reported_lost(c: &mut Cluster) {
    assert_eq!(c.agents.len(), 3, "three nodes");
    let rx = c.peer(2, &["--ep", "5", "recv", "--count", "100000000"]);
    // A buffered sender whose messages wait at node 2 for a receiver that is
    // busy: when node 2 dies they die with it, and the sender is told.
    let rx_busy = c.peer(
        2,
        &[
            "--ep",
            "6",
            "recv",
            "--count",
            "10",
            "--start-delay-ms",
            "60000",
        ],
    );
    // It waits for the loss report: a peer timeout after the kill, and then some.
    let linger = (killed_peer_timeout_ms() + 3000).to_string();
    let tx_buffered = c.peer(
        0,
        &[
            "--sizes",
            "64",
            "send",
            "--to",
            "2:6",
            "--count",
            "1000",
            "--linger-ms",
            &linger,
        ],
    );
    let tx = c.peer(
        0,
        &[
            "--sizes",
            "64",
            "send",
            "--to",
            "2:5",
            "--count",
            "20000",
            "--delivered",
            "--keep-going",
            "--gap-us",
            "50",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    c.kill_agent(2);
    drop(rx);
    drop(rx_busy);
    let r = tx_buffered.result(T);
    assert_eq!(r.0["sent"], 1000, "{}", r.0);
    assert_eq!(
        r.0["failed"]["async: destination node lost"], 1,
        "one loss report for the buffered sends: {}",
        r.0
    );
    let r = tx.result(T);
    assert!(!r.1, "sends to a dead node cannot all succeed: {}", r.0);
    assert!(
        r.0["failed"]["send failed: destination node lost"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{}",
        r.0
    );
    let s = c.stat(0);
    let p2 = peer(&s, 2);
    assert!(p2["state"].as_str().unwrap().starts_with("lost"), "{p2}");
    assert!(p2["counters"]["losses"].as_u64().unwrap() >= 1, "{p2}");

    // The survivors still talk, both ways.
    let sizes = "100,70000,1048576";
    Traffic::new(c, sizes)
        .recv(1, 8, 30)
        .recv(0, 9, 30)
        .send(0, (1, 8), 30, Mode::Delivered)
        .send(1, (0, 9), 30, Mode::Buffered)
        .start()
        .finish("(survivors)");
    assert_eq!(peer(&c.stat(0), 1)["state"], "up");
    assert_eq!(peer_counter(&c.stat(1), 0, "losses"), 0);

    // Node 2 comes back: the link is made again and messages flow.
    c.restart_agent(2);
    c.wait_up(0, 2);
    c.wait_up(2, 0);
    Traffic::new(c, "8,70000")
        .recv(2, 5, 50)
        .send(0, (2, 5), 50, Mode::Delivered)
        .start()
        .finish("(after restart)");
}

/// The peer timeout [`killed_peer_is_reported_lost`] wants: short, so the loss
/// is reported soon; 5 s on verbs, whose emulated guest can stall for a second
/// or more (the survivors must not be declared lost for that).
pub fn killed_peer_timeout_ms() -> u64 {
    if transport() == "verbs" {
        5000
    } else {
        1000
    }
}

/// Incast: three senders' agents into one receiver (nodes 1, 2 and 2 into node
/// 0) while node 0 also sends to node 1. Everything arrives intact and in order,
/// node 0's receiver tells its three senders apart, no block leaked.
pub fn incast(c: &Cluster) {
    let per = 20;
    let r = Traffic::new(c, "64,4096,70000,300000,1048576")
        .recv(0, 50, per * 3)
        .recv(1, 51, per)
        .send(1, (0, 50), per, Mode::Buffered)
        .send(2, (0, 50), per, Mode::Buffered)
        .send(2, (0, 50), per, Mode::Delivered)
        .send(0, (1, 51), per, Mode::Buffered)
        .start()
        .finish("(incast)");
    assert_eq!(senders(&r[0]), 3, "{}", r[0].0);
    for i in 0..3 {
        all_up(&settled_clean(c, i));
    }
}

/// Three nodes all to all: every node sends 200 messages to each of the others.
/// See [`all_to_all_n`].
pub fn all_to_all(c: &Cluster) -> Vec<Value> {
    all_to_all_n(c, 3, 200, "8,700,5000,300000")
}

/// The traffic of an all-to-all of `n` nodes (endpoint 9 everywhere): one
/// receiver per node expecting `count` from each other node, one sender per
/// node sending `count` to each other in turn, buffered.
pub fn all_to_all_traffic<'a>(c: &'a Cluster, n: usize, count: u64, sizes: &str) -> Traffic<'a> {
    let mut t = Traffic::new(c, sizes);
    for i in 0..n {
        t = t.recv(i, 9, count * (n as u64 - 1));
    }
    for from in 0..n {
        let to: Vec<(usize, u32)> = (0..n).filter(|&t| t != from).map(|t| (t, 9)).collect();
        t = t.send_each(from, &to, count, Mode::Buffered);
    }
    t
}

/// `n` nodes all to all: every node sends `count` messages of `sizes` to each
/// of the others (one sender process per node, to each in turn; one receiver
/// per node). Each
/// receiver hears from exactly the n - 1 others, everything intact and in
/// order; every agent has every peer up, nothing lost, no block leaked. Gives
/// the agents' settled stats.
pub fn all_to_all_n(c: &Cluster, n: usize, count: u64, sizes: &str) -> Vec<Value> {
    let r = all_to_all_traffic(c, n, count, sizes)
        .start()
        .finish(&format!("(all to all, {n} nodes)"));
    for (i, r) in r.iter().enumerate() {
        let from: Vec<&String> = r.0["senders"].as_object().unwrap().keys().collect();
        assert_eq!(from.len(), n - 1, "{}", r.0);
        assert!(
            from.iter().all(|k| !k.starts_with(&format!("{i}:"))),
            "{}",
            r.0
        );
    }
    (0..n)
        .map(|i| {
            let s = settled_clean(c, i);
            assert_eq!(s["peers"].as_array().unwrap().len(), n - 1, "{s}");
            all_up(&s);
            s
        })
        .collect()
}
