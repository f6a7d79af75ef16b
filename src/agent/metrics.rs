//! The Prometheus endpoint (`wyvern agent --metrics ADDR`): HPC sites
//! scrape node metrics over HTTP. A thread of its own answers each scrape
//! with a fresh [`Snapshot`] taken over the agent's control socket, exactly
//! what `wyvern stat --json` shows, so the polling thread never serves HTTP
//! and the two views cannot disagree. Requests are bounded in size and
//! time, and served concurrently (a few at once), so one slow or endless
//! request cannot stall the next scrape or grow the agent.
//!
//! The page is written by the `prometheus-client` crate: the Prometheus text
//! format 0.0.4, or OpenMetrics 1.0 when the scraper asks for it (`Accept:
//! application/openmetrics-text`). Names follow Prometheus' conventions:
//! `wyvern_` first, the unit last (`_bytes`, `_seconds`, then `_total` for
//! counters: `wyvern_peer_rx_bytes_total`), every family with HELP and TYPE,
//! a `node` label on every series, and no label that churns (clients are
//! told apart by pool slot and name, not pid). docs/tools.md lists them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::stats::Snapshot;

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The label set of one series (beside the registry-wide `node`).
type Labels = Vec<(&'static str, String)>;
/// A gauge family of this page.
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
/// A counter family of this page.
type CounterFamily = Family<Labels, Counter<u64>>;

/// Each peer counter of [`super::stats::PeerCounters`] (by its `wyvern stat
/// --json` name): the metric name (before the unit), its unit, its help.
/// A unit test checks that every counter has a row.
const PEER_COUNTERS: &[(&str, &str, Option<Unit>, &str)] = &[
    (
        "msgs_tx",
        "peer_tx_messages",
        None,
        "Messages sent to the peer (whole messages, not chunks)",
    ),
    ("bytes_tx", "peer_tx", Some(Unit::Bytes), "Payload bytes sent to the peer"),
    ("frames_tx", "peer_tx_frames", None, "Frames written to the peer"),
    ("msgs_rx", "peer_rx_messages", None, "Messages received from the peer"),
    ("bytes_rx", "peer_rx", Some(Unit::Bytes), "Payload bytes received from the peer"),
    (
        "bytes_rx_direct",
        "peer_rx_direct",
        Some(Unit::Bytes),
        "Of the payload bytes received, those the transport read straight into their pool block (no copy)",
    ),
    ("frames_rx", "peer_rx_frames", None, "Frames read from the peer"),
    (
        "malformed",
        "peer_malformed_frames",
        None,
        "Malformed frames or records from the peer (the connection was closed for each)",
    ),
    (
        "errors",
        "peer_send_errors",
        None,
        "Sends to the peer that failed (peer lost, unknown endpoint at the peer, ...)",
    ),
    ("losses", "peer_link_losses", None, "Times the link to the peer was lost"),
    (
        "rx_stalls",
        "peer_rx_stalls",
        None,
        "Times the peer's frames began to wait for a full receive ring or pool (backpressure)",
    ),
    (
        "resumes",
        "peer_resumes",
        None,
        "Broken connections to the peer resumed without loss",
    ),
    (
        "frames_resent",
        "peer_resent_frames",
        None,
        "Frames sent again to the peer on resumed connections",
    ),
    (
        "replies_dropped",
        "peer_dropped_replies",
        None,
        "Acks and Nacks from the peer that matched no send or found the completion backlog full",
    ),
    (
        "idle_closes",
        "peer_idle_closes",
        None,
        "Times the link to the peer was closed for idleness (link_idle_ms; made again by the next message)",
    ),
];

/// Transport counters that are levels, not counts (and every `*_largest`).
const TRANSPORT_GAUGES: &[&str] = &[
    "frames_tx_queued",
    "port_wakes_agent",
    "rails",
    "verbs_rails",
];

/// Whether the transport's `key` is a level (exported as a gauge).
fn transport_gauge(key: &str) -> bool {
    TRANSPORT_GAUGES.contains(&key) || key.ends_with("_largest")
}

/// The metric name (after `wyvern_transport_`) and unit of a transport
/// counter as `wyvern stat` names it: count nouns and `bytes` move to the
/// end (`packets_resent_timeout` -> `resent_timeout_packets`,
/// `tx_bytes_copied` -> `tx_copied` + bytes).
fn transport_metric_name(key: &str) -> (String, Option<Unit>) {
    let key = sanitize(key);
    let mut words: Vec<&str> = key.split('_').filter(|w| !w.is_empty()).collect();
    let mut unit = None;
    if let Some(i) = words.iter().position(|w| *w == "bytes") {
        if words.len() > 1 {
            words.remove(i);
            unit = Some(Unit::Bytes);
        }
    }
    for noun in ["packets", "frames"] {
        if let Some(i) = words.iter().position(|w| *w == noun) {
            if i + 1 < words.len() {
                let w = words.remove(i);
                words.push(w);
            }
        }
    }
    (words.join("_"), unit)
}

/// One scrape's page under construction.
struct Page {
    reg: Registry,
    gauges: BTreeMap<String, GaugeFamily>,
    counters: BTreeMap<String, CounterFamily>,
}

impl Page {
    fn new(node: u32) -> Page {
        let labels = [(Cow::Borrowed("node"), Cow::Owned(node.to_string()))];
        Page {
            reg: Registry::with_prefix_and_labels("wyvern", labels.into_iter()),
            gauges: BTreeMap::new(),
            counters: BTreeMap::new(),
        }
    }

    /// The gauge family `name` (registered on first use).
    fn gauges(&mut self, name: &str, unit: Option<Unit>, help: &str) -> GaugeFamily {
        let key = full_name(name, unit.as_ref());
        if let Some(f) = self.gauges.get(&key) {
            return f.clone();
        }
        let f = GaugeFamily::default();
        match unit {
            Some(u) => self.reg.register_with_unit(name, help, u, f.clone()),
            None => self.reg.register(name, help, f.clone()),
        }
        self.gauges.insert(key, f.clone());
        f
    }

    /// The counter family `name` (without `_total`; registered on first use).
    fn counters(&mut self, name: &str, unit: Option<Unit>, help: &str) -> CounterFamily {
        let key = full_name(name, unit.as_ref());
        if let Some(f) = self.counters.get(&key) {
            return f.clone();
        }
        let f = CounterFamily::default();
        match unit {
            Some(u) => self.reg.register_with_unit(name, help, u, f.clone()),
            None => self.reg.register(name, help, f.clone()),
        }
        self.counters.insert(key, f.clone());
        f
    }

    fn gauge(&mut self, name: &str, unit: Option<Unit>, help: &str, labels: Labels, v: f64) {
        self.gauges(name, unit, help).get_or_create(&labels).set(v);
    }

    fn counter(&mut self, name: &str, unit: Option<Unit>, help: &str, labels: Labels, v: u64) {
        self.counters(name, unit, help)
            .get_or_create(&labels)
            .inc_by(v);
    }
}

fn full_name(name: &str, unit: Option<&Unit>) -> String {
    match unit {
        Some(u) => format!("{name}_{}", u.as_str()),
        None => name.to_string(),
    }
}

/// The cargo features this agent was built with, comma-separated.
fn features() -> String {
    let mut f = Vec::new();
    if cfg!(feature = "dpdk") {
        f.push("dpdk");
    }
    if cfg!(feature = "verbs") {
        f.push("verbs");
    }
    f.join(",")
}

/// Fill a registry from a snapshot.
fn registry(s: &Snapshot) -> Registry {
    let mut p = Page::new(s.node);
    p.reg.register(
        "build",
        "The agent's version and cargo features",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("features", features()),
        ]),
    );
    let none = Labels::new;
    p.gauge("up", None, "1: the agent answers", none(), 1.0);
    p.gauge("nodes", None, "Nodes in the job", none(), s.nodes as f64);
    p.gauge(
        "pool",
        Some(Unit::Bytes),
        "Size of the shared-memory pool",
        none(),
        s.pool_bytes as f64,
    );
    p.gauge(
        "pool_hugepages",
        None,
        "1 when the pool is on hugepages",
        none(),
        s.backing.starts_with("hugepages") as u8 as f64,
    );
    p.gauge(
        "block_region",
        Some(Unit::Bytes),
        "Size of the pool's block region (large messages)",
        none(),
        s.blocks_total as f64,
    );
    p.gauge(
        "block_region_free",
        Some(Unit::Bytes),
        "Free bytes of the block region",
        none(),
        s.blocks_free as f64,
    );
    p.gauge(
        "uptime",
        Some(Unit::Seconds),
        "Time since the agent started",
        none(),
        s.uptime_s,
    );
    p.counter(
        "poll_rounds",
        None,
        "Rounds of the agent's polling loop",
        none(),
        s.rounds,
    );
    p.counter(
        "sleeps",
        None,
        "Times the adaptive agent went to sleep",
        none(),
        s.sleeps,
    );
    p.counter(
        "preemptions",
        None,
        "Times the spinning polling thread was preempted (its core is shared)",
        none(),
        s.preempted,
    );
    let help = "1 for each degraded path the agent runs on (what: hugepages, spin, spin_shared, \
                peer_auth, hybrid_fallback, pool_guard, cores, mtu); `wyvern stat` says why and the fix";
    p.gauges("degraded", None, help);
    for d in &s.degraded {
        p.gauge("degraded", None, help, vec![("what", d.what.clone())], 1.0);
    }
    let links_help = "Peers by the state of their link (up: open; idle: never linked, closed: \
                      closed for idleness, on-demand links)";
    p.gauges("links", None, links_help);
    for (state, v) in &s.links {
        p.gauge(
            "links",
            None,
            links_help,
            vec![("state", state.clone())],
            *v as f64,
        );
    }
    p.counter(
        "links_closed_idle",
        None,
        "Times links were closed for idleness (link_idle_ms), all peers",
        none(),
        s.peers.iter().map(|p| p.counters.idle_closes).sum(),
    );
    p.counters(
        "busy_rounds",
        None,
        "Polling rounds that found work, by where (source): what keeps an adaptive agent awake",
    );
    for (src, v) in &s.busy_rounds {
        p.counter(
            "busy_rounds",
            None,
            "Polling rounds that found work, by where (source): what keeps an adaptive agent awake",
            vec![("source", src.clone())],
            *v,
        );
    }
    p.counter(
        "local_messages",
        None,
        "Messages delivered between clients of this node",
        none(),
        s.local_msgs,
    );
    p.counter(
        "clients_evicted",
        None,
        "Clients detached for misbehaving",
        none(),
        s.clients_evicted,
    );
    p.counter(
        "clients_departed_reclaimed",
        None,
        "Departed clients whose unsent sends were dropped early to free a slot for a new client",
        none(),
        s.clients_departed_reclaimed,
    );
    p.counter(
        "pool_pages_damaged",
        None,
        "Pool pages a client punched out that the agent now holds privately (slots retired, blocks quarantined)",
        none(),
        s.pool_pages_damaged,
    );
    p.gauge(
        "parked_messages",
        None,
        "Peers' messages waiting for a full receive ring or an endpoint not open yet",
        none(),
        s.parked_msgs as f64,
    );
    p.gauge(
        "parked",
        Some(Unit::Bytes),
        "Bytes of the parked messages",
        none(),
        s.parked_bytes as f64,
    );
    p.gauge(
        "clients",
        None,
        "Attached clients",
        none(),
        s.clients.len() as f64,
    );

    // Per peer. The families exist (HELP and TYPE) even with no peer.
    p.gauges("peer_up", None, "1: the link to the peer is up");
    for (_, name, unit, help) in PEER_COUNTERS {
        p.counters(name, unit.clone(), help);
    }
    for peer in &s.peers {
        let labels = || -> Labels {
            vec![
                ("peer", peer.node.to_string()),
                ("transport", peer.transport.clone()),
            ]
        };
        p.gauge(
            "peer_up",
            None,
            "1: the link to the peer is up",
            labels(),
            (peer.state == "up") as u8 as f64,
        );
        p.gauge(
            "peer_queued",
            Some(Unit::Bytes),
            "Bytes queued to go out to the peer",
            labels(),
            peer.queued_bytes as f64,
        );
        p.gauge(
            "peer_unacked",
            Some(Unit::Bytes),
            "Bytes sent to the peer and not yet acknowledged (kept to be sent again)",
            labels(),
            peer.unacked_bytes as f64,
        );
        p.gauge(
            "peer_rx_buffer",
            Some(Unit::Bytes),
            "Bytes of the buffer the link's incoming stream is read into",
            labels(),
            peer.rx_buffer_bytes as f64,
        );
        if peer.packet_bytes > 0 {
            p.gauge(
                "peer_packet",
                Some(Unit::Bytes),
                "The link's packet size: the smaller of the two ends' (datagram transports)",
                labels(),
                peer.packet_bytes as f64,
            );
        }
        let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&peer.counters) else {
            continue;
        };
        for (k, v) in m {
            let Some(v) = v.as_u64() else { continue };
            match PEER_COUNTERS.iter().find(|c| c.0 == k) {
                Some((_, name, unit, help)) => p.counter(name, unit.clone(), help, labels(), v),
                // A counter added to the stats without a row above (the unit
                // test says so): still shown.
                None => p.counter(
                    &format!("peer_{}", sanitize(&k)),
                    None,
                    "A peer counter of `wyvern stat --json`",
                    labels(),
                    v,
                ),
            }
        }
    }

    // The transport's own counters; a hybrid agent's are named
    // `backend.counter`: the back end becomes a label.
    for (k, v) in &s.transport {
        let (backend, key) = match k.split_once('.') {
            Some((b, k)) => (Some(b), k),
            None => (None, k.as_str()),
        };
        let labels: Labels = backend
            .map(|b| vec![("backend", b.to_string())])
            .unwrap_or_default();
        let (name, unit) = transport_metric_name(key);
        let name = format!("transport_{name}");
        let help = format!("The transport's `{key}` (see `wyvern stat`)");
        if transport_gauge(key) {
            p.gauge(&name, unit, &help, labels, *v as f64);
        } else {
            p.counter(&name, unit, &help, labels, *v);
        }
    }

    // Per client, by pool slot and the name it gave (never its pid: series
    // would churn with every process).
    let client_families: [(&str, bool, &str); 5] = [
        (
            "client_submitted_messages",
            true,
            "Messages the client submitted",
        ),
        (
            "client_delivered_messages",
            true,
            "Messages deposited into the client's receive rings",
        ),
        ("client_errors", true, "Bad requests seen from the client"),
        ("client_blocks", false, "Pool blocks the client holds"),
        ("client_endpoints", false, "Endpoints the client has open"),
    ];
    for (name, counter, help) in client_families {
        if counter {
            p.counters(name, None, help);
        } else {
            p.gauges(name, None, help);
        }
    }
    for c in &s.clients {
        let labels = || -> Labels { vec![("slot", c.slot.to_string()), ("name", c.name.clone())] };
        let vals = [
            c.submitted,
            c.delivered,
            c.errors,
            c.blocks,
            c.endpoints.len() as u64,
        ];
        for ((name, counter, help), v) in client_families.iter().zip(vals) {
            if *counter {
                p.counter(name, None, help, labels(), v);
            } else {
                p.gauge(name, None, help, labels(), v as f64);
            }
        }
    }
    p.reg
}

