//! The rate-based congestion model ([`super::Model::Rate`], BBR-style): the
//! sender estimates the path's bottleneck rate and round trip from what the
//! acks deliver, and sends at that rate, a window of about twice their
//! product in flight. A loss does not by itself cut anything: only a loss
//! rate clearly above the path's own (random) loss rate, or above
//! [`LOSS_MAX`], bounds what may be in flight. See "Congestion" in
//! docs/architecture.md for the design and its reasons.
//!
//! The ideas are BBR's (draft-cardwell-iccrg-bbr-congestion-control; the
//! delivery-rate samples of draft-cheng-iccrg-delivery-rate-estimation; BBRv2's
//! bound on what is in flight after loss); the code is ours, in packets
//! (not bytes) and kept simple:
//! - **delivery-rate samples**: every packet is stamped when sent with how
//!   much had been delivered then ([`Stamp`]); an ack gives a sample of
//!   packets delivered over the longer of the send and the ack interval of
//!   the newest packet it delivers (not shorter than the minimum round trip,
//!   so a burst of acks after a stall is not read as a fast path), and at
//!   most [`ROUND_RATE_SLACK`] times the last round's mean delivery rate;
//! - **bottleneck bandwidth**: the largest sample of the last [`BW_ROUNDS`]
//!   round trips (samples taken while the sender had nothing to send or was
//!   held by the receiver's credits count only if they raise it: a slow
//!   receiver or application does not lower the estimate);
//! - **minimum round trip** over [`MIN_RTT_WIN`]; when it has not been seen
//!   again for that long, a short probe with [`CWND_MIN`] packets in flight
//!   measures it afresh (BBR's ProbeRTT);
//! - **phases**: startup (pacing and window gain 2.885 until the estimate
//!   stops growing by a quarter for three rounds, or a round shows
//!   congestion), drain (gain 1/2.885 until what is in flight fits the
//!   estimated path), then cruising with a probe cycle (gains 1.25, 0.75,
//!   then 1 for six phases, a phase per minimum round trip);
//! - **window**: 2 × bandwidth × minimum round trip, plus the largest burst
//!   of acks above the estimated rate of the last [`BW_ROUNDS`] rounds
//!   (BBR's `extra_acked`: on a busy host, an agent descheduled for a
//!   millisecond acks a millisecond's worth at once, and the window must
//!   cover it or the sender idles after each such burst); at least
//!   [`CWND_MIN`];
//! - **pacing**: a token bucket at gain × bandwidth, allowing a burst of
//!   [`PACE_BURST_MIN`] packets or [`PACE_BURST_TIME`] at the rate;
//! - **loss**: losses are counted per epoch (at least one round and
//!   [`LOSS_EPOCH`] packets). An epoch is congested when its loss rate
//!   exceeds [`LOSS_MAX`], or exceeds the median of the last
//!   [`LOSS_HISTORY`] epochs' rates by [`LOSS_MARGIN`] plus three binomial
//!   standard deviations: random loss is there in every epoch, at the same
//!   rate whatever the sender does; a queue overflows only when the sender
//!   pushes more than the path holds, so its loss comes on top. A congested
//!   epoch bounds what may be in flight to [`HI_BETA`] of the window
//!   (BBRv2's `inflight_hi`), and the bound grows back by a 32nd per epoch
//!   while no epoch is congested. Resends the receiver reported as
//!   duplicates (D-SACK) are taken back off the count of the epoch that
//!   found them lost; when that epoch was judged congested and without
//!   them would not have been, its bound is lifted again (a reordering
//!   hop and a descheduled agent make bursts of such "losses", and the
//!   D-SACKs come back a round later, after the judgement).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The smallest window (packets).
pub(super) const CWND_MIN: u32 = 4;
/// Startup's pacing and window gain (2 / ln 2: doubles each round).
const STARTUP_GAIN: f64 = 2.885;
/// A delivery-rate sample counts at most this many times the last round's
/// mean rate (startup doubles it per round; probing adds a quarter).
const ROUND_RATE_SLACK: f64 = 2.0;
/// The window's gain over the estimated path outside startup.
const CWND_GAIN: f64 = 2.0;
/// The probe cycle's pacing gains, a phase per minimum round trip.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Rounds the bottleneck estimate (a windowed maximum) and the ack
/// aggregation estimate remember.
pub(super) const BW_ROUNDS: u64 = 10;
/// How long the minimum round trip stands without being seen again.
pub(super) const MIN_RTT_WIN: Duration = Duration::from_secs(10);
/// How long ProbeRTT holds [`CWND_MIN`] in flight (at least a round).
const PROBE_RTT_TIME: Duration = Duration::from_millis(2);
/// Startup ends when the estimate grew less than this in...
const FULL_BW_GROWTH: f64 = 1.25;
/// ...this many rounds in a row.
const FULL_BW_ROUNDS: u32 = 3;
/// Packets (delivered + lost) an epoch of loss counting spans at least.
pub(super) const LOSS_EPOCH: u64 = 64;
/// Epochs whose loss rates make the path's own loss rate (their median).
pub(super) const LOSS_HISTORY: usize = 8;
/// A loss rate above which an epoch is congested whatever the path's own.
pub(super) const LOSS_MAX: f64 = 0.3;
/// How far above the path's own loss rate an epoch's must be (on top of
/// three standard deviations) to be congested.
pub(super) const LOSS_MARGIN: f64 = 0.02;
/// A congested epoch bounds what is in flight to this share of the window.
const HI_BETA: f64 = 0.85;
/// The pacer's burst: at least this many packets...
const PACE_BURST_MIN: f64 = 16.0;
/// ...or this long at the pacing rate.
const PACE_BURST_TIME: Duration = Duration::from_micros(250);
/// The ack aggregation credit is at most this long at the estimated rate.
const EXTRA_MAX_TIME: Duration = Duration::from_millis(20);

