//! `wyvern doctor`: a preflight of the agent a configuration describes. Each
//! check says what it found, and for a problem why it matters and what fixes
//! it. Exits non-zero when the agent would not start, or would not get what
//! the configuration asks for (hugepages, the RDMA device, the cores, ...);
//! advice (a spinning agent on a shared core, the clock source) only warns.
//!
//! It reads what `wyvern info` gathers (sysfs, procfs, libibverbs) plus the
//! socket directory, the CPUs and the clock source; nothing is opened or
//! started.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use wyvern::agent::{AgentConfig, IdlePolicy, TransportKind};

use super::info::Info;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As asked.
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// The agent would not start, or not get what it asks for.
    Fail,
}

/// One check.
#[derive(Serialize)]
pub struct Check {
    /// Short name (`hugepages`, `memlock`, ...).
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub found: String,
    /// For a problem: what fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every check's result.
#[derive(Serialize)]
pub struct Report {
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    /// The report for a terminal.
    pub fn render(&self) -> String {
        let mut o = String::new();
        for c in &self.checks {
            let tag = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            let _ = writeln!(o, "[{tag}] {:<12} {}", c.name, c.found);
            if let Some(f) = &c.fix {
                let _ = writeln!(o, "       {:<12} fix: {f}", "");
            }
        }
        let (w, f) = self
            .checks
            .iter()
            .fold((0, 0), |(w, f), c| match c.verdict {
                Verdict::Warn => (w + 1, f),
                Verdict::Fail => (w, f + 1),
                Verdict::Ok => (w, f),
            });
        let _ = writeln!(
            o,
            "{} checks: {} failed, {} warnings{}",
            self.checks.len(),
            f,
            w,
            if f > 0 {
                " (the agent would not get what this configuration asks for)"
            } else {
                ""
            }
        );
        o
    }
}

/// Where the checks read the machine (tests point it at a fake tree).
pub struct Machine<'a> {
    /// `/sys`.
    pub sys: &'a Path,
}

fn check(name: &'static str, verdict: Verdict, found: String, fix: Option<String>) -> Check {
    Check {
        name,
        verdict,
        found,
        fix,
    }
}

/// Run every check of `cfg` against `info` and the machine.
pub fn examine(cfg: Result<&AgentConfig, &str>, info: &Info, m: &Machine<'_>) -> Report {
    let mut checks = Vec::new();
    let cfg = match cfg {
        Ok(c) => {
            checks.push(check(
                "config",
                Verdict::Ok,
                "the configuration loads".into(),
                None,
            ));
            c
        }
        Err(e) => {
            checks.push(check(
                "config",
                Verdict::Fail,
                format!("the configuration does not load: {e}"),
                Some("see `wyvern agent --help` and docs/operations.md".into()),
            ));
            return Report { checks };
        }
    };
    let set = cfg.transport_set();
    let name = |k: TransportKind| format!("{k:?}").to_lowercase();
    for &k in &set {
        let t = name(k);
        if !info.transports.contains(&t) {
            checks.push(check(
                "transport",
                Verdict::Fail,
                format!("transport {t} is not built into this wyvern"),
                Some(format!(
                    "build with `cargo build --release --features {t}` (docs/transports.md)"
                )),
            ));
        } else {
            checks.push(check(
                "transport",
                Verdict::Ok,
                format!("transport {t} is built"),
                None,
            ));
        }
    }
    checks.push(hugepages(cfg, info));
    if set.contains(&TransportKind::Verbs) {
        checks.push(memlock(info));
        checks.push(rdma(cfg, info));
        #[cfg(feature = "verbs")]
        checks.extend(rdma_mtu(cfg, info));
    }
    if set.contains(&TransportKind::Dpdk) {
        checks.push(dpdk(cfg, info));
        checks.extend(dpdk_mtu(cfg, m));
        checks.extend(memif_bsize(cfg));
    }
    checks.push(socket_dir(cfg));
    checks.extend(cores(cfg, m));
    checks.push(clock(m));
    Report { checks }
}

fn pool_mib(info: &Info) -> u64 {
    info.pool_bytes.unwrap_or(0).div_ceil(1 << 20)
}

