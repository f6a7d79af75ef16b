//! [`DpdkIo`]: the `dpdk` transport's device. The datagram layer
//! ([`crate::transport::datagram`]) makes reliable links out of the packets it
//! moves; this only puts each packet into one Ethernet frame and takes it out again.
//!
//! # Frames
//! `dst MAC (6) | src MAC (6) | EtherType 0x88B5 (2, big-endian) | wire packet`.
//! 0x88B5 is IEEE 802's "local experimental EtherType 1": free for use inside one
//! network, never routed. Frames of any other EtherType (the kernel's ARP, IPv6, …),
//! our own frames seen again, and frames too short or too long are counted and dropped.
//!
//! # Addresses
//! A peer's MAC is learned from the frames it sends ([`PacketIo::learn`]: the
//! datagram layer calls it once a packet is known to come from that node). Until
//! then packets go to the MAC given in the configuration (`dpdk_peer_macs`) or to
//! the broadcast address `ff:ff:ff:ff:ff:ff`, which is how the first `Hello`s find
//! their peer on a shared segment.
//!
//! # Batching
//! Sends are encoded straight into mbufs ([`PacketIo::send_with`]: header, payload
//! and checksum written into the data room) and queued; the queue goes out in one `tx_burst` when
//! it holds [`TX_BURST`] frames, and whenever the datagram layer calls
//! [`PacketIo::flush`] (at the end of every transport call that may have sent), so no
//! frame waits while the agent sleeps.
//!
//! Received packets are read in place ([`RxFrame`]: the datagram layer parses and
//! checks the packet inside the mbuf and copies its payload once, to where the stream
//! goes). The tx path is `copy` (`wyvern stat`: `dpdk_tx_path`, `tx_bytes_copied`): the
//! CPU writes every packet into its mbuf; or `extbuf` (`dpdk_extbuf = auto` on a driver
//! that copies every frame inside `tx_burst`: `net_memif` without zero-copy,
//! `net_af_packet`): a packet whose payload is a range of a pool block its owner keeps
//! ([`PacketIo::send_packet`]'s `pinned`) goes out as two chained mbufs, the Ethernet
//! and packet headers copied into the first, the second attached to the block range
//! itself (`tx_bytes_attached`), so the driver's own copy is the only one. No attached
//! mbuf outlives the transport call that queued it (see [`super::extbuf`] and
//! `settle_attached`).
//!
//! # Waking a sleeping agent
//! A poll-mode device has no descriptor to wait on, so an adaptive agent on one sleeps
//! at most 1 ms at a time. `net_af_packet` has no Rx interrupt either
//! (`rte_eth_dev_rx_intr_enable` says `ENOTSUP`), but it receives through a kernel
//! `AF_PACKET` socket with an mmap'ed ring, bound to its interface, and such a socket is
//! readable while a received frame waits in the ring. [`DpdkIo::open`] finds it among
//! the process's descriptors (the one `AF_PACKET` socket bound to the port's interface;
//! none or several: no wake-up, polling as before) and registers it with the agent's
//! poller, one event at a time, armed again before each sleep
//! ([`Poller::add_oneshot`]): the agent then sleeps like on a UDP socket and wakes when a
//! frame arrives. While it runs it polls the port anyway, and once it has moved
//! [`UNWATCH_AFTER`] packets since it last slept it takes the socket out of the
//! poller altogether: a socket with a waiter costs the kernel a wait-queue wake-up
//! (lock, callback, unlock) for every frame delivered to it and every sent frame it
//! frees, on the *sender's* CPU (the veth pair delivers in the sender's softirq) —
//! 7 % of a streaming sender's time in a profile. It is added again before the next
//! sleep. The socket stays the driver's: it is only watched, closed by the driver
//! with the port.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use super::extbuf::ExtSlots;
use super::{Eal, Error, MacAddr, Mbuf, PktPool, Port, PortConfig};
use crate::transport::datagram::PacketIo;
use crate::transport::{Poller, Shortfall};
use crate::wire::bytes::{Fields, FieldsMut};
use crate::wire::packet::{self, PacketHeader, PACKET_MIN, PKT_HEADER};

/// wyvern's EtherType: IEEE 802 local experimental EtherType 1.
pub const ETHERTYPE: u16 = 0x88B5;
/// Bytes of the Ethernet header (no VLAN tag).
pub const ETH_HEADER: usize = 14;
/// The broadcast MAC.
pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
/// Frames sent in one burst (and the size of a full send queue that triggers one).
pub const TX_BURST: usize = 32;
/// Packets moved (sent or received) since the agent last slept after which the
/// packet socket's wake-up registration is dropped until the next sleep.
pub const UNWATCH_AFTER: u32 = 256;
/// Frames taken from the device per `rx_burst`.
const RX_BURST: u16 = 32;
/// Most frames queued for sending; past it, `send` says "not now".
const TX_QUEUE_MAX: usize = 512;
/// Mbufs in the pool (a power of two minus one, as DPDK likes).
const POOL_MBUFS: u32 = 4095;
/// Per-lcore mbuf cache.
const POOL_CACHE: u32 = 64;
/// Mbufs (without data room) to attach payloads to, and shared infos: at most
/// this many attached mbufs out at once (the send queue holds at most
/// [`TX_QUEUE_MAX`]).
const EXT_MBUFS: u32 = 1023;
/// The shortest payload sent attached: below it a copy costs less than a second
/// mbuf.
pub const EXTBUF_MIN: usize = 512;
/// Empty receive polls between two looks at a memif client's link.
const LINK_CHECK_EVERY: u32 = 256;
/// How often a memif client that could not connect tries again, and how long its
/// link must have been down before a connected client connects again.
const MEMIF_RETRY: Duration = Duration::from_secs(1);
/// How long a memif client leaves a connection it started to come up (the handshake
/// runs in DPDK's interrupt thread, which a busy machine may hold back for a while)
/// before it starts again.
const MEMIF_HANDSHAKE: Duration = Duration::from_secs(5);