/// What the model notes about a packet when it is (re)sent.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stamp {
    /// Packets delivered when it was sent...
    delivered: u64,
    /// ...and when the last of those was.
    delivered_time: Instant,
    /// When the first packet of the flight it went with was sent.
    first_sent: Instant,
    /// The sender had nothing more to send (or was held by the peer).
    app_limited: bool,
}

/// The model's phase.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Startup,
    Drain,
    /// Cruising, at phase `.0` of [`CYCLE`] since `.1`.
    ProbeBw(usize, Instant),
    /// Measuring the minimum round trip afresh, with [`CWND_MIN`] in flight:
    /// until this moment, once reached.
    ProbeRtt(Option<Instant>),
}

/// Rounds after its epoch began that a congestion judgement may still be
/// lifted: its resends' D-SACKs come back a round after them, often after
/// the next epoch was judged.
const CUT_ROUNDS: u64 = 4;

/// The last congestion judgement, while D-SACKs may yet prove its losses
/// needless.
#[derive(Debug)]
struct Cut {
    /// The epoch (its first round).
    epoch: u64,
    /// The in-flight bound before it.
    hi: Option<u32>,
    /// The epoch's losses and packets.
    lost: u64,
    n: u64,
    /// The loss history it was judged against.
    history: VecDeque<f64>,
}

/// An epoch's loss judgement, for the sender's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Judged {
    /// No loss in the epoch.
    Clean,
    /// Losses at the path's own rate: not congestion.
    Random,
    /// Congestion: the window bound was lowered.
    Congested,
}

