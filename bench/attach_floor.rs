//! The floor under attach+detach: what two request/reply round trips over a
//! fresh Unix-domain connection cost on this machine, against a trivial
//! single-threaded server process. bench/run.sh `attach` compares
//! `wyvern-peer attach-loop` with it in the same run.
//!
//! `cargo bench --bench attach_floor -- [--count 2000]`
//!
//! Each iteration: connect, send a ~100-byte request line, read the reply
//! line, send a second line, read its reply, close — the shape of wyvern's
//! attach (Attach → Attached, Detach → Ok) without descriptor passing,
//! pool mapping or any agent bookkeeping. The server is this binary re-run
//! with `--server PATH`, a separate process like the agent. One JSON line
//! with p50/p99 in microseconds.
//!
//! Bounded: `--count` iterations (at most 100000); the server exits after
//! serving that many connections or after 60 s.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{args, flag, percentile};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

const REQ: &[u8] = b"{\"Attach\":{\"version\":1,\"pid\":12345,\"name\":\"attach-floor-client-of-about-a-hundred-bytes\"}}\n";
const REP: &[u8] = b"{\"Attached\":{\"slot\":0,\"node\":0,\"nodes\":2,\"eager_max\":4096}}\n";

fn serve(path: PathBuf, max: u64) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    println!("ready");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut served = 0;
    while served < max && Instant::now() < deadline {
        // Sleep in poll(2) until a connection comes (as an idle agent sleeps
        // in epoll_wait), a second at a time so the deadline is kept.
        let mut fds = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(1000u16))? == 0 {
            continue;
        }
        let (s, _) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s;
        let mut line = String::new();
        for _ in 0..2 {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                break;
            }
            w.write_all(REP)?;
        }
        served += 1;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn main() {
    let a = args();
    if let Some(i) = a.iter().position(|x| x == "--server") {
        let path = PathBuf::from(&a[i + 1]);
        let max: u64 = flag(&a, "--count", 2000u64);
        if let Err(e) = serve(path, max) {
            eprintln!("attach_floor server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let count: u64 = flag(&a, "--count", 2000u64).clamp(1, 100_000);
    let dir = std::env::temp_dir().join(format!("wyvern-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("floor.sock");
    let warm = 100;
    let mut server = Command::new(std::env::current_exe().expect("own path"))
        .arg("--server")
        .arg(&path)
        .args(["--count", &(count + warm).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the floor server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("server ready line");
    let mut v = Vec::with_capacity(count as usize);
    let mut buf = String::new();
    for i in 0..count + warm {
        let t0 = Instant::now();
        let s = UnixStream::connect(&path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        for _ in 0..2 {
            w.write_all(REQ).expect("write");
            buf.clear();
            r.read_line(&mut buf).expect("read");
        }
        drop(w);
        drop(r);
        if i >= warm {
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{}",
        serde_json::json!({"ok": true, "bench": "attach_floor", "count": count,
            "p50_us": percentile(&v, 0.5), "p99_us": percentile(&v, 0.99),
            "min_us": percentile(&v, 0.0)})
    );
}
