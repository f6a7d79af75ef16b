//! `wyvern stat --job`: one node's agent asks every other over their links
//! and prints one row per node. Real agents (tcp by default; the suite's
//! `WYVERN_TEST_TRANSPORT` and `WYVERN_TEST_CONNECT` apply), the real
//! `wyvern` binary.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use wyvern::wire::{self, jobstat::NodeSummary, jobstat::NO_NODE, FrameKind};

const T: Duration = Duration::from_secs(60);

/// `wyvern stat --job ARGS` on agent `i`: exit status, stdout, and how long it took.
fn stat_job(c: &Cluster, i: usize, args: &[&str]) -> (bool, String, Duration) {
    let t0 = Instant::now();
    let out = Command::new(WYVERN)
        .args(["stat", "--job", "--socket"])
        .arg(c.socket(i))
        .args(args)
        .output()
        .expect("run wyvern stat --job");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), text, t0.elapsed())
}

fn stat_job_json(c: &Cluster, i: usize, args: &[&str]) -> (serde_json::Value, Duration) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (ok, text, took) = stat_job(c, i, &a);
    assert!(ok, "wyvern stat --job --json failed: {text}");
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("wyvern stat --job --json is not JSON ({e}): {text}"));
    (v, took)
}

/// A peer counter summed over the peers of a `wyvern stat --json`.
fn sum(s: &serde_json::Value, name: &str) -> u64 {
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["counters"][name].as_u64().unwrap())
        .sum()
}

/// Traffic between four nodes: 1 receives from 0, 2 and 3; 3 from 2.
fn traffic(c: &Cluster, n: u64) {
    let count = n.to_string();
    let all = (3 * n).to_string();
    let rx1 = c.peer(1, &["--ep", "7", "--sizes", "100", "recv", "--count", &all]);
    let rx3 = c.peer(
        3,
        &["--ep", "8", "--sizes", "3000", "recv", "--count", &count],
    );
    let mut tx = Vec::new();
    for i in [0, 2, 3] {
        let args = ["--sizes", "100", "send", "--to", "1:7", "--count", &count];
        tx.push(c.peer(i, &args));
    }
    let args = ["--sizes", "3000", "send", "--to", "3:8", "--count", &count];
    tx.push(c.peer(2, &args));
    for (k, p) in tx.into_iter().enumerate() {
        assert_ok(&format!("sender {k}"), &p.result(T));
    }
    assert_ok("receiver on node 1", &rx1.result(T));
    assert_ok("receiver on node 3", &rx3.result(T));
}

/// After traffic, `wyvern stat --job --json` on node 0 has a row for every
/// node, each answered, with the counts that node's own `wyvern stat --json`
/// shows; the job total adds them up; the table says every node answered.
#[test]
fn job_view_lists_every_node_with_its_own_counts() {
    let c = Cluster::start(4, &[]);
    let n = 500u64;
    traffic(&c, n);
    // Counters settle once the receivers have everything (sent counts are
    // final when the senders finish, received ones when the receivers do).
    let own: Vec<serde_json::Value> = (0..4).map(|i| c.stat(i)).collect();
    let (v, _) = stat_job_json(&c, 0, &[]);
    assert_eq!(v["asked_by"], 0, "{v}");
    assert_eq!(v["nodes"], 4, "{v}");
    assert_eq!(v["answered"], 4, "{v}");
    assert_eq!(v["timeout_ms"], 2000, "{v}");
    assert!(
        v["elapsed_ms"].as_f64().unwrap() < 1900.0,
        "every node answered, so the view must not wait for its 2 s timeout: {v}"
    );
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["node"], i, "{r}");
        let want = if i == 0 { "local" } else { "answered" };
        assert_eq!(r["answer"], want, "{r}");
        if i > 0 {
            assert!(r["answer_ms"].as_f64().unwrap() > 0.0, "{r}");
        }
        let s = &r["summary"];
        assert_eq!(s["node"], i, "{r}");
        assert_eq!(s["nodes"], 4, "{r}");
        for (k, counter) in [
            ("msgs_tx", "msgs_tx"),
            ("msgs_rx", "msgs_rx"),
            ("bytes_tx", "bytes_tx"),
            ("bytes_rx", "bytes_rx"),
            ("errors", "errors"),
            ("losses", "losses"),
            ("malformed", "malformed"),
            ("resumes", "resumes"),
        ] {
            assert_eq!(
                s[k].as_u64().unwrap(),
                sum(&own[i], counter),
                "node {i}'s {k} in the job view vs its own stat: {r}"
            );
        }
        assert_eq!(s["links_up"], own[i]["links"]["up"], "{r}");
        assert_eq!(s["links_up"], 3, "{r}");
        assert!(s["uptime_ms"].as_u64().unwrap() > 0, "{r}");
    }
    // What was sent went where the traffic says.
    let s = |i: usize, k: &str| rows[i]["summary"][k].as_u64().unwrap();
    assert_eq!(s(0, "msgs_tx"), n);
    assert_eq!(s(1, "msgs_rx"), 3 * n);
    assert_eq!(s(2, "msgs_tx"), 2 * n);
    assert_eq!(s(3, "msgs_rx"), n);
    assert_eq!(s(3, "bytes_rx"), 3000 * n);
    let total = &v["total"];
    assert_eq!(total["nodes"], 4, "{v}");
    assert_eq!(total["msgs_tx"], 4 * n, "{v}");
    assert_eq!(total["msgs_rx"], 4 * n, "{v}");
    assert_eq!(total["links_up"], 12, "{v}");

    // The table: a header, one row per node, the total, and the verdict.
    let (ok, text, _) = stat_job(&c, 2, &[]);
    assert!(ok, "{text}");
    assert!(
        text.starts_with("job of 4 nodes, asked by node 2: 4 answered"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    for i in 0..4 {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{i} "))),
            "no row for node {i}:\n{text}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("total") && l.contains("4/4")),
        "{text}"
    );
    assert!(text.contains("local"), "{text}");
    // Nothing went wrong, but a datagram transport may have resent a
    // few packets (tail-loss probes): then nodes with many resends may be
    // named, and nothing else.
    if !text.contains("nothing stands out: every node answered") {
        let look: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "look first at:")
            .skip(1)
            .collect();
        assert!(
            !look.is_empty() && look.iter().all(|l| l.contains("resends: ")),
            "{text}"
        );
    }
}

