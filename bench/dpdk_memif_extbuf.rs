//! What the extbuf tx path saves the sender, measured without agents or clients: both
//! ends of a memif pair in this process (`DpdkIo` on each, one thread), the client
//! sending data packets whose payloads are consecutive ranges of a 64 MiB buffer (as a
//! large message's packets are ranges of its pool block), the server receiving every one
//! before the next burst. Alternating sets of packets (`--set`, default 20,000) sent
//! copied (`pinned` false: payload encoded into the mbuf) and attached (`pinned` true:
//! header mbuf + mbuf attached to the range; memif's copy into its ring is then the only
//! one). The time of `send_packet` + `flush` (the sender's share: wyvern's copy or
//! attach, the CRC-32C, memif's copy into the ring) is taken apart from the receiver's.
//!
//! `cargo bench --features dpdk --bench dpdk_memif_extbuf -- [--mtu 1500|9000] [--sets 10]`
//!
//! Prints one JSON line per path: sender ns per packet and per KiB of payload (median
//! of the sets), and the whole loop's payload GB/s. Bounded: `--sets` (at most 1000) of
//! `--set` packets (at most 10^6), or 120 s. No hugepages, `--no-pci`, a socket in the
//! abstract namespace of its own.

use std::time::{Duration, Instant};

use wyvern::transport::datagram::PacketIo;
use wyvern::transport::dpdk::{DpdkIo, DpdkIoConfig, Eal};
use wyvern::wire::packet::{PacketHeader, PktKind, PKT_HEADER};
use wyvern::wire::reliable::Ack;

const REGION: usize = 64 << 20;
const BURST: usize = 32;

fn arg(name: &str, default: u64, max: u64) -> u64 {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} N"))
                .min(max);
        }
    }
    default
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mtu = arg("--mtu", 1500, 9000) as u16;
    let sets = arg("--sets", 10, 1000).max(2);
    let set = arg("--set", 20_000, 1_000_000).max(BURST as u64);
    let bsize = if mtu > 1500 { ",bsize=9216" } else { "" };
    let sock = format!(
        "socket=/tmp/wyvern-extbuf-bench-{}.sock",
        std::process::id()
    );
    let args: Vec<String> = vec![
        "--no-pci".into(),
        format!("--vdev=net_memif0,role=server,{sock}{bsize}"),
        format!("--vdev=net_memif1,role=client,{sock}{bsize}"),
        format!("--file-prefix=wyvern-extbuf-bench-{}", std::process::id()),
        "--no-shconf".into(),
        "--no-huge".into(),
        "-m".into(),
        "256".into(),
        "--no-telemetry".into(),
        "-l".into(),
        "0".into(),
        "--log-level=lib.eal:warning".into(),
        "--log-level=pmd.net.memif:error".into(),
    ];
    let eal = Eal::init(&args).expect("EAL with both ends of a memif pair");
    let cfg = |me| DpdkIoConfig {
        me,
        nodes: 2,
        eal_args: args.clone(),
        mtu: (mtu > 1500).then_some(mtu),
        extbuf: true,
        ..DpdkIoConfig::default()
    };
    let mut server = DpdkIo::open_port(&eal, &cfg(0), Some("net_memif0"), "bs").unwrap();
    let mut client = DpdkIo::open_port(&eal, &cfg(1), Some("net_memif1"), "bc").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(server.link_up() && client.link_up()) {
        assert!(Instant::now() < deadline, "memif pair not up in 20 s");
        let _ = client.recv().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(client.tx_path(), "extbuf");
    let payload = client.max_packet() - PKT_HEADER;
    let region: Vec<u8> = (0..REGION).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut at = 0usize;
    let mut seq = 0u64;
    // [copied, attached]: sender seconds per set, packets, and the loop's time.
    let mut per_set: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut loop_secs = [0f64; 2];
    let mut pkts = [0u64; 2];
    let stop = Instant::now() + Duration::from_secs(120);
    for s in 0..sets {
        let pinned = s % 2 == 1;
        let k = usize::from(pinned);
        let mut sender = Duration::ZERO;
        let t_set = Instant::now();
        let mut sent = 0u64;
        while sent < set {
            let t = Instant::now();
            for _ in 0..BURST {
                if at + payload > REGION {
                    at = 0;
                }
                let h = PacketHeader {
                    kind: PktKind::Data,
                    flags: 0,
                    src_node: 1,
                    dst_node: 0,
                    src_epoch: 1,
                    dst_epoch: 1,
                    seq,
                    ack: Ack::default(),
                };
                let ok = client
                    .send_packet(0, &h, &region[at..at + payload], pinned)
                    .unwrap();
                assert!(ok, "the device refused a packet");
                at += payload;
                seq += 1;
            }
            client.flush();
            sender += t.elapsed();
            sent += BURST as u64;
            // The receiver takes the burst (its ring then has room for the next).
            let mut got = 0;
            let t_rx = Instant::now() + Duration::from_secs(5);
            while got < BURST {
                assert!(Instant::now() < t_rx, "frames lost: {:?}", client.stats());
                while let Some(f) = server.recv().unwrap() {
                    got += 1;
                    server.release(f);
                }
                client.flush();
            }
        }
        loop_secs[k] += t_set.elapsed().as_secs_f64();
        pkts[k] += sent;
        per_set[k].push(sender.as_secs_f64() / sent as f64);
        if Instant::now() > stop {
            break;
        }
    }
    let st = client.stats();
    for (k, name) in [(0, "copy"), (1, "extbuf")] {
        let ns = median(&mut per_set[k]) * 1e9;
        println!(
            "{{\"path\":\"{name}\",\"mtu\":{mtu},\"payload\":{payload},\"packets\":{},\"sender_ns_per_packet\":{ns:.1},\"sender_ns_per_kib\":{:.1},\"loop_payload_gb_per_s\":{:.3}}}",
            pkts[k],
            ns * 1024.0 / payload as f64,
            (pkts[k] * payload as u64) as f64 / loop_secs[k] / 1e9
        );
    }
    eprintln!(
        "attached frames {} (copied at the end of a call: {}), bytes attached {} copied {}",
        st.tx_attached, st.tx_attached_copied, st.tx_bytes_attached, st.tx_bytes_copied
    );
}
