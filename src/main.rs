//! `wyvern`: the agent, its statistics, and a demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use wyvern::agent::config::{default_socket, TransportKind};
use wyvern::agent::{Agent, AgentConfig, ConnectPolicy, IdlePolicy};

mod demo;
mod launch_cli;
mod stat_cli;
mod tools;

#[derive(Parser)]
#[command(
    name = "wyvern",
    version,
    about = "A kernel-bypass transport agent for HPC nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run this node's agent.
    Agent(Box<AgentArgs>),
    /// Run this node's agent as part of a job: node list, node id, addresses
    /// and socket from Slurm (SLURM_JOB_NODELIST, SLURMD_NODENAME) or a
    /// nodes file; every `agent` flag passes through.
    Launch(Box<launch_cli::LaunchArgs>),
    /// Wait until the local agent answers and every peer is up.
    Wait(launch_cli::WaitArgs),
    /// Break an agent's connection to one peer, as a network fault would
    /// (fault injection; the session resumes over a new connection). On the
    /// verbs transport the link's queue pair is forced into the error state.
    BreakLink {
        /// The agent's control socket (default: $WYVERN_SOCKET, else the path
        /// `wyvern launch` uses for this node: the job's socket under Slurm).
        #[arg(long, short)]
        socket: Option<PathBuf>,
        /// Node id, when not under Slurm (picks the default socket of that node).
        #[arg(long)]
        node_id: Option<u32>,
        /// The peer node whose connection to break.
        #[arg(long)]
        peer: u32,
    },
    /// Have an agent make its links now (to one peer, or to all) rather
    /// than on the first message to each (on-demand links).
    Connect {
        /// The agent's control socket (default: $WYVERN_SOCKET, else the path
        /// `wyvern launch` uses for this node: the job's socket under Slurm).
        #[arg(long, short)]
        socket: Option<PathBuf>,
        /// Node id, when not under Slurm (picks the default socket of that node).
        #[arg(long)]
        node_id: Option<u32>,
        /// The peer node to connect to (default: every peer).
        #[arg(long)]
        peer: Option<u32>,
    },
    /// Show an agent's live statistics: counters, and rates per second
    /// between two samples.
    Stat(stat_cli::StatArgs),
    /// Start two agents on this machine over loopback TCP, run a workload
    /// between them, and print a summary.
    Demo(demo::DemoArgs),
    /// What this build and this machine offer: version, features, transports,
    /// RDMA devices and GIDs, DPDK, hugepages, memlock, and the configuration
    /// an agent with the same `-c FILE` and flags would run with.
    Info(Box<InfoArgs>),
    /// Preflight: would an agent with this `-c FILE` and these flags get what
    /// it asks for on this machine (hugepages, memlock, RDMA device, DPDK
    /// drivers, socket directory, cores, clock)? Each problem with its fix;
    /// exits 1 when one would stop the agent or deny it what it asks for.
    Doctor(Box<InfoArgs>),
    /// Latency to another node's agent (run `wyvern ping --serve` there): an
    /// OSU-style table of sizes and µs.
    Ping(tools::perf::PerfArgs),
    /// Bandwidth to another node's agent (run `wyvern ping --serve` there): an
    /// OSU-style table of sizes, MB/s and messages/s.
    Bw(tools::perf::PerfArgs),
}

