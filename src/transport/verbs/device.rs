//! Devices, ports and GIDs: [`Context`] is an open device with the port the transport
//! uses.

use std::ffi::CStr;
use std::fmt;
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

use super::error::{from_ret, last_os, Error, Result};
use crate::transport::Shortfall;

/// `IBV_LINK_LAYER_INFINIBAND` (an anonymous enum in `verbs.h`).
pub const LINK_LAYER_INFINIBAND: u8 = 1;
/// `IBV_LINK_LAYER_ETHERNET`: RoCE.
pub const LINK_LAYER_ETHERNET: u8 = 2;

/// A 128-bit GID: an IPv6 address (RoCE: the interface's IPv6 address, or an IPv4
/// address mapped into IPv6) or an InfiniBand port GID.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Gid(pub [u8; 16]);

/// An entry of a port's GID table: what [`Context::choose_gid`] picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GidEntry {
    /// Its index in the table (the `sgid_index` of an address handle).
    pub index: u32,
    /// The GID.
    pub gid: Gid,
}

/// A GID table entry as [`pick_gid`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GidCandidate {
    /// Its index in the table.
    pub index: u32,
    /// The GID.
    pub gid: Gid,
    /// `ports/N/gid_attrs/types/IDX` ("RoCE v2", "IB/RoCE v1"), if the kernel says.
    pub kind: Option<String>,
    /// `ports/N/gid_attrs/ndevs/IDX`: the network device it belongs to.
    pub netdev: Option<String>,
}

/// Why a GID was chosen (for the log, `wyvern stat` and `wyvern info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GidChoice {
    /// `verbs_gid_index` named it.
    Asked,
    /// A RoCE v2 entry carrying this node's address in the node list: the
    /// address peers reach this node at.
    CarriesAddress(Ipv4Addr, Option<String>),
    /// No RoCE v2 entry carries this node's address (`wanted`, if known): the
    /// first RoCE v2 IPv4-mapped entry, on this netdev. Peers may not reach it.
    FirstV2(Option<Ipv4Addr>, Option<String>),
}

impl std::fmt::Display for GidChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |d: &Option<String>| d.as_deref().map(|d| format!(" on {d}")).unwrap_or_default();
        match self {
            GidChoice::Asked => f.write_str("verbs_gid_index names it"),
            GidChoice::CarriesAddress(a, d) => write!(
                f,
                "RoCE v2, carries this node's address {a} from the node list{}",
                on(d)
            ),
            GidChoice::FirstV2(Some(a), d) => write!(
                f,
                "RoCE v2, the first IPv4 entry{}: NONE carries this node's address {a} from the \
                 node list (is {a} on this device's netdev? set verbs_gid_index if peers reach \
                 this node at another address)",
                on(d)
            ),
            GidChoice::FirstV2(None, d) => write!(f, "RoCE v2, the first IPv4 entry{}", on(d)),
        }
    }
}

/// The GID to address a RoCE port by, from its table: among the non-empty
/// RoCE v2 entries holding an IPv4-mapped address (an entry whose type the
/// kernel does not say counts as v2), the one carrying `address`, else the
/// first. RoCE v1 and IPv6 (link-local) entries are never chosen: v2 is
/// routable and IPv4 is what the node list speaks.
pub fn pick_gid(
    table: &[GidCandidate],
    address: Option<Ipv4Addr>,
) -> Option<(&GidCandidate, GidChoice)> {
    let v2 = |c: &&GidCandidate| {
        !c.gid.is_zero()
            && c.gid.ipv4().is_some()
            && c.kind
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case("RoCE v2"))
    };
    if let Some(a) = address {
        if let Some(c) = table.iter().filter(v2).find(|c| c.gid.ipv4() == Some(a)) {
            return Some((c, GidChoice::CarriesAddress(a, c.netdev.clone())));
        }
    }
    let c = table.iter().find(v2)?;
    Some((c, GidChoice::FirstV2(address, c.netdev.clone())))
}

