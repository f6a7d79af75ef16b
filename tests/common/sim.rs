//! The in-process agent simulation: N real agents (pool, control socket,
//! rooms, sessions, the datagram transport and its reliability layer) on one
//! thread, joined by a simulated network ([`wyvern::transport::sim`]) in
//! virtual time ([`wyvern::clock::VirtualClock`]). Clients are real (the
//! test's threads attach through the agents' control sockets, which the
//! simulation thread serves between rounds).
//!
//! The simulation thread runs every agent's poll round, then moves time on:
//! by [`BUSY_STEP`] after a round that found work, else to the next packet's
//! arrival but at most [`IDLE_STEP`] on. So timers (heartbeats, a lost peer
//! after seconds) pass in milliseconds of wall time while the network and
//! every agent see one consistent clock. Clients run on wall time: a test
//! lets virtual time pass with [`Sim::run_for`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wyvern::agent::{Agent, AgentConfig, TransportKind};
use wyvern::clock::VirtualClock;
use wyvern::shm::PoolParams;
use wyvern::transport::sim::{Impair, NetStats, SimNet};

/// Virtual time a round that found work takes.
pub const BUSY_STEP: Duration = Duration::from_micros(5);
/// Longest jump of virtual time over an idle stretch.
pub const IDLE_STEP: Duration = Duration::from_millis(1);

/// A running simulation.
pub struct Sim {
    pub clock: VirtualClock,
    pub net: SimNet,
    pub dir: PathBuf,
    pub sockets: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    /// Requests to the simulation thread.
    cmds: mpsc::Sender<Cmd>,
    /// Rounds run, all agents together.
    rounds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// What the simulation thread is asked to do between rounds.
enum Cmd {
    /// Kill agent `i` (no goodbye: as SIGKILL) and start it again (a new
    /// incarnation); say when done.
    Restart(usize, mpsc::Sender<()>),
}

/// The configuration of simulated node `i` of `n`.
pub fn config(i: usize, n: usize, dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        node_id: i as u32,
        // Never bound: the simulated network reaches a node by its number.
        nodes: (0..n).map(|j| format!("127.0.0.1:{}", 9 + j)).collect(),
        socket: dir.join(format!("agent{i}.sock")),
        transport: TransportKind::Udp,
        job: Some("sim".into()),
        hugepages: false,
        pool: PoolParams {
            max_clients: 8,
            block_bytes: 32 << 20,
            ..PoolParams::default()
        },
        heartbeat_ms: 100,
        peer_timeout_ms: 3000,
        // Every link from the start, as the tests were written for (a test
        // of on-demand links says so in its tweak).
        connect: wyvern::agent::ConnectPolicy::All,
        ..AgentConfig::default()
    }
}