#[derive(clap::Args)]
// `info` prints the configuration anyway: the agent's --print-config means nothing here.
#[command(mut_arg("print_config", |a| a.hide(true)))]
struct InfoArgs {
    /// Print JSON instead of the report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(clap::Args, Default)]
struct AgentArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// This node's id (its index in the node list).
    #[arg(long)]
    node_id: Option<u32>,
    /// Every node's agent address, by id, comma-separated (host:port,...; host may be a name).
    #[arg(long, value_delimiter = ',')]
    nodes: Option<Vec<String>>,
    /// Control socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Cores to pin the polling thread to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Idle policy.
    #[arg(long, value_enum)]
    idle: Option<IdlePolicy>,
    /// When links to peers are made: on the first message to each (and on
    /// `wyvern wait`), or to all of them at start.
    #[arg(long, value_enum)]
    connect: Option<ConnectPolicy>,
    /// Transport between agents.
    #[arg(long, value_enum)]
    transport: Option<TransportKind>,
    /// Run several transports at once (the hybrid agent), comma-separated,
    /// e.g. `verbs,tcp`: each peer is carried by the best one both ends run
    /// (tcp is always added: the control connection).
    #[arg(long, value_enum, value_delimiter = ',')]
    transports: Option<Vec<TransportKind>>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464; port 0 picks one).
    #[arg(long)]
    metrics: Option<String>,
    /// A name every agent of the job shares; peers of another job are refused.
    #[arg(long)]
    job: Option<String>,
    /// A file with the job's secret key (64 hex digits or 32 raw bytes, mode
    /// 600): peers must prove they hold it. Default: $WYVERN_JOB_KEY (64 hex
    /// digits); without either, peers are not authenticated.
    #[arg(long)]
    job_key_file: Option<PathBuf>,
    /// Largest packet of the udp transport, in bytes.
    #[arg(long)]
    packet_bytes: Option<usize>,
    /// dpdk transport: the EAL arguments, as one string split on whitespace
    /// (e.g. "--no-pci --vdev=net_af_packet0,iface=veth0 --file-prefix=wyv0 --no-shconf").
    #[arg(long, allow_hyphen_values = true)]
    dpdk_eal: Option<String>,
    /// dpdk transport: the port (device name or port id; default: the first port).
    #[arg(long)]
    dpdk_port: Option<String>,
    /// dpdk transport: MTU to set on the port (jumbo frames; on net_af_packet, the
    /// interface's MTU, with framesz=16384,blocksz=16384 in its --vdev).
    #[arg(long)]
    dpdk_mtu: Option<u16>,
    /// dpdk transport: peers' MACs by node id, comma-separated ("" for unknown: learned).
    #[arg(long, value_delimiter = ',')]
    dpdk_peer_macs: Option<Vec<String>>,
    /// Hybrid agent: the transport to use with some peers, by node id, comma-separated
    /// ("" to choose; e.g. ",tcp" keeps node 1 on tcp).
    #[arg(long, value_delimiter = ',')]
    peer_transports: Option<Vec<String>>,
    /// Hybrid agent: move a peer to the next transport when its chosen one is not up
    /// this long (default: half the peer timeout).
    #[arg(long)]
    hybrid_fallback_ms: Option<u64>,
    /// verbs transport: the RDMA device and port (e.g. rxe0:1; default: the first active port).
    #[arg(long)]
    verbs_device: Option<String>,
    /// verbs transport: the GID index (default: the RoCE v2 IPv4-mapped entry).
    #[arg(long)]
    verbs_gid_index: Option<u32>,
    /// verbs transport: bootstrap connections go to each node's port plus this (default 0;
    /// 1000 for a hybrid agent).
    #[arg(long)]
    verbs_port_offset: Option<u16>,
    /// verbs transport: the RDMA fabric's name (hybrid agents use verbs between equal names).
    #[arg(long)]
    verbs_fabric: Option<String>,
    /// Do not try hugepages.
    #[arg(long)]
    no_hugepages: bool,
    /// Block region size in MiB (large messages).
    #[arg(long)]
    block_mib: Option<u64>,
    /// Client slots in the pool.
    #[arg(long)]
    max_clients: Option<u32>,
    /// Longest a partly filled frame waits, in microseconds (0: never).
    #[arg(long)]
    flush_delay_us: Option<u64>,
    /// Heartbeat interval in ms.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// A silent peer is lost after this many ms.
    #[arg(long)]
    peer_timeout_ms: Option<u64>,
    /// MiB of peers' messages held for full receive rings (0: none).
    #[arg(long)]
    overflow_mib: Option<usize>,
    /// MiB of pool blocks one client may hold through its allocations.
    #[arg(long)]
    client_quota_mib: Option<u64>,
    /// ms a peer's message for an endpoint not open yet is held (0: refuse at once).
    #[arg(long)]
    unknown_ep_grace_ms: Option<u64>,
    /// Members of this group may attach too.
    #[arg(long)]
    allow_gid: Option<u32>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