/// How to start the device.
#[derive(Clone, Debug, Default)]
pub struct DpdkIoConfig {
    /// This node's id.
    pub me: u32,
    /// Nodes in the job.
    pub nodes: u32,
    /// EAL arguments (without a program name).
    pub eal_args: Vec<String>,
    /// The port: a device name (`net_af_packet0`, a PCI address) or a port id;
    /// `None`: the first port.
    pub port: Option<String>,
    /// MTU to configure (jumbo frames); `None`: the device's default.
    pub mtu: Option<u16>,
    /// Known MACs by node id (`None`: learn it; broadcast until then).
    pub peer_macs: Vec<Option<MacAddr>>,
    /// Send large messages' packets from their pool blocks (mbufs attached to
    /// them, no copy) where the driver allows it (`dpdk_extbuf = auto`);
    /// `false`: always copy (`off`).
    pub extbuf: bool,
    /// With `extbuf`: use the path on any driver, not only those known to be done
    /// with a frame's mbufs when `tx_burst` returns. For tests of the check that
    /// turns it off when a driver keeps them (`net_ring` does); never in the agent.
    pub extbuf_any_driver: bool,
}

/// Counters of the device layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DpdkIoStats {
    /// Frames handed to the driver.
    pub tx_frames: u64,
    /// Frames received with our EtherType.
    pub rx_frames: u64,
    /// Packet bytes (header and payload) of the frames received with our EtherType.
    pub rx_bytes: u64,
    /// Frames of another EtherType (or too short to have one), dropped.
    pub foreign_ethertype: u64,
    /// Frames we sent, seen again (a shared segment echoing them), dropped.
    pub own: u64,
    /// Frames too long for a packet, dropped.
    pub oversize: u64,
    /// The longest packet (header and payload, no Ethernet header) received
    /// with our EtherType: at most this port's MTU...
    pub rx_largest: u64,
    /// ...and the longest sent: at most the MTU, and the peer's when smaller
    /// (what its `Hello` says it receives).
    pub tx_largest: u64,
    /// Sends refused because the send queue was full or no mbuf was free.
    pub tx_full: u64,
    /// Packets sent to the broadcast MAC (peer not learned yet).
    pub tx_broadcast: u64,
    /// Packet bytes (header and payload) written into mbufs by the CPU: the
    /// `copy` tx path.
    pub tx_bytes_copied: u64,
    /// Payload bytes the driver took from pool memory attached to mbufs
    /// (external buffers): the `extbuf` tx path (their headers count as copied).
    pub tx_bytes_attached: u64,
    /// Frames sent with an attached payload.
    pub tx_attached: u64,
    /// Frames with an attached payload the driver had not taken by the end of
    /// a transport call, copied into plain mbufs then (or dropped when none was
    /// free: resent).
    pub tx_attached_copied: u64,
    /// `tx_burst` calls that handed the driver at least one frame.
    pub tx_bursts: u64,
    /// Times the packet socket left the poller because the agent was busy.
    pub unwatched: u64,
    /// Times a memif client port was started again (after a failed start, or with its
    /// link down).
    pub restarts: u64,
}

/// A frame [`DpdkIo`] received and kept as it came: the packet is read in
/// place in the mbuf (after the Ethernet header). Give it back with
/// [`PacketIo::release`] (dropping it frees the mbuf too, one at a time).
pub struct RxFrame(Mbuf<'static>);

impl std::ops::Deref for RxFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0.data()[ETH_HEADER..]
    }
}

/// The `extbuf` tx path: shared infos for attached mbufs and the pool of mbufs
/// (without data room) they are.
struct ExtTx {
    slots: ExtSlots,
    pool: &'static PktPool,
}

/// Where the packet socket is registered: the agent's poller and the token its
/// readiness comes under.
struct Registration {
    poller: Poller,
    token: u32,
}

/// A DPDK ethdev port as a [`PacketIo`]: one rx and one tx queue, its own mbuf pool.
/// One per process (the EAL starts once per process).
pub struct DpdkIo {
    // Field order is drop order: queued mbufs go back to the pool, then the port
    // stops and closes. The pool itself is leaked (see `open`).
    txq: Vec<Mbuf<'static>>,
    rxq: VecDeque<Mbuf<'static>>,
    rxbuf: Vec<Mbuf<'static>>,
    /// Received frames the datagram layer is done with, freed in bulk.
    rx_done: Vec<Mbuf<'static>>,
    port: Port<'static>,
    pool: &'static PktPool,
    mac: MacAddr,
    peers: Vec<Option<MacAddr>>,
    last_src: Option<MacAddr>,
    max_packet: usize,
    /// The driver's packet socket for the port's interface (`net_af_packet`):
    /// readable when a frame waits...
    wake_fd: Option<RawFd>,
    /// ...the poller and token it is registered under (set by `register`)...
    wake: Option<Registration>,
    /// ...whether it is in the poller now...
    watched: bool,
    /// ...and the packets moved since the agent last slept.
    busy: u32,
    /// The port is a memif client: it connects to its server when started, and
    /// again (stopped and started) when its link is down (see `check_link`)...
    memif_client: bool,
    /// ...looked at after this many empty receive polls...
    idle_polls: u32,
    /// ...at most once per [`MEMIF_RETRY`] (see `check_link`)...
    last_start: Option<Instant>,
    /// ...and when its link was first seen down since it was last up.
    link_down_since: Option<Instant>,
    /// The `extbuf` tx path, when on (after `port`: attached mbufs the driver
    /// still holds when it closes call back into its slots).
    ext: Option<ExtTx>,
    /// Why the `extbuf` tx path is off (`None`: on).
    ext_off: Option<String>,
    stats: DpdkIoStats,
    /// What the port runs below the configuration (see [`DpdkIo::shortfall`]).
    shortfall: Vec<Shortfall>,
}

/// The degradation of a port whose interface carries less than `dpdk_mtu` asks.
fn mtu_shortfall(iface: &str, has: u16, asked: u16) -> Shortfall {
    Shortfall {
        what: "mtu",
        why: format!(
            "{iface}'s MTU is {has}, dpdk_mtu asks {asked}: packets are cut to {has} B (more \
             packets, headers and per-packet work for large messages)"
        ),
        fix: format!(
            "raise the interface's MTU (ip link set dev {iface} mtu {asked}, on every node) or \
             lower dpdk_mtu to {has}"
        ),
    }
}

/// The degradation of a memif port whose buffers (`bsize`) hold less than a
/// frame of the MTU `dpdk_mtu` asks.
fn memif_shortfall(port: &str, bsize: usize, has: u16, asked: u16) -> Shortfall {
    let need = usize::from(asked) + ETH_HEADER;
    Shortfall {
        what: "mtu",
        why: format!(
            "{port}'s buffers are {bsize} B (bsize), dpdk_mtu asks {asked}: packets are cut to \
             {has} B (more packets, headers and per-packet work for large messages)"
        ),
        fix: format!(
            "give bsize={need} or more in {port}'s --vdev arguments, the same on both agents of \
             the pair (e.g. bsize={}), or lower dpdk_mtu to {has}",
            need.next_multiple_of(1024)
        ),
    }
}

