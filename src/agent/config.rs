//! Agent configuration: a TOML file, overridden by `WYVERN_AGENT_*` environment
//! variables, overridden by command-line flags (`crate::config` reads the three;
//! sizes may be written with units, `block_bytes = "192MiB"`).
//!
//! ```toml
//! node_id = 0
//! nodes = ["10.0.0.1:7470", "10.0.0.2:7470"]   # TCP address of each node's agent, by id
//! socket = "/run/wyvern/agent0.sock"
//! job_key_file = "/home/me/.wyvern/job.key"   # mode 600; or WYVERN_JOB_KEY (64 hex digits)
//! cores = [2]
//! idle = "adaptive"            # or "spin"
//! hugepages = true
//! [pool]
//! max_clients = 32
//! block_bytes = 201326592
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shm::PoolParams;

/// `verbs_port_offset` of a hybrid agent that sets none.
pub const HYBRID_VERBS_PORT_OFFSET: u16 = 1000;

/// How the agent waits when there is no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IdlePolicy {
    /// Poll forever (dedicated cores).
    Spin,
    /// Poll for `spin_us`, then sleep until a client rings or the network
    /// has data.
    Adaptive,
}

/// dpdk transport: whether a large message's packets are sent from its pool
/// block (mbufs attached to it) instead of copied into mbufs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExtbufPolicy {
    /// Where the driver copies every frame inside `tx_burst` and sends chained
    /// mbufs (`net_memif` without zero-copy, `net_af_packet`); copy elsewhere.
    Auto,
    /// Always copy.
    Off,
}

/// When an agent makes its links to other agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectPolicy {
    /// A link to a peer is made when the first message for it is sent (or
    /// when asked: `wyvern wait`, `wyvern connect`), from either side: a peer
    /// never talked to costs no connection and a few hundred bytes.
    OnDemand,
    /// Links to every peer from the start (the higher node id dials the
    /// lower). The verbs transport and the hybrid agent always do.
    All,
}

/// How agents move frames between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// One TCP connection per peer pair (the kernel's stack; runs anywhere).
    Tcp,
    /// UDP datagrams with wyvern's own reliability (sequence numbers, acks,
    /// retransmission, credits): for routed networks and lossy-link tests.
    Udp,
    /// The same reliable links in raw Ethernet frames (EtherType 0x88B5) on a
    /// DPDK poll-mode port, bypassing the kernel. Needs a wyvern built with
    /// the `dpdk` cargo feature; selecting it otherwise is a configuration
    /// error that says so.
    Dpdk,
    /// RDMA reliable-connected queue pairs through rdma-core (InfiniBand, RoCE,
    /// Soft-RoCE): the pool is registered once, large messages go by RDMA READ
    /// rendezvous straight between pools. Needs a wyvern built with the `verbs`
    /// cargo feature; selecting it otherwise is a configuration error that says so.
    Verbs,
}

