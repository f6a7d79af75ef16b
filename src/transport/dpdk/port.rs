//! Ethernet ports (`rte_ethdev`): configure, start, burst, stop and close on drop.

use std::cell::Cell;
use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::ptr;
use std::sync::Mutex;

use dpdk_sys::rte_mbuf;

use super::eal::Eal;
use super::error::{Error, Result, RteError};
use super::mbuf::Mbuf;
use super::mempool::PktPool;

/// Port ids open through a [`Port`] in this process: at most one `Port` per id, so
/// no two handles burst on the same queue.
static OPEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// How to set a port up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// Receive queues (each polled by one thread).
    pub rx_queues: u16,
    /// Transmit queues.
    pub tx_queues: u16,
    /// Descriptors per receive queue (adjusted to the device's limits).
    pub rx_descriptors: u16,
    /// Descriptors per transmit queue (adjusted to the device's limits).
    pub tx_descriptors: u16,
    /// The MTU to configure (`None`: the device's default, normally 1500). Jumbo
    /// frames need the rx pool's data room to hold a whole frame: no scatter.
    pub mtu: Option<u16>,
    /// Receive frames for any destination MAC.
    pub promiscuous: bool,
    /// Configure the port but do not start it: [`Port::start`] does, later (a memif
    /// client whose server is not listening yet fails to start). Until it is started
    /// the port sends and receives nothing.
    pub defer_start: bool,
    /// Ask for the multi-segment transmit offload (`RTE_ETH_TX_OFFLOAD_MULTI_SEGS`:
    /// packets in chained mbufs) where the device has it;
    /// [`Port::multi_seg_tx`] says whether it was given.
    pub multi_seg_tx: bool,
}

impl Default for PortConfig {
    /// One rx and one tx queue of 1024 descriptors, default MTU, not promiscuous.
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mtu: None,
            promiscuous: false,
            defer_start: false,
            multi_seg_tx: false,
        }
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A port's link state, as last seen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The link is up.
    pub up: bool,
    /// Speed in Mb/s (0 when unknown or down).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// A port's counters since start or the last [`Port::reset_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames the device dropped because its receive queues were full.
    pub rx_missed: u64,
    /// Erroneous frames received.
    pub rx_errors: u64,
    /// Frames that failed to send.
    pub tx_errors: u64,
    /// Receive buffer allocation failures (the rx pool ran dry).
    pub rx_no_mbuf: u64,
}

/// A configured (normally started) ethdev port, stopped and closed when dropped (a
/// closed port cannot be opened again; a failed [`Port::open`] leaves the device open,
/// to be tried again).
///
/// `'p` is the receive pool's borrow: the pool outlives the port, and so does every
/// mbuf received or sent through it. Bursting takes `&mut self`: a port (and each of
/// its queues) is polled by one thread at a time. It may move between threads but is
/// not `Sync`.
#[derive(Debug)]
pub struct Port<'p> {
    id: u16,
    name: String,
    rx_queues: u16,
    tx_queues: u16,
    /// The host interface the device is bound to (`net_af_packet`, `net_tap`, ...),
    /// 0 if none.
    if_index: u32,
    /// Sends packets in chained mbufs (the offload asked for and configured).
    multi_seg_tx: bool,
    /// Started: Drop stops the device.
    started: bool,
    /// Configured (started or not): Drop closes the device.
    configured: bool,
    _rx_pool: &'p PktPool,
    _not_sync: PhantomData<Cell<()>>,
}

impl<'p> Port<'p> {
    /// Opens the port with this device name (the `--vdev` name, e.g. `net_ring0`, or
    /// a PCI address), configures and starts it.
    pub fn open(eal: &Eal, name: &str, config: &PortConfig, rx_pool: &'p PktPool) -> Result<Self> {
        let c = CString::new(name).map_err(|_| Error::NulByte {
            what: "port name",
            value: name.to_owned(),
        })?;
        let mut id = 0u16;
        // SAFETY: c is a valid C string and id a valid out-pointer for the call.
        let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        if rc != 0 {
            return Err(Error::PortNotFound {
                name: name.to_owned(),
                source: RteError::new(rc),
            });
        }
        Port::open_id(eal, id, config, rx_pool)
    }

