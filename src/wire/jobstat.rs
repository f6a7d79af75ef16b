//! The job-wide view's two frames (`wyvern stat --job`): an agent asks each
//! peer over their authenticated link ([`super::FrameKind::StatQuery`]) and each
//! answers with a summary of itself of fixed size ([`super::FrameKind::StatReply`]).
//! Neither is retained or resent: a query or an answer lost with its link
//! shows as "no answer" at the asking agent.
//!
//! ## `StatQuery` body (8 bytes, little-endian)
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | query id (the answer names it) |
//!
//! ## `StatReply` body ([`NodeSummary::LEN`] bytes, little-endian)
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | query id |
//! | 8..12 | node id (the frame's source) |
//! | 12..16 | nodes in the job |
//! | 16..24 | uptime, ms |
//! | 24..32 | poll rounds |
//! | 32..40 | CPU time of the agent process (user + system), ms |
//! | 40..44, 44..48, 48..52, 52..56, 56..60 | peers by link state: up, connecting or resuming, disconnected, lost, idle |
//! | 60..64 | attached clients |
//! | 64..72, 72..80 | messages, payload bytes sent to peers |
//! | 80..88, 88..96 | messages, payload bytes received from peers |
//! | 96..104 | messages delivered node-locally |
//! | 104..112 | failed sends (peer lost, unknown endpoint, refused) |
//! | 112..120 | links lost |
//! | 120..128 | malformed frames or records (each closed its link) |
//! | 128..136 | connections resumed |
//! | 136..144 | frames sent again on resumed connections |
//! | 144..152 | packets sent again by the transport (datagram transports; 0 on tcp) |
//! | 152..160 | times a peer's frames waited for a full ring or pool |
//! | 160..168 | messages parked (full rings, endpoints not open) |
//! | 168..172 | the slowest peer: most bytes queued or unacknowledged towards it ([`NO_NODE`]: none) |
//! | 172..176 | reserved, zero |
//! | 176..184 | that peer's backlog, bytes |

use super::bytes::{Fields, FieldsMut};
use super::WireError;

/// The body of a `StatQuery` frame.
pub const QUERY_LEN: usize = 8;

/// [`NodeSummary::slow_node`] when no peer has a backlog.
pub const NO_NODE: u32 = u32::MAX;

/// Parse a `StatQuery` body: the query id.
pub fn parse_query(b: &[u8]) -> Result<u64, WireError> {
    let f = Fields::<QUERY_LEN>::new(b)
        .filter(|_| b.len() == QUERY_LEN)
        .ok_or(WireError::Truncated("stat query"))?;
    Ok(f.u64::<0>())
}

/// One agent's summary of itself: the body of a `StatReply` frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeSummary {
    /// The query answered.
    #[serde(skip)]
    pub query: u64,
    /// The answering node.
    pub node: u32,
    /// Nodes in its job.
    pub nodes: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its poll rounds.
    pub rounds: u64,
    /// CPU time of its process (user + system), ms.
    pub cpu_ms: u64,
    /// Peers whose link is up.
    pub links_up: u32,
    /// Peers being connected or resumed.
    pub links_connecting: u32,
    /// Peers whose connection broke (the session waits for a new one).
    pub links_disconnected: u32,
    /// Peers declared lost.
    pub links_lost: u32,
    /// Peers never linked (on-demand links).
    pub links_idle: u32,
    /// Attached clients.
    pub clients: u32,
    /// Messages sent to peers.
    pub msgs_tx: u64,
    /// Payload bytes sent to peers.
    pub bytes_tx: u64,
    /// Messages received from peers.
    pub msgs_rx: u64,
    /// Payload bytes received from peers.
    pub bytes_rx: u64,
    /// Messages delivered node-locally.
    pub local_msgs: u64,
    /// Failed sends.
    pub errors: u64,
    /// Links lost.
    pub losses: u64,
    /// Malformed frames or records.
    pub malformed: u64,
    /// Connections resumed.
    pub resumes: u64,
    /// Frames sent again on resumed connections.
    pub frames_resent: u64,
    /// Packets the transport sent again (datagram transports).
    pub packets_resent: u64,
    /// Times a peer's frames began to wait for a full ring or pool.
    pub rx_stalls: u64,
    /// Messages parked now.
    pub parked_msgs: u64,
    /// The peer with the largest backlog ([`NO_NODE`]: none has any).
    pub slow_node: u32,
    /// Its backlog: bytes queued to it plus bytes sent and not yet
    /// acknowledged.
    pub slow_backlog: u64,
}

