//! Shared helpers of the wyvern benches (`bench/*.rs`, `harness = false`):
//! finding and starting `wyvern agent` processes, pinning, statistics.
//!
//! The agent binary is `target/release/wyvern`: run
//! `cargo build --release --bins` first (bench/run.sh does), or point
//! `WYVERN_BIN` at another build.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

/// Agents started by a bench (see `wyvern::local::LocalAgents`).
pub struct Agents;

impl Agents {
    /// Start `n` agents of the release binary on loopback (node ids 0..n),
    /// each with `extra` arguments; `cores[i]`, when given, pins agent `i`.
    pub fn start(
        tag: &str,
        n: usize,
        idle: &str,
        cores: &[Option<usize>],
        extra: &[&str],
    ) -> Result<wyvern::local::LocalAgents, String> {
        wyvern::local::LocalAgents::start(
            &agent_bin()?,
            &format!("bench-{tag}"),
            n,
            idle,
            cores,
            extra,
        )
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
