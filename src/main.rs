//! `wyvern`: the agent, its statistics, and a demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use wyvern::agent::Agent;
use wyvern::config::{source_chain, AgentArgs};

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
        /// Keep the link down this many milliseconds (an outage drill: what
        /// the job does while a link is out; udp and dpdk links only, at
        /// most an hour).
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
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
    /// between two samples; with --job, every node's agent of the job in one
    /// table (asked over the agents' own links).
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

/// A one-request subcommand (`connect`, `break-link`) on the agent found as
/// every client subcommand finds it; errors said as `wyvern CMD: ...`.
fn on_agent(
    cmd: &str,
    socket: Option<PathBuf>,
    node_id: Option<u32>,
    f: impl FnOnce(&std::path::Path) -> Result<(), wyvern::client::Error>,
) -> ExitCode {
    let (path, named) = match launch_cli::client_socket(socket.as_deref(), node_id) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wyvern {cmd}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match f(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wyvern {cmd}: {}", stat_cli::client_error(&e, named));
            ExitCode::FAILURE
        }
    }
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
        } => on_agent("connect", socket, node_id, |path| {
            wyvern::client::connect_peers(path, peer)?;
            match peer {
                Some(j) => println!("connecting to node {j} (wyvern stat shows when it is up)"),
                None => println!("connecting to every peer (wyvern wait returns once all are up)"),
            }
            Ok(())
        }),
        Cmd::BreakLink {
            socket,
            node_id,
            peer,
            hold_ms,
        } => on_agent("break-link", socket, node_id, |path| {
            wyvern::client::hold_link_down(path, peer, std::time::Duration::from_millis(hold_ms))?;
            if hold_ms > 0 {
                println!(
                    "connection to node {peer} broken and held down for {hold_ms} ms; it resumes after"
                );
            } else {
                println!("connection to node {peer} broken; it resumes when the peers reconnect");
            }
            Ok(())
        }),
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
    println!("{}", agent.ready_line());
    agent.run();
    ExitCode::SUCCESS
}
