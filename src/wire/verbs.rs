//! Bytes of the verbs transport: the messages of its TCP bootstrap connection
//! and the SENDs that carry a peer's stream. Sans-IO like the rest of `wire`:
//! no device, no socket, no clock; compiled with or without the `verbs`
//! feature. Every parser takes untrusted bytes and returns a validated value or
//! an error that names what is wrong ([`BootError`], [`StreamError`],
//! [`BadRdv`]); none can panic on any input. How the transport uses them (the
//! handshake's order, credits, rendezvous READs) is in
//! `transport::verbs::transport`'s docs.
//!
//! ## Bootstrap messages (little-endian)
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic, the `u32` [`BOOT_MAGIC`] (`0x5759_5643`, "WYVC" as a big-endian number) |
//! | 4..6 | kind ([`BootKind`]) |
//! | 6..8 | body length, at most [`BOOT_BODY_MAX`] |
//!
//! Bodies: `Challenge`, the acceptor's nonce ([`NONCE_LEN`] bytes); `Hello`,
//! a [`Hello`], the dialer's nonce and a MAC ([`BootHello`]); `Info`, an
//! [`Info`] ([`INFO_LEN`] bytes), followed when the sender drives several
//! rails by the other rails' queue pairs ([`InfoMsg`]); `Ready`, nothing. The MAC
//! of a `Hello` covers a label naming the direction, the acceptor's challenge,
//! the dialer's nonce, the `Hello` and the whole `Info` message that follows it
//! ([`BootHello::verify`]).
//!
//! ## Info (60 bytes)
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | queue pair number |
//! | 4..8 | first packet sequence number (24 bits; the top 8 are ignored) |
//! | 8..10 | LID |
//! | 10 | active MTU (`IBV_MTU_*`) |
//! | 11 | 1: a GID follows; 0: address by LID |
//! | 12..28 | GID |
//! | 28..36 | the pool's address in the sender's process |
//! | 36..44 | the block region's start (pool offset) |
//! | 44..52 | the block region's length |
//! | 52..56 | the pool's remote key |
//! | 56..60 | credits: receive buffers the peer may fill |
//!
//! ## Rails (after the Info, only when the sender has more than one)
//! | bytes | field |
//! | --- | --- |
//! | 60 | rails beyond the first, 1 ..= [`MAX_RAILS`] - 1 |
//! | 61..64 | zero |
//!
//! then per rail ([`RAIL_LEN`] bytes, [`RailAddr`]): 0..4 queue pair number,
//! 4..8 first PSN, 8..10 LID, 10 active MTU, 11 1: a GID follows, 12..28 GID,
//! 28..32 the pool's remote key on that rail's device. Rail 0 is the `Info`'s
//! own queue pair and rkey; the pool address, block region and credits are
//! the same on every rail.
//!
//! ## Stream SENDs (at most [`SEND_MAX`] bytes)
//! | bytes | field |
//! | --- | --- |
//! | 0 | magic [`SEND_MAGIC`] |
//! | 1 | reserved, zero |
//! | 2..4 | credits returned |
//! | 4..6 | rendezvous descriptors of the receiver fully fetched |
//! | 6..8 | reserved, zero |
//!
//! then items, each an 8-byte header (0: tag, 1..4: zero, 4..8: body length)
//! and its body: tag 1 (`DATA`) stream bytes; tag 2 (`RDV`) a rendezvous
//! descriptor ([`Rdv`], 24 bytes: pool offset `u64`, length `u64`, rkey
//! `u32`, 4 zero bytes).

use super::auth::{JobKey, MAC_LEN, NONCE_LEN};
use super::bytes::{Fields, FieldsMut};
use super::{Hello, WireError};

/// Magic of a bootstrap message, version 2 (challenge, MACs).
pub const BOOT_MAGIC: u32 = 0x5759_5643;
/// Magic of version 1 (no challenge, no MAC; wyvern before issue 13's verbs fix):
/// recognised only to say so.
pub const BOOT_MAGIC_V1: u32 = 0x5759_5642;
/// Bytes of a bootstrap message's header: magic, kind, body length.
pub const BOOT_HEADER: usize = 8;
/// Bytes of an [`Info`].
pub const INFO_LEN: usize = 60;
/// A `Hello` message's body: the [`Hello`], the dialer's nonce, the MAC.
pub const HELLO_MSG_BODY: usize = Hello::LEN + NONCE_LEN + MAC_LEN;
/// Rails (RDMA devices) an agent drives at most.
pub const MAX_RAILS: usize = 8;
/// Bytes of one extra rail's address in an `Info` message ([`RailAddr`]).
pub const RAIL_LEN: usize = 32;
/// The largest `Info` message body: the [`Info`] and [`MAX_RAILS`] - 1 rails.
pub const INFO_MSG_MAX: usize = INFO_LEN + 4 + (MAX_RAILS - 1) * RAIL_LEN;
/// The largest body of any bootstrap message (an `Info` message of
/// [`MAX_RAILS`] rails): a header announcing more is refused before its body
/// is read.
pub const BOOT_BODY_MAX: usize = if HELLO_MSG_BODY > INFO_MSG_MAX {
    HELLO_MSG_BODY
} else {
    INFO_MSG_MAX
};

/// Why bootstrap bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// The version 1 magic.
    #[error(
        "the peer speaks the verbs bootstrap of an older wyvern (version 1: \
         no challenge, no MAC); every agent of a job must run the same version"
    )]
    OldVersion,
    /// Not our magic.
    #[error("not a wyvern verbs bootstrap stream (magic {0:#x})")]
    Magic(u32),
    /// An unknown kind of message.
    #[error("unknown bootstrap message kind {0}")]
    Kind(u16),
    /// A header announcing a body longer than any message has.
    #[error("a bootstrap {kind:?} announcing {len} bytes (at most {BOOT_BODY_MAX})")]
    TooLong {
        /// The message's kind.
        kind: BootKind,
        /// The length it announced.
        len: usize,
    },
    /// A body of the wrong size for its kind.
    #[error("{what} of {got} bytes, not {want}")]
    Length {
        /// What it was ("a Hello", "an Info", "a challenge").
        what: &'static str,
        /// Its size.
        got: usize,
        /// The size that kind has.
        want: usize,
    },
    /// The `Hello` inside a `Hello` message does not parse.
    #[error("bad Hello ({0})")]
    Hello(#[source] WireError),
    /// An `Info` message naming a number of extra rails outside 1 ..=
    /// [`MAX_RAILS`] - 1 (or with its reserved bytes set).
    #[error("an Info naming {0} extra rails (1 to {max} allowed, reserved bytes zero)", max = MAX_RAILS - 1)]
    Rails(usize),
    /// An `Info` whose block region cannot be addressed.
    #[error(
        "an Info whose block region overflows the address space \
         (pool at {base:#x}, region {region_off:#x} + {region_len} bytes)"
    )]
    Region {
        /// The pool's address.
        base: u64,
        /// The region's start.
        region_off: u64,
        /// Its length.
        region_len: u64,
    },
}

/// Kinds of bootstrap message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum BootKind {
    /// Who the sender is, with its nonce and MAC ([`BootHello`]).
    Hello = 1,
    /// The sender's queue pair and pool ([`Info`]).
    Info = 2,
    /// The dialer's queue pair is connected: the link is up.
    Ready = 3,
    /// The acceptor's nonce, its first message on every connection.
    Challenge = 4,
}

