//! Incast (issue 17), the CI size: 20 sender processes on 4 agents all send
//! checked, timestamped messages to one endpoint on a fifth agent, whose
//! reader is paced well below what they send (`wyvern-peer incast-send` /
//! `incast-recv`). The full 100 -> 1 is `bench/incast.sh`.
//!
//! The agents get small buffers (`--overflow-mib 1`, 256 KiB peer queues,
//! 512-slot submission rings) so that the receiving agent's overflow budget
//! is spent within a fraction of a second and the window measures the
//! steady state of an overloaded receiver: who gets the room the reader
//! frees.

mod common;

use std::time::{Duration, Instant};

use common::incast::{self, Plan};
use common::{check, Cluster};

/// The receiving agent's `--overflow-mib`.
const OVERFLOW_MIB: u64 = 1;

/// Jain's index the window must reach. Why 0.8: one of the four sending
/// agents starved outright (its 5 senders get nothing, the other 15 an equal
/// share) gives 15/20 = 0.75, two starved 0.5 (today's agent: 0.25, one node
/// takes everything); a fair scheduler measured 0.89 – 0.995 on this 2-core
/// machine at load 12 (the sending agents take up to 64 records of one
/// client at a time, so a 3 s window holds runs of one sender: lumpy).
/// [`MIN_SHARE`] catches a single starved sender, which the index alone
/// would not (19/20 = 0.95).
const JAIN_MIN: f64 = 0.8;
/// Every sender's delivered count in the window, relative to the mean.
const MIN_SHARE: f64 = 0.2;

fn small_buffers(dir: &std::path::Path) -> String {
    let f = dir.join("incast.toml");
    std::fs::write(
        &f,
        "peer_queue_bytes = 262144\nframe_bytes = 8192\n[pool]\nsub_slots = 512\n",
    )
    .unwrap();
    f.display().to_string()
}

#[test]
fn incast_20_to_1_loses_nothing_starves_no_sender_and_stays_bounded() {
    let t0 = Instant::now();
    // Removed when dropped, also when the test fails.
    let dir = tempfile::Builder::new()
        .prefix("wyvern-incast-cfg")
        .tempdir()
        .unwrap();
    let cfg = small_buffers(dir.path());
    let c = Cluster::start(
        5,
        &[
            "--overflow-mib",
            &OVERFLOW_MIB.to_string(),
            "--config",
            &cfg,
        ],
    );
    let plan = Plan {
        per_agent: 5,
        size: 64,
        rate: 5000,
        warmup_ms: 2000,
        window_ms: 3000,
    };
    let o = incast::run(&c, &plan);
    let r = &o.recv.0;
    let ms = |k: &str| r["lat_us"][k].as_f64().unwrap_or(0.0) / 1e3;
    eprintln!(
        "incast: {:.1} s; sent in the window: Jain {:.3}, min share {:.2}, by node {:?}; \
         delivered in it: {} msg/s, Jain {:.3}, by node {:?}; latency p50 {:.1} ms p99 {:.1} ms \
         p99.9 {:.1} ms; parked max {} B / {} msgs; RssAnon {} -> {} KiB ({} samples)",
        t0.elapsed().as_secs_f64(),
        incast::fairness(r, true).0,
        incast::fairness(r, true).1,
        incast::window_by_node(r, true),
        r["window"]["rate"],
        incast::fairness(r, false).0,
        incast::window_by_node(r, false),
        ms("p50"),
        ms("p99"),
        ms("p999"),
        o.parked_max,
        o.parked_msgs_max,
        o.anon_before / 1024,
        o.anon_max / 1024,
        o.samples,
    );
    eprintln!(
        "incast: [delivered, sent] in the window by sender: {}",
        r["window_counts"]
    );
    for i in 0..5 {
        let s = c.stat(i);
        eprintln!(
            "incast: agent {i}: rounds {}, sleeps {}, busy rounds {}, CPU {:.2} s",
            s["rounds"],
            s["sleeps"],
            s["busy_rounds"],
            common::procfs::cpu_secs(common::procfs::agent_pid(&c, i))
        );
    }

    // Nothing lost: every sender's sequence complete, in order and intact at
    // the receiver, and as long as the sender says it sent.
    check::intact("receiver", &o.recv);
    common::assert_ok("receiver", &o.recv);
    assert_eq!(r["senders"], 20, "{r}");
    let mut sent = 0;
    for (i, s) in o.senders.iter().enumerate() {
        common::assert_ok(&format!("sender {i}"), s);
        sent += s.0["sent"].as_u64().unwrap();
    }
    assert_eq!(r["received"], sent, "sent {sent}, received: {r}");
    let totals: u64 = r["totals"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(totals, sent, "{r}");

    // Backpressure reached every sender: each found its submission ring full
    // (the send returned WouldBlock at once and then waited for room).
    for (i, s) in o.senders.iter().enumerate() {
        assert!(
            s.0["full"].as_u64().unwrap() > 0,
            "sender {i} never met a full ring: {}",
            s.0
        );
    }

    // The receiving agent stayed within its bounds: held messages within
    // `overflow_bytes`, and its heap grew by no more than that plus 8 MiB
    // (measured: 5 MiB, the stream buffers of its four links and the
    // receive walk's state; unbounded parking would take ~47 MB/s of the
    // senders' first burst).
    let bound = OVERFLOW_MIB << 20;
    assert!(o.samples >= 10, "too few samples: {}", o.samples);
    assert!(
        o.parked_max > 0,
        "the overflow was never used: not an incast"
    );
    assert!(
        o.parked_max <= bound,
        "parked {} B > overflow bound {bound} B",
        o.parked_max
    );
    let grew = o.anon_max.saturating_sub(o.anon_before);
    assert!(
        grew <= bound + (8 << 20),
        "receiving agent's heap grew {grew} B (bound {bound} B + 8 MiB)"
    );

    // No sender starved in the window (all of them active in it): by what
    // each sent in it, all of which was delivered (checked above). (What was
    // delivered in the window itself left the senders seconds earlier, when
    // the buffers on the way filled: the startup's order, printed above.)
    let (jain, min_share) = incast::fairness(r, true);
    assert!(
        jain >= JAIN_MIN,
        "Jain's index {jain:.3} < {JAIN_MIN}; sent in the window by node: {:?}; [delivered, sent] by sender: {}",
        incast::window_by_node(r, true),
        r["window_counts"]
    );
    assert!(
        min_share >= MIN_SHARE,
        "a sender got {min_share:.2} of the mean share: {}",
        r["window_counts"]
    );
    // The receiver read at its pace, not slower (what the window measured).
    let rate = r["window"]["rate"].as_f64().unwrap();
    assert!(rate > plan.rate as f64 * 0.5, "window rate {rate}: {r}");
    drop(c);
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}
