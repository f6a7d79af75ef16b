//! 1 MiB bandwidth between two agents on loopback TCP (bench/run.sh
//! `bandwidth` compares it with iperf3 in the same run).
//!
//! `cargo build --release --bins && cargo bench --bench bulk -- [--idle adaptive|spin]
//!  [--mib 2048] [--mode zerocopy|copy] [--block-mib 64] [--pin]`
//!
//! Starts two agents (node 0 and node 1). A receiver thread attaches to
//! node 1 and takes `--mib` messages of 1 MiB, checking a stamp at both ends
//! of each; the main thread attaches to node 0 and sends them:
//! * `zerocopy` (default): `Client::alloc` a pool block, write the 16-byte
//!   stamp (the payload is not rewritten, as iperf3 does not rewrite its
//!   buffer either), `Endpoint::send_buf`;
//! * `copy`: `Endpoint::send` of a 1 MiB `Vec` (the library allocates a
//!   block and copies into it).
//!
//! The figure is bytes / (time from the first send to the receiver's final
//! ack), after 64 MiB of warm-up. One JSON line on stdout.
//!
//! Core layout: unpinned by default (4 busy threads — 2 agents, sender,
//! receiver — on 2 cores); `--pin` puts agent 0 + sender on core 0 and
//! agent 1 + receiver on core 1 (one "node" per core).
//!
//! Bounded: `--mib` messages, each operation with a 10 s timeout.

mod common;

use std::time::{Duration, Instant};

use common::{args, flag, Agents};
use wyvern::client::{Client, Mode};

const MIB: usize = 1 << 20;
const WARMUP: u64 = 64;

fn stamp(buf: &mut [u8], i: u64) {
    let n = buf.len();
    buf[..8].copy_from_slice(&i.to_le_bytes());
    buf[n - 8..].copy_from_slice(&(!i).to_le_bytes());
}

fn check(buf: &[u8], i: u64) -> bool {
    let n = buf.len();
    n == MIB && buf[..8] == i.to_le_bytes() && buf[n - 8..] == (!i).to_le_bytes()
}

fn main() {
    if let Err(e) = run() {
        println!("{}", serde_json::json!({"ok": false, "error": e}));
        eprintln!("bulk bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a = args();
    let idle: String = flag(&a, "--idle", "adaptive".to_string());
    let mib: u64 = flag(&a, "--mib", 2048u64).max(1);
    let mode: String = flag(&a, "--mode", "zerocopy".to_string());
    let block_mib: u64 = flag(&a, "--block-mib", 64u64);
    let pin = a.iter().any(|x| x == "--pin") && common::cores() >= 2;
    if mode != "zerocopy" && mode != "copy" {
        return Err("--mode is zerocopy or copy".into());
    }
    let cores = if pin { vec![Some(0), Some(1)] } else { vec![] };
    let agents = Agents::start(
        "bulk",
        2,
        &idle,
        &cores,
        &[
            "--block-bytes",
            &format!("{block_mib}MiB"),
            "--max-clients",
            "4",
        ],
    )?;
    let t = Duration::from_secs(10);
    let total = WARMUP + mib;
    let sock_b = agents.sockets[1].clone();
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let receiver = std::thread::spawn(move || -> Result<(), String> {
        if pin {
            common::pin(1)?;
        }
        let c = Client::attach(&sock_b, "bulk-recv").map_err(|e| e.to_string())?;
        let ep = c.open_endpoint(Some(2)).map_err(|e| e.to_string())?;
        let _ = tx.send(Ok(()));
        let mut zero_copy = 0u64;
        for i in 0..total {
            let m = ep.recv(t).map_err(|e| format!("recv {i}: {e}"))?;
            if !check(m.data(), i) {
                return Err(format!("message {i} corrupt or out of order"));
            }
            zero_copy += m.is_zero_copy() as u64;
            if i == WARMUP - 1 || i == total - 1 {
                ep.send(0, 1, &i.to_le_bytes(), Mode::Buffered, t)
                    .map_err(|e| e.to_string())?;
            }
        }
        if zero_copy != total {
            return Err(format!("only {zero_copy} of {total} arrived zero-copy"));
        }
        c.detach().map_err(|e| e.to_string())
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| "receiver did not start")??;
    if pin {
        common::pin(0)?;
    }
    let c = Client::attach(&agents.sockets[0], "bulk-send").map_err(|e| e.to_string())?;
    let ep = c.open_endpoint(Some(1)).map_err(|e| e.to_string())?;
    let mut v = vec![0xa5u8; MIB];
    let mut t0 = Instant::now();
    for i in 0..total {
        if mode == "zerocopy" {
            let mut b = c.alloc(MIB, t).map_err(|e| format!("alloc {i}: {e}"))?;
            stamp(&mut b, i);
            ep.send_buf(1, 2, b, Mode::Buffered, t)
                .map_err(|e| format!("send_buf {i}: {e}"))?;
        } else {
            stamp(&mut v, i);
            ep.send(1, 2, &v, Mode::Buffered, t)
                .map_err(|e| format!("send {i}: {e}"))?;
        }
        if i == WARMUP - 1 {
            ep.recv(t).map_err(|e| format!("warm-up ack: {e}"))?;
            t0 = Instant::now();
        }
    }
    ep.recv(t).map_err(|e| format!("final ack: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let errors = c.take_errors();
    receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())??;
    if !errors.is_empty() {
        return Err(format!(
            "{} sends failed late: {:?}",
            errors.len(),
            errors[0]
        ));
    }
    let bytes = (mib as usize * MIB) as f64;
    println!(
        "{}",
        serde_json::json!({"ok": true, "bench": "bulk", "mode": mode, "idle": idle, "pinned": pin,
            "mib": mib, "secs": secs, "bytes_per_s": bytes / secs,
            "gbit_per_s": bytes * 8.0 / secs / 1e9, "backing": c.backing().to_string()})
    );
    let _ = c.detach();
    drop(agents);
    Ok(())
}
