//! Two DPDK processes talk over a veth pair through `net_af_packet`: the closest a single
//! machine gets to two nodes. The test makes a network namespace of its own with a veth
//! pair in it, runs this same test binary twice inside it (a receiver, then a sender;
//! each its own EAL and `--file-prefix`), and removes the namespace after. It skips, with
//! a loud message, where a namespace cannot be made (not root, no `ip`).
//!
//! The role of a child is passed in `WYVERN_AFP_ROLE`; the parent is the run without it.

#![cfg(feature = "dpdk")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wyvern::transport::dpdk::{Eal, Mbuf, PktPool, Port, PortConfig};

const TEST: &str = "af_packet_frames_cross_a_veth_pair_between_two_processes";
/// An EtherType for local experiments (IEEE 802 "local experimental 1").
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const FRAMES: u32 = 200;
const FRAME_LEN: usize = 600;

/// The namespace and its veth pair, removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str, a: &str, b: &str) -> Result<Netns, String> {
        run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        let exec = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", name];
            full.extend_from_slice(args);
            run(&full)
        };
        exec(&["ip", "link", "add", a, "type", "veth", "peer", "name", b])?;
        for dev in [a, b] {
            // No IPv6: the kernel would send its own frames (router solicitations) on it.
            let _ = exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
            ]);
            exec(&["ip", "link", "set", dev, "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair in it.
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            eprintln!(
                "warning: could not remove network namespace {}: {e}",
                self.name
            );
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Waits for a child at most `limit`, killing it after that.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn af_packet_frames_cross_a_veth_pair_between_two_processes() {
    match std::env::var("WYVERN_AFP_ROLE").as_deref() {
        Ok("rx") => return child_rx(),
        Ok("tx") => return child_tx(),
        _ => {}
    }
    let pid = std::process::id();
    let (ns, a, b) = (
        format!("wyvern-afp-{pid}"),
        format!("wva{pid}"),
        format!("wvb{pid}"),
    );
    let _netns = match Netns::create(&ns, &a, &b) {
        Ok(n) => n,
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED {TEST}: cannot create a network namespace with a veth pair ({e}); \
                 this test needs root and iproute2 ***\n"
            );
            return;
        }
    };
    let exe = std::env::current_exe().expect("test binary path");
    let spawn = |role: &str, iface: &str| {
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&exe)
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env("WYVERN_AFP_ROLE", role)
            .env("WYVERN_AFP_IFACE", iface)
            .env("WYVERN_AFP_PREFIX", format!("wyvern-afp-{role}-{pid}"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child test process")
    };

    // Children are killed if the test fails early (Kid's Drop), before the namespace
    // goes (declared after _netns, so dropped first).
    let mut rx = Kid(spawn("rx", &b));
    // The receiver's stdout, line by line, through a thread: every wait below is bounded.
    let rx_out = rx.0.stdout.take().expect("piped");
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(rx_out).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str, limit: Duration| -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    assert!(
        wait_for("WYVERN_AFP_READY", Duration::from_secs(30)).is_some(),
        "receiver did not come up in 30 s"
    );

    let mut tx = Kid(spawn("tx", &a));
    let tx_status =
        wait_bounded(&mut tx.0, Duration::from_secs(30)).expect("sender finished in 30 s");
    assert!(tx_status.success(), "sender failed: {tx_status}");

    // The receiver stops by itself once it has every frame, or after 20 s.
    let got = wait_for("WYVERN_AFP_GOT", Duration::from_secs(30)).unwrap_or_default();
    let rx_status =
        wait_bounded(&mut rx.0, Duration::from_secs(30)).expect("receiver finished in 30 s");
    assert!(rx_status.success(), "receiver failed: {rx_status}");
    eprintln!("receiver reported: {}", got.trim());
    assert_eq!(got.trim(), format!("WYVERN_AFP_GOT {FRAMES}"));
}

/// A child test process, killed (and reaped) when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn child_eal() -> Eal {
    let iface = std::env::var("WYVERN_AFP_IFACE").expect("WYVERN_AFP_IFACE");
    let prefix = std::env::var("WYVERN_AFP_PREFIX").expect("WYVERN_AFP_PREFIX");
    let args: Vec<String> = vec![
        "--no-pci".into(),
        "--no-huge".into(),
        "--no-shconf".into(),
        "-m".into(),
        "256".into(),
        "--no-telemetry".into(),
        "-l".into(),
        "0".into(),
        "--log-level=lib.eal:warning".into(),
        format!("--file-prefix={prefix}"),
        format!("--vdev=net_af_packet0,iface={iface}"),
    ];
    Eal::init(&args).expect("EAL with net_af_packet")
}

/// Receives frames of our EtherType until all FRAMES arrived or 20 s passed; checks
/// each frame's bytes and that every sequence number came once.
fn child_rx() {
    let eal = child_eal();
    let pool = PktPool::new(&eal, "afp_rx", 2047, 32, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut port = Port::open(&eal, "net_af_packet0", &PortConfig::default(), &pool).unwrap();
    println!("WYVERN_AFP_READY");
    let mut seen = vec![false; FRAMES as usize];
    let mut count = 0u32;
    let mut rx: Vec<Mbuf<'_>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count < FRAMES && Instant::now() < deadline {
        if port.rx_burst(0, &mut rx, 32) == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for m in rx.drain(..) {
            let d = m.data();
            if d.len() < 18 || d[12..14] != ETHERTYPE {
                continue; // not ours (the kernel's own traffic)
            }
            let seq = u32::from_be_bytes(d[14..18].try_into().unwrap());
            assert_eq!(d.len(), FRAME_LEN, "frame {seq} length");
            assert_eq!(&d[18..], payload(seq).as_slice(), "frame {seq} bytes");
            assert!(!seen[seq as usize], "frame {seq} twice");
            seen[seq as usize] = true;
            count += 1;
        }
    }
    println!("WYVERN_AFP_GOT {count}");
}

/// The bytes after the header and sequence number of frame `seq`.
fn payload(seq: u32) -> Vec<u8> {
    (0..FRAME_LEN - 18)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect()
}

/// Sends FRAMES broadcast frames of our EtherType, retrying what the queue did not take
/// (bounded).
fn child_tx() {
    let eal = child_eal();
    let pool = PktPool::new(&eal, "afp_tx", 1023, 32, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut port = Port::open(&eal, "net_af_packet0", &PortConfig::default(), &pool).unwrap();
    let src = port.mac_address().unwrap();
    let mut pending = Vec::new();
    pool.alloc_bulk(&mut pending, FRAMES as usize).unwrap();
    for (seq, m) in pending.iter_mut().enumerate() {
        let f = m.append(FRAME_LEN).expect("room for the frame");
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&ETHERTYPE);
        f[14..18].copy_from_slice(&(seq as u32).to_be_bytes());
        f[18..].copy_from_slice(&payload(seq as u32));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pending.is_empty() && Instant::now() < deadline {
        // Small bursts, paced, so the receiver's socket ring never overflows.
        let mut burst: Vec<Mbuf<'_>> = pending.drain(..pending.len().min(16)).collect();
        port.tx_burst(0, &mut burst);
        let rest = std::mem::take(&mut pending);
        pending = burst;
        pending.extend(rest);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(pending.is_empty(), "{} frames not sent", pending.len());
    let st = port.stats().unwrap();
    assert_eq!(st.tx_packets, u64::from(FRAMES));
}
