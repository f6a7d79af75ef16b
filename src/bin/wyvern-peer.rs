//! `wyvern-peer`: a client process for tests and benchmarks.
//!
//! Every payload is a deterministic function of (sender node, sender
//! endpoint, sequence number), and so is its size (`--sizes`, taken in turn),
//! so a receiver checks integrity and per-sender order of every message
//! without any header inside the payload — even of empty messages.
//!
//! Each mode prints `ready` once its endpoint is open, then one JSON line
//! with its results; the exit status is non-zero when a check failed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use wyvern::client::{Client, Error, MessageRef, Mode, Outgoing};

#[derive(Parser)]
#[command(name = "wyvern-peer", about = "Test and benchmark client for wyvern")]
struct Cli {
    /// The local agent's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// Endpoint id to open (default: the agent picks).
    #[arg(long)]
    ep: Option<u32>,
    /// Message sizes, used in turn by sequence number.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    sizes: Vec<usize>,
    /// Timeout of each operation, milliseconds.
    #[arg(long, default_value_t = 20_000)]
    timeout_ms: u64,
    /// Benchmarks: send payloads without filling them with the checkable
    /// pattern, and check only the lengths on receipt (so the figure is the
    /// transport's, not the pattern generator's).
    #[arg(long)]
    raw: bool,
    /// `send` and `recv`: messages per call of the batch APIs
    /// (`Endpoint::send_many` / `recv_many`: one ring publication and at
    /// most one wake-up per batch); 1 sends and receives one at a time
    /// (`send` / `recv_with`). A `send` with `--delivered` or `--gap-us`, and
    /// a `recv` with `--slow-us`, go one at a time anyway.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(subcommand)]
    mode: ModeCmd,
}