fn hugepages(cfg: &AgentConfig, info: &Info) -> Check {
    let need_b = info.pool_bytes.unwrap_or(0);
    if !cfg.hugepages {
        return check(
            "hugepages",
            Verdict::Warn,
            format!(
                "hugepages are off (hugepages = false): the {} MiB pool is on normal pages",
                pool_mib(info)
            ),
            Some("set hugepages = true and reserve them: scripts/setup-hugepages.sh".into()),
        );
    }
    let Some(kb) = info.hugepages.default_kb else {
        return check(
            "hugepages",
            Verdict::Fail,
            "this kernel reports no hugepage size (/proc/meminfo)".into(),
            Some("a kernel with hugetlbfs, or hugepages = false".into()),
        );
    };
    let (total, free) = info
        .hugepages
        .sizes
        .iter()
        .find(|s| s.kb == kb)
        .map_or((0, 0), |s| (s.total, s.free));
    let need = need_b.div_ceil(kb * 1024);
    if free >= need {
        check(
            "hugepages",
            Verdict::Ok,
            format!(
                "{free} free pages of {} kB, the {} MiB pool needs {need}",
                kb,
                pool_mib(info)
            ),
            None,
        )
    } else {
        check(
            "hugepages",
            Verdict::Fail,
            format!(
                "{free} free pages of {kb} kB, the {} MiB pool needs {need}: the agent would fall back to normal pages",
                pool_mib(info)
            ),
            Some(format!(
                "reserve at least {} more: scripts/setup-hugepages.sh {} (or a smaller pool: --block-bytes, pool.block_bytes)",
                need - free,
                total + (need - free)
            )),
        )
    }
}

fn memlock(info: &Info) -> Check {
    let need = info.pool_bytes.unwrap_or(0);
    match info.memlock.soft {
        None => check(
            "memlock",
            Verdict::Ok,
            "RLIMIT_MEMLOCK is unlimited (verbs registers the whole pool)".into(),
            None,
        ),
        Some(l) if l >= need => check(
            "memlock",
            Verdict::Ok,
            format!(
                "RLIMIT_MEMLOCK {} MiB holds the {} MiB pool verbs registers",
                l >> 20,
                pool_mib(info)
            ),
            None,
        ),
        Some(l) => check(
            "memlock",
            Verdict::Fail,
            format!(
                "RLIMIT_MEMLOCK {} KiB is below the {} MiB pool verbs registers: registration would fail",
                l >> 10,
                pool_mib(info)
            ),
            Some(
                "`ulimit -l unlimited` (or LimitMEMLOCK=infinity in the systemd unit, \
                 --ulimit memlock=-1 in a container)"
                    .into(),
            ),
        ),
    }
}

fn rdma(cfg: &AgentConfig, info: &Info) -> Check {
    let names: Vec<&str> = info.rdma.devices.iter().map(|d| d.name.as_str()).collect();
    if let Some(e) = &info.rdma.error {
        return check(
            "rdma",
            Verdict::Fail,
            format!("cannot list RDMA devices: {e}"),
            Some("install rdma-core (libibverbs) and the NIC's provider".into()),
        );
    }
    if names.is_empty() {
        return check(
            "rdma",
            Verdict::Fail,
            "no RDMA device on this machine".into(),
            Some("load the NIC's RDMA driver (or Soft-RoCE: `rdma link add rxe0 type rxe netdev DEV`), or another transport".into()),
        );
    }
    // `verbs_device` may name several devices (rails), each `name[:port]`.
    let missing = cfg.verbs_device.as_deref().and_then(|v| {
        v.split(',')
            .map(|d| d.trim().split(':').next().unwrap_or(""))
            .find(|d| !d.is_empty() && !names.contains(d))
    });
    match &cfg.verbs_device {
        Some(_) if missing.is_some() => {
            let d = missing.unwrap_or_default();
            check(
            "rdma",
            Verdict::Fail,
            format!(
                "verbs_device {d} is not here (devices: {})",
                names.join(", ")
            ),
            Some("set verbs_device to one of them, or several comma-separated (rails; `wyvern info` lists ports and GIDs)".into()),
        )
        }
        d => check(
            "rdma",
            Verdict::Ok,
            format!(
                "RDMA devices: {}{}",
                names.join(", "),
                d.as_ref()
                    .map(|d| format!(" (using {d})"))
                    .unwrap_or_default()
            ),
            None,
        ),
    }
}