/// Two clients asking at once both get the whole view; a burst of queries
/// past the agent's rate gets a clear refusal, not a storm of frames, and
/// the agent goes on answering afterwards.
#[test]
fn concurrent_queries_are_served_and_a_burst_is_refused() {
    let c = Cluster::start(3, &[]);
    let sock = c.socket(1);
    let ask = |s: std::path::PathBuf| {
        std::thread::spawn(move || wyvern::client::job_stat(s, Duration::from_secs(2)))
    };
    let (a, b) = (ask(sock.clone()), ask(sock.clone()));
    let (a, b) = (a.join().unwrap().unwrap(), b.join().unwrap().unwrap());
    for v in [&a, &b] {
        assert_eq!(v.answered, 3, "{v:?}");
        assert_eq!(v.rows.len(), 3);
    }
    // Past the burst: refused with the reason.
    let mut refused = None;
    for _ in 0..12 {
        if let Err(e) = wyvern::client::job_stat(&sock, Duration::from_secs(2)) {
            refused = Some(e.to_string());
            break;
        }
    }
    let why = refused.expect("12 queries at once were all served");
    assert!(why.contains("at most 4 job views at once"), "{why}");
    std::thread::sleep(Duration::from_millis(600));
    let v = wyvern::client::job_stat(&sock, Duration::from_secs(2)).unwrap();
    assert_eq!(v.answered, 3, "{v:?}");
}

