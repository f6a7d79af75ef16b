//! `wyvern ping` and `wyvern bw`: latency and bandwidth between this node's
//! agent and another node's, through both agents and the transport between
//! them, like `osu_latency`/`osu_bw` or `ucx_perftest HOST`.
//!
//! The other node runs the responder, `wyvern ping --serve` (or `bw --serve`:
//! the same thing), a client of its agent with three well-known endpoints:
//! - `EP` (default [`DEFAULT_EP`]): control, small JSON messages: `hello`,
//!   and `bw` (announces a bandwidth run: size and window), answered with
//!   `ready`, then with an `ack` after every window of messages received;
//! - `EP + 1`: echo: every message is sent back as it came (ping);
//! - `EP + 2`: sink: bandwidth messages, each checked against the pattern
//!   (below) and counted; the counts of good and damaged messages travel back
//!   in every `ack`.
//!
//! Every payload is a pattern that depends on its size, with its first (up to)
//! 8 bytes XORed with the message's sequence number ([`Pattern`]): the ping
//! compares each echo with what it sent, the sink checks every message, so a
//! damaged, lost, duplicated or reordered message is seen.
//!
//! Bounded: per size at most `--iters` round trips or messages and at most
//! `--time` seconds (the size in progress finishes its window); every wait
//! at most `--timeout-ms`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wyvern::client::{Client, Endpoint, Error, Message, Mode};

/// The responder's control endpoint unless `--ep` says otherwise; echo and
/// sink are the next two.
pub const DEFAULT_EP: u32 = 7470;
/// Senders the responder keeps bandwidth state for; the least recently
/// announced is forgotten beyond.
const MAX_SENDERS: usize = 64;
/// How long the responder keeps polling all its endpoints after its last
/// message before it waits on the echo endpoint alone (a wait there does not
/// see the other endpoints' messages for up to a millisecond).
const BUSY_LINGER: Duration = Duration::from_millis(5);
/// Bytes of one bandwidth window at most (its message count shrinks for
/// large messages), so one window never needs more pool than this.
const WINDOW_BYTES: usize = 16 << 20;

/// Flags common to `ping` and `bw`.
#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    /// The local agent's control socket.
    #[arg(long, short)]
    pub socket: Option<std::path::PathBuf>,
    /// Node id (picks the default socket path of that node; without it and
    /// `--socket`: `WYVERN_SOCKET`, the Slurm job's socket, node 0's).
    #[arg(long)]
    pub node_id: Option<u32>,
    /// The node whose responder to measure against (it runs `wyvern ping --serve`).
    #[arg(long, required_unless_present = "serve", conflicts_with = "serve")]
    pub to: Option<u32>,
    /// Be the responder: answer pings and sink bandwidth traffic until
    /// interrupted (SIGINT/SIGTERM).
    #[arg(long)]
    pub serve: bool,
    /// The responder's control endpoint (echo and sink: the next two).
    #[arg(long, default_value_t = DEFAULT_EP)]
    pub ep: u32,
    /// Message sizes in bytes, comma-separated (suffixes k, m: KiB, MiB).
    /// Default: 1 B to 1 MiB by powers of 4.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Option<Vec<usize>>,
    /// Round trips (ping) or messages (bw) per size, at most.
    #[arg(long)]
    pub iters: Option<u64>,
    /// Seconds per size, at most (after the warm-up).
    #[arg(long, default_value_t = 2.0)]
    pub time: f64,
    /// bw: messages sent before waiting for the responder's ack (fewer for
    /// large messages: at most 16 MiB per window).
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Longest wait for any one answer, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print one JSON object with every row at the end instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>()
        .map(|n| n * mul)
        .map_err(|_| format!("{s:?} is not a size (bytes, or with k/m)"))
}

/// 1 B .. 1 MiB by powers of 4.
fn default_sizes() -> Vec<usize> {
    (0..=10).map(|i| 1usize << (2 * i)).collect()
}

/// Control messages (JSON on the control endpoint).
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Ctl {
    Hello,
    Welcome { version: String, node: u32 },
    Bw { size: usize, window: u64 },
    Ready,
    Ack { got: u64, bad: u64 },
    Refused { why: String },
}

