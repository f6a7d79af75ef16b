//! Multi-rail on the dpdk transport (issue 18): one agent drives several DPDK ports
//! ("rails") to its peer under one reliable session. Two agents, real DPDK, each one
//! process with one EAL and two `--vdev`s: two memif pairs (striping, in-order
//! delivery, a fair share per rail), or two veth pairs in network namespaces on
//! `net_af_packet` (a rail killed mid-stream with `ip link set DEV down`, and back).
//! One port configured is today's transport (tests/dpdk_memif.rs, tests/dpdk_transport.rs).

#![cfg(feature = "dpdk")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::testbed::Testbed;
use common::{assert_ok, counter, stat_settled, Cluster, Proc};

const T: Duration = Duration::from_secs(120);
const MIB: &str = "1048576";

fn socket_dir() -> PathBuf {
    static K: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "wyvern-rails-{}-{}",
        std::process::id(),
        K.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Agent flags for node `i` of two joined by `rails` memif pairs: node 0 is the
/// server of every pair but those in `node0_client`.
fn memif_rails_args(
    dir: &std::path::Path,
    i: usize,
    rails: usize,
    node0_client: &[usize],
) -> Vec<String> {
    let prefix = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let vdevs: String = (0..rails)
        .map(|r| {
            let role = if (i == 0) != node0_client.contains(&r) {
                "server"
            } else {
                "client"
            };
            format!(
                "--vdev=net_memif{r},role={role},socket={}/memif{r}.sock ",
                dir.display()
            )
        })
        .collect();
    let ports: Vec<String> = (0..rails).map(|r| format!("net_memif{r}")).collect();
    let eal = format!(
        "--no-pci {vdevs}--file-prefix={prefix}-{i} --no-shconf --no-huge -m {} \
         --no-telemetry --lcores=0@(0-1) --log-level=lib.eal:warning",
        64 * rails
    );
    [
        "--transport",
        "dpdk",
        "--no-hugepages",
        "--dpdk-eal-args",
        &eal,
        "--dpdk-port",
        &ports.join(","),
    ]
    .map(String::from)
    .to_vec()
}

/// Two agents on `rails` memif pairs (roles as [`memif_rails_args`]); node 0 starts
/// (and is ready) first.
fn memif_rails(rails: usize, node0_client: &[usize]) -> Cluster {
    let dir = socket_dir();
    Cluster::start_wrapped(
        2,
        &[],
        vec![],
        (0..2)
            .map(|i| memif_rails_args(&dir, i, rails, node0_client))
            .collect(),
        |_, a| a,
    )
}

/// A receiver of `n` messages of `sizes` on `node`'s endpoint `ep`.
fn recv(c: &Cluster, node: usize, ep: &str, sizes: &str, n: u32) -> Proc {
    c.peer(
        node,
        &[
            "--timeout-ms",
            "100000",
            "--ep",
            ep,
            "--sizes",
            sizes,
            "recv",
            "--count",
            &n.to_string(),
        ],
    )
}

/// A sender of `n` messages of `sizes` from `node`'s endpoint `ep` to `to`.
fn send(c: &Cluster, node: usize, ep: &str, to: &str, sizes: &str, n: u32) -> Proc {
    c.peer(
        node,
        &[
            "--timeout-ms",
            "100000",
            "--ep",
            ep,
            "--sizes",
            sizes,
            "send",
            "--to",
            to,
            "--count",
            &n.to_string(),
            "--delivered",
        ],
    )
}

/// Every sender sent `n`; every receiver got `n`, intact and in order.
fn check_all(senders: Vec<(String, Proc, u32)>, receivers: Vec<(String, Proc, u32)>) {
    for (name, p, n) in senders {
        let r = p.result(T);
        assert_ok(&name, &r);
        assert_eq!(r.0["sent"], n, "{name}: {}", r.0);
    }
    for (name, p, n) in receivers {
        let r = p.result(T);
        assert_ok(&name, &r);
        assert_eq!(r.0["received"], n, "{name}: {}", r.0);
        assert_eq!(r.0["corrupt"], 0, "{name}: {}", r.0);
        assert_eq!(r.0["out_of_order"], 0, "{name}: {}", r.0);
    }
}

/// 1 MiB messages both ways and small messages both ways at once, every payload
/// checked: the large ones are striped, each rail carries a fair share of the bytes
/// on both agents, the small ones arrive in order, nothing is lost and both rails
/// are up at the end.
#[test]
fn two_memif_rails_stripe_large_messages_and_keep_small_ones_in_order() {
    let c = memif_rails(2, &[]);
    for i in 0..2 {
        assert!(c.log(i).contains("dpdk: 2 rails"), "{}", c.log(i));
    }
    let (big, small) = (64u32, 3000u32);
    let receivers = vec![
        ("1 MiB on node 1".into(), recv(&c, 1, "10", MIB, big), big),
        ("1 MiB on node 0".into(), recv(&c, 0, "11", MIB, big), big),
        (
            "64 B on node 1".into(),
            recv(&c, 1, "12", "64,8,200", small),
            small,
        ),
        (
            "64 B on node 0".into(),
            recv(&c, 0, "13", "64,8,200", small),
            small,
        ),
    ];
    let started = Instant::now();
    let senders = vec![
        (
            "1 MiB 0 -> 1".into(),
            send(&c, 0, "20", "1:10", MIB, big),
            big,
        ),
        (
            "1 MiB 1 -> 0".into(),
            send(&c, 1, "21", "0:11", MIB, big),
            big,
        ),
        (
            "64 B 0 -> 1".into(),
            send(&c, 0, "22", "1:12", "64,8,200", small),
            small,
        ),
        (
            "64 B 1 -> 0".into(),
            send(&c, 1, "23", "0:13", "64,8,200", small),
            small,
        ),
    ];
    check_all(senders, receivers);
    let secs = started.elapsed().as_secs_f64();
    for i in 0..2 {
        let s = stat_settled(&c, i);
        let p = &s["peers"][0];
        assert_eq!(p["transport"], "dpdk", "{s}");
        assert_eq!(p["counters"]["losses"], 0, "agent {i}: {s}");
        assert_eq!(s["blocks_free"], s["blocks_total"], "agent {i}: {s}");
        assert_eq!(counter(&s, "rails"), 2, "{s}");
        assert_eq!(s["transport_info"]["rail0_port"], "net_memif0", "{s}");
        assert_eq!(s["transport_info"]["rail1_port"], "net_memif1", "{s}");
        let (b0, b1) = (counter(&s, "rail0_bytes_tx"), counter(&s, "rail1_bytes_tx"));
        let (r0, r1) = (counter(&s, "rail0_bytes_rx"), counter(&s, "rail1_bytes_rx"));
        // 64 MiB each way: each rail carried at least a third of each direction.
        for (what, a, b) in [("sent", b0, b1), ("received", r0, r1)] {
            assert!(a + b > 64 << 20, "agent {i} {what} {a} + {b} B: {s}");
            assert!(
                a * 3 > a + b && b * 3 > a + b,
                "agent {i} {what} unevenly: rail 0 {a} B, rail 1 {b} B: {s}"
            );
        }
        // The summed device counters are the rails' sums.
        assert_eq!(
            counter(&s, "frames_tx"),
            counter(&s, "rail0_frames_tx") + counter(&s, "rail1_frames_tx"),
            "{s}"
        );
        // Both rails up at the end. (A rail may have been taken for down for a
        // moment on a machine too busy to read it in time: up again at once, and
        // counted in `railN_downs`, printed below.)
        for r in 0..2 {
            assert_eq!(
                counter(&s, &format!("rail{r}_nodes_down")),
                0,
                "agent {i}: {s}"
            );
            assert_eq!(
                counter(&s, &format!("rail{r}_link_up")),
                1,
                "agent {i}: {s}"
            );
        }
        assert_eq!(counter(&s, "frames_oversize"), 0, "agent {i}: {s}");
        assert_eq!(counter(&s, "packets_corrupt"), 0, "agent {i}: {s}");
        eprintln!(
            "agent {i}: rail 0 {:.1} MiB out / {:.1} in, rail 1 {:.1} out / {:.1} in; \
             resent {}, reordered {}, rails taken for down {} + {}",
            b0 as f64 / (1 << 20) as f64,
            r0 as f64 / (1 << 20) as f64,
            b1 as f64 / (1 << 20) as f64,
            r1 as f64 / (1 << 20) as f64,
            counter(&s, "packets_resent"),
            counter(&s, "packets_rx_kept"),
            counter(&s, "rail0_downs"),
            counter(&s, "rail1_downs"),
        );
    }
    eprintln!("2 × 64 MiB and 2 × {small} small messages over two memif rails in {secs:.2} s");
}

/// A rail that comes up while another already carries traffic: node 0 is the
/// server of rail 0 and the client of rail 1, and starts first, so its rail 1 cannot
/// connect until node 1 is there, and then only by trying again (once a second,
/// when that rail's receive polls come back empty). A stream over rail 0 starts at
/// once; rail 1 joins it and takes its share. (It passes also without the empty
/// polls of `DpdkIo::peek` counting: during this stream the rails run dry often
/// enough for `recv` to count them.)
#[test]
fn a_rail_that_connects_late_joins_a_running_stream() {
    let c = memif_rails(2, &[1]);
    let n = 600u32;
    let receivers = vec![("1 MiB on node 1".into(), recv(&c, 1, "10", MIB, n), n)];
    let senders = vec![("1 MiB 0 -> 1".into(), send(&c, 0, "20", "1:10", MIB, n), n)];
    check_all(senders, receivers);
    let s = stat_settled(&c, 0);
    let (b0, b1) = (counter(&s, "rail0_bytes_tx"), counter(&s, "rail1_bytes_tx"));
    eprintln!(
        "rail 0 {:.0} MiB, rail 1 {:.0} MiB",
        b0 as f64 / (1 << 20) as f64,
        b1 as f64 / (1 << 20) as f64
    );
    assert_eq!(counter(&s, "rail1_link_up"), 1, "{s}");
    assert!(counter(&s, "port_restarts") >= 1, "{s}");
    assert!(
        b1 * 10 > b0 + b1,
        "rail 1 carried {b1} B of {}: {s}",
        b0 + b1
    );
}

/// A list that names a port twice is refused at start-up with one sentence.
#[test]
fn a_port_named_twice_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = memif_rails_args(dir.path(), 0, 2, &[]);
    let last = args.len() - 1;
    args[last] = "net_memif0,net_memif0".into();
    let out = Command::new("timeout")
        .arg("60")
        .arg(common::WYVERN)
        .args([
            "agent",
            "--node-id",
            "0",
            "--nodes",
            "127.0.0.1:0,127.0.0.1:0",
            "--socket",
        ])
        .arg(dir.path().join("a.sock"))
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("net_memif0 is named twice"), "{err}");
}