/// The rate model's state (one per sender).
#[derive(Debug)]
pub(super) struct Rate {
    mode: Mode,
    /// Packets delivered so far...
    delivered: u64,
    /// ...when the last was...
    delivered_time: Instant,
    /// ...and the send time of the newest packet an ack delivered (the
    /// start of the current flight's send interval).
    first_sent: Instant,
    /// Samples stay application-limited until `delivered` passes this (0:
    /// not limited).
    app_limited_until: u64,
    /// Round trips counted (a round ends when a packet sent after its start
    /// is delivered).
    round: u64,
    next_round_delivered: u64,
    /// When the current round started, what was delivered then, whether a
    /// sample in it was application-limited...
    round_at: Instant,
    round_delivered: u64,
    round_app_limited: bool,
    /// ...and the last round's mean delivery rate (packets/s; infinite
    /// before the first).
    round_rate: f64,
    /// The newest packet delivered by the current ack: its stamp and send
    /// time (the rate sample's).
    rs: Option<(Stamp, Instant)>,
    /// Per round, the largest delivery-rate sample (packets/s), the last
    /// [`BW_ROUNDS`] rounds.
    bw_rounds: VecDeque<(u64, f64)>,
    /// Their maximum: the bottleneck estimate (packets/s; 0: none yet).
    bw: f64,
    min_rtt: Option<Duration>,
    min_rtt_at: Instant,
    /// The smallest round trip seen during ProbeRTT.
    probe_min: Option<Duration>,
    /// Startup's plateau detection.
    full_bw: f64,
    full_bw_rounds: u32,
    filled: bool,
    /// Ack aggregation: since when acks are counted against the rate...
    agg_start: Instant,
    /// ...and how many were acked since.
    agg_acked: u64,
    /// Per round, the largest excess of acked over the estimated rate.
    extra_rounds: VecDeque<(u64, u64)>,
    /// Loss epoch: delivered and lost so far, and its first round.
    ep_delivered: u64,
    ep_lost: u64,
    ep_round: u64,
    /// The last epochs' loss rates.
    history: VecDeque<f64>,
    /// The bound on what may be in flight after congestion (none: no bound).
    pub(super) hi: Option<u32>,
    /// The last congested epoch, for [`CUT_ROUNDS`] rounds or until the next.
    cut: Option<Cut>,
    /// The window (packets).
    cwnd: u32,
    /// The pacer: tokens (packets) as of `pace_at`.
    tokens: f64,
    pace_at: Instant,
    /// The most packets in flight at once.
    window: u32,
}

impl Rate {
    pub(super) fn new(cwnd_initial: u32, window: u32, now: Instant) -> Rate {
        Rate {
            mode: Mode::Startup,
            delivered: 0,
            delivered_time: now,
            first_sent: now,
            app_limited_until: 0,
            round: 0,
            next_round_delivered: 0,
            round_at: now,
            round_delivered: 0,
            round_app_limited: false,
            round_rate: f64::INFINITY,
            rs: None,
            bw_rounds: VecDeque::new(),
            bw: 0.0,
            min_rtt: None,
            min_rtt_at: now,
            probe_min: None,
            full_bw: 0.0,
            full_bw_rounds: 0,
            filled: false,
            agg_start: now,
            agg_acked: 0,
            extra_rounds: VecDeque::new(),
            ep_delivered: 0,
            ep_lost: 0,
            ep_round: 0,
            history: VecDeque::new(),
            hi: None,
            cut: None,
            cwnd: cwnd_initial.clamp(CWND_MIN.min(window.max(1)), window.max(1)),
            tokens: PACE_BURST_MIN,
            pace_at: now,
            window: window.max(1),
        }
    }

    /// The window (packets).
    pub(super) fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// The estimated bottleneck rate (packets/s; 0 before the first sample).
    #[cfg(test)]
    pub(super) fn bw(&self) -> f64 {
        self.bw
    }

    /// The minimum round trip, once measured.
    #[cfg(test)]
    pub(super) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// A one-line summary for traces.
    #[cfg(test)]
    pub(super) fn describe(&self) -> String {
        format!(
            "{:?} bw {:.0}/s min_rtt {:?} cwnd {} hi {:?} extra {:.0} round {} filled {} app {}",
            self.mode,
            self.bw,
            self.min_rtt,
            self.cwnd,
            self.hi,
            self.extra_acked(),
            self.round,
            self.filled,
            self.app_limited_until
        )
    }

    /// The estimated path's packets: bandwidth × minimum round trip.
    fn bdp(&self) -> f64 {
        match self.min_rtt {
            Some(m) if self.bw > 0.0 => self.bw * m.as_secs_f64(),
            _ => f64::from(self.cwnd),
        }
    }

