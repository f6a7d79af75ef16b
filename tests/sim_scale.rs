//! Thousands of agents in the in-process simulation (`tests/common/sim.rs`):
//! real agents (rooms, sessions, the datagram transport and its reliability
//! layer, real clients through the control sockets and shared memory) on a
//! simulated network in virtual time, links made on demand.
//!
//! - bring-up: every agent built and every peer of every agent idle (all
//!   links possible, none made), within 10 s of wall time;
//! - what a peer costs: the per-peer state each agent made (link state,
//!   session, incoming stream) is counted, and the process's memory divided
//!   out per agent and per peer;
//! - traffic: every agent sends checked messages (four sizes, one of them
//!   chunked) to its ring neighbours and [`RANDOM_PEERS`] random peers; every
//!   message arrives once, in order, intact, and nothing else does;
//! - 1 % of the agents (random, seeded) are killed (no goodbye) and started
//!   again, then every agent sends to the same peers again (those that had a
//!   session with a killed agent's old incarnation included): everything
//!   arrives, and afterwards no peer of any agent is stuck (every peer idle
//!   or up, none connecting, resuming, disconnected or lost).
//!
//! CI runs 256 agents (`WYVERN_SIM_AGENTS` sets the number: 4,096 in
//! `--release` is the benchmark of docs/scaling.md).

mod common;

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::sim::{payload, Sim};
use wyvern::agent::{ConnectPolicy, SimCensus};
use wyvern::client::{Client, Endpoint};
use wyvern::proto::Mode;
use wyvern::shm::PoolParams;
use wyvern::transport::sim::Impair;

/// Every client's endpoint.
const EP: u32 = 1;
/// Random peers each agent sends to, beside its two ring neighbours.
const RANDOM_PEERS: usize = 4;
/// Messages to each of them per phase.
const MSGS: u32 = 4;
/// Client threads (each drives every `WORKERS`-th agent's client).
const WORKERS: usize = 4;
/// Descriptors a client costs (5 measured: its socket and the agent's end,
/// its pool, its bell, ...; one spare), to size the waves of clients under the open-file limit.
const FDS_PER_CLIENT: usize = 6;
/// Wall-time bound of one phase's traffic.
const PHASE_WALL: Duration = Duration::from_secs(120);

/// The size of message `k` to a peer: small, medium, near a packet, and one
/// larger than a frame (cut into chunks, reassembled in a pool block).
fn size_of(k: u32) -> usize {
    [64, 1000, 9000, 70_000][k as usize % 4]
}

/// The payload index of message `k` of phase `phase`.
fn index(phase: u32, k: u32) -> u32 {
    phase << 16 | k
}

/// xorshift64*, seeded per use.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Agent `i`'s destinations: its ring neighbours and random others, all
/// in its wave (agents `wave * k .. wave * (k + 1)`: the agents whose
/// clients are attached at the same time).
fn destinations(n: usize, wave: usize, seed: u64) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            let (lo, hi) = (i / wave * wave, (i / wave * wave + wave).min(n));
            let m = hi - lo;
            let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let k = i - lo;
            let mut d = vec![(lo + (k + 1) % m) as u32, (lo + (k + m - 1) % m) as u32];
            while d.len() < 2 + RANDOM_PEERS.min(m.saturating_sub(3)) {
                let j = (lo + rng.below(m)) as u32;
                if j != i as u32 && !d.contains(&j) {
                    d.push(j);
                }
            }
            d.sort_unstable();
            d.dedup();
            d
        })
        .collect()
}

/// What the client threads are asked to do.
enum Job {
    /// Attach a client to each of these agents (its own ones).
    Attach(Vec<usize>),
    /// Drop the clients of these agents (before their agents are killed).
    Detach(Vec<usize>),
    /// Phase `phase`: the agents of `wave` send `MSGS` messages to every
    /// destination, and take every message meant for them (checked).
    Traffic {
        phase: u32,
        wave: std::ops::Range<usize>,
        dests: std::sync::Arc<Vec<Vec<u32>>>,
    },
    /// Nothing more may have arrived; no send may have failed.
    CheckQuiet,
}

