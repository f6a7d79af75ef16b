//! Several agents on this machine over loopback TCP, as child processes:
//! what `wyvern demo` and the benchmarks run on.
//!
//! Every agent binds port 0 and reports the port it got in its readiness
//! line; agent `i` is started knowing the addresses of agents `0..i`, which
//! is all it needs since the higher node id dials the lower. So no port is
//! ever guessed free and then raced for.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Agents started by [`LocalAgents::start`]; stopped (SIGTERM, then SIGKILL
/// after 3 s) when dropped, with their scratch directory.
pub struct LocalAgents {
    children: Vec<Child>,
    /// Control socket of each agent, by node id.
    pub sockets: Vec<PathBuf>,
    /// TCP address of each agent, by node id.
    pub addrs: Vec<SocketAddr>,
    dir: PathBuf,
}

impl LocalAgents {
    /// Start `n` agents of the `wyvern` binary `bin` (node ids `0..n`) with
    /// idle policy `idle` ("spin" or "adaptive"), pinning agent `i` to
    /// `cores[i]` when given, each with `extra` arguments; wait until every
    /// agent sees every peer up (at most 10 s).
    pub fn start(
        bin: &Path,
        tag: &str,
        n: usize,
        idle: &str,
        cores: &[Option<usize>],
        extra: &[&str],
    ) -> Result<LocalAgents, String> {
        LocalAgents::start_wrapped(bin, tag, n, idle, cores, extra, &[], &[])
    }

    /// As [`LocalAgents::start`], agent `i` run under the command `wrap[i]` (e.g.
    /// `ip netns exec ns0`) when given, with `node_args[i]` after `extra`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_wrapped(
        bin: &Path,
        tag: &str,
        n: usize,
        idle: &str,
        cores: &[Option<usize>],
        extra: &[&str],
        wrap: &[Vec<String>],
        node_args: &[Vec<String>],
    ) -> Result<LocalAgents, String> {
        let dir = std::env::temp_dir().join(format!("wyvern-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut a = LocalAgents {
            children: Vec::new(),
            sockets: Vec::new(),
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 0)); n],
            dir: dir.clone(),
        };
        for i in 0..n {
            let nodes: Vec<String> = a.addrs.iter().map(|s| s.to_string()).collect();
            let sock = dir.join(format!("agent{i}.sock"));
            let mut cmd = match wrap.get(i).filter(|w| !w.is_empty()) {
                Some(w) => {
                    let mut c = Command::new(&w[0]);
                    c.args(&w[1..]).arg(bin);
                    c
                }
                None => Command::new(bin),
            };
            cmd.args([
                "agent",
                "--node-id",
                &i.to_string(),
                "--nodes",
                &nodes.join(","),
            ])
            .args(["--idle", idle])
            .arg("--socket")
            .arg(&sock)
            // A job name of their own: no other agents on this machine can
            // pass for their peers.
            .args(if extra.contains(&"--job") {
                vec![]
            } else {
                vec![
                    "--job".to_string(),
                    format!("local-{tag}-{}", std::process::id()),
                ]
            })
            // Every link from the start: each agent takes a free port as it
            // starts, so only a later agent knows an earlier one's address
            // (and the higher id dials the lower).
            .args(if extra.contains(&"--connect") {
                &[][..]
            } else {
                &["--connect", "all"][..]
            })
            .args(extra)
            .args(node_args.get(i).into_iter().flatten())
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
            let out = child.stdout.take().expect("stdout is piped");
            a.children.push(child);
            a.sockets.push(sock);
            let mut line = String::new();
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("agent {i} did not start: {e}"))?;
            // `wyvern agent ready: <transport> <address>`: tcp and udp name a
            // socket address (the port the agent got); dpdk names a MAC, which
            // peers learn by themselves, so the configured address stays.
            let rest = line
                .trim()
                .strip_prefix("wyvern agent ready: ")
                .ok_or_else(|| format!("agent {i} did not start (see its log above)"))?;
            if let Some(addr) = rest.split_once(' ').and_then(|(_, a)| a.parse().ok()) {
                a.addrs[i] = addr;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let all_up = |a: &LocalAgents| {
            a.sockets.iter().all(|s| {
                crate::client::stat(s)
                    .map(|st| st.peers.iter().all(|p| p.state == "up"))
                    .unwrap_or(false)
            })
        };
        while !all_up(&a) {
            if Instant::now() > deadline {
                return Err("the agents did not connect to each other within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
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

impl Drop for LocalAgents {
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