    fn pacing_gain(&self) -> f64 {
        match self.mode {
            Mode::Startup => STARTUP_GAIN,
            Mode::Drain => 1.0 / STARTUP_GAIN,
            Mode::ProbeBw(i, _) => CYCLE[i],
            Mode::ProbeRtt(_) => 1.0,
        }
    }

    /// The pacing rate (packets/s), once the bandwidth is estimated.
    pub(super) fn pacing_rate(&self) -> Option<f64> {
        (self.bw > 0.0).then(|| self.bw * self.pacing_gain())
    }

    fn burst(rate: f64) -> f64 {
        PACE_BURST_MIN.max(rate * PACE_BURST_TIME.as_secs_f64())
    }

    /// Tokens available at `now`.
    fn tokens_at(&self, now: Instant) -> f64 {
        match self.pacing_rate() {
            None => PACE_BURST_MIN,
            Some(rate) => {
                let dt = now.saturating_duration_since(self.pace_at).as_secs_f64();
                (self.tokens + rate * dt).min(Self::burst(rate))
            }
        }
    }

    /// Whether the pacer lets a packet go now.
    pub(super) fn pace_ok(&self, now: Instant) -> bool {
        self.tokens_at(now) >= 1.0
    }

    /// When the pacer lets the next packet go, if it holds it now.
    pub(super) fn pace_deadline(&self) -> Option<Instant> {
        let rate = self.pacing_rate()?;
        (self.tokens < 1.0)
            .then(|| self.pace_at + Duration::from_secs_f64(((1.0 - self.tokens) / rate).min(1.0)))
    }

    /// A packet is (re)sent now with `inflight` others outstanding: its stamp.
    pub(super) fn on_send(&mut self, now: Instant, inflight: usize) -> Stamp {
        if inflight == 0 {
            self.first_sent = now;
            self.delivered_time = now;
        }
        if self.pacing_rate().is_some() {
            // (A resend may go out without a token: the balance goes below 0.)
            self.tokens = self.tokens_at(now) - 1.0;
            self.pace_at = now;
        }
        Stamp {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent: self.first_sent,
            app_limited: self.app_limited_until != 0,
        }
    }

    /// The sender has nothing more to send, or is held by the receiver's
    /// credits, with `inflight` outstanding: samples until those are
    /// delivered say nothing about the path's rate (unless they raise it).
    pub(super) fn app_limited(&mut self, inflight: usize) {
        self.app_limited_until = (self.delivered + inflight as u64).max(1);
    }

    /// An ack delivered a packet with `stamp`, last sent at `sent`.
    pub(super) fn delivered_one(&mut self, stamp: &Stamp, sent: Instant, now: Instant) {
        self.delivered += 1;
        self.delivered_time = now;
        if self
            .rs
            .is_none_or(|(s, t)| (stamp.delivered, sent) > (s.delivered, t))
        {
            self.rs = Some((*stamp, sent));
        }
    }

    /// `n` packets found lost (by RACK: not timeouts, not probes).
    pub(super) fn on_lost(&mut self, n: usize) {
        self.ep_lost += n as u64;
    }

    /// The current loss epoch (its first round): a loss found now counts
    /// in it.
    pub(super) fn epoch(&self) -> u64 {
        self.ep_round
    }

    /// A loss found in `epoch` proved needless (D-SACK of its resend): off
    /// that epoch's count. Returns whether that lifted the epoch's
    /// congestion bound (it would not have been judged congested without).
    pub(super) fn on_spurious(&mut self, epoch: u64) -> bool {
        if epoch == self.ep_round {
            self.ep_lost = self.ep_lost.saturating_sub(1);
            return false;
        }
        let Some(c) = self.cut.as_mut().filter(|c| c.epoch == epoch) else {
            return false;
        };
        c.lost = c.lost.saturating_sub(1);
        if c.lost > 0 && congested(c.lost as f64, c.n as f64, &c.history) {
            return false;
        }
        let before = c.hi;
        self.cut = None;
        self.hi = match (self.hi, before) {
            (Some(now), Some(b)) => Some(now.max(b)),
            _ => None,
        };
        true
    }

