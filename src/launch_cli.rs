//! `wyvern launch` (this node's agent under Slurm or from a nodes file) and
//! `wyvern wait` (until the local agent sees every peer up).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use wyvern::launch::{self, hostlist, NodeEntry, SlurmEnv};

use wyvern::config::AgentArgs;

/// `wyvern launch`.
#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Base port: a node's agent listens on it, plus the number of earlier
    /// nodes in the list on the same host (several nodes on one machine).
    #[arg(long, default_value_t = launch::DEFAULT_PORT)]
    port: u16,
    /// Without Slurm: a file with one `host` or `host:port` a line (`#`
    /// comments), by node id.
    #[arg(long)]
    nodes_file: Option<PathBuf>,
    /// A hostlist expression (`node[01-04]`) instead of SLURM_JOB_NODELIST.
    #[arg(long)]
    hostlist: Option<String>,
    /// Print this node's control socket path and exit (for application
    /// steps: `export WYVERN_SOCKET=$(wyvern launch --print-socket)`).
    #[arg(long)]
    print_socket: bool,
    /// Print this node's id, the node list and the socket, and exit.
    #[arg(long)]
    dry_run: bool,
    /// Print a new random job key (64 hex digits) and exit. Agents of a job
    /// must share one key: make it once where the job starts and hand it to
    /// every task through the environment, e.g. in the batch script
    /// `export WYVERN_JOB_KEY=$(wyvern launch --print-key)` before `srun`
    /// (Slurm passes the environment on to every task), or write it to a
    /// mode-600 file on a shared file system for `--job-key-file`.
    #[arg(long)]
    print_key: bool,
    /// Every `wyvern agent` flag.
    #[command(flatten)]
    agent: AgentArgs,
}

/// Node id, entries and socket for this node (no address resolution).
struct Plan {
    node_id: u32,
    /// The node list is the job's (not --nodes, --nodes-file, --hostlist).
    from_slurm: bool,
    entries: Vec<NodeEntry>,
    socket: PathBuf,
    slurm: Option<SlurmEnv>,
}

/// This machine's host name (the kernel's: uname's nodename).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

fn plan(a: &LaunchArgs) -> Result<Plan, String> {
    let slurm = SlurmEnv::from_process();
    let entries: Vec<NodeEntry> = if let Some(n) = &a.agent.nodes {
        n.iter()
            .map(|s| NodeEntry::parse(s))
            .collect::<Result<_, _>>()?
    } else if let Some(f) = &a.nodes_file {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        launch::parse_nodes_file(&text).map_err(|e| format!("{}: {e}", f.display()))?
    } else {
        let expr = match (&a.hostlist, &slurm) {
            (Some(h), _) => h.clone(),
            (None, Some(s)) => s.nodelist.clone(),
            (None, None) => return Err(
                "not under Slurm (no SLURM_JOB_NODELIST): give --nodes-file, --hostlist or --nodes"
                    .into(),
            ),
        };
        let hosts = hostlist::expand(&expr).map_err(|e| e.to_string())?;
        if hosts.is_empty() {
            return Err(format!("hostlist {expr:?} names no node"));
        }
        hosts
            .into_iter()
            .map(|host| NodeEntry { host, port: None })
            .collect()
    };
    let node_id = match a.agent.node_id {
        Some(id) => id,
        None => {
            let hosts: Vec<String> = entries.iter().map(|e| e.host.clone()).collect();
            launch::find_self(&hosts, slurm.as_ref(), &hostname())?
        }
    };
    if node_id as usize >= entries.len() {
        return Err(format!(
            "node id {node_id} is not in the node list of {} nodes",
            entries.len()
        ));
    }
    // The socket: the flag (or WYVERN_AGENT_SOCKET), else the configuration
    // file's `socket` if it sets one (a site's file names the directory
    // client containers mount), else the job's default path.
    let from_file = a
        .agent
        .config
        .as_ref()
        .and_then(|p| wyvern::agent::config::AgentConfig::load(p).ok())
        .map(|c| c.socket)
        .filter(|s| *s != wyvern::agent::config::default_socket(0));
    let socket = a.agent.socket.clone().or(from_file).unwrap_or_else(|| {
        launch::socket_path(slurm.as_ref().and_then(|s| s.job_id.as_deref()), node_id)
    });
    let from_slurm = a.agent.nodes.is_none() && a.nodes_file.is_none() && a.hostlist.is_none();
    Ok(Plan {
        node_id,
        from_slurm,
        entries,
        socket,
        slurm,
    })
}

