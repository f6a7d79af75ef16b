//! `wyvern info`: what this build is and what this machine offers it, like
//! `ucx_info -v -d` or `fi_info` — version, build features and transports,
//! RDMA devices with their ports and GIDs, DPDK's library and drivers,
//! hugepages per size and NUMA node, the memlock limit, and the configuration
//! an agent given the same `-c FILE` and flags would run with.
//!
//! Everything is read from sysfs, procfs and (with `verbs`) libibverbs; DPDK's
//! EAL is never started (that would probe PCI devices), so DPDK ports are not
//! listed, only the library, its drivers and PCI functions bound to a DPDK
//! kernel driver.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use wyvern::agent::AgentConfig;

/// Everything `wyvern info` reports.
#[derive(Serialize)]
pub struct Info {
    /// The package version.
    pub version: String,
    /// The git commit of a release build, when recorded.
    pub commit: Option<String>,
    /// Cargo features this binary was built with.
    pub features: Vec<String>,
    /// Transports this binary can run.
    pub transports: Vec<String>,
    /// RDMA devices.
    pub rdma: Rdma,
    /// DPDK.
    pub dpdk: Dpdk,
    /// Hugepages.
    pub hugepages: Hugepages,
    /// RLIMIT_MEMLOCK (soft, hard) in bytes; `None`: unlimited.
    pub memlock: Memlock,
    /// The effective configuration.
    pub config: Option<toml::Value>,
    /// Why the configuration does not load.
    pub config_error: Option<String>,
    /// The configuration as `wyvern agent --print-config` prints it.
    #[serde(skip)]
    pub config_toml: Option<String>,
    /// Bytes of the pool that configuration makes (the verbs transport
    /// registers, i.e. locks, all of it).
    pub pool_bytes: Option<u64>,
}

/// RDMA devices.
#[derive(Serialize)]
pub struct Rdma {
    /// Whether the `verbs` transport is built.
    pub built: bool,
    /// Devices with their ports (with `verbs`), or only names (from sysfs).
    pub devices: Vec<RdmaDevice>,
    /// Why the device list could not be read.
    pub error: Option<String>,
}

/// One RDMA device.
#[derive(Serialize)]
pub struct RdmaDevice {
    /// Name (`rxe0`, `mlx5_0`).
    pub name: String,
    /// Ports (with `verbs`).
    #[cfg(feature = "verbs")]
    pub ports: Vec<wyvern::transport::verbs::PortReport>,
    /// Why the device could not be opened.
    #[cfg(feature = "verbs")]
    pub error: Option<String>,
    /// Per RoCE port, the GID the verbs transport would address it by for
    /// this node (the configuration's node address), and why.
    #[cfg(feature = "verbs")]
    pub gid_chosen: Vec<GidChosen>,
}

/// The GID the verbs transport would choose on one port, and why.
#[cfg(feature = "verbs")]
#[derive(Serialize)]
pub struct GidChosen {
    /// The port.
    pub port: u8,
    /// Its index in the port's table.
    pub index: u32,
    /// Why (`wyvern::transport::verbs::GidChoice`).
    pub why: String,
}

/// DPDK as far as it can be seen without starting the EAL.
#[derive(Serialize)]
pub struct Dpdk {
    /// Whether the `dpdk` transport is built.
    pub built: bool,
    /// The DPDK version it was built against.
    pub built_with: Option<String>,
    /// The EAL library this process loaded.
    pub library: Option<String>,
    /// The directory DPDK loads its drivers from.
    pub drivers_dir: Option<String>,
    /// Network drivers found there that create virtual devices (`--vdev`).
    pub vdev_drivers: Vec<String>,
    /// Every network driver found there.
    pub net_drivers: Vec<String>,
    /// PCI functions bound to a DPDK kernel driver (vfio-pci, uio_pci_generic,
    /// igb_uio), as `address (driver)`.
    pub pci_bound: Vec<String>,
}

/// Hugepages by size.
#[derive(Serialize)]
pub struct Hugepages {
    /// The default size (kB), from /proc/meminfo.
    pub default_kb: Option<u64>,
    /// Per page size.
    pub sizes: Vec<HugeSize>,
    /// hugetlbfs mounts: (mount point, page size option).
    pub mounts: Vec<(String, String)>,
}

/// One hugepage size.
#[derive(Serialize)]
pub struct HugeSize {
    /// Page size in kB.
    pub kb: u64,
    /// System-wide pages.
    pub total: u64,
    /// Free pages.
    pub free: u64,
    /// Reserved (promised, not yet faulted in).
    pub reserved: u64,
    /// Surplus (overcommitted).
    pub surplus: u64,
    /// Per NUMA node: (node, total, free).
    pub nodes: Vec<(u32, u64, u64)>,
}