impl NodeSummary {
    /// Encoded size.
    pub const LEN: usize = 184;

    /// Parse a `StatReply` body (exactly [`NodeSummary::LEN`] bytes; the
    /// reserved field zero; the slowest peer [`NO_NODE`] or a node of the
    /// job it names).
    pub fn parse(b: &[u8]) -> Result<NodeSummary, WireError> {
        let f = Fields::<{ Self::LEN }>::new(b)
            .filter(|_| b.len() == Self::LEN)
            .ok_or(WireError::Truncated("stat reply"))?;
        if f.u32::<172>() != 0 {
            return Err(WireError::Record("stat reply: reserved field not zero"));
        }
        let s = NodeSummary {
            query: f.u64::<0>(),
            node: f.u32::<8>(),
            nodes: f.u32::<12>(),
            uptime_ms: f.u64::<16>(),
            rounds: f.u64::<24>(),
            cpu_ms: f.u64::<32>(),
            links_up: f.u32::<40>(),
            links_connecting: f.u32::<44>(),
            links_disconnected: f.u32::<48>(),
            links_lost: f.u32::<52>(),
            links_idle: f.u32::<56>(),
            clients: f.u32::<60>(),
            msgs_tx: f.u64::<64>(),
            bytes_tx: f.u64::<72>(),
            msgs_rx: f.u64::<80>(),
            bytes_rx: f.u64::<88>(),
            local_msgs: f.u64::<96>(),
            errors: f.u64::<104>(),
            losses: f.u64::<112>(),
            malformed: f.u64::<120>(),
            resumes: f.u64::<128>(),
            frames_resent: f.u64::<136>(),
            packets_resent: f.u64::<144>(),
            rx_stalls: f.u64::<152>(),
            parked_msgs: f.u64::<160>(),
            slow_node: f.u32::<168>(),
            slow_backlog: f.u64::<176>(),
        };
        if s.slow_node != NO_NODE && s.slow_node >= s.nodes {
            return Err(WireError::Record("stat reply: slowest peer not in the job"));
        }
        Ok(s)
    }

