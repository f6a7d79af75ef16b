//! Errors of the verbs layer: one variant per failing operation, the OS error (libibverbs
//! reports through `errno`, or returns it) kept as the source, with the device, port or
//! peer a user needs.

use std::io;

/// What can fail in the verbs layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `ibv_get_device_list` failed (no `ib_uverbs` module, no permission on
    /// `/dev/infiniband`).
    #[error("no RDMA device usable: cannot list RDMA devices (is there one, and is the ib_uverbs kernel module loaded?)")]
    DeviceList(#[source] io::Error),
    /// The machine has no RDMA device at all.
    #[error("no RDMA device on this machine (none under /sys/class/infiniband; for Soft-RoCE: `rdma link add rxe0 type rxe netdev IFACE`)")]
    NoDevice,
    /// The named device does not exist.
    #[error("no RDMA device named {name:?} (devices here: {})", .available.join(", "))]
    UnknownDevice {
        /// The name asked for.
        name: String,
        /// The devices that exist.
        available: Vec<String>,
    },
    /// A list of devices (rails) that cannot be used: too many, or one named twice.
    #[error("verbs_device {spec:?}: {why}")]
    BadRails {
        /// The list given.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// A device spec (`name[:port]`) that does not parse.
    #[error("bad RDMA device {0:?}: write NAME or NAME:PORT (e.g. rxe0:1)")]
    BadSpec(String),
    /// No device has an active port.
    #[error("no RDMA device has an active port (devices here: {})", .available.join(", "))]
    NoActivePort {
        /// The devices that exist.
        available: Vec<String>,
    },
    /// `ibv_open_device` failed.
    #[error("cannot open RDMA device {device}")]
    Open {
        /// The device.
        device: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `ibv_query_device` failed.
    #[error("cannot query RDMA device {device}")]
    QueryDevice {
        /// The device.
        device: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The port does not exist on the device.
    #[error("RDMA device {device} has no port {port} (it has {count})")]
    NoPort {
        /// The device.
        device: String,
        /// The port asked for.
        port: u8,
        /// How many ports it has (numbered from 1).
        count: u8,
    },
    /// `ibv_query_port` failed.
    #[error("cannot query port {port} of RDMA device {device}")]
    QueryPort {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The port is not active.
    #[error("port {port} of RDMA device {device} is not active (state {state})")]
    PortDown {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// The port state's name.
        state: String,
    },
    /// `ibv_query_gid` failed, or the index is outside the table.
    #[error("RDMA device {device} port {port} has no GID at index {index} (table of {len})")]
    NoGid {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// The index asked for.
        index: u32,
        /// The GID table's length.
        len: u32,
    },
    /// No RoCE v2 GID with an IPv4-mapped address (RoCE ports need one unless a GID
    /// index is given).
    #[error("RDMA device {device} port {port} has no RoCE v2 GID with an IPv4 address (is an address configured on its network interface? or set the GID index)")]
    NoRoceGid {
        /// The device.
        device: String,
        /// The port.
        port: u8,
    },
    /// A verbs object could not be made (`ibv_alloc_pd`, `ibv_create_cq`, ...).
    #[error("{what} failed on RDMA device {device}")]
    Create {
        /// The verb.
        what: &'static str,
        /// The device.
        device: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `ibv_reg_mr` failed.
    #[error("cannot register {len} bytes of memory with RDMA device {device}{hint}")]
    Register {
        /// The device.
        device: String,
        /// The length.
        len: usize,
        /// A hint about the memlock limit, when that is the likely cause.
        hint: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `ibv_modify_qp` failed.
    #[error("cannot move queue pair {qpn} to {state}")]
    Modify {
        /// The QP number.
        qpn: u32,
        /// The target state.
        state: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Posting work requests failed.
    #[error("{what} on queue pair {qpn} failed")]
    Post {
        /// `ibv_post_send`, `ibv_post_srq_recv`.
        what: &'static str,
        /// The QP number (0 for the shared receive queue).
        qpn: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Polling the completion queue failed.
    #[error("ibv_poll_cq failed")]
    Poll(#[source] io::Error),
    /// Arming the completion queue or reading its channel failed.
    #[error("{what} failed")]
    Notify {
        /// The verb.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The bootstrap (TCP) listener could not be bound.
    #[error("cannot listen for peer agents' verbs bootstrap connections on {addr}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A descriptor could not be registered with the agent's poller.
    #[error("cannot watch the {what} descriptor")]
    Watch {
        /// Which.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Results of the verbs layer.
pub type Result<T> = std::result::Result<T, Error>;

/// The calling thread's `errno` as an I/O error (libibverbs sets it when a verb that
/// returns a pointer fails).
pub(crate) fn last_os() -> io::Error {
    io::Error::last_os_error()
}

/// A verb that returns an error number (0 = success; some return `-errno`, some set
/// `errno` and return -1): the error.
pub(crate) fn from_ret(ret: i32) -> io::Error {
    if ret == -1 {
        io::Error::last_os_error()
    } else {
        io::Error::from_raw_os_error(ret.wrapping_abs())
    }
}
