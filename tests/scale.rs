//! Many agents on one machine (issue 17): real agent processes on loopback,
//! the suite's transport (`WYVERN_TEST_TRANSPORT`), every node sending checked
//! messages to every other. CI runs 8 agents; `WYVERN_SCALE_AGENTS=N` runs
//! more (the benchmark, `bench/scale.sh`, runs 32 and 64 and reports figures).

mod common;

use std::time::{Duration, Instant};

use common::procfs::rss_anon;
use common::{scenarios, Cluster};
use serde_json::Value;

/// A link's read buffer once idle (`READ_MIN` in src/transport/stream.rs).
const IDLE_RX_BUFFER: u64 = 16 * 1024;

fn agents() -> usize {
    std::env::var("WYVERN_SCALE_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// Whether every agent sees every peer up.
fn all_links_up(c: &Cluster, n: usize) -> bool {
    (0..n).all(|i| {
        let s = c.stat(i);
        let ps = s["peers"].as_array().unwrap();
        ps.len() == n - 1 && ps.iter().all(|p| p["state"] == "up")
    })
}

fn rx_buffers(s: &Value) -> Vec<u64> {
    s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rx_buffer_bytes"].as_u64().expect("rx_buffer_bytes"))
        .collect()
}

/// Every agent talks to every other, each pair's messages arrive intact and
/// in order, and once the traffic stops every link's read buffer shrinks back
/// to a small one (a busy link reads 256 KiB at a time: kept by every link, 32
/// agents' RSS was 0.27 MB per peer).
#[test]
fn many_agents_all_to_all_deliver_everything_and_idle_links_give_their_buffers_back() {
    let n = agents();
    let t0 = Instant::now();
    let c = Cluster::start(n, &[]);
    let deadline = t0 + Duration::from_secs(60);
    while !all_links_up(&c, n) {
        assert!(Instant::now() < deadline, "not every link up after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let up = t0.elapsed();
    let pids: Vec<i32> = (0..n)
        .map(|i| c.agents[i].as_ref().unwrap().pid())
        .collect();
    let rss0: Vec<u64> = pids.iter().map(|&p| rss_anon(p)).collect();
    let t1 = Instant::now();
    let stats = scenarios::all_to_all_n(&c, n, 20, "8,700,5000,300000");
    let moved = t1.elapsed();
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
    let max = |v: &[u64]| v.iter().max().copied().unwrap_or(0) >> 10;
    eprintln!(
        "{n} agents on {}: all {} links up in {:.2} s; all to all ({} messages) in {:.2} s; \
         busiest read buffer seen {} KiB; agents' RssAnon (KiB) before the traffic {:?}, \
         after it {:?} (largest {} KiB)",
        common::transport(),
        n * (n - 1),
        up.as_secs_f64(),
        n * (n - 1) * 20,
        moved.as_secs_f64(),
        busiest >> 10,
        rss0.iter().map(|r| r >> 10).collect::<Vec<_>>(),
        rss.iter().map(|r| r >> 10).collect::<Vec<_>>(),
        max(&rss)
    );
}
