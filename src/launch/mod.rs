//! Starting agents under a job scheduler (`wyvern launch`) and waiting for
//! them (`wyvern wait`): which node this is, every node's agent address,
//! the control socket clients find, and readiness.
//!
//! - The node list comes from Slurm (`SLURM_JOB_NODELIST`, else
//!   `SLURM_STEP_NODELIST`, expanded by [`hostlist::expand`]) or from a nodes
//!   file (one `host` or `host:port` a line, `#` comments).
//! - This node's id is its index in that list: found by `SLURMD_NODENAME`,
//!   else `SLURM_NODEID`, else the host name (see [`find_self`]).
//! - Addresses are `ip:port`. Entries without a port get the base port
//!   (default [`DEFAULT_PORT`]) plus the number of earlier port-less entries
//!   that resolve to the same address ([`assign_addresses`]), so that several
//!   "nodes" on one machine (a test setup, oversubscribed nodes) do not
//!   collide. Every node computes the same list.
//! - The control socket: [`socket_path`] (per job and node id under Slurm).

pub mod hostlist;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The base port agents listen on when none is given.
pub const DEFAULT_PORT: u16 = 7470;

/// What a Slurm step's environment says about the job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlurmEnv {
    /// `SLURM_JOB_ID`.
    pub job_id: Option<String>,
    /// `SLURM_JOB_NODELIST`, else `SLURM_STEP_NODELIST` (a hostlist
    /// expression).
    pub nodelist: String,
    /// `SLURMD_NODENAME`: the Slurm name of the node this task runs on.
    pub nodename: Option<String>,
    /// `SLURM_NODEID`: the node's index in the step (equal to its index in
    /// the job when the step spans the whole job).
    pub nodeid: Option<u32>,
    /// `SLURM_LOCALID`: the task's index on its node.
    pub localid: Option<u32>,
}

impl SlurmEnv {
    /// Read it through `get` (`std::env::var` in real use); `None` when no
    /// node list is set (not under Slurm).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Option<SlurmEnv> {
        let nodelist = get("SLURM_JOB_NODELIST")
            .or_else(|| get("SLURM_STEP_NODELIST"))
            .filter(|s| !s.trim().is_empty())?;
        let num = |k: &str| get(k).and_then(|v| v.trim().parse().ok());
        Some(SlurmEnv {
            job_id: get("SLURM_JOB_ID").filter(|s| !s.is_empty()),
            nodelist,
            nodename: get("SLURMD_NODENAME").filter(|s| !s.is_empty()),
            nodeid: num("SLURM_NODEID"),
            localid: num("SLURM_LOCALID"),
        })
    }

    /// From this process's environment.
    pub fn from_process() -> Option<SlurmEnv> {
        SlurmEnv::read(|k| std::env::var(k).ok())
    }
}

/// Why this task must not start an agent: it is not the first task on its
/// node (`SLURM_LOCALID` > 0), so another agent would take the same node id.
/// (`--print-socket` and `wyvern wait` work from any task.)
pub fn extra_task(s: &SlurmEnv) -> Option<String> {
    s.localid.filter(|&l| l > 0).map(|l| {
        format!(
            "one agent per node: this is local task {l} on its node; run the launch step with --ntasks-per-node=1"
        )
    })
}

/// One entry of the node list: a host and maybe a port of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    /// Host name or address.
    pub host: String,
    /// Port, when the entry gave one.
    pub port: Option<u16>,
}

impl NodeEntry {
    /// `host`, `host:port`, `[v6]` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<NodeEntry, String> {
        let s = s.trim();
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{s:?}: bad port {p:?}"))
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: '[' without ']'"))?;
            match tail {
                "" => (h, None),
                t => match t.strip_prefix(':') {
                    Some(p) => (h, Some(port(p)?)),
                    None => return Err(format!("{s:?}: junk after ']'")),
                },
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(port(p)?)),
                Some(_) => (s, None), // a bare IPv6 address
                None => (s, None),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{s:?}: bad host"));
        }
        Ok(NodeEntry {
            host: host.to_string(),
            port,
        })
    }
}