fn dev_err(e: Error) -> io::Error {
    io::Error::other(e)
}

/// Starts the EAL with `cfg.eal_args` (once per process).
pub(super) fn start_eal(cfg: &DpdkIoConfig) -> io::Result<Eal> {
    Eal::init(&cfg.eal_args).map_err(dev_err)
}

impl DpdkIo {
    /// Starts the EAL with `cfg.eal_args`, creates a pool and opens the port.
    ///
    /// Once per process: the EAL cannot start twice (a second call fails).
    pub fn open(cfg: &DpdkIoConfig) -> io::Result<DpdkIo> {
        let eal = start_eal(cfg)?;
        DpdkIo::open_port(
            &eal,
            cfg,
            cfg.port.as_deref(),
            &format!("wyv_io_{}", cfg.me),
        )
    }

    /// Opens `port` (`None`: the first) on a running EAL, with a pool of its own
    /// named `pool_name` (unique in the process): one rail of [`super::Rails`], or
    /// the one port of [`DpdkIo::open`].
    pub fn open_port(
        eal: &Eal,
        cfg: &DpdkIoConfig,
        port: Option<&str>,
        pool_name: &str,
    ) -> io::Result<DpdkIo> {
        let cfg = &DpdkIoConfig {
            port: port.map(String::from),
            ..cfg.clone()
        };
        if eal.port_count() == 0 {
            return Err(io::Error::other(format!(
                "DPDK found no ethernet port (EAL arguments: {}); give one with --vdev or \
                 a PCI address bound to vfio-pci (scripts/bind-nic.sh)",
                cfg.eal_args.join(" ")
            )));
        }
        // `net_af_packet` takes jumbo frames (its socket rings' frame size, `framesz`, and
        // the kernel interface's MTU allow them), but its ethdev says 1518 B at most, so
        // DPDK refuses the MTU: for it, a jumbo MTU is the interface's, checked below.
        let af_packet = af_packet_vdev(&cfg.eal_args, cfg.port.as_deref());
        let kernel_mtu = match (cfg.mtu, &af_packet) {
            (Some(m), Some(_)) if m > 1500 => Some(m),
            _ => None,
        };
        // `net_memif` is the same: its ethdev says 1518 B, but its rings carry frames as
        // long as their buffers (`bsize`, default 2048; the client's is the pair's). It
        // would split a longer frame over chained descriptors, but DPDK 22.11's receiver
        // then hands out chained mbufs and, seen here, frames that were never sent, in
        // an endless stream: so packets on memif are never longer than a buffer holds
        // (below: cut to it, and listed as degraded `mtu` where `dpdk_mtu` asked
        // more). The two agents' sizes may differ (another `bsize` or MTU): each
        // says in its `Hello` what it receives, and the link's packets are the
        // smaller (a longer frame would arrive in chained mbufs: dropped as oversize).
        let memif = memif_vdev(&cfg.eal_args, cfg.port.as_deref());
        let memif_mtu = match (cfg.mtu, &memif) {
            (Some(m), Some(_)) if m > 1500 => Some(m),
            _ => None,
        };
        // Room for a whole frame of the configured MTU in one mbuf (no scatter), and for
        // whatever `net_af_packet` may copy out of one frame of its ring.
        let frame = usize::from(cfg.mtu.unwrap_or(1500)) + ETH_HEADER + 4;
        let ring_frame = af_packet
            .as_ref()
            .map_or(0, |a| a.framesz.saturating_sub(AF_PACKET_FRAME_OVERHEAD));
        let room = (frame.max(ring_frame) + dpdk_sys::RTE_PKTMBUF_HEADROOM as usize)
            .max(usize::from(PktPool::DEFAULT_DATA_ROOM));
        let room = u16::try_from(room)
            .map_err(|_| io::Error::other(format!("an MTU of {frame} does not fit a DPDK mbuf")))?;
        // The pool lives as long as the process, like the EAL it belongs to: the
        // port and every mbuf borrow it, and DpdkIo owns them both.
        let pool: &'static PktPool = Box::leak(Box::new(
            PktPool::new(eal, pool_name, POOL_MBUFS, POOL_CACHE, room).map_err(dev_err)?,
        ));
        let memif_client = memif.as_ref().is_some_and(|m| m.client);
        let pcfg = PortConfig {
            mtu: if kernel_mtu.is_some() || memif_mtu.is_some() {
                None
            } else {
                cfg.mtu
            },
            // A memif client connects when started; its server may not be there yet.
            defer_start: memif_client,
            multi_seg_tx: cfg.extbuf,
            ..PortConfig::default()
        };
        let mut port = match cfg.port.as_deref() {
            None => Port::open_id(eal, first_port(eal)?, &pcfg, pool),
            Some(p) => match p.parse::<u16>() {
                Ok(id) => Port::open_id(eal, id, &pcfg, pool),
                Err(_) => Port::open(eal, p, &pcfg, pool),
            },
        }
        .map_err(dev_err)?;
        let mut last_start = None;
        if memif_client {
            last_start = Some(Instant::now());
            if let Err(e) = port.start() {
                log::warn!(
                    "dpdk: {} (memif client) cannot connect to its server yet ({e}); \
                     trying again every {} s",
                    port.name(),
                    MEMIF_RETRY.as_secs()
                );
            }
        }
        let mac = port.mac_address().map_err(dev_err)?;
        let mut shortfall = Vec::new();
        let mtu = match &af_packet {
            Some(a) => {
                let want = match kernel_mtu {
                    Some(want) => {
                        let fits = a.framesz.saturating_sub(AF_PACKET_FRAME_OVERHEAD);
                        if fits < usize::from(want) + ETH_HEADER {
                            return Err(io::Error::other(format!(
                                "{}: an MTU of {want} needs framesz={} or more in its --vdev \
                                 arguments (its socket rings' frames are {} B; e.g. \
                                 framesz=16384,blocksz=16384)",
                                a.name,
                                usize::from(want) + ETH_HEADER + AF_PACKET_FRAME_OVERHEAD,
                                a.framesz
                            )));
                        }
                        want
                    }
                    None => port.mtu().map_err(dev_err)?,
                };
                // The kernel interface's MTU decides what passes: a longer frame is
                // dropped by the kernel (on send, or by the veth's other end), with
                // no word to the driver. So packets are cut to it, never longer.
                let iface = a.iface.clone().unwrap_or_else(|| a.name.clone());
                match port.if_index().and_then(interface_mtu) {
                    Some(ifmtu) if ifmtu < u32::from(want) => {
                        let ifmtu = u16::try_from(ifmtu).unwrap_or(want);
                        if usize::from(ifmtu) < PACKET_MIN {
                            return Err(io::Error::other(format!(
                                "{}: its interface {iface} has an MTU of {ifmtu}, too small \
                                 for a packet (ip link set dev {iface} mtu {want})",
                                a.name
                            )));
                        }
                        match cfg.mtu {
                            Some(asked) => shortfall.push(mtu_shortfall(&iface, ifmtu, asked)),
                            None => log::info!(
                                "dpdk: {}: packets cut to {iface}'s MTU of {ifmtu} (the port \
                                 says {want})",
                                a.name
                            ),
                        }
                        ifmtu
                    }
                    Some(_) => want,
                    None if kernel_mtu.is_some() => {
                        return Err(io::Error::other(format!(
                            "{}: cannot read its interface's MTU",
                            a.name
                        )))
                    }
                    None => want,
                }
            }
            None => {
                let want = match memif_mtu {
                    Some(want) => want,
                    None => port.mtu().map_err(dev_err)?,
                };
                match &memif {
                    // memif's buffers (`bsize`) must hold a whole frame: a longer
                    // one would be split over chained descriptors (see above). So
                    // packets are cut to what a buffer holds.
                    Some(m) if m.bsize < usize::from(want) + ETH_HEADER => {
                        let fits = m.bsize.saturating_sub(ETH_HEADER);
                        if fits < PACKET_MIN {
                            return Err(io::Error::other(format!(
                                "{}: its buffers (bsize={}) are too small for a packet; give \
                                 bsize={} or more in its --vdev arguments",
                                port.name(),
                                m.bsize,
                                usize::from(want) + ETH_HEADER
                            )));
                        }
                        let fits = u16::try_from(fits).unwrap_or(want);
                        match cfg.mtu {
                            Some(asked) => {
                                shortfall.push(memif_shortfall(port.name(), m.bsize, fits, asked))
                            }
                            None => log::info!(
                                "dpdk: {}: packets cut to {fits} B, what its buffers \
                                 (bsize={}) hold (the port says {want})",
                                port.name(),
                                m.bsize
                            ),
                        }
                        fits
                    }
                    _ => want,
                }
            }
        };
        let max_packet = usize::from(mtu);
        let mut peers = cfg.peer_macs.clone();
        peers.resize(cfg.nodes as usize, None);
        let wake_fd = match port.if_index() {
            Some(ifindex) if port.name().starts_with("net_af_packet") => packet_socket(ifindex),
            _ => None,
        };
        match wake_fd {
            Some(fd) => log::info!(
                "dpdk: {} receives on packet socket {fd}: an idle agent sleeps until a frame comes",
                port.name()
            ),
            None => log::info!(
                "dpdk: {} has no descriptor to wait on: an idle agent polls it every 1 ms",
                port.name()
            ),
        }
        log::info!(
            "dpdk: port {} ({}) MAC {mac}, MTU {mtu}, EtherType {ETHERTYPE:#06x}",
            port.id(),
            port.name()
        );
        // The `extbuf` tx path only where the driver is done with a frame's mbufs
        // when `tx_burst` returns (it copies them into its ring and frees them):
        // the agent frees a pool block without asking the device, so a driver
        // that kept an attached mbuf (a NIC's DMA, memif's zero-copy) could send
        // a block after its reuse. Checked again after every call (`settle_attached`).
        let copies_in_tx_burst =
            memif.as_ref().is_some_and(|m| !m.zero_copy) || af_packet.is_some();
        let ext_off = if !cfg.extbuf {
            Some("dpdk_extbuf = off".to_string())
        } else if cfg.extbuf_any_driver {
            None
        } else if !copies_in_tx_burst {
            Some(format!(
                "{} may keep sent mbufs after tx_burst (only net_memif without zero-copy \
                 and net_af_packet are known to copy and free them at once)",
                port.name()
            ))
        } else if !port.multi_seg_tx() {
            Some(format!("{} does not send chained mbufs", port.name()))
        } else {
            None
        };
        let ext = match &ext_off {
            Some(_) => None,
            None => {
                let ext_pool: &'static PktPool = Box::leak(Box::new(
                    PktPool::new(eal, &format!("{pool_name}x"), EXT_MBUFS, 0, 0)
                        .map_err(dev_err)?,
                ));
                Some(ExtTx {
                    slots: ExtSlots::new(EXT_MBUFS as usize),
                    pool: ext_pool,
                })
            }
        };
        match &ext_off {
            None => log::info!(
                "dpdk: {}: tx path extbuf (payloads of {EXTBUF_MIN} B or more sent from \
                 their pool blocks, not copied)",
                port.name()
            ),
            Some(why) => log::info!("dpdk: {}: tx path copy ({why})", port.name()),
        }
        Ok(DpdkIo {
            txq: Vec::with_capacity(TX_QUEUE_MAX),
            rxq: VecDeque::with_capacity(usize::from(RX_BURST)),
            rxbuf: Vec::with_capacity(usize::from(RX_BURST)),
            rx_done: Vec::with_capacity(usize::from(RX_BURST)),
            port,
            pool,
            mac,
            peers,
            last_src: None,
            max_packet,
            wake_fd,
            wake: None,
            watched: false,
            busy: 0,
            memif_client,
            idle_polls: 0,
            last_start,
            link_down_since: None,
            ext,
            ext_off,
            stats: DpdkIoStats::default(),
            shortfall,
        })
    }

    /// This port's MAC.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The MAC packets to `node` go to now (learned, configured or broadcast).
    pub fn peer_mac(&self, node: u32) -> MacAddr {
        self.peers
            .get(node as usize)
            .copied()
            .flatten()
            .unwrap_or(BROADCAST)
    }

    /// What the port runs below the configuration: an interface whose MTU is
    /// below `dpdk_mtu` (packets are cut to the interface's).
    pub fn shortfall(&self) -> &[Shortfall] {
        &self.shortfall
    }

    /// The device layer's counters.
    pub fn stats(&self) -> DpdkIoStats {
        self.stats
    }

    /// The NUMA node of the port's device, if DPDK knows it.
    pub fn numa_node(&self) -> Option<u32> {
        self.port.numa_node()
    }

    /// The port's name (`net_memif0`, a PCI address).
    pub fn port_name(&self) -> &str {
        self.port.name()
    }

    /// Whether the port is started and says its link is up (`net_af_packet` says up
    /// while it runs, whatever its interface does).
    pub fn link_up(&self) -> bool {
        self.port.is_started() && self.port.link().is_ok_and(|l| l.up)
    }

    /// The packet at the head of the receive queue (after its Ethernet header, not
    /// classified yet), polling the port once if the queue is empty; `recv` hands
    /// it out next. [`super::Rails`] reads the heads of its rails to take packets
    /// in sequence order.
    pub fn peek(&mut self) -> Option<&[u8]> {
        if self.rxq.is_empty() {
            if !self.rx_done.is_empty() {
                Mbuf::free_bulk(&mut self.rx_done);
            }
            if self.port.rx_burst(0, &mut self.rxbuf, RX_BURST) == 0 {
                self.empty_poll();
                return None;
            }
            self.rxq.extend(self.rxbuf.drain(..));
        }
        self.rxq
            .front()
            .map(|m| m.data().get(ETH_HEADER..).unwrap_or(&[]))
    }

    /// Packets `send` queued that the driver has not taken yet.
    pub fn tx_queued(&self) -> usize {
        self.txq.len()
    }

    /// Hands queued frames to the driver; what it does not take stays queued.
    fn flush_tx(&mut self) {
        // Bounded: each round sends something or stops.
        for _ in 0..TX_QUEUE_MAX / TX_BURST + 1 {
            if self.txq.is_empty() {
                break;
            }
            let sent = self.port.tx_burst(0, &mut self.txq);
            self.stats.tx_frames += sent as u64;
            if sent == 0 {
                break;
            }
            self.stats.tx_bursts += 1;
            self.moved(sent as u32);
        }
    }

    /// The end of a transport call: no attached mbuf may outlive it (the agent may
    /// free its block next). Those still queued (the driver's ring was full) are
    /// copied into plain mbufs, or dropped when none is free (lost: the
    /// reliability layer resends them); then none is out, unless the driver kept
    /// some after `tx_burst`, which turns the path off for good (logged).
    fn settle_attached(&mut self) {
        let Some(ext) = &self.ext else { return };
        if ext.slots.outstanding() == 0 {
            return;
        }
        let (pool, stats) = (self.pool, &mut self.stats);
        self.txq.retain_mut(|m| {
            if m.segments() < 2 {
                return true;
            }
            let len = m.len();
            let payload = len.saturating_sub(ETH_HEADER + PKT_HEADER) as u64;
            stats.tx_bytes_attached -= payload;
            stats.tx_attached -= 1;
            stats.tx_attached_copied += 1;
            let copy = pool.alloc().ok().and_then(|mut c| {
                let out = c.append(len)?;
                (m.read_into(out) == len).then_some(c)
            });
            match copy {
                Some(c) => {
                    stats.tx_bytes_copied += payload;
                    // The chained mbuf is freed here: its slot's callback runs.
                    *m = c;
                    true
                }
                None => {
                    stats.tx_full += 1;
                    false
                }
            }
        });
        let held = ext.slots.outstanding();
        if held != 0 {
            log::error!(
                "dpdk: {} kept {held} sent mbufs with attached payloads after tx_burst: \
                 their pool blocks may be reused while it still reads them; tx path copy \
                 from now on (set dpdk_extbuf = off for this device)",
                self.port.name()
            );
            self.ext_off = Some(format!(
                "{} kept sent mbufs after tx_burst",
                self.port.name()
            ));
            // Dropping the slots while mbufs point at them leaks them (see ExtSlots).
            self.ext = None;
        }
    }

    /// Queues the packet of header `h` with `payload` attached, not copied (see
    /// the module's doc). `None`: not possible now (no mbuf or slot free, the
    /// path off): the caller copies instead.
    ///
    /// `payload` must stay valid and unchanged until the end of the transport
    /// call ([`PacketIo::send_packet`]'s `pinned`): `settle_attached`, at the
    /// end of every call, sees that no mbuf refers to it after that.
    fn send_attached(&mut self, node: u32, h: &PacketHeader, payload: &[u8]) -> Option<bool> {
        if self.txq.len() >= TX_QUEUE_MAX {
            self.flush_tx();
            if self.txq.len() >= TX_QUEUE_MAX {
                self.stats.tx_full += 1;
                return Some(false);
            }
        }
        let dst = self.peer_mac(node);
        let mut head = self.pool.alloc().ok()?;
        let ext = self.ext.as_mut()?;
        // SAFETY: payload is pinned until the end of this transport call (this
        // function's contract), and `settle_attached` runs before the call returns
        // (PacketIo::flush): the mbuf is freed (by the driver, or by us) by then.
        // Nothing writes through it.
        let tail = unsafe { ext.slots.attach(ext.pool, payload) }?;
        let hdr = head.append(ETH_HEADER + PKT_HEADER)?;
        write_header(hdr, dst, self.mac);
        let pkt: &mut [u8; PKT_HEADER] = (&mut hdr[ETH_HEADER..]).try_into().ok()?;
        packet::encode_header(h, payload, pkt);
        head.chain(tail).ok()?;
        let len = (PKT_HEADER + payload.len()) as u64;
        self.stats.tx_bytes_attached += payload.len() as u64;
        self.stats.tx_bytes_copied += PKT_HEADER as u64;
        self.stats.tx_attached += 1;
        self.stats.tx_largest = self.stats.tx_largest.max(len);
        if dst == BROADCAST {
            self.stats.tx_broadcast += 1;
        }
        self.txq.push(head);
        if self.txq.len() >= TX_BURST {
            self.flush_tx();
        }
        Some(true)
    }

    /// The tx path in use: `extbuf` or `copy`.
    pub fn tx_path(&self) -> &'static str {
        if self.ext.is_some() {
            "extbuf"
        } else {
            "copy"
        }
    }

    /// A receive poll found nothing: a memif client looks at its link now and then.
    fn empty_poll(&mut self) {
        if self.memif_client {
            self.idle_polls += 1;
            if self.idle_polls >= LINK_CHECK_EVERY {
                self.idle_polls = 0;
                self.check_link();
            }
        }
    }

    /// A memif client's link: down (its server went away, or was never there), it
    /// connects again: a port that failed to start, once per [`MEMIF_RETRY`]; a
    /// started one once its link has been down that long and its last start is
    /// [`MEMIF_HANDSHAKE`] ago (a handshake still under way is left to finish). No
    /// system call and no clock read while the link is up.
    fn check_link(&mut self) {
        let started = self.port.is_started();
        if started && self.port.link().is_ok_and(|l| l.up) {
            self.link_down_since = None;
            return;
        }
        let now = Instant::now();
        if started && self.link_down_since.is_none() {
            log::warn!(
                "dpdk: {} (memif client): link down; connecting to the server again",
                self.port.name()
            );
        }
        let down = now.duration_since(*self.link_down_since.get_or_insert(now));
        let since_start = self
            .last_start
            .map_or(Duration::MAX, |t| now.duration_since(t));
        let due = if started {
            down >= MEMIF_RETRY && since_start >= MEMIF_HANDSHAKE
        } else {
            since_start >= MEMIF_RETRY
        };
        if !due {
            return;
        }
        self.last_start = Some(now);
        // A started client whose link is down lost its server: memif does not
        // connect again by itself, a start does.
        if let Err(e) = self.port.stop() {
            log::warn!("dpdk: {}: stop: {e}", self.port.name());
        }
        match self.port.start() {
            Ok(()) => {
                self.stats.restarts += 1;
                log::info!(
                    "dpdk: {} (memif client) started again: connecting to its server",
                    self.port.name()
                );
            }
            Err(e) => log::debug!("dpdk: {} (memif client): {e}", self.port.name()),
        }
    }

    /// `n` packets moved: past [`UNWATCH_AFTER`] since the last sleep, the packet
    /// socket leaves the poller (see the module's doc; `before_sleep` adds it again).
    fn moved(&mut self, n: u32) {
        self.busy = self.busy.saturating_add(n);
        if self.busy >= UNWATCH_AFTER && self.watched {
            if let (Some(fd), Some(Registration { poller, .. })) =
                (self.wake_fd, self.wake.as_ref())
            {
                // SAFETY: as in `register`: the driver's socket, open while `self.port` lives.
                poller.delete(unsafe { BorrowedFd::borrow_raw(fd) });
                self.watched = false;
                self.stats.unwatched += 1;
            }
        }
    }
}

