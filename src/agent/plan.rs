//! Start-up in one direction: the configuration is checked and resolved once
//! into a [`Plan`] (nothing opened yet), then the agent's parts are made
//! from the plan in order: pinning, the pool, the control socket, the
//! poller, the transports. Nothing made later goes back to the
//! configuration file's rules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::shm::Pool;
use crate::transport::datagram::{DatagramTransport, PacketIo, UdpIo};
use crate::transport::multi::Back;
use crate::transport::tcp::TcpTransport;
use crate::transport::{Poller, Shortfall, Transport};
use crate::wire::{self, auth::JobKey, caps, Hello};

use super::config::{self, AgentConfig, IdlePolicy, TransportKind};
use super::degraded::Degraded;
use super::peers::Timing;
use super::AgentError;

/// Everything the agent is built from, resolved and checked.
pub(super) struct Plan {
    pub(super) cfg: AgentConfig,
    /// The job key peers prove they hold (`None`: peers not authenticated).
    pub(super) key: Option<JobKey>,
    /// This run of the agent (start time in ns): tells a restarted agent apart.
    pub(super) incarnation: u64,
    /// What this agent says about itself to peers.
    pub(super) hello: Hello,
    /// The transports, the first being the default.
    pub(super) set: Vec<TransportKind>,
    /// Per node: a transport forced for it (hybrid agents).
    pub(super) forced: Vec<Option<u32>>,
    pub(super) timing: Timing,
    /// The port offset of the verbs bootstrap listeners (checked for every
    /// node's port in `resolve`).
    pub(super) verbs_offset: u16,
    /// What the configuration makes run degraded (the agent keeps the list).
    pub(super) degraded: Degraded,
    /// What the devices opened run below the configuration (a NIC's MTU),
    /// for the agent's list.
    pub(super) shortfall: std::cell::RefCell<Vec<Shortfall>>,
}

impl Plan {
    /// Check `cfg` and resolve what the agent's parts need from it.
    pub(super) fn resolve(mut cfg: AgentConfig) -> Result<Plan, AgentError> {
        cfg.validate()?;
        let mut degraded = Degraded::default();
        if cfg.cores.len() > 1 {
            degraded.note(
                "cores",
                format!(
                    "one polling thread for now: it runs on core {}, the rest of {:?} stay unused",
                    cfg.cores[0], cfg.cores
                ),
                "give one core (--cores N)",
            );
        }
        if cfg.idle == IdlePolicy::Spin && cfg.cores.is_empty() {
            degraded.note(
                "spin",
                "idle policy 'spin' without --cores: the agent takes a whole core it shares with \
                 others; where cores are fewer than spinning processes this starves clients",
                "--cores N on an isolated core, or --idle adaptive",
            );
        }
        let key = cfg.job_key()?;
        if key.is_none() && cfg.addrs.len() > 1 {
            degraded.note(
                "peer_auth",
                "NO JOB KEY: peers are NOT authenticated (peer_auth: none); whoever reaches this \
                 agent's port and knows the job name can speak as a peer (a trusted fabric only)",
                "a job key for every agent of the job: job_key_file, --job-key-file or \
                 WYVERN_JOB_KEY (wyvern launch --print-key makes one)",
            );
        }
        let set = cfg.transport_set();
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let hello = Hello {
            node: cfg.node_id,
            nodes: cfg.addrs.len() as u32,
            incarnation,
            job: wire::job_hash(cfg.job.as_deref()),
            caps: set.iter().fold(0, |c, &k| c | transport_cap(k)),
            fabric: if set.contains(&TransportKind::Verbs) {
                wire::fabric_id(cfg.verbs_fabric.as_deref().unwrap_or("default"))
            } else {
                0
            },
        };
        let forced = if set.len() > 1 {
            cfg.forced_transports()?
                .into_iter()
                .map(|f| f.map(transport_cap))
                .collect()
        } else {
            Vec::new()
        };
        if set.contains(&TransportKind::Verbs) {
            cfg.verbs_bootstrap()?;
        }
        let verbs_offset = cfg.verbs_offset();
        let timing = Timing {
            heartbeat: cfg.heartbeat(),
            peer_timeout: cfg.peer_timeout(),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
        };
        Ok(Plan {
            cfg,
            key,
            incarnation,
            hello,
            set,
            forced,
            timing,
            verbs_offset,
            degraded,
            shortfall: Default::default(),
        })
    }

