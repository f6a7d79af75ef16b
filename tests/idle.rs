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