/// RLIMIT_MEMLOCK.
#[derive(Serialize)]
pub struct Memlock {
    /// Soft limit in bytes (`None`: unlimited).
    pub soft: Option<u64>,
    /// Hard limit in bytes (`None`: unlimited).
    pub hard: Option<u64>,
}

/// Gather everything. `config`: the effective agent configuration or the error
/// loading it gave.
pub fn gather(config: Result<AgentConfig, String>) -> Info {
    let mut features = Vec::new();
    let mut transports = vec!["tcp".to_string(), "udp".to_string()];
    if cfg!(feature = "dpdk") {
        features.push("dpdk".to_string());
        transports.push("dpdk".to_string());
    }
    if cfg!(feature = "verbs") {
        features.push("verbs".to_string());
        transports.push("verbs".to_string());
    }
    let config_toml = config.as_ref().ok().and_then(|c| toml::to_string(c).ok());
    let pool_bytes = config
        .as_ref()
        .ok()
        .and_then(|c| wyvern::shm::Layout::compute(c.pool).ok())
        .map(|l| l.total);
    // This node's address in the node list: the one its GID should carry.
    let address = config.as_ref().ok().and_then(|c| {
        let entry = c.nodes.get(c.node_id as usize)?;
        match entry.parse::<std::net::SocketAddr>().ok()?.ip() {
            std::net::IpAddr::V4(a) if !a.is_loopback() && !a.is_unspecified() => Some(a),
            _ => None,
        }
    });
    let config_value = config.and_then(|c| toml::Value::try_from(&c).map_err(|e| e.to_string()));
    let commit = Some(env!("WYVERN_GIT_COMMIT").to_string()).filter(|c| !c.is_empty());
    Info {
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit,
        features,
        transports,
        rdma: rdma(address),
        dpdk: dpdk(),
        hugepages: hugepages(Path::new("/sys"), Path::new("/proc")),
        memlock: memlock(),
        config: config_value.as_ref().ok().cloned(),
        config_error: config_value.err(),
        config_toml,
        pool_bytes,
    }
}

#[cfg(feature = "verbs")]
fn rdma(address: Option<std::net::Ipv4Addr>) -> Rdma {
    use wyvern::transport::verbs::{pick_gid, Gid, GidCandidate};
    match wyvern::transport::verbs::inventory() {
        Ok(devs) => Rdma {
            built: true,
            devices: devs
                .into_iter()
                .map(|d| {
                    let (ports, error) = match d.ports {
                        Ok(p) => (p, None),
                        Err(e) => (vec![], Some(e)),
                    };
                    // The verbs transport's own rule (`pick_gid`) on each RoCE port.
                    let gid_chosen = ports
                        .iter()
                        .filter(|p| p.link_layer == "Ethernet")
                        .filter_map(|p| {
                            let table: Vec<GidCandidate> = p
                                .gids
                                .iter()
                                .filter_map(|g| {
                                    Some(GidCandidate {
                                        index: g.index,
                                        gid: Gid(g
                                            .gid
                                            .parse::<std::net::Ipv6Addr>()
                                            .ok()?
                                            .octets()),
                                        kind: g.kind.clone(),
                                        netdev: g.netdev.clone(),
                                    })
                                })
                                .collect();
                            let (c, why) = pick_gid(&table, address)?;
                            Some(GidChosen {
                                port: p.port,
                                index: c.index,
                                why: why.to_string(),
                            })
                        })
                        .collect();
                    RdmaDevice {
                        name: d.name,
                        ports,
                        error,
                        gid_chosen,
                    }
                })
                .collect(),
            error: None,
        },
        Err(e) => Rdma {
            built: true,
            devices: vec![],
            error: Some(e.to_string()),
        },
    }
}

#[cfg(not(feature = "verbs"))]
fn rdma(_address: Option<std::net::Ipv4Addr>) -> Rdma {
    // Names only, from sysfs: the ports need libibverbs.
    let mut devices: Vec<RdmaDevice> = list_dir(Path::new("/sys/class/infiniband"))
        .into_iter()
        .map(|name| RdmaDevice { name })
        .collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Rdma {
        built: false,
        devices,
        error: None,
    }
}