    /// Open the transports: one, or a hybrid of several.
    pub(super) fn open_transports(
        &self,
        poller: &Poller,
        pool: &Arc<Pool>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Box<dyn Transport>, AgentError> {
        if self.set.len() == 1 {
            return self.open(self.set[0], &self.cfg.addrs, poller, pool, wake);
        }
        let mut backs = Vec::new();
        // Every back end listens on the port TCP got (peers know one
        // address per node).
        let mut addrs = self.cfg.addrs.clone();
        let me = self.cfg.node_id as usize;
        for (i, &k) in self.set.iter().enumerate() {
            let p = poller.sub(i as u32);
            let t = if i == 0 {
                // TCP, first in every hybrid set (see `transport_set`).
                let t = self.open_tcp(&addrs, &p, pool, wake.clone())?;
                addrs[me] = t.addr();
                Back::Tcp(Box::new(t))
            } else {
                Back::Other(self.open(k, &addrs, &p, pool, wake.clone())?)
            };
            backs.push(crate::transport::multi::Backend {
                transport: t,
                poller: p,
                cap: transport_cap(k),
            });
        }
        Ok(Box::new(crate::transport::multi::Multi::new(
            backs,
            pool.clone(),
            &self.hello,
            &self.forced,
            crate::transport::multi::Fallback {
                after: self.cfg.hybrid_fallback(),
                retry: self.cfg.hybrid_retry(),
            },
        )))
    }

    /// The reliable datagram transport over a packet device (udp, dpdk).
    pub(super) fn datagram<I: PacketIo>(
        &self,
        io: I,
        poller: &Poller,
        pool: &Arc<Pool>,
    ) -> std::io::Result<DatagramTransport<I>> {
        DatagramTransport::new(
            self.hello,
            io,
            pool.clone(),
            poller,
            self.timing.peer_timeout,
            self.key.clone(),
        )
        .map(|t| t.with_congestion(self.cfg.congestion))
    }

    /// Start the tcp transport, listening at `addrs[me]`.
    fn open_tcp(
        &self,
        addrs: &[SocketAddr],
        poller: &Poller,
        pool: &Arc<Pool>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<TcpTransport, AgentError> {
        let me = addrs[self.cfg.node_id as usize];
        TcpTransport::new(
            self.hello,
            addrs.to_vec(),
            poller,
            pool.clone(),
            wake,
            self.key.clone(),
        )
        .map_err(|source| AgentError::Listen { addr: me, source })
    }

    /// Start one transport back end, listening at `addrs[me]`.
    fn open(
        &self,
        kind: TransportKind,
        addrs: &[SocketAddr],
        poller: &Poller,
        pool: &Arc<Pool>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Box<dyn Transport>, AgentError> {
        let cfg = &self.cfg;
        let me = addrs[cfg.node_id as usize];
        let listen = |source| AgentError::Listen { addr: me, source };
        #[cfg(not(feature = "verbs"))]
        let _ = self.verbs_offset;
        Ok(match kind {
            TransportKind::Tcp => Box::new(self.open_tcp(addrs, poller, pool, wake)?),
            TransportKind::Udp => {
                let io = UdpIo::bind(cfg.node_id, addrs, cfg.packet_bytes).map_err(listen)?;
                Box::new(self.datagram(io, poller, pool).map_err(listen)?)
            }
            #[cfg(feature = "dpdk")]
            TransportKind::Dpdk => {
                use crate::transport::dpdk::{port_list, DpdkIo, DpdkIoConfig, MacAddr, Rails};
                let dev = |source| AgentError::Device {
                    name: "dpdk",
                    source,
                };
                let dcfg = DpdkIoConfig {
                    me: cfg.node_id,
                    nodes: addrs.len() as u32,
                    eal_args: cfg.dpdk_eal_args.clone(),
                    port: cfg.dpdk_port.clone(),
                    mtu: cfg.dpdk_mtu,
                    extbuf: cfg.dpdk_extbuf == crate::agent::config::ExtbufPolicy::Auto,
                    extbuf_any_driver: false,
                    peer_macs: cfg
                        .peer_macs()
                        .into_iter()
                        .map(|m| m.map(MacAddr))
                        .collect(),
                };
                // The EAL pins this thread to its main lcore's CPU (`-l`/`--lcores`;
                // without them, the first CPU): `cores`, when given, wins.
                let pin = || cfg.cores.first().map_or(Ok(()), |&core| pin_to(core));
                // Several ports (`dpdk_port = "a,b"`): one rail each (docs/dpdk.md).
                let ports = port_list(cfg.dpdk_port.as_deref());
                if ports.len() > 1 {
                    let io = Rails::open(&dcfg, &ports).map_err(dev)?;
                    self.shortfall.borrow_mut().extend(io.shortfall());
                    pin()?;
                    Box::new(self.datagram(io, poller, pool).map_err(dev)?)
                } else {
                    let io = DpdkIo::open(&dcfg).map_err(dev)?;
                    self.shortfall
                        .borrow_mut()
                        .extend_from_slice(io.shortfall());
                    pin()?;
                    Box::new(self.datagram(io, poller, pool).map_err(dev)?)
                }
            }
            #[cfg(feature = "verbs")]
            TransportKind::Verbs => {
                use crate::transport::verbs::{VerbsConfig, VerbsTransport};
                let t = VerbsTransport::new(
                    VerbsConfig {
                        hello: self.hello,
                        device: cfg.verbs_device.clone(),
                        gid_index: cfg.verbs_gid_index,
                        bootstrap: config::bootstrap_addrs(addrs, self.verbs_offset)?,
                        key: self.key.clone(),
                    },
                    poller,
                    pool.clone(),
                    wake,
                )
                .map_err(|e| AgentError::Device {
                    name: "verbs",
                    source: std::io::Error::other(e),
                })?;
                self.shortfall.borrow_mut().extend(t.shortfall().cloned());
                Box::new(t)
            }
            #[allow(unreachable_patterns)]
            other => {
                let _ = (wake, listen);
                return Err(AgentError::Config(config::ConfigError::Invalid(format!(
                    "transport \"{0}\" needs a wyvern built with the `{0}` cargo feature",
                    format!("{other:?}").to_lowercase()
                ))));
            }
        })
    }
}

/// The [`crate::wire::caps`] bit of a transport.
fn transport_cap(k: TransportKind) -> u32 {
    match k {
        TransportKind::Tcp => caps::TCP,
        TransportKind::Udp => caps::UDP,
        TransportKind::Dpdk => caps::DPDK,
        TransportKind::Verbs => caps::VERBS,
    }
}

/// Pin the calling thread to `core`.
pub(super) fn pin_to(core: usize) -> Result<(), AgentError> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).map_err(|e| AgentError::Pin {
        core,
        source: e.into(),
    })?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| {
        AgentError::Pin {
            core,
            source: e.into(),
        }
    })
}
