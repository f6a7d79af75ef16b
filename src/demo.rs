//! `wyvern demo`: two agents on this machine over loopback TCP (or UDP, or
//! DPDK between two network namespaces joined by a veth pair), a client on
//! each, a latency, message-rate and bandwidth workload, and a summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use std::process::Command;

use wyvern::agent::TransportKind;
use wyvern::client::{Client, Mode, Outgoing};
use wyvern::local::LocalAgents;

/// Options of the demo.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Ping-pong round trips (8-byte messages).
    #[arg(long, default_value_t = 20_000)]
    pingpongs: u64,
    /// Messages for the message-rate phase.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Size of those messages in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per call in the message-rate phase: 1 sends and receives one
    /// at a time (`send`/`recv`); more uses the batch calls (`send_many` /
    /// `recv_many`) with that many per call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
    /// MiB moved in 1 MiB messages for the bandwidth phase.
    #[arg(long, default_value_t = 512)]
    bulk_mib: u64,
    /// Idle policy of the two agents.
    #[arg(long, value_enum, default_value_t = wyvern::agent::IdlePolicy::Adaptive)]
    idle: wyvern::agent::IdlePolicy,
    /// Transport between the agents. dpdk (a wyvern built with `--features dpdk`,
    /// root): each agent in a network namespace of its own (made and removed by the
    /// demo), joined by a veth pair, DPDK on `net_af_packet`.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    transport: TransportKind,
    /// The DPDK device of `--transport dpdk`: `af-packet` (a veth pair between two
    /// network namespaces, the kernel on every frame) or `memif` (a `net_memif`
    /// pair: shared memory between the two agents, no kernel on the data path, no
    /// namespaces).
    #[arg(long, value_enum, default_value_t = DpdkDev::AfPacket)]
    dpdk_dev: DpdkDev,
}

/// The DPDK device the demo's dpdk agents use.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DpdkDev {
    /// `net_af_packet` on a veth pair between two network namespaces.
    AfPacket,
    /// A `net_memif` pair (agent 0 the server, agent 1 the client).
    Memif,
}

/// Two network namespaces joined by a veth pair (`veth0` in each), removed when
/// dropped: the dpdk demo's two "nodes".
struct DemoNet {
    names: Vec<String>,
}

impl DemoNet {
    fn create() -> Result<DemoNet, String> {
        let pid = std::process::id();
        let mut net = DemoNet { names: vec![] };
        for i in 0..2 {
            let ns = format!("wyvdemo{pid}-{i}");
            ip(&["netns", "add", &ns])
                .map_err(|e| format!("cannot make a network namespace (needs root): {e}"))?;
            net.names.push(ns);
        }
        let (a, b) = (&net.names[0], &net.names[1]);
        ip(&[
            "link", "add", "veth0", "netns", a, "type", "veth", "peer", "name", "veth0", "netns", b,
        ])?;
        for ns in &net.names {
            // IPv6 off: the kernel would send its own frames on the link.
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .arg("net.ipv6.conf.veth0.disable_ipv6=1")
                .output();
            ip(&["-n", ns, "link", "set", "veth0", "up"])?;
        }
        Ok(net)
    }

    fn wrap(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.names[i]]
            .map(String::from)
            .to_vec()
    }
}

