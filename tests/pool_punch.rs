//! A client punches a hole in the hugepage pool (issue 13, finding 6's
//! residual risk). Every client holds the pool memfd read-write, so it can
//! `fallocate(FALLOC_FL_PUNCH_HOLE)` any range of it. On hugetlbfs that frees
//! the huge pages and their reservation; with no free huge page left in the
//! system, the agent's next touch of that range was a SIGBUS that killed the
//! agent (and every job on the node with it). Now the agent's SIGBUS guard
//! gives it a private zero page, the agent detaches the clients whose rings
//! were there, retires their slots, quarantines damaged blocks, counts
//! `pool_pages_damaged`, and serves everyone else.
//!
//! ONE test in this binary: it takes every free huge page of the machine
//! for a few seconds, and nothing else of the suite should run beside it.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{assert_ok, path_str, Cluster, WYVERN};
use wyvern::client::Client;

const HUGE: u64 = 2 << 20;
const T: Duration = Duration::from_secs(60);

fn meminfo(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Every free huge page of the system, held in a hugetlb memfd of the test
/// process; released when dropped (on every path, panics included).
struct Hog {
    fd: OwnedFd,
    pages: u64,
}

impl Hog {
    fn new() -> Hog {
        let total = meminfo("HugePages_Total").max(1);
        let name = std::ffi::CString::new("pool-punch-hog").unwrap();
        // SAFETY: a valid C string; memfd_create has no other inputs.
        let fd = unsafe {
            libc::memfd_create(
                name.as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
            )
        };
        assert!(fd >= 0, "memfd: {}", std::io::Error::last_os_error());
        // SAFETY: just returned by the kernel, owned by nobody else.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        nix::unistd::ftruncate(&fd, (total * HUGE) as i64).unwrap();
        Hog { fd, pages: 0 }
    }

    /// Take every huge page that is free now (fallocate page by page until
    /// ENOSPC); returns how many were taken.
    fn grab(&mut self) -> u64 {
        let mut n = 0;
        loop {
            // SAFETY: fallocate on our own fd with integer arguments.
            let r = unsafe {
                libc::fallocate(
                    self.fd.as_raw_fd(),
                    0,
                    (self.pages * HUGE) as i64,
                    HUGE as i64,
                )
            };
            if r != 0 {
                break;
            }
            self.pages += 1;
            n += 1;
        }
        n
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        eprintln!("releasing the {} huge page(s) the test held", self.pages);
    }
}

fn punch(fd: &impl AsRawFd, off: u64, len: u64) {
    // SAFETY: fallocate on a valid fd with integer arguments.
    let r = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as i64,
            len as i64,
        )
    };
    assert_eq!(r, 0, "punch: {}", std::io::Error::last_os_error());
}

fn skip(why: &str) {
    eprintln!("*** SKIPPED pool_punch: {why}");
}

fn damaged(c: &Cluster) -> u64 {
    c.stat(0)["pool_pages_damaged"].as_u64().unwrap_or(0)
}