/// Period of the payload pattern: a prime just above 64 KiB, so that a piece
/// of a message moved by any power-of-two distance (a chunk resent in the
/// wrong place) no longer matches, while the pattern's memory stays 64 KiB
/// whatever the message size (the responder keeps one per sender).
const PERIOD: usize = 65_537;

/// The payloads of one size: a pseudo-random table of [`PERIOD`] bytes
/// (seeded by the size) repeated, with the message's sequence number XORed
/// into its first (up to) 8 bytes.
pub struct Pattern {
    size: usize,
    table: Vec<u8>,
}

impl Pattern {
    /// The pattern of `size`-byte messages.
    pub fn new(size: usize) -> Pattern {
        let mut table = vec![0u8; size.min(PERIOD)];
        let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ size as u64;
        for chunk in table.chunks_mut(8) {
            // splitmix64
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Pattern { size, table }
    }

    /// Message `seq`, written into `buf` (which must already hold a message of
    /// this pattern: only the head changes).
    pub fn stamp(&self, buf: &mut [u8], seq: u64) {
        let n = buf.len().min(8);
        let s = seq.to_le_bytes();
        for i in 0..n {
            buf[i] = self.table[i] ^ s[i];
        }
    }

    /// A fresh buffer holding message `seq`.
    pub fn message(&self, seq: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.size);
        while v.len() < self.size {
            let take = (self.size - v.len()).min(self.table.len());
            v.extend_from_slice(&self.table[..take]);
        }
        self.stamp(&mut v, seq);
        v
    }

    /// Whether `data` is exactly message `seq`.
    pub fn check(&self, data: &[u8], seq: u64) -> bool {
        if data.len() != self.size {
            return false;
        }
        let n = data.len().min(8);
        let s = seq.to_le_bytes();
        if !(0..n).all(|i| data[i] == self.table[i] ^ s[i]) {
            return false;
        }
        let mut i = n;
        while i < data.len() {
            let off = i % PERIOD;
            let take = (PERIOD - off).min(data.len() - i);
            if data[i..i + take] != self.table[off..off + take] {
                return false;
            }
            i += take;
        }
        true
    }
}

/// One row of the table.
#[derive(Serialize, Debug)]
pub struct Row {
    /// Message size, bytes.
    pub size: usize,
    /// Round trips (ping) or messages (bw) measured.
    pub iterations: u64,
    /// ping: half round trip, median, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    /// ping: half round trip, mean, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg_us: Option<f64>,
    /// ping: half round trip, 99th percentile, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    /// bw: payload megabytes (10^6) per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mb_s: Option<f64>,
    /// bw: messages per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_s: Option<f64>,
    /// Whether the size stopped at the time bound before `--iters`.
    pub time_bound: bool,
}

/// Which measurement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Latency.
    Ping,
    /// Bandwidth.
    Bw,
}

impl Kind {
    /// The subcommand's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::Bw => "bw",
        }
    }
}