    /// Encode.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let mut w = FieldsMut::of(&mut b);
        w.put_u64::<0>(self.query);
        w.put_u32::<8>(self.node);
        w.put_u32::<12>(self.nodes);
        w.put_u64::<16>(self.uptime_ms);
        w.put_u64::<24>(self.rounds);
        w.put_u64::<32>(self.cpu_ms);
        w.put_u32::<40>(self.links_up);
        w.put_u32::<44>(self.links_connecting);
        w.put_u32::<48>(self.links_disconnected);
        w.put_u32::<52>(self.links_lost);
        w.put_u32::<56>(self.links_idle);
        w.put_u32::<60>(self.clients);
        w.put_u64::<64>(self.msgs_tx);
        w.put_u64::<72>(self.bytes_tx);
        w.put_u64::<80>(self.msgs_rx);
        w.put_u64::<88>(self.bytes_rx);
        w.put_u64::<96>(self.local_msgs);
        w.put_u64::<104>(self.errors);
        w.put_u64::<112>(self.losses);
        w.put_u64::<120>(self.malformed);
        w.put_u64::<128>(self.resumes);
        w.put_u64::<136>(self.frames_resent);
        w.put_u64::<144>(self.packets_resent);
        w.put_u64::<152>(self.rx_stalls);
        w.put_u64::<160>(self.parked_msgs);
        w.put_u32::<168>(self.slow_node);
        w.zero::<172, 4>();
        w.put_u64::<176>(self.slow_backlog);
        b
    }

    /// The counts that say something went wrong: failed sends, links lost,
    /// malformed frames. (Resends are not in it: a datagram transport resends
    /// a tail-loss probe on a clean link too.)
    pub fn trouble(&self) -> u64 {
        self.errors
            .saturating_add(self.losses)
            .saturating_add(self.malformed)
    }

    /// Its peers: linked or not (saturating: the counts are the peer's word).
    pub fn peers(&self) -> u32 {
        self.links_up
            .saturating_add(self.links_not_up())
            .saturating_add(self.links_idle)
    }

    /// Its peers being connected, disconnected or lost.
    pub fn links_not_up(&self) -> u32 {
        self.links_connecting
            .saturating_add(self.links_disconnected)
            .saturating_add(self.links_lost)
    }

    /// Frames and packets sent again.
    pub fn resent(&self) -> u64 {
        self.frames_resent.saturating_add(self.packets_resent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A summary whose every field differs from the others (so a field
    /// written at another's offset shows).
    fn sample() -> NodeSummary {
        NodeSummary {
            query: 0x0102_0304_0506_0708,
            node: 3,
            nodes: 9,
            uptime_ms: 11,
            rounds: 12,
            cpu_ms: 13,
            links_up: 14,
            links_connecting: 15,
            links_disconnected: 16,
            links_lost: 17,
            links_idle: 18,
            clients: 19,
            msgs_tx: 20,
            bytes_tx: 21,
            msgs_rx: 22,
            bytes_rx: 23,
            local_msgs: 24,
            errors: 25,
            losses: 26,
            malformed: 27,
            resumes: 28,
            frames_resent: 29,
            packets_resent: 30,
            rx_stalls: 31,
            parked_msgs: 32,
            slow_node: 7,
            slow_backlog: 33,
        }
    }

    #[test]
    fn every_field_round_trips_and_the_reserved_one_is_zero() {
        let s = sample();
        let b = s.to_bytes();
        assert_eq!(NodeSummary::parse(&b), Ok(s));
        assert_eq!(&b[172..176], &[0; 4]);
        // Written over a poisoned buffer: every byte but the reserved ones
        // comes from a field (each field's value is small and distinct).
        let mut seen = std::collections::BTreeSet::new();
        for at in (16..NodeSummary::LEN).step_by(4) {
            if at == 172 {
                continue;
            }
            let v = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            if v != 0 {
                assert!(seen.insert(v), "value {v} at {at} twice");
            }
        }
        assert_eq!(seen.len(), 24, "every field from uptime on is written");
    }

    #[test]
    fn bad_bodies_are_refused() {
        let b = sample().to_bytes();
        assert!(NodeSummary::parse(&b[..NodeSummary::LEN - 1]).is_err());
        let mut long = b.to_vec();
        long.push(0);
        assert!(NodeSummary::parse(&long).is_err());
        let mut r = b;
        r[173] = 1;
        assert!(NodeSummary::parse(&r).is_err());
        let mut s = sample();
        s.slow_node = s.nodes;
        assert!(NodeSummary::parse(&s.to_bytes()).is_err());
        s.slow_node = NO_NODE;
        assert!(NodeSummary::parse(&s.to_bytes()).is_ok());
        assert_eq!(parse_query(&7u64.to_le_bytes()), Ok(7));
        assert!(parse_query(&[0; 7]).is_err());
        assert!(parse_query(&[0; 9]).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_query(&bytes);
            if let Ok(s) = NodeSummary::parse(&bytes) {
                prop_assert_eq!(&s.to_bytes()[..], &bytes[..]);
            }
        }
    }
}