/// Net PMD libraries (`librte_net_NAME.so`) that make virtual devices, with
/// the driver name `--vdev=` takes: they need no NIC.
const VDEV_DRIVERS: &[(&str, &str)] = &[
    ("af_packet", "net_af_packet"),
    ("af_xdp", "net_af_xdp"),
    ("bond", "net_bonding"),
    ("failsafe", "net_failsafe"),
    ("memif", "net_memif"),
    ("null", "net_null"),
    ("pcap", "net_pcap"),
    ("ring", "net_ring"),
    ("softnic", "net_softnic"),
    ("tap", "net_tap"),
    ("vhost", "net_vhost"),
    ("virtio", "net_virtio_user"),
];

fn dpdk() -> Dpdk {
    let built = cfg!(feature = "dpdk");
    let built_with = Some(env!("WYVERN_DPDK_BUILT_WITH").to_string()).filter(|v| !v.is_empty());
    // The EAL library this process has mapped (the binary links it when built with
    // `dpdk`); its drivers sit beside it in dpdk/pmds-<ABI>.
    let library = std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|m| {
            m.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .find(|p| {
                    Path::new(p)
                        .file_name()
                        .is_some_and(|f| f.to_string_lossy().starts_with("librte_eal.so"))
                })
                .map(String::from)
        });
    let drivers_dir = library.as_ref().and_then(|l| {
        let dir = Path::new(l).parent()?.join("dpdk");
        let mut pmds: Vec<String> = list_dir(&dir)
            .into_iter()
            .filter(|n| n.starts_with("pmds-"))
            .collect();
        pmds.sort();
        pmds.pop().map(|p| dir.join(p).display().to_string())
    });
    let mut net_drivers: Vec<String> = drivers_dir
        .as_ref()
        .map(|d| {
            list_dir(Path::new(d))
                .into_iter()
                .filter_map(|f| {
                    f.strip_prefix("librte_net_")
                        .and_then(|r| r.strip_suffix(".so"))
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    net_drivers.sort();
    let vdev_drivers = net_drivers
        .iter()
        .filter_map(|d| VDEV_DRIVERS.iter().find(|v| v.0 == d.as_str()))
        .map(|v| v.1.to_string())
        .collect();
    let mut pci_bound = Vec::new();
    for drv in ["vfio-pci", "uio_pci_generic", "igb_uio"] {
        for dev in list_dir(&Path::new("/sys/bus/pci/drivers").join(drv)) {
            // PCI addresses look like 0000:03:00.0; the rest are bind/unbind/new_id files.
            if dev.len() == 12 && dev.as_bytes()[4] == b':' {
                pci_bound.push(format!("{dev} ({drv})"));
            }
        }
    }
    Dpdk {
        built,
        built_with,
        library,
        drivers_dir,
        vdev_drivers,
        net_drivers,
        pci_bound,
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Hugepages from `sys` (/sys) and `proc` (/proc): arguments so a test can point
/// them at a made-up tree.
pub fn hugepages(sys: &Path, proc: &Path) -> Hugepages {
    let default_kb = std::fs::read_to_string(proc.join("meminfo"))
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        });
    let size_of = |name: &str| -> Option<u64> {
        name.strip_prefix("hugepages-")?
            .strip_suffix("kB")?
            .parse()
            .ok()
    };
    let global = sys.join("kernel/mm/hugepages");
    let mut per_node: BTreeMap<u64, Vec<(u32, u64, u64)>> = BTreeMap::new();
    let node_root = sys.join("devices/system/node");
    let mut nodes: Vec<(u32, PathBuf)> = list_dir(&node_root)
        .into_iter()
        .filter_map(|n| {
            let id = n.strip_prefix("node")?.parse().ok()?;
            Some((id, node_root.join(&n)))
        })
        .collect();
    nodes.sort();
    for (id, dir) in &nodes {
        let hp = dir.join("hugepages");
        for name in list_dir(&hp) {
            let Some(kb) = size_of(&name) else { continue };
            let d = hp.join(&name);
            per_node.entry(kb).or_default().push((
                *id,
                read_u64(&d.join("nr_hugepages")),
                read_u64(&d.join("free_hugepages")),
            ));
        }
    }
    let mut sizes: Vec<HugeSize> = list_dir(&global)
        .into_iter()
        .filter_map(|name| {
            let kb = size_of(&name)?;
            let d = global.join(&name);
            let mut nodes = per_node.remove(&kb).unwrap_or_default();
            nodes.sort();
            Some(HugeSize {
                kb,
                total: read_u64(&d.join("nr_hugepages")),
                free: read_u64(&d.join("free_hugepages")),
                reserved: read_u64(&d.join("resv_hugepages")),
                surplus: read_u64(&d.join("surplus_hugepages")),
                nodes,
            })
        })
        .collect();
    sizes.sort_by_key(|s| s.kb);
    let mounts = std::fs::read_to_string(proc.join("mounts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == "hugetlbfs").then(|| {
                let size = f[3]
                    .split(',')
                    .find_map(|o| o.strip_prefix("pagesize="))
                    .unwrap_or("default")
                    .to_string();
                (f[1].to_string(), size)
            })
        })
        .collect();
    Hugepages {
        default_kb,
        sizes,
        mounts,
    }
}

fn memlock() -> Memlock {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    let lim = |v: u64| (v != RLIM_INFINITY).then_some(v);
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((s, h)) => Memlock {
            soft: lim(s),
            hard: lim(h),
        },
        Err(_) => Memlock {
            soft: Some(0),
            hard: Some(0),
        },
    }
}