#[derive(Subcommand)]
enum ModeCmd {
    /// Send `count` messages to one endpoint, or in turn to several.
    Send {
        /// Destination as NODE:EP; several comma-separated are sent to in
        /// turn, each with its own sequence (as if by separate senders).
        #[arg(long)]
        to: String,
        /// Messages.
        #[arg(long)]
        count: u64,
        /// Wait for delivery of every message.
        #[arg(long)]
        delivered: bool,
        /// Keep going after a failed send (count the failures).
        #[arg(long)]
        keep_going: bool,
        /// Sleep this many microseconds between sends.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
        /// After the last send, wait this long for failure reports.
        #[arg(long, default_value_t = 50)]
        linger_ms: u64,
    },
    /// Receive `count` messages and check them.
    Recv {
        /// Messages to receive in all.
        #[arg(long)]
        count: u64,
        /// Sleep this many microseconds after each message (a slow receiver).
        #[arg(long, default_value_t = 0)]
        slow_us: u64,
        /// Receive nothing for this long first (a process busy computing).
        #[arg(long, default_value_t = 0)]
        start_delay_ms: u64,
        /// Receive nothing until this file exists (a test says when).
        #[arg(long)]
        start_when: Option<PathBuf>,
    },
    /// Send back everything received, `count` times.
    Echo {
        /// Messages.
        #[arg(long)]
        count: u64,
    },
    /// Round trips against an `echo` peer.
    Ping {
        /// Destination as NODE:EP.
        #[arg(long)]
        to: String,
        /// Round trips.
        #[arg(long)]
        count: u64,
        /// Round trips not measured first.
        #[arg(long, default_value_t = 100)]
        warmup: u64,
    },
    /// Fill the submission ring with random records (a build with the
    /// `testing` feature: every test build).
    #[cfg(feature = "testing")]
    Hostile {
        /// Records to push.
        #[arg(long)]
        count: u64,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Incast sender: checked, timestamped messages (`--sizes`' first size,
    /// at least 32 bytes) to one endpoint as fast as it takes them, until
    /// `--stop-when` exists, then one last message that says so. Every send
    /// first tries without waiting (a full submission ring is counted as
    /// `full`: backpressure reached this sender), then waits up to
    /// `--attempt-ms` (a timeout is counted as `would_block` and retried,
    /// nothing is skipped).
    IncastSend {
        /// Destination as NODE:EP.
        #[arg(long)]
        to: String,
        /// Stop when this file exists (looked at every 5 ms).
        #[arg(long)]
        stop_when: PathBuf,
        /// Send nothing until this file exists (every sender starts at once).
        #[arg(long)]
        start_when: Option<PathBuf>,
        /// Stop after this many messages anyway.
        #[arg(long, default_value_t = 100_000_000)]
        max_count: u64,
        /// Stop after this many seconds anyway.
        #[arg(long, default_value_t = 300)]
        max_secs: u64,
        /// How long one send attempt waits for room, milliseconds.
        #[arg(long, default_value_t = 100)]
        attempt_ms: u64,
    },
    /// Incast receiver: reads `incast-send` messages from `--senders`
    /// senders at a paced rate, checks every sender's sequence (complete, in
    /// order, intact), and measures per-sender rates (Jain's fairness index)
    /// and delivery latency over a window in which every sender is active
    /// (they start together and stop after it): it opens `--warmup-ms` after
    /// the first message and lasts `--window-ms`; then the receiver creates
    /// `--stop-file` (the senders stop) and reads the rest unpaced. Two
    /// counts per sender: messages delivered in the window (`window`: what
    /// the buffers let through then, which may have been queued long before)
    /// and messages sent in it (`sent_window`: by their stamps, all of them
    /// delivered by the end: each sender's delivered throughput while every
    /// buffer on the way is full).
    IncastRecv {
        /// Senders expected.
        #[arg(long)]
        senders: usize,
        /// Read at most this many messages per second (0: unpaced).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Steady state: the window opens this long after the first message.
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
        /// Length of the measuring window.
        #[arg(long)]
        window_ms: u64,
        /// Created at the end of the window (the senders' `--stop-when`).
        #[arg(long)]
        stop_file: PathBuf,
    },
    /// Attach and detach repeatedly, timing each pair.
    AttachLoop {
        /// Repetitions.
        #[arg(long)]
        count: u64,
    },
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The payload sender `key` sends as message `seq`.
fn fill(buf: &mut [u8], key: u64, seq: u64) {
    let mut s = splitmix(key ^ seq.wrapping_mul(0x2545_F491_4F6C_DD1D));
    for chunk in buf.chunks_mut(8) {
        s = splitmix(s);
        let b = s.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// What is wrong with message `seq` of sender `key` (its bytes `got`), for
/// the first corrupt message only: its size, the damaged range (first and
/// last bad byte, how many bad), the expected and received 8 bytes at the
/// first bad one, and whose bytes the damaged range holds instead, if it is
/// another message of the same sender (at the same offset: a buffer reused
/// or sent from the wrong place) or zeros.
fn damage(
    sizes: &[usize],
    key: u64,
    seq: u64,
    got: &[u8],
    want: &mut Vec<u8>,
) -> serde_json::Value {
    let len = sizes[(seq % sizes.len() as u64) as usize];
    want.resize(len, 0);
    fill(want, key, seq);
    let n = got.len().min(len);
    let bad: Vec<usize> = (0..n).filter(|&i| got[i] != want[i]).collect();
    let (lo, hi) = match (bad.first(), bad.last()) {
        (Some(&lo), Some(&hi)) => (lo, hi),
        _ => (n, n),
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let at = |b: &[u8]| hex(&b[lo.min(b.len())..(lo + 8).min(b.len())]);
    let mut holds = "unknown".to_string();
    if lo < n {
        if got[lo..=hi].iter().all(|&b| b == 0) {
            holds = "zeros".into();
        } else {
            // Another message of this sender, up to 64 either side.
            let mut other = Vec::new();
            for s in seq.saturating_sub(64)..seq + 64 {
                if s == seq {
                    continue;
                }
                let l = sizes[(s % sizes.len() as u64) as usize];
                if l <= lo {
                    continue;
                }
                other.resize(l, 0);
                fill(&mut other, key, s);
                let end = (hi + 1).min(l);
                let same = (lo..end).filter(|&i| got[i] == other[i]).count();
                if same * 2 > end - lo {
                    holds = format!("message {s}'s bytes ({same} of {} match)", end - lo);
                    break;
                }
            }
            // Or this message's own bytes from elsewhere (a packet put at
            // the wrong offset).
            let probe = &got[lo..(lo + 16).min(n)];
            if holds == "unknown" && probe.len() == 16 {
                if let Some(p) = want.windows(16).position(|w| w == probe) {
                    holds = format!("its own bytes from offset {p}");
                }
            }
        }
    }
    json!({
        "seq": seq, "len": got.len(), "want_len": len,
        "first_bad": lo, "last_bad": hi, "bad_bytes": bad.len(),
        "want": at(want), "got": at(got), "holds": holds,
    })
}

fn parse_dst(s: &str) -> Result<(u32, u32), String> {
    let (n, e) = s.split_once(':').ok_or("destination must be NODE:EP")?;
    Ok((
        n.parse().map_err(|_| "bad node id")?,
        e.parse().map_err(|_| "bad endpoint id")?,
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            println!("{}", json!({"ok": false, "error": e}));
            ExitCode::from(2)
        }
    }
}

fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

fn run(cli: Cli) -> Result<bool, String> {
    let t = Duration::from_millis(cli.timeout_ms);
    let sizes = cli.sizes.clone();
    let raw = cli.raw;
    if sizes.is_empty() {
        return Err("--sizes is empty".into());
    }
    if let ModeCmd::AttachLoop { count } = cli.mode {
        let mut v = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let t0 = Instant::now();
            let c = Client::attach(&cli.socket, "attach-loop").map_err(|e| e.to_string())?;
            c.detach().map_err(|e| e.to_string())?;
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        v.sort_by(f64::total_cmp);
        let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!(
            "{}",
            json!({"ok": true, "count": count, "p50_us": p(0.5), "p99_us": p(0.99), "min_us": v[0]})
        );
        return Ok(true);
    }
    let c = Client::attach(&cli.socket, "wyvern-peer").map_err(|e| e.to_string())?;
    let ep = c.open_endpoint(cli.ep).map_err(|e| e.to_string())?;
    let me = ((c.node() as u64) << 32) | ep.id() as u64;
    ready();
    match cli.mode {
        ModeCmd::Send {
            to,
            count,
            delivered,
            keep_going,
            gap_us,
            linger_ms,
        } => {
            let dsts = to
                .split(',')
                .map(parse_dst)
                .collect::<Result<Vec<_>, _>>()?;
            let mut seqs = vec![0u64; dsts.len()];
            let mode = if delivered {
                Mode::Delivered
            } else {
                Mode::Buffered
            };
            let mut buf = Vec::new();
            let mut failed: BTreeMap<String, u64> = BTreeMap::new();
            let mut sent = 0u64;
            let t0 = Instant::now();
            let batch = cli.batch.max(1);
            let batched = batch > 1 && !delivered && gap_us == 0;
            // Batched: up to `batch` messages built, then handed to
            // `send_many` (what it did not take within the timeout is
            // offered again; a call that takes none is a failure of the rest).
            let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); if batched { batch } else { 0 }];
            let mut i = 0u64;
            while batched && i < count {
                let n = batch.min((count - i) as usize);
                let mut to = Vec::with_capacity(n);
                let mut next = seqs.clone();
                for (m, b) in bufs[..n].iter_mut().enumerate() {
                    let k = ((i + m as u64) % dsts.len() as u64) as usize;
                    let seq = next[k];
                    next[k] += 1;
                    b.resize(sizes[(seq % sizes.len() as u64) as usize], 0);
                    if !raw {
                        fill(b, me, seq);
                    }
                    to.push(dsts[k]);
                }
                let mut done = 0;
                let mut stop = false;
                while done < n {
                    let outs: Vec<Outgoing<'_>> = (done..n)
                        .map(|m| Outgoing {
                            dst_node: to[m].0,
                            dst_ep: to[m].1,
                            data: &bufs[m],
                        })
                        .collect();
                    match ep.send_many(&outs, t) {
                        Ok(k) => done += k,
                        Err(e) => {
                            *failed.entry(e.to_string()).or_default() += (n - done) as u64;
                            stop = true;
                            break;
                        }
                    }
                }
                // Only what was taken counts (and advances its sequence).
                for m in 0..done {
                    let k = ((i + m as u64) % dsts.len() as u64) as usize;
                    seqs[k] += 1;
                }
                sent += done as u64;
                i += n as u64;
                // (With --keep-going, the sequence numbers of messages not
                // taken go to the next ones: they were never sent.)
                if stop && !keep_going {
                    break;
                }
            }
            for i in (if batched { count } else { 0 })..count {
                let k = (i % dsts.len() as u64) as usize;
                let ((node, dst), seq) = (dsts[k], seqs[k]);
                let len = sizes[(seq % sizes.len() as u64) as usize];
                buf.resize(len, 0);
                if !raw {
                    fill(&mut buf, me, seq);
                }
                match ep.send(node, dst, &buf, mode, t) {
                    Ok(_) => {
                        sent += 1;
                        seqs[k] += 1;
                    }
                    Err(e) => {
                        *failed.entry(e.to_string()).or_default() += 1;
                        if !keep_going {
                            break;
                        }
                    }
                }
                if gap_us > 0 {
                    std::thread::sleep(Duration::from_micros(gap_us));
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            // Give late failure reports of buffered sends a moment to arrive.
            std::thread::sleep(Duration::from_millis(linger_ms));
            for e in c.take_errors() {
                *failed
                    .entry(format!("async: {}", e.status.describe()))
                    .or_default() += 1;
            }
            let ok = failed.is_empty();
            println!(
                "{}",
                json!({"ok": ok, "sent": sent, "failed": failed, "secs": secs, "rate": sent as f64 / secs})
            );
            let _ = c.detach();
            Ok(ok)
        }
        ModeCmd::Recv {
            count,
            slow_us,
            start_delay_ms,
            start_when,
        } => {
            std::thread::sleep(Duration::from_millis(start_delay_ms));
            if let Some(f) = start_when {
                // Bounded: a test that never says go fails, not hangs.
                let until = Instant::now() + Duration::from_secs(600);
                while !f.exists() {
                    if Instant::now() > until {
                        return Err(format!("{} never appeared", f.display()));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let mut next: BTreeMap<u64, u64> = BTreeMap::new();
            let (mut corrupt, mut disorder, mut bytes, mut zero_copy) = (0u64, 0u64, 0u64, 0u64);
            let mut want = Vec::new();
            let mut first_corrupt: Option<serde_json::Value> = None;
            let mut first: Option<Instant> = None;
            let mut got = 0;
            let batch = if slow_us > 0 { 1 } else { cli.batch.max(1) };
            while got < count {
                // Checked in place: no allocation per message.
                let mut check = |m: &MessageRef<'_>| {
                    let key = ((m.src_node as u64) << 32) | m.src_ep as u64;
                    let seq = next.entry(key).or_insert(0);
                    let len = sizes[(*seq % sizes.len() as u64) as usize];
                    let damaged = if raw {
                        corrupt += (m.data.len() != len) as u64;
                        false
                    } else {
                        want.resize(len, 0);
                        fill(&mut want, key, *seq);
                        m.data != &want[..]
                    };
                    if damaged {
                        // Either damaged or out of order: tell which.
                        let mut found = false;
                        for ahead in 1..64u64 {
                            let l = sizes[((*seq + ahead) % sizes.len() as u64) as usize];
                            if l != m.data.len() {
                                continue;
                            }
                            want.resize(l, 0);
                            fill(&mut want, key, *seq + ahead);
                            if m.data == &want[..] {
                                found = true;
                                break;
                            }
                        }
                        if found {
                            disorder += 1;
                        } else {
                            corrupt += 1;
                            if first_corrupt.is_none() {
                                let src = format!("{}:{}", m.src_node, m.src_ep);
                                let d = damage(&sizes, key, *seq, m.data, &mut want);
                                eprintln!("wyvern-peer: first corrupt message from {src}: {d}");
                                first_corrupt = Some(json!({"from": src, "detail": d}));
                            }
                        }
                    }
                    *seq += 1;
                    bytes += m.data.len() as u64;
                    zero_copy += m.is_zero_copy() as u64;
                };
                let r = if batch > 1 {
                    ep.recv_many(batch.min((count - got) as usize), t, &mut check)
                } else {
                    ep.recv_with(t, |m| check(m)).map(|()| 1)
                };
                match r {
                    Ok(n) => {
                        first.get_or_insert_with(Instant::now);
                        got += n as u64;
                    }
                    Err(Error::Timeout) => break,
                    Err(e) => return Err(format!("after {got} messages: {e}")),
                }
                if slow_us > 0 {
                    std::thread::sleep(Duration::from_micros(slow_us));
                }
            }
            let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
            let ok = got == count && corrupt == 0 && disorder == 0;
            let senders: BTreeMap<String, u64> = next
                .iter()
                .map(|(k, v)| (format!("{}:{}", k >> 32, k & 0xFFFF_FFFF), *v))
                .collect();
            println!(
                "{}",
                json!({"ok": ok, "received": got, "bytes": bytes, "corrupt": corrupt, "out_of_order": disorder,
                       "zero_copy": zero_copy, "senders": senders, "secs": secs,
                       "rate": got as f64 / secs.max(1e-9), "first_corrupt": first_corrupt})
            );
            let _ = c.detach();
            Ok(ok)
        }
        ModeCmd::Echo { count } => {
            for i in 0..count {
                let m = ep.recv(t).map_err(|e| format!("echo {i}: {e}"))?;
                ep.send(m.src_node, m.src_ep, m.data(), Mode::Buffered, t)
                    .map_err(|e| format!("echo {i}: {e}"))?;
            }
            println!("{}", json!({"ok": true, "echoed": count}));
            let _ = c.detach();
            Ok(true)
        }
        ModeCmd::Ping { to, count, warmup } => {
            let (node, dst) = parse_dst(&to)?;
            let len = sizes[0];
            let mut buf = vec![0u8; len];
            let mut rtt = Vec::with_capacity(count as usize);
            for i in 0..count + warmup {
                fill(&mut buf, me, i);
                let t0 = Instant::now();
                ep.send(node, dst, &buf, Mode::Buffered, t)
                    .map_err(|e| format!("ping {i}: {e}"))?;
                let m = ep.recv(t).map_err(|e| format!("pong {i}: {e}"))?;
                let us = t0.elapsed().as_secs_f64() * 1e6;
                if m.data() != &buf[..] {
                    return Err(format!("pong {i} differs from its ping"));
                }
                if i >= warmup {
                    rtt.push(us);
                }
            }
            rtt.sort_by(f64::total_cmp);
            let p = |q: f64| rtt[((rtt.len() - 1) as f64 * q).round() as usize];
            println!(
                "{}",
                json!({"ok": true, "count": count, "size": len, "rtt_p50_us": p(0.5), "rtt_p99_us": p(0.99),
                       "half_rtt_p50_us": p(0.5) / 2.0})
            );
            let _ = c.detach();
            Ok(true)
        }
        #[cfg(feature = "testing")]
        ModeCmd::Hostile { count, seed } => {
            let mut s = seed;
            let (layout, _) = c.layout();
            let mut pushed = 0u64;
            let mut outcome = "survived";
            for _ in 0..count {
                s = splitmix(s);
                let len = (s % 200) as usize + 1;
                let mut rec = vec![0u8; len];
                fill(&mut rec, s, 0);
                // Make many records look plausible: a known op and mode, with
                // offsets pointing anywhere in or out of the pool.
                if len >= 40 && s % 3 != 0 {
                    rec[0] = (s >> 8) as u8 % 5;
                    rec[1] = (s >> 16) as u8 % 2;
                    let off = match s % 4 {
                        0 => layout.blocks_off + (s >> 20) % layout.params.block_bytes,
                        1 => u64::MAX - (s >> 40),
                        2 => layout.total - 1,
                        _ => s,
                    };
                    rec[24..32].copy_from_slice(&off.to_le_bytes());
                    let l = if s % 5 == 0 {
                        u64::MAX
                    } else {
                        (s >> 24) % (1 << 30)
                    };
                    rec[32..40].copy_from_slice(&l.to_le_bytes());
                }
                match c.submit_raw(&rec) {
                    Ok(true) => pushed += 1,
                    Ok(false) => std::thread::sleep(Duration::from_micros(50)),
                    Err(_) => {
                        outcome = "evicted";
                        break;
                    }
                }
            }
            // The agent notices eviction-worthy garbage; wait for its word.
            let deadline = Instant::now() + Duration::from_secs(5);
            while outcome == "survived" && Instant::now() < deadline {
                match ep.recv(Duration::from_millis(100)) {
                    Err(Error::AgentGone) | Err(Error::Refused(_)) => outcome = "evicted",
                    _ => {}
                }
            }
            println!(
                "{}",
                json!({"ok": true, "pushed": pushed, "outcome": outcome})
            );
            Ok(true)
        }
        ModeCmd::IncastSend {
            to,
            stop_when,
            start_when,
            max_count,
            max_secs,
            attempt_ms,
        } => {
            let dst = parse_dst(&to)?;
            let r = incast::send(
                &c,
                &ep,
                me,
                dst,
                sizes[0],
                raw,
                &incast::SendLimits {
                    stop_when,
                    start_when,
                    max_count,
                    max_secs,
                    attempt: Duration::from_millis(attempt_ms),
                },
            )?;
            let _ = c.detach();
            println!("{r}");
            Ok(r["ok"] == true)
        }
        ModeCmd::IncastRecv {
            senders,
            rate,
            warmup_ms,
            window_ms,
            stop_file,
        } => {
            let r = incast::recv(
                &ep,
                t,
                raw,
                &incast::RecvPlan {
                    senders,
                    rate,
                    warmup: Duration::from_millis(warmup_ms),
                    window: Duration::from_millis(window_ms),
                    stop_file,
                },
            )?;
            let _ = c.detach();
            println!("{r}");
            Ok(r["ok"] == true)
        }
        ModeCmd::AttachLoop { .. } => unreachable!("handled above"),
    }
}

/// The incast pattern (many senders, one slow receiver): what each message
/// carries and what the receiver checks and measures.
mod incast {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};
    use wyvern::client::{Client, Endpoint, Error, Mode};

    /// Header of an incast message: sender key (node << 32 | endpoint),
    /// sequence, CLOCK_MONOTONIC nanoseconds at the send call, flags; the
    /// rest is the checkable pattern of (key, sequence).
    const HDR: usize = 32;
    /// Flag: the sender's last message (its sequence + 1 is its count).
    const LAST: u64 = 1;

    /// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the
    /// machine, so a receiver can subtract a sender's stamp.
    fn mono_ns() -> u64 {
        // NOTE(unwrap): CLOCK_MONOTONIC exists on every Linux.
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    }

    fn word(b: &[u8], i: usize) -> u64 {
        u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes"))
    }

    pub struct SendLimits {
        pub stop_when: PathBuf,
        pub start_when: Option<PathBuf>,
        pub max_count: u64,
        pub max_secs: u64,
        pub attempt: Duration,
    }

    fn wait_for(f: &std::path::Path, limit: Duration) -> Result<(), String> {
        let until = Instant::now() + limit;
        while !f.exists() {
            if Instant::now() > until {
                return Err(format!("{} never appeared", f.display()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn send(
        c: &Client,
        ep: &Endpoint,
        me: u64,
        (node, dst): (u32, u32),
        len: usize,
        raw: bool,
        lim: &SendLimits,
    ) -> Result<Value, String> {
        if len < HDR {
            return Err(format!(
                "incast messages carry a {HDR}-byte header: --sizes >= {HDR}"
            ));
        }
        if let Some(f) = &lim.start_when {
            wait_for(f, Duration::from_secs(600))?;
        }
        let mut buf = vec![0u8; len];
        let t0 = Instant::now();
        let hard_end = t0 + Duration::from_secs(lim.max_secs);
        let mut next_look = t0;
        let (mut seq, mut full, mut would_block) = (0u64, 0u64, 0u64);
        let mut blocked = Duration::ZERO;
        let mut longest = Duration::ZERO;
        loop {
            let now = Instant::now();
            let mut last = seq + 1 >= lim.max_count || now >= hard_end;
            if now >= next_look {
                next_look = now + Duration::from_millis(5);
                last |= lim.stop_when.exists();
            }
            buf[0..8].copy_from_slice(&me.to_le_bytes());
            buf[8..16].copy_from_slice(&seq.to_le_bytes());
            buf[24..32].copy_from_slice(&(if last { LAST } else { 0 }).to_le_bytes());
            if !raw {
                super::fill(&mut buf[HDR..], me, seq);
            }
            buf[16..24].copy_from_slice(&mono_ns().to_le_bytes());
            // First without waiting: a full submission ring is the
            // backpressure this test looks for.
            match ep.send(node, dst, &buf, Mode::Buffered, Duration::ZERO) {
                Ok(_) => {}
                Err(Error::WouldBlock) => {
                    full += 1;
                    let a = Instant::now();
                    loop {
                        // Stamped again: the latency counts from the send
                        // call the agent took.
                        buf[16..24].copy_from_slice(&mono_ns().to_le_bytes());
                        match ep.send(node, dst, &buf, Mode::Buffered, lim.attempt) {
                            Ok(_) => break,
                            Err(Error::WouldBlock) => {
                                would_block += 1;
                                // Bounded: a receiver that never reads
                                // fails the sender, not hangs it.
                                if Instant::now() > hard_end + Duration::from_secs(120) {
                                    return Err(format!(
                                        "message {seq}: blocked past the time limit"
                                    ));
                                }
                            }
                            Err(e) => return Err(format!("message {seq}: {e}")),
                        }
                    }
                    let d = a.elapsed();
                    blocked += d;
                    longest = longest.max(d);
                }
                Err(e) => return Err(format!("message {seq}: {e}")),
            }
            seq += 1;
            if last {
                break;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        // Late failure reports of buffered sends.
        std::thread::sleep(Duration::from_millis(50));
        let errors: Vec<String> = c
            .take_errors()
            .iter()
            .map(|e| e.status.describe().to_string())
            .collect();
        Ok(
            json!({"ok": errors.is_empty(), "sent": seq, "secs": secs, "rate": seq as f64 / secs,
                  "full": full, "would_block": would_block,
                  "blocked_secs": blocked.as_secs_f64(), "longest_block_ms": longest.as_secs_f64() * 1e3,
                  "errors": errors}),
        )
    }

    pub struct RecvPlan {
        pub senders: usize,
        pub rate: u64,
        pub warmup: Duration,
        pub window: Duration,
        pub stop_file: PathBuf,
    }

    #[derive(Default)]
    struct Sender {
        /// The next sequence expected.
        next: u64,
        /// Messages delivered within the window.
        in_window: u64,
        /// Messages sent within the window (their stamp in it).
        sent_in_window: u64,
        /// Its count, once its last message came.
        total: Option<u64>,
    }

    /// Jain's fairness index of `x`: (Σx)² / (n Σx²), 1 when all are equal,
    /// 1/n when one has everything.
    pub fn jain(x: &[f64]) -> f64 {
        let s: f64 = x.iter().sum();
        let q: f64 = x.iter().map(|v| v * v).sum();
        if q == 0.0 {
            0.0
        } else {
            s * s / (x.len() as f64 * q)
        }
    }

    pub fn recv(ep: &Endpoint, t: Duration, raw: bool, plan: &RecvPlan) -> Result<Value, String> {
        let mut senders: HashMap<u64, Sender> = HashMap::new();
        let (mut corrupt, mut disorder, mut foreign, mut short) = (0u64, 0u64, 0u64, 0u64);
        let (mut got, mut lasts) = (0u64, 0usize);
        let mut want = Vec::new();
        let mut lat: Vec<u64> = Vec::new();
        // The window: [open, close); set at the first message.
        let mut open: Option<Instant> = None;
        // The same window on the senders' clock (CLOCK_MONOTONIC, ns).
        let mut open_ns = u64::MAX;
        let mut close_ns = u64::MAX;
        let mut close: Option<Instant> = None;
        let mut in_window = false;
        let mut stopped: Option<Instant> = None;
        let mut paced = (Instant::now(), 0u64);
        while lasts < plan.senders {
            if plan.rate > 0 && stopped.is_none() {
                // At most `rate` per second: sleep once a millisecond ahead.
                let due = paced.0 + Duration::from_secs_f64(paced.1 as f64 / plan.rate as f64);
                let now = Instant::now();
                if due > now + Duration::from_millis(1) {
                    std::thread::sleep(due - now);
                }
            }
            let r = ep.recv_with(t, |m| {
                let now_ns = mono_ns();
                let d = m.data;
                if d.len() < HDR {
                    short += 1;
                    return;
                }
                let key = word(d, 0);
                if key != ((m.src_node as u64) << 32) | m.src_ep as u64 {
                    foreign += 1;
                    return;
                }
                let (seq, stamp, flags) = (word(d, 1), word(d, 2), word(d, 3));
                let s = senders.entry(key).or_default();
                if seq != s.next {
                    disorder += 1;
                }
                s.next = seq + 1;
                if !raw {
                    want.resize(d.len() - HDR, 0);
                    super::fill(&mut want, key, seq);
                    corrupt += (d[HDR..] != want[..]) as u64;
                }
                if flags & LAST != 0 && s.total.is_none() {
                    s.total = Some(seq + 1);
                    lasts += 1;
                }
                if (open_ns..close_ns).contains(&stamp) {
                    s.sent_in_window += 1;
                }
                if in_window {
                    s.in_window += 1;
                    lat.push(now_ns.saturating_sub(stamp));
                }
            });
            match r {
                Ok(()) => got += 1,
                Err(Error::Timeout) => break,
                Err(e) => return Err(format!("after {got} messages: {e}")),
            }
            paced.1 += 1;
            let now = Instant::now();
            if open.is_none() {
                // Every sender attached before the first message (they start
                // together) and stops only at the end of the window: all of
                // them are active in it, heard or not (one never heard counts 0).
                open = Some(now + plan.warmup);
                close = Some(now + plan.warmup + plan.window);
                open_ns = mono_ns() + plan.warmup.as_nanos() as u64;
                close_ns = open_ns + plan.window.as_nanos() as u64;
            }
            in_window = open.is_some_and(|o| now >= o) && close.is_some_and(|c| now < c);
            if stopped.is_none() && close.is_some_and(|c| now >= c) {
                std::fs::write(&plan.stop_file, b"stop").map_err(|e| e.to_string())?;
                stopped = Some(now);
            }
        }
        let drain_secs = stopped.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let window_secs = plan.window.as_secs_f64();
        let window_of = |count: &dyn Fn(&Sender) -> u64| {
            let mut counts: Vec<f64> = senders.values().map(|s| count(s) as f64).collect();
            counts.resize(counts.len().max(plan.senders), 0.0);
            let sum: f64 = counts.iter().sum();
            let mean = sum / counts.len().max(1) as f64;
            let (lo, hi) = counts
                .iter()
                .fold((f64::MAX, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
            let rel = |v: f64| if mean > 0.0 { v / mean } else { 0.0 };
            json!({"secs": window_secs, "msgs": sum, "rate": sum / window_secs, "jain": jain(&counts),
                   "min_rel": rel(lo), "max_rel": rel(hi)})
        };
        lat.sort_unstable();
        let p = |q: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() - 1) as f64 * q).round() as usize] as f64 / 1e3
            }
        };
        let incomplete: Vec<String> = senders
            .iter()
            .filter(|(_, s)| s.total != Some(s.next))
            .map(|(k, s)| {
                format!(
                    "{}:{} got {} of {:?}",
                    k >> 32,
                    k & 0xFFFF_FFFF,
                    s.next,
                    s.total
                )
            })
            .collect();
        let totals: serde_json::Map<String, Value> = senders
            .iter()
            .map(|(k, s)| (format!("{}:{}", k >> 32, k & 0xFFFF_FFFF), json!(s.next)))
            .collect();
        let window_counts: serde_json::Map<String, Value> = senders
            .iter()
            .map(|(k, s)| {
                (
                    format!("{}:{}", k >> 32, k & 0xFFFF_FFFF),
                    json!([s.in_window, s.sent_in_window]),
                )
            })
            .collect();
        let ok = lasts == plan.senders
            && senders.len() == plan.senders
            && incomplete.is_empty()
            && corrupt + disorder + foreign + short == 0
            && stopped.is_some();
        Ok(
            json!({"ok": ok, "received": got, "senders": senders.len(), "complete": lasts,
                  "incomplete": incomplete, "corrupt": corrupt, "out_of_order": disorder,
                  "foreign": foreign, "short": short,
                  "window": window_of(&|s: &Sender| s.in_window),
                  "sent_window": window_of(&|s: &Sender| s.sent_in_window),
                  "lat_us": {"p50": p(0.5), "p99": p(0.99), "p999": p(0.999),
                             "max": lat.last().map_or(0.0, |v| *v as f64 / 1e3), "samples": lat.len()},
                  "drain_secs": drain_secs, "totals": totals, "window_counts": window_counts}),
        )
    }
}