/// The one `AF_PACKET` socket of this process bound to interface `ifindex`, if
/// exactly one is: `net_af_packet`'s (one per queue pair; we use one).
fn packet_socket(ifindex: u32) -> Option<RawFd> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // (A descriptor closed meanwhile, such as read_dir's own, fails here.) Read
        // as storage: the kernel gives a packet socket's address a length shorter
        // than `sockaddr_ll` (only the hardware address bytes it has), which
        // `LinkAddr` itself refuses.
        let Ok(addr) = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd)
        else {
            continue;
        };
        if addr
            .as_link_addr()
            .is_some_and(|a| a.ifindex() == ifindex as usize)
        {
            if found.is_some() {
                return None;
            }
            found = Some(fd);
        }
    }
    found
}

/// What `net_af_packet` puts before a frame's data in its ring frames, when it
/// checks that a ring frame fits an mbuf (`TPACKET2_HDRLEN - sizeof(sockaddr_ll)`).
const AF_PACKET_FRAME_OVERHEAD: usize = 32;
/// `net_af_packet`'s ring frame size without `framesz`.
const AF_PACKET_DEFAULT_FRAMESZ: usize = 2048;

/// A `net_af_packet` device given with `--vdev` in the EAL arguments.
#[derive(Debug, PartialEq, Eq)]
struct AfPacketVdev {
    name: String,
    iface: Option<String>,
    /// Its ring frames' size (`framesz`, default 2048).
    framesz: usize,
}

