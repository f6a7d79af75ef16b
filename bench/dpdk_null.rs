//! What the safe DPDK layer costs on the data path: rx and tx bursts on `net_null`
//! (which makes frames on rx and frees them on tx, so the PMD itself costs next to
//! nothing) through `Port::rx_burst`/`Port::tx_burst`. Compare with testpmd's io
//! forwarding on net_null (~37–39 Mpps on this kind of machine, one core; see
//! `../shared/notes/dpdk-bindgen.md`).
//!
//! `cargo bench --features dpdk --bench dpdk_null -- [--bursts 10000000]`
//!
//! Each iteration: `rx_burst` of 32 frames from net_null0, then `tx_burst` of them back
//! to it (both through the generated C wrappers). One JSON line with Mpps (frames
//! received and sent, per second, counting each frame once). Bounded: `--bursts`
//! iterations (at most 10^9) or 60 s. No hugepages (`--no-huge`), `--no-pci`.

use std::time::{Duration, Instant};

use wyvern::transport::dpdk::{Eal, Mbuf, PktPool, Port, PortConfig};

fn main() {
    let mut bursts: u64 = 10_000_000;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--bursts" {
            bursts = it
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("--bursts N")
                .min(1_000_000_000);
        }
    }
    let args: Vec<String> = [
        "--no-pci",
        "--no-huge",
        "--no-shconf",
        "-m",
        "256",
        "--no-telemetry",
        "-l",
        "0",
        "--log-level=lib.eal:warning",
        "--vdev=net_null0",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("--file-prefix=wyvern-bench-{}", std::process::id())])
    .collect();
    let eal = Eal::init(&args).expect("EAL");
    let pool = PktPool::new(&eal, "bench_null", 8191, 256, PktPool::DEFAULT_DATA_ROOM).unwrap();
    let mut port = Port::open(&eal, "net_null0", &PortConfig::default(), &pool).unwrap();

    let mut pkts: Vec<Mbuf<'_>> = Vec::with_capacity(64);
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = Instant::now();
    let mut frames: u64 = 0;
    let mut done: u64 = 0;
    while done < bursts {
        port.rx_burst(0, &mut pkts, 32);
        frames += pkts.len() as u64;
        port.tx_burst(0, &mut pkts);
        if !pkts.is_empty() {
            Mbuf::free_bulk(&mut pkts);
        }
        done += 1;
        if done % 1_000_000 == 0 && Instant::now() > deadline {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let st = port.stats().unwrap();
    assert_eq!(st.rx_packets, frames);
    println!(
        "{{\"bench\":\"dpdk_null\",\"bursts\":{done},\"frames\":{frames},\"secs\":{secs:.3},\"mpps\":{:.2}}}",
        frames as f64 / secs / 1e6
    );
}
