//! What a peer the agent talks to holds beside its state and session
//! ([`PeerLink`], made on first write), and the table of every node's
//! [`Peer`] that knows which were ever written ([`Peers`]).

use std::collections::VecDeque;
use std::time::Instant;

use super::{AckTable, Deposit, IdleWatch, LargeSend, Peer, PeerState, RxLarge};
use crate::agent::stats::PeerCounters;
use crate::transport::SteerTicket;
use crate::wire::{FrameBuilder, RecordHeader};

/// What a peer the agent talks to holds beside its session (see [`Peer`]).
pub(in crate::agent) struct PeerLink {
    pub(in crate::agent) batch: FrameBuilder,
    pub(in crate::agent) batch_since: Option<Instant>,
    pub(in crate::agent) large: VecDeque<LargeSend>,
    pub(in crate::agent) acks: AckTable,
    /// How far the frame at the head of the link was handled.
    pub(in crate::agent) rx_pos: usize,
    /// Large messages being reassembled, oldest first: more than one only
    /// while chunks are steered ahead (verbs reads several at once).
    pub(in crate::agent) rx_large: VecDeque<RxLarge>,
    pub(in crate::agent) rx_deposit: Option<Deposit>,
    /// Frames wait for a full ring: we are not reading, so the peer's
    /// silence proves nothing.
    pub(in crate::agent) rx_stalled: bool,
    /// Chunks whose payload the transport is reading into their blocks, in
    /// stream order (handled in that order once landed), each with its
    /// steer's ticket ([`crate::transport::LinkRx::steer_state`]).
    pub(in crate::agent) rx_steered: VecDeque<(RecordHeader, SteerTicket)>,
    /// Since when the link took none of what is queued for it.
    pub(in crate::agent) tx_stuck_since: Option<Instant>,
    pub(in crate::agent) counters: PeerCounters,
    /// Whether its up link is idle ([`Peer::idle_tick`]).
    pub(in crate::agent) idle: IdleWatch,
}

impl PeerLink {
    fn new(me: u32, frame_bytes: usize) -> PeerLink {
        PeerLink {
            batch: FrameBuilder::new(me, frame_bytes),
            batch_since: None,
            large: VecDeque::new(),
            acks: AckTable::default(),
            rx_pos: 0,
            rx_large: VecDeque::new(),
            rx_deposit: None,
            rx_stalled: false,
            rx_steered: VecDeque::new(),
            tx_stuck_since: None,
            counters: PeerCounters::default(),
            idle: IdleWatch::new(0, Instant::now()),
        }
    }
}

/// Every node's [`Peer`], and which of them were ever written (made to
/// connect, linked, sent to): the walks of a poll round (flushing,
/// receiving, timers) go over those only, so an agent of a 4,096-node job
/// that talks to a few peers checks a few per round, not 4,096. A peer can
/// only leave idle by being written (`peers[j]` for writing), which puts it
/// on the list; it stays there (a peer back to idle is checked for nothing
/// and costs a look).
pub(in crate::agent) struct Peers {
    v: Vec<Peer>,
    /// The peers written, in the order they were first written.
    touched: Vec<u32>,
    /// One bit per peer: on `touched`.
    seen: Vec<u64>,
}

impl Peers {
    /// The peers, those not idle (connecting from the start: every link
    /// wanted) already on the list.
    pub(in crate::agent) fn new(v: Vec<Peer>) -> Peers {
        let mut p = Peers {
            seen: vec![0; v.len().div_ceil(64)],
            v,
            touched: Vec::new(),
        };
        for j in 0..p.v.len() {
            if !matches!(p.v[j].state, PeerState::Idle | PeerState::Local) {
                let _ = &mut p[j];
            }
        }
        p
    }

    /// How many peers were written since start.
    pub(in crate::agent) fn touched(&self) -> usize {
        self.touched.len()
    }

    /// The `k`th peer written (an index into the peers).
    pub(in crate::agent) fn touched_at(&self, k: usize) -> usize {
        self.touched[k] as usize
    }

    /// The peers written since start (every one that is not idle among them).
    pub(in crate::agent) fn active(&self) -> impl Iterator<Item = &Peer> {
        self.touched.iter().map(|&j| &self.v[j as usize])
    }
}

impl std::ops::Deref for Peers {
    type Target = [Peer];
    fn deref(&self) -> &[Peer] {
        &self.v
    }
}

impl std::ops::Index<usize> for Peers {
    type Output = Peer;
    fn index(&self, j: usize) -> &Peer {
        &self.v[j]
    }
}

impl std::ops::IndexMut<usize> for Peers {
    fn index_mut(&mut self, j: usize) -> &mut Peer {
        let (w, b) = (j / 64, 1u64 << (j % 64));
        if self.seen[w] & b == 0 {
            self.seen[w] |= b;
            self.touched.push(j as u32);
        }
        &mut self.v[j]
    }
}

impl<'a> IntoIterator for &'a Peers {
    type Item = &'a Peer;
    type IntoIter = std::slice::Iter<'a, Peer>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.iter()
    }
}

/// What a peer without link state reads: nothing queued, nothing counted.
static NO_LINK: std::sync::LazyLock<PeerLink> = std::sync::LazyLock::new(|| PeerLink::new(0, 0));

// Inlined: the send and receive paths reach a peer's link state through
// these several times per message (out of line, `deref_mut` alone was 2 %
// of a small-message exchange's samples); making the state stays out of line.
impl std::ops::Deref for Peer {
    type Target = PeerLink;
    #[inline]
    fn deref(&self) -> &PeerLink {
        self.link.as_deref().unwrap_or(&NO_LINK)
    }
}

impl std::ops::DerefMut for Peer {
    #[inline]
    fn deref_mut(&mut self) -> &mut PeerLink {
        if self.link.is_none() {
            self.make_link();
        }
        // NOTE(unwrap): made just above when it was missing.
        self.link.as_deref_mut().expect("link state made above")
    }
}

impl Peer {
    #[cold]
    #[inline(never)]
    fn make_link(&mut self) {
        self.link = Some(Box::new(PeerLink::new(self.me, self.frame_bytes as usize)));
    }
}
