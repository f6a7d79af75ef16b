//! A UDP relay that impairs what it forwards: a real hop on the path between
//! two agents (this kernel has no netem). It drops, holds back (reorders),
//! duplicates and damages datagrams with a seeded generator, so a failure
//! replays with the same `WYVERN_RELAY_SEED`.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Percentages of datagrams to impair.
#[derive(Clone, Copy, Debug)]
pub struct Impair {
    pub loss: u64,
    pub reorder: u64,
    pub duplicate: u64,
    pub corrupt: u64,
}

/// What the relay did.
#[derive(Default)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub held: AtomicU64,
    pub duplicated: AtomicU64,
    pub corrupted: AtomicU64,
}

pub struct Relay {
    pub addr: SocketAddr,
    pub seed: u64,
    pub stats: Arc<RelayStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A seeded generator, so an impaired run replays with the same seed.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

impl Relay {
    /// Relay between `upstream` (an agent) and whoever sends to the relay's
    /// own address (the other agent).
    pub fn start(upstream: SocketAddr, imp: Impair) -> Relay {
        let seed = std::env::var("WYVERN_RELAY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("relay: {imp:?}, seed {seed} (replay with WYVERN_RELAY_SEED={seed})");
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let (st, s2) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = Lcg(seed);
            let mut client: Option<SocketAddr> = None;
            // Held back: (release time, destination, bytes).
            let mut held: VecDeque<(Instant, SocketAddr, Vec<u8>)> = VecDeque::new();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let now = Instant::now();
                while held.front().is_some_and(|h| h.0 <= now) {
                    let (_, to, b) = held.pop_front().unwrap();
                    let _ = sock.send_to(&b, to);
                }
                let (n, from) = match sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(_) => continue,
                };
                let to = if from == upstream {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    upstream
                };
                let mut b = buf[..n].to_vec();
                if rng.chance(imp.loss) {
                    s2.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if rng.chance(imp.corrupt) {
                    let i = (rng.next() as usize) % b.len();
                    b[i] ^= 1 << (rng.next() % 8);
                    s2.corrupted.fetch_add(1, Ordering::Relaxed);
                }
                if rng.chance(imp.duplicate) {
                    let _ = sock.send_to(&b, to);
                    s2.duplicated.fetch_add(1, Ordering::Relaxed);
                }
                if rng.chance(imp.reorder) {
                    // Overtaken by whatever comes in the next 0.1-2 ms.
                    let delay = Duration::from_micros(100 + rng.next() % 1900);
                    let at = now + delay;
                    let pos = held.partition_point(|h| h.0 <= at);
                    held.insert(pos, (at, to, b));
                    s2.held.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = sock.send_to(&b, to);
                s2.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        });
        Relay {
            addr,
            seed,
            stats,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
