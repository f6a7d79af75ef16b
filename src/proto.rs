//! Records exchanged between a client and its agent through the pool's rings,
//! and the messages of the control socket.
//!
//! Ring records are fixed little-endian headers followed by inline payload.
//! Decoders take untrusted bytes (a client may write anything into its
//! submission ring) and never panic.

use serde::{Deserialize, Serialize};

use crate::wire::bytes::{Fields, FieldsMut};

/// Bytes of a submission header.
pub const SUB_HEADER: usize = 40;
/// Bytes of a completion record.
pub const COMP_LEN: usize = 32;
/// Bytes of a delivery header (receive ring).
pub const RECV_HEADER: usize = 32;

/// Cookie of a completion that reports a lost node to a client that sent
/// it buffered messages (its `off` field carries the node id): messages
/// sent since the last such report may be lost with the node.
pub const LOSS_COOKIE: u64 = u64::MAX;

/// Status codes carried by completions and `Nack` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// No endpoint with that id on the destination node.
    UnknownEndpoint = 1,
    /// The destination node is lost (its agent died or stopped answering).
    PeerLost = 2,
    /// The destination node is not in the node list.
    UnknownNode = 3,
    /// The request was malformed (bad offsets, lengths, op).
    BadRequest = 4,
    /// The pool has no block of the size asked for right now.
    NoMemory = 5,
    /// The message exceeds a limit.
    TooLarge = 6,
    /// The destination endpoint was closed before the message was deposited.
    EndpointClosed = 7,
}

impl Status {
    /// Decode a status from the wire; unknown values become `BadRequest`.
    pub fn from_u16(v: u16) -> Status {
        match v {
            0 => Status::Ok,
            1 => Status::UnknownEndpoint,
            2 => Status::PeerLost,
            3 => Status::UnknownNode,
            5 => Status::NoMemory,
            6 => Status::TooLarge,
            7 => Status::EndpointClosed,
            _ => Status::BadRequest,
        }
    }

    /// Human words.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::UnknownEndpoint => "unknown endpoint on the destination node",
            Status::PeerLost => "destination node lost",
            Status::UnknownNode => "destination node not in the node list",
            Status::BadRequest => "malformed request",
            Status::NoMemory => "pool has no free block of that size",
            Status::TooLarge => "message too large",
            Status::EndpointClosed => "destination endpoint closed",
        }
    }
}

/// Operation codes of submission records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Send an inline payload.
    Send = 1,
    /// Send the payload held in a block (ownership passes to the agent).
    SendBlock = 2,
    /// Allocate a block of `len` bytes.
    Alloc = 3,
    /// Return a block (a received large message, or an unused allocation).
    Free = 4,
}

/// Send mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Complete once the message is in the ring.
    Buffered,
    /// Complete once the remote agent deposited it in the endpoint's ring.
    Delivered,
}

/// A decoded submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submit {
    /// What to do.
    pub op: Op,
    /// For sends.
    pub mode: Mode,
    /// The client's endpoint slot that sends.
    pub src_slot: u32,
    /// Destination node.
    pub dst_node: u32,
    /// Destination endpoint id.
    pub dst_ep: u32,
    /// Echoed in the completion.
    pub cookie: u64,
    /// Block offset (`SendBlock`, `Free`).
    pub off: u64,
    /// Length: of the inline payload, the block message, or the allocation.
    pub len: u64,
}

impl Submit {
    /// Encode the header.
    pub fn to_bytes(&self) -> [u8; SUB_HEADER] {
        let mut b = [0u8; SUB_HEADER];
        let mut w = FieldsMut::of(&mut b);
        w.put_u8::<0>(self.op as u8);
        w.put_u8::<1>(matches!(self.mode, Mode::Delivered) as u8);
        w.put_u32::<4>(self.src_slot);
        w.put_u32::<8>(self.dst_node);
        w.put_u32::<12>(self.dst_ep);
        w.put_u64::<16>(self.cookie);
        w.put_u64::<24>(self.off);
        w.put_u64::<32>(self.len);
        b
    }