fn size(kb: u64) -> String {
    match kb {
        k if k >= 1 << 20 && k % (1 << 20) == 0 => format!("{} GiB", k >> 20),
        k if k >= 1 << 10 && k % (1 << 10) == 0 => format!("{} MiB", k >> 10),
        k => format!("{k} kB"),
    }
}

fn limit(v: Option<u64>) -> String {
    match v {
        None => "unlimited".into(),
        Some(b) if b >= 1 << 20 => format!("{} MiB", b >> 20),
        Some(b) => format!("{} KiB", b >> 10),
    }
}

impl Info {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let commit = match &self.commit {
            Some(c) => format!("commit {c}"),
            None => "commit not recorded (only release builds record it)".into(),
        };
        let _ = writeln!(o, "wyvern {} ({commit})", self.version);
        let feats = if self.features.is_empty() {
            "none".to_string()
        } else {
            self.features.join(", ")
        };
        let _ = writeln!(o, "features:   {feats}");
        let _ = writeln!(
            o,
            "transports: {} (several at once: --transports)",
            self.transports.join(", ")
        );

        let _ = writeln!(o, "\n# RDMA devices");
        if !self.rdma.built {
            let _ = writeln!(
                o,
                "  verbs transport not built (cargo build --features verbs); from sysfs:"
            );
        }
        if let Some(e) = &self.rdma.error {
            let _ = writeln!(o, "  none: {e}");
        } else if self.rdma.devices.is_empty() {
            let _ = writeln!(o, "  none found");
        }
        for d in &self.rdma.devices {
            render_rdma_device(&mut o, d);
        }

        let _ = writeln!(o, "\n# DPDK");
        let d = &self.dpdk;
        if !d.built {
            let _ = writeln!(
                o,
                "  dpdk transport not built (cargo build --features dpdk)"
            );
        } else {
            let _ = writeln!(
                o,
                "  built against: DPDK {}",
                d.built_with.as_deref().unwrap_or("?")
            );
            let _ = writeln!(
                o,
                "  library:       {}",
                d.library
                    .as_deref()
                    .unwrap_or("not found among this process's mappings")
            );
            let _ = writeln!(
                o,
                "  drivers:       {} ({} network drivers)",
                d.drivers_dir.as_deref().unwrap_or("not found"),
                d.net_drivers.len()
            );
            let v = if d.vdev_drivers.is_empty() {
                "none".to_string()
            } else {
                d.vdev_drivers.join(" ")
            };
            let _ = writeln!(o, "  vdev drivers:  {v}");
            let p = if d.pci_bound.is_empty() {
                "none".to_string()
            } else {
                d.pci_bound.join(", ")
            };
            let _ = writeln!(o, "  PCI bound to a DPDK driver: {p}");
            let _ = writeln!(
                o,
                "  ports:         not probed (`info` does not start the EAL; the agent does, with --dpdk-eal-args)"
            );
        }

        let _ = writeln!(o, "\n# Hugepages");
        let h = &self.hugepages;
        let _ = writeln!(
            o,
            "  default size: {}",
            h.default_kb.map_or("unknown".into(), size)
        );
        let _ = writeln!(
            o,
            "  {:<9} {:<6} {:>8} {:>8} {:>9} {:>8}",
            "size", "node", "total", "free", "reserved", "surplus"
        );
        for s in &h.sizes {
            let _ = writeln!(
                o,
                "  {:<9} {:<6} {:>8} {:>8} {:>9} {:>8}",
                size(s.kb),
                "all",
                s.total,
                s.free,
                s.reserved,
                s.surplus
            );
            for (n, t, f) in &s.nodes {
                let _ = writeln!(
                    o,
                    "  {:<9} {:<6} {:>8} {:>8}",
                    size(s.kb),
                    format!("node{n}"),
                    t,
                    f
                );
            }
        }
        if h.sizes.is_empty() {
            let _ = writeln!(o, "  no hugepage sizes in sysfs (kernel without hugetlb)");
        }
        if h.mounts.is_empty() {
            let _ = writeln!(o, "  hugetlbfs: not mounted");
        }
        for (m, sz) in &h.mounts {
            let _ = writeln!(o, "  hugetlbfs: {m} (pagesize {sz})");
        }