impl BootKind {
    fn from_u16(v: u16) -> Result<BootKind, BootError> {
        Ok(match v {
            1 => BootKind::Hello,
            2 => BootKind::Info,
            3 => BootKind::Ready,
            4 => BootKind::Challenge,
            _ => return Err(BootError::Kind(v)),
        })
    }
}

/// A validated bootstrap message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootHeader {
    /// Kind.
    pub kind: BootKind,
    /// Body length (at most [`BOOT_BODY_MAX`]).
    pub body_len: usize,
}

impl BootHeader {
    /// The header of the message at the start of `buf`, once its
    /// [`BOOT_HEADER`] bytes are there (`Ok(None)` before): so that a reader
    /// refuses a message by its header before reading its body.
    pub fn peek(buf: &[u8]) -> Result<Option<BootHeader>, BootError> {
        let Some(f) = Fields::<BOOT_HEADER>::new(buf) else {
            return Ok(None);
        };
        match f.u32::<0>() {
            BOOT_MAGIC => {}
            BOOT_MAGIC_V1 => return Err(BootError::OldVersion),
            magic => return Err(BootError::Magic(magic)),
        }
        let kind = BootKind::from_u16(f.u16::<4>())?;
        let len = f.u16::<6>() as usize;
        if len > BOOT_BODY_MAX {
            return Err(BootError::TooLong { kind, len });
        }
        Ok(Some(BootHeader {
            kind,
            body_len: len,
        }))
    }
}

/// A whole bootstrap message, taken off the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootMsg {
    /// Kind.
    pub kind: BootKind,
    /// Body (at most [`BOOT_BODY_MAX`] bytes; its size is checked by the
    /// parser of its kind).
    pub body: Vec<u8>,
}

/// The next complete message in `buf`, removed from it; `Ok(None)` while it is
/// incomplete. An error means the stream is broken and must be closed.
pub fn take_boot_msg(buf: &mut Vec<u8>) -> Result<Option<BootMsg>, BootError> {
    let Some(h) = BootHeader::peek(buf)? else {
        return Ok(None);
    };
    let end = BOOT_HEADER + h.body_len;
    let Some(body) = buf.get(BOOT_HEADER..end) else {
        return Ok(None);
    };
    let body = body.to_vec();
    buf.drain(..end);
    Ok(Some(BootMsg { kind: h.kind, body }))
}

/// A bootstrap message as bytes.
///
/// # Panics
/// If `body` is longer than [`BOOT_BODY_MAX`] (no message is).
pub fn boot_msg(kind: BootKind, body: &[u8]) -> Vec<u8> {
    assert!(
        body.len() <= BOOT_BODY_MAX,
        "a bootstrap body of {} bytes",
        body.len()
    );
    let mut v = vec![0u8; BOOT_HEADER];
    let mut w = FieldsMut::<BOOT_HEADER>::new(&mut v).expect("sized above");
    w.put_u32::<0>(BOOT_MAGIC);
    w.put_u16::<4>(kind as u16);
    w.put_u16::<6>(body.len() as u16);
    v.extend_from_slice(body);
    v
}

/// The nonce in a `Challenge` message's body.
pub fn parse_challenge(body: &[u8]) -> Result<[u8; NONCE_LEN], BootError> {
    body.try_into().map_err(|_| BootError::Length {
        what: "a challenge",
        got: body.len(),
        want: NONCE_LEN,
    })
}

/// The address of a queue pair, as an [`Info`] carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QpAddr {
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number (24 bits).
    pub psn: u32,
    /// Local identifier (InfiniBand).
    pub lid: u16,
    /// GID (RoCE, or InfiniBand across subnets); `None`: address by LID alone.
    pub gid: Option<[u8; 16]>,
}

/// What a side tells the other about its queue pair and pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// The sender's queue pair.
    pub qp: QpAddr,
    /// Its active MTU (`IBV_MTU_*`).
    pub mtu: u8,
    /// The pool's address in the sender's process (READs name it).
    pub base: u64,
    /// The block region's start, as a pool offset: descriptors must fall inside
    /// the region.
    pub region_off: u64,
    /// The block region's length.
    pub region_len: u64,
    /// The pool's remote key.
    pub rkey: u32,
    /// Receive buffers the receiver may fill (its first credits).
    pub credits: u32,
}

impl Info {
    /// Encode.
    pub fn to_bytes(&self) -> [u8; INFO_LEN] {
        let mut b = [0u8; INFO_LEN];
        let mut w = FieldsMut::of(&mut b);
        put_path(&mut w, &self.qp, self.mtu);
        w.put_u64::<28>(self.base);
        w.put_u64::<36>(self.region_off);
        w.put_u64::<44>(self.region_len);
        w.put_u32::<52>(self.rkey);
        w.put_u32::<56>(self.credits);
        b
    }

    /// Parse and check an `Info` message's body: exactly [`INFO_LEN`] bytes,
    /// and a block region that can be addressed at all (pool address plus
    /// region end must not overflow: every READ's remote address is below it).
    pub fn parse(b: &[u8]) -> Result<Info, BootError> {
        let f = Fields::<INFO_LEN>::new(b)
            .filter(|_| b.len() == INFO_LEN)
            .ok_or(BootError::Length {
                what: "an Info",
                got: b.len(),
                want: INFO_LEN,
            })?;
        let (qp, mtu) = path(&f);
        let info = Info {
            qp,
            mtu,
            base: f.u64::<28>(),
            region_off: f.u64::<36>(),
            region_len: f.u64::<44>(),
            rkey: f.u32::<52>(),
            credits: f.u32::<56>(),
        };
        let end = info.region_off.checked_add(info.region_len);
        if end.and_then(|e| info.base.checked_add(e)).is_none() {
            return Err(BootError::Region {
                base: info.base,
                region_off: info.region_off,
                region_len: info.region_len,
            });
        }
        Ok(info)
    }
}

/// A path's queue pair and MTU, the first 28 bytes of an [`Info`] and of each
/// [`RailAddr`]: QPN, PSN, LID, MTU, whether a GID follows, the GID.
fn put_path<const N: usize>(w: &mut FieldsMut<'_, N>, qp: &QpAddr, mtu: u8) {
    w.put_u32::<0>(qp.qpn);
    w.put_u32::<4>(qp.psn);
    w.put_u16::<8>(qp.lid);
    w.put_u8::<10>(mtu);
    w.put_u8::<11>(qp.gid.is_some() as u8);
    w.put::<12, 16>(qp.gid.unwrap_or_default());
}

/// The path [`put_path`] wrote (the PSN is 24 bits: the rest is ignored).
fn path<const N: usize>(f: &Fields<'_, N>) -> (QpAddr, u8) {
    let qp = QpAddr {
        qpn: f.u32::<0>(),
        psn: f.u32::<4>() & 0xff_ffff,
        lid: f.u16::<8>(),
        gid: (f.u8::<11>() != 0).then(|| f.array::<12, 16>()),
    };
    (qp, f.u8::<10>())
}

/// Another rail's queue pair and the pool's remote key on that rail's device,
/// as an `Info` message carries it after the [`Info`] (rail 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RailAddr {
    /// The queue pair on this rail.
    pub qp: QpAddr,
    /// The rail's active MTU (`IBV_MTU_*`).
    pub mtu: u8,
    /// The pool's remote key on this rail's device.
    pub rkey: u32,
}

/// A whole `Info` message: the [`Info`] (rail 0) and the other rails, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoMsg {
    /// Rail 0, the pool and the credits.
    pub info: Info,
    /// Rails 1.. (at most [`MAX_RAILS`] - 1).
    pub rails: Vec<RailAddr>,
}