    /// Decode a record copied out of a submission ring: the header and, for
    /// `Send`, the inline payload that must be exactly `len` bytes.
    pub fn parse(rec: &[u8]) -> Result<(Submit, &[u8]), &'static str> {
        let Some(f) = Fields::<SUB_HEADER>::new(rec) else {
            return Err("record shorter than a submission header");
        };
        let op = match f.u8::<0>() {
            1 => Op::Send,
            2 => Op::SendBlock,
            3 => Op::Alloc,
            4 => Op::Free,
            _ => return Err("unknown op"),
        };
        let mode = match f.u8::<1>() {
            0 => Mode::Buffered,
            1 => Mode::Delivered,
            _ => return Err("unknown send mode"),
        };
        let s = Submit {
            op,
            mode,
            src_slot: f.u32::<4>(),
            dst_node: f.u32::<8>(),
            dst_ep: f.u32::<12>(),
            cookie: f.u64::<16>(),
            off: f.u64::<24>(),
            len: f.u64::<32>(),
        };
        let payload = &rec[SUB_HEADER..];
        match op {
            Op::Send if payload.len() as u64 != s.len => {
                Err("inline length disagrees with the record")
            }
            Op::Send => Ok((s, payload)),
            _ if !payload.is_empty() => Err("unexpected payload"),
            _ => Ok((s, &[])),
        }
    }
}

/// Kinds of completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CompKind {
    /// A send finished (delivered mode), or failed (either mode); see status.
    Send = 1,
    /// An allocation: `off`/`len` on success.
    Alloc = 2,
    /// The agent refused a request as malformed; `cookie` may be garbage.
    Refused = 3,
}

/// A completion record (agent to client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Kind.
    pub kind: CompKind,
    /// Outcome.
    pub status: Status,
    /// The submission's cookie.
    pub cookie: u64,
    /// Block offset (alloc).
    pub off: u64,
    /// Length (alloc).
    pub len: u64,
}

impl Completion {
    /// The completion of a send (no block range).
    pub fn send(status: Status, cookie: u64) -> Completion {
        Completion {
            kind: CompKind::Send,
            status,
            cookie,
            off: 0,
            len: 0,
        }
    }

    /// Encode.
    pub fn to_bytes(&self) -> [u8; COMP_LEN] {
        let mut b = [0u8; COMP_LEN];
        let mut w = FieldsMut::of(&mut b);
        w.put_u8::<0>(self.kind as u8);
        w.put_u16::<2>(self.status as u16);
        w.put_u64::<8>(self.cookie);
        w.put_u64::<16>(self.off);
        w.put_u64::<24>(self.len);
        b
    }

    /// Decode.
    pub fn parse(b: &[u8]) -> Option<Completion> {
        if b.len() != COMP_LEN {
            return None;
        }
        let f = Fields::<COMP_LEN>::new(b)?;
        let kind = match f.u8::<0>() {
            1 => CompKind::Send,
            2 => CompKind::Alloc,
            3 => CompKind::Refused,
            _ => return None,
        };
        Some(Completion {
            kind,
            status: Status::from_u16(f.u16::<2>()),
            cookie: f.u64::<8>(),
            off: f.u64::<16>(),
            len: f.u64::<24>(),
        })
    }
}

/// A delivery header (agent to client, receive ring); inline payload follows
/// when `off == u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Sending node.
    pub src_node: u32,
    /// Sending endpoint.
    pub src_ep: u32,
    /// Length of the message.
    pub len: u64,
    /// Block offset holding the payload, or `INLINE`.
    pub off: u64,
}

impl Delivery {
    /// `off` value of an inline delivery.
    pub const INLINE: u64 = u64::MAX;

    /// Encode.
    pub fn to_bytes(&self) -> [u8; RECV_HEADER] {
        let mut b = [0u8; RECV_HEADER];
        let mut w = FieldsMut::of(&mut b);
        w.put_u32::<0>(self.src_node);
        w.put_u32::<4>(self.src_ep);
        w.put_u64::<8>(self.len);
        w.put_u64::<16>(self.off);
        b
    }

    /// Decode.
    pub fn parse(b: &[u8]) -> Option<(Delivery, &[u8])> {
        let f = Fields::<RECV_HEADER>::new(b)?;
        let d = Delivery {
            src_node: f.u32::<0>(),
            src_ep: f.u32::<4>(),
            len: f.u64::<8>(),
            off: f.u64::<16>(),
        };
        let payload = &b[RECV_HEADER..];
        if d.off == Self::INLINE && payload.len() as u64 != d.len {
            return None;
        }
        Some((d, payload))
    }
}