pub fn run_launch(mut a: LaunchArgs) -> ExitCode {
    if a.print_key {
        return match wyvern::wire::auth::JobKey::generate() {
            Ok(k) => {
                println!("{}", k.to_hex());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wyvern launch: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let p = match plan(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wyvern launch: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.print_socket {
        println!("{}", p.socket.display());
        return ExitCode::SUCCESS;
    }
    if let Some(e) = p
        .slurm
        .as_ref()
        .filter(|_| p.from_slurm)
        .and_then(launch::extra_task)
    {
        eprintln!("wyvern launch: {e}");
        return ExitCode::FAILURE;
    }
    let addrs = if p.slurm.is_some() {
        launch::assign_addresses(&p.entries, a.port, launch::slurm_resolver())
    } else {
        launch::assign_addresses(&p.entries, a.port, launch::resolve_dns)
    };
    let addrs = match addrs {
        Ok(v) => v,
        Err(e) => {
            eprintln!("wyvern launch: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(w) = launch::loopback_warning(&addrs, p.node_id) {
        log::warn!("wyvern launch: {w}");
    }
    let nodes: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    if a.dry_run {
        println!("node_id {}", p.node_id);
        println!("socket {}", p.socket.display());
        for (i, (e, n)) in p.entries.iter().zip(&nodes).enumerate() {
            println!("node {i} {} {n}", e.host);
        }
        return ExitCode::SUCCESS;
    }
    log::info!(
        "wyvern launch: node {} of {} ({}), agents at {}, socket {}",
        p.node_id,
        nodes.len(),
        p.entries[p.node_id as usize].host,
        nodes.join(","),
        p.socket.display()
    );
    a.agent.node_id = Some(p.node_id);
    a.agent.nodes = Some(nodes);
    // Agents of one Slurm job know each other by its id (agents of other
    // jobs sharing these hosts are refused).
    if a.agent.job.is_none() {
        a.agent.job = p
            .slurm
            .as_ref()
            .and_then(|s| s.job_id.as_ref())
            .map(|id| format!("slurm-{id}"));
    }
    a.agent.socket = Some(p.socket);
    crate::run_agent(a.agent)
}

/// `wyvern wait`.
#[derive(clap::Args)]
pub struct WaitArgs {
    /// The agent's control socket (default: $WYVERN_SOCKET, else the path
    /// `wyvern launch` uses for this node).
    #[arg(long, short)]
    socket: Option<PathBuf>,
    /// Node id, when not under Slurm (picks the default socket of that node).
    #[arg(long)]
    node_id: Option<u32>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
    /// Only wait for this node's agent to answer, not for links to every
    /// peer (on-demand links are then made by the first messages: for jobs
    /// of thousands of nodes).
    #[arg(long)]
    local: bool,
}

/// The control socket a client subcommand (`wait`, `stat`, `break-link`, ...)
/// talks to: `socket` if given, else `$WYVERN_SOCKET`, else the path `wyvern
/// launch` uses for this node (under Slurm: the job's socket of this node,
/// `node_id` or the one Slurm names; otherwise the default socket of
/// `node_id`, 0 if none). The flag says whether it was named (`--socket`,
/// `WYVERN_SOCKET`) rather than derived.
pub fn client_socket(
    socket: Option<&std::path::Path>,
    node_id: Option<u32>,
) -> Result<(PathBuf, bool), String> {
    if let Some(s) = socket {
        return Ok((s.to_path_buf(), true));
    }
    if let Some(s) = std::env::var_os("WYVERN_SOCKET").filter(|s| !s.is_empty()) {
        return Ok((s.into(), true));
    }
    let args = LaunchArgs {
        port: launch::DEFAULT_PORT,
        nodes_file: None,
        hostlist: None,
        print_socket: true,
        dry_run: false,
        print_key: false,
        agent: AgentArgs {
            node_id,
            ..AgentArgs::default()
        },
    };
    match (SlurmEnv::from_process(), node_id) {
        (Some(_), _) => plan(&args).map(|p| (p.socket, false)),
        (None, id) => Ok((launch::socket_path(None, id.unwrap_or(0)), false)),
    }
}

pub fn run_wait(w: WaitArgs) -> ExitCode {
    let socket = match client_socket(w.socket.as_deref(), w.node_id) {
        Ok((s, _)) => s,
        Err(e) => {
            eprintln!("wyvern wait: {e}");
            return ExitCode::FAILURE;
        }
    };
    let t = Duration::from_secs_f64(w.timeout.max(0.0));
    let quiet = w.quiet;
    let r = launch::wait_ready(&socket, t, w.local, |l| {
        if !quiet {
            eprintln!("wyvern wait: {l}");
        }
    });
    match r {
        Ok((node, peers)) => {
            if w.local {
                println!(
                    "wyvern wait: agent node {node} ready, {peers} peers ({})",
                    socket.display()
                );
            } else {
                println!(
                    "wyvern wait: agent node {node} ready, {peers} peers up ({})",
                    socket.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wyvern wait: {e}");
            ExitCode::FAILURE
        }
    }
}