    /// Opens the port with this id, configures and starts it.
    pub fn open_id(_eal: &Eal, id: u16, config: &PortConfig, rx_pool: &'p PktPool) -> Result<Self> {
        // SAFETY: a plain query; any id is accepted.
        if unsafe { dpdk_sys::rte_eth_dev_is_valid_port(id) } != 1 {
            return Err(Error::NoSuchPort { port: id });
        }
        {
            let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
            if open.contains(&id) {
                return Err(Error::PortBusy { port: id });
            }
            open.push(id);
        }
        // From here on, dropping `port` releases the id. A failed set-up leaves the
        // device open (it can be configured again); only a configured port is stopped and
        // closed on drop.
        let mut port = Port {
            id,
            name: port_name(id),
            rx_queues: 0,
            tx_queues: 0,
            if_index: 0,
            multi_seg_tx: false,
            started: false,
            configured: false,
            _rx_pool: rx_pool,
            _not_sync: PhantomData,
        };
        port.setup(config, rx_pool)?;
        Ok(port)
    }

    fn setup(&mut self, config: &PortConfig, rx_pool: &PktPool) -> Result<()> {
        let id = self.id;
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: valid port id; info is a valid out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_info_get(id, &mut info) };
        self.check(rc, "rte_eth_dev_info_get")?;
        self.if_index = info.if_index;
        if config.rx_queues == 0 || config.rx_queues > info.max_rx_queues {
            return Err(self.unsupported(format!(
                "{} rx queues asked, the device has 1 to {}",
                config.rx_queues, info.max_rx_queues
            )));
        }
        if config.tx_queues == 0 || config.tx_queues > info.max_tx_queues {
            return Err(self.unsupported(format!(
                "{} tx queues asked, the device has 1 to {}",
                config.tx_queues, info.max_tx_queues
            )));
        }
        let mut conf = dpdk_sys::rte_eth_conf::default();
        if let Some(mtu) = config.mtu {
            if mtu < info.min_mtu || mtu > info.max_mtu {
                return Err(self.unsupported(format!(
                    "MTU {mtu} asked, the device allows {} to {}",
                    info.min_mtu, info.max_mtu
                )));
            }
            let frame = u32::from(mtu) + dpdk_sys::RTE_ETHER_HDR_LEN + 4;
            let room =
                u32::from(rx_pool.data_room()).saturating_sub(dpdk_sys::RTE_PKTMBUF_HEADROOM);
            if frame > room {
                return Err(self.unsupported(format!(
                    "MTU {mtu} needs {frame} B receive buffers, pool {} has {room} B",
                    rx_pool.name()
                )));
            }
            conf.rxmode.mtu = u32::from(mtu);
        }
        // SAFETY: returns a constant.
        let multi_segs = unsafe { dpdk_sys::wyvern_tx_offload_multi_segs() };
        if config.multi_seg_tx && info.tx_offload_capa & multi_segs != 0 {
            conf.txmode.offloads |= multi_segs;
        }
        // SAFETY: valid port id, stopped (never started, or fresh); conf lives for the
        // call and is copied by DPDK.
        let rc = unsafe {
            dpdk_sys::rte_eth_dev_configure(id, config.rx_queues, config.tx_queues, &conf)
        };
        self.check(rc, "rte_eth_dev_configure")?;
        self.multi_seg_tx = conf.txmode.offloads & multi_segs != 0;
        self.rx_queues = config.rx_queues;
        self.tx_queues = config.tx_queues;