/// The `--vdev` that will be the port: the one named `port`, or, with no port
/// named, the first.
fn port_vdev(eal_args: &[String], port: Option<&str>) -> Option<String> {
    let mut specs = Vec::new();
    let mut it = eal_args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--vdev=") {
            specs.push(v.to_string());
        } else if a == "--vdev" {
            if let Some(v) = it.next() {
                specs.push(v.clone());
            }
        }
    }
    match port {
        Some(p) => specs.into_iter().find(|s| s.split(',').next() == Some(p)),
        None => specs.into_iter().next(),
    }
}

/// A `net_memif` device given with `--vdev` in the EAL arguments.
#[derive(Debug, PartialEq, Eq)]
struct MemifVdev {
    /// `role=client` (DPDK's default role is server).
    client: bool,
    /// Its ring buffers' size (`bsize`, default 2048).
    bsize: usize,
    /// `zero-copy=yes`: the peer reads our mbufs in place, after `tx_burst`.
    zero_copy: bool,
}

/// `net_memif`'s buffer size without `bsize`.
const MEMIF_DEFAULT_BSIZE: usize = 2048;

/// The `net_memif` vdev that will be the port (as [`port_vdev`]), if it is one.
fn memif_vdev(eal_args: &[String], port: Option<&str>) -> Option<MemifVdev> {
    let spec = port_vdev(eal_args, port)?;
    let mut parts = spec.split(',');
    if !parts.next()?.starts_with("net_memif") {
        return None;
    }
    let mut vdev = MemifVdev {
        client: false,
        bsize: MEMIF_DEFAULT_BSIZE,
        zero_copy: false,
    };
    for kv in parts {
        match kv.split_once('=') {
            Some(("role", r)) => vdev.client = matches!(r, "client" | "slave"),
            Some(("bsize", v)) => vdev.bsize = v.parse().unwrap_or(MEMIF_DEFAULT_BSIZE),
            Some(("zero-copy", v)) => vdev.zero_copy = v == "yes",
            _ => {}
        }
    }
    Some(vdev)
}