fn dpdk(cfg: &AgentConfig, info: &Info) -> Check {
    let args = cfg.dpdk_eal_args.join(" ");
    let mut missing = Vec::new();
    for a in args.split_whitespace() {
        let Some(v) = a
            .strip_prefix("--vdev=")
            .or_else(|| a.strip_prefix("--vdev"))
        else {
            continue;
        };
        // net_af_packet0,iface=veth0 -> net_af_packet
        let dev = v.split(',').next().unwrap_or("");
        let drv = dev.trim_end_matches(|c: char| c.is_ascii_digit());
        if !drv.is_empty() && !info.dpdk.vdev_drivers.iter().any(|d| d == drv) {
            missing.push(drv.to_string());
        }
    }
    if !args.contains("--no-pci") && info.dpdk.pci_bound.is_empty() && !args.contains("--vdev") {
        return check(
            "dpdk",
            Verdict::Fail,
            "no --vdev and no PCI function bound to a DPDK driver: the port would not exist".into(),
            Some("bind a spare NIC (scripts/bind-nic.sh) or give a --vdev (docs/dpdk.md)".into()),
        );
    }
    if missing.is_empty() {
        check(
            "dpdk",
            Verdict::Ok,
            format!("DPDK drivers for {args:?} are there"),
            None,
        )
    } else {
        check(
            "dpdk",
            Verdict::Fail,
            format!(
                "DPDK driver(s) {} not found in {}",
                missing.join(", "),
                info.dpdk
                    .drivers_dir
                    .as_deref()
                    .unwrap_or("DPDK's driver directory")
            ),
            Some("install the DPDK package that has them (Debian: dpdk, librte-net-*)".into()),
        )
    }
}

/// The `--vdev` arguments of the EAL arguments (`--vdev=X` or `--vdev X`).
fn vdevs(eal_args: &[String]) -> Vec<String> {
    let words: Vec<&str> = eal_args.iter().flat_map(|a| a.split_whitespace()).collect();
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.strip_prefix("--vdev") {
            Some("") => out.extend(it.next().map(|v| v.to_string())),
            Some(v) => out.push(v.trim_start_matches('=').to_string()),
            None => {}
        }
    }
    out
}