/// A nodes file: one `host` or `host:port` a line; `#` starts a comment,
/// blank lines are skipped.
pub fn parse_nodes_file(text: &str) -> Result<Vec<NodeEntry>, String> {
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        v.push(NodeEntry::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    if v.is_empty() {
        return Err("no nodes in it".into());
    }
    Ok(v)
}

/// This node's index in `hosts`: `SLURMD_NODENAME`'s position, else
/// `SLURM_NODEID`, else the position of `hostname` (full or short form;
/// refused when the host appears more than once, as then only an explicit
/// id can tell).
pub fn find_self(
    hosts: &[String],
    slurm: Option<&SlurmEnv>,
    hostname: &str,
) -> Result<u32, String> {
    if let Some(s) = slurm {
        if let Some(name) = &s.nodename {
            if let Some(i) = hosts.iter().position(|h| h == name) {
                return Ok(i as u32);
            }
        }
        if let Some(id) = s.nodeid {
            if (id as usize) < hosts.len() {
                return Ok(id);
            }
        }
    }
    let short = |h: &str| h.split('.').next().unwrap_or(h).to_string();
    let matches: Vec<usize> = hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| *h == hostname || short(h) == short(hostname))
        .map(|(i, _)| i)
        .collect();
    match matches[..] {
        [i] => Ok(i as u32),
        [] => Err(format!(
            "cannot tell which node this is: host {hostname:?} is not in the node list {hosts:?}{}; give --node-id",
            if slurm.is_some() { " and neither SLURMD_NODENAME nor SLURM_NODEID place it" } else { "" }
        )),
        _ => Err(format!(
            "cannot tell which node this is: host {hostname:?} appears {} times in the node list; give --node-id",
            matches.len()
        )),
    }
}

/// Every node's agent address, by node id. `resolve` maps a host to its
/// address. An entry with a port keeps it; the others get `base` plus the
/// number of earlier port-less entries resolving to the same address.
pub fn assign_addresses(
    entries: &[NodeEntry],
    base: u16,
    mut resolve: impl FnMut(&str) -> Result<IpAddr, String>,
) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::with_capacity(entries.len());
    let mut seen: Vec<IpAddr> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ip = resolve(&e.host).map_err(|why| format!("node {i} ({}): {why}", e.host))?;
        let port = match e.port {
            Some(p) => p,
            None => {
                let earlier = seen.iter().filter(|&&a| a == ip).count();
                seen.push(ip);
                u16::try_from(base as usize + earlier).map_err(|_| {
                    format!("node {i} ({}): port {base} + {earlier} overflows", e.host)
                })?
            }
        };
        out.push(SocketAddr::new(ip, port));
    }
    Ok(out)
}

/// A warning when this node's own address is a loopback one while another
/// node's is not: its agent would listen where no other node can reach it
/// (typically a host name mapped to 127.0.1.1 in its own /etc/hosts).
pub fn loopback_warning(addrs: &[SocketAddr], me: u32) -> Option<String> {
    let mine = addrs.get(me as usize)?;
    let other = addrs.iter().find(|a| !a.ip().is_loopback())?;
    mine.ip().is_loopback().then(|| {
        format!(
            "this node's address {mine} is a loopback address but node addresses such as {other} are not: \
             other nodes cannot reach this agent (does this host resolve its own name to 127.0.x.x? \
             use --nodes-file with addresses)"
        )
    })
}

/// Resolve a host name by DNS, IPv4 preferred.
pub fn resolve_dns(host: &str) -> Result<IpAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (host, 0u16)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip())
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

/// `NodeName` → `NodeAddr` pairs from `scontrol -o show node` output.
pub fn parse_node_addrs(scontrol: &str) -> Vec<(String, String)> {
    scontrol
        .lines()
        .filter_map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .map(str::to_string)
            };
            Some((field("NodeName=")?, field("NodeAddr=")?))
        })
        .collect()
}

/// Resolve Slurm node names: by DNS, and for names DNS does not know (node
/// names that are not host names, as in a one-machine test cluster) by the
/// `NodeAddr` Slurm has for them (one `scontrol -o show node` call).
pub fn slurm_resolver() -> impl FnMut(&str) -> Result<IpAddr, String> {
    let mut table: Option<Vec<(String, String)>> = None;
    move |host: &str| {
        let dns_err = match resolve_dns(host) {
            Ok(ip) => return Ok(ip),
            Err(e) => e,
        };
        let t = table.get_or_insert_with(|| {
            std::process::Command::new("scontrol")
                .args(["-o", "show", "node"])
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| parse_node_addrs(&String::from_utf8_lossy(&o.stdout)))
                .unwrap_or_default()
        });
        let addr = t
            .iter()
            .find(|(n, _)| n == host)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| format!("{dns_err}, and scontrol knows no NodeAddr for it"))?;
        resolve_dns(&addr).map_err(|e| format!("NodeAddr {addr}: {e}"))
    }
}

/// The control socket of node `node_id`'s agent. Under Slurm (a job id):
/// `wyvern-job<JOB>-<node_id>.sock` in the user's private socket directory
/// ([`crate::agent::config::default_socket_dir`]), the same path in every
/// step of the job on that node; otherwise the agent's usual default
/// ([`crate::agent::config::default_socket`]).
pub fn socket_path(job_id: Option<&str>, node_id: u32) -> PathBuf {
    match job_id {
        Some(j) => {
            crate::agent::config::default_socket_dir().join(format!("wyvern-job{j}-{node_id}.sock"))
        }
        None => crate::agent::config::default_socket(node_id),
    }
}

