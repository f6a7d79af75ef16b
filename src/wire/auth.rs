//! Peer authentication: a per-job secret key and the MACs that agents put on
//! their handshakes with it.
//!
//! The MAC is HMAC-SHA-256 (RFC 2104, FIPS 180-4) from the RustCrypto `hmac`
//! and `sha2` crates: pure Rust (nothing for `cc` to build on every node type),
//! widely used and reviewed, constant-time tag comparison (`verify_slice`), and
//! SHA-NI / AVX2 code paths picked at run time (no host CPU flags at build
//! time). It is used only on handshakes, so its per-packet cost does not matter
//! (see `docs/security.md` for the figure and for why datagram links
//! rely on unguessable epochs after the handshake instead of a MAC per packet).
//!
//! Every MAC is over a label naming the message and the direction, then fixed-size
//! fields: no two kinds of message can be taken for each other, and no field can
//! be shifted into another.
//!
//! No I/O here except [`JobKey::load_file`] and the random numbers
//! ([`random_bytes`], from the kernel's `getrandom(2)`).

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a job key.
pub const KEY_LEN: usize = 32;
/// Bytes of a MAC tag.
pub const MAC_LEN: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// The environment variable that may hold the job key: 64 hexadecimal digits.
pub const KEY_ENV: &str = "WYVERN_JOB_KEY";

/// Labels: what a MAC is over (message and direction).
pub mod label {
    /// TCP: the dialing agent's `Hello`.
    pub const TCP_HELLO_DIALER: &[u8] = b"wyvern tcp hello from dialer v1";
    /// TCP: the accepting agent's `Hello`.
    pub const TCP_HELLO_ACCEPTOR: &[u8] = b"wyvern tcp hello from acceptor v1";
    /// Datagram (udp, dpdk): a `Hello` packet.
    pub const DGRAM_HELLO: &[u8] = b"wyvern datagram hello v1";
    /// Verbs bootstrap: the dialing agent's `Hello` and `Info`.
    pub const VERBS_BOOT_DIALER: &[u8] = b"wyvern verbs bootstrap from dialer v2";
    /// Verbs bootstrap: the accepting agent's `Hello` and `Info`.
    pub const VERBS_BOOT_ACCEPTOR: &[u8] = b"wyvern verbs bootstrap from acceptor v2";
}

/// Why a job key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read.
    #[error("cannot read the job key file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file may be read by others than its owner.
    #[error(
        "the job key file {path} is readable by group or others (mode {mode:o}): \
         make it readable only by the agent's user (chmod 600)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file belongs to another user.
    #[error("the job key file {path} belongs to uid {owner}, not to the agent's user (uid {me})")]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The agent's effective uid.
        me: u32,
    },
    /// Not a key.
    #[error("{what}: a job key is 32 bytes, written as 64 hexadecimal digits (or 32 raw bytes in a file)")]
    Format {
        /// Where the bad key came from.
        what: String,
    },
    /// No random numbers from the kernel.
    #[error("cannot get random bytes for a job key: {0}")]
    Random(String),
}

/// A job's secret key. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct JobKey([u8; KEY_LEN]);

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobKey(..)")
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl JobKey {
    /// A key from its bytes.
    pub fn from_bytes(b: [u8; KEY_LEN]) -> JobKey {
        JobKey(b)
    }

    /// A key from 64 hexadecimal digits (surrounding white space ignored);
    /// `what` names where it came from, for the error.
    pub fn from_hex(s: &str, what: &str) -> Result<JobKey, KeyError> {
        let s = s.trim().as_bytes();
        let bad = || KeyError::Format { what: what.into() };
        if s.len() != 2 * KEY_LEN {
            return Err(bad());
        }
        let mut k = [0u8; KEY_LEN];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (hex_val(pair[0]), hex_val(pair[1])) else {
                return Err(bad());
            };
            k[i] = hi << 4 | lo;
        }
        Ok(JobKey(k))
    }

    /// The key as 64 hexadecimal digits (for `wyvern launch` to hand on).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A new random key.
    pub fn generate() -> Result<JobKey, KeyError> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(JobKey(k))
    }

    /// Read a key file: 64 hexadecimal digits or 32 raw bytes. The file must
    /// belong to the agent's user and be readable by nobody else.
    pub fn load_file(path: &Path) -> Result<JobKey, KeyError> {
        use std::os::unix::fs::MetadataExt;
        let read = |source| KeyError::Read {
            path: path.into(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.into(),
                mode,
            });
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(KeyError::Owner {
                path: path.into(),
                owner: meta.uid(),
                me,
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        if bytes.len() == KEY_LEN {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(&bytes);
            return Ok(JobKey(k));
        }
        let what = format!("job key file {}", path.display());
        let text =
            std::str::from_utf8(&bytes).map_err(|_| KeyError::Format { what: what.clone() })?;
        JobKey::from_hex(text, &what)
    }

    fn hmac(&self, label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        // NOTE(unwrap): HMAC takes a key of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        m.update(&[label.len() as u8]);
        m.update(label);
        for p in parts {
            m.update(p);
        }
        m
    }

    /// The MAC of `parts` (fixed-size fields) under `label`.
    pub fn mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
        self.hmac(label, parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts` under `label` (constant time).
    pub fn verify(&self, label: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        self.hmac(label, parts).verify_slice(tag).is_ok()
    }
}

/// Random bytes from the kernel (nonces, link epochs).
///
/// # Panics
/// If the kernel has no random numbers to give (`getrandom(2)` fails), which
/// on Linux ≥ 3.17 it does not once booted.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // NOTE(unwrap): getrandom(2) only fails before the kernel's pool is
    // seeded at boot or with a bad buffer; an agent cannot work without it.
    getrandom::fill(&mut b).expect("getrandom(2) gives random bytes");
    b
}

/// A random non-zero 64-bit value.
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes::<8>()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let k = JobKey::from_bytes([0xab; 32]);
        assert_eq!(JobKey::from_hex(&k.to_hex(), "t").unwrap(), k);
        assert!(JobKey::from_hex("abc", "t").is_err());
        assert!(JobKey::from_hex(&"zz".repeat(32), "t").is_err());
        assert_eq!(format!("{k:?}"), "JobKey(..)");
    }

    #[test]
    fn macs_depend_on_key_label_and_fields() {
        let a = JobKey::from_bytes([1; 32]);
        let b = JobKey::from_bytes([2; 32]);
        let t = a.mac(label::DGRAM_HELLO, &[b"x", b"y"]);
        assert!(a.verify(label::DGRAM_HELLO, &[b"x", b"y"], &t));
        assert!(!b.verify(label::DGRAM_HELLO, &[b"x", b"y"], &t));
        assert!(!a.verify(label::TCP_HELLO_DIALER, &[b"x", b"y"], &t));
        assert!(!a.verify(label::DGRAM_HELLO, &[b"x", b"z"], &t));
        assert!(!a.verify(label::DGRAM_HELLO, &[b"x", b"y"], &t[..31]));
    }

    #[test]
    fn key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, format!("{}\n", "0f".repeat(32))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            JobKey::load_file(&p),
            Err(KeyError::Exposed { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            JobKey::load_file(&p).unwrap(),
            JobKey::from_bytes([0x0f; 32])
        );
    }
}
