//! The agent's settings from three places, with one set of names and units.
//!
//! Every key of [`AgentConfig`] (TOML key `name`, or `name` in the `[pool]`
//! table) can be set
//! - by a flag `--name` (underscores become dashes),
//! - by an environment variable `WYVERN_AGENT_NAME` (upper case),
//! - in the TOML file given with `-c FILE` (or `WYVERN_AGENT_CONFIG`),
//!
//! and the first of these that says something wins: flag, then environment,
//! then file, then the default (`wyvern agent --print-config` shows the
//! outcome). The prefix is `WYVERN_AGENT_`, not `WYVERN_`, because the short
//! names are taken by what clients and scripts already read (`WYVERN_SOCKET`
//! is the socket a *client* looks for, `WYVERN_HUGEPAGES` a page count of
//! `scripts/test.sh`).
//!
//! Sizes (keys in bytes, see [`SIZE_KEYS`]) take the same forms in all three
//! places, through one parser ([`parse_size`]): a plain integer is bytes,
//! `64KiB`, `4 MiB`, `1G` are powers of 1024, `1kB`, `10MB` powers of 1000.
//! A bad value is refused with the key's name and these forms.
//!
//! Old spellings still work: `--block-mib N`, `--overflow-mib N`,
//! `--client-quota-mib N` (sizes in MiB) with a warning each; `--dpdk-eal` is
//! another name of `--dpdk-eal-args`. TOML keys did not change.

use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};

use crate::agent::config::{
    default_socket, AgentConfig, ConnectPolicy, ExtbufPolicy, IdlePolicy, TransportKind,
};

/// What a size may look like (the text of every size error).
pub const SIZE_FORMS: &str =
    "write bytes as an integer (65536) or with a unit: 64KiB, 4 MiB, 1GiB \
(K, M, G, T and KiB, MiB, GiB, TiB are powers of 1024; kB, MB, GB, TB powers of 1000)";

/// The prefix of every agent setting's environment variable.
pub const ENV_PREFIX: &str = "WYVERN_AGENT_";

/// Parses a size: an integer (bytes), optionally followed (after optional
/// spaces) by a unit: `B`; `K`, `KiB`, `M`, `MiB`, `G`, `GiB`, `T`, `TiB`
/// (powers of 1024, case-insensitive); `kB`, `MB`, `GB`, `TB` (powers of
/// 1000). Underscores between digits are allowed (`1_048_576`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let digits: String = num.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || num.starts_with('_') {
        return Err(format!("{s:?} is not a size: {SIZE_FORMS}"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is too large (at most {} bytes)", u64::MAX))?;
    let unit = unit.trim_start();
    let mult: u64 = match unit {
        "" | "B" | "b" => 1,
        "kB" | "KB" | "kb" => 1000,
        "MB" | "mb" => 1000 * 1000,
        "GB" | "gb" => 1000 * 1000 * 1000,
        "TB" | "tb" => 1000 * 1000 * 1000 * 1000,
        u => match u.to_ascii_lowercase().as_str() {
            "k" | "ki" | "kib" => 1 << 10,
            "m" | "mi" | "mib" => 1 << 20,
            "g" | "gi" | "gib" => 1 << 30,
            "t" | "ti" | "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "{s:?} is not a size (unknown unit {u:?}): {SIZE_FORMS}"
                ))
            }
        },
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large (at most {} bytes)", u64::MAX))
}

/// A size from a TOML file: an integer (bytes) or a string [`parse_size`]
/// reads; the error names the key.
fn de_size<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D, key: &str) -> Result<T, D::Error> {
    struct V<'k>(&'k str);
    impl Visitor<'_> for V<'_> {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a size for {}", self.0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{}: {v} is negative", self.0)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(|e| E::custom(format!("{}: {e}", self.0)))
        }
    }
    let n = d.deserialize_any(V(key))?;
    T::try_from(n).map_err(|_| de::Error::custom(format!("{key}: {n} is too large")))
}