/// The agent is still running; if not, fail with how it died and its log.
fn assert_agent_alive(c: &mut Cluster, when: &str) {
    let p = c.agents[0].as_mut().expect("agent runs");
    if let Ok(Some(st)) = p.child.try_wait() {
        use std::os::unix::process::ExitStatusExt;
        let log = c.log(0);
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "the agent died {when}: {st} (signal {:?}); log tail:\n{}",
            st.signal(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

/// Two honest `wyvern-peer`s exchange `n` messages from node `from` to
/// endpoint `ep` of node `to`.
fn honest_pair(c: &Cluster, from: usize, to: usize, ep: u32, n: u32) {
    let rx = c.peer(
        to,
        &["--ep", &ep.to_string(), "recv", "--count", &n.to_string()],
    );
    let to_s = format!("{to}:{ep}");
    let n_s = n.to_string();
    let tx = c.peer(
        from,
        &["send", "--to", &to_s, "--count", &n_s, "--delivered"],
    );
    assert_ok("honest sender", &tx.result(T));
    let r = rx.result(T);
    assert_ok("honest receiver", &r);
    assert_eq!(r.0["received"], n);
}

#[test]
fn a_client_punching_a_hole_in_a_hugepage_pool_does_not_crash_the_agent() {
    let overcommit = std::fs::read_to_string("/proc/sys/vm/nr_overcommit_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if overcommit != Some(0) {
        // Surplus huge pages would be allocated instead of failing.
        return skip("vm.nr_overcommit_hugepages is not 0: free huge pages cannot be exhausted");
    }
    // Receive rings of 1 MiB: a client's slot spans several whole huge
    // pages, so a page can be punched that no other client uses.
    let cfg = std::env::temp_dir().join(format!("wyvern-punch-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[pool]\nmax_clients = 8\nendpoints_per_client = 4\nsub_slots = 4096\n\
         comp_slots = 1024\nrecv_slots = 16384\nblock_bytes = 8388608\n",
    )
    .unwrap();
    // Two nodes: node 1 sends node 0 a large message, which node 0's agent
    // writes into its block region (the top of it, where arrivals go).
    let mut c = Cluster::start(2, &["--config", &path_str(&cfg)]);
    let backing = c.stat(0)["backing"].as_str().unwrap_or("").to_string();
    if !backing.starts_with("hugepages") {
        return skip(&format!("the pool is on {backing:?}, not hugepages"));
    }
    let sock = c.socket(0);

    // The hostile client (this process) and the victim (a receiver).
    let hostile = Client::attach(&sock, "hostile").unwrap();
    let (layout, hostile_slot) = hostile.layout();
    let victim = c.peer(
        0,
        &["--ep", "7", "--timeout-ms", "60000", "recv", "--count", "1"],
    );
    let slot_of = |c: &Cluster, pid: i32| -> Option<u32> {
        c.stat(0)["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["pid"] == pid as i64)
            .map(|k| k["slot"].as_u64().unwrap() as u32)
    };
    let vslot = slot_of(&c, victim.pid()).expect("victim attached");
    let (vs, ve) = layout.client_range(vslot);
    // Every huge page the victim's slot touches, but the header page (every
    // client reads the agent's sleeping word there: with no huge page free,
    // honest clients would die touching it, and that is not the agent's).
    let pages: Vec<u64> = (vs / HUGE..ve.div_ceil(HUGE))
        .filter(|&p| p > 0)
        .map(|p| p * HUGE)
        .collect();
    let punched_end = pages.last().unwrap() + HUGE;
    eprintln!(
        "hostile slot {hostile_slot}, victim slot {vslot} at {vs:#x}..{ve:#x}: punching pages {pages:x?}"
    );
    // Fillers: slots that share a punched page with the victim (this process
    // never touches them); the first slot clear of it goes to an honest client.
    let mut fillers = Vec::new();
    loop {
        let f = Client::attach(&sock, "filler").unwrap();
        let (s, _) = layout.client_range(f.layout().1);
        if s >= punched_end {
            f.detach().unwrap();
            break;
        }
        fillers.push(f);
    }
    let honest_rx = c.peer(0, &["--ep", "9", "recv", "--count", "1"]);
    let rslot = slot_of(&c, honest_rx.pid()).expect("honest receiver attached");
    assert!(layout.client_range(rslot).0 >= punched_end);
    // The last huge page of the block region (arrivals from peers are placed
    // there; nothing on one node touches it).
    let block_page = (layout.blocks_off + layout.params.block_bytes) / HUGE * HUGE - HUGE;
    assert_eq!(damaged(&c), 0);
    let evicted0 = c.stat(0)["clients_evicted"].as_u64().unwrap();

    // Take every free huge page, punch, and take the freed ones at once
    // (the agent refaults a punched page within one 5 ms tick: if it got a
    // page before we took it back, no SIGBUS happened; punch again).
    let mut hog = Hog::new();
    let took = hog.grab();
    eprintln!(
        "took {took} free huge page(s); HugePages_Free now {} (Rsvd {})",
        meminfo("HugePages_Free"),
        meminfo("HugePages_Rsvd")
    );
    if took == 0 && meminfo("HugePages_Free") > meminfo("HugePages_Rsvd") {
        return skip("cannot take the free huge pages");
    }
    let fd = hostile.pool_fd();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempts = 0;
    while damaged(&c) == 0 {
        assert!(
            Instant::now() < deadline,
            "no damage recorded after {attempts} punches: the agent never faulted"
        );
        attempts += 1;
        for &p in &pages {
            punch(&fd, p, HUGE);
        }
        punch(&fd, block_page, HUGE);
        hog.grab();
        // The agent touches the victim's rings every round or tick.
        std::thread::sleep(Duration::from_millis(200));
        assert_agent_alive(&mut c, "after a client punched a hole in the pool");
    }
    eprintln!(
        "agent survived {attempts} punch(es); HugePages_Free {}",
        meminfo("HugePages_Free")
    );
    let s = c.stat(0);
    assert!(s["pool_pages_damaged"].as_u64().unwrap() > 0, "{s}");
    assert!(s["clients_evicted"].as_u64().unwrap() > evicted0, "{s}");
    let slots: Vec<u64> = s["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["slot"].as_u64().unwrap())
        .collect();
    assert!(!slots.contains(&(vslot as u64)), "victim evicted: {s}");
    assert!(slots.contains(&(rslot as u64)), "honest receiver kept: {s}");
    assert!(c.log(0).contains("punched a hole in the pool"));

    // Still without a free huge page: the honest receiver gets a message
    // from a new client, and a new honest pair exchanges 20 messages.
    let tx = c.peer(0, &["send", "--to", "0:9", "--count", "1", "--delivered"]);
    assert_ok("honest sender", &tx.result(T));
    let r = honest_rx.result(T);
    assert_ok("honest receiver", &r);
    assert_eq!(r.0["received"], 1);
    honest_pair(&c, 0, 0, 11, 20);
    // A large message from node 1 arrives in the top of node 0's block
    // region, the page that was punched: the agent's write into it (a read
    // from the socket: EFAULT, then the guard) survives, the page is
    // quarantined. Its receiver reads the block through its own mapping of
    // the punched page and dies of SIGBUS itself, or reads zeros: clients of
    // one agent are not isolated from each other.
    let total = c.stat(0)["blocks_total"].as_u64().unwrap();
    let collateral = c.peer(
        0,
        &["--ep", "13", "--sizes", "65536", "recv", "--count", "1"],
    );
    let big = c.peer(
        1,
        &["--sizes", "65536", "send", "--to", "0:13", "--count", "1"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.log(0).contains("quarantined") {
        assert!(
            Instant::now() < deadline,
            "the block page was never touched: {}",
            c.stat(0)
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_agent_alive(&mut c, "after a message arrived in a punched block page");
    }
    let _ = big.result(T);
    drop(collateral);
    // Once its receiver is gone, every block is free but the quarantined page.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.stat(0);
        if s["blocks_free"].as_u64().unwrap() == total - HUGE {
            break;
        }
        assert!(Instant::now() < deadline, "blocks not back: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    honest_pair(&c, 1, 0, 17, 20);
    honest_pair(&c, 0, 0, 19, 20);

    // `wyvern stat` answers.
    let t0 = Instant::now();
    let out = std::process::Command::new(WYVERN)
        .args(["stat", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_agent_alive(&mut c, "at the end");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    // Give the huge pages back before the clients of this process go (their
    // drop may touch their slots, which are punched).
    drop(hog);
    drop(fillers);
    drop(hostile);
    drop(victim);
    let _ = std::fs::remove_file(&cfg);
}