        let _ = writeln!(o, "\n# Memory locking");
        let _ = writeln!(
            o,
            "  RLIMIT_MEMLOCK: soft {}, hard {}",
            limit(self.memlock.soft),
            limit(self.memlock.hard)
        );
        if let Some(b) = self.pool_bytes {
            let verdict = match self.memlock.soft {
                None => "within the limit",
                Some(l) if l >= b => "within the limit",
                Some(_) => {
                    "above the limit: raise it (ulimit -l, LimitMEMLOCK=) for the verbs transport"
                }
            };
            let _ = writeln!(
                o,
                "  the configuration's pool: {} MiB, which the verbs transport registers (locks): {verdict}",
                b >> 20
            );
        }

        let _ = writeln!(
            o,
            "\n# Effective configuration (-c FILE and flags, as `wyvern agent` would run)"
        );
        if let Some(t) = &self.config_toml {
            for l in t.lines() {
                let _ = writeln!(o, "  {l}");
            }
        }
        if let Some(e) = &self.config_error {
            let _ = writeln!(o, "  does not load: {e}");
        }
        o
    }
}

#[cfg(feature = "verbs")]
fn render_rdma_device(o: &mut String, d: &RdmaDevice) {
    if let Some(e) = &d.error {
        let _ = writeln!(o, "  {}: cannot open: {e}", d.name);
    }
    for p in &d.ports {
        let _ = writeln!(
            o,
            "  {}:{}  {}  {}  MTU {}{}",
            d.name,
            p.port,
            p.state,
            if p.link_layer == "Ethernet" {
                "RoCE (Ethernet)"
            } else {
                "InfiniBand"
            },
            p.mtu,
            if p.lid != 0 {
                format!("  LID {}", p.lid)
            } else {
                String::new()
            }
        );
        for g in &p.gids {
            let _ = writeln!(
                o,
                "    GID {:<3} {:<40} {:<11} {}",
                g.index,
                g.gid,
                g.kind.as_deref().unwrap_or("-"),
                g.netdev.as_deref().unwrap_or("-")
            );
        }
        for c in d.gid_chosen.iter().filter(|c| c.port == p.port) {
            let _ = writeln!(o, "    verbs would use GID {}: {}", c.index, c.why);
        }
    }
}

#[cfg(not(feature = "verbs"))]
fn render_rdma_device(o: &mut String, d: &RdmaDevice) {
    let _ = writeln!(o, "  {}", d.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugepages_are_read_per_size_and_node_from_a_made_up_tree() {
        let t = tempfile::tempdir().unwrap();
        let w = |p: &str, v: &str| {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        for (f, v) in [
            ("nr_hugepages", "8\n"),
            ("free_hugepages", "5\n"),
            ("resv_hugepages", "1\n"),
            ("surplus_hugepages", "0\n"),
        ] {
            w(&format!("sys/kernel/mm/hugepages/hugepages-2048kB/{f}"), v);
            w(
                &format!("sys/kernel/mm/hugepages/hugepages-1048576kB/{f}"),
                "0\n",
            );
        }
        for (n, tot, free) in [(0, "6", "4"), (1, "2", "1")] {
            let d = format!("sys/devices/system/node/node{n}/hugepages/hugepages-2048kB");
            w(&format!("{d}/nr_hugepages"), tot);
            w(&format!("{d}/free_hugepages"), free);
        }
        w(
            "proc/meminfo",
            "MemTotal: 1 kB\nHugepagesize:       2048 kB\n",
        );
        w(
            "proc/mounts",
            "proc /proc proc rw 0 0\nnodev /mnt/huge1G hugetlbfs rw,pagesize=1024M 0 0\n",
        );
        let h = hugepages(&t.path().join("sys"), &t.path().join("proc"));
        assert_eq!(h.default_kb, Some(2048));
        assert_eq!(h.sizes.len(), 2);
        let s = &h.sizes[0];
        assert_eq!((s.kb, s.total, s.free, s.reserved), (2048, 8, 5, 1));
        assert_eq!(s.nodes, vec![(0, 6, 4), (1, 2, 1)]);
        assert_eq!(h.sizes[1].kb, 1 << 20);
        assert_eq!(
            h.mounts,
            vec![("/mnt/huge1G".to_string(), "1024M".to_string())]
        );
    }
}
