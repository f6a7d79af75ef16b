//! Shared assertions on what `wyvern-peer` prints and what `wyvern stat` shows:
//! one wording and one set of checks for every test file and every transport.

use serde_json::Value;

use super::{assert_ok, counter, stat_settled, Cluster};

/// What [`super::Proc::result`] gives: the JSON result and whether it exited 0.
pub type PeerResult = (Value, bool);

/// A sender exited well and sent `want` messages.
pub fn sent(name: &str, r: &PeerResult, want: u64) {
    assert_ok(name, r);
    assert_eq!(r.0["sent"], want, "{name}: {}", r.0);
}

/// A receiver exited well with `want` messages, each intact (its checksum) and in
/// order (per sender).
pub fn delivered(name: &str, r: &PeerResult, want: u64) {
    assert_ok(name, r);
    assert_eq!(r.0["received"], want, "{name}: {}", r.0);
    intact(name, r);
}

/// Whatever a receiver got was intact and in order.
pub fn intact(name: &str, r: &PeerResult) {
    assert_eq!(r.0["corrupt"], 0, "{name}: {}", r.0);
    assert_eq!(r.0["out_of_order"], 0, "{name}: {}", r.0);
}

/// How many senders (node:endpoint) a receiver heard from.
pub fn senders(r: &PeerResult) -> usize {
    r.0["senders"].as_object().map_or(0, |m| m.len())
}

/// The entry for peer `node` in agent's stat `s`.
pub fn peer(s: &Value, node: usize) -> &Value {
    s["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node"] == node as u64))
        .unwrap_or_else(|| panic!("no peer {node} in {s}"))
}

/// A per-peer counter (`losses`, `resumes`, `frames_resent`...) of peer `node`.
pub fn peer_counter(s: &Value, node: usize, name: &str) -> u64 {
    peer(s, node)["counters"][name].as_u64().unwrap_or(0)
}

/// A per-peer counter summed over every peer of `s`.
pub fn peers_counter(s: &Value, name: &str) -> u64 {
    s["peers"].as_array().map_or(0, |ps| {
        ps.iter().filter_map(|p| p["counters"][name].as_u64()).sum()
    })
}

/// A transport counter summed over several agents' stats.
pub fn counter_sum(stats: &[&Value], name: &str) -> u64 {
    stats.iter().map(|s| counter(s, name)).sum()
}

/// Agent `i` once settled ([`stat_settled`]): every pool block back, no peer
/// declared lost, no malformed frame from any peer. Returns that stat.
pub fn settled_clean(c: &Cluster, i: usize) -> Value {
    let s = stat_settled(c, i);
    assert_eq!(
        s["blocks_free"], s["blocks_total"],
        "agent {i} leaked blocks: {s}"
    );
    for p in s["peers"].as_array().unwrap() {
        assert_eq!(p["counters"]["losses"], 0, "agent {i}: peer lost: {s}");
        assert_eq!(p["counters"]["malformed"], 0, "agent {i}: malformed: {s}");
    }
    s
}

/// Whether stat `s` lists the degraded path `what` (`degraded` in --json).
pub fn degraded_listed(s: &Value, what: &str) -> bool {
    s["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["what"] == what)
}

/// The one entry for the degraded path `what` in stat `s` (`degraded` in
/// --json): its reason and its fix.
pub fn degraded_entry<'a>(s: &'a Value, what: &str) -> (&'a str, &'a str) {
    let listed: Vec<_> = s["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["what"] == what)
        .collect();
    assert_eq!(listed.len(), 1, "{what} listed once: {s}");
    eprintln!("{}", listed[0]);
    (
        listed[0]["why"].as_str().unwrap(),
        listed[0]["fix"].as_str().unwrap(),
    )
}

/// Agent `i` said the degraded path `what` loudly: one `DEGRADED (what)`
/// warning in its log, and a `DEGRADED what:` line in `wyvern stat`'s text.
pub fn degraded_said(c: &Cluster, i: usize, what: &str) {
    let log = c.log(i);
    assert_eq!(
        log.matches(&format!("DEGRADED ({what})")).count(),
        1,
        "agent {i}: {log}"
    );
    let o = std::process::Command::new(super::WYVERN)
        .args(["stat", "--interval", "0", "--socket"])
        .arg(c.socket(i))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains(&format!("DEGRADED {what}: ")),
        "agent {i}: {out}"
    );
}

/// Every peer of `s` is up.
pub fn all_up(s: &Value) {
    let ps = s["peers"].as_array().unwrap();
    assert!(
        ps.iter().all(|p| p["state"] == "up"),
        "a peer is not up: {s}"
    );
}

/// Every peer of `s` rides `transport`.
pub fn peers_on(s: &Value, transport: &str) {
    for p in s["peers"].as_array().unwrap() {
        assert_eq!(p["transport"], transport, "{s}");
    }
}