/// Render a snapshot in the Prometheus text exposition format (0.0.4).
pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    // NOTE(unwrap): writing into a String cannot fail.
    prometheus_client::encoding::prometheus_text::encode(&mut o, &registry(s))
        .expect("formatting into a String");
    o
}

/// Render a snapshot in the OpenMetrics text format 1.0 (ends with `# EOF`).
pub fn render_openmetrics(s: &Snapshot) -> String {
    let mut o = String::new();
    // NOTE(unwrap): writing into a String cannot fail.
    prometheus_client::encoding::text::encode(&mut o, &registry(s))
        .expect("formatting into a String");
    o
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Bytes of a request (request line and headers) read at most.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client has to send its whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests served at once; a connection beyond is closed at once.
const MAX_HANDLERS: usize = 8;

/// Serve `/metrics` on `addr` from a thread of its own, reading the agent
/// at `socket`. Returns the bound address (useful with port 0).
///
/// Each connection gets a thread of its own (at most [`MAX_HANDLERS`] at
/// once), [`REQUEST_TIMEOUT`] to send its request and [`MAX_REQUEST`]
/// bytes for it: a slow or endless request cannot hold the next scrape
/// back nor grow the agent.
pub fn serve(addr: SocketAddr, socket: PathBuf) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let socket = Arc::new(socket);
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("wyvern-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let c = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("metrics listener: {e}");
                        // Out of descriptors: do not spin.
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_HANDLERS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    log::debug!("metrics: {MAX_HANDLERS} requests in progress, closing one more");
                    continue;
                }
                let (socket, busy2) = (socket.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("wyvern-metrics-req".into())
                    .spawn(move || {
                        if let Err(e) = answer(c, &socket) {
                            log::debug!("metrics request: {e}");
                        }
                        busy2.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    log::warn!("metrics: cannot start a request thread: {e}");
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(bound)
}

/// Read a request's line and headers: at most [`MAX_REQUEST`] bytes, within
/// [`REQUEST_TIMEOUT`]. Returns them as text.
fn read_request(c: &mut TcpStream) -> std::io::Result<String> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let end = buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n");
        if end {
            break;
        }
        if buf.len() >= MAX_REQUEST {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("request longer than {MAX_REQUEST} bytes"),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("request not complete within {REQUEST_TIMEOUT:?}"),
            ));
        }
        c.set_read_timeout(Some(left))?;
        let want = chunk.len().min(MAX_REQUEST - buf.len());
        let n = c.read(&mut chunk[..want])?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn answer(mut c: TcpStream, socket: &PathBuf) -> std::io::Result<()> {
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let head = match read_request(&mut c) {
        Ok(l) => l,
        Err(e) => {
            let _ = write!(
                c,
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return Err(e);
        }
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // The query string (`/metrics?x=1`) does not matter.
    let path = target.split('?').next().unwrap_or("");
    let openmetrics = head.lines().skip(1).any(|h| {
        h.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    } else {
        match crate::client::stat(socket) {
            Ok(s) if openmetrics => ("200 OK", OPENMETRICS_CONTENT_TYPE, render_openmetrics(&s)),
            Ok(s) => ("200 OK", PROMETHEUS_CONTENT_TYPE, render(&s)),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain",
                format!("the agent does not answer: {e}\n"),
            ),
        }
    };
    write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    c.flush()
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