macro_rules! size_keys {
    ($($f:ident = $k:literal),* $(,)?) => {
        /// `deserialize_with` functions of the size keys, one per key so that
        /// an error names it.
        pub mod size_de {
            use serde::Deserializer;
            $(
                #[doc = concat!("`", $k, "`: a size.")]
                pub fn $f<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
                    super::de_size(d, $k)
                }
            )*
        }
        /// The keys (dotted for `[pool]`) whose values are sizes in bytes.
        pub const SIZE_KEYS: &[&str] = &[$($k),*];
    };
}

size_keys! {
    packet_bytes = "packet_bytes",
    frame_bytes = "frame_bytes",
    eager_max = "eager_max",
    chunk_bytes = "chunk_bytes",
    peer_queue_bytes = "peer_queue_bytes",
    overflow_bytes = "overflow_bytes",
    client_block_quota = "client_block_quota",
    peer_rx_bytes = "peer_rx_bytes",
    block_bytes = "pool.block_bytes",
}

/// The clap value parser of a size flag (and its environment variable): the
/// error names the flag, the variable and the accepted forms.
#[derive(Clone, Copy, Debug, Default)]
pub struct SizeParser;

impl clap::builder::TypedValueParser for SizeParser {
    type Value = u64;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<u64, clap::Error> {
        let name = setting_name(arg);
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidUtf8,
                format!("{name}: not UTF-8\n"),
            )
        })?;
        parse_size(text).map_err(|e| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for {name}: {e}\n"),
            )
        })
    }
}

/// How an error names the setting of `arg`: its key, flag and variable
/// (`pool.block_bytes (--block-bytes or WYVERN_AGENT_BLOCK_BYTES)`).
fn setting_name(arg: Option<&clap::Arg>) -> String {
    let Some(a) = arg else {
        return "a setting".into();
    };
    let long = a.get_long().unwrap_or_default();
    let key = config_keys()
        .into_iter()
        .find(|k| flag_of(k) == long)
        .unwrap_or_else(|| long.replace('-', "_"));
    match a.get_env() {
        Some(e) => format!("{key} (--{long} or {})", e.to_string_lossy()),
        None => format!("{key} (--{long})"),
    }
}

/// The clap value parser of an integer flag (and its variable): the error
/// names the key, the flag and the variable, like [`SizeParser`]'s.
#[derive(Clone, Copy, Debug)]
pub struct IntParser<T>(std::marker::PhantomData<fn() -> T>);

impl<T> IntParser<T> {
    /// A parser of `T`.
    pub const fn new() -> Self {
        IntParser(std::marker::PhantomData)
    }
}

impl<T> Default for IntParser<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> clap::builder::TypedValueParser for IntParser<T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        text.trim().parse::<T>().map_err(|e| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "invalid value for {}: {text:?} is not a {} ({e})\n",
                    setting_name(arg),
                    std::any::type_name::<T>()
                ),
            )
        })
    }
}

/// The flag of a configuration key (`pool.block_bytes` → `block-bytes`).
pub fn flag_of(key: &str) -> String {
    key.rsplit('.').next().unwrap_or(key).replace('_', "-")
}

/// The environment variable of a configuration key (`pool.block_bytes` →
/// `WYVERN_AGENT_BLOCK_BYTES`).
pub fn env_of(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.rsplit('.').next().unwrap_or(key).to_ascii_uppercase()
    )
}

/// Every key of the agent's configuration, dotted for tables (`pool.block_bytes`),
/// in the order [`AgentConfig`] declares them: what its serialisation holds.
pub fn config_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let key = format!("{prefix}{k}");
                if v.is_object() {
                    walk(&format!("{key}."), v, out);
                } else {
                    out.push(key);
                }
            }
        }
    }
    let mut out = Vec::new();
    let v = serde_json::to_value(AgentConfig::default()).expect("serialisable");
    walk("", &v, &mut out);
    out
}