/// `wyvern ping` / `wyvern bw` with the agent socket resolved.
pub fn run(kind: Kind, a: PerfArgs, socket: &Path) -> ExitCode {
    let name = match kind {
        Kind::Ping => "ping",
        Kind::Bw => "bw",
    };
    let r = if a.serve {
        serve(&a, socket)
    } else {
        measure(kind, &a, socket)
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wyvern {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn attach(socket: &Path, name: &str) -> Result<Client, String> {
    Client::attach(socket, name).map_err(|e| {
        let mut s = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            let _ = write!(s, ": {c}");
            cur = c.source();
        }
        s
    })
}

fn send_ctl(ep: &Endpoint, node: u32, dst: u32, m: &Ctl, t: Duration) -> Result<(), Error> {
    let b = serde_json::to_vec(m).expect("serialisable");
    ep.send(node, dst, &b, Mode::Buffered, t).map(drop)
}

// ------------------------------------------------------------------ responder

/// What the responder knows of one bandwidth sender.
struct Sender {
    pattern: Pattern,
    window: u64,
    got: u64,
    bad: u64,
    announced: Instant,
}

fn serve(a: &PerfArgs, socket: &Path) -> Result<(), String> {
    let t = Duration::from_millis(a.timeout_ms);
    let c = attach(socket, "wyvern-serve")?;
    let open = |id: u32| {
        c.open_endpoint(Some(id))
            .map_err(|e| format!("cannot open endpoint {id}: {e}"))
    };
    let ctl = open(a.ep)?;
    let echo = open(a.ep + 1)?;
    let sink = open(a.ep + 2)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install a signal handler: {e}"))?;
    }
    outln!(
        "wyvern responder on node {} endpoints {} (control), {} (echo), {} (sink); \
         run `wyvern ping --to {}` or `wyvern bw --to {}` on another node",
        c.node(),
        a.ep,
        a.ep + 1,
        a.ep + 2,
        c.node(),
        c.node()
    );
    let mut senders: HashMap<(u32, u32), Sender> = HashMap::new();
    let (mut stray, mut echoed) = (0u64, 0u64);
    // Messages checked and found damaged by runs forgotten since (a new
    // announcement from the same sender, or one sender too many).
    let (mut checked, mut damaged) = (0u64, 0u64);
    let mut acks: Vec<((u32, u32), Ctl)> = Vec::new();
    let mut last_errors = Instant::now();
    let mut last_busy = Instant::now();
    let end: Result<(), String> = 'serve: loop {
        if stop.load(Ordering::Relaxed) {
            break 'serve Ok(());
        }
        let mut busy = false;
        // Echo: back as it came.
        for _ in 0..64 {
            match echo.try_recv() {
                Ok(Some(m)) => {
                    busy = true;
                    echo_back(&echo, &m, t, &mut echoed);
                }
                Ok(None) => break,
                Err(e) => break 'serve Err(format!("echo endpoint: {e}")),
            }
        }
        // Sink: check and count, ack every window.
        for _ in 0..256 {
            let r = sink.try_recv_with(|m| {
                let key = (m.src_node, m.src_ep);
                let Some(s) = senders.get_mut(&key) else {
                    stray += 1;
                    return;
                };
                if !s.pattern.check(m.data, s.got) {
                    s.bad += 1;
                }
                s.got += 1;
                if s.got % s.window == 0 {
                    acks.push((
                        key,
                        Ctl::Ack {
                            got: s.got,
                            bad: s.bad,
                        },
                    ));
                }
            });
            match r {
                Ok(Some(())) => busy = true,
                Ok(None) => break,
                Err(e) => break 'serve Err(format!("sink endpoint: {e}")),
            }
        }
        for ((node, ep), m) in acks.drain(..) {
            if let Err(e) = send_ctl(&ctl, node, ep, &m, t) {
                log::warn!("ack to {node}:{ep}: {e}");
            }
        }
        // Control.
        match ctl.try_recv() {
            Ok(Some(m)) => {
                busy = true;
                let key = (m.src_node, m.src_ep);
                let reply = match serde_json::from_slice::<Ctl>(m.data()) {
                    Ok(Ctl::Hello) => Ctl::Welcome {
                        version: env!("CARGO_PKG_VERSION").into(),
                        node: c.node(),
                    },
                    Ok(Ctl::Bw { size, window }) if window > 0 => {
                        if senders.len() >= MAX_SENDERS && !senders.contains_key(&key) {
                            let oldest = senders
                                .iter()
                                .min_by_key(|(_, s)| s.announced)
                                .map(|(k, _)| *k);
                            if let Some(s) = oldest.and_then(|k| senders.remove(&k)) {
                                checked += s.got;
                                damaged += s.bad;
                            }
                        }
                        if let Some(s) = senders.get(&key) {
                            checked += s.got;
                            damaged += s.bad;
                        }
                        senders.insert(
                            key,
                            Sender {
                                pattern: Pattern::new(size),
                                window,
                                got: 0,
                                bad: 0,
                                announced: Instant::now(),
                            },
                        );
                        Ctl::Ready
                    }
                    Ok(other) => Ctl::Refused {
                        why: format!("unexpected {other:?}"),
                    },
                    Err(e) => Ctl::Refused {
                        why: format!("not a control message: {e}"),
                    },
                };
                if let Err(e) = send_ctl(&ctl, key.0, key.1, &reply, t) {
                    log::warn!("reply to {}:{}: {e}", key.0, key.1);
                }
            }
            Ok(None) => {}
            Err(e) => break 'serve Err(format!("control endpoint: {e}")),
        }
        if last_errors.elapsed() > Duration::from_millis(200) {
            // Replies to clients that went away come back as errors: drain them.
            let n = c.take_errors().len();
            if n > 0 {
                log::info!("{n} replies not delivered (their senders left)");
            }
            last_errors = Instant::now();
        }
        if busy {
            last_busy = Instant::now();
        } else if last_busy.elapsed() < BUSY_LINGER {
            // Just active: the next window of a bandwidth run comes a round
            // trip after our ack; keep looking at every endpoint.
            std::thread::yield_now();
        } else {
            // Idle: wait on the echo endpoint (a ping is answered at once); the
            // others are looked at again within a millisecond.
            match echo.recv(Duration::from_millis(1)) {
                Ok(m) => echo_back(&echo, &m, t, &mut echoed),
                Err(Error::Timeout) => {}
                Err(e) => break 'serve Err(format!("echo endpoint: {e}")),
            }
        }
    };
    let (checked, damaged) = (
        checked + senders.values().map(|s| s.got).sum::<u64>(),
        damaged + senders.values().map(|s| s.bad).sum::<u64>(),
    );
    // Said also when the agent went first (the error follows).
    let why = match &end {
        Ok(()) => "stopped".to_string(),
        Err(e) => format!("stopped ({e})"),
    };
    outln!(
        "wyvern responder: {why}: {echoed} pings echoed, {checked} bw messages checked, \
         {damaged} damaged, {stray} stray"
    );
    let _ = c.detach();
    end
}