/// The buffers of `net_memif` ports (`bsize`, default 2048) against `dpdk_mtu`
/// (1500 when not set): a buffer must hold a whole frame (MTU + 14), so an agent
/// whose `bsize` is shorter runs with packets cut to it (degraded `mtu`), which
/// fails where `dpdk_mtu` asked more and warns where it did not. `None` without
/// a memif port.
fn memif_bsize(cfg: &AgentConfig) -> Option<Check> {
    const ETH_HEADER: usize = 14;
    let ports: Vec<(String, usize)> = vdevs(&cfg.dpdk_eal_args)
        .iter()
        .filter(|v| v.starts_with("net_memif"))
        .map(|v| {
            let mut kv = v.split(',');
            let name = kv.next().unwrap_or_default().to_string();
            let bsize = kv
                .find_map(|kv| kv.strip_prefix("bsize="))
                .and_then(|b| b.parse().ok())
                .unwrap_or(2048);
            (name, bsize)
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let want = usize::from(cfg.dpdk_mtu.unwrap_or(1500));
    let need = want + ETH_HEADER;
    let short: Vec<&(String, usize)> = ports.iter().filter(|(_, b)| *b < need).collect();
    let said = |l: &[&(String, usize)]| {
        l.iter()
            .map(|(n, b)| format!("{n} bsize={b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(least) = short
        .iter()
        .map(|(_, b)| b.saturating_sub(ETH_HEADER))
        .min()
    else {
        return Some(check(
            "memif_bsize",
            Verdict::Ok,
            format!(
                "{} holds a frame of MTU {want}",
                said(&ports.iter().collect::<Vec<_>>())
            ),
            None,
        ));
    };
    let fix = format!(
        "bsize={need} or more on the --vdev in dpdk_eal_args, the same on both agents of the \
         pair (e.g. bsize={})",
        need.next_multiple_of(1024)
    );
    Some(match cfg.dpdk_mtu {
        Some(w) => check(
            "memif_bsize",
            Verdict::Fail,
            format!(
                "{}, dpdk_mtu asks {w}: the agent would cut packets to {least} (degraded mtu)",
                said(&short)
            ),
            Some(format!("{fix}, or lower dpdk_mtu to {least}")),
        ),
        None => check(
            "memif_bsize",
            Verdict::Warn,
            format!(
                "{}, below a 1500-byte frame: the agent cuts packets to {least}",
                said(&short)
            ),
            Some(fix),
        ),
    })
}

/// The kernel interfaces of `net_af_packet` ports against `dpdk_mtu` (1500 when
/// not set): the interface's MTU decides what passes, and an agent whose
/// interface carries less than `dpdk_mtu` runs with packets cut to it (degraded
/// `mtu`), so that fails; one below 1500 without `dpdk_mtu` warns. `None` where
/// doctor cannot tell (PCI ports, memif: the port itself says at start).
fn dpdk_mtu(cfg: &AgentConfig, m: &Machine<'_>) -> Option<Check> {
    let ifaces: Vec<String> = vdevs(&cfg.dpdk_eal_args)
        .iter()
        .filter(|v| v.starts_with("net_af_packet"))
        .filter_map(|v| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("iface="))
                .map(String::from)
        })
        .collect();
    if ifaces.is_empty() {
        return None;
    }
    let want = u32::from(cfg.dpdk_mtu.unwrap_or(1500));
    let mut short = Vec::new();
    let mut fine = Vec::new();
    for i in &ifaces {
        let path = m.sys.join("class/net").join(i).join("mtu");
        match std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            None => {
                return Some(check(
                    "dpdk_mtu",
                    Verdict::Fail,
                    format!(
                        "net_af_packet's interface {i} is not in this network namespace \
                         ({} unreadable): the port would not open",
                        path.display()
                    ),
                    Some(
                        "run doctor where the agent runs (ip netns exec NS wyvern doctor ...), \
                         or fix iface= in dpdk_eal_args"
                            .into(),
                    ),
                ))
            }
            Some(has) if has < want => short.push((i.clone(), has)),
            Some(has) => fine.push(format!("{i} {has}")),
        }
    }
    if short.is_empty() {
        return Some(check(
            "dpdk_mtu",
            Verdict::Ok,
            format!(
                "interface MTU {} carries {}",
                fine.join(", "),
                match cfg.dpdk_mtu {
                    Some(w) => format!("dpdk_mtu {w}"),
                    None => "the default 1500".into(),
                }
            ),
            None,
        ));
    }
    let said: Vec<String> = short
        .iter()
        .map(|(i, has)| format!("{i}'s MTU is {has}"))
        .collect();
    let least = short.iter().map(|&(_, h)| h).min().unwrap_or(0);
    let devs: Vec<&str> = short.iter().map(|(i, _)| i.as_str()).collect();
    Some(match cfg.dpdk_mtu {
        Some(w) => check(
            "dpdk_mtu",
            Verdict::Fail,
            format!(
                "{}, dpdk_mtu asks {w}: the agent would cut packets to {least} (degraded mtu)",
                said.join(", ")
            ),
            Some(format!(
                "raise the interface's MTU (ip link set dev {} mtu {w}, on every node) or lower \
                 dpdk_mtu to {least}",
                devs.join("/")
            )),
        ),
        None => check(
            "dpdk_mtu",
            Verdict::Warn,
            format!(
                "{}, below the default 1500: the agent cuts packets to {least}",
                said.join(", ")
            ),
            Some(format!(
                "ip link set dev {} mtu 1500 (or more, with dpdk_mtu to match)",
                devs.join("/")
            )),
        ),
    })
}

/// RoCE ports whose active MTU is below their largest because their netdev's MTU
/// is small: the agent runs so (degraded `mtu`). A warning: the configuration
/// asks no RDMA MTU (the ports of `verbs_device`, or of every device).
#[cfg(feature = "verbs")]
fn rdma_mtu(cfg: &AgentConfig, info: &Info) -> Option<Check> {
    let mut short = Vec::new();
    let mut fine = Vec::new();
    for d in &info.rdma.devices {
        if cfg.verbs_device.as_ref().is_some_and(|v| {
            !v.split(',')
                .any(|x| x.trim().split(':').next() == Some(d.name.as_str()))
        }) {
            continue;
        }
        for p in &d.ports {
            if p.link_layer != "Ethernet" || p.state != "active" {
                continue;
            }
            let netdev = p.netdev.as_ref().map(|(n, m)| (n.as_str(), *m));
            match wyvern::transport::verbs::roce_mtu_shortfall(
                &d.name, p.port, p.mtu, p.max_mtu, netdev,
            ) {
                Some(s) => short.push(s),
                None => fine.push(format!("{}:{} {} B", d.name, p.port, p.mtu)),
            }
        }
    }
    if let Some(s) = short.first() {
        let why: Vec<&str> = short.iter().map(|s| s.why.as_str()).collect();
        return Some(check(
            "rdma_mtu",
            Verdict::Warn,
            why.join("; "),
            Some(s.fix.clone()),
        ));
    }
    if fine.is_empty() {
        return None;
    }
    Some(check(
        "rdma_mtu",
        Verdict::Ok,
        format!("RoCE ports at their largest MTU: {}", fine.join(", ")),
        None,
    ))
}

fn socket_dir(cfg: &AgentConfig) -> Check {
    use std::os::unix::fs::MetadataExt;
    let dir = cfg
        .socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let uid = nix::unistd::geteuid().as_raw();
    match std::fs::metadata(dir) {
        Err(_) => check(
            "socket",
            Verdict::Ok,
            format!(
                "{} does not exist yet: the agent makes it private",
                dir.display()
            ),
            None,
        ),
        Ok(md) if md.uid() != uid && md.uid() != 0 => check(
            "socket",
            Verdict::Fail,
            format!(
                "{} belongs to uid {}, not to this uid {uid}: the agent refuses it",
                dir.display(),
                md.uid()
            ),
            Some("a socket path in a directory of the agent's user (--socket)".into()),
        ),
        Ok(md) if md.mode() & 0o022 != 0 && md.mode() & 0o1000 == 0 => check(
            "socket",
            Verdict::Fail,
            format!(
                "{} is writable by others (mode {:o}) without the sticky bit: the agent refuses it",
                dir.display(),
                md.mode() & 0o7777
            ),
            Some(format!("chmod 700 {} (or another --socket)", dir.display())),
        ),
        Ok(_) => check(
            "socket",
            Verdict::Ok,
            format!("{} is safe for the control socket", dir.display()),
            None,
        ),
    }
}

/// CPUs in a sysfs list (`0-3,8`).
fn cpu_list(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    v.extend(a..=b.min(a + 4096));
                }
            }
            None => v.extend(part.parse::<usize>().ok()),
        }
    }
    v
}