impl InfoMsg {
    /// The address of rail `r` (0: the `Info`'s own).
    pub fn rail(&self, r: usize) -> Option<RailAddr> {
        if r == 0 {
            Some(RailAddr {
                qp: self.info.qp,
                mtu: self.info.mtu,
                rkey: self.info.rkey,
            })
        } else {
            self.rails.get(r - 1).copied()
        }
    }

    /// How many rails it names.
    pub fn rail_count(&self) -> usize {
        1 + self.rails.len()
    }

    /// Encode: the `Info`, then (with more than one rail) the rails.
    ///
    /// # Panics
    /// With more than [`MAX_RAILS`] - 1 extra rails.
    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(
            self.rails.len() < MAX_RAILS,
            "{} extra rails",
            self.rails.len()
        );
        let mut v = self.info.to_bytes().to_vec();
        if self.rails.is_empty() {
            return v;
        }
        v.extend_from_slice(&[self.rails.len() as u8, 0, 0, 0]);
        for r in &self.rails {
            let mut b = [0u8; RAIL_LEN];
            let mut w = FieldsMut::of(&mut b);
            put_path(&mut w, &r.qp, r.mtu);
            w.put_u32::<28>(r.rkey);
            v.extend_from_slice(&b);
        }
        v
    }

    /// Parse and check an `Info` message's body: an [`Info`] ([`Info::parse`]'s
    /// checks), alone or followed by a rail count in 1 ..= [`MAX_RAILS`] - 1 and
    /// exactly that many rails.
    pub fn parse(b: &[u8]) -> Result<InfoMsg, BootError> {
        if b.len() == INFO_LEN {
            return Ok(InfoMsg {
                info: Info::parse(b)?,
                rails: Vec::new(),
            });
        }
        let bad = BootError::Length {
            what: "an Info with rails",
            got: b.len(),
            want: INFO_LEN,
        };
        if b.len() < INFO_LEN + 4 {
            return Err(bad);
        }
        let (head, ext) = b.split_at(INFO_LEN);
        let info = Info::parse(head)?;
        let k = ext[0] as usize;
        if k == 0 || k >= MAX_RAILS || ext[1..4] != [0, 0, 0] {
            return Err(BootError::Rails(k));
        }
        let want = INFO_LEN + 4 + k * RAIL_LEN;
        if b.len() != want {
            return Err(BootError::Length {
                what: "an Info with rails",
                got: b.len(),
                want,
            });
        }
        let rails = ext[4..]
            .chunks_exact(RAIL_LEN)
            .map(|c| {
                let f = Fields::<RAIL_LEN>::new(c).expect("chunks of RAIL_LEN");
                let (qp, mtu) = path(&f);
                RailAddr {
                    qp,
                    mtu,
                    rkey: f.u32::<28>(),
                }
            })
            .collect();
        Ok(InfoMsg { info, rails })
    }
}

/// The MAC a bootstrap `Hello` carries: under `label` (the direction), over the
/// acceptor's challenge, the dialer's nonce, the sender's `Hello` and its `Info` bytes.
fn boot_mac(
    key: &JobKey,
    label: &[u8],
    challenge: &[u8; NONCE_LEN],
    nonce: &[u8; NONCE_LEN],
    hello: &[u8; Hello::LEN],
    info: &[u8],
) -> [u8; MAC_LEN] {
    key.mac(label, &[challenge, nonce, hello, info])
}

/// A bootstrap `Hello` message: `hello`, the dialer's `nonce` and the MAC (zero
/// without a key) under `label` over them, the acceptor's `challenge` and the
/// `info` that follows it.
pub fn boot_hello(
    key: Option<&JobKey>,
    label: &[u8],
    challenge: &[u8; NONCE_LEN],
    nonce: &[u8; NONCE_LEN],
    hello: &Hello,
    info: &[u8],
) -> Vec<u8> {
    let h = hello.to_bytes();
    let mac = key.map_or([0; MAC_LEN], |k| {
        boot_mac(k, label, challenge, nonce, &h, info)
    });
    let mut body = [0u8; HELLO_MSG_BODY];
    let mut w = FieldsMut::of(&mut body);
    w.put::<0, { Hello::LEN }>(h);
    w.put::<{ Hello::LEN }, NONCE_LEN>(*nonce);
    w.put::<{ Hello::LEN + NONCE_LEN }, MAC_LEN>(mac);
    boot_msg(BootKind::Hello, &body)
}

/// A received bootstrap `Hello`, its MAC not yet checked (that needs the `Info`
/// that follows it).
#[derive(Clone, Copy, Debug)]
pub struct BootHello {
    /// The sender's `Hello`.
    pub hello: Hello,
    raw: [u8; Hello::LEN],
    /// The dialer's nonce (the acceptor echoes it).
    pub nonce: [u8; NONCE_LEN],
    mac: [u8; MAC_LEN],
}

impl BootHello {
    /// Parse a `Hello` message's body (exactly [`HELLO_MSG_BODY`] bytes).
    pub fn parse(body: &[u8]) -> Result<BootHello, BootError> {
        let f = Fields::<HELLO_MSG_BODY>::new(body)
            .filter(|_| body.len() == HELLO_MSG_BODY)
            .ok_or(BootError::Length {
                what: "a Hello",
                got: body.len(),
                want: HELLO_MSG_BODY,
            })?;
        let raw = f.array::<0, { Hello::LEN }>();
        Ok(BootHello {
            hello: Hello::parse(&raw).map_err(BootError::Hello)?,
            raw,
            nonce: f.array::<{ Hello::LEN }, NONCE_LEN>(),
            mac: f.array::<{ Hello::LEN + NONCE_LEN }, MAC_LEN>(),
        })
    }

    /// Whether it carries a MAC at all (a sender without a job key sends zeros).
    pub fn has_mac(&self) -> bool {
        self.mac != [0; MAC_LEN]
    }

    /// Whether its MAC is right for `label`, `challenge`, the dialer's `nonce` (for
    /// the acceptor's answer: the dialer's own, not the echo) and the `info` bytes
    /// that followed it; always true without a key.
    pub fn verify(
        &self,
        key: Option<&JobKey>,
        label: &[u8],
        challenge: &[u8; NONCE_LEN],
        nonce: &[u8; NONCE_LEN],
        info: &[u8],
    ) -> bool {
        key.is_none_or(|k| k.verify(label, &[challenge, nonce, &self.raw, info], &self.mac))
    }
}

// ------------------------------------------------------------------ stream SENDs

/// The largest stream SEND: every receive buffer is this large.
pub const SEND_MAX: usize = 16 * 1024;
/// First byte of every stream SEND.
pub const SEND_MAGIC: u8 = 0x57;
/// Bytes of a SEND's header.
pub const SEND_HEADER: usize = 8;
/// Bytes of an item's header.
pub const ITEM_HEADER: usize = 8;
/// Bytes of a rendezvous descriptor's body.
pub const RDV_BODY: usize = 24;
const T_DATA: u8 = 1;
const T_RDV: u8 = 2;

/// Why a SEND was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Shorter than a header, or another first byte.
    #[error("a SEND without the stream header")]
    Header,
    /// Fewer bytes left than an item header.
    #[error("a truncated item header")]
    ItemHeader,
    /// An item whose length runs past the SEND's end.
    #[error("an item longer than its SEND")]
    ItemLength,
    /// An unknown tag, or a descriptor of another size.
    #[error("an unknown item (tag {tag}, {len} bytes)")]
    Item {
        /// Its tag.
        tag: u8,
        /// Its body's length.
        len: u32,
    },
}