/// Wait until the agent at `socket` answers and sees every peer up (with
/// on-demand links, it is asked once to connect to them all); with `local`,
/// until it answers. Calls `progress` with a line whenever the situation
/// changes (and every 5 s). Returns the agent's node id and peer count.
pub fn wait_ready(
    socket: &Path,
    timeout: Duration,
    local: bool,
    mut progress: impl FnMut(&str),
) -> Result<(u32, usize), String> {
    let start = Instant::now();
    let mut last = String::new();
    let mut last_at = start;
    let mut asked = false;
    loop {
        let status = match crate::client::stat(socket) {
            Ok(s) if local => return Ok((s.node, s.peers.len())),
            Ok(s) => {
                // (`closed`: its link was closed for idleness; made again
                // as an idle one's.)
                if !asked
                    && s.peers
                        .iter()
                        .any(|p| p.state == "idle" || p.state == "closed")
                {
                    asked = true;
                    if let Err(e) = crate::client::connect_peers(socket, None) {
                        return Err(format!("cannot ask the agent to connect: {e}"));
                    }
                }
                let down: Vec<String> = s
                    .peers
                    .iter()
                    .filter(|p| p.state != "up")
                    .map(|p| format!("node {} {}", p.node, p.state))
                    .collect();
                let n = s.peers.len();
                if down.is_empty() {
                    return Ok((s.node, n));
                }
                format!(
                    "agent node {}: {}/{} peers up; waiting for {}",
                    s.node,
                    n - down.len(),
                    n,
                    down.join(", ")
                )
            }
            // Waiting does not make an agent of another user let us in.
            Err(
                e @ (crate::client::Error::PermissionDenied { .. }
                | crate::client::Error::WrongAgent { .. }),
            ) => return Err(e.to_string()),
            Err(crate::client::Error::Refused(m)) if m.starts_with("permission denied") => {
                return Err(m)
            }
            Err(e) => format!("no agent answers at {} yet ({e})", socket.display()),
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(format!(
                "not ready after {:.1} s: {status}",
                timeout.as_secs_f64()
            ));
        }
        if status != last || last_at.elapsed() >= Duration::from_secs(5) {
            progress(&format!("[{:.1} s] {status}", waited.as_secs_f64()));
            last = status;
            last_at = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50).min(timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |k| v.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
    }

    fn hosts(e: &str) -> Vec<String> {
        hostlist::expand(e).unwrap()
    }

    #[test]
    fn slurm_env_prefers_the_job_list() {
        assert_eq!(SlurmEnv::read(env(&[("SLURM_NODEID", "1")])), None);
        let s = SlurmEnv::read(env(&[
            ("SLURM_JOB_NODELIST", "n[1-2]"),
            ("SLURM_STEP_NODELIST", "n2"),
            ("SLURM_JOB_ID", "42"),
            ("SLURMD_NODENAME", "n2"),
            ("SLURM_NODEID", "0"),
            ("SLURM_LOCALID", "0"),
        ]))
        .unwrap();
        assert_eq!(s.nodelist, "n[1-2]");
        assert_eq!(s.job_id.as_deref(), Some("42"));
        assert_eq!(s.nodeid, Some(0));
        assert_eq!(extra_task(&s), None);
        let s = SlurmEnv::read(env(&[
            ("SLURM_STEP_NODELIST", "a,b"),
            ("SLURM_LOCALID", "1"),
        ]))
        .unwrap();
        assert_eq!(s.nodelist, "a,b");
        assert_eq!(s.nodename, None);
        assert!(extra_task(&s).unwrap().contains("--ntasks-per-node=1"));
    }

    #[test]
    fn node_id_by_nodename_then_nodeid_then_hostname() {
        let h = hosts("n[1-3]");
        let mut s = SlurmEnv {
            nodelist: "n[1-3]".into(),
            nodename: Some("n3".into()),
            nodeid: Some(0),
            ..SlurmEnv::default()
        };
        // The node name wins over SLURM_NODEID (step-relative).
        assert_eq!(find_self(&h, Some(&s), "vm"), Ok(2));
        s.nodename = Some("elsewhere".into());
        assert_eq!(find_self(&h, Some(&s), "vm"), Ok(0));
        s.nodeid = Some(7);
        assert!(find_self(&h, Some(&s), "vm").is_err());
        assert_eq!(find_self(&h, Some(&s), "n2"), Ok(1));
        // Host names: full or short form; ambiguous ones are refused.
        let h = vec!["a.x.org".to_string(), "b.x.org".to_string()];
        assert_eq!(find_self(&h, None, "b"), Ok(1));
        assert_eq!(find_self(&h, None, "b.x.org"), Ok(1));
        let e = find_self(&h, None, "c").unwrap_err();
        assert!(e.contains("--node-id"), "{e}");
        let h = vec!["vm".to_string(), "vm".to_string()];
        assert!(find_self(&h, None, "vm").unwrap_err().contains("2 times"));
    }

    #[test]
    fn same_host_nodes_get_consecutive_ports() {
        let entries: Vec<NodeEntry> = hosts("n[1-3],gpu[08-09]")
            .into_iter()
            .map(|host| NodeEntry { host, port: None })
            .collect();
        // n1..n3 share a machine; gpu08 and gpu09 are machines of their own.
        let ip = |h: &str| -> Result<IpAddr, String> {
            Ok(match h {
                "gpu08" => "10.0.0.8".parse().unwrap(),
                "gpu09" => "10.0.0.9".parse().unwrap(),
                _ => "127.0.0.1".parse().unwrap(),
            })
        };
        let a = assign_addresses(&entries, 7470, ip).unwrap();
        let s: Vec<String> = a.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            s,
            [
                "127.0.0.1:7470",
                "127.0.0.1:7471",
                "127.0.0.1:7472",
                "10.0.0.8:7470",
                "10.0.0.9:7470"
            ]
        );
        // Explicit ports are kept and do not count.
        let entries = vec![
            NodeEntry::parse("a:9000").unwrap(),
            NodeEntry::parse("a").unwrap(),
            NodeEntry::parse("a").unwrap(),
        ];
        let a = assign_addresses(&entries, 7470, |_| Ok("10.1.1.1".parse().unwrap())).unwrap();
        assert_eq!(
            a.iter().map(|a| a.port()).collect::<Vec<_>>(),
            [9000, 7470, 7471]
        );
        let e = assign_addresses(&entries, 7470, |h| Err(format!("no {h}"))).unwrap_err();
        assert!(e.contains("node 0 (a)"), "{e}");
        let many = vec![NodeEntry::parse("a").unwrap(); 3];
        assert!(assign_addresses(&many, 65535, |_| Ok("10.1.1.1".parse().unwrap())).is_err());
    }

    #[test]
    fn own_loopback_address_among_real_ones_is_flagged() {
        let a: Vec<SocketAddr> = vec![
            "127.0.1.1:7470".parse().unwrap(),
            "10.0.0.2:7470".parse().unwrap(),
        ];
        assert!(loopback_warning(&a, 0).unwrap().contains("127.0.1.1"));
        assert_eq!(loopback_warning(&a, 1), None);
        let l: Vec<SocketAddr> = vec!["127.0.0.1:7470".parse().unwrap(); 2];
        assert_eq!(loopback_warning(&l, 0), None);
    }

    #[test]
    fn nodes_file_entries() {
        let f =
            "# the job\nnode01\nnode02:7000   # a port of its own\n\n[::1]:7001\n10.0.0.3\n::1\n";
        let v = parse_nodes_file(f).unwrap();
        let got: Vec<(&str, Option<u16>)> = v.iter().map(|e| (e.host.as_str(), e.port)).collect();
        assert_eq!(
            got,
            [
                ("node01", None),
                ("node02", Some(7000)),
                ("::1", Some(7001)),
                ("10.0.0.3", None),
                ("::1", None)
            ]
        );
        assert!(parse_nodes_file("# nothing\n").is_err());
        let e = parse_nodes_file("a\nb:x\n").unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
    }

    #[test]
    fn scontrol_node_addrs() {
        let out = "NodeName=n1 Arch=x86_64 CoresPerSocket=2 NodeAddr=127.0.0.1 NodeHostName=vm Port=16818\n\
                   NodeName=n2 NodeAddr=10.0.0.2 NodeHostName=vm\n";
        assert_eq!(
            parse_node_addrs(out),
            [
                ("n1".to_string(), "127.0.0.1".to_string()),
                ("n2".to_string(), "10.0.0.2".to_string())
            ]
        );
    }

    #[test]
    fn socket_paths_are_per_job_and_node() {
        let a = socket_path(Some("17"), 0);
        let b = socket_path(Some("17"), 1);
        assert_ne!(a, b);
        assert!(
            a.to_string_lossy().ends_with("wyvern-job17-0.sock"),
            "{a:?}"
        );
        assert_eq!(
            socket_path(None, 3),
            crate::agent::config::default_socket(3)
        );
    }

    #[test]
    fn wait_times_out_with_a_clear_error() {
        let mut lines = Vec::new();
        let e = wait_ready(
            Path::new("/nonexistent/wyvern.sock"),
            Duration::from_millis(200),
            false,
            |l| lines.push(l.to_string()),
        )
        .unwrap_err();
        assert!(
            e.contains("not ready after") && e.contains("/nonexistent/wyvern.sock"),
            "{e}"
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
    }
}
