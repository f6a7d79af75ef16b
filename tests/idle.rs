//! The idle policies on a shared machine.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// `--idle spin` on cores other work also wants (more spinning threads than
/// cores): the agent notices it is being preempted, says so once, counts it,
/// and yields its core when idle from then on (`idle` in stat says so).
#[test]
fn a_spinning_agent_on_a_shared_core_says_so_and_yields() {
    let c = Cluster::start(2, &["--idle", "spin"]);
    let s = c.stat(0);
    assert_eq!(s["idle"], "spin", "{s}");
    // More busy threads than cores, for at most 10 s: somebody must wait.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..cores + 1)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(10) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = c.stat(0);
    while s["idle"] == "spin" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        s = c.stat(0);
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
    assert_eq!(s["idle"], "spin, yielding (core shared)", "{s}");
    assert!(counter_top(&s, "preempted") >= 5, "{s}");
    let log = c.log(0);
    assert!(
        log.contains("its core is shared") && log.contains("--idle adaptive"),
        "{log}"
    );
    // Still a working agent.
    let rx = c.peer(1, &["--ep", "100", "recv", "--count", "200"]);
    let tx = c.peer(0, &["send", "--to", "1:100", "--count", "200"]);
    assert_ok("sender", &tx.result(Duration::from_secs(60)));
    let r = rx.result(Duration::from_secs(60));
    assert_ok("receiver", &r);
    assert_eq!(r.0["received"], 200);
}

fn counter_top(s: &serde_json::Value, k: &str) -> u64 {
    s[k].as_u64().unwrap_or(0)
}

/// An adaptive agent whose clients rang its bell (they do when it sleeps and
/// they submit) sleeps again once idle. The bells' epoll events went to the
/// transport (a kind inside its range), which took them for its listener and
/// never drained them: readable for ever, the agent never slept again, at
/// full CPU with nothing to do.
#[test]
fn an_adaptive_agent_sleeps_again_after_its_clients_rang() {
    use wyvern::client::{Client, Mode};
    let c = Cluster::start(2, &[]);
    let pid = c.agents[0].as_ref().unwrap().pid();
    let cl = Client::attach(c.socket(0), "ringer").unwrap();
    let ep = cl.open_endpoint(None).unwrap();
    let me = ep.id();
    // Sends with pauses, so that the agent sleeps in between and each
    // submission rings its bell.
    for i in 0..20u8 {
        std::thread::sleep(Duration::from_millis(20));
        ep.send(0, me, &[i], Mode::Buffered, Duration::from_secs(5))
            .unwrap();
        ep.recv(Duration::from_secs(5)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (s0, cpu0) = (c.stat(0), procfs::cpu_secs(pid));
    std::thread::sleep(Duration::from_secs(1));
    let (s1, cpu1) = (c.stat(0), procfs::cpu_secs(pid));
    let sleeps = s1["sleeps"].as_u64().unwrap() - s0["sleeps"].as_u64().unwrap();
    let share = cpu1 - cpu0;
    assert!(
        sleeps >= 50 && share < 0.3,
        "idle for 1 s after its client rang: {sleeps} sleeps, {:.0} % CPU; busy rounds {} -> {}",
        share * 100.0,
        s0["busy_rounds"],
        s1["busy_rounds"]
    );
    drop(ep);
    drop(cl);
}