/// Runs `ip` with `args`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two veth pairs between two namespaces (`veth0` from the testbed, `veth1` added
/// here), the agents on `net_af_packet` over both. While 1 MiB messages stream both
/// ways, `ip link set veth1 down` on node 0's side kills rail 1 (af_packet's port
/// says its link is up throughout: the loss-based detection must find it); then it
/// comes up again and carries traffic again. Every message arrives intact and in
/// order: what was lost on the dying rail was resent on the other.
#[test]
fn a_rail_killed_mid_stream_loses_nothing_and_comes_back() {
    let Some(tb) = Testbed::up("a_rail_killed_mid_stream_loses_nothing_and_comes_back", 2) else {
        return;
    };
    let (ns0, ns1) = (tb.ns(0), tb.ns(1));
    ip(&[
        "link", "add", "veth1", "netns", &ns0, "type", "veth", "peer", "name", "veth1", "netns",
        &ns1,
    ]);
    for ns in [&ns0, &ns1] {
        ip(&["-n", ns, "link", "set", "veth1", "up"]);
    }
    let args = |i: usize| {
        let eal = format!(
            "--no-pci --vdev=net_af_packet0,iface=veth0 --vdev=net_af_packet1,iface=veth1 \
             --file-prefix={}-agent --no-shconf --no-huge -m 128 --no-telemetry \
             --lcores=0@(0-1) --log-level=lib.eal:warning",
            tb.ns(i)
        );
        [
            "--dpdk-eal-args",
            &eal,
            "--dpdk-port",
            "net_af_packet0,net_af_packet1",
        ]
        .map(String::from)
        .to_vec()
    };
    // A peer timeout well above the detection's: on a loaded 2-core CI machine
    // (2026-12-07, session 14) neither agent found the rail down within the
    // default 3 s (the senders, their windows full of packets lost on the dead
    // rail, sent too little on the live one for the loss-based rule's count), the
    // link to the peer broke and its messages failed; the rail was found down
    // 0.2 s after the link was remade. What this test checks is that nothing is
    // lost and the rail comes back, not how soon; the slow detection is noted in
    // issue 18's rail gaps.
    let c = Cluster::start_wrapped(
        2,
        &[
            "--transport",
            "dpdk",
            "--no-hugepages",
            "--peer-timeout-ms",
            "20000",
        ],
        (0..2).map(|i| tb.wrap(i)).collect(),
        (0..2).map(args).collect(),
        |_, a| a,
    );
    let n = 400u32;
    let receivers = vec![
        ("1 MiB on node 1".into(), recv(&c, 1, "10", MIB, n), n),
        ("1 MiB on node 0".into(), recv(&c, 0, "11", MIB, n), n),
        (
            "small on node 1".into(),
            recv(&c, 1, "12", "8,64,3000", 4 * n),
            4 * n,
        ),
    ];
    let senders = vec![
        ("1 MiB 0 -> 1".into(), send(&c, 0, "20", "1:10", MIB, n), n),
        ("1 MiB 1 -> 0".into(), send(&c, 1, "21", "0:11", MIB, n), n),
        (
            "small 0 -> 1".into(),
            send(&c, 0, "22", "1:12", "8,64,3000", 4 * n),
            4 * n,
        ),
    ];
    // Both rails busy first.
    let t0 = Instant::now();
    let busy = |s: &serde_json::Value| counter(s, "rail1_bytes_rx") > 16 << 20;
    while !busy(&c.stat(0)) && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = c.stat(0);
    assert!(busy(&before), "rail 1 carried little: {before}");
    ip(&["-n", &ns0, "link", "set", "veth1", "down"]);
    let killed = Instant::now();
    // Down on both sides (each finds its own), traffic on rail 0 only.
    let down = |s: &serde_json::Value| counter(s, "rail1_downs") >= 1;
    while !(down(&c.stat(0)) && down(&c.stat(1))) && killed.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let found = killed.elapsed();
    let (d0, d1) = (c.stat(0), c.stat(1));
    assert!(down(&d0) && down(&d1), "rail 1 not found down: {d0}\n{d1}");
    assert_eq!(counter(&d0, "rail1_nodes_down"), 1, "{d0}");
    std::thread::sleep(Duration::from_millis(500));
    let mid = c.stat(0);
    let rail0_grew = counter(&mid, "rail0_bytes_rx") - counter(&d0, "rail0_bytes_rx");
    eprintln!(
        "rail 1 killed: found down on both agents in {:.0} ms; rail 0 then took {:.1} MiB in 0.5 s",
        found.as_secs_f64() * 1e3,
        rail0_grew as f64 / (1 << 20) as f64
    );
    ip(&["-n", &ns0, "link", "set", "veth1", "up"]);
    let revived = Instant::now();
    let up =
        |s: &serde_json::Value| counter(s, "rail1_ups") >= 1 && counter(s, "rail1_nodes_down") == 0;
    while !(up(&c.stat(0)) && up(&c.stat(1))) && revived.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (u0, u1) = (c.stat(0), c.stat(1));
    assert!(up(&u0) && up(&u1), "rail 1 did not come back: {u0}\n{u1}");
    let back = revived.elapsed();
    check_all(senders, receivers);
    let end = stat_settled(&c, 0);
    // Rail 1 carried data again after it came back.
    let again = counter(&end, "rail1_bytes_rx") - counter(&u0, "rail1_bytes_rx");
    eprintln!(
        "rail 1 up again on both agents {:.0} ms after `ip link set veth1 up`; it then \
         received {:.1} MiB; resent {} packets in all",
        back.as_secs_f64() * 1e3,
        again as f64 / (1 << 20) as f64,
        counter(&end, "packets_resent")
    );
    assert!(
        again > 1 << 20,
        "rail 1 carried nothing after it came back: {end}"
    );
    for i in 0..2 {
        let s = stat_settled(&c, i);
        assert_eq!(s["peers"][0]["counters"]["losses"], 0, "agent {i}: {s}");
        assert_eq!(s["blocks_free"], s["blocks_total"], "agent {i}: {s}");
    }
}