/// One client thread: the clients of agents `w`, `w + WORKERS`, ... (a
/// client is not `Send`: it lives on the thread that attached it).
fn worker(
    w: usize,
    sockets: Vec<std::path::PathBuf>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Result<usize, String>>,
) {
    let mut clients: HashMap<usize, (Client, Endpoint)> = HashMap::new();
    let attach = |i: usize| -> Result<(Client, Endpoint), String> {
        let c = Client::attach(&sockets[i], &format!("c{i}"))
            .map_err(|e| format!("attach to {i}: {e}"))?;
        let ep = c
            .open_endpoint(Some(EP))
            .map_err(|e| format!("endpoint at {i}: {e}"))?;
        Ok((c, ep))
    };
    for job in jobs {
        let r = (|| -> Result<usize, String> {
            match job {
                Job::Attach(list) => {
                    for i in list {
                        clients.insert(i, attach(i)?);
                    }
                }
                Job::Detach(list) => {
                    for i in list {
                        clients.remove(&i);
                    }
                }
                Job::Traffic { phase, wave, dests } => {
                    let mine: Vec<usize> = wave.filter(|i| i % WORKERS == w).collect();
                    for &i in &mine {
                        let (_, ep) = &clients[&i];
                        for &j in &dests[i] {
                            for k in 0..MSGS {
                                let data = payload(i as u32, index(phase, k), size_of(k));
                                ep.send(j, EP, &data, Mode::Buffered, Duration::from_secs(120))
                                    .map_err(|e| {
                                        format!("phase {phase}: send {k} from {i} to {j}: {e}")
                                    })?;
                            }
                        }
                    }
                    // Who sends to each of mine, and the next message from each.
                    let mut want: HashMap<usize, HashMap<u32, u32>> =
                        mine.iter().map(|&i| (i, HashMap::new())).collect();
                    for (s, d) in dests.iter().enumerate() {
                        for &j in d {
                            if let Some(m) = want.get_mut(&(j as usize)) {
                                m.insert(s as u32, 0);
                            }
                        }
                    }
                    let t0 = Instant::now();
                    let mut left: usize = want.values().map(|m| m.len() * MSGS as usize).sum();
                    while left > 0 {
                        let mut got = 0;
                        for &i in &mine {
                            let (_, ep) = &clients[&i];
                            while let Some(m) =
                                ep.try_recv().map_err(|e| format!("recv at {i}: {e}"))?
                            {
                                let src = m.src_node;
                                let next = want
                                    .get_mut(&i)
                                    .and_then(|w| w.get_mut(&src))
                                    .ok_or_else(|| format!("phase {phase}: agent {i} got a message from {src}, which sends it none"))?;
                                let k = *next;
                                if k >= MSGS {
                                    return Err(format!("phase {phase}: agent {i} got message {k} from {src}: one too many"));
                                }
                                let expect = payload(src, index(phase, k), size_of(k));
                                if m.src_ep != EP || m.data() != expect.as_slice() {
                                    return Err(format!(
                                        "phase {phase}: agent {i}: message {k} from {src} is not what was sent ({} bytes, sent {})",
                                        m.data().len(),
                                        expect.len()
                                    ));
                                }
                                *next += 1;
                                left -= 1;
                                got += 1;
                            }
                        }
                        if got == 0 {
                            if t0.elapsed() > PHASE_WALL {
                                let missing: Vec<String> = want
                                    .iter()
                                    .flat_map(|(i, m)| {
                                        m.iter()
                                            .filter(|(_, &k)| k < MSGS)
                                            .map(move |(s, k)| format!("{s}->{i} got {k}"))
                                    })
                                    .take(20)
                                    .collect();
                                return Err(format!("phase {phase}: {left} messages missing after {PHASE_WALL:?}: {missing:?}"));
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                Job::CheckQuiet => {
                    for (i, (c, ep)) in &clients {
                        if let Some(m) = ep.try_recv().map_err(|e| format!("recv at {i}: {e}"))? {
                            return Err(format!(
                                "agent {i}: a message too many ({} bytes from {})",
                                m.data().len(),
                                m.src_node
                            ));
                        }
                        let errs = c.take_errors();
                        if !errs.is_empty() {
                            return Err(format!("agent {i}: send errors {errs:?}"));
                        }
                    }
                }
            }
            Ok(0)
        })();
        let _ = done.send(r);
    }
}

/// The client threads.
struct Workers {
    jobs: Vec<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Result<usize, String>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(sockets: &[std::path::PathBuf]) -> Workers {
        let (done_tx, done) = mpsc::channel();
        let mut jobs = vec![];
        let mut threads = vec![];
        for w in 0..WORKERS {
            let (tx, rx) = mpsc::channel();
            let (s, d) = (sockets.to_vec(), done_tx.clone());
            threads.push(std::thread::spawn(move || worker(w, s, rx, d)));
            jobs.push(tx);
        }
        Workers {
            jobs,
            done,
            threads,
        }
    }

    /// Give every thread its job (`make(w)`) and wait until all are done.
    /// (Returns what the jobs counted, summed.)
    fn run(&self, make: impl Fn(usize) -> Job) -> usize {
        self.try_run(make).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_run(&self, make: impl Fn(usize) -> Job) -> Result<usize, String> {
        for (w, j) in self.jobs.iter().enumerate() {
            j.send(make(w)).unwrap();
        }
        let mut r = Ok(0);
        for _ in 0..WORKERS {
            match self.done.recv_timeout(PHASE_WALL + Duration::from_secs(60)) {
                Ok(Ok(k)) => {
                    if let Ok(sum) = r.as_mut() {
                        *sum += k;
                    }
                }
                Ok(Err(e)) => r = Err(e),
                Err(e) => return Err(format!("a client thread did not answer: {e}")),
            }
        }
        r
    }

    /// Each thread's share of `list`.
    fn share(list: &[usize], w: usize) -> Vec<usize> {
        list.iter().copied().filter(|i| i % WORKERS == w).collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The census summed over agents.
fn total(c: &[SimCensus]) -> SimCensus {
    let mut t = SimCensus::default();
    for x in c {
        t.peers += x.peers;
        t.idle += x.idle;
        t.connecting += x.connecting;
        t.resuming += x.resuming;
        t.up += x.up;
        t.disconnected += x.disconnected;
        t.lost += x.lost;
        t.link_states += x.link_states;
        t.sessions += x.sessions;
        t.inflows += x.inflows;
        t.losses += x.losses;
    }
    t
}

fn show(what: &str, c: &SimCensus) {
    println!(
        "{what}: peers idle {} up {} connecting {} resuming {} disconnected {} lost {}; made: link states {}, sessions {}, streams {}; losses {}",
        c.idle, c.up, c.connecting, c.resuming, c.disconnected, c.lost, c.link_states, c.sessions, c.inflows, c.losses
    );
}

/// Every peer of every agent is idle or up (none connecting, resuming,
/// disconnected or lost); the restarted agents' old partners included.
fn end_states_ok(census: &[SimCensus], killed: &[usize]) -> bool {
    let mut ok = true;
    for (i, c) in census.iter().enumerate() {
        let stuck: Vec<_> = c.active.iter().filter(|(_, s)| s != "up").collect();
        if !stuck.is_empty() {
            let restarted: Vec<_> = stuck
                .iter()
                .filter(|(p, _)| killed.contains(&(*p as usize)))
                .collect();
            println!("agent {i}: peers not up: {stuck:?} (of them restarted: {restarted:?})");
            ok = false;
        }
    }
    ok
}

/// One client per agent and the control sockets' descriptors: raise the
/// open-file limit for thousands of agents.
fn raise_nofile(n: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = (n as u64) * 8 + 1024;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        // Past the hard limit only with CAP_SYS_RESOURCE (not in every
        // container): the soft one up to it then.
        if setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)).is_err() {
            setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
        }
    }
    println!(
        "RLIMIT_NOFILE {:?}",
        getrlimit(Resource::RLIMIT_NOFILE).unwrap()
    );
}

#[test]
fn sim_scale_many_agents_on_demand_links_and_one_percent_restarted() {
    let n: usize = std::env::var("WYVERN_SIM_AGENTS")
        .ok()
        .map(|v| v.parse().expect("WYVERN_SIM_AGENTS: a number"))
        .unwrap_or(256);
    assert!(n >= 8, "at least 8 agents");
    raise_nofile(n);
    let seed = 0x5ca1_e000 + n as u64;
    let anon0 = status_kib("RssAnon:");

    // Bring-up: every agent built, every peer idle (all links possible).
    let t0 = Instant::now();
    let (sim, built) = Sim::launch(n, Impair::clean(), seed, |c| {
        c.connect = ConnectPolicy::OnDemand;
        // A small pool on normal pages: one client per agent.
        c.pool = PoolParams {
            max_clients: 2,
            endpoints_per_client: 1,
            sub_slots: 1024,
            comp_slots: 256,
            recv_slots: 1024,
            block_bytes: 8 << 20,
        };
    });
    let census = sim.census();
    let bring_up = t0.elapsed();
    let t = total(&census);
    show("after bring-up", &t);
    for (i, c) in census.iter().enumerate() {
        assert_eq!(c.peers, n, "agent {i}'s node table");
        assert_eq!(
            c.idle,
            n - 1,
            "agent {i}: a peer not idle at start: {:?}",
            c.active
        );
        assert_eq!(
            (c.link_states, c.sessions, c.inflows),
            (0, 0, 0),
            "agent {i} made per-peer state for peers it never talked to"
        );
    }
    let anon1 = status_kib("RssAnon:");
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    println!(
        "{fds} descriptors open ({:.1} per agent)",
        fds as f64 / n as f64
    );
    let (rss1, shm1) = (status_kib("VmRSS:"), status_kib("RssShmem:"));
    let per_agent = (anon1 - anon0) as f64 / n as f64;
    println!(
        "{n} agents: built in {:.2} s, all links possible after {:.2} s (wall); RssAnon {} MiB ({:.0} KiB per agent, {:.0} B per peer never talked to, agent's fixed part included), VmRSS {} MiB, RssShmem {} MiB",
        built.as_secs_f64(),
        bring_up.as_secs_f64(),
        (anon1 - anon0) >> 10,
        per_agent,
        per_agent * 1024.0 / (n - 1) as f64,
        rss1 >> 10,
        shm1 >> 10,
    );
    assert!(
        bring_up < Duration::from_secs(10),
        "bring-up of {n} agents took {bring_up:?}"
    );
    assert!(
        per_agent * 1024.0 / ((n - 1) as f64) < 1024.0,
        "a peer never talked to costs more than 1 KiB"
    );

    // Traffic: ring neighbours and random peers, everything checked. One
    // client per agent: where the open-file limit does not allow them all
    // at once, the agents' clients attach in waves (each wave's agents
    // talk among themselves).
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .0 as usize;
    let wave = match std::env::var("WYVERN_SIM_WAVE") {
        Ok(v) => v.parse().expect("WYVERN_SIM_WAVE: a number"),
        Err(_) => (limit.saturating_sub(fds + 512) / FDS_PER_CLIENT).clamp(8, n),
    };
    let waves: Vec<std::ops::Range<usize>> = (0..n.div_ceil(wave))
        .map(|k| k * wave..((k + 1) * wave).min(n))
        .collect();
    println!(
        "{fds} descriptors open of {limit}: clients in {} wave(s) of up to {wave} agents",
        waves.len()
    );
    let workers = Workers::start(&sim.sockets);
    let dests = std::sync::Arc::new(destinations(n, wave, seed));
    let pairs: usize = dests.iter().map(|d| d.len()).sum();
    let phase = |p: u32| {
        let (t, v) = (Instant::now(), sim.elapsed());
        for r in &waves {
            let list: Vec<usize> = r.clone().collect();
            let before = std::fs::read_dir("/proc/self/fd").unwrap().count();
            workers.run(|w| Job::Attach(Workers::share(&list, w)));
            if p == 1 && r.start == 0 {
                let after = std::fs::read_dir("/proc/self/fd").unwrap().count();
                println!(
                    "{:.1} descriptors per client (with the agent's end)",
                    (after - before) as f64 / list.len() as f64
                );
            }
            if let Err(e) = workers.try_run(|_| Job::Traffic {
                phase: p,
                wave: r.clone(),
                dests: dests.clone(),
            }) {
                // Where the agents named stand with their peers.
                let census = sim.census();
                let who: Vec<usize> = e
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|x| x.parse().ok())
                    .filter(|&x: &usize| x < n)
                    .collect();
                for i in who.iter().take(8) {
                    println!("agent {i}: {:?}", census[*i].active);
                }
                panic!("{e}");
            }
            // Anything extra would have come by now.
            sim.run_for(Duration::from_millis(50));
            workers.run(|_| Job::CheckQuiet);
            workers.run(|w| Job::Detach(Workers::share(&list, w)));
            // The agents close their ends (the next wave needs the room).
            sim.run_for(Duration::from_millis(10));
        }
        println!(
            "phase {p}: {} checked messages in {:.2} s wall, {:.3} s virtual; {} agent rounds so far",
            pairs as u64 * MSGS as u64,
            t.elapsed().as_secs_f64(),
            (sim.elapsed() - v).as_secs_f64(),
            sim.rounds()
        );
    };
    phase(1);
    let after_a = total(&sim.census());
    show("after phase 1", &after_a);
    let anon2 = status_kib("RssAnon:");
    println!(
        "links made: {} of {} peer entries; RssAnon {} MiB ({:.1} KiB more per link made)",
        after_a.sessions,
        n * (n - 1),
        (anon2 - anon0) >> 10,
        (anon2.saturating_sub(anon1)) as f64 / after_a.sessions.max(1) as f64
    );
    assert!(
        after_a.sessions >= pairs,
        "fewer sessions than pairs that talked"
    );
    assert_eq!(
        after_a.connecting + after_a.resuming + after_a.disconnected + after_a.lost,
        0
    );

    // 1 % killed (no goodbye) and started again, at random (seeded).
    let mut rng = Rng(seed ^ 0xdead_beef);
    let mut killed: Vec<usize> = vec![];
    while killed.len() < (n / 100).max(1) {
        let i = rng.below(n);
        if !killed.contains(&i) {
            killed.push(i);
        }
    }
    killed.sort_unstable();
    let tk = Instant::now();
    for &i in &killed {
        sim.restart(i);
    }
    println!(
        "killed and restarted {killed:?} in {:.2} s",
        tk.elapsed().as_secs_f64()
    );
    // Their partners learn of the new incarnations by the next heartbeat on
    // the old links (the new agent answers with its Hello): the old
    // sessions are given up (losses), fresh ones begin.
    sim.run_for(Duration::from_millis(500));
    let census = sim.census();
    let t = total(&census);
    show("500 ms after the restarts", &t);
    let partners: usize = killed
        .iter()
        .map(|&k| {
            census
                .iter()
                .filter(|c| c.active.iter().any(|&(p, _)| p as usize == k))
                .count()
        })
        .sum();
    println!(
        "{partners} links with a restarted agent; {} losses",
        t.losses
    );
    assert!(
        end_states_ok(&census, &killed),
        "a peer of a restarted agent is not up or idle 500 ms after the restart"
    );
    assert!(
        t.losses as usize >= partners,
        "the restarted agents' partners did not all give the old incarnations up"
    );

    // The same destinations again: every peer that had a session with a
    // killed agent's old incarnation sends to the new one, and the new ones
    // send to the peers their old incarnation talked to.
    phase(2);
    // Then let heartbeats and timeouts run (longer than the peer timeout).
    sim.run_for(Duration::from_millis(3500));
    let census = sim.census();
    let end = total(&census);
    show("after phase 2 and 3.5 s", &end);
    assert!(end_states_ok(&census, &killed), "a peer is stuck");
    // Every pair that talked is up at both ends.
    for (i, d) in dests.iter().enumerate() {
        for &j in d {
            for (a, b) in [(i, j as usize), (j as usize, i)] {
                assert!(
                    census[a]
                        .active
                        .iter()
                        .any(|&(p, ref s)| p as usize == b && s == "up"),
                    "agent {a}'s peer {b} is not up"
                );
            }
        }
    }
    println!(
        "{n} agents: {:.2} s virtual in {:.2} s wall, {} agent rounds; network {:?}",
        sim.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        sim.rounds(),
        sim.net_stats()
    );
    drop(workers);
}