/// Whether a queue pair from GID `mine` can reach GID `theirs`, checked at
/// bootstrap before a queue pair is connected to the peer's: both addressed the
/// same way (GRH or LID), both IPv4-mapped or both not, and for IPv4-mapped
/// GIDs a route from the one to the other in this host's routing table (a
/// connected UDP socket bound to our GID's address: a route lookup, no packet
/// sent). `Err`: why not, in a sentence.
pub fn gids_can_reach(mine: Option<Gid>, theirs: Option<Gid>) -> std::result::Result<(), String> {
    let (mine, theirs) = match (mine, theirs) {
        (None, None) => return Ok(()),
        (Some(m), None) => {
            return Err(format!(
                "this node addresses by GID ({m}), the peer by LID only (no GID): one \
                 end is on RoCE or sets verbs_gid_index, the other does not"
            ))
        }
        (None, Some(t)) => {
            return Err(format!(
                "the peer addresses by GID ({t}), this node by LID only (no GID): one \
                 end is on RoCE or sets verbs_gid_index, the other does not"
            ))
        }
        (Some(m), Some(t)) => (m, t),
    };
    match (mine.ipv4(), theirs.ipv4()) {
        (Some(a), Some(b)) => {
            use std::io::ErrorKind as K;
            let route = std::net::UdpSocket::bind((a, 0)).and_then(|s| s.connect((b, 4791)));
            match route {
                Err(e) if matches!(e.kind(), K::NetworkUnreachable | K::HostUnreachable) => {
                    Err(format!(
                        "no route from this node's GID address {a} to the peer's {b} ({e}): \
                         the two are on networks this host does not route between"
                    ))
                }
                // Reachable, or a failure that says nothing about routes
                // (our address not up yet): the queue pair will tell.
                _ => Ok(()),
            }
        }
        (Some(a), None) => Err(format!(
            "this node's GID is IPv4-mapped ({a}), the peer's is IPv6 ({theirs}): RoCE v2 \
             cannot carry one to the other"
        )),
        (None, Some(b)) => Err(format!(
            "this node's GID is IPv6 ({mine}), the peer's is IPv4-mapped ({b}): RoCE v2 \
             cannot carry one to the other"
        )),
        (None, None) => Ok(()),
    }
}

impl Gid {
    /// The IPv4 address inside an IPv4-mapped GID (`::ffff:a.b.c.d`).
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        let b = &self.0;
        (b[..10].iter().all(|&x| x == 0) && b[10] == 0xff && b[11] == 0xff)
            .then(|| Ipv4Addr::new(b[12], b[13], b[14], b[15]))
    }

    /// Whether every byte is zero (an empty table entry).
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&x| x == 0)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ipv4() {
            Some(a) => write!(f, "::ffff:{a}"),
            None => write!(f, "{}", std::net::Ipv6Addr::from(self.0)),
        }
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

/// What the transport needs to know of a device's limits.
#[derive(Clone, Copy, Debug)]
pub struct DeviceCaps {
    /// Work requests per queue.
    pub max_qp_wr: u32,
    /// Work requests of a shared receive queue.
    pub max_srq_wr: u32,
    /// Entries of a completion queue.
    pub max_cqe: u32,
    /// RDMA reads a queue pair may have outstanding as initiator.
    pub max_qp_init_rd_atom: u32,
    /// ... and as responder.
    pub max_qp_rd_atom: u32,
    /// Ports (numbered from 1).
    pub ports: u8,
}

/// A port's state, read with `ibv_query_port`.
#[derive(Clone, Copy, Debug)]
pub struct PortInfo {
    /// `IBV_PORT_*` (4: active).
    pub state: u32,
    /// The active MTU as `IBV_MTU_*` (1: 256 B ... 5: 4096 B).
    pub active_mtu: u32,
    /// The largest MTU the port supports, as `IBV_MTU_*`.
    pub max_mtu: u32,
    /// The local identifier (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// [`LINK_LAYER_INFINIBAND`] or [`LINK_LAYER_ETHERNET`].
    pub link_layer: u8,
    /// Entries of the GID table.
    pub gid_table_len: u32,
    /// Largest message.
    pub max_msg_size: u32,
}

/// `IBV_PORT_ACTIVE`.
pub const PORT_ACTIVE: u32 = sys::ibv_port_state::IBV_PORT_ACTIVE;

impl PortInfo {
    /// Whether the port is up.
    pub fn is_active(&self) -> bool {
        self.state == PORT_ACTIVE
    }

    /// Whether the port is RoCE (Ethernet link layer), where every address is a GID.
    pub fn is_roce(&self) -> bool {
        self.link_layer == LINK_LAYER_ETHERNET
    }

    /// The active MTU in bytes.
    pub fn mtu_bytes(&self) -> usize {
        mtu_bytes(self.active_mtu)
    }
}

/// The RoCE headers inside an Ethernet frame besides the RDMA payload (GRH or
/// IPv4/IPv6 40, UDP 8, BTH 12, extended headers up to 32, ICRC 4): the kernel
/// (`iboe_get_mtu`) takes them off the netdev's MTU and makes the port's active
/// MTU the largest `IBV_MTU_*` that fits the rest.
/// rxe takes 80 of them; 96 fits both.
pub const ROCE_HEADERS: usize = 96;