/// Everything an agent needs to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's id: its index in `nodes`.
    pub node_id: u32,
    /// TCP address of every node's agent, indexed by node id: `host:port`,
    /// where host is an IP address or a name (resolved at start-up, IPv4
    /// preferred).
    pub nodes: Vec<String>,
    /// `nodes`, resolved by [`AgentConfig::validate`].
    #[serde(skip)]
    pub addrs: Vec<SocketAddr>,
    /// The control socket clients attach through.
    pub socket: PathBuf,
    /// How frames move between agents (every agent of a job must agree),
    /// unless `transports` is given.
    pub transport: TransportKind,
    /// The hybrid agent: run all these transports at once and carry each
    /// peer on the best one both ends run (verbs on a common fabric, else
    /// dpdk, else udp, else tcp). TCP is always among them: it is the
    /// control connection over which agents learn what their peers run,
    /// and the fallback. Empty: `transport` alone. Forcing one transport
    /// for a node means listing only that one (or setting `transport`).
    pub transports: Vec<TransportKind>,
    /// Hybrid agent: the transport to use with some peers, by node id (""
    /// for "the best both run"); e.g. `["", "tcp"]` keeps node 1 on tcp.
    /// The peer learns it from this agent's `Hello` (which then names only
    /// that transport and tcp), so both ends agree.
    pub peer_transports: Vec<String>,
    /// Hybrid agent: a peer whose chosen transport is not up this long
    /// while its tcp control connection is (a fast link that cannot connect,
    /// or broke and does not come back) moves to the next transport both
    /// run, down to tcp, for the rest of the job. 0: half of
    /// `peer_timeout_ms`, so that the move comes before the peer would be
    /// declared lost.
    pub hybrid_fallback_ms: u64,
    /// A hybrid agent tries the transport it fell back from again this long
    /// after the fallback (ms), doubling after each try that fails, up to
    /// 16 times as long; 0: never (the fallback holds for the job's life).
    pub hybrid_retry_ms: u64,
    /// Serve Prometheus metrics over HTTP on this address (`host:port`).
    pub metrics: Option<String>,
    /// A name every agent of the job shares (`wyvern launch` uses the Slurm
    /// job id): agents refuse peers that say another job, so agents of two
    /// jobs on the same hosts never take each other for peers.
    pub job: Option<String>,
    /// A file holding the job's secret key (64 hexadecimal digits, or 32 raw
    /// bytes), readable only by the agent's user: peers must prove they hold
    /// it (a MAC on every handshake). Without it, the key is taken from the
    /// environment variable `WYVERN_JOB_KEY` (64 hexadecimal digits; `wyvern
    /// launch --print-key` makes one); without either, peers are not
    /// authenticated (a trusted fabric only; the agent warns at start).
    pub job_key_file: Option<PathBuf>,
    /// Largest packet of the udp transport, headers included but not the
    /// IP/UDP ones (1472 fits a 1500-byte Ethernet MTU). The dpdk transport
    /// uses its port's MTU instead (see `dpdk_mtu`).
    #[serde(deserialize_with = "crate::config::size_de::packet_bytes")]
    pub packet_bytes: usize,
    /// dpdk transport: the EAL's arguments, e.g. `["--no-pci",
    /// "--vdev=net_af_packet0,iface=veth0", "--file-prefix=wyvern-n0",
    /// "--no-shconf", "--no-huge", "-m", "256"]`, or `["-a", "0000:3b:00.0",
    /// "-l", "2"]` for a NIC bound to vfio-pci. Every process on a machine
    /// needs its own `--file-prefix`.
    pub dpdk_eal_args: Vec<String>,
    /// dpdk transport: the port, by device name (`net_af_packet0`, a PCI
    /// address) or port id; none: the first port. Several, comma-separated
    /// (`"net_memif0,net_memif1"`), are rails to the same peers (docs/dpdk.md).
    pub dpdk_port: Option<String>,
    /// dpdk transport: an MTU to set on the port (jumbo frames, if the
    /// device takes them); none: the device's own (normally 1500). A wire
    /// packet is at most the MTU. On `net_af_packet` (whose ethdev says 1500 at
    /// most) an MTU above 1500 is the kernel interface's, with ring frames to
    /// hold it (`framesz=16384,blocksz=16384` in its `--vdev`); an interface
    /// whose MTU is smaller cuts the packets to it (degraded `mtu`; fix: `ip
    /// link set dev IFACE mtu N`).
    pub dpdk_mtu: Option<u16>,
    /// dpdk transport: peers' MACs by node id (`aa:bb:cc:dd:ee:ff`; "" for
    /// unknown). Empty: every MAC is learned from the peer's frames, and
    /// broadcast is used until then.
    pub dpdk_peer_macs: Vec<String>,
    /// dpdk transport: send a large message's packets from its pool block,
    /// not copied (`auto`: where the driver allows it; `off`: always copy).
    /// See docs/dpdk.md "Copies".
    pub dpdk_extbuf: ExtbufPolicy,
    /// verbs transport: the RDMA device and port (`mlx5_0:1`, `rxe0`); none:
    /// the first active port of any device.
    pub verbs_device: Option<String>,
    /// verbs transport: the GID index to address the port by; none: the first
    /// RoCE v2 entry holding an IPv4 address (on InfiniBand: LIDs, no GID).
    pub verbs_gid_index: Option<u32>,
    /// verbs transport: the queue pairs are connected over a TCP bootstrap
    /// connection to each node's address with this added to its port. 0 (the
    /// default): the node's address itself for an agent whose only transport
    /// is verbs, and port + 1000 for a hybrid agent (its tcp listener holds
    /// the node's port; agents sharing a host get consecutive ports from
    /// `wyvern launch`, so a small offset would collide). Every agent of a
    /// job must agree.
    pub verbs_port_offset: u16,
    /// verbs transport: the name of the RDMA fabric this node's device is on.
    /// Two hybrid agents carry their link on verbs only when their fabrics
    /// have the same name (default "default": all RDMA devices of a job are
    /// taken to reach each other).
    pub verbs_fabric: Option<String>,
    /// Cores to pin the polling thread to (the first is used).
    pub cores: Vec<usize>,
    /// Idle policy.
    pub idle: IdlePolicy,
    /// udp and dpdk transports: the congestion model of their links
    /// (`rate`: BBR-style; `aimd`: the earlier window, see
    /// docs/architecture.md "Congestion").
    pub congestion: crate::wire::reliable::Model,
    /// When links to peers are made.
    pub connect: ConnectPolicy,
    /// Microseconds of fruitless polling before an adaptive agent sleeps.
    pub spin_us: u64,
    /// Try hugepages for the pool.
    pub hugepages: bool,
    /// Pool sizes.
    pub pool: PoolParams,
    /// Largest frame of aggregated small messages, in bytes.
    #[serde(deserialize_with = "crate::config::size_de::frame_bytes")]
    pub frame_bytes: usize,
    /// Messages up to this size travel inline through the rings.
    #[serde(deserialize_with = "crate::config::size_de::eager_max")]
    pub eager_max: usize,
    /// Chunk size for large messages on the wire.
    #[serde(deserialize_with = "crate::config::size_de::chunk_bytes")]
    pub chunk_bytes: usize,
    /// Longest a partly filled frame may wait for more messages, in
    /// microseconds. 0: a frame goes out at the end of the poll round that
    /// filled it (a lone message is never held back).
    pub flush_delay_us: u64,
    /// Heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// A peer silent this long is lost, milliseconds.
    pub peer_timeout_ms: u64,
    /// A peer not reached within this long after start is reported
    /// unreachable (dialing goes on), milliseconds.
    pub connect_timeout_ms: u64,
    /// On-demand links: a link with no traffic either way for this long
    /// (heartbeats do not count), nothing queued, unacknowledged or half
    /// sent or received on it, is closed (both ends agree with an idle
    /// `Bye`) and made again by the next message either way; its session
    /// is kept, so nothing in flight is lost or repeated. Milliseconds;
    /// 0: never. Ignored with `connect = all`, verbs and the hybrid agent
    /// (their links are made at start and kept).
    pub link_idle_ms: u64,
    /// Bytes queued towards one peer before its senders are held back.
    #[serde(deserialize_with = "crate::config::size_de::peer_queue_bytes")]
    pub peer_queue_bytes: usize,
    /// Bytes of messages from peers the agent holds for endpoints whose
    /// receive ring is full, so that one slow endpoint does not hold back
    /// the links it shares with others. Past it, the links wait.
    #[serde(deserialize_with = "crate::config::size_de::overflow_bytes")]
    pub overflow_bytes: usize,
    /// An allocation is refused (for now: `NoMemory`, the client retries)
    /// when the client would then hold more block bytes than this, counting
    /// its own allocations and the large messages it received and still
    /// holds; so that one client cannot take the whole block region from
    /// the others. Deliveries to it are never refused.
    #[serde(deserialize_with = "crate::config::size_de::client_block_quota")]
    pub client_block_quota: u64,
    /// How long a message from a peer for an endpoint that is not open is
    /// held in case it opens (processes of a job start at different
    /// times), in milliseconds; then it is refused as an unknown endpoint.
    /// 0: refused at once.
    pub unknown_ep_grace_ms: u64,
    /// A group (gid) whose members may attach besides the agent's own uid.
    pub allow_gid: Option<u32>,
    /// Bad requests tolerated from one client before it is detached.
    pub max_client_errors: u64,
    /// The largest message (bytes) accepted from one peer; a larger one is
    /// refused with `TooLarge` as its first chunk arrives (its pool block
    /// would be reserved whole until the last). Also the most pool block
    /// bytes one peer's messages may hold together, in reassembly and
    /// waiting for delivery; past it the peer's frames wait. 0: the block
    /// region divided among the peers, at least `client_block_quota`, at
    /// most the region.
    #[serde(deserialize_with = "crate::config::size_de::peer_rx_bytes")]
    pub peer_rx_bytes: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_id: 0,
            nodes: vec![],
            addrs: vec![],
            socket: default_socket(0),
            transport: TransportKind::Tcp,
            transports: Vec::new(),
            peer_transports: Vec::new(),
            hybrid_fallback_ms: 0,
            hybrid_retry_ms: 30_000,
            packet_bytes: 1472,
            metrics: None,
            job: None,
            job_key_file: None,
            dpdk_eal_args: vec![],
            dpdk_port: None,
            dpdk_mtu: None,
            dpdk_peer_macs: vec![],
            dpdk_extbuf: ExtbufPolicy::Auto,
            verbs_device: None,
            verbs_gid_index: None,
            verbs_port_offset: 0,
            verbs_fabric: None,
            cores: vec![],
            idle: IdlePolicy::Adaptive,
            congestion: crate::wire::reliable::Config::datagram().model,
            connect: ConnectPolicy::OnDemand,
            spin_us: 200,
            hugepages: true,
            pool: PoolParams::default(),
            frame_bytes: 64 * 1024,
            eager_max: 4096,
            chunk_bytes: 256 * 1024,
            flush_delay_us: 0,
            heartbeat_ms: 200,
            peer_timeout_ms: 3000,
            connect_timeout_ms: 30_000,
            link_idle_ms: 60_000,
            peer_queue_bytes: 8 << 20,
            overflow_bytes: 64 << 20,
            client_block_quota: 128 << 20,
            unknown_ep_grace_ms: 2000,
            allow_gid: None,
            max_client_errors: 100,
            peer_rx_bytes: 0,
        }
    }
}

