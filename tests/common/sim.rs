//! The in-process agent simulation: N real agents (pool, control socket,
//! rooms, sessions, the datagram transport and its reliability layer) on one
//! thread, joined by a simulated network ([`wyvern::transport::sim`]) in
//! virtual time ([`wyvern::clock::VirtualClock`]). Clients are real (the
//! test's threads attach through the agents' control sockets, which the
//! simulation thread serves between rounds).
//!
//! The simulation thread runs the poll round of every agent with something
//! due (see [`Runner`]), then moves time on: by [`BUSY_STEP`] after a round
//! that found work, else to the next packet's arrival or agent's tick but at
//! most [`IDLE_STEP`] on. So timers (heartbeats, a lost peer
//! after seconds) pass in milliseconds of wall time while the network and
//! every agent see one consistent clock. Clients run on wall time: a test
//! lets virtual time pass with [`Sim::run_for`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wyvern::agent::{Agent, AgentConfig, SimCensus, TransportKind};
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
    /// Run this on the agents (between rounds).
    Inspect(Inspect),
    /// Check this after every round of the agents; say the virtual time
    /// when it first holds.
    Watch(Watch),
}

/// What [`Sim::inspect`] runs on the agents.
type Inspect = Box<dyn FnOnce(&mut [Agent]) + Send>;

/// A condition [`Sim::watch`] checks after every round, and who waits for it.
type Watch = (
    Box<dyn FnMut(&mut [Agent]) -> bool + Send>,
    mpsc::Sender<Duration>,
);

/// The configuration of simulated node `i` of `n`.
pub fn config(i: usize, n: usize, dir: &std::path::Path) -> AgentConfig {
    config_with(i, (0..n).map(node_addr).collect(), dir)
}

/// Node `j`'s address in the node list (never bound: the simulated network
/// reaches a node by its number).
fn node_addr(j: usize) -> String {
    format!("127.0.0.1:{}", 9 + j)
}