/// The flags of `wyvern agent` (and of `launch`, `info`, `doctor`): one per
/// configuration key, each also read from its `WYVERN_AGENT_*` variable.
#[derive(clap::Args, Default, Debug)]
pub struct AgentArgs {
    /// TOML configuration file; the environment and flags override it.
    #[arg(long, short, env = "WYVERN_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (its index in the node list).
    #[arg(long, value_parser = IntParser::<u32>::new(), env = "WYVERN_AGENT_NODE_ID")]
    pub node_id: Option<u32>,
    /// Every node's agent address, by id, comma-separated (host:port,...; host may be a name).
    #[arg(long, value_delimiter = ',', env = "WYVERN_AGENT_NODES")]
    pub nodes: Option<Vec<String>>,
    /// Control socket path.
    #[arg(long, env = "WYVERN_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Transport between agents.
    #[arg(long, value_enum, env = "WYVERN_AGENT_TRANSPORT")]
    pub transport: Option<TransportKind>,
    /// Run several transports at once (the hybrid agent), comma-separated,
    /// e.g. `verbs,tcp`: each peer is carried by the best one both ends run
    /// (tcp is always added: the control connection).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        env = "WYVERN_AGENT_TRANSPORTS"
    )]
    pub transports: Option<Vec<TransportKind>>,
    /// Hybrid agent: the transport to use with some peers, by node id, comma-separated
    /// ("" to choose; e.g. ",tcp" keeps node 1 on tcp).
    #[arg(long, value_delimiter = ',', env = "WYVERN_AGENT_PEER_TRANSPORTS")]
    pub peer_transports: Option<Vec<String>>,
    /// Hybrid agent: move a peer to the next transport when its chosen one is not up
    /// this long, in ms (0: half the peer timeout).
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_HYBRID_FALLBACK_MS")]
    pub hybrid_fallback_ms: Option<u64>,
    /// Hybrid agent: try a transport it fell back from again after this many ms,
    /// doubling after each failed try (up to 16 times); 0: never.
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_HYBRID_RETRY_MS")]
    pub hybrid_retry_ms: Option<u64>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464; port 0 picks one).
    #[arg(long, env = "WYVERN_AGENT_METRICS")]
    pub metrics: Option<String>,
    /// A name every agent of the job shares; peers of another job are refused.
    #[arg(long, env = "WYVERN_AGENT_JOB")]
    pub job: Option<String>,
    /// A file with the job's secret key (64 hex digits or 32 raw bytes, mode
    /// 600): peers must prove they hold it. Default: $WYVERN_JOB_KEY (64 hex
    /// digits); without either, peers are not authenticated.
    #[arg(long, env = "WYVERN_AGENT_JOB_KEY_FILE")]
    pub job_key_file: Option<PathBuf>,
    /// Largest packet of the udp transport (a size: 1472, 9000, 8KiB).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_PACKET_BYTES")]
    pub packet_bytes: Option<u64>,
    /// dpdk transport: the EAL arguments, as one string split on whitespace
    /// (e.g. "--no-pci --vdev=net_af_packet0,iface=veth0 --file-prefix=wyv0 --no-shconf").
    /// `--dpdk-eal` is the same flag.
    #[arg(
        long,
        alias = "dpdk-eal",
        allow_hyphen_values = true,
        env = "WYVERN_AGENT_DPDK_EAL_ARGS"
    )]
    pub dpdk_eal_args: Option<String>,
    /// dpdk transport: the port (device name or port id; default: the first port);
    /// several, comma-separated, are rails to the same peers (multi-rail).
    #[arg(long, env = "WYVERN_AGENT_DPDK_PORT")]
    pub dpdk_port: Option<String>,
    /// dpdk transport: MTU to set on the port (jumbo frames; on net_af_packet, the
    /// interface's MTU, with framesz=16384,blocksz=16384 in its --vdev).
    #[arg(long, value_parser = IntParser::<u16>::new(), env = "WYVERN_AGENT_DPDK_MTU")]
    pub dpdk_mtu: Option<u16>,
    /// dpdk transport: peers' MACs by node id, comma-separated ("" for unknown: learned).
    #[arg(long, value_delimiter = ',', env = "WYVERN_AGENT_DPDK_PEER_MACS")]
    pub dpdk_peer_macs: Option<Vec<String>>,
    /// dpdk transport: send large messages' packets from their pool blocks, not
    /// copied (auto: where the driver allows it, net_memif and net_af_packet; off).
    #[arg(long, value_enum, env = "WYVERN_AGENT_DPDK_EXTBUF")]
    pub dpdk_extbuf: Option<ExtbufPolicy>,
    /// verbs transport: the RDMA device and port (e.g. rxe0:1; default: the first active port).
    #[arg(long, env = "WYVERN_AGENT_VERBS_DEVICE")]
    pub verbs_device: Option<String>,
    /// verbs transport: the GID index (default: the RoCE v2 IPv4-mapped entry).
    #[arg(long, value_parser = IntParser::<u32>::new(), env = "WYVERN_AGENT_VERBS_GID_INDEX")]
    pub verbs_gid_index: Option<u32>,
    /// verbs transport: bootstrap connections go to each node's port plus this (default 0;
    /// 1000 for a hybrid agent).
    #[arg(long, value_parser = IntParser::<u16>::new(), env = "WYVERN_AGENT_VERBS_PORT_OFFSET")]
    pub verbs_port_offset: Option<u16>,
    /// verbs transport: the RDMA fabric's name (hybrid agents use verbs between equal names).
    #[arg(long, env = "WYVERN_AGENT_VERBS_FABRIC")]
    pub verbs_fabric: Option<String>,
    /// Cores to pin the polling thread to (comma-separated).
    #[arg(long, value_parser = IntParser::<usize>::new(), value_delimiter = ',', env = "WYVERN_AGENT_CORES")]
    pub cores: Option<Vec<usize>>,
    /// Idle policy.
    #[arg(long, value_enum, env = "WYVERN_AGENT_IDLE")]
    pub idle: Option<IdlePolicy>,
    /// udp and dpdk transports: the links' congestion model (rate, the
    /// default: BBR-style, random loss cuts nothing; aimd: the earlier
    /// loss-driven window).
    #[arg(long, value_enum, env = "WYVERN_AGENT_CONGESTION")]
    pub congestion: Option<crate::wire::reliable::Model>,
    /// When links to peers are made: on the first message to each (and on
    /// `wyvern wait` / `wyvern connect`), or to all of them at start.
    #[arg(long, value_enum, env = "WYVERN_AGENT_CONNECT")]
    pub connect: Option<ConnectPolicy>,
    /// Microseconds of fruitless polling before an adaptive agent sleeps.
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_SPIN_US")]
    pub spin_us: Option<u64>,
    /// Try hugepages for the pool (true/false; `--no-hugepages` is `--hugepages false`).
    #[arg(
        long,
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
        env = "WYVERN_AGENT_HUGEPAGES"
    )]
    pub hugepages: Option<bool>,
    /// Do not try hugepages (the same as `--hugepages false`; wins over it).
    #[arg(long)]
    pub no_hugepages: bool,
    /// Client slots in the pool.
    #[arg(long, value_parser = IntParser::<u32>::new(), env = "WYVERN_AGENT_MAX_CLIENTS")]
    pub max_clients: Option<u32>,
    /// Endpoints one client can open.
    #[arg(long, value_parser = IntParser::<u32>::new(), env = "WYVERN_AGENT_ENDPOINTS_PER_CLIENT")]
    pub endpoints_per_client: Option<u32>,
    /// Slots of a client's submission ring (a power of two).
    #[arg(long, value_parser = IntParser::<u32>::new(), env = "WYVERN_AGENT_SUB_SLOTS")]
    pub sub_slots: Option<u32>,
    /// Slots of a client's completion ring (a power of two).
    #[arg(long, value_parser = IntParser::<u32>::new(), env = "WYVERN_AGENT_COMP_SLOTS")]
    pub comp_slots: Option<u32>,
    /// Slots of an endpoint's receive ring (a power of two).
    #[arg(long, value_parser = IntParser::<u32>::new(), env = "WYVERN_AGENT_RECV_SLOTS")]
    pub recv_slots: Option<u32>,
    /// The pool's block region (large messages; a size: 192MiB, 1GiB).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_BLOCK_BYTES")]
    pub block_bytes: Option<u64>,
    /// Deprecated: --block-bytes NMiB.
    #[arg(long, hide = true)]
    pub block_mib: Option<u64>,
    /// Largest frame of aggregated small messages (a size).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_FRAME_BYTES")]
    pub frame_bytes: Option<u64>,
    /// Messages up to this size travel inline through the rings (a size).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_EAGER_MAX")]
    pub eager_max: Option<u64>,
    /// Chunk size of large messages on the wire (a size, a multiple of 8).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_CHUNK_BYTES")]
    pub chunk_bytes: Option<u64>,
    /// Longest a partly filled frame waits, in microseconds (0: never).
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_FLUSH_DELAY_US")]
    pub flush_delay_us: Option<u64>,
    /// Heartbeat interval in ms.
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// A silent peer is lost after this many ms.
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_PEER_TIMEOUT_MS")]
    pub peer_timeout_ms: Option<u64>,
    /// A peer not reached this many ms after start is reported unreachable (dialing goes on).
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,
    /// On-demand links: close a link idle this many ms (reopened by the next message; 0: never).
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_LINK_IDLE_MS")]
    pub link_idle_ms: Option<u64>,
    /// Bytes queued towards one peer before its senders are held back (a size).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_PEER_QUEUE_BYTES")]
    pub peer_queue_bytes: Option<u64>,
    /// Peers' messages held for full receive rings (a size; 0: none).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_OVERFLOW_BYTES")]
    pub overflow_bytes: Option<u64>,
    /// Deprecated: --overflow-bytes NMiB.
    #[arg(long, hide = true)]
    pub overflow_mib: Option<u64>,
    /// Pool blocks one client may hold through its allocations (a size).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_CLIENT_BLOCK_QUOTA")]
    pub client_block_quota: Option<u64>,
    /// Deprecated: --client-block-quota NMiB.
    #[arg(long, hide = true)]
    pub client_quota_mib: Option<u64>,
    /// ms a peer's message for an endpoint not open yet is held (0: refuse at once).
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_UNKNOWN_EP_GRACE_MS")]
    pub unknown_ep_grace_ms: Option<u64>,
    /// Members of this group may attach too.
    #[arg(long, value_parser = IntParser::<u32>::new(), env = "WYVERN_AGENT_ALLOW_GID")]
    pub allow_gid: Option<u32>,
    /// Bad requests tolerated from one client before it is detached.
    #[arg(long, value_parser = IntParser::<u64>::new(), env = "WYVERN_AGENT_MAX_CLIENT_ERRORS")]
    pub max_client_errors: Option<u64>,
    /// The largest message accepted from one peer, and the most pool blocks
    /// its messages may hold at once (a size; 0: the block region divided
    /// among the peers).
    #[arg(long, value_parser = SizeParser, value_name = "SIZE", env = "WYVERN_AGENT_PEER_RX_BYTES")]
    pub peer_rx_bytes: Option<u64>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A size flag's value as a `usize` (the same on every 64-bit target).