/// Requests on the control socket (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "req", rename_all = "snake_case")]
pub enum CtlRequest {
    /// Attach. No descriptor travels with it (any sent is ignored): the
    /// agent makes the client's bell itself (layout version 2).
    Attach {
        /// Layout version the client speaks.
        version: u32,
        /// Process id, for the stats.
        pid: u32,
        /// A name for the stats.
        name: String,
    },
    /// Open an endpoint (id `None`: the agent picks one).
    OpenEndpoint {
        /// Wanted id.
        id: Option<u32>,
    },
    /// Close an endpoint.
    CloseEndpoint {
        /// Endpoint id.
        id: u32,
    },
    /// Leave.
    Detach,
    /// Statistics (no attach needed).
    Stat,
    /// Break the connection to a peer node (no attach needed), as a network
    /// fault would: the session then resumes over a new connection. For
    /// operators and fault-injection tests.
    BreakLink {
        /// The peer.
        node: u32,
        /// Keep the link down this long (ms; 0: let it come back at once).
        /// An outage drill: udp and dpdk links only.
        #[serde(default)]
        hold_ms: u64,
    },
    /// Make the links to peers now rather than on their first message
    /// (on-demand links; no attach needed): to `node`, or to every peer.
    Connect {
        /// The peer; `None`: all of them.
        node: Option<u32>,
    },
    /// The job-wide view (no attach needed): the agent asks every peer over
    /// its link for a summary and replies once all answered or after
    /// `timeout_ms` (clamped to 50 ms .. 20 s) with [`CtlReply::JobStat`].
    JobStat {
        /// How long to wait for answers, ms.
        timeout_ms: u64,
    },
}

/// Replies on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "rep", rename_all = "snake_case")]
pub enum CtlReply {
    /// Attached. Two descriptors travel with it (SCM_RIGHTS): the pool's
    /// memfd, then the client's end of its bell, a datagram socket pair
    /// the agent made for this client alone (a byte sent rings the agent; a
    /// byte arriving wakes the client). The pool's geometry comes with the
    /// reply, not from the pool's header, which every client may write.
    Attached {
        /// Client slot in the pool.
        slot: u32,
        /// This node's id.
        node: u32,
        /// Nodes in the job.
        nodes: u32,
        /// Largest inline payload.
        eager_max: u64,
        /// The pool's geometry.
        pool: crate::shm::PoolParams,
        /// What backs the pool.
        backing: crate::shm::Backing,
    },
    /// An endpoint is open.
    Endpoint {
        /// Its id.
        id: u32,
        /// Its receive ring slot.
        slot: u32,
    },
    /// Done.
    Ok,
    /// Statistics.
    Stat(Box<crate::agent::stats::Snapshot>),
    /// The job-wide view.
    JobStat(Box<crate::agent::jobview::JobView>),
    /// Refused.
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn submit_round_trip() {
        let s = Submit {
            op: Op::Send,
            mode: Mode::Delivered,
            src_slot: 2,
            dst_node: 1,
            dst_ep: 77,
            cookie: 42,
            off: 0,
            len: 3,
        };
        let mut rec = s.to_bytes().to_vec();
        rec.extend_from_slice(b"abc");
        let (d, p) = Submit::parse(&rec).unwrap();
        assert_eq!(d, s);
        assert_eq!(p, b"abc");
        rec.push(0);
        assert!(
            Submit::parse(&rec).is_err(),
            "length mismatch must be refused"
        );
    }

    #[test]
    fn completion_and_delivery_round_trip() {
        let c = Completion {
            kind: CompKind::Alloc,
            status: Status::NoMemory,
            cookie: 9,
            off: 4096,
            len: 10,
        };
        assert_eq!(Completion::parse(&c.to_bytes()), Some(c));
        let d = Delivery {
            src_node: 1,
            src_ep: 2,
            len: 2,
            off: Delivery::INLINE,
        };
        let mut rec = d.to_bytes().to_vec();
        rec.extend_from_slice(b"hi");
        assert_eq!(Delivery::parse(&rec), Some((d, &b"hi"[..])));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Submit::parse(&b);
            let _ = Completion::parse(&b);
            let _ = Delivery::parse(&b);
        }
    }
}
