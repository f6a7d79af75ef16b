//! Multi-rail on the verbs transport (issue 18), in the Soft-RoCE VM of
//! scripts/rxe-vm.sh: two agents, each driving two RDMA devices ("rails"): node 0
//! `rxe0,rxe2`, node 1 `rxe1,rxe3` (rxe0 <-> rxe1 over veth0/veth1, rxe2 <-> rxe3 over
//! veth2/veth3: `WYVERN_RXE_DEVS` and `WYVERN_RXE_RAIL_DEVS`). SENDs of the pair go on
//! its home rail ((0 + 1) mod 2 = rail 1); rendezvous READs are striped over both; a
//! rail killed mid-stream (`ip link set vethN down`) moves its READs to the other
//! rail (rail 0 killed: to rail 1) or, for the home rail, fails the link, which
//! resumes on the rail left (rail 1 killed: on rail 0) — nothing lost either way; a
//! rail whose port comes back is taken up again by the link, remade when idle. Elsewhere (no such devices) the tests print
//! why and return. Emulation is slow: counts are modest, timeouts long.
#![cfg(feature = "verbs")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::scenarios::{Mode, Traffic};
use common::testbed::Delayed;
use common::{check, counter, Cluster};

/// The two rails' devices of nodes 0 and 1, and the netdevs under rail 0 and rail 1
/// (node 0's end of each veth pair); `None` (said why) outside the VM.
fn rails(test: &str) -> Option<([String; 2], [String; 2], [String; 2])> {
    let list = |v: &str| -> Vec<String> {
        std::env::var(v)
            .unwrap_or_default()
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let (a, b) = (list("WYVERN_RXE_DEVS"), list("WYVERN_RXE_RAIL_DEVS"));
    let (na, nb) = (list("WYVERN_RXE_NETDEVS"), list("WYVERN_RXE_RAIL_NETDEVS"));
    if a.len() < 2 || b.len() < 2 || na.is_empty() || nb.is_empty() {
        eprintln!(
            "{test}: skipped: needs two rxe pairs (WYVERN_RXE_DEVS and WYVERN_RXE_RAIL_DEVS: \
             scripts/rxe-vm.sh sets them)"
        );
        return None;
    }
    Some((
        [format!("{},{}", a[0], b[0]), format!("{},{}", a[1], b[1])],
        [a[0].clone(), a[1].clone()],
        [na[0].clone(), nb[0].clone()],
    ))
}

/// Two agents on two rails each.
fn start(devs: &[String; 2]) -> Cluster {
    let node_args = (0..2)
        .map(|i| vec!["--verbs-device".to_string(), devs[i].clone()])
        .collect();
    Cluster::start_wrapped(
        2,
        &["--transport", "verbs", "--block-bytes", "96MiB"],
        vec![],
        node_args,
        |_, a| a,
    )
}

fn ip_link(dev: &str, state: &str) {
    let out = Command::new("ip")
        .args(["link", "set", "dev", dev, state])
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip link set dev {dev} {state}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Netdevs taken down by a test: up again when it ends, passed or not (the VM's
/// other tests use them).
struct Downed(Vec<String>);

impl Downed {
    fn down(&mut self, dev: &str) {
        ip_link(dev, "down");
        self.0.push(dev.to_string());
    }

    fn up(&mut self, dev: &str) {
        ip_link(dev, "up");
        self.0.retain(|d| d != dev);
    }
}

impl Drop for Downed {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("ip")
                .args(["link", "set", "dev", d, "up"])
                .status();
        }
    }
}

/// Wait until `dev`'s port is ACTIVE again (and its IPv4 GID back) and both agents
/// say its rail is up.
fn wait_rail_up(c: &Cluster, dev: &str, rail: usize) {
    let t0 = Instant::now();
    let state = format!("/sys/class/infiniband/{dev}/ports/1/state");
    let name = format!("verbs_rail{rail}_port_up");
    loop {
        let active = std::fs::read_to_string(&state).is_ok_and(|s| s.contains("ACTIVE"));
        if active && (0..2).all(|i| counter(&c.stat(i), &name) == 1) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "rail {rail} ({dev}) not up again within 30 s: {}; {}",
            std::fs::read_to_string(&state).unwrap_or_default(),
            c.stat(0)["transport"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until node 1 has READ at least `bytes` more on `rail` than in `before`.
fn wait_reads(c: &Cluster, before: &serde_json::Value, rail: usize, bytes: u64) {
    let name = format!("verbs_rail{rail}_read_bytes");
    let t0 = Instant::now();
    while counter(&c.stat(1), &name) < counter(before, &name) + bytes {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "node 1 READ nothing on rail {rail}: {}",
            c.stat(1)["transport"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Large messages both ways and small ones both ways at once, every payload
/// checked: each agent names its two rails in stat; rendezvous READs land on both
/// rails on both agents (each at least a quarter of the bytes READ), SENDs only on
/// the pair's home rail (rail 1: small messages stay on one rail, in order); no
/// work completion error, no path failed, nothing lost, every block back.
#[test]
fn two_rails_stripe_rendezvous_reads_and_keep_sends_on_the_home_rail() {
    let Some((devs, _, _)) = rails("two_rails_stripe") else {
        return;
    };
    let c = start(&devs);
    for (i, dev) in devs.iter().enumerate() {
        let s = c.stat(i);
        assert_eq!(counter(&s, "verbs_rails"), 2, "agent {i}: {s}");
        let names: Vec<&str> = dev.split(',').collect();
        for (r, d) in names.iter().enumerate() {
            let got = s["transport_info"][format!("verbs_rail{r}_device")].clone();
            assert_eq!(got, format!("{d}:1"), "agent {i} rail {r}: {s}");
        }
    }
    let t0 = Instant::now();
    Traffic::new(&c, "1048576,64,300000,8")
        .recv(1, 10, 24)
        .recv(0, 11, 24)
        .send(0, (1, 10), 24, Mode::Delivered)
        .send(1, (0, 11), 24, Mode::Buffered)
        .start()
        .finish("(two rails)");
    eprintln!(
        "two rails: both ways in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    for i in 0..2 {
        let s = check::settled_clean(&c, i);
        let t = &s["transport"];
        eprintln!("agent {i}: {t}");
        let r0 = counter(&s, "verbs_rail0_read_bytes");
        let r1 = counter(&s, "verbs_rail1_read_bytes");
        let all = r0 + r1;
        assert!(all > 0, "agent {i}: no READ: {t}");
        assert!(
            r0 * 4 >= all && r1 * 4 >= all,
            "agent {i}: READs not striped (rail 0 {r0} B, rail 1 {r1} B): {t}"
        );
        assert_eq!(counter(&s, "verbs_rail0_sends"), 0, "agent {i}: {t}");
        assert!(counter(&s, "verbs_rail1_sends") > 0, "agent {i}: {t}");
        assert_eq!(counter(&s, "verbs_rail0_recvs"), 0, "agent {i}: {t}");
        assert_eq!(counter(&s, "verbs_wc_errors"), 0, "agent {i}: {t}");
        assert_eq!(counter(&s, "verbs_path_downs"), 0, "agent {i}: {t}");
        assert_eq!(counter(&s, "verbs_bad_descriptors"), 0, "agent {i}: {t}");
        assert_eq!(check::peer_counter(&s, 1 - i, "resumes"), 0, "{t}");
    }
}

/// A rail killed mid-stream, twice, under large messages one way (READs on both
/// rails) and small ones both ways:
/// 1. rail 0 (not the home rail, READs only): its port goes down at both ends, the
///    paths on it fail, their outstanding READs are posted again on rail 1
///    (`verbs_reads_reissued`), the link stays up (no resume) and every message
///    arrives once, intact and in order. Rail 0 comes back.
///    Rail 0 comes back: the idle link is remade to take it up again
///    (`verbs_rails_rejoined`), and READs use it again.
/// 2. rail 1 (the home rail, carrying the SENDs): the link fails and the session
///    resumes over a new link on rail 0, again with nothing lost or repeated.
#[test]
fn a_rail_killed_mid_stream_moves_its_traffic_to_the_other_and_loses_nothing() {
    let Some((devs, rail0_devs, netdevs)) = rails("rail_killed") else {
        return;
    };
    let c = start(&devs);
    let mut downed = Downed(Vec::new());
    let sizes = "1048576,200,64";
    // ---- 1. rail 0: READs only.
    let before = c.stat(1);
    let run = Traffic::new(&c, sizes)
        .recv(1, 20, 45)
        .recv(0, 21, 45)
        .send(0, (1, 20), 45, Mode::Delivered)
        .send(1, (0, 21), 45, Mode::Delivered)
        .start();
    wait_reads(&c, &before, 0, 1 << 20);
    let killed = Instant::now();
    downed.down(&netdevs[0]);
    run.finish("(rail 0 killed mid-stream)");
    eprintln!(
        "rail 0 killed: the stream finished {:.2} s later",
        killed.elapsed().as_secs_f64()
    );
    let s1 = c.stat(1);
    let t = &s1["transport"];
    eprintln!("agent 1 after rail 0 died: {t}");
    assert!(
        counter(&s1, "verbs_rail0_port_downs") >= 1,
        "agent 1 did not see rail 0's port go down: {t}"
    );
    assert!(
        counter(&s1, "verbs_rail0_downs") >= 1,
        "agent 1: no path on rail 0 failed: {t}"
    );
    for i in 0..2 {
        let s = c.stat(i);
        assert_eq!(
            check::peer_counter(&s, 1 - i, "resumes"),
            0,
            "agent {i}: the link failed although only a READ rail died: {s}"
        );
        assert_eq!(counter(&s, "verbs_rail0_port_up"), 0, "agent {i}: {s}");
    }
    // The READs on rail 0 when it died (if any were) went again on rail 1.
    let reissued = counter(&s1, "verbs_reads_reissued");
    eprintln!("READs posted again on rail 1: {reissued}");
    let log = c.log(1);
    assert!(log.contains("moved to the other rails"), "{log}");
    downed.up(&netdevs[0]);
    wait_rail_up(&c, &rail0_devs[0], 0);
    wait_rail_up(&c, &rail0_devs[1], 0);
    // The link, idle now, is remade to take rail 0 up again (a resume: nothing lost),
    // and READs go on both rails again.
    let t0 = Instant::now();
    while (0..2).all(|i| counter(&c.stat(i), "verbs_rails_rejoined") == 0) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "rail 0 not taken up again: {}\n{}",
            c.stat(0)["transport"],
            c.log(0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.wait_up(0, 1);
    c.wait_up(1, 0);
    let before = c.stat(1);
    Traffic::new(&c, sizes)
        .first_ep(60)
        .recv(1, 25, 9)
        .send(0, (1, 25), 9, Mode::Delivered)
        .start()
        .finish("(rail 0 back)");
    let after = c.stat(1);
    assert!(
        counter(&after, "verbs_rail0_read_bytes") > counter(&before, "verbs_rail0_read_bytes"),
        "rail 0 carries no READs after it came back: {}",
        after["transport"]
    );
    let said = "is back: a new link takes it up again";
    assert!(c.log(0).contains(said) || c.log(1).contains(said));
    // ---- 2. rail 1: the home rail, carrying the SENDs.
    let before = c.stat(1);
    let resumes = check::peer_counter(&before, 0, "resumes");
    let run = Traffic::new(&c, sizes)
        .first_ep(40)
        .recv(1, 30, 45)
        .recv(0, 31, 45)
        .send(0, (1, 30), 45, Mode::Delivered)
        .send(1, (0, 31), 45, Mode::Buffered)
        .start();
    wait_reads(&c, &before, 1, 1 << 20);
    downed.down(&netdevs[1]);
    run.finish("(home rail 1 killed mid-stream)");
    let s1 = c.stat(1);
    eprintln!("agent 1 after rail 1 died: {}", s1["transport"]);
    assert!(
        check::peer_counter(&s1, 0, "resumes") > resumes,
        "the home rail died but the link did not resume: {s1}"
    );
    let log = c.log(1);
    assert!(log.contains("home rail 0"), "no link on rail 0: {log}");
    // Traffic on the rail left, after the resume.
    let before = c.stat(1);
    Traffic::new(&c, sizes)
        .first_ep(50)
        .recv(1, 32, 12)
        .send(0, (1, 32), 12, Mode::Delivered)
        .start()
        .finish("(on rail 0 alone)");
    let after = c.stat(1);
    assert!(
        counter(&after, "verbs_rail0_read_bytes") > counter(&before, "verbs_rail0_read_bytes"),
        "{after}"
    );
    downed.up(&netdevs[1]);
    for i in 0..2 {
        check::settled_clean(&c, i);
    }
}

/// Several chunks READ at once (issue 16: the receive pipeline), across a rail
/// killed mid-stream: large messages one way, buffered (the sender does not wait,
/// so chunks of several messages queue), of sizes that are not a multiple of the
/// chunk (400001: a second chunk of 137857 B READ, then 7 B of padding; 1048577:
/// a last chunk of 1 B, copied), small ones both ways. Node 1 had
/// more than one chunk steered into its blocks at once (`verbs_chunks_in_flight_max`)
/// and more READs outstanding than one chunk's two pieces
/// (`verbs_reads_in_flight_max`); rail 0 (READs only) dies while they are under way:
/// its READs move to rail 1, the link stays up, every message arrives once, intact
/// and in order, the chunks were read straight into their blocks, and once settled
/// nothing is in flight and every block is back.
#[test]
fn several_chunks_are_read_at_once_and_a_rail_killed_under_them_loses_nothing() {
    let Some((devs, _, netdevs)) = rails("chunks_in_flight") else {
        return;
    };
    // The emulated devices READ faster than a busy agent comes round to the next
    // chunk: with 5 ms more on what node 0 sends on both rails (READ responses), a READ takes
    // long enough that the next chunks are always steered while it is under way.
    let mut delayed = Delayed::default();
    delayed.add(&netdevs[0], "5ms");
    delayed.add(&netdevs[1], "5ms");
    let c = start(&devs);
    let mut downed = Downed(Vec::new());
    let before = c.stat(1);
    let run = Traffic::new(&c, "4194304,1048577,64,400001,200")
        .recv(1, 20, 40)
        .recv(0, 21, 40)
        .send(0, (1, 20), 40, Mode::Buffered)
        .send(1, (0, 21), 40, Mode::Delivered)
        .start();
    wait_reads(&c, &before, 0, 2 << 20);
    let mid = c.stat(1);
    downed.down(&netdevs[0]);
    run.finish("(chunks in flight, rail 0 killed)");
    let s1 = c.stat(1);
    let t = &s1["transport"];
    eprintln!("agent 1 before rail 0 died: {}", mid["transport"]);
    eprintln!("agent 1 after: {t}");
    let chunks = counter(&s1, "verbs_chunks_in_flight_max");
    let reads = counter(&s1, "verbs_reads_in_flight_max");
    assert!(chunks >= 2, "never more than one chunk in flight: {t}");
    assert!(
        reads > 2,
        "never more READs at once than one chunk's pieces: {t}"
    );
    assert!(
        counter(&s1, "verbs_rail0_downs") >= 1,
        "agent 1: no path on rail 0 failed: {t}"
    );
    assert!(
        counter(&s1, "verbs_rail1_read_bytes") > counter(&mid, "verbs_rail1_read_bytes"),
        "nothing READ on rail 1 after rail 0 died: {t}"
    );
    // Every large chunk went straight into its block (the bounce buffer only for
    // a chunk the agent did not steer in time: a few at most).
    let direct = check::peer_counter(&s1, 0, "bytes_rx_direct");
    let rx = check::peer_counter(&s1, 0, "bytes_rx");
    eprintln!(
        "agent 1: {direct} of {rx} bytes read straight into blocks, {} bounce READs",
        counter(&s1, "verbs_bounce_reads")
    );
    assert!(direct * 10 >= rx * 9, "{direct} of {rx} bytes direct: {t}");
    for i in 0..2 {
        let s = c.stat(i);
        assert_eq!(
            check::peer_counter(&s, 1 - i, "resumes"),
            0,
            "agent {i}: the link failed although only a READ rail died: {s}"
        );
    }
    downed.up(&netdevs[0]);
    for i in 0..2 {
        let s = check::settled_clean(&c, i);
        assert_eq!(counter(&s, "verbs_chunks_in_flight"), 0, "agent {i}: {s}");
    }
    drop(delayed);
}

/// A node with two rails and a node with one: the pair uses the rail both have
/// (rail 0), every message arrives, and the two-rail node's second rail carries
/// nothing to that peer.
#[test]
fn a_two_rail_node_and_a_one_rail_node_use_the_rail_they_share() {
    let Some((devs, one, _)) = rails("two_and_one") else {
        return;
    };
    let mixed = [devs[0].clone(), one[1].clone()];
    let c = start(&mixed);
    Traffic::new(&c, "1048576,64,300000")
        .recv(1, 10, 12)
        .recv(0, 11, 12)
        .send(0, (1, 10), 12, Mode::Delivered)
        .send(1, (0, 11), 12, Mode::Delivered)
        .start()
        .finish("(two rails and one)");
    let s0 = check::settled_clean(&c, 0);
    let t = &s0["transport"];
    assert_eq!(counter(&s0, "verbs_rails"), 2, "{t}");
    assert!(counter(&s0, "verbs_rail0_read_bytes") > 0, "{t}");
    assert!(counter(&s0, "verbs_rail0_sends") > 0, "{t}");
    for k in ["read_bytes", "sends", "recvs"] {
        assert_eq!(counter(&s0, &format!("verbs_rail1_{k}")), 0, "{k}: {t}");
    }
    let s1 = check::settled_clean(&c, 1);
    assert_eq!(counter(&s1, "verbs_rails"), 1, "{}", s1["transport"]);
    assert!(c.log(0).contains("home rail 0"), "{}", c.log(0));
}