impl Drop for DemoNet {
    fn drop(&mut self) {
        for ns in &self.names {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("wyvern demo: could not remove network namespace {ns}: {e}");
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

const EP_A: u32 = 1;
const EP_B: u32 = 2;

/// The agents, and the namespaces they run in (dpdk); dropped in this order (fields
/// drop in declaration order), so the agents stop before their namespaces go.
struct Started {
    agents: LocalAgents,
    _net: Option<DemoNet>,
}

fn start_agents(
    idle: wyvern::agent::IdlePolicy,
    t: TransportKind,
    dev: DpdkDev,
) -> Result<Started, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let idle = match idle {
        wyvern::agent::IdlePolicy::Spin => "spin",
        wyvern::agent::IdlePolicy::Adaptive => "adaptive",
    };
    let mut extra = vec!["--block-bytes", "160MiB", "--max-clients", "8"];
    let (net, wrap, node_args) = match t {
        TransportKind::Tcp => (None, vec![], vec![]),
        TransportKind::Udp => {
            extra.extend(["--transport", "udp"]);
            (None, vec![], vec![])
        }
        TransportKind::Verbs => {
            if !cfg!(feature = "verbs") {
                return Err(
                    "--transport verbs needs a wyvern built with the `verbs` cargo \
                            feature (cargo build --release --features verbs)"
                        .into(),
                );
            }
            // Both agents on the first active RDMA port (its loopback carries it).
            extra.extend(["--transport", "verbs"]);
            (None, vec![], vec![])
        }
        TransportKind::Dpdk => {
            if !cfg!(feature = "dpdk") {
                return Err(
                    "--transport dpdk needs a wyvern built with the `dpdk` cargo \
                            feature (cargo build --release --features dpdk)"
                        .into(),
                );
            }
            extra.extend(["--transport", "dpdk"]);
            // Each agent's EAL: its device, its own file prefix, no hugepages.
            let eal = |vdev: String, prefix: String| {
                vec![
                    "--dpdk-eal-args".to_string(),
                    format!(
                        "--no-pci --vdev={vdev} --file-prefix={prefix} --no-shconf --no-huge \
                         -m 64 --no-telemetry --lcores=0@(0-1) --log-level=lib.eal:warning"
                    ),
                ]
            };
            if dev == DpdkDev::Memif {
                // The socket is in the abstract namespace (memif's default):
                // the path is only a name, unique to this demo.
                let pid = std::process::id();
                let node_args = (0..2)
                    .map(|i| {
                        let role = if i == 0 { "server" } else { "client" };
                        eal(
                            format!(
                                "net_memif0,role={role},socket=/run/wyvern-demo-{pid}/memif.sock"
                            ),
                            format!("wyvern-demo-{pid}-{i}"),
                        )
                    })
                    .collect();
                (None, vec![], node_args)
            } else {
                let net = DemoNet::create()?;
                let wrap: Vec<Vec<String>> = (0..2).map(|i| net.wrap(i)).collect();
                let node_args: Vec<Vec<String>> = net
                    .names
                    .iter()
                    .map(|ns| eal("net_af_packet0,iface=veth0".into(), ns.clone()))
                    .collect();
                (Some(net), wrap, node_args)
            }
        }
    };
    let agents = LocalAgents::start_wrapped(&exe, "demo", 2, idle, &[], &extra, &wrap, &node_args)?;
    Ok(Started { agents, _net: net })
}

/// A progress bar on a terminal; elsewhere (a log, CI) one line per phase.
/// CPU time (user + system, seconds) of this process (the clients) and the
/// two agents so far.
fn cpu_secs(agents: &LocalAgents) -> f64 {
    let own = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |v: nix::sys::time::TimeVal| v.tv_sec() as f64 + v.tv_usec() as f64 * 1e-6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0);
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let agent = |i: usize| {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", agents.pid(i))).unwrap_or_default();
        // After the command's ")": state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |k: usize| {
            f.get(k - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (n(14) + n(15)) / tick
    };
    own + agent(0) + agent(1)
}

fn bar(len: u64, what: &str, unit: &str) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("  {what}: {len} {unit} ...");
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The receiving side (node 1): echo pings, count messages, take bulk.
fn node_b(sock: PathBuf, a: &DemoArgs, ready: std::sync::mpsc::Sender<()>) -> Result<(), String> {
    let c = Client::attach(&sock, "demo-b").map_err(|e| e.to_string())?;
    let ep = c.open_endpoint(Some(EP_B)).map_err(|e| e.to_string())?;
    // Node A may send only once this endpoint exists (else: unknown endpoint).
    let _ = ready.send(());
    let t = Duration::from_secs(30);
    for _ in 0..a.pingpongs {
        let m = ep.recv(t).map_err(|e| format!("pong side: {e}"))?;
        ep.send(0, EP_A, m.data(), Mode::Buffered, t)
            .map_err(|e| e.to_string())?;
    }
    let mut i = 0;
    let mut broken = None;
    while i < a.messages {
        let max = (a.batch as usize).min((a.messages - i) as usize);
        let mut check = |data: &[u8]| {
            let seq = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
            if seq != i && broken.is_none() {
                broken = Some(format!("message {i} arrived as {seq}: order broken"));
            }
            i += 1;
        };
        if a.batch > 1 {
            ep.recv_many(max, t, |m| check(m.data))
                .map_err(|e| format!("rate side: {e}"))?;
        } else {
            // Read in place: no allocation per message.
            ep.recv_with(t, |m| check(m.data))
                .map_err(|e| format!("rate side: {e}"))?;
        }
        if let Some(b) = broken.take() {
            return Err(b);
        }
    }
    ep.send(0, EP_A, b"rate-done", Mode::Buffered, t)
        .map_err(|e| e.to_string())?;
    for i in 0..a.bulk_mib {
        let m = ep.recv(t).map_err(|e| format!("bulk side: {e}"))?;
        let d = m.data();
        if d.len() != 1 << 20 || d[0] != i as u8 || d[d.len() - 1] != i as u8 {
            return Err(format!("bulk message {i} corrupt"));
        }
    }
    ep.send(0, EP_A, b"bulk-done", Mode::Buffered, t)
        .map_err(|e| e.to_string())?;
    c.detach().map_err(|e| e.to_string())
}

/// Run the demo.
pub fn run(a: DemoArgs) -> ExitCode {
    match run_inner(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wyvern demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(a: DemoArgs) -> Result<(), String> {
    if a.size < 8 || a.size > 4096 {
        return Err("--size must be 8..=4096 bytes".into());
    }
    let how = match a.transport {
        TransportKind::Tcp => "on loopback TCP",
        TransportKind::Udp => "on loopback UDP",
        TransportKind::Dpdk if a.dpdk_dev == DpdkDev::Memif => "on DPDK (a net_memif pair)",
        TransportKind::Dpdk => "on DPDK (net_af_packet) between two network namespaces",
        TransportKind::Verbs => "on RDMA verbs (the first active port)",
    };
    println!("wyvern demo: two agents {how}, one client on each");
    let started = start_agents(a.idle, a.transport, a.dpdk_dev)?;
    let agents = &started.agents;
    let sock_b = agents.sockets[1].clone();
    let c = Client::attach(&agents.sockets[0], "demo-a").map_err(|e| e.to_string())?;
    println!(
        "  pool: {} | idle policy: {:?} | cores: {} online, agents and clients unpinned",
        c.backing(),
        a.idle,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let ep = c.open_endpoint(Some(EP_A)).map_err(|e| e.to_string())?;
    let args = DemoArgs { ..a };
    let (pp, msgs, size, bulk) = (args.pingpongs, args.messages, args.size, args.bulk_mib);
    let batch = args.batch as usize;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let b = std::thread::spawn(move || node_b(sock_b, &args, ready_tx));
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        return match b.join() {
            Ok(Err(e)) => Err(format!("node B: {e}")),
            _ => Err("node B did not open its endpoint".into()),
        };
    }
    let t = Duration::from_secs(30);

    // 1. Latency.
    let pb = bar(pp, "ping-pong", "round trips of 8 B");
    let mut rtts = Vec::with_capacity(pp as usize);
    let payload = [7u8; 8];
    for i in 0..pp {
        let t0 = Instant::now();
        ep.send(1, EP_B, &payload, Mode::Buffered, t)
            .map_err(|e| e.to_string())?;
        ep.recv(t).map_err(|e| format!("ping: {e}"))?;
        rtts.push(t0.elapsed().as_secs_f64() * 1e6 / 2.0);
        if i % 256 == 0 {
            pb.set_position(i);
        }
    }
    pb.finish();
    rtts.sort_by(f64::total_cmp);

    // 2. Message rate.
    let pb = bar(msgs, "msg rate", "messages");
    let mut bufs = vec![vec![0u8; size]; batch];
    let cpu0 = cpu_secs(agents);
    let t0 = Instant::now();
    let mut i = 0;
    while i < msgs {
        if batch == 1 {
            bufs[0][..8].copy_from_slice(&i.to_le_bytes());
            ep.send(1, EP_B, &bufs[0], Mode::Buffered, t)
                .map_err(|e| e.to_string())?;
            i += 1;
        } else {
            let n = batch.min((msgs - i) as usize);
            for (k, b) in bufs[..n].iter_mut().enumerate() {
                b[..8].copy_from_slice(&(i + k as u64).to_le_bytes());
            }
            let out: Vec<Outgoing<'_>> = bufs[..n]
                .iter()
                .map(|b| Outgoing {
                    dst_node: 1,
                    dst_ep: EP_B,
                    data: b,
                })
                .collect();
            let mut done = 0;
            while done < n {
                done += ep.send_many(&out[done..], t).map_err(|e| e.to_string())?;
            }
            i += n as u64;
        }
        if i % 4096 < batch as u64 {
            pb.set_position(i);
        }
    }
    let m = ep.recv(t).map_err(|e| format!("rate: {e}"))?;
    let rate_s = t0.elapsed().as_secs_f64();
    let cpu_ns = (cpu_secs(agents) - cpu0) * 1e9 / msgs as f64;
    pb.finish();
    if m.data() != b"rate-done" {
        return Err("unexpected message after the rate phase".into());
    }

    // 3. Bandwidth, zero-copy sends from pool blocks.
    let pb = bar(bulk, "bandwidth", "messages of 1 MiB");
    let t0 = Instant::now();
    for i in 0..bulk {
        let mut blk = c.alloc(1 << 20, t).map_err(|e| e.to_string())?;
        blk.fill(i as u8);
        ep.send_buf(1, EP_B, blk, Mode::Buffered, t)
            .map_err(|e| e.to_string())?;
        pb.set_position(i + 1);
    }
    let m = ep
        .recv(Duration::from_secs(60))
        .map_err(|e| format!("bulk: {e}"))?;
    let bulk_s = t0.elapsed().as_secs_f64();
    pb.finish();
    if m.data() != b"bulk-done" {
        return Err("unexpected message after the bulk phase".into());
    }
    drop(m);
    b.join()
        .map_err(|_| "node B thread panicked".to_string())??;
    let stat = wyvern::client::stat(&agents.sockets[0]).map_err(|e| e.to_string())?;
    let agg = stat.peers.first().map_or(0.0, |p| p.aggregation);
    c.detach().map_err(|e| e.to_string())?;

    println!();
    println!("| measurement                         | value          |");
    println!("|-------------------------------------|----------------|");
    println!(
        "| one-way latency 8 B, p50            | {:>10.2} us  |",
        percentile(&rtts, 0.5)
    );
    println!(
        "| one-way latency 8 B, p99            | {:>10.2} us  |",
        percentile(&rtts, 0.99)
    );
    println!(
        "| one-way latency 8 B, p99.9          | {:>10.2} us  |",
        percentile(&rtts, 0.999)
    );
    let how = if batch > 1 {
        format!("batch {batch:>4}")
    } else {
        "1 sender  ".to_string()
    };
    println!(
        "| message rate, {:>4} B, {how} | {:>8.3} M/s   |",
        size,
        msgs as f64 / rate_s / 1e6
    );
    println!(
        "| CPU per message (all processes)     | {:>10.0} ns  |",
        cpu_ns
    );
    println!(
        "| aggregation (messages per frame)    | {:>10.1}     |",
        agg
    );
    println!(
        "| bandwidth, 1 MiB messages           | {:>8.3} GB/s  |",
        (bulk << 20) as f64 / bulk_s / 1e9
    );
    println!();
    println!(
        "(half round trips for latency; a 2-core VM is noisy: see bench/ for measured comparisons)"
    );
    drop(started);
    Ok(())
}
