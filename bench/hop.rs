//! Client→agent hop latency against the physical limit, a cache-line round
//! trip between two cores, both measured in the same run.
//!
//! `cargo build --release --bins && cargo bench --bench hop`
//!
//! * wyvern: one `wyvern agent --idle spin` (single node) is started from
//!   `target/release/wyvern`; this process attaches as a client, opens an
//!   endpoint and sends 8-byte messages to that same endpoint: client →
//!   agent (submission ring) → client (receive ring) is one round trip of
//!   two hops, so hop = RTT / 2. `recv` spins for 50 µs before it would
//!   sleep, so with a spinning agent the loop never sleeps.
//! * limit: two threads ping-pong a counter through two `AtomicU64`s on
//!   separate 128-byte-aligned lines, each spinning for the other's value:
//!   one-way = RTT / 2.
//!
//! Core layout (2 cores): client thread and the cache-line initiator on
//! core 0; the agent's polling thread (`--cores 1`) and the cache-line
//! responder on core 1. While the cache line is measured the agent is
//! stopped (SIGSTOP, SIGCONT after) so it does not compete with the
//! responder for core 1. Both are timed the same way: batches of `BATCH`
//! round trips, the median over the batches of one run, then the median of
//! `RUNS` runs (runs alternate hop / cache line so noise hits both).
//!
//! Environment: `RUNS` (default 5), `HOP_ITERS` round trips per run and
//! measure (default 200000), `HOP_PIN=0` to leave everything unpinned,
//! `WYVERN_BIN` for another agent binary. Bounded: at most `RUNS * HOP_ITERS`
//! round trips of each kind, every receive has a 5 s timeout, and a run
//! stops early after 20 s.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_or, median, Agents};
use nix::sys::signal::Signal;
use wyvern::client::{Client, Mode};

const BATCH: usize = 1000;
const RUN_CAP: Duration = Duration::from_secs(20);
const TARGET: f64 = 3.0;

#[repr(align(128))]
struct Line(AtomicU64);

/// Median over batches of the per-round-trip time (ns) of `rt`.
fn timed_batches(iters: usize, mut rt: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let t_run = Instant::now();
    let mut per_rt = Vec::with_capacity(iters / BATCH + 1);
    for _ in 0..(iters / BATCH).max(1) {
        let t0 = Instant::now();
        for _ in 0..BATCH {
            rt()?;
        }
        per_rt.push(t0.elapsed().as_nanos() as f64 / BATCH as f64);
        if t_run.elapsed() > RUN_CAP {
            eprintln!("note: run cut short after {:?}", RUN_CAP);
            break;
        }
    }
    Ok(median(&per_rt))
}

/// One cache-line run: returns the median RTT in ns.
fn cacheline_run(iters: usize, pin: bool) -> Result<f64, String> {
    let ping = Arc::new(Line(AtomicU64::new(0)));
    let pong = Arc::new(Line(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let responder = {
        let (ping, pong, stop) = (ping.clone(), pong.clone(), stop.clone());
        std::thread::spawn(move || {
            if pin {
                common::pin(1).expect("pin the responder");
            }
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = ping.0.load(Ordering::Acquire);
                if v != last {
                    pong.0.store(v, Ordering::Release);
                    last = v;
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let mut seq = 0u64;
    let deadline = Instant::now() + RUN_CAP + Duration::from_secs(5);
    let r = timed_batches(iters, || {
        seq += 1;
        ping.0.store(seq, Ordering::Release);
        while pong.0.load(Ordering::Acquire) != seq {
            std::hint::spin_loop();
            if Instant::now() > deadline {
                return Err("cache-line responder stopped answering".into());
            }
        }
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    responder.join().map_err(|_| "responder panicked")?;
    r
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hop bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let runs: usize = env_or("RUNS", 5usize).max(1);
    let iters: usize = env_or("HOP_ITERS", 200_000usize).max(BATCH);
    let ncores = common::cores();
    let pin = env_or("HOP_PIN", 1u32) != 0 && ncores >= 2;
    let agents = Agents::start(
        "hop",
        1,
        "spin",
        &[pin.then_some(1)],
        &["--block-bytes", "16MiB", "--max-clients", "4"],
    )?;
    if pin {
        common::pin(0)?;
    }
    let c = Client::attach(&agents.sockets[0], "hop-bench").map_err(|e| e.to_string())?;
    let ep = c.open_endpoint(None).map_err(|e| e.to_string())?;
    let (node, me) = (c.node(), ep.id());
    let t = Duration::from_secs(5);
    let payload = [0x5au8; 8];
    let mut hop_rt = || -> Result<(), String> {
        ep.send(node, me, &payload, Mode::Buffered, t)
            .map_err(|e| format!("send: {e}"))?;
        let m = ep.recv(t).map_err(|e| format!("recv: {e}"))?;
        if m.data().len() != 8 {
            return Err("short message".into());
        }
        Ok(())
    };

    println!("== hop: client→agent hop vs cache-line round trip ==");
    println!(
        "config: {} cores; {}; agent --idle spin, pool on {}; 8 B messages to own endpoint; \
         {runs} runs x {iters} round trips each, timed in batches of {BATCH}",
        ncores,
        if pin {
            "client + cache-line initiator pinned to core 0, agent (--cores 1) + cache-line \
             responder on core 1; agent SIGSTOPped while the cache line is measured"
        } else {
            "unpinned (HOP_PIN=0)"
        },
        c.backing()
    );
    // Warm-up: page faults, caches, branch predictors, CPU frequency.
    for _ in 0..20_000 {
        hop_rt()?;
    }
    cacheline_run(20_000, pin)?;

    let (mut hops, mut lines) = (Vec::new(), Vec::new());
    println!(
        "{:>4} {:>14} {:>20} {:>7}",
        "run", "hop ns (RTT/2)", "cache line ns (RTT/2)", "ratio"
    );
    for r in 0..runs {
        let h = timed_batches(iters, &mut hop_rt)? / 2.0;
        agents.signal(0, Signal::SIGSTOP);
        let l = cacheline_run(iters, pin);
        agents.signal(0, Signal::SIGCONT);
        let l = l? / 2.0;
        println!("{:>4} {:>14.1} {:>20.1} {:>7.2}", r + 1, h, l, h / l);
        hops.push(h);
        lines.push(l);
    }
    // The agent must still be alive and serving after the stops.
    hop_rt()?;
    let (h, l) = (median(&hops), median(&lines));
    let ratio = h / l;
    println!(
        "median: hop {h:.1} ns, cache line {l:.1} ns, ratio {ratio:.2} (target <= {TARGET:.1}: {})",
        if ratio <= TARGET { "met" } else { "MISSED" }
    );
    println!(
        "{}",
        serde_json::json!({"bench": "hop", "runs": runs, "iters": iters, "pinned": pin,
            "backing": c.backing().to_string(),
            "hop_ns": hops, "cacheline_ns": lines, "hop_ns_median": h,
            "cacheline_ns_median": l, "ratio": ratio, "target": TARGET, "met": ratio <= TARGET})
    );
    drop(ep);
    let _ = c.detach();
    drop(agents);
    Ok(())
}