    /// After an ack that delivered `newly` packets (through
    /// [`Rate::delivered_one`]): `inflight` now outstanding, `rtt` the ack's
    /// round-trip sample (Karn's rule applied); `seen`: the sender saw
    /// everything this ack delivered as it arrived (else it takes no rate
    /// sample). Returns the judgement of a loss epoch that ended with it.
    pub(super) fn on_ack(
        &mut self,
        now: Instant,
        newly: u32,
        inflight: usize,
        rtt: Option<Duration>,
        seen: bool,
    ) -> Option<Judged> {
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        self.update_min_rtt(now, rtt);
        let (stamp, sent) = self.rs.take()?;
        // Round counting.
        let round_start = stamp.delivered >= self.next_round_delivered;
        if round_start {
            self.next_round_delivered = self.delivered;
            self.round += 1;
            let dt = now.saturating_duration_since(self.round_at);
            let n = self.delivered - self.round_delivered;
            if n > 0 && !dt.is_zero() {
                let rate = n as f64 / dt.as_secs_f64();
                // (A round the sender was not limited by the path in
                // only raises it.)
                if !self.round_app_limited || rate > self.round_rate {
                    self.round_rate = rate;
                }
            }
            self.round_at = now;
            self.round_delivered = self.delivered;
            self.round_app_limited = false;
        }
        // The delivery-rate sample of the newest packet delivered...
        self.first_sent = sent;
        let send_elapsed = sent.saturating_duration_since(stamp.first_sent);
        let ack_elapsed = now.saturating_duration_since(stamp.delivered_time);
        let interval = send_elapsed.max(ack_elapsed);
        let n = self.delivered - stamp.delivered;
        self.round_app_limited |= stamp.app_limited;
        if seen && n > 0 && !interval.is_zero() && self.min_rtt.is_some_and(|m| interval >= m) {
            let rate = n as f64 / interval.as_secs_f64();
            // ...bounded by what the last whole round delivered on average:
            // acks held back and released together (a reordering hop, a
            // descheduled peer) make an interval look shorter than the time
            // the packets took, and the maximum filter keeps such a sample
            // for ten rounds (on the simulated reordering link, 2-6x the
            // link's rate).
            let rate = rate.min(self.round_rate * ROUND_RATE_SLACK);
            if !stamp.app_limited || rate >= self.bw {
                self.bw_sample(rate);
            }
        }
        self.update_aggregation(now, newly);
        self.ep_delivered += u64::from(newly);
        let mut judged = None;
        if round_start {
            self.check_full_bw(stamp.app_limited);
            judged = self.end_of_round();
        }
        self.update_mode(now, inflight);
        self.update_cwnd(newly);
        judged
    }

    fn update_min_rtt(&mut self, now: Instant, rtt: Option<Duration>) {
        // (A round trip under a microsecond is a clock artefact, not a path:
        // it would make the window the floor for ten seconds.)
        let Some(rtt) = rtt.filter(|r| *r >= Duration::from_micros(1)) else {
            return;
        };
        if let Mode::ProbeRtt(_) = self.mode {
            self.probe_min = Some(self.probe_min.map_or(rtt, |m| m.min(rtt)));
        }
        if self.min_rtt.is_none_or(|m| rtt <= m) {
            self.min_rtt = Some(rtt);
            self.min_rtt_at = now;
        }
    }

    fn bw_sample(&mut self, rate: f64) {
        match self.bw_rounds.back_mut() {
            Some((r, b)) if *r == self.round => *b = b.max(rate),
            _ => self.bw_rounds.push_back((self.round, rate)),
        }
        while self
            .bw_rounds
            .front()
            .is_some_and(|(r, _)| r + BW_ROUNDS <= self.round)
        {
            self.bw_rounds.pop_front();
        }
        self.bw = self.bw_rounds.iter().map(|&(_, b)| b).fold(0.0, f64::max);
    }