/// Rails of different sizes: `--dpdk-mtu 9000` on both agents, every memif buffer
/// 9216 B but node 1's on rail 1 (the client's are the pair's), 2048. Node 1 runs at
/// its smallest rail's size (2034 B, listed as degraded `mtu`) and says so in its
/// Hello; node 0, whose own rails both hold 9000, sends it packets of 2034 on both
/// rails (a 9000-byte one on rail 1 would arrive chained: dropped) and still stripes
/// them. 1 MiB messages both ways, all intact.
#[test]
fn rails_of_different_sizes_send_what_the_smallest_rail_carries() {
    let dir = socket_dir();
    let args: Vec<Vec<String>> = (0..2)
        .map(|i| {
            let mut a = memif_rails_args(&dir, i, 2, &[]);
            for w in &mut a {
                *w = w.replace("memif0.sock ", "memif0.sock,bsize=9216 ");
                if i == 0 {
                    *w = w.replace("memif1.sock ", "memif1.sock,bsize=9216 ");
                }
            }
            a.extend(["--dpdk-mtu".to_string(), "9000".to_string()]);
            a
        })
        .collect();
    assert!(
        args[1]
            .iter()
            .any(|a| a.contains("memif1.sock --file-prefix")),
        "{args:?}"
    );
    let c = Cluster::start_wrapped(2, &[], vec![], args, |_, a| a);
    let n = 24u32;
    let receivers = vec![
        ("1 MiB on node 1".into(), recv(&c, 1, "10", MIB, n), n),
        ("1 MiB on node 0".into(), recv(&c, 0, "11", MIB, n), n),
    ];
    let senders = vec![
        ("1 MiB 0 -> 1".into(), send(&c, 0, "20", "1:10", MIB, n), n),
        ("1 MiB 1 -> 0".into(), send(&c, 1, "21", "0:11", MIB, n), n),
    ];
    check_all(senders, receivers);
    let s: Vec<_> = (0..2).map(|i| stat_settled(&c, i)).collect();
    for (i, s) in s.iter().enumerate() {
        assert_eq!(s["peers"][0]["counters"]["losses"], 0, "agent {i}: {s}");
        assert_eq!(s["peers"][0]["packet_bytes"], 2034, "agent {i}: {s}");
        assert!(counter(s, "frames_tx_largest") <= 2034, "agent {i}: {s}");
        assert!(counter(s, "frames_tx_largest") > 1500, "agent {i}: {s}");
        assert_eq!(counter(s, "frames_oversize"), 0, "agent {i}: {s}");
        // Both rails carried the large packets (striped at half the link's size).
        let (b0, b1) = (counter(s, "rail0_bytes_tx"), counter(s, "rail1_bytes_tx"));
        assert!(
            b0 * 4 > b0 + b1 && b1 * 4 > b0 + b1,
            "agent {i}: rail 0 {b0} B, rail 1 {b1} B: {s}"
        );
    }
    let degraded = |i: usize| common::check::degraded_listed(&s[i], "mtu");
    // Node 1's own rail is short of what it asked; node 0's are not (it says the cut
    // to node 1 at info).
    assert!(degraded(1) && !degraded(0), "{} {}", s[0], s[1]);
    assert!(
        c.log(0)
            .contains("node 1 receives packets of at most 2034 B"),
        "{}",
        c.log(0)
    );
}
