//! What /proc says about a process (an agent under attack): memory, file
//! descriptors, CPU time. Shared by the hostile-party tests and the soak.

use std::time::{Duration, Instant};

/// The pid of agent `i` of a cluster.
pub fn agent_pid(c: &super::Cluster, i: usize) -> i32 {
    c.agents[i].as_ref().expect("agent runs").pid()
}

/// A `/proc/<pid>/status` field in kB (0 when the process is gone).
fn status_kib(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// VmRSS, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Anonymous resident memory (RssAnon: the heap, not the shared pool, which
/// on normal pages would count in VmRSS as it is touched), in bytes.
pub fn rss_anon(pid: i32) -> u64 {
    status_kib(pid, "RssAnon:") * 1024
}

/// Open file descriptors.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What a process's fds point at, for a failure message.
pub fn fd_list(pid: i32) -> String {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let to = std::fs::read_link(e.path()).unwrap_or_default();
                    format!("{} -> {}", e.file_name().to_string_lossy(), to.display())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.join(", ")
}

/// Wait (up to `t`) until the process holds at most `base` descriptors;
/// returns how many it holds then.
pub fn fds_back_to(pid: i32, base: usize, t: Duration) -> usize {
    let deadline = Instant::now() + t;
    loop {
        let n = fd_count(pid);
        if n <= base || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time (user + system, in seconds) the process used so far.
pub fn cpu_secs(pid: i32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &s[s.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // USER_HZ: 100 on every Linux architecture the agent runs on.
    ticks / 100.0
}

/// Fraction of one core the process used over `d` (nothing else asked of it).
pub fn cpu_share(pid: i32, d: Duration) -> f64 {
    let a = cpu_secs(pid);
    std::thread::sleep(d);
    (cpu_secs(pid) - a) / d.as_secs_f64()
}
