//! The dpdk transport between real agent processes, each in its own network
//! namespace (made by `scripts/testbed.sh`), joined by a veth pair; DPDK drives each
//! namespace's end through `net_af_packet` (`--no-pci`, `--vdev` only, its own
//! `--file-prefix`, `--no-shconf`, no hugepages). Clients (`wyvern-peer`) run in the
//! namespaces too; their control sockets are Unix sockets on the shared filesystem.
//!
//! What needs more than `Cluster::start` on the dpdk transport gives lives here: the
//! shared scenarios with a DPDK child of their own (an impaired middle hop, a garbage
//! injector), and what only dpdk has (MACs, jumbo frames, start-up errors, the demo).
//! Every size class, a broken link and three nodes on a bridge run in the end-to-end
//! suite on dpdk (`WYVERN_TEST_TRANSPORT=dpdk --test e2e`; docs/development.md, "The
//! test matrix").
//!
//! Skips, with a loud `*** SKIPPED` message, only where a namespace cannot be made.
//! The namespaces are removed on every path (the `Testbed` guard).

#![cfg(feature = "dpdk")]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::relay::Lcg;
use common::scenarios::{self, Impaired};
use common::testbed::Testbed;
use common::{check, counter, stat_settled, Cluster, Proc};
use wyvern::transport::dpdk::{
    classify, write_header, Eal, FrameKind, MacAddr, Mbuf, PktPool, Port, PortConfig, ETHERTYPE,
    ETH_HEADER,
};

/// Both agents settled and clean ([`check::settled_clean`]), every peer on dpdk.
fn settled_on_dpdk(c: &Cluster) -> Vec<serde_json::Value> {
    (0..2)
        .map(|i| {
            let s = check::settled_clean(c, i);
            check::peers_on(&s, "dpdk");
            s
        })
        .collect()
}