/// Resolve `host:port`, preferring an IPv4 address.
fn resolve(node: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = node
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve it ({e}); write host:port"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| "resolves to no address".to_string())
}

/// The control socket path used when none is configured:
/// `wyvern-agent-<node>.sock` in [`default_socket_dir`].
pub fn default_socket(node: u32) -> PathBuf {
    default_socket_dir().join(format!("wyvern-agent-{node}.sock"))
}

/// The private directory default sockets live in: `$XDG_RUNTIME_DIR/wyvern`,
/// else `/run/wyvern/<uid>` (when it exists, or this user may create it:
/// `/run/wyvern` writable, or absent and `/run` writable), else
/// `<tmp>/wyvern-<uid>`. The agent creates it 0700 (0750
/// with `allow_gid`) and refuses one another uid owns, so no other user can
/// put a listener where clients look for their agent.
pub fn default_socket_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("wyvern");
    }
    let uid = nix::unistd::geteuid().as_raw();
    let run = std::path::Path::new("/run");
    let writable =
        |p: &std::path::Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    let base = run.join("wyvern");
    let mine = base.join(uid.to_string());
    let can_create = if base.exists() {
        writable(&base)
    } else {
        writable(run)
    };
    if mine.is_dir() || can_create {
        return mine;
    }
    std::env::temp_dir().join(format!("wyvern-{uid}"))
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the file failed.
    #[error("cannot read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or unknown keys.
    #[error("cannot parse config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// Values make no sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The job key cannot be had (unreadable, exposed, malformed).
    #[error("job key")]
    JobKey(#[source] crate::wire::auth::KeyError),
}

