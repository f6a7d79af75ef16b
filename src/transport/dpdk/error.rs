//! Errors of the DPDK layer: one variant per failing operation, DPDK's error number kept
//! as the source.

use std::ffi::CStr;
use std::fmt;

/// A DPDK error number (`rte_errno`, or the negative return of an ethdev call), shown
/// with DPDK's own text (`rte_strerror`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RteError(i32);

impl RteError {
    /// From an error number (the sign is ignored: ethdev calls return `-errno`).
    pub fn new(code: i32) -> RteError {
        RteError(code.wrapping_abs())
    }

    /// The calling thread's `rte_errno`, left by the DPDK call that just failed.
    pub fn last() -> RteError {
        RteError::new(dpdk_sys::rte_errno())
    }

    /// The error number (positive: `EINVAL`, `ENODEV`, `ENOMEM`, DPDK's own `E_RTE_*`, …).
    pub fn code(self) -> i32 {
        self.0
    }

    /// DPDK's text for it.
    pub fn text(self) -> String {
        // SAFETY: rte_strerror accepts any number and returns a NUL-terminated string,
        // either static or in a thread-local buffer that the next call on this thread
        // overwrites; it is copied out at once.
        unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl fmt::Display for RteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (errno {})", self.text(), self.0)
    }
}

impl fmt::Debug for RteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RteError")
            .field("code", &self.0)
            .field("text", &self.text())
            .finish()
    }
}

impl std::error::Error for RteError {}

/// What can fail in the DPDK layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`Eal::init`](super::Eal::init) was called a second time in this process.
    #[error("the DPDK EAL was already initialised in this process (it can start only once)")]
    EalAlreadyInitialised,
    /// An EAL argument or a name holds a NUL byte.
    #[error("{what} {value:?} contains a NUL byte")]
    NulByte {
        /// What it is ("EAL argument", "port name", …).
        what: &'static str,
        /// The offending string.
        value: String,
    },
    /// `rte_eal_init` failed.
    #[error("rte_eal_init failed (EAL arguments: {args})")]
    EalInit {
        /// The arguments, space-separated.
        args: String,
        /// DPDK's reason.
        #[source]
        source: RteError,
    },
    /// `rte_dev_probe` of a virtual device failed.
    #[error("probing device {devargs:?} failed")]
    Probe {
        /// The device arguments given.
        devargs: String,
        /// DPDK's reason.
        #[source]
        source: RteError,
    },
    /// No ethdev port has this name.
    #[error("no DPDK port named {name:?} (was it given to the EAL with --vdev, or probed?)")]
    PortNotFound {
        /// The name looked up.
        name: String,
        /// DPDK's reason.
        #[source]
        source: RteError,
    },
    /// No ethdev port has this id.
    #[error("no DPDK port with id {port}")]
    NoSuchPort {
        /// The id.
        port: u16,
    },
    /// The port is already open through another [`Port`](super::Port).
    #[error("DPDK port {port} is already open in this process")]
    PortBusy {
        /// The id.
        port: u16,
    },
    /// The configuration asks for something the device cannot do.
    #[error("port {port} ({name}): {problem}")]
    Unsupported {
        /// The id.
        port: u16,
        /// Its name.
        name: String,
        /// What is asked and what the device allows.
        problem: String,
    },
    /// An ethdev call on a port failed.
    #[error("port {port} ({name}): {op} failed")]
    Port {
        /// The id.
        port: u16,
        /// Its name.
        name: String,
        /// The operation (`rte_eth_dev_configure`, `rte_eth_rx_queue_setup(queue 1)`, …).
        op: String,
        /// DPDK's reason.
        #[source]
        source: RteError,
    },
    /// `rte_pktmbuf_pool_create` failed.
    #[error("creating mbuf pool {name:?} ({count} mbufs of {data_room} B) failed")]
    PoolCreate {
        /// The pool's name.
        name: String,
        /// Mbufs asked for.
        count: u32,
        /// Data room of each.
        data_room: u16,
        /// DPDK's reason.
        #[source]
        source: RteError,
    },
    /// The pool has fewer free mbufs than asked for.
    #[error("mbuf pool {pool:?} has fewer than {count} free mbufs")]
    PoolEmpty {
        /// The pool's name.
        pool: String,
        /// How many were asked for.
        count: usize,
    },
}

/// Results of the DPDK layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