/// A rendezvous descriptor: `len` bytes of the sender's pool at offset `off`
/// for the receiver to READ under `rkey`. Parsed as is; [`Rdv::check`] says
/// whether the receiver may act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rdv {
    /// Pool offset.
    pub off: u64,
    /// Length.
    pub len: u64,
    /// The remote key it is to be read under.
    pub rkey: u32,
}

/// Why a peer's rendezvous descriptor is refused (see [`Rdv::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRdv {
    /// Zero bytes.
    #[error("an empty rendezvous descriptor")]
    Empty,
    /// Not the key the peer advertised for its pool.
    #[error("rkey {got:#x}, not the {advertised:#x} the peer advertised")]
    WrongKey {
        /// In the descriptor.
        got: u32,
        /// In the peer's Info.
        advertised: u32,
    },
    /// Offset plus length does not fit in 64 bits.
    #[error("offset {off:#x} + {len} bytes overflows")]
    Overflow {
        /// Pool offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// Not inside the block region the peer advertised.
    #[error(
        "{len} bytes at offset {off:#x} are outside the block region the peer advertised \
         ({region_off:#x} + {region_len} bytes)"
    )]
    Outside {
        /// Pool offset.
        off: u64,
        /// Length.
        len: u64,
        /// The advertised region's start.
        region_off: u64,
        /// Its length.
        region_len: u64,
    },
}

impl Rdv {
    /// The check every descriptor of a peer passes before any READ is built from
    /// it: a non-empty range, the peer's own rkey, and `[off, off + len)` inside the
    /// block region of its `Info` (`remote`), with no arithmetic overflow anywhere
    /// (the READs then address `remote.base + off ..`, which [`Info::parse`] keeps
    /// in range).
    pub fn check(&self, remote: &Info) -> Result<(), BadRdv> {
        let Rdv { off, len, rkey } = *self;
        if len == 0 {
            return Err(BadRdv::Empty);
        }
        if rkey != remote.rkey {
            return Err(BadRdv::WrongKey {
                got: rkey,
                advertised: remote.rkey,
            });
        }
        let end = off.checked_add(len).ok_or(BadRdv::Overflow { off, len })?;
        let outside = BadRdv::Outside {
            off,
            len,
            region_off: remote.region_off,
            region_len: remote.region_len,
        };
        let region_end = remote
            .region_off
            .checked_add(remote.region_len)
            .ok_or(outside)?;
        if off < remote.region_off || end > region_end {
            return Err(outside);
        }
        Ok(())
    }
}

/// An item of a SEND, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Stream bytes: this range of the SEND's bytes (never empty).
    Data(std::ops::Range<usize>),
    /// A rendezvous descriptor.
    Rdv(Rdv),
}

/// A validated stream SEND: its header and items. [`StreamMsg::parse`] walks
/// every item once, so [`StreamMsg::items`] cannot fail.
#[derive(Clone, Copy, Debug)]
pub struct StreamMsg<'a> {
    buf: &'a [u8],
    credits: u16,
    rdv_done: u16,
}

impl<'a> StreamMsg<'a> {
    /// Parse and check the SEND in `buf` (its received bytes).
    pub fn parse(buf: &'a [u8]) -> Result<StreamMsg<'a>, StreamError> {
        let f = Fields::<SEND_HEADER>::new(buf)
            .filter(|f| f.u8::<0>() == SEND_MAGIC)
            .ok_or(StreamError::Header)?;
        let mut at = SEND_HEADER;
        while at < buf.len() {
            let (tag, len) = item_header(&buf[at..]).ok_or(StreamError::ItemHeader)?;
            at += ITEM_HEADER;
            if buf.len() - at < len as usize {
                return Err(StreamError::ItemLength);
            }
            match tag {
                T_DATA => {}
                T_RDV if len as usize == RDV_BODY => {}
                _ => return Err(StreamError::Item { tag, len }),
            }
            at += len as usize;
        }
        Ok(StreamMsg {
            buf,
            credits: f.u16::<2>(),
            rdv_done: f.u16::<4>(),
        })
    }

    /// Credits the sender returns (receive buffers it posted again).
    pub fn credits(&self) -> u16 {
        self.credits
    }

    /// The receiver's descriptors the sender has fully fetched.
    pub fn rdv_done(&self) -> u16 {
        self.rdv_done
    }

    /// The items, in order (empty `DATA` items skipped).
    pub fn items(&self) -> Items<'a> {
        Items {
            buf: self.buf,
            at: SEND_HEADER,
        }
    }
}

/// Tag and body length of the item header at the start of `b`.
fn item_header(b: &[u8]) -> Option<(u8, u32)> {
    let f = Fields::<ITEM_HEADER>::new(b)?;
    Some((f.u8::<0>(), f.u32::<4>()))
}

/// Iterator returned by [`StreamMsg::items`].
#[derive(Clone, Debug)]
pub struct Items<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Iterator for Items<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            // Checked by `StreamMsg::parse`: every `None` below is the end.
            let (tag, len) = item_header(self.buf.get(self.at..)?)?;
            let start = self.at + ITEM_HEADER;
            let end = start.checked_add(len as usize)?;
            let body = self.buf.get(start..end)?;
            self.at = end;
            match tag {
                T_DATA if len == 0 => continue,
                T_DATA => return Some(Item::Data(start..end)),
                T_RDV => {
                    let f = Fields::<RDV_BODY>::new(body)?;
                    return Some(Item::Rdv(Rdv {
                        off: f.u64::<0>(),
                        len: f.u64::<8>(),
                        rkey: f.u32::<16>(),
                    }));
                }
                _ => return None,
            }
        }
    }
}

/// Writes one SEND into a buffer (a registered send slot).
#[derive(Debug)]
pub struct StreamWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    items: usize,
}