    /// BBR's `extra_acked`: how far acks ran ahead of the estimated rate.
    fn update_aggregation(&mut self, now: Instant, newly: u32) {
        if self.bw <= 0.0 || newly == 0 {
            return;
        }
        let elapsed = now.saturating_duration_since(self.agg_start).as_secs_f64();
        let expected = self.bw * elapsed;
        if self.agg_acked as f64 <= expected {
            self.agg_start = now;
            self.agg_acked = 0;
        }
        self.agg_acked += u64::from(newly);
        let expected = self.bw * now.saturating_duration_since(self.agg_start).as_secs_f64();
        let extra = (self.agg_acked as f64 - expected).max(0.0) as u64;
        let extra = extra.min(u64::from(self.cwnd));
        match self.extra_rounds.back_mut() {
            Some((r, e)) if *r == self.round => *e = (*e).max(extra),
            _ => self.extra_rounds.push_back((self.round, extra)),
        }
        while self
            .extra_rounds
            .front()
            .is_some_and(|(r, _)| r + BW_ROUNDS <= self.round)
        {
            self.extra_rounds.pop_front();
        }
    }

    /// The ack aggregation credit (packets).
    fn extra_acked(&self) -> f64 {
        let e = self.extra_rounds.iter().map(|&(_, e)| e).max().unwrap_or(0) as f64;
        e.min(self.bw * EXTRA_MAX_TIME.as_secs_f64())
    }

    fn check_full_bw(&mut self, app_limited: bool) {
        if self.filled || app_limited || self.bw <= 0.0 {
            return;
        }
        if self.bw >= self.full_bw * FULL_BW_GROWTH {
            self.full_bw = self.bw;
            self.full_bw_rounds = 0;
            return;
        }
        self.full_bw_rounds += 1;
        if self.full_bw_rounds >= FULL_BW_ROUNDS {
            self.filled = true;
        }
    }

    /// A round ended: judge the loss epoch if it is long enough, and let the
    /// in-flight bound grow back when it was not congested.
    fn end_of_round(&mut self) -> Option<Judged> {
        let n = self.ep_delivered + self.ep_lost;
        if n < LOSS_EPOCH || self.round <= self.ep_round {
            return None;
        }
        let lost = self.ep_lost as f64;
        let rate = lost / n as f64;
        let judged = if self.ep_lost == 0 {
            Judged::Clean
        } else if congested(lost, n as f64, &self.history) {
            Judged::Congested
        } else {
            Judged::Random
        };
        if judged == Judged::Congested {
            self.cut = Some(Cut {
                epoch: self.ep_round,
                hi: self.hi,
                lost: self.ep_lost,
                n,
                history: self.history.clone(),
            });
        } else if self
            .cut
            .as_ref()
            .is_some_and(|c| self.round > c.epoch + CUT_ROUNDS)
        {
            // Its D-SACKs would have come back by now.
            self.cut = None;
        }
        self.history.push_back(rate);
        if self.history.len() > LOSS_HISTORY {
            self.history.pop_front();
        }
        self.ep_delivered = 0;
        self.ep_lost = 0;
        self.ep_round = self.round;
        if judged == Judged::Congested {
            let hi = (f64::from(self.cwnd) * HI_BETA) as u32;
            self.hi = Some(hi.max(CWND_MIN));
            if !self.filled {
                // Startup overshot: it is over.
                self.filled = true;
            }
        } else if let Some(hi) = self.hi {
            let hi = hi.saturating_add((hi / 32).max(1));
            // Far above what the model asks for: no longer a bound.
            self.hi = (f64::from(hi) < 2.0 * self.target()).then_some(hi);
        }
        Some(judged)
    }