fn echo_back(echo: &Endpoint, m: &Message, t: Duration, echoed: &mut u64) {
    match echo.send(m.src_node, m.src_ep, m.data(), Mode::Buffered, t) {
        Ok(_) => *echoed += 1,
        Err(e) => log::warn!("echo to {}:{}: {e}", m.src_node, m.src_ep),
    }
}

// ------------------------------------------------------------------- measurer

fn measure(kind: Kind, a: &PerfArgs, socket: &Path) -> Result<(), String> {
    let node = a.to.ok_or("--to NODE is needed (or --serve)")?;
    let t = Duration::from_millis(a.timeout_ms);
    let sizes = a.sizes.clone().unwrap_or_else(default_sizes);
    if sizes.is_empty() {
        return Err("--sizes is empty".into());
    }
    if !(a.time > 0.0 && a.time.is_finite()) {
        return Err(format!(
            "--time {} must be a positive number of seconds",
            a.time
        ));
    }
    let c = attach(
        socket,
        if kind == Kind::Ping {
            "wyvern-ping"
        } else {
            "wyvern-bw"
        },
    )?;
    if node >= c.nodes() {
        return Err(format!(
            "node {node} is not in the job (nodes 0..{})",
            c.nodes()
        ));
    }
    let ep = c
        .open_endpoint(None)
        .map_err(|e| format!("cannot open an endpoint: {e}"))?;
    let via = wyvern::client::stat(socket)
        .ok()
        .and_then(|s| s.peers.into_iter().find(|p| p.node == node))
        .map(|p| format!("{} ({})", p.transport, p.state))
        .unwrap_or_else(|| "this node's agent (local)".into());
    hello(&ep, node, a.ep, t)?;
    let mut rows = Vec::new();
    let out = !a.json;
    if out {
        match kind {
            Kind::Ping => {
                outln!(
                    "# wyvern ping: node {} -> node {node} via {via}; latency = half the round trip",
                    c.node()
                );
                outln!(
                    "{:>10} {:>10} {:>10} {:>10} {:>10}",
                    "# size (B)",
                    "iterations",
                    "p50 (us)",
                    "avg (us)",
                    "p99 (us)"
                );
            }
            Kind::Bw => {
                outln!(
                    "# wyvern bw: node {} -> node {node} via {via}; payload bytes, 1 MB = 10^6 B",
                    c.node()
                );
                outln!(
                    "{:>10} {:>10} {:>12} {:>12}",
                    "# size (B)",
                    "messages",
                    "MB/s",
                    "msgs/s"
                );
            }
        }
    }
    let bound = Duration::from_secs_f64(a.time);
    for &size in &sizes {
        let row = match kind {
            Kind::Ping => ping_size(&ep, node, a.ep + 1, size, a.iters.unwrap_or(1000), bound, t),
            Kind::Bw => bw_size(&ep, node, a.ep, size, a, bound, t),
        }
        .map_err(|e| format!("size {size} B: {e}"))?;
        if out {
            match kind {
                Kind::Ping => outln!(
                    "{:>10} {:>10} {:>10.2} {:>10.2} {:>10.2}{}",
                    row.size,
                    row.iterations,
                    row.p50_us.unwrap_or(0.0),
                    row.avg_us.unwrap_or(0.0),
                    row.p99_us.unwrap_or(0.0),
                    if row.time_bound { "  (time bound)" } else { "" }
                ),
                Kind::Bw => outln!(
                    "{:>10} {:>10} {:>12} {:>12}{}",
                    row.size,
                    row.iterations,
                    mb_s(row.mb_s.unwrap_or(0.0)),
                    msgs_s(row.msgs_s.unwrap_or(0.0)),
                    if row.time_bound { "  (time bound)" } else { "" }
                ),
            }
        }
        rows.push(row);
    }
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"ok": true, "from": c.node(), "to": node, "via": via, "rows": rows})
        );
    }
    let _ = c.detach();
    Ok(())
}