/// A RoCE port whose active MTU (`active` bytes) is below its largest (`max`)
/// because its netdev's MTU is small (1500 → 1024 B packets where the port does
/// 4096): the classic misconfiguration, as a degradation with the netdev's MTU and
/// the fix; `None` where the port runs its largest. For RoCE ports only (on
/// InfiniBand the subnet manager sets the MTU). `netdev`: the port's network
/// interface and its MTU, when known.
pub fn roce_mtu_shortfall(
    device: &str,
    port: u8,
    active: usize,
    max: usize,
    netdev: Option<(&str, u32)>,
) -> Option<Shortfall> {
    if active >= max {
        return None;
    }
    let need = max + ROCE_HEADERS;
    let (dev, has) = match netdev {
        Some((d, m)) => (d.to_string(), format!("its netdev {d}'s MTU is {m}")),
        None => ("DEV".to_string(), "its netdev's MTU is small".to_string()),
    };
    Some(Shortfall {
        what: "mtu",
        why: format!(
            "RoCE port {device}:{port} runs an RDMA MTU of {active} B where it can do {max} B: \
             {has} (RoCE needs the MTU + {ROCE_HEADERS} B of headers), so large messages take \
             {}x the packets",
            max / active
        ),
        fix: format!(
            "raise the netdev's MTU to {need} or more (ip link set dev {dev} mtu 9000, on every \
             node and the switch ports between them), then restart the agent (it reads the port's MTU when it starts)"
        ),
    })
}