    fn update_mode(&mut self, now: Instant, inflight: usize) {
        if self.mode == Mode::Startup && self.filled {
            self.mode = Mode::Drain;
        }
        if self.mode == Mode::Drain && (inflight as f64) <= self.bdp() {
            self.mode = Mode::ProbeBw(2, now);
        }
        if let Mode::ProbeBw(i, since) = self.mode {
            let min = self.min_rtt.unwrap_or(Duration::ZERO);
            let full = now.saturating_duration_since(since) > min;
            let gain = CYCLE[i];
            let next = if gain > 1.0 {
                full && inflight as f64 >= gain * self.bdp()
                    || now.saturating_duration_since(since) > min * 4
            } else if gain < 1.0 {
                full || inflight as f64 <= self.bdp()
            } else {
                full
            };
            if next {
                self.mode = Mode::ProbeBw((i + 1) % CYCLE.len(), now);
            }
        }
        // The minimum round trip went unseen for too long: measure it again.
        if !matches!(self.mode, Mode::ProbeRtt(_))
            && now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_WIN
        {
            self.mode = Mode::ProbeRtt(None);
            self.probe_min = None;
        }
        if let Mode::ProbeRtt(until) = self.mode {
            match until {
                None if inflight <= CWND_MIN as usize => {
                    let round = self.min_rtt.unwrap_or(Duration::ZERO);
                    self.mode = Mode::ProbeRtt(Some(now + PROBE_RTT_TIME.max(round)));
                }
                Some(t) if now >= t => {
                    if let Some(m) = self.probe_min.take() {
                        self.min_rtt = Some(m);
                    }
                    self.min_rtt_at = now;
                    self.mode = if self.filled {
                        Mode::ProbeBw(2, now)
                    } else {
                        Mode::Startup
                    };
                }
                _ => {}
            }
        }
    }

    /// The window the model asks for (before the bounds).
    fn target(&self) -> f64 {
        let gain = match self.mode {
            Mode::Startup => STARTUP_GAIN,
            _ => CWND_GAIN,
        };
        gain * self.bdp() + self.extra_acked()
    }

    fn update_cwnd(&mut self, newly: u32) {
        let mut cwnd = if self.bw <= 0.0 || self.min_rtt.is_none() {
            // No estimate yet: grow as slow start does.
            self.cwnd.saturating_add(newly)
        } else {
            let target = self.target().ceil() as u32;
            if self.filled {
                self.cwnd.saturating_add(newly).min(target)
            } else if self.cwnd < target {
                self.cwnd.saturating_add(newly)
            } else {
                self.cwnd
            }
        };
        if let Some(hi) = self.hi {
            cwnd = cwnd.min(hi);
        }
        if let Mode::ProbeRtt(_) = self.mode {
            cwnd = cwnd.min(CWND_MIN);
        }
        self.cwnd = cwnd.clamp(CWND_MIN.min(self.window), self.window);
    }
}