/// A killed agent: its row says no answer and why, the others still answer,
/// and the view comes within its timeout. Once the peer is declared lost,
/// the row says so and the view no longer waits for it.
#[test]
fn killed_agent_has_a_row_that_says_why_and_the_rest_answer() {
    let mut c = Cluster::start(4, &["--peer-timeout-ms", "1000"]);
    traffic(&c, 50);
    c.kill_agent(2);
    let (v, took) = stat_job_json(&c, 0, &["--timeout", "1"]);
    assert!(
        took < Duration::from_millis(2500),
        "the view must come within its 1 s timeout (and a little): {took:?}"
    );
    assert!(v["elapsed_ms"].as_f64().unwrap() <= 1100.0, "{v}");
    assert_eq!(v["answered"], 3, "{v}");
    let rows = v["rows"].as_array().unwrap();
    for i in [0, 1, 3] {
        assert!(rows[i]["summary"].is_object(), "node {i} must answer: {v}");
    }
    assert_eq!(rows[2]["answer"], "none", "{v}");
    assert!(rows[2]["summary"].is_null(), "{v}");
    assert!(!rows[2]["why"].as_str().unwrap().is_empty(), "{v}");

    // After the peer timeout node 0 has given node 2 up: the row says lost.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.stat(0);
        let st = s["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == 2)
            .map(|p| p["state"].as_str().unwrap().to_string())
            .unwrap();
        if st.starts_with("lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never lost at node 0: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Only a lost peer left to hear from: the view does not wait for it.
    let (v, _) = stat_job_json(&c, 0, &["--timeout", "5"]);
    assert_eq!(v["answered"], 3, "{v}");
    assert!(
        v["elapsed_ms"].as_f64().unwrap() < 2500.0,
        "a lost peer cannot answer: the view must not wait its 5 s for it: {v}"
    );
    let (ok, text, took) = stat_job(&c, 0, &["--timeout", "1"]);
    eprintln!("{text}");
    assert!(ok, "{text}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(text.contains("3 answered"), "{text}");
    let row2 = text
        .lines()
        .find(|l| l.starts_with("2 "))
        .unwrap_or_else(|| panic!("no row for node 2:\n{text}"));
    assert!(row2.contains("NO ANSWER"), "{text}");
    assert!(text.contains("look first at:"), "{text}");
    assert!(
        text.contains("node 2: no answer: link lost"),
        "the lost node's reason: {text}"
    );
}

/// Read frames from `s` for `dur`: the `StatReply` bodies, parsed.
fn read_replies(s: &mut std::net::TcpStream, dur: Duration) -> Vec<NodeSummary> {
    use std::io::Read;
    let deadline = Instant::now() + dur;
    let mut got = Vec::new();
    let mut hdr = [0u8; wire::FRAME_HEADER];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        s.set_read_timeout(Some(left)).unwrap();
        if s.read_exact(&mut hdr).is_err() {
            return got;
        }
        let h = wire::FrameHeader::parse(&hdr).expect("the agent's frames parse");
        let mut body = vec![0u8; h.body_len as usize];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut body).unwrap();
        if h.kind == FrameKind::StatReply {
            got.push(NodeSummary::parse(&body).expect("a well-formed answer"));
        }
    }
}

/// An authenticated peer that floods `StatQuery` frames gets a bounded number
/// of answers, each of fixed size; an answer to no query is dropped and the
/// link stays; an answer that lies about its node drops the link as
/// malformed. The agent's own job view shows the silent peer's row with why,
/// and a client asking while that view waits shares it.
#[test]
fn hostile_peer_gets_bounded_answers_and_lies_drop_its_link() {
    use common::fakepeer::FakePeer;
    use std::io::Write;
    if transport() != "tcp" {
        eprintln!("this test plays a tcp peer (tests/common/fakepeer.rs)");
        return;
    }
    let absent: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let c = Cluster::start_partial(&[true, false], absent);
    let mut fake = FakePeer::connect(&c, 0, 1, 2);
    let mut flood = Vec::new();
    for q in 0..2000u64 {
        flood.extend(wire::control_frame(
            FrameKind::StatQuery,
            1,
            &q.to_le_bytes(),
        ));
    }
    let t0 = Instant::now();
    fake.stream.write_all(&flood).unwrap();
    let got = read_replies(&mut fake.stream, Duration::from_millis(1000));
    let took = t0.elapsed();
    eprintln!("2000 stat queries: {} answers in {took:?}", got.len());
    let most = 4 + (took.as_millis() / 250) as usize + 1;
    assert!(
        !got.is_empty() && got.len() <= most,
        "2000 queries got {} answers in {took:?} (at most {most})",
        got.len()
    );
    for s in &got {
        assert_eq!((s.node, s.nodes), (0, 2), "{s:?}");
        assert!(s.query < 2000);
    }
    // A job view of node 0 while the fake peer answers nothing: its row
    // says it was asked and did not answer.
    let v = wyvern::client::job_stat(c.socket(0), Duration::from_millis(300)).unwrap();
    assert_eq!(v.answered, 1, "{v:?}");
    let why = v.rows[1].why.clone().unwrap();
    assert!(why.contains("asked, no answer within 300 ms"), "{why}");
    // A second client asking while a query waits shares it: one query, one
    // reply to both (the same elapsed time, to the nanosecond).
    let sock = c.socket(0);
    let first = std::thread::spawn(move || {
        wyvern::client::job_stat(sock, Duration::from_millis(600)).unwrap()
    });
    std::thread::sleep(Duration::from_millis(150));
    let second = wyvern::client::job_stat(c.socket(0), Duration::from_millis(5000)).unwrap();
    let first = first.join().unwrap();
    assert_eq!(first.elapsed_ms, second.elapsed_ms, "{first:?} {second:?}");
    assert_eq!(
        second.timeout_ms, 600,
        "the query joined keeps its own timeout"
    );
    // An answer to no query: dropped, the link stays up.
    let stray = NodeSummary {
        query: 999_999,
        node: 1,
        nodes: 2,
        slow_node: NO_NODE,
        ..Default::default()
    };
    fake.stream
        .write_all(&wire::control_frame(
            FrameKind::StatReply,
            1,
            &stray.to_bytes(),
        ))
        .unwrap();
    fake.heartbeat().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let s = c.stat(0);
    assert_eq!(s["peers"][0]["state"], "up", "{s}");
    assert_eq!(s["peers"][0]["counters"]["malformed"], 0, "{s}");
    // An answer naming another node: a broken peer, its link dropped.
    let liar = NodeSummary { node: 0, ..stray };
    fake.stream
        .write_all(&wire::control_frame(
            FrameKind::StatReply,
            1,
            &liar.to_bytes(),
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.stat(0);
        if s["peers"][0]["counters"]["malformed"] == 1 {
            assert_ne!(s["peers"][0]["state"], "up", "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "the lying answer was taken: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        c.log(0).contains("stat reply for node 0 of 2 from node 1"),
        "{}",
        c.log(0)
    );
}

/// An agent of the previous protocol version (4, without these frames) is
/// refused at the handshake with a log line that says so, rather than
/// linking and then dropping the link at the first `StatQuery`.
#[test]
fn an_agent_of_the_previous_protocol_version_is_refused_clearly() {
    use std::io::{Read, Write};
    if transport() != "tcp" {
        eprintln!("this test plays a tcp peer");
        return;
    }
    let absent: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let c = Cluster::start_partial(&[true, false], absent);
    let mut s = std::net::TcpStream::connect(c.nodes[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut h = [0u8; wire::FRAME_HEADER];
    s.read_exact(&mut h).expect("the agent's Challenge");
    assert_eq!(h[4], wire::VERSION);
    assert_eq!(wire::VERSION, 5);
    let mut challenge = vec![0u8; wire::FrameHeader::parse(&h).unwrap().body_len as usize];
    s.read_exact(&mut challenge).unwrap();
    let hello = wire::Hello {
        node: 1,
        nodes: 2,
        incarnation: 1,
        job: wire::job_hash(Some(&c.job())),
        caps: wire::caps::TCP,
        fabric: 0,
    };
    let mut body = hello.to_bytes().to_vec();
    body.extend_from_slice(&[0; wire::auth::NONCE_LEN + wire::auth::MAC_LEN]);
    let mut f = wire::control_frame(FrameKind::Hello, 1, &body);
    f[4] = 4;
    s.write_all(&f).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log(0).contains("protocol version 4, this agent speaks 5") {
        assert!(
            Instant::now() < deadline,
            "no clear refusal in the log: {}",
            c.log(0)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(c.stat(0)["peers"][0]["state"], "up");
}

/// On-demand links, none made yet: the job view links the asking agent to
/// every node (and only that: the others stay unlinked to each other), and
/// every node answers. `WYVERN_JOBSTAT_AGENTS=N` runs more than 8.
#[test]
fn on_demand_agents_are_linked_by_the_view_and_all_answer() {
    let n: usize = std::env::var("WYVERN_JOBSTAT_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let args = vec![vec!["--connect".to_string(), "on-demand".to_string()]; n];
    let c = Cluster::start_wrapped(n, &[], vec![], args, |_, a| a);
    // (The hybrid transport links to every peer from the start.)
    let lazy = c.stat(1)["links"]["idle"] == n - 1;
    let (v, took) = stat_job_json(&c, 0, &["--timeout", "10"]);
    eprintln!(
        "{n} on-demand agents: view in {:.1} ms at the agent, {took:?} for the command",
        v["elapsed_ms"].as_f64().unwrap()
    );
    assert_eq!(v["answered"], n, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[0]["summary"]["links_up"], n - 1, "{v}");
    for r in rows[1..].iter().filter(|_| lazy) {
        assert_eq!(
            r["summary"]["links_up"], 1,
            "only the asker links to it: {r}"
        );
        assert_eq!(r["summary"]["links_idle"], n - 2, "{r}");
    }
    if !lazy {
        eprintln!("the {} transport made every link at start", transport());
    }
    // A second view comes at once: the links are there now.
    let (v2, _) = stat_job_json(&c, 0, &[]);
    assert_eq!(v2["answered"], n, "{v2}");
    eprintln!(
        "again, links up: {:.1} ms",
        v2["elapsed_ms"].as_f64().unwrap()
    );
}