        let (mut nb_rx, mut nb_tx) = (config.rx_descriptors, config.tx_descriptors);
        // SAFETY: valid port id; both out-pointers valid.
        let rc = unsafe { dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nb_rx, &mut nb_tx) };
        self.check(rc, "rte_eth_dev_adjust_nb_rx_tx_desc")?;
        // SAFETY: a plain query.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(id) };
        // SOCKET_ID_ANY (-1) stays -1 as u32 is 0xffffffff, which DPDK reads back as ANY.
        let socket = socket as u32;
        for q in 0..config.rx_queues {
            // SAFETY: the port is configured with rx_queues queues and q is below that;
            // NULL rxconf means the driver's default; the pool outlives the port ('p).
            let rc = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    id,
                    q,
                    nb_rx,
                    socket,
                    ptr::null(),
                    rx_pool.as_raw(),
                )
            };
            self.check(
                rc,
                &format!("rte_eth_rx_queue_setup(queue {q}, {nb_rx} descriptors)"),
            )?;
        }
        for q in 0..config.tx_queues {
            // SAFETY: as above; NULL txconf means the driver's default.
            let rc = unsafe { dpdk_sys::rte_eth_tx_queue_setup(id, q, nb_tx, socket, ptr::null()) };
            self.check(
                rc,
                &format!("rte_eth_tx_queue_setup(queue {q}, {nb_tx} descriptors)"),
            )?;
        }
        if config.promiscuous {
            // SAFETY: valid, configured port.
            let rc = unsafe { dpdk_sys::rte_eth_promiscuous_enable(id) };
            self.check(rc, "rte_eth_promiscuous_enable")?;
        }
        if config.defer_start {
            self.configured = true;
            log::info!(
                "DPDK port {id} ({}) configured: {} rx / {} tx queues, {nb_rx}/{nb_tx} \
                 descriptors; to be started",
                self.name,
                self.rx_queues,
                self.tx_queues
            );
            return Ok(());
        }
        // SAFETY: valid port with all its queues set up.
        let rc = unsafe { dpdk_sys::rte_eth_dev_start(id) };
        self.check(rc, "rte_eth_dev_start")?;
        self.started = true;
        self.configured = true;
        log::info!(
            "DPDK port {id} ({}) started: {} rx / {} tx queues, {nb_rx}/{nb_tx} descriptors",
            self.name,
            self.rx_queues,
            self.tx_queues
        );
        Ok(())
    }

    /// Starts a port configured with [`PortConfig::defer_start`] or stopped with
    /// [`Port::stop`]; a started port is left as it is.
    pub fn start(&mut self) -> Result<()> {
        if self.started {
            return Ok(());
        }
        // SAFETY: a valid port this handle configured (every queue set up), stopped.
        let rc = unsafe { dpdk_sys::rte_eth_dev_start(self.id) };
        self.check(rc, "rte_eth_dev_start")?;
        self.started = true;
        Ok(())
    }

    /// Stops a started port (it keeps its configuration: [`Port::start`] starts it
    /// again); a stopped one is left as it is. Frames the driver still held are freed.
    pub fn stop(&mut self) -> Result<()> {
        if !self.started {
            return Ok(());
        }
        // SAFETY: a valid, started port of this handle; no burst runs meanwhile (&mut).
        let rc = unsafe { dpdk_sys::rte_eth_dev_stop(self.id) };
        self.started = false;
        self.check(rc, "rte_eth_dev_stop")
    }

    /// Is the port started (sending and receiving)?
    pub fn is_started(&self) -> bool {
        self.started
    }

    fn check(&self, rc: i32, op: &str) -> Result<()> {
        if rc < 0 {
            return Err(Error::Port {
                port: self.id,
                name: self.name.clone(),
                op: op.to_owned(),
                source: RteError::new(rc),
            });
        }
        Ok(())
    }

    fn unsupported(&self, problem: String) -> Error {
        Error::Unsupported {
            port: self.id,
            name: self.name.clone(),
            problem,
        }
    }

    /// The port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The device name (e.g. `net_ring0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The index of the host network interface the device is bound to, if any
    /// (`net_af_packet`'s `iface`, a tap device).
    pub fn if_index(&self) -> Option<u32> {
        (self.if_index != 0).then_some(self.if_index)
    }

    /// Whether the port sends packets in chained mbufs (asked for with
    /// [`PortConfig::multi_seg_tx`] and offered by the device).
    pub fn multi_seg_tx(&self) -> bool {
        self.multi_seg_tx
    }

    /// Receive queues configured.
    pub fn rx_queues(&self) -> u16 {
        self.rx_queues
    }

    /// Transmit queues configured.
    pub fn tx_queues(&self) -> u16 {
        self.tx_queues
    }

    /// The port's MAC address.
    pub fn mac_address(&self) -> Result<MacAddr> {
        let mut a = dpdk_sys::rte_ether_addr::default();
        // SAFETY: valid port id; a is a valid out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_macaddr_get(self.id, &mut a) };
        self.check(rc, "rte_eth_macaddr_get")?;
        Ok(MacAddr(a.addr_bytes))
    }

    /// The NUMA node the device is attached to, if DPDK knows it.
    pub fn numa_node(&self) -> Option<u32> {
        // SAFETY: a plain query on a valid port id.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(self.id) };
        u32::try_from(socket).ok()
    }

    /// The link state, without waiting for it to settle.
    pub fn link(&self) -> Result<Link> {
        let mut l = dpdk_sys::rte_eth_link::default();
        // SAFETY: valid port id; l is a valid out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_link_get_nowait(self.id, &mut l) };
        self.check(rc, "rte_eth_link_get_nowait")?;
        Ok(Link {
            up: u32::from(l.link_status()) == dpdk_sys::RTE_ETH_LINK_UP,
            speed_mbps: l.link_speed,
            full_duplex: u32::from(l.link_duplex()) == dpdk_sys::RTE_ETH_LINK_FULL_DUPLEX,
        })
    }

    /// The port's counters.
    pub fn stats(&self) -> Result<PortStats> {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: valid port id; s is a valid out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_stats_get(self.id, &mut s) };
        self.check(rc, "rte_eth_stats_get")?;
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_no_mbuf: s.rx_nombuf,
        })
    }

    /// Zeroes the counters.
    pub fn reset_stats(&mut self) -> Result<()> {
        // SAFETY: valid port id.
        let rc = unsafe { dpdk_sys::rte_eth_stats_reset(self.id) };
        self.check(rc, "rte_eth_stats_reset")
    }

    /// The MTU now in force.
    pub fn mtu(&self) -> Result<u16> {
        let mut mtu = 0u16;
        // SAFETY: valid port id; mtu is a valid out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_get_mtu(self.id, &mut mtu) };
        self.check(rc, "rte_eth_dev_get_mtu")?;
        Ok(mtu)
    }

    /// Receives up to `max` frames from `queue`, appended to `out`; returns how many.
    ///
    /// # Panics
    /// If `queue` is not a configured receive queue (DPDK would index out of bounds).
    #[inline]
    pub fn rx_burst(&mut self, queue: u16, out: &mut Vec<Mbuf<'p>>, max: u16) -> usize {
        assert!(
            queue < self.rx_queues,
            "rx queue {queue} of {}",
            self.rx_queues
        );
        if !self.started {
            return 0;
        }
        out.reserve(usize::from(max));
        let spare = out.spare_capacity_mut();
        // SAFETY: the port is started and queue is configured; spare has room for max
        // entries, and Mbuf is repr(transparent) over a non-null *mut rte_mbuf, so
        // DPDK's array of mbuf pointers fits it; the frames written are owned by us now
        // and come from pools that live at least 'p (the rx pool, or whatever was sent
        // on this port, see tx_burst).
        let n = unsafe {
            dpdk_sys::rte_eth_rx_burst(
                self.id,
                queue,
                spare.as_mut_ptr().cast::<*mut rte_mbuf>(),
                max,
            )
        };
        let n = usize::from(n);
        // SAFETY: rx_burst initialised the first n spare entries (n <= max).
        unsafe { out.set_len(out.len() + n) };
        n
    }

    /// Sends frames from the front of `pkts` on `queue`: those sent are removed from
    /// `pkts` (the driver frees them once on the wire), the rest stay, in order.
    /// Returns how many were sent.
    ///
    /// # Panics
    /// If `queue` is not a configured transmit queue.
    #[inline]
    pub fn tx_burst<'m>(&mut self, queue: u16, pkts: &mut Vec<Mbuf<'m>>) -> usize
    where
        'm: 'p,
    {
        assert!(
            queue < self.tx_queues,
            "tx queue {queue} of {}",
            self.tx_queues
        );
        if !self.started {
            return 0;
        }
        let len = pkts.len();
        let count = u16::try_from(len).unwrap_or(u16::MAX);
        // SAFETY: the port is started and queue is configured; pkts holds at least
        // count owned, valid mbufs, laid out as a C array of mbuf pointers
        // (repr(transparent)). Their pools outlive the port ('m: 'p), so the driver
        // may free them later.
        let sent = unsafe {
            dpdk_sys::rte_eth_tx_burst(
                self.id,
                queue,
                pkts.as_mut_ptr().cast::<*mut rte_mbuf>(),
                count,
            )
        };
        let sent = usize::from(sent);
        // SAFETY: the first `sent` entries now belong to the driver: drop them from the
        // Vec without running Drop (len 0 first), then move the unsent rest to the front
        // (overlapping copy) and restore the length.
        unsafe {
            let p = pkts.as_mut_ptr();
            pkts.set_len(0);
            ptr::copy(p.add(sent), p, len - sent);
            pkts.set_len(len - sent);
        }
        sent
    }
}

impl Drop for Port<'_> {
    fn drop(&mut self) {
        if self.configured {
            // SAFETY: a valid, configured port id that self has claimed (OPEN); it is
            // stopped only if started; after close self does not use the id again.
            let (stop, close) = unsafe {
                (
                    if self.started {
                        dpdk_sys::rte_eth_dev_stop(self.id)
                    } else {
                        0
                    },
                    dpdk_sys::rte_eth_dev_close(self.id),
                )
            };
            for (what, rc) in [("stop", stop), ("close", close)] {
                if rc < 0 {
                    log::warn!(
                        "DPDK port {} ({}): {what} failed: {}",
                        self.id,
                        self.name,
                        RteError::new(rc)
                    );
                }
            }
        }
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|&p| p != self.id);
    }
}

/// The device name of a port (empty if DPDK does not know it).
fn port_name(id: u16) -> String {
    let mut buf = [0 as c_char; dpdk_sys::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: buf has RTE_ETH_NAME_MAX_LEN bytes, the size DPDK writes at most
    // (NUL included).
    let rc = unsafe { dpdk_sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) };
    if rc != 0 {
        return String::new();
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