/// The MTU of network interface `name` (sysfs `class/net/NAME/mtu` under `sys`,
/// in this process's network namespace).
pub fn netdev_mtu(sys: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(sys.join("class/net").join(name).join("mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An `IBV_MTU_*` value in bytes (256 for anything unknown).
pub fn mtu_bytes(mtu: u32) -> usize {
    match mtu {
        1..=5 => 128 << mtu,
        _ => 256,
    }
}

/// The name of a port state.
pub fn port_state_name(state: u32) -> &'static str {
    match state {
        0 => "nop",
        1 => "down",
        2 => "init",
        3 => "armed",
        4 => "active",
        5 => "active-defer",
        _ => "unknown",
    }
}

/// An asynchronous event of a device (`ibv_get_async_event`), copied out and acknowledged.
#[derive(Clone, Debug)]
pub struct AsyncEvent {
    /// `IBV_EVENT_*`.
    pub kind: u32,
    /// Its name.
    pub name: &'static str,
    /// The queue pair it concerns (QP events).
    pub qp_num: Option<u32>,
    /// The port it concerns (port events).
    pub port: Option<u32>,
}

impl AsyncEvent {
    /// A QP-level error: the QP went to the error state.
    pub fn is_qp_fatal(&self) -> bool {
        matches!(self.kind, 1..=3)
    }

    /// `IBV_EVENT_QP_LAST_WQE_REACHED`: a QP attached to a shared receive queue
    /// entered the error state and will take no more of its receive buffers. For such
    /// a QP this is the event that says it failed (the receives it would otherwise
    /// flush belong to the SRQ, and are not flushed).
    pub fn is_qp_last_wqe(&self) -> bool {
        self.kind == 16
    }

    /// The device is gone or broken: every queue pair is lost.
    pub fn is_device_fatal(&self) -> bool {
        self.kind == 8
    }

    /// `IBV_EVENT_PORT_ERR`: the port went down (its link, or its netdev).
    pub fn is_port_err(&self) -> bool {
        self.kind == 10
    }

    /// `IBV_EVENT_PORT_ACTIVE`: the port is up again.
    pub fn is_port_active(&self) -> bool {
        self.kind == 9
    }
}

/// The name of an `IBV_EVENT_*` value. (Not `ibv_event_type_str`: its binding takes a
/// Rust enum, and an event number the kernel adds later would be undefined behaviour
/// there.)
fn event_name(kind: u32) -> &'static str {
    const NAMES: [&str; 20] = [
        "CQ error",
        "local work queue catastrophic error",
        "invalid request local work queue error",
        "local access violation work queue error",
        "communication established",
        "send queue drained",
        "path migrated",
        "path migration request error",
        "local catastrophic error (device fatal)",
        "port active",
        "port error",
        "LID change",
        "P_Key change",
        "SM change",
        "SRQ catastrophic error",
        "SRQ limit reached",
        "last WQE reached",
        "client reregistration",
        "GID table change",
        "WQ fatal",
    ];
    NAMES.get(kind as usize).copied().unwrap_or("unknown event")
}

/// The layout of `struct ibv_async_event` with the event number as a plain integer
/// (rdma-sys binds it as a Rust enum, which must never hold a value it does not list).
#[repr(C)]
struct RawAsyncEvent {
    element: sys::ibv_async_event_element_t,
    event_type: u32,
}

/// The names of the RDMA devices on this machine.
pub fn device_names() -> Result<Vec<String>> {
    Ok(DeviceList::get()?.names())
}

/// `ibv_get_device_list`, freed on drop.
struct DeviceList {
    list: NonNull<*mut sys::ibv_device>,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<DeviceList> {
        let mut n = 0i32;
        // SAFETY: `n` is a valid out-parameter; the returned array (or null) is ours
        // until `ibv_free_device_list`.
        let p = unsafe { sys::ibv_get_device_list(&mut n) };
        let list = NonNull::new(p).ok_or_else(|| Error::DeviceList(last_os()))?;
        Ok(DeviceList {
            list,
            len: n.max(0) as usize,
        })
    }

    fn device(&self, i: usize) -> *mut sys::ibv_device {
        assert!(i < self.len);
        // SAFETY: `i` is below the count the list came with (asserted).
        unsafe { *self.list.as_ptr().add(i) }
    }

    fn name(&self, i: usize) -> String {
        let dev = self.device(i);
        // SAFETY: a device of a live list; its name is a NUL-terminated string that
        // lives as long as the list, copied out at once.
        unsafe { CStr::from_ptr(sys::ibv_get_device_name(dev)) }
            .to_string_lossy()
            .into_owned()
    }

    fn sysfs(&self, i: usize) -> PathBuf {
        let dev = self.device(i);
        // SAFETY: a device of a live list; `ibdev_path` is a NUL-terminated array
        // inside it (the sysfs directory, e.g. /sys/class/infiniband/rxe0).
        let p = unsafe { CStr::from_ptr((*dev).ibdev_path.as_ptr()) };
        PathBuf::from(p.to_string_lossy().into_owned())
    }

    fn names(&self) -> Vec<String> {
        (0..self.len).map(|i| self.name(i)).collect()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from `ibv_get_device_list` and is freed once; devices
        // opened from it stay valid (libibverbs holds its own reference).
        unsafe { sys::ibv_free_device_list(self.list.as_ptr()) };
    }
}

/// An open RDMA device and the port the transport uses on it; closed on drop, after
/// every object made from it (they hold an `Arc<Context>`).
///
/// libibverbs is thread-safe (rdma-core documents every verb as callable from any
/// thread), so a context is `Send` and `Sync`.
pub struct Context {
    ctx: NonNull<sys::ibv_context>,
    name: String,
    sysfs: PathBuf,
    port: u8,
    caps: DeviceCaps,
}

// SAFETY: libibverbs objects may be used from any thread (see the type's docs); the
// pointer is owned by this value alone.
unsafe impl Send for Context {}
// SAFETY: as above; every method is a verb call or reads immutable fields.
unsafe impl Sync for Context {}

impl Context {
    /// Open a device and pick its port. `spec`: `NAME` (its first active port),
    /// `NAME:PORT`, or `None` (the first active port of any device).
    pub fn open(spec: Option<&str>) -> Result<Arc<Context>> {
        let (want, port) = match spec.map(str::trim).filter(|s| !s.is_empty()) {
            None => (None, None),
            Some(s) => match s.split_once(':') {
                Some((n, p)) => {
                    let port = p
                        .parse::<u8>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| Error::BadSpec(s.into()))?;
                    (Some(n.to_string()), Some(port))
                }
                None => (Some(s.to_string()), None),
            },
        };
        let list = DeviceList::get()?;
        let names = list.names();
        if names.is_empty() {
            return Err(Error::NoDevice);
        }
        match want {
            Some(name) => {
                let i =
                    names
                        .iter()
                        .position(|n| *n == name)
                        .ok_or_else(|| Error::UnknownDevice {
                            name: name.clone(),
                            available: names.clone(),
                        })?;
                let mut ctx = Context::open_index(&list, i)?;
                let port = match port {
                    Some(p) => {
                        if p > ctx.caps.ports {
                            return Err(Error::NoPort {
                                device: name,
                                port: p,
                                count: ctx.caps.ports,
                            });
                        }
                        p
                    }
                    None => ctx.first_active_port()?.unwrap_or(1),
                };
                ctx.port = port;
                let info = ctx.query_port()?;
                if !info.is_active() {
                    return Err(Error::PortDown {
                        device: ctx.name.clone(),
                        port,
                        state: port_state_name(info.state).into(),
                    });
                }
                Ok(Arc::new(ctx))
            }
            None => {
                for i in 0..names.len() {
                    let Ok(mut ctx) = Context::open_index(&list, i) else {
                        continue;
                    };
                    if let Ok(Some(p)) = ctx.first_active_port() {
                        ctx.port = p;
                        return Ok(Arc::new(ctx));
                    }
                }
                Err(Error::NoActivePort { available: names })
            }
        }
    }

    fn open_index(list: &DeviceList, i: usize) -> Result<Context> {
        let name = list.name(i);
        // SAFETY: a device of a live list; the context is ours until
        // `ibv_close_device` (in Drop) and outlives the list.
        let p = unsafe { sys::ibv_open_device(list.device(i)) };
        let ctx = NonNull::new(p).ok_or_else(|| Error::Open {
            device: name.clone(),
            source: last_os(),
        })?;
        let mut c = Context {
            ctx,
            name,
            sysfs: list.sysfs(i),
            port: 1,
            caps: DeviceCaps {
                max_qp_wr: 0,
                max_srq_wr: 0,
                max_cqe: 0,
                max_qp_init_rd_atom: 0,
                max_qp_rd_atom: 0,
                ports: 0,
            },
        };
        let mut attr = MaybeUninit::<sys::ibv_device_attr>::zeroed();
        // SAFETY: an open context and an out-parameter of the right type.
        let r = unsafe { sys::ibv_query_device(c.ctx.as_ptr(), attr.as_mut_ptr()) };
        if r != 0 {
            return Err(Error::QueryDevice {
                device: c.name.clone(),
                source: from_ret(r),
            });
        }
        // SAFETY: filled by the successful call (and all-zero is valid for it anyway).
        let a = unsafe { attr.assume_init() };
        c.caps = DeviceCaps {
            max_qp_wr: a.max_qp_wr.max(0) as u32,
            max_srq_wr: a.max_srq_wr.max(0) as u32,
            max_cqe: a.max_cqe.max(0) as u32,
            max_qp_init_rd_atom: a.max_qp_init_rd_atom.max(0) as u32,
            max_qp_rd_atom: a.max_qp_rd_atom.max(0) as u32,
            ports: a.phys_port_cnt,
        };
        Ok(c)
    }

    fn first_active_port(&mut self) -> Result<Option<u8>> {
        for p in 1..=self.caps.ports {
            if self.query_port_n(p)?.is_active() {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// The device's name (`rxe0`, `mlx5_0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port in use.
    pub fn port(&self) -> u8 {
        self.port
    }

    /// Limits of the device.
    pub fn caps(&self) -> DeviceCaps {
        self.caps
    }

    /// The raw context, for the other wrappers of this module.
    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_context {
        self.ctx.as_ptr()
    }

    /// The state of the port in use.
    pub fn query_port(&self) -> Result<PortInfo> {
        self.query_port_n(self.port)
    }

    fn query_port_n(&self, port: u8) -> Result<PortInfo> {
        let mut attr = MaybeUninit::<sys::ibv_port_attr>::zeroed();
        // SAFETY: an open context and an out-parameter of the right type (the inline
        // `___ibv_query_port` passes its size, as `ibv_query_port` does in C).
        let r = unsafe { sys::___ibv_query_port(self.ctx.as_ptr(), port, attr.as_mut_ptr()) };
        if r != 0 {
            return Err(Error::QueryPort {
                device: self.name.clone(),
                port,
                source: from_ret(r),
            });
        }
        // SAFETY: filled by the successful call (all-zero is valid for it anyway).
        let a = unsafe { attr.assume_init() };
        Ok(PortInfo {
            state: a.state,
            active_mtu: a.active_mtu,
            max_mtu: a.max_mtu,
            lid: a.lid,
            link_layer: a.link_layer,
            gid_table_len: a.gid_tbl_len.max(0) as u32,
            max_msg_size: a.max_msg_sz,
        })
    }

    /// Entry `index` of the port's GID table.
    pub fn gid(&self, index: u32) -> Result<Gid> {
        let len = self.query_port()?.gid_table_len;
        self.gid_at(self.port, index, len)
    }

    /// Entry `index` of port `port`'s GID table of `len` entries.
    fn gid_at(&self, port: u8, index: u32, len: u32) -> Result<Gid> {
        let err = || Error::NoGid {
            device: self.name.clone(),
            port,
            index,
            len,
        };
        if index >= len {
            return Err(err());
        }
        let mut gid = MaybeUninit::<sys::ibv_gid>::zeroed();
        // SAFETY: an open context, an index inside the table, an out-parameter of the
        // right type.
        let r =
            unsafe { sys::ibv_query_gid(self.ctx.as_ptr(), port, index as i32, gid.as_mut_ptr()) };
        if r != 0 {
            return Err(err());
        }
        // SAFETY: filled by the successful call; every bit pattern is a valid GID.
        Ok(Gid(unsafe { gid.assume_init().raw }))
    }

    /// The type of GID table entry `index` as the kernel names it in sysfs
    /// (`ports/N/gid_attrs/types/IDX`: "RoCE v2", "IB/RoCE v1"); `None` where there is
    /// no such file (InfiniBand ports, old kernels).
    pub fn gid_type(&self, index: u32) -> Option<String> {
        self.gid_attr(self.port, "types", index)
    }

    /// The network interface of the port in use (RoCE): the one of GID table entry
    /// `index` when given, else of the first entry that names one; with its MTU.
    pub fn netdev(&self, index: Option<u32>) -> Option<(String, u32)> {
        let name = match index {
            Some(i) => self.gid_attr(self.port, "ndevs", i),
            None => {
                let len = self.query_port().ok()?.gid_table_len;
                (0..len).find_map(|i| self.gid_attr(self.port, "ndevs", i))
            }
        }?;
        let mtu = netdev_mtu(Path::new("/sys"), &name)?;
        Some((name, mtu))
    }

    /// A GID table entry's attribute from sysfs (`ports/N/gid_attrs/WHAT/IDX`).
    fn gid_attr(&self, port: u8, what: &str, index: u32) -> Option<String> {
        let p = self
            .sysfs
            .join(format!("ports/{port}/gid_attrs/{what}/{index}"));
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The GID index to address this port by, and why: `wanted` when given (it
    /// must exist and be non-empty); else on RoCE the RoCE v2 IPv4-mapped entry
    /// that carries `address` (this node's address in the node list, which peers
    /// use), or the first RoCE v2 IPv4-mapped entry when none does
    /// ([`pick_gid`]); on InfiniBand `None` (LIDs address the port; no GRH).
    pub fn choose_gid(
        &self,
        wanted: Option<u32>,
        address: Option<Ipv4Addr>,
    ) -> Result<Option<(GidEntry, GidChoice)>> {
        let info = self.query_port()?;
        if let Some(i) = wanted {
            let g = self.gid(i)?;
            if g.is_zero() {
                return Err(Error::NoGid {
                    device: self.name.clone(),
                    port: self.port,
                    index: i,
                    len: info.gid_table_len,
                });
            }
            return Ok(Some((GidEntry { index: i, gid: g }, GidChoice::Asked)));
        }
        if !info.is_roce() {
            return Ok(None);
        }
        let table: Vec<GidCandidate> = (0..info.gid_table_len)
            .filter_map(|i| {
                let g = self.gid(i).ok()?;
                Some(GidCandidate {
                    index: i,
                    gid: g,
                    kind: self.gid_type(i),
                    netdev: self.gid_attr(self.port, "ndevs", i),
                })
            })
            .collect();
        match pick_gid(&table, address) {
            Some((c, why)) => Ok(Some((
                GidEntry {
                    index: c.index,
                    gid: c.gid,
                },
                why,
            ))),
            None => Err(Error::NoRoceGid {
                device: self.name.clone(),
                port: self.port,
            }),
        }
    }

    /// The descriptor that becomes readable when an asynchronous event waits.
    pub fn async_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `async_fd` is opened with the context and closed with it, so it
        // lives as long as `&self`.
        unsafe { BorrowedFd::borrow_raw(self.raw_async_fd()) }
    }

    fn raw_async_fd(&self) -> RawFd {
        // SAFETY: reads a field of the live context.
        unsafe { (*self.ctx.as_ptr()).async_fd }
    }

    /// Make the asynchronous event descriptor non-blocking, so that
    /// [`Context::next_async_event`] returns `None` instead of waiting.
    pub fn set_async_nonblocking(&self) -> std::io::Result<()> {
        set_nonblocking(self.raw_async_fd())
    }

    /// The next asynchronous event, if one waits (after
    /// [`Context::set_async_nonblocking`]), copied out and acknowledged.
    pub fn next_async_event(&self) -> Option<AsyncEvent> {
        let mut ev = MaybeUninit::<RawAsyncEvent>::zeroed();
        // SAFETY: `RawAsyncEvent` has the layout of `struct ibv_async_event` (a union
        // of pointers and an int, then a C enum, i.e. an unsigned int); the call
        // fills it or fails.
        let r = unsafe { sys::ibv_get_async_event(self.ctx.as_ptr(), ev.as_mut_ptr() as *mut _) };
        if r != 0 {
            return None;
        }
        // SAFETY: filled by the successful call.
        let raw = unsafe { ev.assume_init_ref() };
        let kind = raw.event_type;
        let (mut qp_num, mut port) = (None, None);
        match kind {
            // QP events: the element is the QP, alive until the event is acknowledged.
            // SAFETY: for these event numbers libibverbs sets `element.qp`.
            1..=7 | 16 => qp_num = Some(unsafe { (*raw.element.qp).qp_num }),
            // SAFETY: for port events libibverbs sets `element.port_num`.
            9..=13 | 17 | 18 => port = Some(unsafe { raw.element.port_num } as u32),
            _ => {}
        }
        // SAFETY: an event returned by `ibv_get_async_event`, acknowledged once.
        unsafe { sys::ibv_ack_async_event(ev.as_mut_ptr() as *mut _) };
        Some(AsyncEvent {
            kind,
            name: event_name(kind),
            qp_num,
            port,
        })
    }

    /// A counter of the port from sysfs (`ports/N/hw_counters/NAME`), when the device
    /// has it (rxe: `rcvd_rnr_err`, `send_rnr_err`, `retry_exceeded_err`, ...).
    pub fn hw_counter(&self, name: &str) -> Option<u64> {
        let p = self
            .sysfs
            .join(format!("ports/{}/hw_counters/{name}", self.port));
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }
}

/// One port of an RDMA device as `wyvern info` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PortReport {
    /// Port number (from 1).
    pub port: u8,
    /// State name ("active", "down", ...).
    pub state: String,
    /// "InfiniBand" or "Ethernet" (RoCE).
    pub link_layer: String,
    /// Active MTU in bytes.
    pub mtu: usize,
    /// The largest MTU the port supports, in bytes.
    pub max_mtu: usize,
    /// RoCE: the network interface (of the first GID that names one) and its MTU.
    pub netdev: Option<(String, u32)>,
    /// Local identifier (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The non-empty entries of the GID table.
    pub gids: Vec<GidReport>,
}

/// One GID table entry as `wyvern info` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GidReport {
    /// Index in the table.
    pub index: u32,
    /// The GID.
    pub gid: String,
    /// "RoCE v2", "IB/RoCE v1" (sysfs), when known.
    pub kind: Option<String>,
    /// The network interface it belongs to (RoCE), when known.
    pub netdev: Option<String>,
}

/// One RDMA device as `wyvern info` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceReport {
    /// Device name.
    pub name: String,
    /// Its ports, or why it could not be opened.
    pub ports: std::result::Result<Vec<PortReport>, String>,
}

/// Every RDMA device on this machine with its ports and GID tables (`wyvern info`);
/// an empty list when there is none. Each device is opened and closed again.
pub fn inventory() -> Result<Vec<DeviceReport>> {
    let list = DeviceList::get()?;
    let mut out = Vec::with_capacity(list.len);
    for i in 0..list.len {
        let name = list.name(i);
        let ports = Context::open_index(&list, i)
            .and_then(|ctx| ctx.port_reports())
            .map_err(|e| e.to_string());
        out.push(DeviceReport { name, ports });
    }
    Ok(out)
}

impl Context {
    fn port_reports(&self) -> Result<Vec<PortReport>> {
        let mut v = Vec::new();
        for port in 1..=self.caps.ports {
            let info = self.query_port_n(port)?;
            let mut gids = Vec::new();
            for index in 0..info.gid_table_len {
                let Ok(g) = self.gid_at(port, index, info.gid_table_len) else {
                    continue;
                };
                if g.is_zero() {
                    continue;
                }
                gids.push(GidReport {
                    index,
                    gid: g.to_string(),
                    kind: self.gid_attr(port, "types", index),
                    netdev: self.gid_attr(port, "ndevs", index),
                });
            }
            v.push(PortReport {
                port,
                state: port_state_name(info.state).to_string(),
                link_layer: if info.is_roce() {
                    "Ethernet".into()
                } else {
                    "InfiniBand".into()
                },
                mtu: info.mtu_bytes(),
                max_mtu: mtu_bytes(info.max_mtu),
                netdev: gids
                    .iter()
                    .find_map(|g| g.netdev.clone())
                    .and_then(|n| Some((n.clone(), netdev_mtu(Path::new("/sys"), &n)?))),
                lid: info.lid,
                gids,
            });
        }
        Ok(v)
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Context({}:{})", self.name, self.port)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every object made from this context holds an `Arc<Context>`, so
        // they are all gone; the context is closed once.
        let r = unsafe { sys::ibv_close_device(self.ctx.as_ptr()) };
        if r != 0 {
            log::warn!("ibv_close_device({}): {}", self.name, from_ret(r));
        }
    }
}

/// Set `O_NONBLOCK` on a descriptor libibverbs owns.
pub(crate) fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller keeps open; only its flags change.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roce_port_below_its_largest_mtu_is_a_shortfall_with_its_netdev() {
        // 1500-byte netdev: active 1024 (IBV_MTU_1024 = 3), max 4096 (5).
        let s = roce_mtu_shortfall("rxe0", 1, mtu_bytes(3), mtu_bytes(5), Some(("eth1", 1500)))
            .unwrap();
        assert_eq!(s.what, "mtu");
        assert!(s.why.contains("rxe0:1") && s.why.contains("1024 B") && s.why.contains("4096 B"));
        assert!(
            s.why.contains("eth1's MTU is 1500") && s.why.contains("4x"),
            "{}",
            s.why
        );
        assert!(
            s.fix.contains("4192") && s.fix.contains("ip link set dev eth1 mtu"),
            "{}",
            s.fix
        );
        // The netdev unknown: still said, with a placeholder.
        let s = roce_mtu_shortfall("rxe0", 1, 1024, 4096, None).unwrap();
        assert!(s.fix.contains("ip link set dev DEV"), "{}", s.fix);
        // At its largest: nothing to say.
        assert_eq!(roce_mtu_shortfall("rxe0", 1, 4096, 4096, None), None);
    }

    fn v4(a: [u8; 4]) -> Gid {
        let mut g = [0u8; 16];
        g[10] = 0xff;
        g[11] = 0xff;
        g[12..].copy_from_slice(&a);
        Gid(g)
    }

    fn entry(index: u32, gid: Gid, kind: &str, netdev: &str) -> GidCandidate {
        GidCandidate {
            index,
            gid,
            kind: Some(kind.into()),
            netdev: Some(netdev.into()),
        }
    }

    #[test]
    fn gids_that_cannot_reach_each_other_are_named_before_any_queue_pair() {
        let mut ll = [0u8; 16];
        ll[0] = 0xfe;
        ll[1] = 0x80;
        ll[15] = 7;
        let ll = Gid(ll);
        let lo = v4([127, 0, 0, 1]);
        // The same way on both ends: fine (loopback always routes).
        assert_eq!(gids_can_reach(None, None), Ok(()));
        assert_eq!(gids_can_reach(Some(lo), Some(v4([127, 0, 0, 2]))), Ok(()));
        assert_eq!(gids_can_reach(Some(ll), Some(ll)), Ok(()));
        // IPv4-mapped against IPv6, either way round.
        let e = gids_can_reach(Some(ll), Some(lo)).unwrap_err();
        assert!(e.contains("IPv6") && e.contains("127.0.0.1"), "{e}");
        let e = gids_can_reach(Some(lo), Some(ll)).unwrap_err();
        assert!(
            e.contains("IPv4-mapped (127.0.0.1)") && e.contains("fe80"),
            "{e}"
        );
        // GID against LID addressing.
        let e = gids_can_reach(Some(lo), None).unwrap_err();
        assert!(e.contains("LID"), "{e}");
        assert!(gids_can_reach(None, Some(lo)).unwrap_err().contains("LID"));
    }

    /// A port with what a RoCE host shows: an IPv6 link-local pair, then
    /// v1 and v2 entries for two IPv4 addresses on two netdevs.
    fn table() -> Vec<GidCandidate> {
        let mut ll = [0u8; 16];
        ll[0] = 0xfe;
        ll[1] = 0x80;
        ll[15] = 1;
        vec![
            entry(0, Gid(ll), "IB/RoCE v1", "eth1"),
            entry(1, Gid(ll), "RoCE v2", "eth1"),
            entry(2, v4([10, 0, 0, 5]), "IB/RoCE v1", "eth1"),
            entry(3, v4([10, 0, 0, 5]), "RoCE v2", "eth1"),
            entry(4, Gid::default(), "RoCE v2", ""),
            entry(5, v4([10, 1, 0, 5]), "IB/RoCE v1", "eth1.100"),
            entry(6, v4([10, 1, 0, 5]), "RoCE v2", "eth1.100"),
        ]
    }

    #[test]
    fn the_gid_carrying_the_node_address_wins_then_the_first_v2_ipv4() {
        let t = table();
        let (c, why) = pick_gid(&t, Some(Ipv4Addr::new(10, 1, 0, 5))).unwrap();
        assert_eq!(c.index, 6);
        assert_eq!(
            why,
            GidChoice::CarriesAddress(Ipv4Addr::new(10, 1, 0, 5), Some("eth1.100".into()))
        );
        assert!(why
            .to_string()
            .contains("carries this node's address 10.1.0.5"));
        // An address no entry carries: the first v2 IPv4 entry, and the
        // reason says none carries it.
        let (c, why) = pick_gid(&t, Some(Ipv4Addr::new(192, 0, 2, 1))).unwrap();
        assert_eq!(c.index, 3);
        assert!(
            why.to_string()
                .contains("NONE carries this node's address 192.0.2.1"),
            "{why}"
        );
        // No address known: the first v2 IPv4 entry.
        assert_eq!(pick_gid(&t, None).unwrap().0.index, 3);
        // v1 or IPv6 entries only: nothing to choose.
        let v1_only: Vec<GidCandidate> = t
            .into_iter()
            .filter(|c| c.kind.as_deref() != Some("RoCE v2") || c.gid.ipv4().is_none())
            .collect();
        assert!(pick_gid(&v1_only, Some(Ipv4Addr::new(10, 0, 0, 5))).is_none());
        // An old kernel that does not say the type: IPv4-mapped entries count.
        let old = vec![GidCandidate {
            index: 2,
            gid: v4([10, 0, 0, 5]),
            kind: None,
            netdev: None,
        }];
        assert_eq!(pick_gid(&old, None).unwrap().0.index, 2);
    }
}