fn usize_of(flag: &str, v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("--{flag} {v}: too large for this machine"))
}

/// A deprecated flag in MiB, as bytes, with its warning.
fn mib(old: &str, new: &str, v: u64) -> Result<u64, String> {
    log::warn!("--{old} {v} is deprecated: write --{new} {v}MiB (flags take sizes with units)");
    v.checked_mul(1 << 20)
        .ok_or_else(|| format!("--{old} {v}: too large"))
}

impl AgentArgs {
    /// The configuration these flags (and environment variables, which clap
    /// has already folded in) make of the file's, validated; and whether to
    /// print it instead of running.
    pub fn into_config(self) -> Result<(AgentConfig, bool), String> {
        let mut c = match &self.config {
            Some(p) => AgentConfig::load(p).map_err(|e| format!("{e}: {}", source_chain(&e)))?,
            None => AgentConfig::default(),
        };
        let socket_given = self.socket.is_some() || self.config.as_ref().is_some();
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = self.$f { c.$f = v; } )*};
        }
        macro_rules! set_some {
            ($($f:ident),*) => {$( if let Some(v) = self.$f { c.$f = Some(v); } )*};
        }
        macro_rules! set_pool {
            ($($f:ident),*) => {$( if let Some(v) = self.$f { c.pool.$f = v; } )*};
        }
        macro_rules! set_usize {
            ($($f:ident),*) => {$(
                if let Some(v) = self.$f { c.$f = usize_of(stringify!($f), v)?; }
            )*};
        }
        set!(node_id, nodes, transport, transports, peer_transports);
        set!(
            hybrid_fallback_ms,
            hybrid_retry_ms,
            verbs_port_offset,
            cores,
            idle,
            congestion,
            connect,
            spin_us
        );
        set!(
            flush_delay_us,
            heartbeat_ms,
            peer_timeout_ms,
            connect_timeout_ms,
            link_idle_ms
        );
        set!(client_block_quota, unknown_ep_grace_ms, max_client_errors);
        set!(peer_rx_bytes, dpdk_peer_macs, dpdk_extbuf, hugepages);
        set_some!(metrics, job, job_key_file, dpdk_port, dpdk_mtu);
        set_some!(verbs_device, verbs_gid_index, verbs_fabric, allow_gid);
        set_pool!(max_clients, endpoints_per_client, sub_slots, comp_slots);
        set_pool!(recv_slots, block_bytes);
        set_usize!(packet_bytes, frame_bytes, eager_max, chunk_bytes);
        set_usize!(peer_queue_bytes, overflow_bytes);
        if let Some(v) = self.socket {
            c.socket = v;
        } else if !socket_given || c.socket == default_socket(0) {
            c.socket = default_socket(c.node_id);
        }
        if let Some(v) = self.dpdk_eal_args {
            c.dpdk_eal_args = v.split_whitespace().map(String::from).collect();
        }
        if self.no_hugepages {
            c.hugepages = false;
        }
        if let Some(v) = self.block_mib {
            c.pool.block_bytes = mib("block-mib", "block-bytes", v)?;
        }
        if let Some(v) = self.overflow_mib {
            c.overflow_bytes = usize_of("overflow-mib", mib("overflow-mib", "overflow-bytes", v)?)?;
        }
        if let Some(v) = self.client_quota_mib {
            c.client_block_quota = mib("client-quota-mib", "client-block-quota", v)?;
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok((c, self.print_config))
    }
}

