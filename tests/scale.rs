//! Many agents on one machine, on-demand links (issue 17): real agent
//! processes on loopback, the suite's transport (`WYVERN_TEST_TRANSPORT`).
//! CI runs 8 agents all to all; `WYVERN_SCALE_AGENTS=N` runs more (the
//! benchmark, `bench/scale.sh`, runs 32 and 64 and reports figures).

mod common;

use std::time::{Duration, Instant};

use common::procfs::{rss_anon, rss_kib};
use common::scenarios::{self, Mode, Traffic};
use common::{check, Cluster};
use serde_json::Value;

/// A link's read buffer once idle (`READ_MIN` in src/transport/stream.rs).
const IDLE_RX_BUFFER: u64 = 16 * 1024;

fn agents() -> usize {
    std::env::var("WYVERN_SCALE_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// `n` agents with on-demand links (kept across restarts), none made yet.
fn on_demand(n: usize) -> Cluster {
    let args = vec![vec!["--connect".to_string(), "on-demand".to_string()]; n];
    Cluster::start_wrapped(n, &[], vec![], args, |_, a| a)
}

/// Peer `j`'s state at agent `i`.
fn state(c: &Cluster, i: usize, j: usize) -> String {
    let s = c.stat(i);
    check::peer(&s, j)["state"].as_str().unwrap().to_string()
}

/// The nodes agent `i` has a link up with.
fn up_at(c: &Cluster, i: usize) -> Vec<u64> {
    let s = c.stat(i);
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "up")
        .map(|p| p["node"].as_u64().unwrap())
        .collect()
}

fn wait_state(c: &Cluster, i: usize, j: usize, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(c, i, j) != want {
        assert!(
            Instant::now() < deadline,
            "peer {j} at agent {i} is {} after 20 s, not {want}: {}",
            state(c, i, j),
            c.stat(i)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rx_buffers(s: &Value) -> Vec<u64> {
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rx_buffer_bytes"].as_u64().expect("rx_buffer_bytes"))
        .collect()
}

/// Agents with on-demand links start with none; every agent then talks to
/// every other, which makes every link (from both ends at once), each pair's
/// messages arrive intact and in order, and once the traffic stops every
/// link's read buffer shrinks back to a small one (a busy link reads 256 KiB
/// at a time: kept by every link, 32 agents' RSS was 0.27 MB per peer).
#[test]
fn many_agents_all_to_all_deliver_everything_and_idle_links_give_their_buffers_back() {
    let n = agents();
    let t0 = Instant::now();
    let c = on_demand(n);
    let started = t0.elapsed();
    for i in 0..n {
        assert!(
            up_at(&c, i).is_empty(),
            "a link made before any message: {}",
            c.stat(i)
        );
    }
    let rss_idle: Vec<u64> = (0..n)
        .map(|i| rss_anon(c.agents[i].as_ref().unwrap().pid()))
        .collect();
    // The traffic makes every link (both ways at once: the pairs that want each
    // other at the same time); then `wyvern connect` is a no-op.
    let t1 = Instant::now();
    let stats = scenarios::all_to_all_n(&c, n, 20, "8,700,5000,300000");
    let moved = t1.elapsed();
    let pids: Vec<i32> = (0..n)
        .map(|i| c.agents[i].as_ref().unwrap().pid())
        .collect();
    let dups: u64 = stats
        .iter()
        .map(|s| {
            s["transport"]["tcp_duplicate_connections"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    // The traffic made some links read with a large buffer: seen while busy
    // or not, they must all be small again once idle.
    let busiest = stats.iter().flat_map(rx_buffers).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let last = (0..n).map(|i| c.stat(i)).collect::<Vec<_>>();
        if last
            .iter()
            .all(|s| rx_buffers(s).iter().all(|&b| b <= IDLE_RX_BUFFER))
        {
            break last;
        }
        assert!(
            Instant::now() < deadline,
            "idle links still hold large read buffers 10 s after the traffic: {:?}",
            last.iter().map(rx_buffers).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for s in &last {
        assert!(
            rx_buffers(s).iter().all(|&b| b > 0),
            "every link carried traffic, so every link has a buffer: {s}"
        );
    }
    let rss: Vec<u64> = pids.iter().map(|&p| rss_anon(p)).collect();
    let vm_rss_max = pids.iter().map(|&p| rss_kib(p)).max().unwrap_or(0);
    let max = |v: &[u64]| v.iter().max().copied().unwrap_or(0) >> 10;
    eprintln!(
        "{n} agents on {} (on-demand links): started in {:.2} s with no link; all to all ({} \
         messages, which made all {} links, {dups} second connections settled) in {:.2} s; \
         busiest read buffer seen {} KiB; agents' RssAnon (KiB) with no link {:?}, after the \
         traffic {:?} (largest {} KiB; largest VmRSS {vm_rss_max} KiB)",
        common::transport(),
        started.as_secs_f64(),
        n * (n - 1) * 20,
        n * (n - 1),
        moved.as_secs_f64(),
        busiest >> 10,
        rss_idle.iter().map(|r| r >> 10).collect::<Vec<_>>(),
        rss.iter().map(|r| r >> 10).collect::<Vec<_>>(),
        max(&rss)
    );
}

/// On-demand links are made by the first message, between that pair only,
/// whichever end is the lower node id; asked (`wyvern connect`, as `wyvern
/// wait` does), an agent makes the rest; a peer it talked to that restarts is
/// reconnected by this side and talks again.
#[test]
fn on_demand_links_are_made_by_the_first_message_between_that_pair_only() {
    let mut c = on_demand(4);
    for i in 0..4 {
        for j in (0..4).filter(|&j| j != i) {
            assert_eq!(state(&c, i, j), "idle", "{}", c.stat(i));
        }
    }
    assert_eq!(c.stat(0)["links"], serde_json::json!({"idle": 3}));
    // Lower to higher: node 0 makes the link (after its short deferral).
    Traffic::new(&c, "8,5000,300000")
        .recv(3, 9, 30)
        .send(0, (3, 9), 30, Mode::Delivered)
        .start()
        .finish("(0 -> 3)");
    assert_eq!(up_at(&c, 0), vec![3]);
    assert_eq!(up_at(&c, 3), vec![0]);
    assert_eq!(c.stat(0)["links"], serde_json::json!({"idle": 2, "up": 1}));
    assert!(up_at(&c, 1).is_empty() && up_at(&c, 2).is_empty());
    assert_eq!(state(&c, 1, 2), "idle");
    // Higher to lower.
    Traffic::new(&c, "8,5000,300000")
        .recv(1, 9, 30)
        .send(2, (1, 9), 30, Mode::Buffered)
        .start()
        .finish("(2 -> 1)");
    assert_eq!(up_at(&c, 1), vec![2]);
    assert_eq!(up_at(&c, 2), vec![1]);
    assert_eq!(state(&c, 0, 1), "idle");
    // Asked (`wyvern connect`), agent 1 connects to the rest of its peers.
    let out = std::process::Command::new(common::WYVERN)
        .arg("connect")
        .arg("--socket")
        .arg(c.socket(1))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("connecting to every peer"),
        "{out:?}"
    );
    for j in [0, 3] {
        wait_state(&c, 1, j, "up");
        wait_state(&c, j, 1, "up");
    }
    assert_eq!(state(&c, 0, 2), "idle", "only agent 1 was asked");
    let out = std::process::Command::new(common::WYVERN)
        .args(["connect", "--peer", "9", "--socket"])
        .arg(c.socket(1))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no node 9: the job has 4"),
        "{err}"
    );
    // Node 3 restarts: node 0, which talked to it, reconnects; the new node 3
    // wanted nothing yet and was made no link but that one.
    c.kill_agent(3);
    c.restart_agent(3);
    wait_state(&c, 0, 3, "up");
    wait_state(&c, 3, 0, "up");
    wait_state(&c, 3, 1, "up");
    assert_eq!(state(&c, 3, 2), "idle", "{}", c.stat(3));
    Traffic::new(&c, "8,5000,300000")
        .recv(0, 9, 20)
        .send(3, (0, 9), 20, Mode::Delivered)
        .start()
        .finish("(3 -> 0 after the restart)");
}

/// The idle time of the idle-link tests: short, so that links close within
/// a test (the default is a minute).
const LINK_IDLE_MS: u64 = 300;

/// `n` agents with on-demand links closed after [`LINK_IDLE_MS`] idle.
fn on_demand_idle(n: usize) -> Cluster {
    on_demand_idle_with(n, vec![])
}

/// The same, agent 0 with `first` besides.
fn on_demand_idle_with(n: usize, first: Vec<String>) -> Cluster {
    let mut args = vec![
        vec![
            "--connect".to_string(),
            "on-demand".to_string(),
            "--link-idle-ms".to_string(),
            LINK_IDLE_MS.to_string(),
        ];
        n
    ];
    args[0].extend(first);
    Cluster::start_wrapped(n, &[], vec![], args, |_, a| a)
}

/// The Prometheus page an agent serves at `addr`.
fn metrics_page(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    page
}

/// Every node sends `count` messages of `sizes` to every other (one sender
/// per node, to each in turn; one receiver per node): all intact, in order.
fn all_to_all_checked(c: &Cluster, n: usize, count: u64, sizes: &str, label: &str) {
    scenarios::all_to_all_traffic(c, n, count, sizes)
        .start()
        .finish(label);
}

/// Agent `i`'s stat once every one of its links was closed for idleness
/// (all its peers `closed`), within 10 s.
fn all_closed(c: &Cluster, i: usize, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.stat(i);
        if s["links"] == serde_json::json!({ "closed": n - 1 }) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "agent {i}: links not all closed 10 s after the traffic: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What an agent whose links all closed for idleness shows, and must: no
/// peer lost or disconnected (an idle close is not a failure), nothing
/// queued or unacknowledged, every link's read buffer released, every
/// block back, each link closed at least `closes` times.
fn check_closed(i: usize, s: &Value, closes: u64) {
    assert_eq!(s["blocks_free"], s["blocks_total"], "agent {i}: {s}");
    for p in s["peers"].as_array().unwrap() {
        assert_eq!(p["state"], "closed", "agent {i}: {s}");
        assert_eq!(p["rx_buffer_bytes"], 0, "agent {i}: read buffer kept: {s}");
        assert_eq!(p["queued_bytes"], 0, "agent {i}: {s}");
        assert_eq!(p["unacked_bytes"], 0, "agent {i}: {s}");
        let c = &p["counters"];
        assert_eq!(c["losses"], 0, "agent {i}: a peer lost: {s}");
        assert_eq!(c["malformed"], 0, "agent {i}: {s}");
        assert!(
            c["idle_closes"].as_u64().unwrap() >= closes,
            "agent {i}: peer {} closed fewer than {closes} times: {s}",
            p["node"]
        );
    }
}

/// With `link_idle_ms` (300 ms here), every link made by an all-to-all
/// closes once the traffic stops, at both ends, as a clean close (`closed`,
/// not lost or disconnected), its read buffer released; the next messages
/// either way make every link again, and everything arrives intact and in
/// order; then the links close again.
#[test]
fn idle_links_close_at_both_ends_and_the_next_messages_reopen_them() {
    let n = agents();
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let c = on_demand_idle_with(n, vec!["--metrics".into(), metrics.clone()]);
    let pids: Vec<i32> = (0..n)
        .map(|i| c.agents[i].as_ref().unwrap().pid())
        .collect();
    let sizes = "8,700,5000,300000";
    all_to_all_checked(&c, n, 20, sizes, "(all to all, first)");
    let t_traffic = Instant::now();
    // Some links may have closed already (those whose traffic ended first):
    // the RSS with links open is the one a reader sees right after.
    let rss_open: Vec<u64> = pids.iter().map(|&p| rss_anon(p)).collect();
    let closed: Vec<Value> = (0..n).map(|i| all_closed(&c, i, n)).collect();
    let took = t_traffic.elapsed();
    for (i, s) in closed.iter().enumerate() {
        check_closed(i, s, 1);
    }
    // Not before the idle time: one message reopens link 0-1, which closes
    // again no sooner than the idle time after it was sent.
    let closes = |i: usize, j: usize| check::peer_counter(&c.stat(i), j, "idle_closes");
    let before = closes(0, 1);
    let t0 = Instant::now();
    Traffic::new(&c, "8")
        .recv(1, 9, 1)
        .send(0, (1, 9), 1, Mode::Delivered)
        .start()
        .finish("(one message 0 -> 1)");
    let deadline = t0 + Duration::from_secs(10);
    while closes(0, 1) == before {
        assert!(
            Instant::now() < deadline,
            "link 0-1 not closed again: {}",
            c.stat(0)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let again_after = t0.elapsed();
    assert!(
        again_after >= Duration::from_millis(LINK_IDLE_MS),
        "link 0-1 closed {again_after:?} after a message, before the idle time"
    );
    all_closed(&c, 1, n);
    let text = std::process::Command::new(common::WYVERN)
        .args(["stat", "--socket"])
        .arg(c.socket(0))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("links: {} closed | closed for idleness", n - 1)),
        "{text}"
    );
    // (On dpdk the metrics listener is inside the agent's namespace.)
    if common::transport() != "dpdk" {
        let page = metrics_page(&metrics);
        let closes = check::peers_counter(&c.stat(0), "idle_closes");
        assert!(
            page.contains(&format!(
                "wyvern_links{{node=\"0\",state=\"closed\"}} {}",
                n - 1
            )) && page.contains(&format!(
                "wyvern_links_closed_idle_total{{node=\"0\"}} {closes}"
            )),
            "{page}"
        );
    }
    // `wyvern wait` makes closed links again, as never-made ones.
    let out = std::process::Command::new(common::WYVERN)
        .args(["wait", "--timeout", "20", "--socket"])
        .arg(c.socket(0))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&format!("{} peers up", n - 1)),
        "{out:?}"
    );
    // Let the heap trim run (on the agent's next sleep, at most every 5 s).
    std::thread::sleep(Duration::from_millis(5500));
    let rss_closed: Vec<u64> = pids.iter().map(|&p| rss_anon(p)).collect();
    // Again: the next messages either way make the links again.
    all_to_all_checked(&c, n, 20, sizes, "(all to all, after the idle close)");
    let again: Vec<Value> = (0..n).map(|i| all_closed(&c, i, n)).collect();
    for (i, s) in again.iter().enumerate() {
        check_closed(i, s, 2);
        assert!(
            check::peers_counter(s, "resumes") >= (n as u64 - 1),
            "each link reopened resumes its session: {s}"
        );
    }
    eprintln!(
        "{n} agents on {}, link_idle_ms {LINK_IDLE_MS}: all links closed {:.2} s after the \
         traffic, one reopened by a message closed {again_after:?} after it; RssAnon (KiB) just after the traffic {:?}, links closed {:?}",
        common::transport(),
        took.as_secs_f64(),
        rss_open.iter().map(|r| r >> 10).collect::<Vec<_>>(),
        rss_closed.iter().map(|r| r >> 10).collect::<Vec<_>>(),
    );
}

/// Messages sent right around the idle deadline, both ways: one link's
/// sender pauses exactly the idle time between messages, the other end's a
/// little less and a little more, so closes race with new messages
/// (frames sent after an idle `Bye`, or crossing it). Nothing is lost or
/// repeated (every receiver checks each sender's sequence), nothing is
/// reported lost, every block returns.
#[test]
fn an_idle_close_racing_with_messages_loses_and_repeats_nothing() {
    let c = on_demand_idle(3);
    let count = 12;
    let gap = |ms: u64| ms * 1000;
    // 0 <-> 1: both ways, gaps straddling the idle time; 0 -> 2 exactly the
    // idle time, Delivered (its replies cross closes too); 2 -> 1 a little
    // past it, with large messages (chunks across closes).
    let ab = Traffic::new(&c, "8,700,5000")
        .gap_us(gap(LINK_IDLE_MS))
        .first_ep(200)
        .recv(1, 9, count)
        .send(0, (1, 9), count, Mode::Buffered)
        .start();
    let ba = Traffic::new(&c, "8,5000")
        .gap_us(gap(LINK_IDLE_MS) - 3000)
        .first_ep(210)
        .recv(0, 10, count)
        .send(1, (0, 10), count, Mode::Buffered)
        .start();
    let ac = Traffic::new(&c, "8,700")
        .gap_us(gap(LINK_IDLE_MS) + 1000)
        .first_ep(220)
        .recv(2, 11, count)
        .send(0, (2, 11), count, Mode::Delivered)
        .start();
    let cb = Traffic::new(&c, "8,300000")
        .gap_us(gap(LINK_IDLE_MS) + 5000)
        .first_ep(230)
        .recv(1, 12, count)
        .send(2, (1, 12), count, Mode::Buffered)
        .start();
    ab.finish("(0 -> 1 at the idle time)");
    ba.finish("(1 -> 0 just before it)");
    ac.finish("(0 -> 2 just after it, delivered)");
    cb.finish("(2 -> 1 after it, large)");
    let stats: Vec<Value> = (0..3).map(|i| all_closed(&c, i, 3)).collect();
    let mut closes = 0;
    for (i, s) in stats.iter().enumerate() {
        check_closed(i, s, 1);
        closes += check::peers_counter(s, "idle_closes");
    }
    eprintln!(
        "{}: {closes} idle closes at the 3 agents, {} frames sent again, {} resumes",
        common::transport(),
        stats
            .iter()
            .map(|s| check::peers_counter(s, "frames_resent"))
            .sum::<u64>(),
        stats
            .iter()
            .map(|s| check::peers_counter(s, "resumes"))
            .sum::<u64>()
    );
    // Each sender paused about the idle time between its messages: links
    // closed many times (not once at the end).
    assert!(closes > 6, "links closed only {closes} times: {stats:?}");
}

/// How long a message to a peer whose link was closed for idleness takes
/// (the link is made again under it) against one on an open link, each way
/// (on tcp the higher node id dials at once, the lower one after 100 ms, see
/// docs/scaling.md): one-way, from the send to the receiver's `recv`, both
/// clients in this process. Every message arrives, in order, whatever the
/// link's state.
#[test]
fn a_message_to_a_closed_link_reopens_it_and_arrives() {
    use wyvern::client::{Client, Mode};
    let c = on_demand_idle(2);
    let a = Client::attach(c.socket(0), "reopen-0").unwrap();
    let b = Client::attach(c.socket(1), "reopen-1").unwrap();
    let eps = [
        a.open_endpoint(Some(9)).unwrap(),
        b.open_endpoint(Some(9)).unwrap(),
    ];
    let t = Duration::from_secs(5);
    let mut seq = [0u32; 2];
    let mut one_way = |from: usize| -> Duration {
        let to = 1 - from;
        seq[from] += 1;
        let t0 = Instant::now();
        eps[from]
            .send(to as u32, 9, &seq[from].to_le_bytes(), Mode::Buffered, t)
            .unwrap();
        let m = eps[to].recv(t).expect("a message to a closed link arrives");
        let d = t0.elapsed();
        assert_eq!(
            m.data(),
            seq[from].to_le_bytes(),
            "from {from}: lost or out of order"
        );
        d
    };
    let closed = |i: usize| state(&c, i, 1 - i) != "up";
    // [from][0: first on a closed link, 1: on an open link]
    let mut lat: [[Vec<Duration>; 2]; 2] = Default::default();
    for round in 0..7 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(closed(0) && closed(1)) {
            assert!(Instant::now() < deadline, "not closed: {}", c.stat(0));
            std::thread::sleep(Duration::from_millis(10));
        }
        let first = round % 2;
        let d = one_way(first);
        if round > 0 {
            // (Round 0 makes the link the first time.)
            lat[first][0].push(d);
        }
        for _ in 0..5 {
            lat[1 - first][1].push(one_way(1 - first));
            lat[first][1].push(one_way(first));
        }
    }
    for i in 0..2 {
        let s = c.stat(i);
        assert_eq!(check::peer_counter(&s, 1 - i, "losses"), 0, "{s}");
        assert!(check::peer_counter(&s, 1 - i, "idle_closes") >= 5, "{s}");
    }
    let ms = |v: &Vec<Duration>| {
        let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        format!(
            "median {:.2} ms (min {:.2}, max {:.2}, n {})",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1],
            v.len()
        )
    };
    eprintln!(
        "{}: one-way latency of the first message on a link closed for idleness: 0 -> 1 \
         (lower id first) {}, 1 -> 0 {}; on an open link: 0 -> 1 {}, 1 -> 0 {}",
        common::transport(),
        ms(&lat[0][0]),
        ms(&lat[1][0]),
        ms(&lat[0][1]),
        ms(&lat[1][1])
    );
}
