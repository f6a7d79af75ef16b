//! Starting DPDK's Environment Abstraction Layer, once per process.

use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{Error, Result, RteError};

/// Set by the first [`Eal::init`]: DPDK's EAL can start only once per process, even if
/// that start failed.
static STARTED: AtomicBool = AtomicBool::new(false);

/// Proof that DPDK's EAL is running in this process: every DPDK object ([`PktPool`],
/// [`Port`]) is created from an `&Eal`.
///
/// The EAL lives until the process exits (`rte_eal_cleanup` is never called: DPDK
/// objects cannot be re-created after it, and the EAL cannot be started again).
///
/// [`PktPool`]: super::PktPool
/// [`Port`]: super::Port
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Starts the EAL with these arguments (EAL options, without a program name: e.g.
    /// `--no-pci --vdev=net_ring0 --file-prefix=wyvern-1 -l 0`).
    ///
    /// Once per process: a second call, even after a failed first one, returns
    /// [`Error::EalAlreadyInitialised`]. The EAL pins the calling thread to the main
    /// lcore's CPU and may start its own service threads.
    pub fn init(args: &[String]) -> Result<Eal> {
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(CString::from(c"wyvern"));
        for a in args {
            argv.push(CString::new(a.as_str()).map_err(|_| Error::NulByte {
                what: "EAL argument",
                value: a.clone(),
            })?);
        }
        if STARTED.swap(true, Ordering::AcqRel) {
            return Err(Error::EalAlreadyInitialised);
        }
        // The EAL keeps pointers into argv (it may also permute it): give it strings
        // that live as long as the process. This is done once per process.
        let argv: &'static mut [*mut c_char] =
            Vec::leak(argv.into_iter().map(CString::into_raw).collect::<Vec<_>>());
        let argc = i32::try_from(argv.len()).expect("fewer than 2^31 EAL arguments");
        // SAFETY: argv holds argc valid NUL-terminated strings that are never freed;
        // STARTED makes this the only rte_eal_init call in the process.
        let rc = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            return Err(Error::EalInit {
                args: args.join(" "),
                source: RteError::last(),
            });
        }
        log::info!("DPDK EAL started: {}", args.join(" "));
        Ok(Eal { _private: () })
    }

    /// Whether an [`Eal::init`] was attempted in this process (successful or not).
    pub fn started() -> bool {
        STARTED.load(Ordering::Acquire)
    }

    /// The number of lcores the EAL runs (from its `-l`/`--lcores` arguments).
    pub fn lcore_count(&self) -> u32 {
        // SAFETY: reads EAL configuration; the EAL is up (we hold an &Eal).
        unsafe { dpdk_sys::rte_lcore_count() }
    }

    /// The NUMA node of the calling thread's lcore, if DPDK knows it.
    pub fn numa_node(&self) -> Option<u32> {
        // SAFETY: reads the calling thread's EAL state; the EAL is up.
        let socket = unsafe { dpdk_sys::rte_socket_id() };
        (socket != dpdk_sys::SOCKET_ID_ANY as u32).then_some(socket)
    }

    /// The number of ethdev ports available (probed and not yet closed).
    pub fn port_count(&self) -> u16 {
        // SAFETY: reads ethdev state; the EAL is up.
        unsafe { dpdk_sys::rte_eth_dev_count_avail() }
    }

    /// The lowest valid ethdev port id, if any port exists.
    pub fn first_port(&self) -> Option<u16> {
        (0..dpdk_sys::RTE_MAX_ETHPORTS as u16).find(|&id| {
            // SAFETY: a plain query; any id is accepted.
            unsafe { dpdk_sys::rte_eth_dev_is_valid_port(id) == 1 }
        })
    }

    /// Creates a device at run time, as a `--vdev` argument would have at start-up
    /// (e.g. `net_null1`, `net_af_packet0,iface=veth0`). Its ethdev port can then be
    /// opened by name with [`Port::open`](super::Port::open).
    pub fn probe_vdev(&self, devargs: &str) -> Result<()> {
        let c = CString::new(devargs).map_err(|_| Error::NulByte {
            what: "device arguments",
            value: devargs.to_owned(),
        })?;
        // SAFETY: c is a valid C string for the duration of the call; the EAL is up.
        let rc = unsafe { dpdk_sys::rte_dev_probe(c.as_ptr()) };
        if rc < 0 {
            return Err(Error::Probe {
                devargs: devargs.to_owned(),
                source: RteError::new(rc),
            });
        }
        Ok(())
    }
}