/// MB/s with 2 decimals, or 4 below 1 MB/s (tiny messages on a slow link
/// would all print as 0.00).
fn mb_s(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.4}")
    } else {
        format!("{v:.2}")
    }
}

/// Messages per second, whole, or with one decimal below 100.
fn msgs_s(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Check that the responder is there: a `hello` delivered to its control
/// endpoint and its `welcome` back.
fn hello(ep: &Endpoint, node: u32, ctl: u32, t: Duration) -> Result<(), String> {
    let missing = |why: String| {
        format!(
            "no responder on node {node} (endpoint {ctl}): {why}; start `wyvern ping --serve` on node {node}"
        )
    };
    let b = serde_json::to_vec(&Ctl::Hello).expect("serialisable");
    ep.send(node, ctl, &b, Mode::Delivered, t)
        .map_err(|e| match e {
            Error::Timeout => missing(format!("the hello was not delivered within {t:?}")),
            e => missing(e.to_string()),
        })?;
    match await_ctl(ep, node, ctl, t) {
        Ok(Ctl::Welcome { .. }) => Ok(()),
        Ok(other) => Err(missing(format!("it answered {other:?}"))),
        Err(e) => Err(missing(e)),
    }
}

/// The next control message from the responder, skipping anything else.
fn await_ctl(ep: &Endpoint, node: u32, ctl: u32, t: Duration) -> Result<Ctl, String> {
    let deadline = Instant::now() + t;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = ep.recv(left).map_err(|e| match e {
            Error::Timeout => format!("no answer from node {node} within {t:?}"),
            e => e.to_string(),
        })?;
        if m.src_node == node && m.src_ep == ctl {
            return serde_json::from_slice(m.data())
                .map_err(|e| format!("a control message that does not parse: {e}"));
        }
    }
}

fn ping_size(
    ep: &Endpoint,
    node: u32,
    echo: u32,
    size: usize,
    iters: u64,
    bound: Duration,
    t: Duration,
) -> Result<Row, String> {
    let p = Pattern::new(size);
    let mut buf = p.message(0);
    let warmup = 10.min(iters);
    let mut rtt = Vec::with_capacity(iters.min(1 << 20) as usize);
    let mut start = Instant::now();
    let mut seq = 0u64;
    let mut time_bound = false;
    while (rtt.len() as u64) < iters {
        if seq == warmup {
            start = Instant::now();
        }
        if seq >= warmup && start.elapsed() > bound {
            time_bound = true;
            break;
        }
        p.stamp(&mut buf, seq);
        let t0 = Instant::now();
        ep.send(node, echo, &buf, Mode::Buffered, t)
            .map_err(|e| format!("ping {seq}: {e}"))?;
        let ok = ep
            .recv_with(t, |m| {
                (m.src_node, m.src_ep) == (node, echo) && p.check(m.data, seq)
            })
            .map_err(|e| match e {
                Error::Timeout => format!("no echo of ping {seq} within {t:?}"),
                e => format!("echo of ping {seq}: {e}"),
            })?;
        let us = t0.elapsed().as_secs_f64() * 1e6 / 2.0;
        if !ok {
            return Err(format!(
                "the echo of ping {seq} differs from what was sent (damaged, or from elsewhere)"
            ));
        }
        if seq >= warmup {
            rtt.push(us);
        }
        seq += 1;
    }
    if rtt.is_empty() {
        return Err("no round trip measured".into());
    }
    let avg = rtt.iter().sum::<f64>() / rtt.len() as f64;
    rtt.sort_by(f64::total_cmp);
    let q = |x: f64| rtt[((rtt.len() - 1) as f64 * x).round() as usize];
    Ok(Row {
        size,
        iterations: rtt.len() as u64,
        p50_us: Some(q(0.5)),
        avg_us: Some(avg),
        p99_us: Some(q(0.99)),
        mb_s: None,
        msgs_s: None,
        time_bound,
    })
}