impl Sim {
    /// Start `n` agents on a network impaired by `impair`, drawing from
    /// `seed`; `tweak` may change each node's configuration. Returns once
    /// every agent sees every peer up (in virtual time; at most 60 s of it).
    pub fn start(n: usize, impair: Impair, seed: u64, tweak: impl Fn(&mut AgentConfig)) -> Sim {
        // The agents' log lines with RUST_LOG (captured per test).
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = super::unique_dir("wyvern-sim");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let clock = VirtualClock::new();
        let net = SimNet::new(n, clock.clone(), impair, seed);
        let cfgs: Vec<AgentConfig> = (0..n)
            .map(|i| {
                let mut c = config(i, n, &dir);
                tweak(&mut c);
                c
            })
            .collect();
        let sockets = cfgs.iter().map(|c| c.socket.clone()).collect();
        let packet = cfgs[0].packet_bytes;
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (cmds, cmd_rx) = mpsc::channel::<Cmd>();
        let thread = {
            let (clock, net, stop, rounds) =
                (clock.clone(), net.clone(), stop.clone(), rounds.clone());
            std::thread::Builder::new()
                .name("sim".into())
                .spawn(move || {
                    // Built here: an agent stays on the thread that runs it.
                    let make = |i: usize| {
                        Agent::simulated(cfgs[i].clone(), net.io(i as u32, packet), clock.clone())
                    };
                    let mut agents: Vec<Agent> = Vec::new();
                    for i in 0..cfgs.len() {
                        match make(i) {
                            Ok(a) => agents.push(a),
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("agent {i}: {e:#}")));
                                return;
                            }
                        }
                    }
                    let mut rs: Vec<_> = agents.iter_mut().map(|a| a.sim_rounds()).collect();
                    let _ = ready_tx.send(Ok(()));
                    while !stop.load(Ordering::Relaxed) {
                        while let Ok(cmd) = cmd_rx.try_recv() {
                            match cmd {
                                Cmd::Restart(i, done) => {
                                    // The old one goes first: its control
                                    // socket's path is the new one's.
                                    agents.remove(i);
                                    agents.insert(i, make(i).expect("restart"));
                                    rs[i] = agents[i].sim_rounds();
                                    let _ = done.send(());
                                }
                            }
                        }
                        net.deliver_due();
                        let mut work = false;
                        for (a, r) in agents.iter_mut().zip(rs.iter_mut()) {
                            work |= a.sim_round(r);
                        }
                        rounds.fetch_add(agents.len() as u64, Ordering::Relaxed);
                        if work || net.queued() > 0 {
                            clock.advance(BUSY_STEP);
                        } else {
                            let cap = clock.now() + IDLE_STEP;
                            clock.advance_to(net.next_due().map_or(cap, |t| t.min(cap)));
                            // Let the clients' threads run.
                            std::thread::yield_now();
                        }
                    }
                })
                .unwrap()
        };
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the simulation did not start")
            .unwrap_or_else(|e| panic!("{e}"));
        let sim = Sim {
            clock,
            net,
            dir,
            sockets,
            stop,
            cmds,
            rounds,
            thread: Some(thread),
        };
        sim.wait_virtual(Duration::from_secs(60), "every peer up", |s| {
            (0..n).all(|i| (0..n).all(|j| j == i || s.state(i, j) == "up"))
        });
        sim
    }

    /// Kill agent `i` without a goodbye (as SIGKILL would) and start it
    /// again at once, as a new incarnation with the same configuration.
    pub fn restart(&self, i: usize) {
        let (done, wait) = mpsc::channel();
        self.cmds.send(Cmd::Restart(i, done)).unwrap();
        wait.recv_timeout(Duration::from_secs(30))
            .expect("the simulation did not restart the agent");
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Agent `i`'s stat (served by the simulation thread, as `wyvern stat`).
    pub fn stat(&self, i: usize) -> wyvern::agent::stats::Snapshot {
        wyvern::client::stat(&self.sockets[i]).expect("stat")
    }

    /// Agent `i`'s view of node `j` ("up", "lost (...)", ...).
    pub fn state(&self, i: usize, j: usize) -> String {
        let s = self.stat(i);
        let p = s.peers.into_iter().find(|p| p.node == j as u32);
        p.map(|p| p.state)
            .unwrap_or_else(|| format!("node {j} not in node {i}'s stat"))
    }

    /// Let `d` of virtual time pass (at most 60 s of wall time).
    pub fn run_for(&self, d: Duration) {
        let until = self.clock.elapsed() + d;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.clock.elapsed() < until {
            assert!(Instant::now() < deadline, "virtual time stands still");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Wait until `cond` holds, at most `limit` of virtual time.
    pub fn wait_virtual(&self, limit: Duration, what: &str, cond: impl Fn(&Sim) -> bool) {
        let until = self.clock.elapsed() + limit;
        let t0 = Instant::now();
        while !cond(self) {
            assert!(
                self.clock.elapsed() < until && t0.elapsed() < Duration::from_secs(120),
                "not {what} after {:?} of virtual time ({:?} wall)",
                limit,
                t0.elapsed()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// What the network did.
    pub fn net_stats(&self) -> NetStats {
        self.net.stats()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A checked payload: message `i` from `src`, `len` bytes.
pub fn payload(src: u32, i: u32, len: usize) -> Vec<u8> {
    let mut x = (src as u64) << 32 | i as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The size of message `i` of a stream that cycles through every size class:
/// tiny, small, eager limit, chunked, one large message in 16.
pub fn size_of(i: u32) -> usize {
    const SIZES: [usize; 8] = [1, 64, 1000, 4096, 9000, 70_000, 300_000, 3];
    if i % 16 == 15 {
        1 << 20
    } else {
        SIZES[i as usize % SIZES.len()]
    }
}