/// The injector child: a second DPDK process in node 0's namespace sending garbage to
/// node 1 (role `inject` of this test binary; see `garbage_frames_are_counted_and_dropped`).
fn inject_child() {
    let prefix = std::env::var("WYVERN_INJECT_PREFIX").expect("WYVERN_INJECT_PREFIX");
    let args: Vec<String> = [
        "--no-pci",
        "--no-huge",
        "--no-shconf",
        "-m",
        "64",
        "--no-telemetry",
        "--lcores=0@(0-1)",
        "--log-level=lib.eal:warning",
        &format!("--file-prefix={prefix}"),
        "--vdev=net_af_packet1,iface=veth0",
    ]
    .map(String::from)
    .to_vec();
    let eal = Eal::init(&args).expect("EAL with net_af_packet");
    let pool = PktPool::new(&eal, "inject", 1023, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut port = Port::open(&eal, "net_af_packet1", &PortConfig::default(), &pool).unwrap();
    // A source MAC no node has.
    let src = MacAddr([0x02, 0, 0, 0, 0x77, 0x01]);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for i in 0..200u32 {
        for p in scenarios::garbage_datagrams(i) {
            let mut f = vec![0u8; ETH_HEADER];
            write_header(&mut f, MacAddr([0xff; 6]), src);
            f.extend_from_slice(&p);
            frames.push(f);
        }
        // Another EtherType (IPv4's), to the broadcast MAC.
        let mut f = vec![0u8; 60];
        write_header(&mut f, MacAddr([0xff; 6]), src);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14..].fill(i as u8);
        frames.push(f);
    }
    assert_ne!(ETHERTYPE, 0x0800);
    let total = frames.len();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    for chunk in frames.chunks(10) {
        let mut burst: Vec<Mbuf<'_>> = Vec::new();
        pool.alloc_bulk(&mut burst, chunk.len()).unwrap();
        for (m, f) in burst.iter_mut().zip(chunk) {
            assert!(m.extend_from_slice(f));
        }
        while !burst.is_empty() && Instant::now() < deadline {
            sent += port.tx_burst(0, &mut burst);
            // Paced: the receiving socket's ring must not overflow meanwhile.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(sent, total, "frames sent");
    println!("WYVERN_INJECTED {total}");
}

#[test]
fn garbage_frames_are_counted_and_dropped() {
    const TEST: &str = "garbage_frames_are_counted_and_dropped";
    if std::env::var("WYVERN_INJECT_PREFIX").is_ok() {
        return inject_child();
    }
    let Some(tb) = Testbed::up(TEST, 2) else {
        return;
    };
    let c = tb.cluster(&[]);
    let (before, s) = scenarios::garbage_is_counted_and_dropped(&c, || {
        let mut inj = Command::new("ip");
        inj.args(["netns", "exec", &tb.ns(0)])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env("WYVERN_INJECT_PREFIX", format!("{}-inject", tb.ns(0)))
            .stderr(Stdio::inherit());
        let mut inj = Proc::spawn(inj, "injector");
        let mut got = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let l = inj.line(Duration::from_secs(60));
            // (libtest prints "test <name> ... " before it on the same line.)
            if let Some((_, n)) = l.split_once("WYVERN_INJECTED ") {
                got = Some(n.trim().parse::<u64>().unwrap());
                break;
            }
        }
        assert_eq!(got, Some(1000), "injector did not finish");
        // Let it close its port and exit by itself (bounded; Drop kills it after).
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(inj.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let d = |name| counter(&s, name) - counter(&before, name);
    // 200 junk frames fail the checksum or are too short (foreign); 200 damaged
    // packets fail it; 200 from node 9 are foreign; 200 of a dead epoch are stale;
    // 200 frames of another EtherType never reach the datagram layer.
    assert!(d("packets_corrupt") + d("packets_foreign") >= 600, "{s}");
    assert!(d("packets_corrupt") >= 200, "{s}");
    assert!(d("packets_foreign") >= 200, "{s}");
    assert!(d("packets_stale") >= 200, "{s}");
    assert!(d("frames_foreign_ethertype") >= 200, "{s}");
    settled_on_dpdk(&c);
}

const LOSS: u64 = 5;
const REORDER: u64 = 25;
const DUPLICATE: u64 = 2;
const CORRUPT: u64 = 1;

/// The forwarder child: a DPDK process in the middle namespace moving frames between
/// l0 and l1 (two net_af_packet ports), impairing wyvern's: drops 5 %, holds back
/// (reorders) 25 % for 0.1-2 ms, duplicates 2 %, damages 1 % (one bit of the packet,
/// after the Ethernet header). Other frames pass untouched. Stops when the file
/// `WYVERN_FWD_STOP` exists (or after 150 s) and prints what it did.
fn forward_child() {
    let stop = PathBuf::from(std::env::var("WYVERN_FWD_STOP").unwrap());
    let prefix = std::env::var("WYVERN_FWD_PREFIX").unwrap();
    let seed: u64 = std::env::var("WYVERN_FWD_SEED").unwrap().parse().unwrap();
    let args: Vec<String> = [
        "--no-pci",
        "--no-huge",
        "--no-shconf",
        "-m",
        "64",
        "--no-telemetry",
        "--lcores=0@(0-1)",
        "--log-level=lib.eal:warning",
        &format!("--file-prefix={prefix}"),
        "--vdev=net_af_packet0,iface=l0",
        "--vdev=net_af_packet1,iface=l1",
    ]
    .map(String::from)
    .to_vec();
    let eal = Eal::init(&args).expect("EAL with two net_af_packet ports");
    let pool = PktPool::new(&eal, "fwd", 4095, 0, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let cfg = PortConfig {
        promiscuous: true,
        ..PortConfig::default()
    };
    let mut ports = [
        Port::open(&eal, "net_af_packet0", &cfg, &pool).unwrap(),
        Port::open(&eal, "net_af_packet1", &cfg, &pool).unwrap(),
    ];
    println!("WYVERN_FWD_READY");
    let mut rng = Lcg(seed);
    let (mut fwd, mut dropped, mut held_n, mut dup, mut bad) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut held: [Vec<(Instant, Mbuf<'_>)>; 2] = [Vec::new(), Vec::new()];
    let mut out: [Vec<Mbuf<'_>>; 2] = [Vec::new(), Vec::new()];
    let mut rx: Vec<Mbuf<'_>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    for round in 0u64.. {
        if round % 512 == 0 && (stop.exists() || Instant::now() > deadline) {
            break;
        }
        let now = Instant::now();
        let mut idle = true;
        for (side, port) in ports.iter_mut().enumerate() {
            port.rx_burst(0, &mut rx, 32);
            let to = 1 - side;
            for mut m in rx.drain(..) {
                idle = false;
                if classify(m.data()) == FrameKind::Foreign {
                    out[to].push(m);
                    continue;
                }
                if rng.chance(LOSS) {
                    dropped += 1;
                    continue;
                }
                if rng.chance(CORRUPT) && m.len() > ETH_HEADER {
                    let d = m.data_mut();
                    let i = ETH_HEADER + (rng.next() as usize) % (d.len() - ETH_HEADER);
                    d[i] ^= 1 << (rng.next() % 8);
                    bad += 1;
                }
                if rng.chance(DUPLICATE) {
                    if let Ok(mut c) = pool.alloc() {
                        assert!(c.extend_from_slice(m.data()));
                        out[to].push(c);
                        dup += 1;
                    }
                }
                if rng.chance(REORDER) {
                    let at = now + Duration::from_micros(100 + rng.next() % 1900);
                    held[to].push((at, m));
                    held_n += 1;
                    continue;
                }
                out[to].push(m);
                fwd += 1;
            }
        }
        for side in 0..2 {
            let mut k = 0;
            while k < held[side].len() {
                if held[side][k].0 <= now {
                    let (_, m) = held[side].remove(k);
                    out[side].push(m);
                } else {
                    k += 1;
                }
            }
            if !out[side].is_empty() {
                ports[side].tx_burst(0, &mut out[side]);
                // What the device did not take is lost, as on a congested link.
                dropped += out[side].len() as u64;
                out[side].clear();
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    println!(
        "WYVERN_FWD forwarded {fwd} dropped {dropped} held {held_n} duplicated {dup} corrupted {bad}"
    );
}

#[test]
fn impaired_middle_hop_delivers_every_message_once_in_order_and_intact() {
    const TEST: &str = "impaired_middle_hop_delivers_every_message_once_in_order_and_intact";
    if std::env::var("WYVERN_FWD_STOP").is_ok() {
        return forward_child();
    }
    let Some(tb) = Testbed::up_with(TEST, 2, true) else {
        return;
    };
    let seed = std::env::var("WYVERN_FWD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "forwarder: loss {LOSS}% reorder {REORDER}% duplicate {DUPLICATE}% corrupt {CORRUPT}%, \
         seed {seed} (replay with WYVERN_FWD_SEED={seed})"
    );
    let stop = std::env::temp_dir().join(format!("{}-fwd-stop", tb.prefix));
    let _ = std::fs::remove_file(&stop);
    let mut fwd = Command::new("ip");
    fwd.args(["netns", "exec", &format!("{}mid", tb.prefix)])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env("WYVERN_FWD_STOP", &stop)
        .env("WYVERN_FWD_PREFIX", format!("{}mid-fwd", tb.prefix))
        .env("WYVERN_FWD_SEED", seed.to_string())
        .stderr(Stdio::inherit());
    let fwd = Proc::spawn(fwd, "forwarder");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "forwarder did not start");
        if fwd
            .line(Duration::from_secs(30))
            .contains("WYVERN_FWD_READY")
        {
            break;
        }
    }
    // With the extbuf tx path (net_af_packet copies every frame in tx_burst): lost
    // and damaged packets cut from pool blocks are resent (copied) and every message
    // still arrives once, in order, intact.
    let c = tb.cluster(&["--dpdk-extbuf", "auto"]);
    let label = format!("(forwarder seed {seed}, replay with WYVERN_FWD_SEED={seed})");
    let s = scenarios::impaired_link(&c, 80, &label, || {
        std::fs::write(&stop, b"stop").unwrap();
        let mut report = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let l = fwd.line(Duration::from_secs(30));
            if let Some((_, r)) = l.split_once("WYVERN_FWD ") {
                report = r.to_owned();
                break;
            }
        }
        let _ = std::fs::remove_file(&stop);
        let field = |name: &str| -> u64 {
            let w: Vec<&str> = report.split_whitespace().collect();
            let i = w.iter().position(|x| *x == name).expect(name);
            w[i + 1].parse().unwrap()
        };
        Impaired {
            forwarded: field("forwarded"),
            dropped: field("dropped"),
            held: field("held"),
            duplicated: field("duplicated"),
            corrupted: field("corrupted"),
        }
    });
    for (i, s) in s.iter().enumerate() {
        assert_eq!(
            s["transport_info"]["dpdk_tx_path"], "extbuf",
            "node {i}: {s}"
        );
        assert!(counter(s, "tx_bytes_attached") > 0, "node {i}: {s}");
        assert_eq!(counter(s, "frames_tx_attached_out"), 0, "node {i}: {s}");
    }
    settled_on_dpdk(&c);
}

#[test]
fn a_port_that_does_not_exist_is_a_clear_start_up_error() {
    const TEST: &str = "a_port_that_does_not_exist_is_a_clear_start_up_error";
    let Some(tb) = Testbed::up(TEST, 2) else {
        return;
    };
    let err = agent_start_fails(&tb, &["--dpdk-port".into(), "net_nosuch9".into()]);
    assert!(
        err.contains("cannot start the dpdk device") && err.contains("net_nosuch9"),
        "{err}"
    );
}

#[test]
fn the_demo_runs_on_dpdk_between_two_namespaces() {
    const TEST: &str = "the_demo_runs_on_dpdk_between_two_namespaces";
    // The demo makes (and removes) its own namespaces; probe that it may.
    let Some(_tb) = Testbed::up(TEST, 2) else {
        return;
    };
    let mut demo = Command::new(common::WYVERN)
        .args(["demo", "--transport", "dpdk"])
        .args([
            "--pingpongs",
            "300",
            "--messages",
            "20000",
            "--bulk-mib",
            "16",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its namespaces are named after its pid.
    let pid = demo.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    while demo.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            // As `timeout` would: SIGTERM, so it can remove its namespaces.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = demo.wait_with_output().unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(so.contains("two agents on DPDK"), "{so}");
    assert!(so.contains("one-way latency 8 B, p50"), "{so}");
    assert!(so.contains("bandwidth, 1 MiB messages"), "{so}");
    // Its namespaces are gone. Only its own: another demo may run at the same time
    // (another test process on this machine).
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let mine = format!("wyvdemo{pid}-");
    let ours: Vec<&str> = list
        .split_whitespace()
        .filter(|n| n.starts_with(&mine))
        .collect();
    assert!(ours.is_empty(), "left behind: {ours:?} in\n{list}");
}

#[test]
fn configured_peer_macs_are_used_from_the_first_packet() {
    const TEST: &str = "configured_peer_macs_are_used_from_the_first_packet";
    let Some(tb) = Testbed::up(TEST, 2) else {
        return;
    };
    let macs = format!("{},{}", tb.mac(0), tb.mac(1));
    let node_args = (0..2)
        .map(|i| {
            let mut a = tb.agent_args(i);
            a.extend(["--dpdk-peer-macs".to_string(), macs.clone()]);
            a
        })
        .collect();
    let c = Cluster::start_wrapped(
        2,
        &["--transport", "dpdk", "--no-hugepages"],
        (0..2).map(|i| tb.wrap(i)).collect(),
        node_args,
        |_, a| a,
    );
    scenarios::Traffic::new(&c, "8,70000")
        .recv(1, 4, 100)
        .send(0, (1, 4), 100, scenarios::Mode::Buffered)
        .start()
        .finish("");
    for i in 0..2 {
        let s = stat_settled(&c, i);
        // Not even the first Hello went to the broadcast address.
        assert_eq!(counter(&s, "frames_tx_broadcast"), 0, "{s}");
        assert!(counter(&s, "frames_tx") > 0, "{s}");
    }
}

/// Runs one agent in node 0's namespace with `extra` flags (and the testbed's EAL
/// arguments unless `extra` has its own `--dpdk-eal-args`); it must fail at start-up.
/// Returns its stderr.
fn agent_start_fails(tb: &Testbed, extra: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        tb.ns(0),
        "timeout".into(),
        "60".into(),
        common::WYVERN.into(),
        "agent".into(),
        "--node-id".into(),
        "0".into(),
        "--nodes".into(),
        "127.0.0.1:0,127.0.0.1:0".into(),
        "--socket".into(),
        dir.path().join("a.sock").display().to_string(),
        "--no-hugepages".into(),
        "--transport".into(),
        "dpdk".into(),
    ];
    if !extra.iter().any(|a| a == "--dpdk-eal-args") {
        args.extend(tb.agent_args(0));
    }
    args.extend(extra.iter().cloned());
    let out = Command::new("ip").args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Nothing on stdout: the readiness line never came.
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "{err}");
    err
}

#[test]
fn jumbo_frames_carry_messages_when_the_interface_allows_them() {
    const TEST: &str = "jumbo_frames_carry_messages_when_the_interface_allows_them";
    let Some(tb) = Testbed::up_mtu(TEST, 2, 9000) else {
        return;
    };
    let c = tb.cluster(&["--dpdk-mtu", "9000"]);
    const JUMBO_SIZES: &str = "0,1,64,4097,8999,9000,65536,262145,1048576,3000001";
    // Delivered both ways, each size three times per sender.
    scenarios::Traffic::new(&c, JUMBO_SIZES)
        .recv(1, 100, 30)
        .recv(0, 7, 30)
        .send(0, (1, 100), 30, scenarios::Mode::Delivered)
        .send(1, (0, 7), 30, scenarios::Mode::Delivered)
        .start()
        .finish("(jumbo)");
    settled_on_dpdk(&c);
    for i in 0..2 {
        let s = c.stat(i);
        // Packets bigger than a 1500-byte MTU allows went out: the bytes written into
        // mbufs per frame sent (the large messages fill their packets) are well past
        // 1500, and nothing was too long for the receiver.
        let bytes = counter(&s, "tx_bytes_copied") + counter(&s, "tx_bytes_attached");
        let frames = counter(&s, "frames_tx");
        assert!(frames > 0 && bytes / frames > 3000, "node {i}: {s}");
        assert_eq!(counter(&s, "frames_oversize"), 0, "node {i}: {s}");
    }
}

#[test]
fn a_jumbo_mtu_the_rings_cannot_carry_is_a_clear_start_up_error() {
    const TEST: &str = "a_jumbo_mtu_the_rings_cannot_carry_is_a_clear_start_up_error";
    let Some(tb) = Testbed::up(TEST, 2) else {
        return;
    };
    // net_af_packet's default 2048-byte ring frames cannot hold a 9000-byte MTU: the
    // agent's own arguments contradict each other, so it does not start.
    let err = agent_start_fails(&tb, &["--dpdk-mtu".into(), "9000".into()]);
    assert!(
        err.contains("net_af_packet0") && err.contains("framesz="),
        "{err}"
    );
    // An interface too small for any packet (below the packet header and 64 bytes):
    // nothing smaller can run, a clear start-up error.
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["-n", &tb.ns(0), "link", "set", "dev", "veth0", "mtu", "68"]);
    let err = agent_start_fails(&tb, &[]);
    assert!(
        err.contains("veth0") && err.contains("MTU of 68") && err.contains("ip link set dev"),
        "{err}"
    );
}

/// Loud fallback: the veths' MTU is 1500 and `--dpdk-mtu 9000` asks for jumbo frames
/// (the rings could hold them). The agents run at what the interfaces carry, packets
/// cut to 1500 (a longer frame would vanish in the kernel), and say so: once in the
/// log at warn, in `wyvern stat` (JSON and text) with the interface, the reason and the
/// fix. Every message, large ones too, arrives intact.
#[test]
fn an_interface_mtu_below_dpdk_mtu_runs_at_the_interface_mtu_and_says_so() {
    const TEST: &str = "an_interface_mtu_below_dpdk_mtu_runs_at_the_interface_mtu_and_says_so";
    let Some(tb) = Testbed::up(TEST, 2) else {
        return;
    };
    // Ring frames and mbufs for 9000 bytes: only the interface is short.
    let node_args: Vec<Vec<String>> = (0..2)
        .map(|i| {
            tb.agent_args(i)
                .into_iter()
                .map(|a| {
                    a.replace("iface=veth0", "iface=veth0,framesz=16384,blocksz=16384")
                        .replace("-m 64", "-m 192")
                })
                .collect()
        })
        .collect();
    // `wyvern doctor` finds it before the agents start (in the agent's namespace, where
    // the interface is): it fails, with the interface's MTU and the fix.
    let (code, v, found, fix) = doctor_dpdk_mtu(&tb, &node_args[0], &["--dpdk-mtu", "9000"]);
    assert_eq!((code, v.as_str()), (1, "fail"), "{found}");
    assert!(
        found.contains("veth0's MTU is 1500") && found.contains("dpdk_mtu asks 9000"),
        "{found}"
    );
    assert!(fix.contains("ip link set dev veth0 mtu 9000"), "{fix}");
    let (_, v, found, _) = doctor_dpdk_mtu(&tb, &node_args[0], &["--dpdk-mtu", "1500"]);
    assert_eq!(v, "ok", "{found}");
    let c = Cluster::start_wrapped(
        2,
        &[
            "--transport",
            "dpdk",
            "--no-hugepages",
            "--dpdk-mtu",
            "9000",
        ],
        (0..2).map(|i| tb.wrap(i)).collect(),
        node_args,
        |_, a| a,
    );
    const SIZES: &str = "0,1,64,1500,4097,9000,65536,262145,1048576";
    scenarios::Traffic::new(&c, SIZES)
        .recv(1, 100, 27)
        .recv(0, 7, 27)
        .send(0, (1, 100), 27, scenarios::Mode::Delivered)
        .send(1, (0, 7), 27, scenarios::Mode::Delivered)
        .start()
        .finish("(mtu below dpdk_mtu)");
    settled_on_dpdk(&c);
    for i in 0..2 {
        let s = c.stat(i);
        // Packets of at most 1500 bytes went out, well filled; none was too long.
        let bytes = counter(&s, "tx_bytes_copied") + counter(&s, "tx_bytes_attached");
        let frames = counter(&s, "frames_tx");
        assert!(frames > 0 && bytes / frames > 700, "node {i}: {s}");
        assert!(
            bytes <= frames * 1500,
            "node {i}: {bytes} B in {frames} frames: {s}"
        );
        assert_eq!(counter(&s, "frames_oversize"), 0, "node {i}: {s}");
        let (why, fix) = check::degraded_entry(&s, "mtu");
        assert!(
            why.contains("veth0's MTU is 1500") && why.contains("dpdk_mtu asks 9000"),
            "{why}"
        );
        assert!(
            fix.contains("ip link set dev veth0 mtu 9000") && fix.contains("lower dpdk_mtu"),
            "{fix}"
        );
        check::degraded_said(&c, i, "mtu");
    }
}

/// `wyvern doctor --json` in node 0's namespace with its EAL arguments `eal` and
/// `extra`: (exit code, the dpdk_mtu check's verdict, found, fix).
fn doctor_dpdk_mtu(tb: &Testbed, eal: &[String], extra: &[&str]) -> (i32, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &tb.ns(0),
            common::WYVERN,
            "doctor",
            "--json",
        ])
        .args(["--transport", "dpdk", "--no-hugepages", "--socket"])
        .arg(&sock)
        .args(eal)
        .args(extra)
        .output()
        .unwrap();
    common::doctor_check(&o, "dpdk_mtu")
}

/// Without `--dpdk-mtu` the port says 1500, but the interfaces carry 1280: the kernel
/// would drop every longer frame without a word to the driver, so the agents cut their
/// packets to the interfaces' MTU (nothing asked more: not listed as degraded) and every
/// message arrives.
#[test]
fn an_interface_below_the_ports_default_mtu_carries_every_message() {
    const TEST: &str = "an_interface_below_the_ports_default_mtu_carries_every_message";
    let Some(tb) = Testbed::up(TEST, 2) else {
        return;
    };
    for i in 0..2 {
        let o = Command::new("ip")
            .args([
                "-n",
                &tb.ns(i),
                "link",
                "set",
                "dev",
                "veth0",
                "mtu",
                "1280",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    let c = tb.cluster(&[]);
    scenarios::Traffic::new(&c, "0,1,1280,4097,65536,1048577")
        .recv(1, 100, 12)
        .recv(0, 7, 12)
        .send(0, (1, 100), 12, scenarios::Mode::Delivered)
        .send(1, (0, 7), 12, scenarios::Mode::Delivered)
        .start()
        .finish("(interface MTU 1280)");
    settled_on_dpdk(&c);
    for i in 0..2 {
        let s = c.stat(i);
        let bytes = counter(&s, "tx_bytes_copied") + counter(&s, "tx_bytes_attached");
        let frames = counter(&s, "frames_tx");
        assert!(frames > 0 && bytes <= frames * 1280, "node {i}: {s}");
        assert!(!check::degraded_listed(&s, "mtu"), "node {i}: {s}");
    }
}

/// Peers with different MTUs: node 0's interface is at 9000 and its agent asks
/// `--dpdk-mtu 9000`; node 1's end of the veth pair is at 1500 and its agent runs at
/// 1500 (the port's default). The kernel drops every frame longer than 1500 that node 0
/// sends to node 1 (no word to either driver), so packets to node 1 must be cut to what
/// node 1 said in its Hello it receives. Messages up to 1 MiB both ways, all intact.
#[test]
fn peers_with_different_mtus_send_each_other_what_the_smaller_receives() {
    const TEST: &str = "peers_with_different_mtus_send_each_other_what_the_smaller_receives";
    let Some(tb) = Testbed::up_mtu(TEST, 2, 9000) else {
        return;
    };
    let o = Command::new("ip")
        .args([
            "-n",
            &tb.ns(1),
            "link",
            "set",
            "dev",
            "veth0",
            "mtu",
            "1500",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let mut node_args: Vec<Vec<String>> = (0..2).map(|i| tb.agent_args(i)).collect();
    node_args[0].extend(["--dpdk-mtu".to_string(), "9000".to_string()]);
    let c = Cluster::start_wrapped(
        2,
        &["--transport", "dpdk", "--no-hugepages"],
        (0..2).map(|i| tb.wrap(i)).collect(),
        node_args,
        |_, a| a,
    );
    const SIZES: &str = "0,1,1400,1500,1501,4097,8999,9000,65536,262145,1048576";
    scenarios::Traffic::new(&c, SIZES)
        .timeout_ms(30_000)
        .recv(1, 100, 22)
        .recv(0, 7, 22)
        .send(0, (1, 100), 22, scenarios::Mode::Delivered)
        .send(1, (0, 7), 22, scenarios::Mode::Delivered)
        .start()
        .finish("(peers with MTUs 9000 and 1500)");
    let s = settled_on_dpdk(&c);
    // Nothing longer than 1500 left node 0 (its only peer is node 1) or reached node
    // 1, and node 0's packets were cut to 1500, not shorter.
    assert!(counter(&s[0], "frames_tx_largest") <= 1500, "{}", s[0]);
    assert!(counter(&s[0], "frames_tx_largest") > 1400, "{}", s[0]);
    assert!(counter(&s[1], "frames_rx_largest") <= 1500, "{}", s[1]);
    assert!(counter(&s[1], "frames_tx_largest") <= 1500, "{}", s[1]);
    for (i, s) in s.iter().enumerate() {
        assert_eq!(counter(s, "frames_oversize"), 0, "node {i}: {s}");
        assert_eq!(counter(s, "hellos_refused_packet"), 0, "node {i}: {s}");
        // Not this node's misconfiguration, and not node 1's either (it asked for
        // nothing more than its interface carries): no `mtu` shortfall listed.
        assert!(!check::degraded_listed(s, "mtu"), "node {i}: {s}");
        // The link's packet size, per peer.
        assert_eq!(s["peers"][0]["packet_bytes"], 1500, "node {i}: {s}");
        eprintln!(
            "node {i}: link packets {} B, largest sent {} B, received {} B",
            s["peers"][0]["packet_bytes"],
            counter(s, "frames_tx_largest"),
            counter(s, "frames_rx_largest")
        );
    }
    // `wyvern stat`'s table shows it too, in the peer's `via` column.
    for i in 0..2 {
        let o = Command::new(common::WYVERN)
            .args(["stat", "--interval", "0", "--socket"])
            .arg(c.socket(i))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("dpdk/1500"), "node {i}: {text}");
    }
    // Node 0 said once, at info, that its packets to node 1 are cut to 1500 B.
    let log = c.log(0);
    let said = "node 1 receives packets of at most 1500 B: packets to it are cut to 1500 B";
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert!(
        !c.log(1).contains("receives packets of at most"),
        "{}",
        c.log(1)
    );
}
