//! Shared helpers of the wyvern benches (`bench/*.rs`, `harness = false`):
//! finding and starting `wyvern agent` processes, pinning, statistics.
//!
//! The agent binary is `target/release/wyvern`: run
//! `cargo build --release --bins` first (bench/run.sh does), or point
//! `WYVERN_BIN` at another build.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The `wyvern` binary the benches start agents from.
pub fn agent_bin() -> Result<PathBuf, String> {
    let p = match std::env::var_os("WYVERN_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/wyvern"),
    };
    if !p.is_file() {
        return Err(format!(
            "{} not found: run `cargo build --release --bins` first (or set WYVERN_BIN)",
            p.display()
        ));
    }
    // Warn when the binary is older than the sources: the agent measured
    // would not be the code the bench was compiled against.
    if let (Ok(bin), Some(src)) = (
        std::fs::metadata(&p).and_then(|m| m.modified()),
        newest_mtime(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")),
    ) {
        if src > bin {
            eprintln!(
                "warning: {} is older than src/: rebuild with `cargo build --release --bins`",
                p.display()
            );
        }
    }
    Ok(p)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        if t > newest {
            newest = t;
        }
    }
    newest
}

/// A free TCP port on 127.0.0.1 (racy, like every such helper; good enough).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Agents started by a bench; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Agents {
    pub children: Vec<Child>,
    pub sockets: Vec<PathBuf>,
    pub dir: PathBuf,
}

impl Agents {
    /// Start `n` agents on loopback (node ids 0..n), each with `extra`
    /// arguments; `cores[i]`, when given, pins agent `i` (`--cores`).
    pub fn start(
        tag: &str,
        n: usize,
        idle: &str,
        cores: &[Option<usize>],
        extra: &[&str],
    ) -> Result<Agents, String> {
        let bin = agent_bin()?;
        let dir = std::env::temp_dir().join(format!("wyvern-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut a = Agents {
            children: Vec::new(),
            sockets: Vec::new(),
            dir: dir.clone(),
        };
        let nodes = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..n {
            let sock = dir.join(format!("agent{i}.sock"));
            let mut cmd = Command::new(&bin);
            cmd.args(["agent", "--node-id", &i.to_string(), "--nodes", &nodes])
                .args(["--idle", idle])
                .arg("--socket")
                .arg(&sock)
                .args(extra)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::piped());
            if let Some(Some(c)) = cores.get(i) {
                cmd.args(["--cores", &c.to_string()]);
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            let out = child.stdout.take().expect("piped");
            a.children.push(child);
            a.sockets.push(sock);
            let mut line = String::new();
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("agent {i}: {e}"))?;
            if !line.starts_with("wyvern agent ready") {
                return Err(format!("agent {i} did not start (see its log above)"));
            }
        }
        // Give the peers a moment to connect (the higher id dials the lower).
        if n > 1 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let up = a.sockets.iter().all(|s| {
                    wyvern::client::stat(s)
                        .map(|st| st.peers.iter().all(|p| p.state == "up"))
                        .unwrap_or(false)
                });
                if up {
                    break;
                }
                if Instant::now() > deadline {
                    return Err("agents did not connect to each other within 10 s".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(a)
    }

    /// Pid of agent `i`.
    pub fn pid(&self, i: usize) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.children[i].id() as i32)
    }

    /// Send a signal to agent `i`.
    pub fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid(i), sig);
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.signal(i, nix::sys::signal::Signal::SIGCONT);
            self.signal(i, nix::sys::signal::Signal::SIGTERM);
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pin the calling thread to one core.
pub fn pin(core: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).map_err(|e| format!("core {core}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("cannot pin to core {core}: {e}"))
}

/// Cores this machine has online.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Median of a slice (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Percentile `q` (0..=1) of a slice (sorted copy, nearest rank).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// An environment variable parsed, or a default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Command-line arguments without the `--bench` flag cargo adds.
pub fn args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect()
}

/// The value following `--name` in `args`, parsed.
pub fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
