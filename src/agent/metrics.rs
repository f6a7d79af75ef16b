//! The Prometheus text endpoint (`wyvern agent --metrics ADDR`): HPC sites
//! scrape node metrics over HTTP. A thread of its own answers each scrape
//! with a fresh [`Snapshot`] taken over the agent's control socket, exactly
//! what `wyvern stat --json` shows, so the polling thread never serves HTTP
//! and the two views cannot disagree. Requests are bounded in size and
//! time, and served concurrently (a few at once), so one slow or endless
//! request cannot stall the next scrape or grow the agent.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stats::Snapshot;

/// Render a snapshot in the Prometheus text exposition format (0.0.4).
pub fn render(s: &Snapshot) -> String {
    let mut o = String::new();
    let node = s.node;
    let gauge = |o: &mut String, name: &str, help: &str, kind: &str, v: f64| {
        let _ = writeln!(o, "# HELP wyvern_{name} {help}");
        let _ = writeln!(o, "# TYPE wyvern_{name} {kind}");
        let _ = writeln!(o, "wyvern_{name}{{node=\"{node}\"}} {v}");
    };
    gauge(&mut o, "up", "The agent answers.", "gauge", 1.0);
    gauge(
        &mut o,
        "nodes",
        "Nodes in the job.",
        "gauge",
        s.nodes as f64,
    );
    gauge(
        &mut o,
        "pool_bytes",
        "Shared-memory pool size.",
        "gauge",
        s.pool_bytes as f64,
    );
    gauge(
        &mut o,
        "blocks_free_bytes",
        "Free bytes of the block region.",
        "gauge",
        s.blocks_free as f64,
    );
    gauge(
        &mut o,
        "blocks_bytes",
        "Bytes of the block region.",
        "gauge",
        s.blocks_total as f64,
    );
    gauge(
        &mut o,
        "hugepages",
        "1 when the pool is on hugepages.",
        "gauge",
        s.backing.starts_with("hugepages") as u8 as f64,
    );
    gauge(
        &mut o,
        "uptime_seconds",
        "Seconds since the agent started.",
        "gauge",
        s.uptime_s,
    );
    gauge(
        &mut o,
        "poll_rounds_total",
        "Poll rounds.",
        "counter",
        s.rounds as f64,
    );
    gauge(
        &mut o,
        "sleeps_total",
        "Times the adaptive agent slept.",
        "counter",
        s.sleeps as f64,
    );
    gauge(
        &mut o,
        "local_messages_total",
        "Messages delivered on this node.",
        "counter",
        s.local_msgs as f64,
    );
    gauge(
        &mut o,
        "clients_evicted_total",
        "Clients detached for misbehaving.",
        "counter",
        s.clients_evicted as f64,
    );
    gauge(
        &mut o,
        "clients_departed_reclaimed_total",
        "Departed clients whose unsent sends were dropped early to free a slot for a new client.",
        "counter",
        s.clients_departed_reclaimed as f64,
    );
    gauge(
        &mut o,
        "pool_pages_damaged_total",
        "Pool pages a client punched out that the agent now holds privately (slots retired, blocks quarantined).",
        "counter",
        s.pool_pages_damaged as f64,
    );
    gauge(
        &mut o,
        "parked_messages",
        "Peers' messages waiting for a full ring or a late endpoint.",
        "gauge",
        s.parked_msgs as f64,
    );
    gauge(
        &mut o,
        "parked_bytes",
        "Their bytes.",
        "gauge",
        s.parked_bytes as f64,
    );
    gauge(
        &mut o,
        "clients",
        "Attached clients.",
        "gauge",
        s.clients.len() as f64,
    );

    // Per peer: every counter of `wyvern stat`, by name (kept in step with
    // the stats by serialising them).
    let mut families: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |name: String, line: String| match families.iter_mut().find(|f| f.0 == name) {
        Some(f) => f.1.push(line),
        None => families.push((name, vec![line])),
    };
    for p in &s.peers {
        let labels = format!(
            "node=\"{node}\",peer=\"{}\",transport=\"{}\"",
            p.node,
            escape(&p.transport)
        );
        let up = (p.state == "up") as u8;
        add("peer_up".into(), format!("wyvern_peer_up{{{labels}}} {up}"));
        add(
            "peer_queued_bytes".into(),
            format!("wyvern_peer_queued_bytes{{{labels}}} {}", p.queued_bytes),
        );
        add(
            "peer_unacked_bytes".into(),
            format!("wyvern_peer_unacked_bytes{{{labels}}} {}", p.unacked_bytes),
        );
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&p.counters) {
            for (k, v) in m {
                if let Some(v) = v.as_u64() {
                    let name = format!("peer_{k}_total");
                    add(name.clone(), format!("wyvern_{name}{{{labels}}} {v}"));
                }
            }
        }
    }
    for (k, v) in &s.transport {
        let name = format!("transport_{}_total", sanitize(k));
        add(
            name.clone(),
            format!("wyvern_{name}{{node=\"{node}\"}} {v}"),
        );
    }
    for c in &s.clients {
        let labels = format!(
            "node=\"{node}\",slot=\"{}\",pid=\"{}\",name=\"{}\"",
            c.slot,
            c.pid,
            escape(&c.name)
        );
        for (name, v) in [
            ("client_submitted_total", c.submitted),
            ("client_delivered_total", c.delivered),
            ("client_errors_total", c.errors),
            ("client_blocks", c.blocks),
            ("client_endpoints", c.endpoints.len() as u64),
        ] {
            add(name.into(), format!("wyvern_{name}{{{labels}}} {v}"));
        }
    }
    for (name, lines) in families {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(o, "# TYPE wyvern_{name} {kind}");
        for l in lines {
            let _ = writeln!(o, "{l}");
        }
    }
    o
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
/// [`REQUEST_TIMEOUT`]. Returns the request line.
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
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    Ok(String::from_utf8_lossy(line).trim_end().to_string())
}

fn answer(mut c: TcpStream, socket: &PathBuf) -> std::io::Result<()> {
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let line = match read_request(&mut c) {
        Ok(l) => l,
        Err(e) => {
            let _ = write!(
                c,
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return Err(e);
        }
    };
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
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
            Ok(s) => ("200 OK", "text/plain; version=0.0.4", render(&s)),
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