fn bw_size(
    ep: &Endpoint,
    node: u32,
    ctl: u32,
    size: usize,
    a: &PerfArgs,
    bound: Duration,
    t: Duration,
) -> Result<Row, String> {
    let window = a
        .window
        .max(1)
        .min((WINDOW_BYTES / size.max(1)).max(1) as u64);
    let iters = a.iters.unwrap_or(4000).max(window);
    send_ctl(ep, node, ctl, &Ctl::Bw { size, window }, t).map_err(|e| e.to_string())?;
    match await_ctl(ep, node, ctl, t)? {
        Ctl::Ready => {}
        other => return Err(format!("the responder answered {other:?}")),
    }
    let p = Pattern::new(size);
    let mut buf = p.message(0);
    let mut seq = 0u64;
    let mut send_window = |seq: &mut u64| -> Result<(u64, u64), String> {
        for _ in 0..window {
            p.stamp(&mut buf, *seq);
            ep.send(node, ctl + 2, &buf, Mode::Buffered, t)
                .map_err(|e| format!("message {seq}: {e}"))?;
            *seq += 1;
        }
        match await_ctl(ep, node, ctl, t)? {
            Ctl::Ack { got, bad } => Ok((got, bad)),
            other => Err(format!("the responder answered {other:?}")),
        }
    };
    // One window of warm-up.
    send_window(&mut seq)?;
    let start = Instant::now();
    let (mut got, mut bad) = (0, 0);
    let mut time_bound = false;
    while seq - window < iters {
        if start.elapsed() > bound {
            time_bound = true;
            break;
        }
        (got, bad) = send_window(&mut seq)?;
    }
    let secs = start.elapsed().as_secs_f64();
    if got != seq {
        return Err(format!(
            "the responder counted {got} messages of the {seq} sent"
        ));
    }
    if bad > 0 {
        return Err(format!(
            "the responder found {bad} of {got} messages damaged or out of order"
        ));
    }
    let msgs = seq - window;
    if msgs == 0 {
        return Err("no window measured".into());
    }
    Ok(Row {
        size,
        iterations: msgs,
        p50_us: None,
        avg_us: None,
        p99_us: None,
        mb_s: Some((msgs as f64 * size as f64) / secs / 1e6),
        msgs_s: Some(msgs as f64 / secs),
        time_bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_tells_every_message_and_any_damage_apart() {
        for size in [0usize, 1, 7, 8, 9, 4096, PERIOD + 3, 3 * PERIOD + 17] {
            let p = Pattern::new(size);
            let m = p.message(5);
            assert!(p.check(&m, 5), "size {size}");
            if size > 0 {
                assert!(!p.check(&m, 6), "size {size}: another sequence number");
                let mut d = m.clone();
                let last = d.len() - 1;
                d[last] ^= 1;
                assert!(!p.check(&d, 5), "size {size}: a flipped bit");
            }
            assert!(!p.check(&[m.as_slice(), &[0]].concat(), 5), "longer");
            if size > 2 * PERIOD {
                // A piece moved by a power of two (a chunk in the wrong place).
                let mut d = m.clone();
                d.copy_within(8..8 + 4096, 8 + 65536);
                assert!(!p.check(&d, 5), "size {size}: a moved piece");
                // A byte damaged past the first period.
                let mut d = m.clone();
                d[PERIOD + 5] ^= 0x80;
                assert!(!p.check(&d, 5), "size {size}: damage in a later period");
            }
            let mut b = p.message(0);
            p.stamp(&mut b, 5);
            assert_eq!(b, m, "stamp == message");
        }
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("x").is_err());
        assert_eq!(default_sizes().first(), Some(&1));
        assert_eq!(default_sizes().last(), Some(&(1 << 20)));
    }
}
