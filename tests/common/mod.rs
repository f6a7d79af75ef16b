//! Test harness: real agent processes on loopback TCP, real client processes.
#![allow(dead_code)]

pub mod check;
pub mod fakepeer;
pub mod incast;
pub mod keys;
pub mod procfs;
pub mod relay;
pub mod scenarios;
pub mod sim;
pub mod testbed;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const WYVERN: &str = env!("CARGO_BIN_EXE_wyvern");
pub const PEER: &str = env!("CARGO_BIN_EXE_wyvern-peer");

/// A child whose stdout lines arrive on a channel.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub name: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str) -> Proc {
        cmd.stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            name: name.to_string(),
        }
    }

    /// The next stdout line, within `t`.
    pub fn line(&self, t: Duration) -> String {
        self.lines
            .recv_timeout(t)
            .unwrap_or_else(|e| panic!("{}: no output line within {t:?} ({e})", self.name))
    }

    /// Wait for the process to print a JSON result and exit.
    pub fn result(mut self, t: Duration) -> (serde_json::Value, bool) {
        let deadline = Instant::now() + t;
        let mut last = None;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l.starts_with('{') => last = Some(l),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("{}: no result within {t:?}", self.name);
                }
            }
        }
        let status = self.child.wait().expect("wait");
        let line = last
            .unwrap_or_else(|| panic!("{}: exited ({status}) without a JSON result", self.name));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON result");
        (v, status.success())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The transport the suite runs on: `WYVERN_TEST_TRANSPORT` (tcp, udp,
/// hybrid: agents running udp and tcp, every link on udp under tcp control
/// connections; or dpdk with `--features dpdk`: every cluster then runs in
/// namespaces of its own from `scripts/testbed.sh`, or with
/// `WYVERN_TEST_DPDK_DEV=memif` on a memif pair, see [`testbed::memif_cluster`];
/// tcp by default).
/// The links policy agents of the suite run with (`WYVERN_TEST_CONNECT`:
/// `all`, the default, or `on-demand`).
pub fn connect_policy() -> String {
    std::env::var("WYVERN_TEST_CONNECT").unwrap_or_else(|_| "all".into())
}

pub fn transport() -> String {
    std::env::var("WYVERN_TEST_TRANSPORT").unwrap_or_else(|_| "tcp".into())
}

/// The RDMA devices the verbs suite runs on (`WYVERN_RXE_DEVS`, space- or
/// comma-separated); empty: the agents pick the first active port.
pub fn verbs_devices() -> Vec<String> {
    std::env::var("WYVERN_RXE_DEVS")
        .unwrap_or_default()
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Extra agent flags for node `i` on the verbs transport: its device.
pub fn verbs_args(i: usize) -> Vec<String> {
    let devs = verbs_devices();
    let mut v = vec![];
    if !devs.is_empty() {
        v.push("--verbs-device".into());
        v.push(devs[i % devs.len()].clone());
    }
    v
}

/// Agents on loopback, one per node.
pub struct Cluster {
    pub dir: PathBuf,
    pub agents: Vec<Option<Proc>>,
    pub nodes: Vec<SocketAddr>,
    /// Per node: a command the agent and its clients run under (e.g. `ip
    /// netns exec wyv0`); empty: none.
    pub wrap: Vec<Vec<String>>,
    /// Per node: extra agent flags.
    pub node_args: Vec<Vec<String>>,
    /// The namespaces the nodes run in (the dpdk transport), removed after the agents.
    pub testbed: Option<testbed::Testbed>,
    /// Every agent's port was picked before any started (on-demand links: a
    /// lower node id dials a higher one, so every address must be known
    /// from the start), and a restarted agent keeps its own.
    pub fixed_ports: bool,
}

/// A loopback port free for both TCP and UDP right now (another process may
/// take it before the agent binds it: rare, and the agent then says so).
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A command for `prog`, run under `wrap` when it is not empty.
fn wrapped(wrap: Option<&Vec<String>>, prog: &str) -> Command {
    match wrap.filter(|w| !w.is_empty()) {
        Some(w) => {
            let mut c = Command::new(&w[0]);
            c.args(&w[1..]).arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

impl Cluster {
    /// Start `n` agents with extra flags for each.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_via(n, extra, |_, a| a)
    }

    /// Start `n` agents; `via(i, addr)` says where later agents reach agent
    /// `i` (a relay in front of it, say).
    pub fn start_via(
        n: usize,
        extra: &[&str],
        via: impl FnMut(usize, SocketAddr) -> SocketAddr,
    ) -> Cluster {
        Cluster::start_wrapped(n, extra, vec![], vec![], via)
    }

    /// Start `n` agents, agent `i` (and its clients) under `wrap[i]`, with
    /// `node_args[i]` after `extra`.
    pub fn start_wrapped(
        n: usize,
        extra: &[&str],
        wrap: Vec<Vec<String>>,
        node_args: Vec<Vec<String>>,
        mut via: impl FnMut(usize, SocketAddr) -> SocketAddr,
    ) -> Cluster {
        let dir = unique_dir("wyvern-test");
        // The suite on the dpdk transport: every node in a namespace of its own on
        // net_af_packet, or (WYVERN_TEST_DPDK_DEV=memif) two agents on a memif pair.
        let mut tb = None;
        let (mut wrap, mut node_args) = (wrap, node_args);
        // Per-node flags that choose no transport of their own (on-demand
        // links, an idle time ...) go after the testbed's.
        let own_transport = node_args.iter().flatten().any(|a| {
            matches!(
                a.as_str(),
                "--transport" | "--transports" | "--dpdk-eal-args" | "--verbs-device"
            )
        });
        if wrap.is_empty() && !own_transport && n > 0 && transport() == "dpdk" {
            let given = std::mem::take(&mut node_args);
            if testbed::memif_cluster(n) {
                node_args = (0..n)
                    .map(|i| testbed::memif_agent_args(&dir, i, ""))
                    .collect();
            } else {
                let t = testbed::Testbed::up("a cluster on the dpdk transport", n.max(2))
                    .expect("WYVERN_TEST_TRANSPORT=dpdk needs network namespaces (root)");
                wrap = (0..n).map(|i| t.wrap(i)).collect();
                node_args = (0..n).map(|i| t.agent_args(i)).collect();
                tb = Some(t);
            }
            for (a, g) in node_args.iter_mut().zip(given) {
                a.extend(g);
            }
        }
        // The suite on the verbs transport: node i on RDMA device i (mod the count),
        // from `WYVERN_RXE_DEVS` (scripts/rxe-vm.sh: "rxe0 rxe1", whose traffic
        // crosses a veth); without it, every agent on the first active port.
        if node_args.is_empty() && n > 0 && transport() == "verbs" {
            node_args = (0..n).map(verbs_args).collect();
        }
        // A test that chose on-demand links itself makes them itself.
        let chose = |a: &[String]| {
            a.windows(2)
                .any(|w| w[0] == "--connect" && w[1] == "on-demand")
        };
        let extra_s: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let lazy = chose(&extra_s) || node_args.iter().any(|a| chose(a));
        // Port 0: each agent picks its own and says which (see spawn_agent);
        // with on-demand links every port is known before any agent starts.
        // A test that pinned `--connect all` gets the suite's usual port-0 start
        // (addresses learned as agents come up) under any WYVERN_TEST_CONNECT.
        let pinned_all = |a: &[String]| a.windows(2).any(|w| w[0] == "--connect" && w[1] == "all");
        let all = pinned_all(&extra_s) || node_args.iter().any(|a| pinned_all(a));
        let fixed_ports = lazy || (connect_policy() == "on-demand" && !all);
        let nodes: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], if fixed_ports { free_port() } else { 0 })))
            .collect();
        let mut c = Cluster {
            dir,
            agents: Vec::new(),
            nodes,
            wrap,
            node_args,
            testbed: tb,
            fixed_ports,
        };
        for i in 0..n {
            let p = c.spawn_agent(i, extra);
            c.agents.push(Some(p));
            c.nodes[i] = via(i, c.nodes[i]);
        }
        if lazy {
            return c;
        }
        // On-demand links: ask every agent to connect, as `wyvern wait` does.
        if !extra.contains(&"--connect") && connect_policy() == "on-demand" {
            for i in 0..n {
                wyvern::client::connect_peers(c.socket(i), None).expect("connect");
            }
        }
        // Wait until every agent sees every peer up.
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 0..n {
            loop {
                let s = c.stat(i);
                if s["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["state"] == "up")
                {
                    break;
                }
                assert!(Instant::now() < deadline, "agents did not connect: {s}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        c
    }

    /// Start only the agents marked `true`; the others' addresses are
    /// `absent` (a test plays them by hand). Does not wait for peers.
    pub fn start_partial(which: &[bool], absent: SocketAddr) -> Cluster {
        Cluster::start_partial_with(which, absent, &[], vec![])
    }

    /// [`Cluster::start_partial`] with `extra` flags for every agent and
    /// `node_args[i]` after them for agent `i`.
    pub fn start_partial_with(
        which: &[bool],
        absent: SocketAddr,
        extra: &[&str],
        node_args: Vec<Vec<String>>,
    ) -> Cluster {
        let mut c = Cluster::start(0, &[]);
        // Each present agent takes a free port as it starts (port 0) and a
        // restarted absent node takes its own, not the stand-in's address,
        // whatever WYVERN_TEST_CONNECT says: these tests place nodes by hand.
        c.fixed_ports = false;
        c.node_args = node_args;
        c.nodes = which
            .iter()
            .map(|&on| {
                if on {
                    SocketAddr::from(([127, 0, 0, 1], 0))
                } else {
                    absent
                }
            })
            .collect();
        for (i, &on) in which.iter().enumerate() {
            let p = on.then(|| c.spawn_agent(i, extra));
            c.agents.push(p);
        }
        c
    }

    fn spawn_agent(&mut self, i: usize, extra: &[&str]) -> Proc {
        let list: Vec<String> = self.nodes.iter().map(|a| a.to_string()).collect();
        // This node's own flags may name the transport (then kept on a restart).
        let own = self.node_args.get(i).cloned().unwrap_or_default();
        let mut cmd = wrapped(self.wrap.get(i), WYVERN);
        cmd.args([
            "agent",
            "--node-id",
            &i.to_string(),
            "--nodes",
            &list.join(","),
        ])
        .arg("--socket")
        .arg(self.socket(i))
        .args(if extra.contains(&"--idle") {
            &[][..]
        } else {
            &["--idle", "adaptive"][..]
        })
        .args(
            // Links to every peer from the start, as the suite was written
            // for; `WYVERN_TEST_CONNECT=on-demand` runs it with on-demand
            // links (Cluster::start then asks every agent to connect).
            if extra.contains(&"--connect") || own.iter().any(|a| a == "--connect") {
                vec![]
            } else {
                vec!["--connect".to_string(), connect_policy()]
            },
        )
        .args(if extra.contains(&"--heartbeat-ms") {
            &[][..]
        } else {
            &["--heartbeat-ms", "100"][..]
        })
        .args(if extra.contains(&"--job") {
            vec![]
        } else {
            vec!["--job".to_string(), self.job()]
        })
        .args(
            if extra.contains(&"--transport") || own.iter().any(|a| a == "--transport") {
                vec![]
            } else if transport() == "hybrid" {
                // Every link on udp, under tcp control connections.
                vec!["--transports".to_string(), "udp,tcp".to_string()]
            } else {
                vec!["--transport".to_string(), transport()]
            },
        )
        .args(if extra.contains(&"--peer-timeout-ms") {
            &[][..]
        } else if std::env::var("WYVERN_RXE_VM").as_deref() == Ok("1") {
            // In the emulated Soft-RoCE VM the whole guest can stall for
            // seconds when the host is busy (seen: 10 s, every agent at
            // once): peers must not be declared lost for that.
            &["--peer-timeout-ms", "30000"][..]
        } else {
            &["--peer-timeout-ms", "3000"][..]
        })
        .args(extra)
        .args(self.node_args.get(i).into_iter().flatten())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stderr(Stdio::from(
            std::fs::File::create(self.dir.join(format!("agent{i}.log"))).unwrap(),
        ));
        let p = Proc::spawn(cmd, &format!("agent {i}"));
        let l = p.line(Duration::from_secs(20));
        // `wyvern agent ready: <transport> <address> [(more)]`: a socket
        // address for tcp and udp; a MAC for dpdk (peers learn it), where the
        // configured address stays.
        let rest = l
            .strip_prefix("wyvern agent ready: ")
            .unwrap_or_else(|| panic!("agent {i}: {l}"));
        // Kept for tests that check what the line says (agent{i}.ready).
        let _ = std::fs::write(self.dir.join(format!("agent{i}.ready")), &l);
        let addr = rest.split_whitespace().nth(1).and_then(|a| a.parse().ok());
        if let Some(addr) = addr {
            self.nodes[i] = addr;
        }
        p
    }

    /// The job name its agents share (its own: other tests' agents on this
    /// machine are refused as peers).
    pub fn job(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("agent{i}.sock"))
    }

    /// `wyvern stat --json` of agent `i`, through the library.
    pub fn stat(&self, i: usize) -> serde_json::Value {
        let s = wyvern::client::stat(self.socket(i))
            .unwrap_or_else(|e| panic!("stat of agent {i}: {e}"));
        serde_json::to_value(s).unwrap()
    }

    /// The log of agent `i` so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("agent{i}.log"))).unwrap_or_default()
    }

    /// Start a `wyvern-peer` on node `i`; waits for its `ready`.
    pub fn peer(&self, i: usize, args: &[&str]) -> Proc {
        let mut cmd = wrapped(self.wrap.get(i), PEER);
        cmd.arg("--socket").arg(self.socket(i)).args(args);
        let p = Proc::spawn(cmd, &format!("peer on node {i} {args:?}"));
        let l = p.line(Duration::from_secs(20));
        assert_eq!(l, "ready", "{}", p.name);
        p
    }

    /// Start agent `i` again (after [`Cluster::kill_agent`]).
    pub fn restart_agent(&mut self, i: usize) {
        if !self.fixed_ports {
            self.nodes[i] = SocketAddr::from(([127, 0, 0, 1], 0));
        }
        let p = self.spawn_agent(i, &[]);
        self.agents[i] = Some(p);
    }

    /// Wait until agent `i` sees peer `j` up.
    pub fn wait_up(&self, i: usize, j: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.stat(i);
            let up = s["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["node"] == j && p["state"] == "up");
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {j} never came back up at agent {i}: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut p) = self.agents[i].take() {
            p.kill9();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What every agent saw, while they still run: the counters say where
            // a stalled transfer stands (queued, unacknowledged, resent, stalls).
            for i in 0..self.agents.len() {
                if self.agents[i].is_none() {
                    continue;
                }
                match wyvern::client::stat(self.socket(i)) {
                    Ok(s) => eprintln!(
                        "---- agent {i} stat ----\n{}",
                        serde_json::to_string(&s).unwrap_or_default()
                    ),
                    Err(e) => eprintln!("---- agent {i} stat: {e}"),
                }
            }
        }
        for a in self.agents.iter_mut().flatten() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(a.pid()),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for a in self.agents.iter_mut().flatten() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = a.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if std::env::var_os("WYVERN_TEST_KEEP_LOGS").is_some() {
            eprintln!(
                "agent logs kept in {} (WYVERN_TEST_KEEP_LOGS)",
                self.dir.display()
            );
        } else if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test failed: agent logs kept in {}", self.dir.display());
            for i in 0..self.agents.len() {
                eprintln!("---- agent {i} log (tail) ----");
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// A new directory `<tmp>/<prefix>-<pid>-<ns>` of this test's own.
pub fn unique_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn assert_ok(name: &str, r: &(serde_json::Value, bool)) {
    assert!(r.1 && r.0["ok"] == true, "{name} failed: {}", r.0);
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A `wyvern doctor --json` run: its exit code and the check `name`'s
/// verdict, found and fix (panics when the report or the check is missing).
pub fn doctor_check(o: &std::process::Output, name: &str) -> (i32, String, String, String) {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {v}"));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (
        o.status.code().unwrap_or(-1),
        s("verdict"),
        s("found"),
        s("fix"),
    )
}

/// A counter of the transport in a stat snapshot (0 when absent).
pub fn counter(s: &serde_json::Value, name: &str) -> u64 {
    s["transport"][name].as_u64().unwrap_or(0)
}

/// Agent `i`'s stat once every pool block is back (blocks of a sent message
/// return when the peer acknowledges its last packet, which may come just
/// after the receiver reported); gives the last stat after 20 s.
pub fn stat_settled(c: &Cluster, i: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.stat(i);
        if s["blocks_free"] == s["blocks_total"] || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