/// The causes of an error, joined with ": ".
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_every_documented_form() {
        for (s, n) in [
            ("0", 0),
            ("65536", 65536),
            ("1_048_576", 1 << 20),
            ("64MiB", 64 << 20),
            ("4 KiB", 4096),
            ("4k", 4096),
            ("2G", 2 << 30),
            ("1 tib", 1 << 40),
            ("  8 B ", 8),
            ("10kB", 10_000),
            ("3MB", 3_000_000),
            ("1GB", 1_000_000_000),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s:?}");
        }
        for bad in [
            "",
            "MiB",
            "-1",
            "1.5GiB",
            "12XB",
            "_1",
            "99999999999999999999",
            "16EiB",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(parse_size("17179869184GiB")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("4 XB").unwrap_err().contains("KiB, MiB"));
    }

    #[test]
    fn names_follow_the_rule() {
        assert_eq!(flag_of("pool.block_bytes"), "block-bytes");
        assert_eq!(env_of("pool.block_bytes"), "WYVERN_AGENT_BLOCK_BYTES");
        assert_eq!(env_of("node_id"), "WYVERN_AGENT_NODE_ID");
        let keys = config_keys();
        assert!(keys.contains(&"pool.recv_slots".to_string()), "{keys:?}");
        assert!(keys.contains(&"allow_gid".to_string()), "{keys:?}");
        assert!(!keys.iter().any(|k| k == "addrs"), "{keys:?}");
    }
}