impl AgentConfig {
    /// The job key: from `job_key_file`, else from `WYVERN_JOB_KEY`; `None`
    /// when neither is set (peers are not authenticated).
    pub fn job_key(&self) -> Result<Option<crate::wire::auth::JobKey>, ConfigError> {
        self.job_key_from(|k| std::env::var(k).ok())
    }

    /// [`AgentConfig::job_key`] with the environment read through `env`.
    pub fn job_key_from(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<crate::wire::auth::JobKey>, ConfigError> {
        use crate::wire::auth::{JobKey, KEY_ENV};
        if let Some(p) = &self.job_key_file {
            return JobKey::load_file(p).map(Some).map_err(ConfigError::JobKey);
        }
        match env(KEY_ENV).filter(|v| !v.trim().is_empty()) {
            Some(v) => JobKey::from_hex(&v, KEY_ENV)
                .map(Some)
                .map_err(ConfigError::JobKey),
            None => Ok(None),
        }
    }

    /// Load a TOML file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Check the values; fills in a one-node list when none is given.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        if self.nodes.is_empty() {
            self.nodes.push("127.0.0.1:0".to_string());
        }
        self.addrs = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                resolve(n).map_err(|e| ConfigError::Invalid(format!("node {i} ({n}): {e}")))
            })
            .collect::<Result<_, _>>()?;
        if self.node_id as usize >= self.nodes.len() {
            return bad(format!(
                "node_id {} is not in the node list of {} nodes",
                self.node_id,
                self.nodes.len()
            ));
        }
        crate::shm::Layout::compute(self.pool).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let geo = crate::shm::RingGeometry::new(self.pool.recv_slots);
        let ring_max = geo.max_record() - crate::proto::RECV_HEADER;
        let sub_max = crate::shm::RingGeometry::new(self.pool.sub_slots).max_record()
            - crate::proto::SUB_HEADER;
        if self.eager_max > ring_max.min(sub_max) {
            return bad(format!(
                "eager_max {} exceeds what the rings hold inline ({}); raise recv_slots/sub_slots or lower eager_max",
                self.eager_max,
                ring_max.min(sub_max)
            ));
        }
        let rec = crate::wire::RECORD_HEADER + crate::wire::padded(self.eager_max);
        if self.frame_bytes < crate::wire::FRAME_HEADER + rec
            || self.frame_bytes > crate::wire::MAX_BODY
        {
            return bad(format!(
                "frame_bytes {} must hold one eager message ({} bytes) and be at most {}",
                self.frame_bytes,
                crate::wire::FRAME_HEADER + rec,
                crate::wire::MAX_BODY
            ));
        }
        if self.chunk_bytes == 0
            || self.chunk_bytes % 8 != 0
            || self.chunk_bytes + 64 > crate::wire::MAX_BODY
        {
            return bad(format!(
                "chunk_bytes {} must be a positive multiple of 8 below 4 MiB",
                self.chunk_bytes
            ));
        }
        let pkt = crate::wire::packet::PACKET_MIN..=65507;
        if !pkt.contains(&self.packet_bytes) {
            return bad(format!(
                "packet_bytes {} must lie in {}..={}",
                self.packet_bytes,
                pkt.start(),
                pkt.end()
            ));
        }
        if self.transport_set().contains(&TransportKind::Dpdk) {
            self.validate_dpdk()?;
        }
        if self.transport_set().contains(&TransportKind::Verbs) && !cfg!(feature = "verbs") {
            return bad(
                "transport \"verbs\" needs a wyvern built with the `verbs` cargo feature \
                 (cargo build --release --features verbs); this one was built without it"
                    .into(),
            );
        }
        if self.heartbeat_ms == 0 || self.peer_timeout_ms <= self.heartbeat_ms {
            return bad("peer_timeout_ms must exceed heartbeat_ms > 0".into());
        }
        self.forced_transports()?;
        Ok(())
    }

    /// `peer_transports`, checked, by node id (`None`: choose).
    pub fn forced_transports(&self) -> Result<Vec<Option<TransportKind>>, ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        let set = self.transport_set();
        if self.peer_transports.is_empty() {
            return Ok(vec![None; self.nodes.len()]);
        }
        if set.len() < 2 {
            return bad(
                "peer_transports needs a hybrid agent (transports = [\"udp\", \"tcp\"], ...): \
                 an agent with one transport uses it for every peer"
                    .into(),
            );
        }
        if self.peer_transports.len() != self.nodes.len() {
            return bad(format!(
                "peer_transports has {} entries for {} nodes (give one per node, \"\" to choose)",
                self.peer_transports.len(),
                self.nodes.len()
            ));
        }
        let mut out = Vec::new();
        for (i, t) in self.peer_transports.iter().enumerate() {
            if t.trim().is_empty() {
                out.push(None);
                continue;
            }
            let Ok(k) = <TransportKind as clap::ValueEnum>::from_str(t.trim(), true) else {
                return bad(format!(
                    "peer_transports[{i}] = {t:?} is not a transport (tcp, udp, dpdk, verbs)"
                ));
            };
            if !set.contains(&k) {
                return bad(format!(
                    "peer_transports[{i}] = {t:?}, but this agent runs only {set:?}"
                ));
            }
            out.push(Some(k));
        }
        Ok(out)
    }

    /// How long a hybrid agent waits for a peer's chosen transport.
    pub fn hybrid_fallback(&self) -> Duration {
        match self.hybrid_fallback_ms {
            0 => Duration::from_millis(self.peer_timeout_ms / 2),
            ms => Duration::from_millis(ms),
        }
    }

    /// When a hybrid agent tries a transport it fell back from again (the
    /// first wait; `None`: never).
    pub fn hybrid_retry(&self) -> Option<Duration> {
        (self.hybrid_retry_ms > 0).then(|| Duration::from_millis(self.hybrid_retry_ms))
    }

    /// The transports this agent runs: `transports` (with tcp added, and
    /// first, when there are several) or `transport` alone.
    pub fn transport_set(&self) -> Vec<TransportKind> {
        let mut set = Vec::new();
        for &k in &self.transports {
            if !set.contains(&k) {
                set.push(k);
            }
        }
        match set.len() {
            0 => vec![self.transport],
            1 => set,
            _ => {
                set.retain(|&k| k != TransportKind::Tcp);
                set.insert(0, TransportKind::Tcp);
                set
            }
        }
    }

    /// The port offset of the verbs transport's bootstrap listener
    /// (`verbs_port_offset`; 0 in a hybrid agent: the hybrid default).
    pub fn verbs_offset(&self) -> u16 {
        match self.verbs_port_offset {
            0 if self.transport_set().len() > 1 => HYBRID_VERBS_PORT_OFFSET,
            o => o,
        }
    }

    /// The verbs transport's bootstrap address of every node: its address with
    /// `verbs_port_offset` added to the port (a port 0, "pick one", stays 0).
    pub fn verbs_bootstrap(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        bootstrap_addrs(&self.addrs, self.verbs_offset())
    }

    fn validate_dpdk(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        if !cfg!(feature = "dpdk") {
            return bad(
                "transport \"dpdk\" needs a wyvern built with the `dpdk` cargo feature \
                 (cargo build --release --features dpdk); this one was built without it"
                    .into(),
            );
        }
        if self.dpdk_eal_args.is_empty() {
            return bad("transport \"dpdk\" needs dpdk_eal_args (--dpdk-eal-args), e.g. \
                 \"--no-pci --vdev=net_af_packet0,iface=veth0 --file-prefix=wyvern-n0 --no-shconf\""
                .into());
        }
        if !self.dpdk_peer_macs.is_empty() {
            if self.dpdk_peer_macs.len() != self.nodes.len() {
                return bad(format!(
                    "dpdk_peer_macs has {} entries for {} nodes (give one per node, \"\" for unknown)",
                    self.dpdk_peer_macs.len(),
                    self.nodes.len()
                ));
            }
            for (i, m) in self.dpdk_peer_macs.iter().enumerate() {
                if !m.is_empty() && parse_mac(m).is_none() {
                    return bad(format!(
                        "dpdk_peer_macs[{i}] = {m:?} is not a MAC (aa:bb:cc:dd:ee:ff)"
                    ));
                }
            }
        }
        if let Some(mtu) = self.dpdk_mtu {
            if usize::from(mtu) < crate::wire::packet::PACKET_MIN {
                return bad(format!("dpdk_mtu {mtu} is too small for a packet"));
            }
        }
        Ok(())
    }

    /// `dpdk_peer_macs` as bytes, by node id (`None`: learn it).
    pub fn peer_macs(&self) -> Vec<Option<[u8; 6]>> {
        self.dpdk_peer_macs.iter().map(|m| parse_mac(m)).collect()
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Peer timeout.
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }
}

/// Parses a MAC address, `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

/// `addrs` with `offset` added to every port (a port 0, "pick one", stays 0).
pub fn bootstrap_addrs(addrs: &[SocketAddr], offset: u16) -> Result<Vec<SocketAddr>, ConfigError> {
    addrs
        .iter()
        .map(|a| {
            if a.port() == 0 {
                return Ok(*a);
            }
            let p = a.port().checked_add(offset).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "verbs_port_offset {offset} takes the port of {a} past 65535"
                ))
            })?;
            Ok(SocketAddr::new(a.ip(), p))
        })
        .collect()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