/// The `net_af_packet` vdev that will be the port (as [`port_vdev`]), if it is one.
fn af_packet_vdev(eal_args: &[String], port: Option<&str>) -> Option<AfPacketVdev> {
    let spec = port_vdev(eal_args, port)?;
    let mut parts = spec.split(',');
    let name = parts.next()?.to_string();
    if !name.starts_with("net_af_packet") {
        return None;
    }
    let mut vdev = AfPacketVdev {
        name,
        iface: None,
        framesz: AF_PACKET_DEFAULT_FRAMESZ,
    };
    for kv in parts {
        match kv.split_once('=') {
            Some(("iface", v)) => vdev.iface = Some(v.to_string()),
            Some(("framesz", v)) => vdev.framesz = v.parse().unwrap_or(AF_PACKET_DEFAULT_FRAMESZ),
            _ => {}
        }
    }
    Some(vdev)
}

/// The MTU of kernel interface `ifindex` (in this process's network namespace).
fn interface_mtu(ifindex: u32) -> Option<u32> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has room for IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // SAFETY: all-zero is a valid `ifreq`; the name is copied in, NUL-terminated
    // (if_indextoname wrote at most IF_NAMESIZE bytes including the NUL).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name.copy_from_slice(&name);
    // SAFETY: SIOCGIFMTU on an open socket with a valid `ifreq`; the kernel writes
    // `ifr_ifru.ifru_mtu`.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCGIFMTU,
            &mut req,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: the kernel filled the union's MTU member (the call succeeded).
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}