fn cores(cfg: &AgentConfig, m: &Machine<'_>) -> Vec<Check> {
    let cpu = m.sys.join("devices/system/cpu");
    let read = |f: &str| std::fs::read_to_string(cpu.join(f)).unwrap_or_default();
    let online = cpu_list(&read("online"));
    let isolated = cpu_list(&read("isolated"));
    let mut out = Vec::new();
    let absent: Vec<usize> = cfg
        .cores
        .iter()
        .copied()
        .filter(|c| !online.contains(c))
        .collect();
    if !absent.is_empty() {
        out.push(check(
            "cores",
            Verdict::Fail,
            format!(
                "cores {absent:?} are not online (online: {})",
                read("online").trim()
            ),
            Some("cores = [...] from the online ones".into()),
        ));
        return out;
    }
    match (cfg.idle, cfg.cores.first()) {
        (IdlePolicy::Spin, None) => out.push(check(
            "cores",
            Verdict::Warn,
            "idle = spin without cores: the agent spins on whatever core the scheduler gives it, \
             shared with clients"
                .into(),
            Some("cores = [N] with an isolated core, or idle = adaptive".into()),
        )),
        (IdlePolicy::Spin, Some(c)) if !isolated.contains(c) => out.push(check(
            "cores",
            Verdict::Warn,
            format!(
                "core {c} is not isolated (isolated: {}): other work shares the spinning agent's core",
                if isolated.is_empty() { "none".into() } else { read("isolated").trim().to_string() }
            ),
            Some("boot with isolcpus=/nohz_full= for that core, or a cgroup cpuset".into()),
        )),
        (_, c) => out.push(check(
            "cores",
            Verdict::Ok,
            match c {
                Some(c) => format!("polling thread on core {c} ({:?})", cfg.idle),
                None => format!("{:?} idle policy, not pinned", cfg.idle).to_lowercase(),
            },
            None,
        )),
    }
    out
}