impl AgentArgs {
    fn into_config(self) -> Result<(AgentConfig, bool), String> {
        let mut c = match &self.config {
            Some(p) => AgentConfig::load(p).map_err(|e| format!("{e}: {}", source_chain(&e)))?,
            None => AgentConfig::default(),
        };
        let socket_given = self.socket.is_some() || self.config.as_ref().is_some();
        if let Some(v) = self.node_id {
            c.node_id = v;
        }
        if let Some(v) = self.nodes {
            c.nodes = v;
        }
        if let Some(v) = self.socket {
            c.socket = v;
        } else if !socket_given || c.socket == default_socket(0) {
            c.socket = default_socket(c.node_id);
        }
        if let Some(v) = self.cores {
            c.cores = v;
        }
        if let Some(v) = self.idle {
            c.idle = v;
        }
        if let Some(v) = self.connect {
            c.connect = v;
        }
        if self.no_hugepages {
            c.hugepages = false;
        }
        if let Some(v) = self.block_mib {
            c.pool.block_bytes = v << 20;
        }
        if let Some(v) = self.max_clients {
            c.pool.max_clients = v;
        }
        if let Some(v) = self.transport {
            c.transport = v;
        }
        if let Some(v) = self.transports {
            c.transports = v;
        }
        if let Some(v) = self.metrics {
            c.metrics = Some(v);
        }
        if let Some(v) = self.job {
            c.job = Some(v);
        }
        if let Some(v) = self.job_key_file {
            c.job_key_file = Some(v);
        }
        if let Some(v) = self.packet_bytes {
            c.packet_bytes = v;
        }
        if let Some(v) = self.dpdk_eal {
            c.dpdk_eal_args = v.split_whitespace().map(String::from).collect();
        }
        if let Some(v) = self.dpdk_port {
            c.dpdk_port = Some(v);
        }
        if let Some(v) = self.dpdk_mtu {
            c.dpdk_mtu = Some(v);
        }
        if let Some(v) = self.dpdk_peer_macs {
            c.dpdk_peer_macs = v;
        }
        if let Some(v) = self.peer_transports {
            c.peer_transports = v;
        }
        if let Some(v) = self.hybrid_fallback_ms {
            c.hybrid_fallback_ms = v;
        }
        if let Some(v) = self.verbs_device {
            c.verbs_device = Some(v);
        }
        if let Some(v) = self.verbs_gid_index {
            c.verbs_gid_index = Some(v);
        }
        if let Some(v) = self.verbs_port_offset {
            c.verbs_port_offset = v;
        }
        if let Some(v) = self.verbs_fabric {
            c.verbs_fabric = Some(v);
        }
        if let Some(v) = self.flush_delay_us {
            c.flush_delay_us = v;
        }
        if let Some(v) = self.heartbeat_ms {
            c.heartbeat_ms = v;
        }
        if let Some(v) = self.peer_timeout_ms {
            c.peer_timeout_ms = v;
        }
        if let Some(v) = self.overflow_mib {
            c.overflow_bytes = v << 20;
        }
        if let Some(v) = self.client_quota_mib {
            c.client_block_quota = v << 20;
        }
        if let Some(v) = self.unknown_ep_grace_ms {
            c.unknown_ep_grace_ms = v;
        }
        if let Some(v) = self.allow_gid {
            c.allow_gid = Some(v);
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok((c, self.print_config))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// `wyvern ping` / `wyvern bw`: the local agent's socket found as every client
/// subcommand finds it (`--socket`, `WYVERN_SOCKET`, the Slurm job's, the
/// default of `--node-id`).
fn run_perf(kind: tools::perf::Kind, a: tools::perf::PerfArgs) -> ExitCode {
    match launch_cli::client_socket(a.socket.as_deref(), a.node_id) {
        Ok((path, _)) => tools::perf::run(kind, a, &path),
        Err(e) => {
            eprintln!("wyvern {}: {e}", kind.name());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    match Cli::parse().cmd {
        Cmd::Agent(a) => run_agent(*a),
        Cmd::Launch(a) => launch_cli::run_launch(*a),
        Cmd::Wait(w) => launch_cli::run_wait(w),
        Cmd::Stat(a) => stat_cli::run(a),
        Cmd::Demo(d) => demo::run(d),
        Cmd::Info(a) => {
            let InfoArgs { json, agent } = *a;
            let info = tools::info::gather(agent.into_config().map(|(c, _)| c));
            if json {
                tools::out(&(serde_json::to_string_pretty(&info).expect("serialisable") + "\n"));
            } else {
                tools::out(&info.render());
            }
            if info.config_error.is_some() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Cmd::Doctor(a) => {
            let InfoArgs { json, agent } = *a;
            let cfg = agent.into_config().map(|(c, _)| c);
            let info = tools::info::gather(cfg.clone());
            let m = tools::doctor::Machine {
                sys: std::path::Path::new("/sys"),
            };
            let report = tools::doctor::examine(cfg.as_ref().map_err(|e| e.as_str()), &info, &m);
            if json {
                tools::out(&(serde_json::to_string_pretty(&report).expect("serialisable") + "\n"));
            } else {
                tools::out(&report.render());
            }
            if report.failed() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Cmd::Ping(a) => run_perf(tools::perf::Kind::Ping, a),
        Cmd::Bw(a) => run_perf(tools::perf::Kind::Bw, a),
        Cmd::Connect {
            socket,
            node_id,
            peer,
        } => {
            let (path, named) = match launch_cli::client_socket(socket.as_deref(), node_id) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("wyvern connect: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match wyvern::client::connect_peers(&path, peer) {
                Ok(()) => {
                    match peer {
                        Some(j) => {
                            println!("connecting to node {j} (wyvern stat shows when it is up)")
                        }
                        None => println!(
                            "connecting to every peer (wyvern wait returns once all are up)"
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wyvern connect: {}", stat_cli::client_error(&e, named));
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BreakLink {
            socket,
            node_id,
            peer,
        } => {
            let (path, named) = match launch_cli::client_socket(socket.as_deref(), node_id) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("wyvern break-link: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match wyvern::client::break_link(&path, peer) {
                Ok(()) => {
                    println!(
                        "connection to node {peer} broken; it resumes when the peers reconnect"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wyvern break-link: {}", stat_cli::client_error(&e, named));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_agent(a: AgentArgs) -> ExitCode {
    let (cfg, print) = match a.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wyvern agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if print {
        print!("{}", toml::to_string(&cfg).expect("serialisable"));
        return ExitCode::SUCCESS;
    }
    let metrics = cfg.metrics.clone();
    let socket = cfg.socket.clone();
    let mut agent = match Agent::new(cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wyvern agent: {e}: {}", source_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let stop = agent.stop_flag();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("wyvern agent: cannot install a signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(m) = metrics {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&m)
            .ok()
            .and_then(|mut a| a.next());
        let Some(addr) = addr else {
            eprintln!("wyvern agent: --metrics {m}: not a host:port");
            return ExitCode::FAILURE;
        };
        match wyvern::agent::metrics::serve(addr, socket) {
            Ok(bound) => log::info!("Prometheus metrics on http://{bound}/metrics"),
            Err(e) => {
                eprintln!("wyvern agent: cannot serve metrics on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Readiness line for scripts and tests.
    println!(
        "wyvern agent ready: {} {}",
        agent.transport_name(),
        agent.local_addr()
    );
    agent.run();
    ExitCode::SUCCESS
}