/// Whether `lost` of `n` packets is congestion, given the last epochs' loss
/// rates: above [`LOSS_MAX`], or (with three epochs known) above their
/// median by [`LOSS_MARGIN`] and three binomial standard deviations.
pub(super) fn congested(lost: f64, n: f64, history: &VecDeque<f64>) -> bool {
    if lost > LOSS_MAX * n {
        return true;
    }
    if history.len() < 3 {
        return false;
    }
    let mut h: Vec<f64> = history.iter().copied().collect();
    h.sort_by(f64::total_cmp);
    let p = h[h.len() / 2];
    let sd = (n * p * (1.0 - p)).sqrt();
    lost > n * (p + LOSS_MARGIN) + 3.0 * sd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An epoch judged congested for losses that D-SACKs then prove
    /// needless gets its bound lifted once what is left would not have
    /// been judged so; a D-SACK of the current epoch only takes one off
    /// its count.
    #[test]
    fn a_cut_whose_losses_prove_needless_is_lifted() {
        let now = Instant::now();
        let mut r = Rate::new(100, 1000, now);
        // 60 of 160 lost (above LOSS_MAX, no history): congested.
        r.ep_delivered = 100;
        r.ep_lost = 60;
        r.round = 1;
        let e = r.epoch();
        assert_eq!(r.end_of_round(), Some(Judged::Congested));
        assert!(r.hi.is_some_and(|h| h < 100), "{:?}", r.hi);
        // The next epoch's own loss, reported needless: its count only.
        r.ep_lost = 1;
        assert!(!r.on_spurious(r.epoch()));
        assert_eq!(r.ep_lost, 0);
        // The cut epoch's: 48 of 160 is no longer above 30 %.
        let lifted: Vec<bool> = (0..12).map(|_| r.on_spurious(e)).collect();
        assert_eq!(lifted.iter().filter(|&&l| l).count(), 1, "{lifted:?}");
        assert_eq!(lifted.last(), Some(&true), "{lifted:?}");
        assert_eq!(r.hi, None);
        assert!(!r.on_spurious(e), "lifted once");
    }

    #[test]
    fn random_loss_at_the_paths_own_rate_is_not_congestion() {
        // Eight epochs of 5-7 % loss: the path's own rate is 6 %.
        let h: VecDeque<f64> = [0.05, 0.06, 0.07, 0.06, 0.05, 0.06, 0.07, 0.06].into();
        assert!(!congested(6.0, 100.0, &h));
        assert!(!congested(10.0, 100.0, &h), "within the noise");
        assert!(congested(20.0, 100.0, &h), "well above it");
        // Without history only the absolute bound counts.
        assert!(!congested(20.0, 100.0, &VecDeque::new()));
        assert!(congested(31.0, 100.0, &VecDeque::new()));
        // A path that loses nothing of its own: a few percent is congestion.
        let clean: VecDeque<f64> = [0.0; 8].into();
        assert!(congested(3.0, 100.0, &clean));
        assert!(!congested(1.0, 100.0, &clean));
    }

    /// Acks of 100 packets every 100 µs (a path of a million packets/s,
    /// 100 µs round trip): the estimate finds the rate and the round trip,
    /// and the window settles near 2 × their product.
    #[test]
    fn the_estimate_finds_the_rate_and_the_window_follows() {
        let t = Instant::now();
        let mut m = Rate::new(16, 4096, t);
        let rtt = Duration::from_micros(100);
        let mut now = t;
        // (stamp, sent) of packets in flight.
        let mut flight: VecDeque<(Stamp, Instant)> = VecDeque::new();
        for _ in 0..200 {
            // Send what the window allows, paced at most at a million/s.
            while flight.len() < m.cwnd() as usize {
                let s = m.on_send(now, flight.len());
                flight.push_back((s, now));
                if flight.len() % 100 == 0 {
                    break;
                }
            }
            now += rtt;
            // The path delivers at most 100 per round trip.
            let n = flight.len().min(100);
            for _ in 0..n {
                let (s, sent) = flight.pop_front().unwrap();
                m.delivered_one(&s, sent, now);
            }
            m.on_ack(now, n as u32, flight.len(), Some(rtt), true);
        }
        assert!(
            (0.8e6..1.2e6).contains(&m.bw()),
            "bandwidth {} packets/s",
            m.bw()
        );
        assert_eq!(m.min_rtt(), Some(rtt));
        assert!(m.filled, "startup ended");
        assert!(
            (150..=300).contains(&m.cwnd()),
            "window {} (the path holds 100)",
            m.cwnd()
        );
    }

    /// The pacer lets a burst go, then one packet per 1/rate.
    #[test]
    fn the_pacer_spaces_packets_at_the_rate() {
        let t = Instant::now();
        let mut m = Rate::new(16, 512, t);
        m.bw = 100_000.0; // 10 µs a packet
        m.min_rtt = Some(Duration::from_micros(50));
        m.mode = Mode::ProbeBw(2, t);
        m.tokens = 0.0;
        m.pace_at = t;
        assert!(!m.pace_ok(t));
        let due = m.pace_deadline().unwrap();
        assert!((due - t).abs_diff(Duration::from_micros(10)) < Duration::from_nanos(10));
        assert!(m.pace_ok(due));
        m.on_send(due, 0);
        assert!(!m.pace_ok(due));
        // A long pause refills at most the burst.
        let later = due + Duration::from_secs(1);
        assert_eq!(m.tokens_at(later), Rate::burst(100_000.0));
        assert_eq!(Rate::burst(100_000.0), 25.0);
    }
}