fn clock(m: &Machine<'_>) -> Check {
    let f = m
        .sys
        .join("devices/system/clocksource/clocksource0/current_clocksource");
    let src = std::fs::read_to_string(&f).unwrap_or_default();
    let src = src.trim();
    match src {
        "tsc" | "kvm-clock" | "arch_sys_counter" => check(
            "clock",
            Verdict::Ok,
            format!("clock source {src} (read without a system call)"),
            None,
        ),
        "" => check(
            "clock",
            Verdict::Warn,
            format!("cannot read {}", f.display()),
            None,
        ),
        other => check(
            "clock",
            Verdict::Warn,
            format!(
                "clock source {other}: every clock read is slow (the agent reads it each round)"
            ),
            Some("a stable TSC (tsc=reliable), or kvm-clock in a VM".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_sysfs_writes_them() {
        assert_eq!(cpu_list("0-3,8\n"), vec![0, 1, 2, 3, 8]);
        assert_eq!(cpu_list(""), Vec::<usize>::new());
        assert_eq!(cpu_list("5"), vec![5]);
    }

    #[test]
    fn memif_buffers_are_checked_against_dpdk_mtu() {
        let cfg = |bsize: &str, mtu: Option<u16>| AgentConfig {
            dpdk_eal_args: vec![format!(
                "--no-pci --vdev=net_memif0,role=client,socket=/tmp/m.sock{bsize} --no-huge"
            )],
            dpdk_mtu: mtu,
            ..AgentConfig::default()
        };
        let c = memif_bsize(&cfg("", Some(9000))).unwrap();
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.found.contains("net_memif0 bsize=2048"), "{}", c.found);
        assert!(c.found.contains("cut packets to 2034"), "{}", c.found);
        let fix = c.fix.unwrap();
        assert!(
            fix.contains("bsize=9014 or more") && fix.contains("dpdk_mtu to 2034"),
            "{fix}"
        );
        let c = memif_bsize(&cfg(",bsize=9216", Some(9000))).unwrap();
        assert_eq!(c.verdict, Verdict::Ok, "{}", c.found);
        assert_eq!(memif_bsize(&cfg("", None)).unwrap().verdict, Verdict::Ok);
        let c = memif_bsize(&cfg(",bsize=1024", None)).unwrap();
        assert_eq!(c.verdict, Verdict::Warn, "{}", c.found);
        assert!(c.found.contains("cuts packets to 1010"), "{}", c.found);
        let none = AgentConfig {
            dpdk_eal_args: vec!["--vdev=net_af_packet0,iface=veth0".into()],
            ..AgentConfig::default()
        };
        assert!(memif_bsize(&none).is_none());
    }

    #[test]
    fn vdevs_are_found_in_either_form() {
        let args = vec![
            "--no-pci --vdev=net_af_packet0,iface=veth0,framesz=16384".to_string(),
            "--vdev".into(),
            "net_af_packet1,iface=eth2".into(),
        ];
        assert_eq!(
            vdevs(&args),
            [
                "net_af_packet0,iface=veth0,framesz=16384",
                "net_af_packet1,iface=eth2"
            ]
        );
        assert!(vdevs(&["--no-pci".to_string()]).is_empty());
    }
}