impl<'a> StreamWriter<'a> {
    /// Start a SEND in `buf` (its header zero: no credits, no descriptors done).
    ///
    /// # Panics
    /// If `buf` is shorter than [`SEND_HEADER`].
    pub fn new(buf: &'a mut [u8]) -> StreamWriter<'a> {
        let mut w = FieldsMut::<SEND_HEADER>::new(buf).expect("room for a SEND header");
        w.zero::<0, SEND_HEADER>();
        w.put_u8::<0>(SEND_MAGIC);
        StreamWriter {
            buf,
            len: SEND_HEADER,
            items: 0,
        }
    }

    /// Set the header's credits returned and descriptors done.
    pub fn set_header(&mut self, credits: u16, rdv_done: u16) {
        let mut w = FieldsMut::<SEND_HEADER>::new(self.buf).expect("checked by new");
        w.put_u16::<2>(credits);
        w.put_u16::<4>(rdv_done);
    }

    /// Bytes of the SEND so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Items written so far.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Whether no item was written.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Room for the bytes of one more `DATA` item.
    pub fn data_room(&self) -> usize {
        self.buf.len().saturating_sub(self.len + ITEM_HEADER)
    }

    /// Append a `DATA` item of `n` bytes and return them to fill.
    ///
    /// # Panics
    /// If the item does not fit (`n` more than [`StreamWriter::data_room`], or no
    /// room left for an item header).
    pub fn data(&mut self, n: usize) -> &mut [u8] {
        assert!(
            self.len + ITEM_HEADER + n <= self.buf.len(),
            "a DATA item of {n} bytes does not fit"
        );
        self.item(T_DATA, n)
    }

    /// Whether a rendezvous descriptor fits.
    pub fn rdv_fits(&self) -> bool {
        self.buf.len() - self.len >= ITEM_HEADER + RDV_BODY
    }

    /// Append a rendezvous descriptor.
    ///
    /// # Panics
    /// If it does not fit ([`StreamWriter::rdv_fits`]).
    pub fn rdv(&mut self, d: &Rdv) {
        assert!(self.rdv_fits(), "no room for a rendezvous descriptor");
        let b = self.item(T_RDV, RDV_BODY);
        let mut w = FieldsMut::<RDV_BODY>::new(b).expect("an item of RDV_BODY bytes");
        w.put_u64::<0>(d.off);
        w.put_u64::<8>(d.len);
        w.put_u32::<16>(d.rkey);
        w.zero::<20, 4>();
    }

    fn item(&mut self, tag: u8, len: usize) -> &mut [u8] {
        let at = self.len;
        let mut w = FieldsMut::<ITEM_HEADER>::new(&mut self.buf[at..]).expect("checked room");
        w.put_u8::<0>(tag);
        w.zero::<1, 3>();
        w.put_u32::<4>(len as u32);
        self.len += ITEM_HEADER + len;
        self.items += 1;
        &mut self.buf[at + ITEM_HEADER..at + ITEM_HEADER + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::auth::label::{VERBS_BOOT_ACCEPTOR as ACC, VERBS_BOOT_DIALER as DIAL};
    use proptest::prelude::*;

    fn info(base: u64, region_off: u64, region_len: u64, rkey: u32) -> Info {
        Info {
            qp: QpAddr {
                qpn: 1,
                psn: 0,
                lid: 0,
                gid: None,
            },
            mtu: 5,
            base,
            region_off,
            region_len,
            rkey,
            credits: 32,
        }
    }

    fn full_info() -> Info {
        Info {
            qp: QpAddr {
                qpn: 0x0102_0304,
                psn: 0xabcdef,
                lid: 0x0506,
                gid: Some([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 0, 1]),
            },
            mtu: 3,
            base: 0x7f00_0000_0000,
            region_off: 4096,
            region_len: 1 << 20,
            rkey: 0x1234,
            credits: 32,
        }
    }

    fn rails(k: usize) -> Vec<RailAddr> {
        (0..k)
            .map(|i| RailAddr {
                qp: QpAddr {
                    qpn: 100 + i as u32,
                    psn: 0x10_0000 + i as u32,
                    lid: i as u16,
                    gid: (i % 2 == 0).then_some([i as u8 + 1; 16]),
                },
                mtu: 5,
                rkey: 0xaa00 + i as u32,
            })
            .collect()
    }

    /// An Info message of one rail is the plain 60-byte Info (what a one-rail
    /// agent always sent); with more, the rails follow in order and round-trip,
    /// rail 0 being the Info's own queue pair and rkey.
    #[test]
    fn info_messages_with_rails_round_trip() {
        let one = InfoMsg {
            info: full_info(),
            rails: vec![],
        };
        assert_eq!(one.to_bytes(), full_info().to_bytes().to_vec());
        assert_eq!(InfoMsg::parse(&one.to_bytes()), Ok(one.clone()));
        assert_eq!(one.rail_count(), 1);
        assert_eq!(one.rail(0).unwrap().rkey, 0x1234);
        assert_eq!(one.rail(1), None);
        for k in 1..MAX_RAILS {
            let m = InfoMsg {
                info: full_info(),
                rails: rails(k),
            };
            let b = m.to_bytes();
            assert_eq!(b.len(), INFO_LEN + 4 + k * RAIL_LEN);
            assert!(b.len() <= INFO_MSG_MAX && INFO_MSG_MAX <= BOOT_BODY_MAX);
            assert_eq!(InfoMsg::parse(&b), Ok(m.clone()));
            assert_eq!(m.rail_count(), k + 1);
            assert_eq!(m.rail(k).unwrap().qp.qpn, 100 + k as u32 - 1);
            // The whole message travels in one bootstrap message.
            let mut buf = boot_msg(BootKind::Info, &b);
            assert_eq!(take_boot_msg(&mut buf).unwrap().unwrap().body, b);
        }
    }

    /// Rails beyond the Info are refused unless their count is 1..MAX_RAILS-1,
    /// the reserved bytes are zero and exactly that many follow.
    #[test]
    fn info_messages_with_bad_rails_are_refused() {
        let m = InfoMsg {
            info: full_info(),
            rails: rails(2),
        };
        let b = m.to_bytes();
        for n in 0..b.len() + RAIL_LEN {
            let mut v = b.clone();
            v.resize(n, 0);
            let r = InfoMsg::parse(&v);
            if n == b.len() || n == INFO_LEN {
                assert!(r.is_ok(), "{n}: {r:?}");
            } else {
                assert!(r.is_err(), "{n} bytes parsed: {r:?}");
            }
        }
        let mut zero = b.clone();
        zero[INFO_LEN] = 0;
        assert_eq!(InfoMsg::parse(&zero), Err(BootError::Rails(0)));
        let mut many = b.clone();
        many[INFO_LEN] = MAX_RAILS as u8;
        assert_eq!(InfoMsg::parse(&many), Err(BootError::Rails(MAX_RAILS)));
        let mut reserved = b.clone();
        reserved[INFO_LEN + 2] = 1;
        assert_eq!(InfoMsg::parse(&reserved), Err(BootError::Rails(2)));
        // The rails' bytes are under the Hello's MAC like the Info's.
        let (key, h, c, nonce, _) = boot_parts();
        let bh = received(&boot_hello(Some(&key), DIAL, &c, &nonce, &h, &b));
        assert!(bh.verify(Some(&key), DIAL, &c, &nonce, &b));
        let mut changed = b.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(!bh.verify(Some(&key), DIAL, &c, &nonce, &changed));
    }

    #[test]
    fn info_round_trips_and_every_length_but_its_own_is_refused() {
        let i = full_info();
        let b = i.to_bytes();
        assert_eq!(Info::parse(&b), Ok(i));
        let no_gid = Info {
            qp: QpAddr { gid: None, ..i.qp },
            ..i
        };
        assert_eq!(Info::parse(&no_gid.to_bytes()), Ok(no_gid));
        for n in 0..INFO_LEN + 8 {
            let mut v = b.to_vec();
            v.resize(n, 0);
            let r = Info::parse(&v);
            if n == INFO_LEN {
                assert!(r.is_ok());
            } else {
                assert_eq!(
                    r,
                    Err(BootError::Length {
                        what: "an Info",
                        got: n,
                        want: INFO_LEN
                    })
                );
            }
        }
        let e = Info::parse(&b[..10]).unwrap_err().to_string();
        assert_eq!(e, "an Info of 10 bytes, not 60");
    }

    /// Each field sits at the offset the table in the module docs gives, and
    /// writing the whole Info leaves no byte of a poisoned buffer unwritten.
    #[test]
    fn info_fields_sit_where_the_table_says() {
        let b = full_info().to_bytes();
        assert_eq!(&b[0..4], &0x0102_0304u32.to_le_bytes());
        assert_eq!(&b[4..8], &0xabcdefu32.to_le_bytes());
        assert_eq!(&b[8..10], &0x0506u16.to_le_bytes());
        assert_eq!((b[10], b[11]), (3, 1));
        assert_eq!(&b[12..28], &full_info().qp.gid.unwrap());
        assert_eq!(&b[28..36], &0x7f00_0000_0000u64.to_le_bytes());
        assert_eq!(&b[36..44], &4096u64.to_le_bytes());
        assert_eq!(&b[44..52], &(1u64 << 20).to_le_bytes());
        assert_eq!(&b[52..56], &0x1234u32.to_le_bytes());
        assert_eq!(&b[56..60], &32u32.to_le_bytes());
        // The PSN is 24 bits: the top byte is ignored on parse.
        let mut c = b;
        c[7] = 0xff;
        assert_eq!(Info::parse(&c).unwrap().qp.psn, 0xabcdef);
        // A GID flag of 0 hides whatever the GID bytes hold.
        c[11] = 0;
        assert_eq!(Info::parse(&c).unwrap().qp.gid, None);
    }

    #[test]
    fn an_info_whose_region_overflows_is_refused() {
        assert!(matches!(
            Info::parse(&info(0, u64::MAX - 10, 100, 1).to_bytes()),
            Err(BootError::Region { .. })
        ));
        assert!(matches!(
            Info::parse(&info(u64::MAX - 4096, 0, 8192, 1).to_bytes()),
            Err(BootError::Region { .. })
        ));
        // The last addressable byte is fine.
        let edge = info(u64::MAX - 8192, 0, 8192, 1);
        assert_eq!(Info::parse(&edge.to_bytes()), Ok(edge));
        let e = Info::parse(&info(u64::MAX, 1, 1, 1).to_bytes()).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    #[test]
    fn stream_messages_round_trip() {
        let mut buf = vec![0xeeu8; 256];
        let mut w = StreamWriter::new(&mut buf);
        w.set_header(5, 2);
        w.data(3).copy_from_slice(b"abc");
        w.data(0);
        let d = Rdv {
            off: 4096,
            len: 70_000,
            rkey: 9,
        };
        w.rdv(&d);
        assert_eq!(w.items(), 3);
        let len = w.len();
        assert_eq!(
            len,
            SEND_HEADER + ITEM_HEADER + 3 + ITEM_HEADER + ITEM_HEADER + RDV_BODY
        );
        let m = StreamMsg::parse(&buf[..len]).unwrap();
        assert_eq!((m.credits(), m.rdv_done()), (5, 2));
        let items: Vec<Item> = m.items().collect();
        let data = SEND_HEADER + ITEM_HEADER;
        // The empty DATA item is skipped.
        assert_eq!(items, vec![Item::Data(data..data + 3), Item::Rdv(d)]);
        assert_eq!(&buf[data..data + 3], b"abc");
        // A header alone is a valid SEND (credits only).
        let mut h = [0u8; SEND_HEADER];
        let mut w = StreamWriter::new(&mut h);
        w.set_header(1, 0);
        assert!(w.is_empty());
        let m = StreamMsg::parse(&h).unwrap();
        assert_eq!((m.credits(), m.rdv_done(), m.items().count()), (1, 0, 0));
    }

    /// The header's fields and the reserved bytes, on a poisoned buffer.
    #[test]
    fn stream_fields_sit_where_the_table_says() {
        let mut buf = [0xa5u8; 64];
        let mut w = StreamWriter::new(&mut buf);
        w.set_header(0x0102, 0x0304);
        w.rdv(&Rdv {
            off: 0x1111,
            len: 0x2222,
            rkey: 0x3333,
        });
        let len = w.len();
        assert_eq!(&buf[..8], &[SEND_MAGIC, 0, 2, 1, 4, 3, 0, 0]);
        assert_eq!(&buf[8..16], &[T_RDV, 0, 0, 0, RDV_BODY as u8, 0, 0, 0]);
        assert_eq!(&buf[16..24], &0x1111u64.to_le_bytes());
        assert_eq!(&buf[24..32], &0x2222u64.to_le_bytes());
        assert_eq!(&buf[32..40], &[0x33, 0x33, 0, 0, 0, 0, 0, 0]);
        assert_eq!(len, 40);
        assert_eq!(&buf[40..], &[0xa5; 24], "past the SEND: untouched");
    }

    #[test]
    fn bad_stream_messages_are_refused_with_their_reason() {
        let mut buf = vec![0u8; 256];
        let mut w = StreamWriter::new(&mut buf);
        w.data(5).copy_from_slice(b"hello");
        w.rdv(&Rdv {
            off: 1,
            len: 2,
            rkey: 3,
        });
        let len = w.len();
        let good = buf[..len].to_vec();
        // Every truncation: refused or a shorter valid SEND, never a panic.
        for n in 0..len {
            let r = StreamMsg::parse(&good[..n]);
            match n {
                0..SEND_HEADER => assert_eq!(r.unwrap_err(), StreamError::Header),
                SEND_HEADER => assert!(r.is_ok()),
                _ if n < SEND_HEADER + ITEM_HEADER => {
                    assert_eq!(r.unwrap_err(), StreamError::ItemHeader)
                }
                _ if n < SEND_HEADER + ITEM_HEADER + 5 => {
                    assert_eq!(r.unwrap_err(), StreamError::ItemLength)
                }
                _ if n == SEND_HEADER + ITEM_HEADER + 5 => assert!(r.is_ok()),
                _ => assert!(r.is_err(), "{n}"),
            }
        }
        // Another magic.
        let mut bad = good.clone();
        bad[0] = 0x58;
        assert_eq!(StreamMsg::parse(&bad).unwrap_err(), StreamError::Header);
        // An unknown tag; a descriptor of another size.
        let mut bad = good.clone();
        bad[SEND_HEADER] = 99;
        assert_eq!(
            StreamMsg::parse(&bad).unwrap_err(),
            StreamError::Item { tag: 99, len: 5 }
        );
        let mut bad = good[..SEND_HEADER + ITEM_HEADER + 5].to_vec();
        bad.extend_from_slice(&[T_RDV, 0, 0, 0, 23, 0, 0, 0]);
        bad.extend_from_slice(&[0; 23]);
        let e = StreamMsg::parse(&bad).unwrap_err();
        assert_eq!(
            e,
            StreamError::Item {
                tag: T_RDV,
                len: 23
            }
        );
        assert_eq!(e.to_string(), "an unknown item (tag 2, 23 bytes)");
        // An item announcing more than the SEND holds (up to u32::MAX).
        for announced in [6u32, 1 << 20, u32::MAX] {
            let mut bad = good[..SEND_HEADER + ITEM_HEADER + 5].to_vec();
            bad[SEND_HEADER + 4..SEND_HEADER + 8].copy_from_slice(&announced.to_le_bytes());
            assert_eq!(StreamMsg::parse(&bad).unwrap_err(), StreamError::ItemLength);
        }
    }

    #[test]
    fn an_empty_descriptor_parses_and_is_left_to_the_check() {
        let mut buf = vec![0xeeu8; 64];
        let mut w = StreamWriter::new(&mut buf);
        let d = Rdv {
            off: 4096,
            len: 0,
            rkey: 9,
        };
        w.rdv(&d);
        let len = w.len();
        let m = StreamMsg::parse(&buf[..len]).unwrap();
        assert_eq!(m.items().collect::<Vec<_>>(), vec![Item::Rdv(d)]);
        assert_eq!(d.check(&info(0, 0, 1 << 20, 9)), Err(BadRdv::Empty));
    }

    #[test]
    fn a_full_writer_refuses_more() {
        let mut buf = [0u8; SEND_HEADER + ITEM_HEADER + RDV_BODY];
        let mut w = StreamWriter::new(&mut buf);
        assert!(w.rdv_fits());
        assert_eq!(w.data_room(), RDV_BODY);
        w.rdv(&Rdv {
            off: 0,
            len: 1,
            rkey: 0,
        });
        assert!(!w.rdv_fits());
        assert_eq!(w.data_room(), 0);
        assert_eq!(w.len(), buf.len());
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_data_item_without_room_for_its_header_is_a_bug_of_the_caller() {
        let mut buf = [0u8; SEND_HEADER + ITEM_HEADER - 1];
        let mut w = StreamWriter::new(&mut buf);
        assert_eq!(w.data_room(), 0);
        w.data(0);
    }

    fn check(rm: &Info, off: u64, len: u64, rkey: u32) -> Result<(), BadRdv> {
        Rdv { off, len, rkey }.check(rm)
    }

    #[test]
    fn rendezvous_descriptors_outside_the_advertised_region_are_refused() {
        let rm = info(0x7f00_0000_0000, 1 << 20, 96 << 20, 0x1234);
        let (lo, hi) = (1u64 << 20, (1u64 << 20) + (96 << 20));
        // Inside: the whole region, its first and last byte, a chunk in the middle.
        for (off, len) in [(lo, hi - lo), (lo, 1), (hi - 1, 1), (lo + 4096, 256 << 10)] {
            assert_eq!(check(&rm, off, len, 0x1234), Ok(()), "{off:#x}+{len}");
        }
        assert_eq!(check(&rm, lo, 0, 0x1234), Err(BadRdv::Empty));
        assert_eq!(
            check(&rm, lo, 4096, 0x1235),
            Err(BadRdv::WrongKey {
                got: 0x1235,
                advertised: 0x1234
            })
        );
        // Overflowing offset + length, whatever the key and region say.
        for (off, len) in [(u64::MAX, 1), (u64::MAX - 10, 64 << 10), (lo, u64::MAX)] {
            assert_eq!(
                check(&rm, off, len, 0x1234),
                Err(BadRdv::Overflow { off, len }),
                "{off:#x}+{len}"
            );
        }
        // Before the region (the pool's header and rings), straddling either end,
        // past it, longer than it.
        for (off, len) in [
            (0, 64 << 10),
            (lo - 1, 2),
            (hi - 1, 2),
            (hi, 1),
            (hi + (1 << 30), 64 << 10),
            (lo, hi - lo + 1),
            (lo, 1 << 62),
        ] {
            assert!(
                matches!(check(&rm, off, len, 0x1234), Err(BadRdv::Outside { .. })),
                "{off:#x}+{len} accepted"
            );
        }
        // A peer whose advertised region itself overflows accepts nothing near the end
        // (and its Info is refused at the handshake anyway).
        let wild = info(0, u64::MAX - 10, 100, 1);
        assert!(check(&wild, u64::MAX - 10, 5, 1).is_err());
        // The error names the numbers.
        let e = check(&rm, 0, 65536, 0x1234).unwrap_err().to_string();
        assert!(e.contains("0x100000") && e.contains("65536"), "{e}");
    }

    #[test]
    fn boot_messages_split_anywhere() {
        let mut all = boot_msg(BootKind::Hello, &[1, 2, 3]);
        all.extend(boot_msg(BootKind::Ready, &[]));
        let want = vec![
            BootMsg {
                kind: BootKind::Hello,
                body: vec![1, 2, 3],
            },
            BootMsg {
                kind: BootKind::Ready,
                body: vec![],
            },
        ];
        for cut in 0..all.len() {
            let mut b = all[..cut].to_vec();
            let mut got = Vec::new();
            while let Ok(Some(m)) = take_boot_msg(&mut b) {
                got.push(m);
            }
            b.extend_from_slice(&all[cut..]);
            while let Ok(Some(m)) = take_boot_msg(&mut b) {
                got.push(m);
            }
            assert_eq!(got, want);
            assert!(b.is_empty());
        }
        let mut junk = vec![0u8; 16];
        assert_eq!(take_boot_msg(&mut junk), Err(BootError::Magic(0)));
    }

    #[test]
    fn boot_headers_are_checked_before_any_body() {
        // A header announcing more than the largest legit body: refused on its 8
        // bytes alone, before its body would be read.
        let mut big = boot_msg(BootKind::Hello, &[0u8; BOOT_BODY_MAX]);
        big[6..8].copy_from_slice(&(BOOT_BODY_MAX as u16 + 1).to_le_bytes());
        let mut big = big[..BOOT_HEADER].to_vec();
        let e = BootHeader::peek(&big).unwrap_err();
        assert!(e.to_string().contains("announcing"), "{e}");
        assert_eq!(
            e,
            BootError::TooLong {
                kind: BootKind::Hello,
                len: BOOT_BODY_MAX + 1
            }
        );
        assert!(take_boot_msg(&mut big).is_err());
        let ok = boot_msg(BootKind::Hello, &[0u8; BOOT_BODY_MAX]);
        assert_eq!(
            BootHeader::peek(&ok[..BOOT_HEADER]),
            Ok(Some(BootHeader {
                kind: BootKind::Hello,
                body_len: BOOT_BODY_MAX
            }))
        );
        for n in 0..BOOT_HEADER {
            assert_eq!(BootHeader::peek(&ok[..n]), Ok(None));
        }
        // An older agent's stream (version 1 magic): a clear word, not a hang.
        let mut old = BOOT_MAGIC_V1.to_le_bytes().to_vec();
        old.extend_from_slice(&[1, 0, 32, 0]);
        let e = BootHeader::peek(&old).unwrap_err();
        assert!(e.to_string().contains("older wyvern"), "{e}");
        // Every kind round-trips; unknown kinds are named.
        for k in [
            BootKind::Hello,
            BootKind::Info,
            BootKind::Ready,
            BootKind::Challenge,
        ] {
            let m = boot_msg(k, &[]);
            assert_eq!(BootHeader::peek(&m).unwrap().unwrap().kind, k);
        }
        for k in [0u16, 5, u16::MAX] {
            let mut m = boot_msg(BootKind::Ready, &[]);
            m[4..6].copy_from_slice(&k.to_le_bytes());
            assert_eq!(BootHeader::peek(&m), Err(BootError::Kind(k)));
        }
        // Short or long Hellos and challenges do not parse.
        assert!(BootHello::parse(&[0u8; Hello::LEN]).is_err());
        assert!(BootHello::parse(&[0u8; HELLO_MSG_BODY + 1]).is_err());
        assert_eq!(parse_challenge(&[7; NONCE_LEN]), Ok([7; NONCE_LEN]));
        for n in [0, NONCE_LEN - 1, NONCE_LEN + 1] {
            let e = parse_challenge(&vec![0; n]).unwrap_err();
            assert_eq!(e.to_string(), format!("a challenge of {n} bytes, not 32"));
        }
    }

    fn boot_parts() -> (
        JobKey,
        Hello,
        [u8; NONCE_LEN],
        [u8; NONCE_LEN],
        [u8; INFO_LEN],
    ) {
        let h = Hello {
            node: 1,
            nodes: 3,
            incarnation: 77,
            job: 0xfeed,
            caps: 0,
            fabric: 0,
        };
        let info = info(0x7f00_0000_0000, 1 << 20, 96 << 20, 0x1234).to_bytes();
        (JobKey::from_bytes([5; 32]), h, [1; 32], [2; 32], info)
    }

    /// The Hello message as received: parsed from the stream.
    fn received(msg: &[u8]) -> BootHello {
        let mut b = msg.to_vec();
        let m = take_boot_msg(&mut b).unwrap().unwrap();
        assert_eq!(m.kind, BootKind::Hello);
        assert!(b.is_empty());
        BootHello::parse(&m.body).unwrap()
    }

    #[test]
    fn boot_hello_fields_sit_in_order() {
        let (key, h, challenge, nonce, info) = boot_parts();
        let m = boot_hello(Some(&key), DIAL, &challenge, &nonce, &h, &info);
        assert_eq!(m.len(), BOOT_HEADER + HELLO_MSG_BODY);
        let body = &m[BOOT_HEADER..];
        assert_eq!(&body[..Hello::LEN], &h.to_bytes());
        assert_eq!(&body[Hello::LEN..Hello::LEN + NONCE_LEN], &nonce);
        let bh = received(&m);
        assert!(bh.has_mac());
        // A Hello that does not parse as one (its node count and more cut off) is
        // named as such.
        assert!(matches!(
            BootHello::parse(&body[..HELLO_MSG_BODY - 1]),
            Err(BootError::Length {
                what: "a Hello",
                ..
            })
        ));
    }

    #[test]
    fn boot_hello_mac_verifies_and_covers_every_info_byte() {
        let (key, h, challenge, nonce, info) = boot_parts();
        let k = Some(&key);
        let bh = received(&boot_hello(k, DIAL, &challenge, &nonce, &h, &info));
        assert_eq!(bh.hello, h);
        assert_eq!(bh.nonce, nonce);
        assert!(bh.verify(k, DIAL, &challenge, &nonce, &info));
        // Any changed Info byte (the rkey, the addresses, the QP number...) fails.
        for i in 0..INFO_LEN {
            let mut bad = info;
            bad[i] ^= 0x01;
            assert!(
                !bh.verify(k, DIAL, &challenge, &nonce, &bad),
                "Info byte {i} is not covered"
            );
        }
        assert!(!bh.verify(k, DIAL, &challenge, &nonce, &info[..INFO_LEN - 1]));
        // The other direction's label, another nonce, another key: refused.
        assert!(!bh.verify(k, ACC, &challenge, &nonce, &info));
        assert!(!bh.verify(k, DIAL, &challenge, &[3; 32], &info));
        let other = JobKey::from_bytes([6; 32]);
        assert!(!bh.verify(Some(&other), DIAL, &challenge, &nonce, &info));
        // A changed Hello byte in the message fails too.
        let mut msg = boot_hello(k, DIAL, &challenge, &nonce, &h, &info);
        msg[BOOT_HEADER + 12] ^= 0x80; // the incarnation
        assert!(!received(&msg).verify(k, DIAL, &challenge, &nonce, &info));
        // Without a key: zero MAC, nothing checked; an unkeyed Hello fails a keyed check.
        let plain = received(&boot_hello(None, DIAL, &challenge, &nonce, &h, &info));
        assert!(!plain.has_mac());
        assert!(plain.verify(None, DIAL, &[9; 32], &nonce, &info));
        assert!(!plain.verify(k, DIAL, &challenge, &nonce, &info));
    }

    #[test]
    fn a_replayed_boot_hello_fails_under_another_challenge() {
        let (key, h, challenge, nonce, info) = boot_parts();
        let k = Some(&key);
        // Recorded on one connection, replayed on the next: that one's challenge is
        // new, so the recorded MAC does not fit it.
        let recorded = boot_hello(k, DIAL, &challenge, &nonce, &h, &info);
        let next_challenge = crate::wire::auth::random_bytes::<NONCE_LEN>();
        let bh = received(&recorded);
        assert!(bh.verify(k, DIAL, &challenge, &nonce, &info));
        assert!(!bh.verify(k, DIAL, &next_challenge, &bh.nonce, &info));
        // Nor can the acceptor's answer from one handshake pass for another's.
        let a = received(&boot_hello(k, ACC, &challenge, &nonce, &h, &info));
        assert!(a.verify(k, ACC, &challenge, &nonce, &info));
        assert!(!a.verify(k, ACC, &challenge, &[4; 32], &info));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = BootHeader::peek(&b);
            let _ = Info::parse(&b);
            let _ = BootHello::parse(&b);
            let _ = parse_challenge(&b);
            let mut v = b.clone();
            while let Ok(Some(_)) = take_boot_msg(&mut v) {}
            if let Ok(m) = StreamMsg::parse(&b) {
                for it in m.items() {
                    if let Item::Data(r) = it {
                        prop_assert!(!r.is_empty() && r.end <= b.len());
                    }
                }
            }
        }

        /// Garbage behind a valid SEND header: refused or parsed, and what parses
        /// yields items inside the SEND only.
        #[test]
        fn stream_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400),
                                       tags in proptest::collection::vec(0u8..4, 0..8)) {
            let mut v = vec![SEND_MAGIC, 0, 1, 0, 2, 0, 0, 0];
            for (i, t) in tags.iter().enumerate() {
                let len = b.get(i).copied().unwrap_or(0) as u32 % 40;
                v.extend_from_slice(&[*t, 0, 0, 0]);
                v.extend_from_slice(&len.to_le_bytes());
                v.extend(std::iter::repeat_n(0x5a, len as usize));
            }
            v.extend_from_slice(&b[..b.len().min(16)]);
            if let Ok(m) = StreamMsg::parse(&v) {
                prop_assert_eq!((m.credits(), m.rdv_done()), (1, 2));
                for it in m.items() {
                    if let Item::Data(r) = it {
                        prop_assert!(r.end <= v.len());
                    }
                }
            }
        }

        #[test]
        fn infos_round_trip(qpn in any::<u32>(), psn in 0u32..1 << 24, lid in any::<u16>(),
                            gid in proptest::option::of(any::<[u8; 16]>()), mtu in any::<u8>(),
                            base in 0u64..1 << 62, region_off in 0u64..1 << 61,
                            region_len in 0u64..1 << 61, rkey in any::<u32>(), credits in any::<u32>()) {
            let i = Info { qp: QpAddr { qpn, psn, lid, gid }, mtu, base, region_off, region_len, rkey, credits };
            prop_assert_eq!(Info::parse(&i.to_bytes()), Ok(i));
        }

        #[test]
        fn sends_round_trip(parts in proptest::collection::vec(
                                proptest::option::of((any::<u64>(), any::<u64>(), any::<u32>())), 0..6),
                            data in proptest::collection::vec(any::<u8>(), 1..300),
                            credits in any::<u16>(), done in any::<u16>()) {
            let mut buf = vec![0xa5u8; SEND_MAX];
            let mut w = StreamWriter::new(&mut buf);
            w.set_header(credits, done);
            let mut want = Vec::new();
            for p in &parts {
                match p {
                    Some((off, len, rkey)) => {
                        let d = Rdv { off: *off, len: *len, rkey: *rkey };
                        w.rdv(&d);
                        want.push(Err(d));
                    }
                    None => {
                        w.data(data.len()).copy_from_slice(&data);
                        want.push(Ok(data.clone()));
                    }
                }
            }
            let len = w.len();
            let m = StreamMsg::parse(&buf[..len]).unwrap();
            prop_assert_eq!((m.credits(), m.rdv_done()), (credits, done));
            let got: Vec<Result<Vec<u8>, Rdv>> = m.items().map(|it| match it {
                Item::Data(r) => Ok(buf[r].to_vec()),
                Item::Rdv(d) => Err(d),
            }).collect();
            prop_assert_eq!(got, want);
        }
    }
}