fn first_port(eal: &Eal) -> io::Result<u16> {
    eal.first_port()
        .ok_or_else(|| io::Error::other("DPDK found no ethernet port"))
}

/// What a received frame is.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Ours: the packet starts at [`ETH_HEADER`]; the source MAC.
    Packet(MacAddr),
    /// Another EtherType, or too short.
    Foreign,
}

/// Classifies a received frame.
pub fn classify(frame: &[u8]) -> FrameKind {
    match Fields::<ETH_HEADER>::new(frame) {
        Some(f) if f.be_u16::<12>() == ETHERTYPE => FrameKind::Packet(MacAddr(f.array::<6, 6>())),
        _ => FrameKind::Foreign,
    }
}

/// Writes the Ethernet header into the first [`ETH_HEADER`] bytes of `out`.
///
/// # Panics
/// If `out` is shorter than [`ETH_HEADER`].
pub fn write_header(out: &mut [u8], dst: MacAddr, src: MacAddr) {
    let mut w = FieldsMut::<ETH_HEADER>::new(out).expect("room for an Ethernet header");
    w.put::<0, 6>(dst.0);
    w.put::<6, 6>(src.0);
    w.put_be_u16::<12>(ETHERTYPE);
}

impl PacketIo for DpdkIo {
    fn name(&self) -> &'static str {
        "dpdk"
    }

    fn local_addr(&self) -> String {
        self.mac.to_string()
    }

    fn max_packet(&self) -> usize {
        self.max_packet
    }

    fn send_with<F: FnOnce(&mut [u8])>(
        &mut self,
        node: u32,
        len: usize,
        fill: F,
    ) -> io::Result<bool> {
        if self.txq.len() >= TX_QUEUE_MAX {
            self.flush_tx();
            if self.txq.len() >= TX_QUEUE_MAX {
                self.stats.tx_full += 1;
                return Ok(false);
            }
        }
        let dst = self.peer_mac(node);
        let Ok(mut m) = self.pool.alloc() else {
            // Every mbuf is in flight: a lost packet, resent later.
            self.stats.tx_full += 1;
            return Ok(false);
        };
        let Some(frame) = m.append(ETH_HEADER + len) else {
            return Err(io::Error::other(format!(
                "a packet of {len} bytes does not fit an mbuf"
            )));
        };
        write_header(frame, dst, self.mac);
        // The packet is encoded straight into the mbuf's data room.
        fill(&mut frame[ETH_HEADER..]);
        self.stats.tx_bytes_copied += len as u64;
        self.stats.tx_largest = self.stats.tx_largest.max(len as u64);
        if dst == BROADCAST {
            self.stats.tx_broadcast += 1;
        }
        self.txq.push(m);
        if self.txq.len() >= TX_BURST {
            self.flush_tx();
        }
        Ok(true)
    }

    fn send_packet(
        &mut self,
        node: u32,
        h: &PacketHeader,
        payload: &[u8],
        pinned: bool,
    ) -> io::Result<bool> {
        if pinned && payload.len() >= EXTBUF_MIN && self.ext.is_some() {
            if let Some(sent) = self.send_attached(node, h, payload) {
                return Ok(sent);
            }
        }
        self.send_with(node, PKT_HEADER + payload.len(), |out| {
            packet::encode_into(h, payload, out)
        })
    }

    type Rx = RxFrame;

    fn recv(&mut self) -> io::Result<Option<RxFrame>> {
        // Bounded: every round takes a frame from the queue or refills it.
        for _ in 0..4 * usize::from(RX_BURST) {
            let Some(m) = self.rxq.pop_front() else {
                if !self.rx_done.is_empty() {
                    Mbuf::free_bulk(&mut self.rx_done);
                }
                // Frames queued for sending go out first: the caller is about to
                // wait for answers to them.
                self.flush_tx();
                if self.port.rx_burst(0, &mut self.rxbuf, RX_BURST) == 0 {
                    self.empty_poll();
                    return Ok(None);
                }
                self.rxq.extend(self.rxbuf.drain(..));
                continue;
            };
            let frame = m.data();
            match classify(frame) {
                FrameKind::Foreign => self.stats.foreign_ethertype += 1,
                FrameKind::Packet(src) if src == self.mac => self.stats.own += 1,
                FrameKind::Packet(src) => {
                    // A frame in chained mbufs is longer than our MTU's buffers (a
                    // memif peer with a larger MTU): oversize too.
                    if frame.len() - ETH_HEADER > self.max_packet.max(PACKET_MIN)
                        || m.segments() > 1
                    {
                        self.stats.oversize += 1;
                        self.rx_done.push(m);
                        continue;
                    }
                    self.last_src = Some(src);
                    self.stats.rx_frames += 1;
                    let len = (frame.len() - ETH_HEADER) as u64;
                    self.stats.rx_bytes += len;
                    self.stats.rx_largest = self.stats.rx_largest.max(len);
                    self.moved(1);
                    return Ok(Some(RxFrame(m)));
                }
            }
            self.rx_done.push(m);
        }
        Ok(None)
    }

    fn release(&mut self, pkt: RxFrame) {
        self.rx_done.push(pkt.0);
        if self.rx_done.len() >= usize::from(RX_BURST) {
            Mbuf::free_bulk(&mut self.rx_done);
        }
    }

    fn learn(&mut self, node: u32) {
        if let (Some(slot), Some(src)) = (self.peers.get_mut(node as usize), self.last_src) {
            if *slot != Some(src) {
                log::info!("dpdk: node {node} is at {src}");
                *slot = Some(src);
            }
        }
    }

    fn register(&mut self, poller: &Poller, token: u32) -> io::Result<()> {
        let Some(fd) = self.wake_fd else {
            return Ok(());
        };
        // SAFETY: `fd` is the driver's open packet socket for our port (found in
        // `open`); it stays open while `self.port` lives, and this borrow ends with the
        // call: the poller keeps only the registration, which the kernel drops when the
        // driver closes the socket.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        poller.add_oneshot(fd, token)?;
        self.watched = true;
        self.wake = Some(Registration {
            poller: poller.clone(),
            token,
        });
        Ok(())
    }

    fn before_sleep(&mut self, _poller: &Poller) {
        self.busy = 0;
        let (Some(fd), Some(Registration { poller, token })) = (self.wake_fd, self.wake.as_ref())
        else {
            return;
        };
        // SAFETY: as in `register`: the driver's socket, open while `self.port` lives.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let r = if self.watched {
            poller.rearm(fd, *token)
        } else {
            poller.add_oneshot(fd, *token)
        };
        match r {
            Ok(()) => self.watched = true,
            Err(e) => log::debug!("dpdk: re-arming the packet socket's wake-up: {e}"),
        }
    }

    fn poll_mode(&self) -> bool {
        true
    }

    fn wakes(&self) -> bool {
        self.wake_fd.is_some()
    }

    fn flush(&mut self) {
        self.flush_tx();
        self.settle_attached();
    }

    fn info(&self) -> Vec<(&'static str, String)> {
        vec![
            ("dpdk_tx_path", self.tx_path().to_string()),
            (
                "dpdk_extbuf",
                match &self.ext_off {
                    None => "on".to_string(),
                    Some(why) => format!("off: {why}"),
                },
            ),
        ]
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        vec![
            ("frames_tx", s.tx_frames),
            ("frames_rx", s.rx_frames),
            ("frames_foreign_ethertype", s.foreign_ethertype),
            ("frames_own", s.own),
            ("frames_oversize", s.oversize),
            ("frames_rx_largest", s.rx_largest),
            ("frames_tx_largest", s.tx_largest),
            ("frames_tx_full", s.tx_full),
            ("frames_tx_broadcast", s.tx_broadcast),
            ("frames_tx_queued", self.txq.len() as u64),
            ("tx_bytes_copied", s.tx_bytes_copied),
            ("tx_bytes_attached", s.tx_bytes_attached),
            ("frames_tx_attached", s.tx_attached),
            ("frames_tx_attached_copied", s.tx_attached_copied),
            // Attached mbufs not freed yet: 0 whenever the agent reads it (between
            // transport calls); anything else is a block the device may still read.
            (
                "frames_tx_attached_out",
                self.ext.as_ref().map_or(0, |e| e.slots.outstanding()),
            ),
            ("port_wakes_agent", u64::from(self.wake_fd.is_some())),
            ("port_unwatched", s.unwatched),
            ("frames_tx_bursts", s.tx_bursts),
            ("port_restarts", s.restarts),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_classified_by_ethertype() {
        let src = MacAddr([2, 0, 0, 0, 0, 7]);
        let mut f = vec![0u8; ETH_HEADER + 5];
        write_header(&mut f, BROADCAST, src);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(classify(&f), FrameKind::Packet(src));
        f[13] = 0x00;
        assert_eq!(classify(&f), FrameKind::Foreign);
        assert_eq!(classify(&f[..13]), FrameKind::Foreign);
    }

    #[test]
    fn memif_vdevs_and_their_role_are_found_in_the_eal_arguments() {
        let args: Vec<String> = [
            "--no-pci",
            "--vdev=net_memif0,role=client,socket=/tmp/x/memif.sock",
            "--vdev",
            "net_memif1,socket=/tmp/y.sock",
        ]
        .map(String::from)
        .to_vec();
        let client = MemifVdev {
            client: true,
            bsize: 2048,
            zero_copy: false,
        };
        assert_eq!(memif_vdev(&args, None), Some(client));
        let server = MemifVdev {
            client: false,
            bsize: 2048,
            zero_copy: false,
        };
        assert_eq!(memif_vdev(&args, Some("net_memif1")), Some(server));
        let big = vec!["--vdev=net_memif0,role=server,bsize=9216,zero-copy=yes".to_string()];
        let want = MemifVdev {
            client: false,
            bsize: 9216,
            zero_copy: true,
        };
        assert_eq!(memif_vdev(&big, None), Some(want));
        let other = vec!["--vdev=net_af_packet0,iface=veth0".to_string()];
        assert_eq!(memif_vdev(&other, None), None);
        assert_eq!(memif_vdev(&args, Some("net_ring0")), None);
    }

    #[test]
    fn af_packet_vdevs_are_found_in_the_eal_arguments() {
        let args: Vec<String> = [
            "--no-pci",
            "--vdev=net_ring0",
            "--vdev",
            "net_af_packet1,iface=veth0,framesz=16384,blocksz=16384",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let want = AfPacketVdev {
            name: "net_af_packet1".into(),
            iface: Some("veth0".into()),
            framesz: 16384,
        };
        assert_eq!(af_packet_vdev(&args, Some("net_af_packet1")), Some(want));
        // No port named: the first vdev, which is not af_packet.
        assert_eq!(af_packet_vdev(&args, None), None);
        assert_eq!(af_packet_vdev(&args, Some("net_ring0")), None);
        let plain = vec!["--vdev=net_af_packet0,iface=eth9".to_string()];
        let v = af_packet_vdev(&plain, None).unwrap();
        assert_eq!(v.framesz, AF_PACKET_DEFAULT_FRAMESZ);
        assert_eq!(v.iface.as_deref(), Some("eth9"));
    }

    #[test]
    fn the_loopback_interface_has_an_mtu() {
        // Index 1 is `lo` in every network namespace.
        assert!(interface_mtu(1).is_some_and(|m| m >= 1500));
        assert_eq!(interface_mtu(u32::MAX), None);
    }

    #[test]
    fn macs_parse_and_print() {
        let m = MacAddr(crate::agent::config::parse_mac("02:1A:ff:00:10:09").unwrap());
        assert_eq!(m, MacAddr([2, 0x1a, 0xff, 0, 0x10, 9]));
        assert_eq!(m.to_string(), "02:1a:ff:00:10:09");
        for bad in [
            "",
            "02:1a:ff:00:10",
            "02:1a:ff:00:10:09:00",
            "2:1a:ff:00:10:09",
            "zz:1a:ff:00:10:09",
        ] {
            assert_eq!(crate::agent::config::parse_mac(bad), None, "{bad}");
        }
    }
}