/// [`config`] with the node list given (cloned from one list: building
/// 4,096 lists of 4,096 strings one by one takes seconds).
fn config_with(i: usize, nodes: Vec<String>, dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        node_id: i as u32,
        nodes,
        socket: socket_path(dir, i),
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

fn socket_path(dir: &std::path::Path, i: usize) -> PathBuf {
    dir.join(format!("agent{i}.sock"))
}

/// The simulation thread: builds the agents (an agent stays on the thread
/// that runs it), then runs rounds until `stop`.
///
/// Thousands of agents: a round of every agent would walk every agent's
/// peers each time (4,096 x 4,096), so only agents with something due run:
/// packets in their receive queue, a descriptor ready (one epoll over every
/// agent's epoll), a client's submission, their tick (every 5 ms), or work
/// found in their last round. Time then moves as before: by [`BUSY_STEP`]
/// after work, else to the next packet or tick (at most [`IDLE_STEP`] on).
struct Runner {
    n: usize,
    nodes: Vec<String>,
    dir: PathBuf,
    tweak: Box<dyn Fn(&mut AgentConfig) + Send>,
    net: SimNet,
    clock: VirtualClock,
    packet: usize,
}

impl Runner {
    fn make(&self, i: usize) -> Result<Agent, String> {
        let mut c = config_with(i, self.nodes.clone(), &self.dir);
        (self.tweak)(&mut c);
        assert_eq!(
            c.socket,
            socket_path(&self.dir, i),
            "tweak moved the socket"
        );
        Agent::simulated(c, self.net.io(i as u32, self.packet), self.clock.clone())
            .map_err(|e| format!("agent {i}: {e:#}"))
    }

    fn run(
        self,
        ready: mpsc::Sender<Result<Duration, String>>,
        cmd_rx: mpsc::Receiver<Cmd>,
        stop: Arc<AtomicBool>,
        rounds: Arc<AtomicU64>,
    ) {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
        let (net, clock) = (self.net.clone(), self.clock.clone());
        let t0 = Instant::now();
        let all = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
        let watch = |a: &Agent, i: usize| {
            all.add(a.sim_fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
                .expect("epoll add");
        };
        let mut agents: Vec<Agent> = Vec::with_capacity(self.n);
        for i in 0..self.n {
            match self.make(i) {
                Ok(a) => {
                    watch(&a, i);
                    agents.push(a);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        let mut rs: Vec<_> = agents.iter_mut().map(|a| a.sim_rounds()).collect();
        let _ = ready.send(Ok(t0.elapsed()));
        let n = agents.len();
        // Whether each agent runs this round (work last round counts).
        let mut due = vec![true; n];
        let mut evs = vec![EpollEvent::empty(); 1024];
        let mut watches: Vec<Watch> = vec![];
        while !stop.load(Ordering::Relaxed) {
            while let Ok(cmd) = cmd_rx.try_recv() {
                match cmd {
                    Cmd::Restart(i, done) => {
                        // The old one goes first: its control socket's path
                        // is the new one's (its epoll leaves `all` as it
                        // closes).
                        drop(agents.remove(i));
                        agents.insert(i, self.make(i).expect("restart"));
                        watch(&agents[i], i);
                        rs[i] = agents[i].sim_rounds();
                        due[i] = true;
                        let _ = done.send(());
                    }
                    Cmd::Inspect(f) => f(&mut agents),
                    Cmd::Watch(w) => watches.push(w),
                }
            }
            net.deliver_due();
            net.each_queued(|i| due[i] = true);
            loop {
                let k = all.wait(&mut evs, EpollTimeout::ZERO).unwrap_or(0);
                for e in &evs[..k] {
                    due[e.data() as usize] = true;
                }
                if k < evs.len() {
                    break;
                }
            }
            let mut work = false;
            let mut ran = 0;
            for (i, (a, r)) in agents.iter_mut().zip(rs.iter_mut()).enumerate() {
                if due[i] || a.sim_due(r).0 {
                    let w = a.sim_round(r);
                    due[i] = w;
                    work |= w;
                    ran += 1;
                }
            }
            rounds.fetch_add(ran, Ordering::Relaxed);
            watches.retain_mut(|(cond, tx)| {
                if cond(&mut agents) {
                    let _ = tx.send(clock.elapsed());
                    return false;
                }
                true
            });
            if work || net.queued() > 0 {
                clock.advance(BUSY_STEP);
            } else {
                let mut t = clock.now() + IDLE_STEP;
                if let Some(p) = net.next_due() {
                    t = t.min(p);
                }
                for (a, r) in agents.iter_mut().zip(rs.iter()) {
                    t = t.min(a.sim_due(r).1);
                }
                clock.advance_to(t);
                // Let the clients' threads run.
                std::thread::yield_now();
            }
        }
    }
}

impl Sim {
    /// Start `n` agents on a network impaired by `impair`, drawing from
    /// `seed`; `tweak` may change each node's configuration. Returns once
    /// every agent sees every peer up (in virtual time; at most 60 s of it).
    pub fn start(
        n: usize,
        impair: Impair,
        seed: u64,
        tweak: impl Fn(&mut AgentConfig) + Send + 'static,
    ) -> Sim {
        let (sim, _) = Sim::launch(n, impair, seed, tweak);
        sim.wait_virtual(Duration::from_secs(60), "every peer up", |s| {
            (0..n).all(|i| (0..n).all(|j| j == i || s.state(i, j) == "up"))
        });
        sim
    }

    /// Start `n` agents with links on demand (the default of a real
    /// agent): returns once every agent is running, every peer idle.
    pub fn start_on_demand(n: usize, impair: Impair, seed: u64) -> Sim {
        let (sim, _) = Sim::launch(n, impair, seed, |c| {
            c.connect = wyvern::agent::ConnectPolicy::OnDemand
        });
        sim.wait_virtual(Duration::from_secs(1), "every peer idle", |s| {
            (0..n).all(|i| (0..n).all(|j| j == i || s.state(i, j) == "idle"))
        });
        sim
    }

    /// Start `n` agents (as [`Sim::start`]) and return as soon as they are
    /// built and running, with the wall time building them took.
    pub fn launch(
        n: usize,
        impair: Impair,
        seed: u64,
        tweak: impl Fn(&mut AgentConfig) + Send + 'static,
    ) -> (Sim, Duration) {
        // The agents' log lines with RUST_LOG (captured per test).
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = super::unique_dir("wyvern-sim");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let clock = VirtualClock::new();
        let net = SimNet::new(n, clock.clone(), impair, seed);
        let sockets = (0..n).map(|i| socket_path(&dir, i)).collect();
        let packet = {
            let mut c = config(0, 1, &dir);
            tweak(&mut c);
            c.packet_bytes
        };
        let runner = Runner {
            n,
            nodes: (0..n).map(node_addr).collect(),
            dir: dir.clone(),
            tweak: Box::new(tweak),
            net: net.clone(),
            clock: clock.clone(),
            packet,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (cmds, cmd_rx) = mpsc::channel::<Cmd>();
        let thread = {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::Builder::new()
                .name("sim".into())
                .spawn(move || runner.run(ready_tx, cmd_rx, stop, rounds))
                .unwrap()
        };
        let built = ready_rx
            .recv_timeout(Duration::from_secs(600))
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
        (sim, built)
    }

    /// Run `f` on the agents, on the simulation thread between rounds, and
    /// return what it returns.
    pub fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut [Agent]) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        self.cmds
            .send(Cmd::Inspect(Box::new(move |a| {
                let _ = tx.send(f(a));
            })))
            .unwrap();
        rx.recv_timeout(Duration::from_secs(600))
            .expect("the simulation did not answer")
    }

    /// The virtual time (since the start) when `cond` first holds, checked
    /// on the simulation thread after every round; at most `limit` of
    /// virtual time from now.
    pub fn watch(
        &self,
        limit: Duration,
        what: &str,
        cond: impl FnMut(&mut [Agent]) -> bool + Send + 'static,
    ) -> Duration {
        let (tx, rx) = mpsc::channel();
        self.cmds.send(Cmd::Watch((Box::new(cond), tx))).unwrap();
        let until = self.clock.elapsed() + limit;
        let t0 = Instant::now();
        loop {
            if let Ok(t) = rx.recv_timeout(Duration::from_millis(2)) {
                return t;
            }
            assert!(
                self.clock.elapsed() < until && t0.elapsed() < Duration::from_secs(120),
                "not {what} after {limit:?} of virtual time ({:?} wall)",
                t0.elapsed()
            );
        }
    }

    /// Every agent's peers by state and the per-peer state each holds.
    pub fn census(&self) -> Vec<SimCensus> {
        self.inspect(|a| a.iter().map(|a| a.sim_census()).collect())
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

    /// Let `d` of virtual time pass (at most 600 s of wall time: thousands
    /// of agents run about 1 s of virtual time in 10-20 s).
    pub fn run_for(&self, d: Duration) {
        let until = self.clock.elapsed() + d;
        let deadline = Instant::now() + Duration::from_secs(600);
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
