//! The incast pattern on a real cluster (issue 17): sender processes on
//! agents 1.. all send to one endpoint on agent 0, whose reader is slower
//! than they are (`wyvern-peer incast-send` / `incast-recv`), while the
//! receiving agent's memory and held messages are sampled.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::procfs::{agent_pid, rss_anon};
use super::{Cluster, Proc};

/// The receiver's endpoint id on agent 0.
pub const RECV_EP: u32 = 7;

/// What to run.
pub struct Plan {
    /// Sender processes per sending agent (agents 1.. of the cluster).
    pub per_agent: usize,
    /// Message size (at least 32: the header).
    pub size: usize,
    /// The receiver reads at most this many messages per second.
    pub rate: u64,
    /// From the first message to the window.
    pub warmup_ms: u64,
    /// The measuring window.
    pub window_ms: u64,
}

/// What happened.
pub struct Outcome {
    /// The receiver's JSON result and whether it exited 0.
    pub recv: (Value, bool),
    /// Each sender's JSON result and whether it exited 0.
    pub senders: Vec<(Value, bool)>,
    /// Largest `parked_bytes` agent 0 showed.
    pub parked_max: u64,
    /// Largest `parked_msgs`.
    pub parked_msgs_max: u64,
    /// Agent 0's RssAnon before the senders started, and at most during the run.
    pub anon_before: u64,
    pub anon_max: u64,
    /// Stat samples taken.
    pub samples: usize,
}

/// Run the pattern on `c` (agent 0 receives, every other agent sends).
pub fn run(c: &Cluster, plan: &Plan) -> Outcome {
    let stop = c.dir.join("incast-stop");
    let go = c.dir.join("incast-go");
    let sender_agents = c.agents.len() - 1;
    let n = sender_agents * plan.per_agent;
    let size = plan.size.to_string();
    let recv = c.peer(
        0,
        &[
            "--ep",
            &RECV_EP.to_string(),
            "--sizes",
            &size,
            "--timeout-ms",
            "20000",
            "incast-recv",
            "--senders",
            &n.to_string(),
            "--rate",
            &plan.rate.to_string(),
            "--warmup-ms",
            &plan.warmup_ms.to_string(),
            "--window-ms",
            &plan.window_ms.to_string(),
            "--stop-file",
            &super::path_str(&stop),
        ],
    );
    let to = format!("0:{RECV_EP}");
    let senders: Vec<Proc> = (0..n)
        .map(|i| {
            c.peer(
                1 + i % sender_agents,
                &[
                    "--sizes",
                    &size,
                    "incast-send",
                    "--to",
                    &to,
                    "--stop-when",
                    &super::path_str(&stop),
                    "--start-when",
                    &super::path_str(&go),
                    // Bounded: a receiver that never says stop fails them.
                    "--max-secs",
                    "40",
                ],
            )
        })
        .collect();
    let pid = agent_pid(c, 0);
    let anon_before = rss_anon(pid);
    std::fs::write(&go, b"go").unwrap();
    // Sample agent 0 until the senders were told to stop and a little after
    // (the drain), bounded.
    let (mut parked_max, mut parked_msgs_max, mut anon_max, mut samples) = (0, 0, anon_before, 0);
    let deadline = Instant::now() + Duration::from_millis(plan.warmup_ms + plan.window_ms + 20_000);
    let mut stopped_at = None;
    while Instant::now() < deadline {
        let s = c.stat(0);
        parked_max = parked_max.max(s["parked_bytes"].as_u64().unwrap_or(0));
        parked_msgs_max = parked_msgs_max.max(s["parked_msgs"].as_u64().unwrap_or(0));
        anon_max = anon_max.max(rss_anon(pid));
        samples += 1;
        if stop.exists() {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if at.elapsed() > Duration::from_millis(500) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Duration::from_secs(60);
    let senders = senders.into_iter().map(|p| p.result(t)).collect();
    let recv = recv.result(t);
    Outcome {
        recv,
        senders,
        parked_max,
        parked_msgs_max,
        anon_before,
        anon_max,
        samples,
    }
}

/// Jain's fairness index of the senders' rates in the window, and the
/// smallest relative to their mean: by what they sent in it (`sent_window`:
/// every message of it was delivered by the end, checked) when `sent`, else
/// by what was delivered in it (`window`).
pub fn fairness(recv: &Value, sent: bool) -> (f64, f64) {
    let w = &recv[if sent { "sent_window" } else { "window" }];
    (
        w["jain"].as_f64().unwrap_or(0.0),
        w["min_rel"].as_f64().unwrap_or(0.0),
    )
}

/// Per sending agent (node), the messages its senders sent in the window
/// (`sent`) or got delivered in it: where a starved node shows.
pub fn window_by_node(recv: &Value, sent: bool) -> Vec<(u64, u64)> {
    let mut by: std::collections::BTreeMap<u64, u64> = Default::default();
    if let Some(m) = recv["window_counts"].as_object() {
        for (k, v) in m {
            let node = k
                .split(':')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            *by.entry(node).or_default() += v[sent as usize].as_u64().unwrap_or(0);
        }
    }
    by.into_iter().collect()
}
