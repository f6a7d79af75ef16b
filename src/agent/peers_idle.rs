//! The peers room's idle links (on-demand links, `link_idle_ms`): when an
//! up link counts as idle, and what closing it leaves (see
//! `links.rs` for the idle `Bye` both ends exchange).

use std::time::{Duration, Instant};

use super::{Peer, PeerState};

/// The watch over an up link's idleness (on-demand links, `link_idle_ms`).
#[derive(Clone, Copy, Debug)]
pub(in crate::agent) struct IdleWatch {
    /// `Data` frames both ways when last looked at, and since when that
    /// count stands (heartbeats and acks are not counted: they are not
    /// traffic, or a link would never become idle).
    frames: u64,
    since: Instant,
    /// When our idle `Bye` went out: the link closes when the peer's comes
    /// back (or the link breaks), or after the wait.
    pub(in crate::agent) bye_sent: Option<Instant>,
}

impl IdleWatch {
    pub(super) fn new(frames: u64, now: Instant) -> IdleWatch {
        IdleWatch {
            frames,
            since: now,
            bye_sent: None,
        }
    }
}

/// What an up link's idle watch says at a tick.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::agent) enum IdleStep {
    /// Nothing to do.
    Keep,
    /// Idle long enough: send our idle `Bye` (the watch took note).
    Bye,
    /// Our `Bye` went unanswered for the wait: close the link anyway.
    Close,
}

impl Peer {
    /// `Data` frames sent and received.
    pub(super) fn frames(&self) -> u64 {
        self.counters.frames_tx + self.counters.frames_rx
    }

    /// Whether nothing is in flight on this peer's session, either way:
    /// up, no frame being built, no large message being sent or received
    /// or waiting for ring room, nothing sent unacknowledged, nothing
    /// received unacknowledged. (Delivered sends waiting for the peer's
    /// reply do not count: the peer makes the link again to send it.)
    pub(in crate::agent) fn quiet(&self) -> bool {
        self.state == PeerState::Up
            && self.batch.is_empty()
            && self.large.is_empty()
            && self.rx_large.is_empty()
            && self.rx_deposit.is_none()
            && self.rx_steered.is_empty()
            && !self.rx_stalled
            && self.rx_pos == 0
            && self
                .session
                .as_ref()
                .is_some_and(|s| s.tx_bytes == 0 && s.rx_count == s.rx_acked)
    }

    /// Every tick: whether an up link has been idle `after` (no `Data`
    /// frame either way, [`Peer::quiet`], and `link_quiet`: nothing queued
    /// on the link or buffered unread), so that our idle `Bye` goes out;
    /// then whether the peer left it unanswered for `wait`. `after` zero:
    /// never idle.
    pub(in crate::agent) fn idle_tick(
        &mut self,
        after: Duration,
        wait: Duration,
        link_quiet: bool,
        now: Instant,
    ) -> IdleStep {
        let frames = self.frames();
        if after.is_zero() || self.state != PeerState::Up {
            self.idle = IdleWatch::new(frames, now);
            return IdleStep::Keep;
        }
        if frames != self.idle.frames {
            self.idle.frames = frames;
            self.idle.since = now;
        }
        if let Some(t) = self.idle.bye_sent {
            return if now.saturating_duration_since(t) >= wait {
                IdleStep::Close
            } else {
                IdleStep::Keep
            };
        }
        if link_quiet && self.quiet() && now.saturating_duration_since(self.idle.since) >= after {
            self.idle.bye_sent = Some(now);
            return IdleStep::Bye;
        }
        IdleStep::Keep
    }

    /// The link was closed for idleness (our `Bye` or the peer's): back to
    /// [`PeerState::Idle`], not a failure; the session is kept, so that
    /// whatever crossed the close (frames sent after a `Bye`, acks lost
    /// with the link) goes again on the next link and is handled once.
    /// Returns whether something waits for a link (then the caller wants
    /// one again at once).
    pub(in crate::agent) fn closed_idle(&mut self, now: Instant, freed: &mut Vec<u64>) -> bool {
        if !self.state.connected() {
            return false;
        }
        self.drop_steered(freed);
        self.rx_stalled = false;
        self.counters.idle_closes += 1;
        self.idle = IdleWatch::new(self.frames(), now);
        self.set_state(PeerState::Idle, now);
        // What a busy link grew and a closed one does not need.
        if let Some(s) = self.session.as_mut() {
            s.tx.shrink_to_fit();
        }
        self.acks.map.shrink_to_fit();
        self.large.shrink_to_fit();
        self.unacked_bytes() > 0
            || !self.large.is_empty()
            || !self.batch.is_empty()
            || !self.rx_large.is_empty()
            || self.rx_deposit.is_some()
            || self.rx_pos != 0
    }

    /// The state `wyvern stat` shows: `closed` for an idle peer whose link
    /// was closed for idleness (its session kept), else the state's name.
    pub(in crate::agent) fn state_name(&self) -> String {
        match self.state {
            PeerState::Idle if self.session.is_some() => "closed".into(),
            _ => self.state.name(),
        }
    }
}
