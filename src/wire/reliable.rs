//! Reliable, ordered delivery over a link that loses, reorders and duplicates
//! packets: the sans-IO state machine a datagram transport (DPDK) runs per
//! peer, and that a stream transport (TCP) uses to resume a broken
//! connection without losing or repeating a frame.
//!
//! No I/O and no clock of its own: callers pass `now` and move the packets.
//! A [`Sender`] numbers what it is given (sequence numbers start at 0 and
//! never wrap: 64 bits), keeps each item until the peer acknowledges it,
//! and says what to transmit again and when. A [`Receiver`] puts arriving
//! packets back in order, drops duplicates, and says what to acknowledge.
//!
//! ## Acknowledgements and credits
//! An [`Ack`] carries the cumulative point `next` (every sequence number
//! below it arrived), a selective bitmap of the 64 numbers after `next + 0`
//! (bit `i` = `next + 1 + i` arrived), and `window`: how many numbers from
//! `next` on the receiver will accept. The window shrinks while the
//! receiver's consumer leaves in-order packets unread, so a slow consumer
//! throttles the sender instead of making it retransmit into a full buffer.
//!
//! ## Loss detection: RACK, tail loss probe, timeout
//! Losses are found by time, as RACK-TLP does (RFC 8985; QUIC's recovery,
//! RFC 9002, is the same idea): a packet is lost once a packet *sent after
//! it* was acknowledged (cumulatively or selectively) and a reordering
//! window has passed on top of that packet's round trip. Counting duplicate
//! acks would read a packet overtaken by three others as lost; the window
//! lets a reordered one arrive late. It starts at a quarter of the minimum
//! round trip and widens (one more quarter per round trip in which a D-SACK
//! shows a resend was needless, at most the smoothed round trip), back to a
//! quarter after 16 loss episodes without such evidence (RFC 8985 §6.2).
//!
//! When nothing is acknowledged for a probe timeout (two smoothed round
//! trips plus the receiver's ack delay) after the last transmission, the
//! newest outstanding packet goes out again: a tail loss probe (a second
//! one after twice that wait, if the first went unanswered). Its
//! ack (or D-SACK) makes RACK find what was lost at the tail, without
//! waiting for the retransmission timeout. The timeout (RFC 6298: Karn's
//! rule, a doubling backoff, bounded by `rto_min`/`rto_max`) is the last
//! resort: it resends the oldest packet, and the ack of that resend lets
//! RACK find the rest. A sender whose oldest packet has gone unacknowledged
//! for a caller-chosen time reports the peer as stalled
//! ([`Sender::stalled`]); what that means (peer lost) is the caller's
//! decision.
//!
//! ## Spurious retransmissions (D-SACK)
//! A timeout does not prove a loss: a peer that was merely slow to answer
//! (its agent preempted on a busy host, for longer than the timeout) had
//! the packet all along. The receiver reports every duplicate it gets
//! ([`Ack::dsack`], RFC 2883's D-SACK, one sequence number per ack sent
//! alone, as many acks as there are duplicates, up to a bound). When every packet a loss episode resent comes back
//! reported as a duplicate, the episode was spurious: the sender restores
//! the congestion window and threshold it had before (RFC 3708's undo).
//! Without this, a peer that stalls for longer than the timeout every few
//! round trips pins the window at its minimum: each stall is a "loss" that
//! restarts slow start and halves the threshold, and nothing ever restores
//! them. (The round trip of such a stall is not learnt: without timestamps
//! a D-SACK does not say which copy an ack answered, and a network that
//! duplicates the retransmission of a lost packet would teach the timeout
//! a whole timeout too much.)
//!
//! ## Congestion: two models ([`Model`])
//! [`Model::Rate`] (the datagram transports' default, [`Config::datagram`];
//! the `rate` module) sends at the path's estimated bottleneck rate with
//! about two round trips' worth in flight and lets random loss cut nothing;
//! only an epoch whose loss rate is clearly above the path's own bounds what
//! is in flight. Its losses are resent paced, before new data. [`Model::Aimd`]
//! (kept for comparison: `--congestion aimd`) is a congestion window that a
//! loss cuts to 0.7 unless the round trip shows no queue (TCP Veno's test).
//! The design and the measurements are in docs/architecture.md
//! ("Congestion") and bench/RESULTS.md (issue 14).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

mod rate;

/// How a sender's congestion control responds to what it sees (see
/// "Congestion" in docs/architecture.md).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// A congestion window, AIMD as in TCP Reno with selective acks, and
    /// TCP Veno's test: a loss when the round trip shows no queue is taken
    /// as random and holds the window, else it is cut to 0.7.
    #[default]
    Aimd,
    /// A delivery-rate model (BBR-style): the window and a pacing rate follow
    /// the path's estimated bottleneck rate and minimum round trip; random
    /// loss cuts nothing, only a loss rate clearly above the path's own
    /// bounds what is in flight.
    Rate,
}

/// Tuning shared by both halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Packets in flight at most, and packets a receiver buffers at most.
    pub window: u32,
    /// Retransmission timeout before the first round-trip sample.
    pub rto_initial: Duration,
    /// Lower bound of the retransmission timeout.
    pub rto_min: Duration,
    /// Upper bound of the retransmission timeout (backoff stops there).
    pub rto_max: Duration,
    /// Acknowledge at the latest after this many in-order packets...
    pub ack_every: u32,
    /// ...or this long after the first unacknowledged one.
    pub ack_delay: Duration,
    /// Congestion control (a congestion window, AIMD as in TCP Reno with
    /// selective acks): on for a network that can be congested; off where
    /// the layer below paces already (a TCP connection).
    pub congestion: bool,
    /// Congestion window at the start and after a timeout's slow start...
    pub cwnd_initial: u32,
    /// ...and how it responds to loss and delay.
    pub model: Model,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            window: 512,
            rto_initial: Duration::from_millis(20),
            rto_min: Duration::from_millis(5),
            rto_max: Duration::from_millis(500),
            ack_every: 16,
            ack_delay: Duration::from_micros(200),
            congestion: true,
            cwnd_initial: 16,
            model: Model::Aimd,
        }
    }
}

impl Config {
    /// The datagram transports' tuning (udp, dpdk): the defaults, but an
    /// ack every second in-order packet (as TCP's receivers do) and at most
    /// 100 µs after the first unacknowledged one. Every sixteenth made a
    /// sender whose window was a few packets (after a loss, or a round trip
    /// stretched by a busy host) wait out the delay every flight; and a
    /// lone ack that a reordering hop held back stalled the sender until a
    /// tail probe, where one of several acks gets through.
    ///
    /// The congestion model is [`Model::Rate`]. (It was opt-in for a while:
    /// a corrupted message seen with it in a loaded hybrid test was found to
    /// come from the hybrid agent's tcp path, whatever the model; fixed in
    /// the agent, session 13.)
    pub fn datagram() -> Config {
        Config {
            ack_every: 2,
            ack_delay: Duration::from_micros(100),
            model: Model::Rate,
            ..Config::default()
        }
    }
}

/// What a receiver tells its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ack {
    /// Every sequence number below this arrived.
    pub next: u64,
    /// Bit `i`: `next + 1 + i` arrived.
    pub sack: u64,
    /// Sequence numbers from `next` on that may be sent.
    pub window: u32,
    /// A packet that arrived again since the previous ack (a D-SACK, RFC
    /// 2883): its sender resent it needlessly. Only on acks sent alone
    /// ([`Receiver::make_ack`]); [`Receiver::make_piggyback_ack`] leaves it
    /// for the next one.
    pub dsack: Option<u64>,
}

/// Words of selective bitmap an ack sent alone may carry beyond
/// [`Ack::sack`] (on a datagram link, in the `Ack` packet's payload).
pub const SACK_MORE: usize = 3;

/// The selective bitmap beyond [`Ack::sack`]: bit `i` of word `w` says
/// that `next + 65 + 64 w + i` arrived. With it an ack covers 256 packets
/// past its cumulative point instead of 64: with windows of hundreds of
/// packets, what arrived behind a hole more than 64 packets on was
/// invisible to the sender's loss detection (a lost resend of the hole
/// was found only by the timeout, and its resends went to packets the
/// receiver had).
pub type SackMore = [u64; SACK_MORE];

/// Why an [`Ack`] was refused (the peer is confused or malicious; count it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// It acknowledges a sequence number that was never sent.
    #[error("ack for sequence number {acked} but only {sent} were sent")]
    Unsent {
        /// The claimed cumulative point.
        acked: u64,
        /// How many were sent.
        sent: u64,
    },
}

/// Counters of a [`Sender`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Packets given to [`Sender::send`].
    pub sent: u64,
    /// Transmissions after the first (timeouts, losses RACK found, tail
    /// probes).
    pub retransmits: u64,
    /// Of those, packets RACK found lost (a later one arrived and the
    /// reordering window passed).
    pub fast_retransmits: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Packets acknowledged.
    pub acked: u64,
    /// Acks refused or stale.
    pub bad_acks: u64,
    /// Retransmissions the receiver reported as duplicates (D-SACK): they
    /// were not needed.
    pub spurious: u64,
    /// Loss episodes whose every retransmission proved spurious: their
    /// congestion window reduction was undone.
    pub undone: u64,
    /// Tail loss probes sent (the newest packet again when acks stopped).
    pub tail_probes: u64,
    /// Times a D-SACK widened the reordering window.
    pub reorder_widened: u64,
    /// Loss episodes taken as random (no queue on the path): the window
    /// was held, not cut.
    pub random_losses: u64,
    /// Loss episodes taken as congestion (a queue on the path): the window
    /// was cut to 0.7.
    pub congestion_cuts: u64,
    /// Where the time went while the caller had data queued (microseconds,
    /// by [`Sender::account`]): sending (nothing held it back)...
    pub us_open: u64,
    /// ...held by the congestion window...
    pub us_cwnd: u64,
    /// ...by the receiver's credits...
    pub us_rwnd: u64,
    /// ...by the send window (the oldest unacknowledged packet is a whole
    /// `window` behind the newest).
    pub us_window: u64,
    /// Time with packets in flight and nothing queued (the caller had no
    /// more to give).
    pub us_drained: u64,
    /// Time with nothing in flight and nothing queued (since the first
    /// call of [`Sender::account`]).
    pub us_idle: u64,
    /// Of all, the time before each tail probe and each timeout in which
    /// nothing was sent or acknowledged: stalls that only a timer ended.
    pub us_before_probe: u64,
    /// (see `us_before_probe`)
    pub us_before_timeout: u64,
    /// The congestion window times the microseconds it was in force while
    /// data was queued: `cwnd_us / (us_open + us_cwnd + us_rwnd +
    /// us_window)` is its mean.
    pub cwnd_us: u64,
}

impl SenderStats {
    /// Add `o`'s counts to these (a link's across its instances).
    pub fn add(&mut self, o: &SenderStats) {
        self.sent += o.sent;
        self.retransmits += o.retransmits;
        self.fast_retransmits += o.fast_retransmits;
        self.timeouts += o.timeouts;
        self.acked += o.acked;
        self.bad_acks += o.bad_acks;
        self.spurious += o.spurious;
        self.undone += o.undone;
        self.tail_probes += o.tail_probes;
        self.reorder_widened += o.reorder_widened;
        self.random_losses += o.random_losses;
        self.congestion_cuts += o.congestion_cuts;
        self.us_open += o.us_open;
        self.us_cwnd += o.us_cwnd;
        self.us_rwnd += o.us_rwnd;
        self.us_window += o.us_window;
        self.us_drained += o.us_drained;
        self.us_idle += o.us_idle;
        self.us_before_probe += o.us_before_probe;
        self.us_before_timeout += o.us_before_timeout;
        self.cwnd_us += o.cwnd_us;
    }
}

struct Slot<T> {
    item: T,
    /// When it was first sent...
    first_tx: Instant,
    /// ...and last.
    last_tx: Instant,
    tx: u32,
    /// The rate model's note of the last transmission.
    stamp: Option<rate::Stamp>,
    /// Found lost, waiting in `Sender::pending` to be resent.
    lost: bool,
}

impl<T> Slot<T> {
    /// When the transmission its ack answers was sent, as far as the sender
    /// can tell: without timestamps an ack of a resent packet may answer any
    /// copy (a receiver that stalled gets the original late, after the
    /// resend went out), so the first one, which claims no more than it
    /// knows (RACK then finds nothing lost that was sent after it).
    fn acked_tx(&self) -> Instant {
        if self.tx == 1 {
            self.last_tx
        } else {
            self.first_tx
        }
    }
}

/// Most retransmissions one loss episode tracks for an undo; past it the
/// episode's reduction stands.
const UNDO_MAX: usize = 64;

/// Resends remembered for telling a needless one by its D-SACK (newest
/// last). Kept apart from the loss episode's list ([`Undo`]): an episode
/// that lasts (reordering found "lost" every few hundred microseconds keeps
/// extending it) overflows that list, and a new episode replaces it before
/// the D-SACKs of the last one's resends come back; either way they went
/// unmatched (a pure-reordering hop: 1,945 resends, every one reported
/// twice by the receiver, 40 matched) and the reordering window was never
/// widened.
const RECENT_MAX: usize = 512;

/// A packet resent in the current loss episode.
#[derive(Clone, Copy, Debug)]
struct Resent {
    seq: u64,
    /// The receiver reported it as a duplicate.
    dup: bool,
}

/// A loss episode (one or more congestion window reductions in a row) that
/// D-SACKs may yet prove spurious.
#[derive(Debug)]
struct Undo {
    /// The window and threshold before the episode's first reduction...
    cwnd: u32,
    ssthresh: u32,
    /// ...and the rate model's in-flight bound.
    hi: Option<u32>,
    /// `next` at the episode's last reduction: once `base` passes it, a new
    /// reduction starts a new episode.
    high: u64,
    /// What the episode resent; empty with `overflow`: no undo.
    resent: Vec<Resent>,
    overflow: bool,
}

/// Packets queued on the path (see `Sender::queue_on_path`) below which a
/// loss is taken as random rather than congestion (TCP Veno's β).
const VENO_BACKLOG: f64 = 3.0;
/// The share of the round trip spent queueing below which a loss is taken
/// as random: the round trip must have quadrupled. Veno's packet count alone
/// reads a host's scheduling noise as a queue once the window is large (at
/// 100 packets, a round trip 3 % above its minimum): on the 2-core bench
/// host every loss then looked like congestion; with a doubled round trip
/// as the bar still 90 % of them (bench/RESULTS.md, issue 14): agents and
/// the forwarder waiting for a core stretch the round trip 2-10x. A real
/// queue (the simulation's 100 packets in front of a 60 µs path) stretches
/// it 17x.
const QUEUE_SHARE: f64 = 0.75;

/// The smallest round trips of the current and the last round (a round:
/// until what was sent at its start is acknowledged).
#[derive(Clone, Copy, Debug, Default)]
struct Rounds {
    cur: Option<Duration>,
    prev: Option<Duration>,
    /// The round ends when `base` reaches this.
    end: u64,
}

/// Tail loss probes in a row without an answer before only the timeout is
/// left.
const PROBES_MAX: u32 = 2;

/// Loss episodes after which a widened reordering window returns to its
/// start (RFC 8985's `RACK.reo_wnd_persist`).
const REO_PERSIST: u32 = 16;

/// The largest reordering degree learnt (packets); past it only the
/// reordering window finds losses.
const DEGREE_MAX: u64 = 64;

/// The most a reordered packet's lateness widens the reordering window.
const LATE_MAX: Duration = Duration::from_millis(4);

/// RACK's state (RFC 8985 §6.1): the newest delivered transmission.
#[derive(Clone, Copy, Debug, Default)]
struct Rack {
    /// When the most recently sent of the packets delivered so far was sent
    /// (its last transmission), and its sequence number (ties)...
    xmit: Option<(Instant, u64)>,
    /// The same for a packet known delivered only by a D-SACK beyond the
    /// ack's bitmap (the rate model's): it finds losses only among packets
    /// the bitmap covers (what arrived beyond it is unknown).
    far: Option<(Instant, u64)>,
    /// ...and its round trip.
    rtt: Duration,
    /// The reordering window in quarters of the minimum round trip.
    reo_mult: u32,
    /// Loss episodes left before `reo_mult` returns to 1 (and `degree` to 0).
    reo_persist: u32,
    /// The reordering seen on the path, in packets: how far behind the
    /// newest delivered packet a packet sent once was delivered (0: none
    /// seen yet). See [`Sender::reo_wnd`] and [`Sender::detect_lost`].
    degree: u32,
    /// The highest sequence number delivered (cumulatively or selectively).
    fack: Option<u64>,
    /// How late (after the deadline the reordering window would have set
    /// without it) the latest packets sent once and delivered out of order
    /// came, at most [`LATE_MAX`]; the largest since `reo_persist` last ran
    /// out.
    late: Duration,
    /// When a D-SACK last widened the window (once per round trip).
    widened: Option<Instant>,
    /// An ack delivered something since loss detection last ran.
    dirty: Option<Instant>,
    /// The earliest moment a packet sent before `xmit` becomes lost, if
    /// one is waiting for its reordering window.
    timer: Option<Instant>,
    /// Tail loss probes sent since something was last delivered (at most
    /// [`PROBES_MAX`]).
    probes_out: u32,
}

/// What held a sender back since [`Sender::account`] was last called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Held {
    /// Nothing queued, nothing in flight.
    #[default]
    Idle,
    Open,
    Cwnd,
    Rwnd,
    Window,
    Drained,
}

/// The time accounting of [`Sender::account`].
#[derive(Clone, Copy, Debug, Default)]
struct Account {
    /// The state since this moment.
    since: Option<Instant>,
    held: Held,
    /// The congestion window then.
    cwnd: u32,
    /// When the sender last sent or had something acknowledged.
    event: Option<Instant>,
    /// Nanoseconds per [`Held`] state (in its order), and the congestion
    /// window times nanoseconds: summed in nanoseconds, as an agent that
    /// polls calls [`Sender::account`] every few hundred nanoseconds
    /// (whole microseconds per call lost most of the time).
    ns: [u64; 6],
    cwnd_ns: u64,
}

/// The sending half of one peer's reliable channel.
pub struct Sender<T> {
    cfg: Config,
    /// Oldest sequence number not cumulatively acknowledged.
    base: u64,
    /// Next sequence number to assign.
    next: u64,
    /// `slots[i]` is `base + i`; `None` once selectively acknowledged.
    slots: VecDeque<Option<Slot<T>>>,
    /// The peer accepts sequence numbers below this.
    limit: u64,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The timeout the round-trip estimate gives...
    base_rto: Duration,
    /// ...and the one in force (backed off after timeouts).
    rto: Duration,
    /// When the oldest outstanding packet last made progress.
    progress: Instant,
    /// When the last window probe went out...
    probed: Option<Instant>,
    /// ...and how many went out since the window was last open: each one
    /// doubles the wait for the next (a persist timer, as TCP's).
    probes: u32,
    /// The retransmission timer: started when something is outstanding,
    /// restarted when new data is acknowledged or the timer fired.
    timer: Instant,
    /// Packets sent and not acknowledged (the slots that are `Some`).
    outstanding: usize,
    /// Congestion window, packets.
    cwnd: u32,
    /// Slow-start threshold.
    ssthresh: u32,
    /// Acks counted towards the next congestion-avoidance increase.
    cwnd_acc: u32,
    /// Losses of packets below this belong to a reduction already made.
    recover: u64,
    /// The smallest round trip seen.
    min_rtt: Option<Duration>,
    /// Loss detection by time.
    rack: Rack,
    /// Recent round trips, for telling random loss from congestion.
    rounds: Rounds,
    /// When anything was last (re)transmitted: the tail loss probe counts
    /// from there.
    last_send: Instant,
    /// When a packet was last sent again.
    last_resend: Option<Instant>,
    /// The loss episode a D-SACK may undo.
    undo: Option<Undo>,
    /// The last [`RECENT_MAX`] packets resent (by loss detection or the
    /// timeout; not tail probes), for [`Sender::on_dsack`], with the rate
    /// model's loss epoch then.
    recent: VecDeque<(u64, u64)>,
    /// The rate model ([`Model::Rate`] with congestion control on).
    rate: Option<rate::Rate>,
    /// The rate model's losses waiting to be resent (as its pacer allows,
    /// before new data), oldest first; stale entries are skipped...
    pending: VecDeque<u64>,
    /// ...and how many slots are so marked (`Slot::lost`).
    lost: usize,
    /// Sequence numbers below this are covered by the last ack (its
    /// cumulative point and bitmap): loss detection stops there.
    visible: u64,
    /// Where the time goes.
    acct: Account,
    stats: SenderStats,
}

impl<T> Sender<T> {
    /// A sender whose first packet will be number 0.
    pub fn new(cfg: Config, now: Instant) -> Sender<T> {
        Sender {
            cfg,
            base: 0,
            next: 0,
            slots: VecDeque::new(),
            limit: cfg.window as u64,
            srtt: None,
            rttvar: Duration::ZERO,
            base_rto: cfg.rto_initial,
            rto: cfg.rto_initial,
            progress: now,
            probed: None,
            probes: 0,
            timer: now,
            outstanding: 0,
            cwnd: cfg.cwnd_initial.clamp(1, cfg.window.max(1)),
            ssthresh: cfg.window,
            cwnd_acc: 0,
            recover: 0,
            min_rtt: None,
            rack: Rack {
                reo_mult: 1,
                reo_persist: REO_PERSIST,
                ..Rack::default()
            },
            last_send: now,
            rounds: Rounds::default(),
            last_resend: None,
            undo: None,
            recent: VecDeque::new(),
            rate: (cfg.congestion && cfg.model == Model::Rate)
                .then(|| rate::Rate::new(cfg.cwnd_initial, cfg.window, now)),
            pending: VecDeque::new(),
            lost: 0,
            visible: 0,
            acct: Account::default(),
            stats: SenderStats::default(),
        }
    }

    /// A packet is about to be resent: it belongs to the current loss
    /// episode (a new one when the last one is over). Call before the
    /// reduction it may cause, so the episode keeps the window from before.
    fn note_resend(&mut self, seq: u64) {
        if self.recent.len() == RECENT_MAX {
            self.recent.pop_front();
        }
        let epoch = self.rate.as_ref().map_or(0, |m| m.epoch());
        self.recent.push_back((seq, epoch));
        if !self.cfg.congestion {
            return;
        }
        let over = self.undo.as_ref().is_none_or(|u| self.base >= u.high);
        if over {
            self.undo = Some(Undo {
                cwnd: self.cwnd,
                ssthresh: self.ssthresh,
                hi: self.rate.as_ref().and_then(|r| r.hi),
                high: self.next,
                resent: Vec::new(),
                overflow: false,
            });
        }
        let Some(u) = self.undo.as_mut() else { return };
        if u.overflow {
            return;
        }
        if u.resent.iter().any(|r| r.seq == seq) {
            return;
        }
        if u.resent.len() == UNDO_MAX {
            u.overflow = true;
            u.resent.clear();
            return;
        }
        u.resent.push(Resent { seq, dup: false });
    }

    /// The receiver got `seq` twice: if it was resent lately (by loss
    /// detection or the timeout), that was not needed: counted, and the
    /// reordering window widened. Once every packet the current episode
    /// resent is reported so, the episode's reduction is undone.
    fn on_dsack(&mut self, seq: u64, now: Instant) {
        // Resent by loss detection or the timeout recently, and reported
        // twice: that resend was needless (a tail probe's is not counted:
        // a probe is sent knowing it may be).
        let Some(at) = self.recent.iter().rposition(|&(r, _)| r == seq) else {
            return;
        };
        let Some((_, epoch)) = self.recent.remove(at) else {
            return;
        };
        self.stats.spurious += 1;
        if self.rate.as_mut().is_some_and(|m| m.on_spurious(epoch)) {
            self.stats.undone += 1;
        }
        // A needless resend: the reordering was deeper than the window
        // allowed for. Widen it, once per round trip (RFC 8985 §6.2 step 4).
        let rtt = self.srtt.unwrap_or(self.rto);
        if self
            .rack
            .widened
            .is_none_or(|t| now.saturating_duration_since(t) >= rtt)
        {
            self.rack.widened = Some(now);
            self.rack.reo_mult = self.rack.reo_mult.saturating_add(1).min(64);
            self.rack.reo_persist = REO_PERSIST;
            // A resend proved needless: the original was reordered at least
            // this far (the highest delivered is a bound from above).
            let far = self.rack.fack.map_or(1, |f| f.saturating_sub(seq));
            self.rack.degree = self.rack.degree.max(far.clamp(1, DEGREE_MAX) as u32);
            self.stats.reorder_widened += 1;
        }
        // If the current loss episode resent it, and every packet it
        // resent is now so reported, its reduction is undone.
        let Some(u) = self.undo.as_mut() else { return };
        let Some(r) = u.resent.iter_mut().find(|r| r.seq == seq && !r.dup) else {
            return;
        };
        r.dup = true;
        let done = u.resent.iter().all(|r| r.dup);
        if done {
            if let Some(u) = self.undo.take() {
                self.cwnd = self.cwnd.max(u.cwnd);
                self.ssthresh = self.ssthresh.max(u.ssthresh);
                if let Some(m) = self.rate.as_mut() {
                    if m.hi.is_some() {
                        m.hi = u.hi.map(|h| h.max(m.hi.unwrap_or(0)));
                    }
                }
                self.stats.undone += 1;
            }
        }
    }

    /// Time accounting: the time since the last call goes to what held the
    /// sender back then (see [`SenderStats::us_open`] and the fields after
    /// it); `queued`: the caller has data waiting for the window now. Call
    /// after anything that may change it (sends, acks, resends; the caller's
    /// new data); cheap (no clock read: `now` is the caller's).
    pub fn account(&mut self, now: Instant, queued: bool) {
        if let Some(since) = self.acct.since {
            let ns = now.saturating_duration_since(since).as_nanos() as u64;
            let a = &mut self.acct;
            a.ns[a.held as usize] = a.ns[a.held as usize].saturating_add(ns);
            if matches!(a.held, Held::Open | Held::Cwnd | Held::Rwnd | Held::Window) {
                a.cwnd_ns = a
                    .cwnd_ns
                    .saturating_add(ns.saturating_mul(u64::from(a.cwnd)));
            }
        }
        self.acct.since = Some(now);
        self.acct.cwnd = self.cwnd();
        self.acct.held = if !queued {
            if self.outstanding > 0 {
                Held::Drained
            } else {
                Held::Idle
            }
        } else if self.next >= self.limit {
            Held::Rwnd
        } else if self.next - self.base >= self.cfg.window as u64 {
            Held::Window
        } else if self.outstanding >= self.cwnd() as usize {
            Held::Cwnd
        } else {
            Held::Open
        };
        if let Some(m) = self.rate.as_mut() {
            // Nothing to send, or held by the peer: the rate samples until
            // what is in flight now is delivered do not measure the path.
            if matches!(self.acct.held, Held::Idle | Held::Drained | Held::Rwnd) {
                m.app_limited(self.outstanding);
            }
        }
    }

    /// Something was sent or acknowledged now (for `us_before_*`).
    fn event(&mut self, now: Instant) {
        self.acct.event = Some(now);
    }

    /// A timer fired: the time since the last send or ack was a stall.
    fn stalled_for(&self, now: Instant) -> u64 {
        let since = self.acct.event.unwrap_or(now).max(self.last_send);
        now.saturating_duration_since(since).as_micros() as u64
    }

    /// The congestion window (packets), or the whole window without
    /// congestion control.
    pub fn cwnd(&self) -> u32 {
        if let Some(m) = &self.rate {
            m.cwnd()
        } else if self.cfg.congestion {
            self.cwnd
        } else {
            self.cfg.window
        }
    }

    /// `n` packets newly acknowledged, `flight` in flight before: grow the
    /// window, if it was what limited the sender (RFC 7661: a sender held
    /// back by the receiver's credits, or with nothing to send, learns
    /// nothing about the network, so a slow receiver neither grows nor
    /// shrinks it).
    fn on_newly_acked(&mut self, n: u32, flight: usize) {
        if n == 0 || !self.cfg.congestion || self.rate.is_some() || flight * 2 < self.cwnd as usize
        {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd = (self.cwnd + n).min(self.cfg.window);
        } else {
            self.cwnd_acc += n;
            if self.cwnd_acc >= self.cwnd {
                self.cwnd_acc -= self.cwnd;
                self.cwnd = (self.cwnd + 1).min(self.cfg.window);
            }
        }
    }

    /// Whether the path shows a queue: the share of the round trip spent
    /// queueing `q = (RTT − min RTT) / RTT`, with RTT the smallest round
    /// trip of this round and the last (acks held back by reordering, a
    /// peer descheduled for a moment, do not count), is at least
    /// [`QUEUE_SHARE`] and amounts to at least [`VENO_BACKLOG`] packets
    /// (TCP Veno's `N = cwnd × q`). Unmeasured: yes (as TCP would).
    fn queue_on_path(&self) -> bool {
        let Some(min) = self.min_rtt else { return true };
        let rtt = match (self.rounds.cur, self.rounds.prev) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return true,
        };
        let q = rtt.saturating_sub(min).as_secs_f64() / rtt.as_secs_f64().max(1e-9);
        q >= QUEUE_SHARE && f64::from(self.cwnd) * q >= VENO_BACKLOG
    }

    /// A loss of packet `seq` was detected: once per window of data, the
    /// window is held when the path shows no queue (a random loss: a
    /// damaged frame, a flaky hop), cut to 0.7 of itself when it does
    /// (congestion); a timeout restarts slow start. See "Congestion" in
    /// docs/architecture.md.
    fn on_loss(&mut self, seq: u64, timeout: bool) {
        if !self.cfg.congestion {
            return;
        }
        if self.rate.is_some() {
            // The rate model counts losses per epoch (`poll_retransmit`):
            // one loss, or a timeout (a stalled peer as often as a lost
            // flight), changes nothing by itself.
            if !timeout && seq >= self.recover {
                self.recover = self.next;
                self.reo_persist_tick();
            }
            if let Some(u) = self.undo.as_mut() {
                u.high = self.next;
            }
            return;
        }
        if timeout {
            self.ssthresh = (self.cwnd / 2).max(4);
            self.cwnd = 4;
            self.recover = self.next;
        } else if seq >= self.recover {
            if !self.queue_on_path() {
                // No queue built up: not congestion. Hold the window (leave
                // slow start, grow no more this round).
                self.ssthresh = self.cwnd.max(4);
                self.stats.random_losses += 1;
            } else {
                self.ssthresh = (self.cwnd * 7 / 10).max(4);
                self.cwnd = self.ssthresh;
                self.stats.congestion_cuts += 1;
            }
            self.recover = self.next;
            self.reo_persist_tick();
        }
        if let Some(u) = self.undo.as_mut() {
            u.high = self.next;
        }
        // Never more than the window, however small it was configured.
        self.cwnd = self.cwnd.min(self.cfg.window.max(1));
        self.cwnd_acc = 0;
    }

    /// A loss episode went by: a widened reordering window returns to its
    /// start after [`REO_PERSIST`] of them.
    fn reo_persist_tick(&mut self) {
        self.rack.reo_persist = self.rack.reo_persist.saturating_sub(1);
        if self.rack.reo_persist == 0 {
            self.rack.reo_mult = 1;
            self.rack.degree = 0;
            self.rack.late = Duration::ZERO;
            self.rack.reo_persist = REO_PERSIST;
        }
    }

    /// Whether the caller should ask the peer for an ack now (a window probe,
    /// see [`Receiver::on_probe`]): the peer's credits are used up and
    /// nothing is outstanding, so no ack would otherwise come, and the
    /// update that reopens the window may have been lost. One timeout after
    /// the window closed, then at doubling intervals up to `rto_max` while it
    /// stays closed (a receiver that holds its window shut for seconds is not
    /// woken hundreds of times a second).
    pub fn probe_due(&self, now: Instant) -> bool {
        let wait = self
            .rto
            .saturating_mul(1 << self.probes.min(16))
            .min(self.cfg.rto_max.max(self.rto));
        self.next >= self.limit
            && self.in_flight() == 0
            && self
                .probed
                .is_none_or(|t| now.saturating_duration_since(t) >= wait)
    }

    /// A window probe went out now.
    pub fn probed(&mut self, now: Instant) {
        self.probed = Some(now);
        self.probes = self.probes.saturating_add(1);
    }

    /// Whether [`Sender::send`] would accept a packet now (window, the
    /// peer's credits and the rate model's pacer all open).
    pub fn can_send(&self, now: Instant) -> bool {
        self.next < self.limit
            && self.next - self.base < self.cfg.window as u64
            && self.outstanding < self.cwnd() as usize
            && self.rate.as_ref().is_none_or(|m| m.pace_ok(now))
            && self.lost == 0
    }

    /// Whether the rate model paces this sender (see [`Model::Rate`]).
    pub fn paced(&self) -> bool {
        self.rate.is_some()
    }

    /// The rate model's note of a (re)transmission now.
    fn stamp(&mut self, now: Instant) -> Option<rate::Stamp> {
        let inflight = self.outstanding;
        self.rate.as_mut().map(|m| m.on_send(now, inflight))
    }

    /// Number the next packet and keep `item` until it is acknowledged.
    /// The caller transmits it with the returned sequence number. Gives the
    /// item back when the window or the peer's credits are closed.
    pub fn send(&mut self, item: T, now: Instant) -> Result<u64, T> {
        if !self.can_send(now) {
            return Err(item);
        }
        let stamp = self.stamp(now);
        if self.outstanding == 0 {
            self.progress = now;
            self.timer = now;
        }
        self.outstanding += 1;
        self.last_send = now;
        self.event(now);
        let seq = self.next;
        self.next += 1;
        self.slots.push_back(Some(Slot {
            item,
            first_tx: now,
            last_tx: now,
            tx: 1,
            stamp,
            lost: false,
        }));
        self.stats.sent += 1;
        Ok(seq)
    }

    /// Apply an acknowledgement; acknowledged items are appended to `freed`
    /// in no particular order.
    pub fn on_ack(&mut self, ack: &Ack, now: Instant, freed: &mut Vec<T>) -> Result<(), AckError> {
        self.on_wide_ack(ack, None, now, freed)
    }

    /// [`Sender::on_ack`] for an ack that carries the bitmap beyond its
    /// first 64 packets too ([`Receiver::make_wide_ack`]).
    pub fn on_wide_ack(
        &mut self,
        ack: &Ack,
        more: Option<&SackMore>,
        now: Instant,
        freed: &mut Vec<T>,
    ) -> Result<(), AckError> {
        if ack.next > self.next {
            self.stats.bad_acks += 1;
            return Err(AckError::Unsent {
                acked: ack.next,
                sent: self.next,
            });
        }
        if ack.next < self.base {
            // Older than what we know: reordered on the way. Ignore it whole
            // (its window is stale too).
            self.stats.bad_acks += 1;
            return Ok(());
        }
        let mut sample = None;
        let mut newly = 0u32;
        let visible_before = self.visible;
        let mut delivered: Option<(Instant, u64)> = None;
        let advanced = ack.next > self.base;
        // Reordering: a packet sent once delivered behind a later one.
        let fack = self.rack.fack;
        let mut degree = 0u64;
        let mut late = Duration::ZERO;
        let mut high = None;
        while self.base < ack.next {
            if let Some(slot) = self.slots.pop_front().flatten() {
                if slot.tx == 1 && self.last_resend.is_none_or(|r| slot.last_tx > r) {
                    sample = sample.max(Some(slot.last_tx));
                }
                if slot.tx == 1 && fack.is_some_and(|f| f > self.base) {
                    degree = degree.max(fack.map_or(0, |f| f - self.base));
                    late = late.max(now.saturating_duration_since(slot.last_tx + self.rack.rtt));
                }
                high = Some(self.base);
                self.lost -= usize::from(slot.lost);
                delivered = delivered.max(Some((slot.acked_tx(), self.base)));
                if let (Some(m), Some(st)) = (self.rate.as_mut(), &slot.stamp) {
                    m.delivered_one(st, slot.last_tx, now);
                }
                freed.push(slot.item);
                newly += 1;
            }
            self.base += 1;
        }
        if advanced {
            self.progress = now;
            self.timer = now;
            // New data got through: forget the backoff (as TCP does).
            self.rto = self.base_rto;
        }
        self.limit = ack.next + ack.window as u64;
        if self.limit > self.next {
            // Open again: the next closing starts probing afresh.
            self.probes = 0;
        }
        // Selective part: free what arrived. With the rate model also a
        // D-SACK beyond the bitmap's 64: the receiver has that packet (a
        // tail probe's, typically). A window wider than the bitmap otherwise
        // hid every packet sent after a lost resend, so RACK could not find
        // that loss, and only the timeout did.
        // Packets past the cumulative point the bitmaps cover.
        let span = 64 * (1 + more.map_or(0, |m| m.len() as u64));
        let bit = |i: u64| match i {
            0..64 => ack.sack & (1 << i) != 0,
            _ => more.is_some_and(|m| m[(i / 64 - 1) as usize] & (1 << (i % 64)) != 0),
        };
        let beyond = ack
            .dsack
            .filter(|&d| self.rate.is_some() && d > ack.next + span && d < self.next);
        let selective = (0..span)
            .filter(|&i| bit(i))
            .map(|i| ack.next + 1 + i)
            .chain(beyond);
        for seq in selective {
            if seq >= self.next {
                break;
            }
            let idx = (seq - self.base) as usize;
            if let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) {
                if slot.tx == 1 && self.last_resend.is_none_or(|r| slot.last_tx > r) {
                    sample = sample.max(Some(slot.last_tx));
                }
                if slot.tx == 1 && fack.is_some_and(|f| f > seq) && Some(seq) != beyond {
                    degree = degree.max(fack.map_or(0, |f| f - seq));
                    late = late.max(now.saturating_duration_since(slot.last_tx + self.rack.rtt));
                }
                if Some(seq) != beyond {
                    high = Some(seq);
                }
                self.lost -= usize::from(slot.lost);
                if Some(seq) == beyond {
                    // RACK may go by it only for what the bitmap covers.
                    let far = Some((slot.acked_tx(), seq));
                    if far > self.rack.far {
                        self.rack.far = far;
                        self.rack.dirty = Some(now);
                    }
                } else {
                    delivered = delivered.max(Some((slot.acked_tx(), seq)));
                }
                if let (Some(m), Some(st)) = (self.rate.as_mut(), &slot.stamp) {
                    m.delivered_one(st, slot.last_tx, now);
                }
                freed.push(slot.item);
                newly += 1;
            }
        }
        if degree > 0 {
            self.rack.degree = self.rack.degree.max(degree.min(DEGREE_MAX) as u32);
            self.rack.late = self.rack.late.max(late.min(LATE_MAX));
            self.rack.reo_persist = REO_PERSIST;
        }
        self.rack.fack = self.rack.fack.max(high);
        self.visible = ack.next + 1 + span;
        self.outstanding -= newly as usize;
        self.stats.acked += newly as u64;
        self.on_newly_acked(newly, self.outstanding + newly as usize);
        // The most recently sent packet of those acknowledged gives the
        // round trip (older ones may have waited for an ack that was lost);
        // none sent before a retransmission (Karn), whose ack it may be.
        let rtt = sample.map(|sent| now.saturating_duration_since(sent));
        if let Some(rtt) = rtt {
            self.rtt_sample(rtt);
        }
        if let Some(m) = self.rate.as_mut() {
            // An ack whose cumulative point passed the last one's bitmap
            // delivers at once what arrived unseen behind a hole: its rate
            // sample would count those as if delivered in its interval.
            let seen = ack.next <= visible_before;
            match m.on_ack(now, newly, self.outstanding, rtt, seen) {
                Some(rate::Judged::Random) => self.stats.random_losses += 1,
                Some(rate::Judged::Congested) => self.stats.congestion_cuts += 1,
                _ => {}
            }
        }
        if let Some((sent, seq)) = delivered {
            self.rack_update(sent, seq, now);
        }
        if newly > 0 {
            self.rack.probes_out = 0;
            self.event(now);
        }
        if let Some(seq) = ack.dsack.filter(|&d| d < self.next) {
            self.on_dsack(seq, now);
        }
        Ok(())
    }

    /// RFC 8985 §6.2 step 2: the newest transmission delivered (for a
    /// resent packet, see [`Slot::acked_tx`]).
    fn rack_update(&mut self, sent: Instant, seq: u64, now: Instant) {
        let rtt = now.saturating_duration_since(sent);
        if self.base >= self.rounds.end {
            self.rounds = Rounds {
                cur: None,
                prev: self.rounds.cur,
                end: self.next,
            };
        }
        self.rounds.cur = Some(self.rounds.cur.map_or(rtt, |c| c.min(rtt)));
        if self.rack.xmit.is_none_or(|x| (sent, seq) > x) {
            self.rack.xmit = Some((sent, seq));
            self.rack.rtt = rtt;
            if self.outstanding > 0 {
                self.rack.dirty = Some(now);
            }
        }
    }

    /// The reordering window: quarters of the minimum round trip (one more
    /// per D-SACK widening), never more than the smoothed round trip (RFC
    /// 8985 §6.2); and at least how late the latest reordered packets came
    /// (`Rack::late`, a quarter more). A reordered packet may be held until
    /// later ones pass (a forwarder's or a switch's reordering counts
    /// packets, not time): a sender whose window is a few packets sends
    /// those only with its next flight, a round trip later, where a quarter
    /// of the minimum round trip read every such packet as lost (30-45 %
    /// of the resends needless on the bench hop). A fixed wider window cost
    /// where reordering resolves in microseconds (the simulation: 75-97 %
    /// of the link fell to 35-68 %), hence measured. Losses are also found
    /// by count ([`Sender::detect_lost`]).
    fn reo_wnd(&self) -> Duration {
        let min = self.min_rtt.unwrap_or(self.rack.rtt);
        let w = (min / 4).saturating_mul(self.rack.reo_mult);
        let late = self.rack.late + self.rack.late / 4;
        w.max(late).min(self.srtt.unwrap_or(w))
    }

    /// The probe timeout: two round trips and the receiver's ack delay,
    /// never more than the retransmission timeout.
    fn pto(&self) -> Duration {
        match self.srtt {
            Some(srtt) => (srtt * 2 + self.cfg.ack_delay).min(self.rto),
            None => self.rto,
        }
    }

    /// When a tail loss probe is due, if one may be sent: a probe timeout
    /// after the last send, doubled for a second probe (a first probe or
    /// its ack may be lost too: RFC 9002 sends probes, not a timeout, until
    /// one is answered).
    fn probe_deadline(&self) -> Option<Instant> {
        (self.outstanding > 0
            && self.rack.probes_out < PROBES_MAX
            && self.rack.timer.is_none()
            && self.lost == 0)
            .then(|| self.last_send + self.pto() * (1 << self.rack.probes_out))
    }

    /// RFC 8985 §6.2 step 5: every outstanding packet sent before the
    /// newest delivered one whose round trip and the reordering window
    /// have passed is lost; the rest set the reordering timer.
    fn detect_lost(&mut self, now: Instant, lost: &mut Vec<u64>) {
        self.rack.dirty = None;
        self.rack.timer = None;
        let Some(near) = self.rack.xmit.max(self.rack.far) else {
            return;
        };
        let wait = self.rack.rtt + self.reo_wnd();
        // By count (FACK, RFC 6675's DupThresh made adaptive as Linux's
        // `tp->reordering`): a packet sent once is lost when packets more
        // than the path's reordering degree (at least 3) after it were
        // delivered. Sent once only: a resent packet's place in the sending
        // order is not its sequence number.
        let thresh = u64::from(self.rack.degree.max(2) + 1);
        let fack = self.rack.fack;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot.as_ref().filter(|s| !s.lost) else {
                continue;
            };
            let seq = self.base + i as u64;
            let xmit = match self.rack.xmit {
                // Past the ack's bitmap: only RACK's own newest counts.
                _ if seq < self.visible => near,
                Some(x) => x,
                None => break,
            };
            if (slot.last_tx, seq) >= xmit {
                continue;
            }
            let at = slot.last_tx + wait;
            let by_count = slot.tx == 1 && fack.is_some_and(|f| f >= seq + thresh);
            if by_count || at <= now {
                lost.push(seq);
            } else {
                self.rack.timer = Some(self.rack.timer.map_or(at, |t| t.min(at)));
            }
        }
    }

    fn rtt_sample(&mut self, rtt: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        self.base_rto = (srtt + (self.rttvar * 4).max(Duration::from_micros(100)))
            .clamp(self.cfg.rto_min, self.cfg.rto_max);
        self.rto = self.base_rto;
    }

    /// Hand every packet due for retransmission to `f` (sequence number and
    /// item) and count it as sent again now: those RACK finds lost, else a
    /// tail loss probe (the newest outstanding packet) when acks stopped
    /// coming, and the oldest outstanding one when the retransmission timer
    /// fired (the timeout then doubles).
    pub fn poll_retransmit(&mut self, now: Instant, mut f: impl FnMut(u64, &T)) {
        if self.outstanding == 0 {
            return;
        }
        if self.rack.dirty.is_some() || self.rack.timer.is_some_and(|t| t <= now) {
            let mut lost = Vec::new();
            self.detect_lost(now, &mut lost);
            if self.rate.is_some() {
                // Resent below, paced, before new data: a burst of resends
                // overflowed the queue that had dropped the originals, and
                // the lost resends left RACK nothing newer to go by.
                for &seq in &lost {
                    let idx = (seq - self.base) as usize;
                    if let Some(Some(slot)) = self.slots.get_mut(idx) {
                        slot.lost = true;
                        self.lost += 1;
                        self.pending.push_back(seq);
                    }
                }
                if let Some(m) = self.rate.as_mut() {
                    m.on_lost(lost.len());
                }
                if let Some(&seq) = lost.first() {
                    self.on_loss(seq, false);
                }
                lost.clear();
            }
            for &seq in &lost {
                let idx = (seq - self.base) as usize;
                let stamp = self.stamp(now);
                let Some(Some(slot)) = self.slots.get_mut(idx) else {
                    continue;
                };
                slot.last_tx = now;
                slot.tx += 1;
                slot.stamp = stamp;
                self.stats.retransmits += 1;
                self.stats.fast_retransmits += 1;
                f(seq, &slot.item);
            }
            for &seq in &lost {
                self.note_resend(seq);
            }
            if let Some(&seq) = lost.first() {
                self.on_loss(seq, false);
                self.last_resend = Some(now);
                self.last_send = now;
            }
        }
        self.resend_pending(now, &mut f);
        if self.probe_deadline().is_some_and(|t| t <= now) {
            let stall = self.stalled_for(now);
            let stamp = self.stamp(now);
            // The newest outstanding packet again: its ack shows RACK what
            // is missing before it. With the rate model, the oldest instead
            // when it was resent already and packets are out beyond the
            // ack's bitmap: then its resend is what was lost (the cumulative
            // point is stuck on it), and RACK cannot see anything sent after
            // that resend.
            let oldest = self.slots.iter().position(Option::is_some).filter(|&i| {
                self.rate.is_some()
                    && self.next > self.visible
                    && self.slots[i].as_ref().is_some_and(|s| s.tx > 1)
            });
            let pick = match oldest {
                Some(i) => self
                    .slots
                    .get_mut(i)
                    .and_then(|s| s.as_mut().map(|s| (i, s))),
                None => self
                    .slots
                    .iter_mut()
                    .enumerate()
                    .rev()
                    .find_map(|(i, s)| s.as_mut().map(|s| (i, s))),
            };
            if let Some((i, slot)) = pick {
                self.stats.us_before_probe += stall;
                slot.last_tx = now;
                slot.tx += 1;
                slot.stamp = stamp;
                self.lost -= usize::from(std::mem::take(&mut slot.lost));
                self.stats.retransmits += 1;
                self.stats.tail_probes += 1;
                f(self.base + i as u64, &slot.item);
                self.rack.probes_out += 1;
                self.last_resend = Some(now);
                self.last_send = now;
            }
        }
        if now.saturating_duration_since(self.timer) >= self.rto {
            let stall = self.stalled_for(now);
            let stamp = self.stamp(now);
            if let Some((i, slot)) = self
                .slots
                .iter_mut()
                .enumerate()
                .find_map(|(i, s)| s.as_mut().map(|s| (i, s)))
            {
                self.stats.us_before_timeout += stall;
                slot.last_tx = now;
                slot.tx += 1;
                slot.stamp = stamp;
                self.lost -= usize::from(std::mem::take(&mut slot.lost));
                self.stats.retransmits += 1;
                self.stats.timeouts += 1;
                f(self.base + i as u64, &slot.item);
                let seq = self.base + i as u64;
                self.note_resend(seq);
                self.on_loss(seq, true);
                self.last_resend = Some(now);
                self.last_send = now;
            }
            self.timer = now;
            self.rto = (self.rto * 2).min(self.cfg.rto_max);
        }
    }

    /// The rate model's losses waiting to be resent, oldest first, while its
    /// pacer lets them go.
    fn resend_pending<F: FnMut(u64, &T)>(&mut self, now: Instant, f: &mut F) {
        let mut any = false;
        while let Some(&seq) = self.pending.front() {
            let idx = seq.wrapping_sub(self.base) as usize;
            let waiting =
                seq >= self.base && matches!(self.slots.get(idx), Some(Some(s)) if s.lost);
            if !waiting {
                self.pending.pop_front();
                continue;
            }
            if !self.rate.as_ref().is_none_or(|m| m.pace_ok(now)) {
                break;
            }
            self.pending.pop_front();
            self.note_resend(seq);
            let stamp = self.stamp(now);
            let Some(Some(slot)) = self.slots.get_mut(idx) else {
                continue;
            };
            slot.lost = false;
            self.lost -= 1;
            slot.last_tx = now;
            slot.tx += 1;
            slot.stamp = stamp;
            self.stats.retransmits += 1;
            self.stats.fast_retransmits += 1;
            f(seq, &slot.item);
            any = true;
        }
        if any {
            self.last_resend = Some(now);
            self.last_send = now;
        }
    }

    /// Send everything outstanding again, oldest first, now (a stream
    /// transport's new connection after the peer said where it stands).
    pub fn retransmit_all(&mut self, now: Instant, mut f: impl FnMut(u64, &T)) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = slot {
                slot.last_tx = now;
                slot.tx += 1;
                slot.lost = false;
                self.stats.retransmits += 1;
                f(self.base + i as u64, &slot.item);
            }
        }
        self.pending.clear();
        self.lost = 0;
    }

    /// When [`Sender::poll_retransmit`] has work next, if anything is
    /// outstanding; or when the rate model's pacer lets the next packet go,
    /// if it holds one now ([`Sender::can_send`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        let pace = self.rate.as_ref().and_then(|m| m.pace_deadline());
        if self.outstanding == 0 {
            return pace;
        }
        let mut due = self.timer + self.rto;
        for t in [
            self.rack.dirty,
            self.rack.timer,
            self.probe_deadline(),
            pace,
        ]
        .into_iter()
        .flatten()
        {
            due = due.min(t);
        }
        Some(due)
    }

    /// Whether something is outstanding and nothing of it has been
    /// acknowledged for `limit`.
    pub fn stalled(&self, now: Instant, limit: Duration) -> bool {
        self.in_flight() > 0 && now.saturating_duration_since(self.progress) >= limit
    }

    /// Packets sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.outstanding
    }

    /// The next sequence number to be assigned.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The slow-start threshold (packets).
    pub fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        let mut st = self.stats;
        let us = |h: Held| self.acct.ns[h as usize] / 1000;
        st.us_idle = us(Held::Idle);
        st.us_open = us(Held::Open);
        st.us_cwnd = us(Held::Cwnd);
        st.us_rwnd = us(Held::Rwnd);
        st.us_window = us(Held::Window);
        st.us_drained = us(Held::Drained);
        st.cwnd_us = self.acct.cwnd_ns / 1000;
        st
    }

    /// Give back the memory of the slots no longer in use (a busy sender's
    /// queue keeps the room its peak took): for a sender kept while its
    /// link is closed.
    pub fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
        if self.outstanding == 0 {
            self.recent.clear();
            self.recent.shrink_to_fit();
        }
    }

    /// Give up on everything outstanding (the peer is gone): the items, oldest
    /// first. Numbering goes on where it was.
    pub fn drain(&mut self) -> Vec<T> {
        let out: Vec<T> = self.slots.drain(..).flatten().map(|s| s.item).collect();
        self.base = self.next;
        self.outstanding = 0;
        self.rack.dirty = None;
        self.rack.timer = None;
        self.undo = None;
        self.recent.clear();
        self.pending.clear();
        self.lost = 0;
        out
    }
}

/// Duplicates a receiver keeps to report at most (each costs an ack sent
/// alone; past this, more are dropped unreported).
const DSACK_MAX: usize = 16;

/// What [`Receiver::on_packet`] made of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Kept; in order or waiting for a gap to fill.
    Accepted,
    /// Already had it (or already delivered): dropped.
    Duplicate,
    /// Beyond the window the receiver offered: dropped.
    OutOfWindow,
}

/// Counters of a [`Receiver`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Packets accepted.
    pub accepted: u64,
    /// Of those, out of order on arrival.
    pub reordered: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Packets beyond the window dropped.
    pub out_of_window: u64,
    /// Acks produced.
    pub acks: u64,
}

/// The receiving half of one peer's reliable channel.
pub struct Receiver<T> {
    cfg: Config,
    /// Every sequence number below this arrived.
    next: u64,
    /// In order, not yet taken by the consumer.
    ready: VecDeque<T>,
    /// `held[i]` is `next + i` (so `held[0]` is always `None`).
    held: VecDeque<Option<T>>,
    /// Packets accepted since the last ack.
    unacked: u32,
    /// When the first of those arrived.
    first_unacked: Option<Instant>,
    /// Acknowledge at once (a gap, a duplicate, a window reopening).
    urgent: bool,
    /// The window offered in the last ack.
    offered: u32,
    /// Duplicates to report, one per ack sent alone (D-SACK), oldest first,
    /// at most [`DSACK_MAX`].
    dsack: VecDeque<u64>,
    stats: ReceiverStats,
}

impl<T> Receiver<T> {
    /// A receiver expecting packet 0.
    pub fn new(cfg: Config) -> Receiver<T> {
        Receiver {
            cfg,
            next: 0,
            ready: VecDeque::new(),
            held: VecDeque::new(),
            unacked: 0,
            first_unacked: None,
            urgent: false,
            offered: cfg.window,
            dsack: VecDeque::new(),
            stats: ReceiverStats::default(),
        }
    }

    /// Report `seq` as received twice, in order, unless it is waiting to be
    /// reported already. (Every one counts: the sender undoes a loss episode
    /// only once each of its resends is reported; reporting only the latest
    /// duplicate lost those of a tail probe and a timeout that arrived
    /// together.)
    fn note_duplicate(&mut self, seq: u64) {
        if self.dsack.len() < DSACK_MAX && !self.dsack.contains(&seq) {
            self.dsack.push_back(seq);
        }
    }

    /// The window this receiver offers now.
    pub fn window(&self) -> u32 {
        self.cfg.window.saturating_sub(self.ready.len() as u32)
    }

    /// Take in packet `seq`.
    pub fn on_packet(&mut self, seq: u64, item: T, now: Instant) -> Verdict {
        if seq < self.next {
            self.stats.duplicates += 1;
            self.urgent = true;
            self.note_duplicate(seq);
            return Verdict::Duplicate;
        }
        let idx = seq - self.next;
        if idx >= self.window() as u64 {
            self.stats.out_of_window += 1;
            self.urgent = true;
            return Verdict::OutOfWindow;
        }
        let idx = idx as usize;
        if self.held.len() <= idx {
            self.held.resize_with(idx + 1, || None);
        }
        if self.held[idx].is_some() {
            self.stats.duplicates += 1;
            self.urgent = true;
            self.note_duplicate(seq);
            return Verdict::Duplicate;
        }
        self.held[idx] = Some(item);
        self.stats.accepted += 1;
        if idx > 0 {
            self.stats.reordered += 1;
            self.urgent = true;
        }
        while let Some(Some(_)) = self.held.front() {
            if let Some(Some(it)) = self.held.pop_front() {
                self.ready.push_back(it);
            }
            self.next += 1;
        }
        if !self.held.is_empty() {
            // A gap remains: the sender should hear about it now.
            self.urgent = true;
        }
        self.unacked += 1;
        self.first_unacked.get_or_insert(now);
        Verdict::Accepted
    }

    /// Take in packet `seq` without keeping it, if it is the next in order
    /// and nothing waits in front of it ([`Receiver::ready_len`] is 0): the
    /// caller then hands its bytes on at once, in stream order, and `true`
    /// is returned. Otherwise `false` and nothing changes: the caller goes
    /// through [`Receiver::on_packet`] (which keeps the item). Acks, window
    /// and counters are as if `on_packet` had accepted it and `pop` had
    /// taken it straight away.
    pub fn accept_in_order(&mut self, seq: u64, now: Instant) -> bool {
        if seq != self.next || !self.ready.is_empty() || self.window() == 0 {
            return false;
        }
        // `held[0]`, if any, is this packet's own (empty) place.
        self.held.pop_front();
        self.next += 1;
        self.stats.accepted += 1;
        while let Some(Some(_)) = self.held.front() {
            if let Some(Some(it)) = self.held.pop_front() {
                self.ready.push_back(it);
            }
            self.next += 1;
        }
        if !self.held.is_empty() {
            self.urgent = true;
        }
        self.unacked += 1;
        self.first_unacked.get_or_insert(now);
        true
    }

    /// The next in-order item, if any.
    pub fn pop(&mut self) -> Option<T> {
        let it = self.ready.pop_front()?;
        // Reopening a window the sender saw closed (or a quarter grown)
        // deserves an ack of its own, or the sender waits for a probe.
        if self.window() >= self.offered + (self.cfg.window / 4).max(1) {
            self.urgent = true;
        }
        Some(it)
    }

    /// The sender asks for an ack (its window probe): the next one is due now.
    pub fn on_probe(&mut self) {
        self.urgent = true;
    }

    /// In-order items waiting for [`Receiver::pop`].
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether an ack should go out now.
    pub fn ack_due(&self, now: Instant) -> bool {
        self.urgent
            || self.unacked >= self.cfg.ack_every
            || self
                .first_unacked
                .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.ack_delay)
    }

    /// When an ack becomes due without further packets, if ever.
    pub fn ack_deadline(&self, now: Instant) -> Option<Instant> {
        if self.urgent {
            return Some(now);
        }
        self.first_unacked.map(|t| t + self.cfg.ack_delay)
    }

    /// The acknowledgement to send alone now (resets what is due), with the
    /// oldest duplicate not yet reported, if any (more waiting keep the
    /// next ack due at once).
    pub fn make_ack(&mut self) -> Ack {
        self.make_wide_ack().0
    }

    /// [`Receiver::make_ack`] with the bitmap beyond its first 64 packets,
    /// if anything beyond them arrived (`None`: nothing did).
    pub fn make_wide_ack(&mut self) -> (Ack, Option<SackMore>) {
        let mut more = [0u64; SACK_MORE];
        if self.held.len() > 65 {
            for (i, h) in self.held.iter().enumerate().skip(65).take(64 * SACK_MORE) {
                if h.is_some() {
                    let k = i - 65;
                    more[k / 64] |= 1 << (k % 64);
                }
            }
        }
        let more = (more != [0; SACK_MORE]).then_some(more);
        let mut ack = self.make_piggyback_ack();
        ack.dsack = self.dsack.pop_front();
        self.urgent = !self.dsack.is_empty();
        (ack, more)
    }

    /// The acknowledgement to carry on an outgoing data packet (resets what
    /// is due). A data packet has no room for a D-SACK: one waiting stays
    /// due for the next ack sent alone.
    pub fn make_piggyback_ack(&mut self) -> Ack {
        let mut sack = 0u64;
        // (Nothing held, the usual case: no walk. `held[0]` is always empty.)
        if self.held.len() > 1 {
            for (i, h) in self.held.iter().enumerate().skip(1).take(64) {
                if h.is_some() {
                    sack |= 1 << (i - 1);
                }
            }
        }
        self.unacked = 0;
        self.first_unacked = None;
        self.urgent = !self.dsack.is_empty();
        self.offered = self.window();
        self.stats.acks += 1;
        Ack {
            next: self.next,
            sack,
            window: self.offered,
            dsack: None,
        }
    }

    /// Every sequence number below this arrived.
    pub fn next_expected(&self) -> u64 {
        self.next
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets taken in place (in order, nothing waiting) and kept ones
    /// (out of order) come out in sequence order, with the same acks.
    #[test]
    fn accepting_in_place_keeps_the_order() {
        let now = Instant::now();
        let mut a: Receiver<u64> = Receiver::new(Config::default());
        let mut b: Receiver<u64> = Receiver::new(Config::default());
        let mut out_a = Vec::new();
        let mut out_b = Vec::new();
        for seq in [0u64, 1, 3, 4, 2, 5, 7, 6, 1, 8] {
            if a.accept_in_order(seq, now) {
                out_a.push(seq);
            } else {
                a.on_packet(seq, seq, now);
            }
            while let Some(x) = a.pop() {
                out_a.push(x);
            }
            b.on_packet(seq, seq, now);
            while let Some(x) = b.pop() {
                out_b.push(x);
            }
            assert_eq!(a.make_ack(), b.make_ack(), "after {seq}");
        }
        assert_eq!(out_a, (0..=8).collect::<Vec<_>>());
        assert_eq!(out_a, out_b);
        assert_eq!(a.stats().accepted, b.stats().accepted);
        // Something waiting in front: not in place.
        let mut c: Receiver<u64> = Receiver::new(Config::default());
        c.on_packet(0, 0, now);
        assert!(!c.accept_in_order(1, now));
        assert_eq!(c.pop(), Some(0));
        assert!(c.accept_in_order(1, now));
    }
    use proptest::prelude::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn in_order_delivery_and_cumulative_ack() {
        let now = t0();
        let cfg = Config::default();
        let mut s = Sender::new(cfg, now);
        let mut r = Receiver::new(cfg);
        for i in 0..10u32 {
            let seq = s.send(i, now).unwrap();
            assert_eq!(r.on_packet(seq, i, now), Verdict::Accepted);
        }
        let got: Vec<u32> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        let ack = r.make_ack();
        assert_eq!(ack.next, 10);
        assert_eq!(ack.sack, 0);
        let mut freed = Vec::new();
        s.on_ack(&ack, now + Duration::from_millis(1), &mut freed)
            .unwrap();
        freed.sort();
        assert_eq!(freed, (0..10).collect::<Vec<_>>());
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn gap_is_sacked_and_fast_retransmitted() {
        let now = t0();
        let cfg = Config::default();
        let mut s = Sender::new(cfg, now);
        let mut r = Receiver::new(cfg);
        for i in 0..5u32 {
            let seq = s.send(i, now).unwrap();
            if seq != 2 {
                r.on_packet(seq, i, now);
            }
        }
        assert!(r.ack_due(now), "a gap makes the ack urgent");
        let ack = r.make_ack();
        assert_eq!(ack.next, 2);
        assert_eq!(ack.sack, 0b11, "3, 4 arrived");
        let later = now + Duration::from_micros(100);
        let mut freed = Vec::new();
        // One ack suffices (no duplicate-ack count): 3-4 were sent after 2
        // (two: fewer than the three that would find it lost by count).
        s.on_ack(&ack, later, &mut freed).unwrap();
        assert_eq!(s.in_flight(), 1, "only 2 is outstanding");
        let mut re = Vec::new();
        // Packet 2 may only be late: RACK waits a quarter round trip more.
        s.poll_retransmit(later, |seq, _| re.push(seq));
        assert!(re.is_empty(), "resent within the reordering window");
        let due = s.next_deadline().unwrap();
        assert_eq!(due, later + Duration::from_micros(25));
        s.poll_retransmit(due, |seq, _| re.push(seq));
        assert_eq!(re, vec![2]);
        assert_eq!(s.stats().fast_retransmits, 1);
        assert_eq!(s.stats().timeouts, 0);
        let t = due;
        r.on_packet(2, 2, t);
        let got: Vec<u32> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn timeout_backs_off_and_stall_is_reported() {
        let now = t0();
        let cfg = Config::default();
        let mut s: Sender<u8> = Sender::new(cfg, now);
        s.send(7, now).unwrap();
        let mut t = now;
        let mut sends = 0;
        let mut last_rto = s.rto();
        for _ in 0..1000 {
            t += Duration::from_millis(1);
            s.poll_retransmit(t, |seq, item| {
                assert_eq!((seq, *item), (0, 7));
                sends += 1;
            });
            assert!(
                s.rto() >= last_rto,
                "the timeout never shrinks without acks"
            );
            last_rto = s.rto();
        }
        // 20, 40, 80, 160, 320, 500 ms...: a handful in one second, not hundreds.
        assert!((4..=8).contains(&sends), "{sends} retransmissions");
        assert_eq!(s.rto(), cfg.rto_max);
        assert!(s.stalled(t, Duration::from_millis(900)));
        assert!(!s.stalled(t, Duration::from_secs(2)));
        assert_eq!(s.drain(), vec![7]);
        assert!(!s.stalled(t, Duration::ZERO));
    }

    /// A burst lost whole (a receiver ring that overflowed), the tail
    /// included: a tail loss probe (the newest packet again) goes out two
    /// round trips after the last send, long before the timeout; its ack
    /// shows RACK that everything sent before it is missing, and all of it
    /// is resent at once, not one timeout (or one round trip) per packet.
    #[test]
    fn a_burst_lost_whole_is_found_by_the_tail_probe() {
        let now = t0();
        let cfg = Config::default();
        let ack = |next, sack| Ack {
            next,
            sack,
            window: 512,
            dsack: None,
        };
        // Packet 0 acked after 100 µs (a round-trip sample), then packets
        // 1..=8 in flight.
        let eight_in_flight = || {
            let mut s: Sender<u32> = Sender::new(cfg, now);
            s.send(0, now).unwrap();
            let t = now + Duration::from_micros(100);
            s.on_ack(&ack(1, 0), t, &mut Vec::new()).unwrap();
            for i in 1..=8 {
                s.send(i, t).unwrap();
            }
            (s, t)
        };
        let (mut s, t) = eight_in_flight();
        // All eight lost. The probe is due after 2 × 100 µs + the ack delay.
        let due = s.next_deadline().unwrap();
        assert_eq!(due, t + Duration::from_micros(400));
        assert!(due < t + s.rto());
        let mut resent = Vec::new();
        s.poll_retransmit(due, |seq, _| resent.push(seq));
        assert_eq!(resent, vec![8], "the probe is the newest packet");
        // Its ack: 8 arrived, 1..=7 did not. Those with three or more sent
        // after them (1..=5) are lost by count at once; 6 and 7 after the
        // reordering window.
        let t = due + Duration::from_micros(100);
        let mut freed = Vec::new();
        s.on_ack(&ack(1, 1 << 6), t, &mut freed).unwrap();
        assert_eq!(freed, vec![8]);
        // (The probe's ack may answer the original, sent with the rest: RACK
        // waits that one's round trip and a quarter, from its first send.)
        resent.clear();
        s.poll_retransmit(t, |seq, _| resent.push(seq));
        assert_eq!(resent, (1..=5).collect::<Vec<u64>>(), "by count");
        let t = s.next_deadline().unwrap();
        assert!(t <= due + Duration::from_micros(150), "{:?}", t - due);
        s.poll_retransmit(t, |seq, _| resent.push(seq));
        assert_eq!(resent, (1..=7).collect::<Vec<u64>>(), "long overdue");
        assert_eq!(s.stats().tail_probes, 1);
        assert_eq!(s.stats().timeouts, 0);
        assert_eq!(s.stats().fast_retransmits, 7);

        // A probe that was needless: the originals arrive (the acks were
        // only slow), the ack covers everything, and nothing more is resent.
        let (mut s, t) = eight_in_flight();
        let due = s.next_deadline().unwrap();
        s.poll_retransmit(due, |_, _| {});
        s.on_ack(&ack(9, 0), due + Duration::from_micros(50), &mut freed)
            .unwrap();
        let mut more = 0;
        s.poll_retransmit(t + Duration::from_millis(50), |_, _| more += 1);
        assert_eq!(more, 0);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.stats().fast_retransmits, 0);
    }

    /// A loss while the round trip is at its minimum (no queue on the path)
    /// holds the window; the same loss after two rounds with the round trip
    /// ten times its minimum (a queue) cuts it to 0.7.
    #[test]
    fn random_loss_holds_the_window_congestion_cuts_it() {
        let cfg = Config::default();
        let ack = |next, sack| Ack {
            next,
            sack,
            window: 512,
            dsack: None,
        };
        let lose_one = |rtt: Duration| {
            let t = t0();
            let mut s: Sender<u32> = Sender::new(cfg, t);
            let mut freed = Vec::new();
            s.send(0, t).unwrap();
            let mut now = t + Duration::from_micros(100);
            s.on_ack(&ack(1, 0), now, &mut freed).unwrap();
            // Two clean rounds at `rtt`.
            for round in 0..2u64 {
                for i in 0..4 {
                    s.send(i, now).unwrap();
                }
                now += rtt;
                s.on_ack(&ack(5 + 4 * round, 0), now, &mut freed).unwrap();
            }
            // Ten more; the first is lost.
            for i in 0..10 {
                s.send(i, now).unwrap();
            }
            now += rtt;
            s.on_ack(&ack(9, 0b1_1111_1111), now, &mut freed).unwrap();
            let cwnd = s.cwnd();
            let mut re = Vec::new();
            // (Nine sent after it arrived: lost by count at once.)
            s.poll_retransmit(now, |q, _| re.push(q));
            assert_eq!(re, vec![9]);
            (cwnd, s.cwnd(), s.stats().random_losses)
        };
        let (before, after, random) = lose_one(Duration::from_micros(100));
        assert_eq!((after, random), (before, 1), "held");
        let (before, after, random) = lose_one(Duration::from_millis(1));
        assert_eq!((after, random), (before * 7 / 10, 0), "cut");
    }

    /// The time accounting sums what held the sender back between calls,
    /// to the nanosecond: an agent that polls calls it every few hundred
    /// nanoseconds (whole microseconds per call counted nothing there).
    #[test]
    fn time_is_accounted_to_what_held_the_sender() {
        let t = t0();
        let cfg = Config::default();
        let mut s: Sender<u32> = Sender::new(cfg, t);
        let ns = Duration::from_nanos;
        let mut now = t;
        s.send(0, now).unwrap();
        s.account(now, true);
        for _ in 0..10_000 {
            now += ns(300);
            s.account(now, true);
        }
        // Room in the window: sending, 3 ms.
        assert_eq!(s.stats().us_open, 3000);
        for i in 1..cfg.cwnd_initial {
            s.send(i, now).unwrap();
        }
        s.account(now, true);
        now += Duration::from_millis(2);
        s.account(now, false);
        // The window full: held by it, 2 ms; then nothing more to send
        // with packets in flight: drained.
        now += Duration::from_millis(1);
        s.account(now, false);
        let st = s.stats();
        assert_eq!((st.us_cwnd, st.us_drained, st.us_idle), (2000, 1000, 0));
        assert_eq!(st.cwnd_us, 5000 * u64::from(cfg.cwnd_initial));
    }

    /// A packet sent once and delivered behind four later ones teaches the
    /// sender the path's reordering: its degree (four: the next gap is lost
    /// by count only when five later ones arrived, not three) and how late
    /// it came (the reordering window grows to a quarter more than that).
    #[test]
    fn observed_reordering_raises_the_count_and_the_window() {
        let t = t0();
        let cfg = Config::default();
        let mut s: Sender<u32> = Sender::new(cfg, t);
        let ack = |next, sack| Ack {
            next,
            sack,
            window: 512,
            dsack: None,
        };
        let us = Duration::from_micros;
        let mut freed = Vec::new();
        s.send(0, t).unwrap();
        let now = t + us(100);
        s.on_ack(&ack(1, 0), now, &mut freed).unwrap();
        for i in 1..=5 {
            s.send(i, now).unwrap();
        }
        // 2..=5 arrive, then 1, 60 µs after its reordering deadline would
        // have been without the window (the sender did not look between).
        s.on_ack(&ack(1, 0b1111), now + us(100), &mut freed)
            .unwrap();
        let now = now + us(160);
        s.on_ack(&ack(6, 0), now, &mut freed).unwrap();
        assert_eq!(s.in_flight(), 0);
        for i in 6..=11 {
            s.send(i, now).unwrap();
        }
        // 7, 8, 9 arrive: three after 6, not five: not lost by count; and
        // the window is 75 µs now (60 µs late and a quarter), not 25.
        let at = now + us(100);
        s.on_ack(&ack(6, 0b111), at, &mut freed).unwrap();
        let mut re = Vec::new();
        s.poll_retransmit(at, |q, _| re.push(q));
        s.poll_retransmit(at + us(50), |q, _| re.push(q));
        assert!(re.is_empty(), "{re:?}");
        assert_eq!(s.stats().retransmits, 0);
        // 10 and 11 too: five after 6 arrived.
        s.on_ack(&ack(6, 0b11111), at + us(60), &mut freed).unwrap();
        s.poll_retransmit(at + us(60), |q, _| re.push(q));
        assert_eq!(re, vec![6]);
    }

    /// A resend's D-SACK counts (and widens the reordering window) when it
    /// comes back after the loss episode that resent it is over and a new
    /// one resent something, and when one episode resent more than it
    /// tracks for an undo: through a reordering hop both were the rule,
    /// and 40 of 1,945 needless resends were seen as such.
    #[test]
    fn a_dsack_counts_after_its_episode_is_gone() {
        for model in [Model::Aimd, Model::Rate] {
            let t = t0();
            let cfg = Config {
                model,
                cwnd_initial: 1024,
                window: 4096,
                ..Config::default()
            };
            let mut s: Sender<u32> = Sender::new(cfg, t);
            let ack = |next, sack, dsack| Ack {
                next,
                sack,
                window: 4096,
                dsack,
            };
            let mut freed = Vec::new();
            let mut now = t;
            let mut resent = Vec::new();
            // Rounds of packets whose first is reordered behind the others,
            // found lost and resent; the original arrives; the resend's
            // D-SACK comes a round later, after the next round's resend
            // began a new episode.
            let mut dsack = None;
            let mut sent = 0;
            for round in 0..4 {
                let first = s.next_seq();
                for _ in 0..8 {
                    s.send(sent, now).unwrap();
                    sent += 1;
                }
                now += Duration::from_micros(100);
                s.on_ack(&ack(first, u64::MAX >> 57, None), now, &mut freed)
                    .unwrap();
                for _ in 0..50 {
                    now += Duration::from_micros(20);
                    s.poll_retransmit(now, |q, _| resent.push(q));
                }
                assert!(
                    resent.contains(&first),
                    "{model:?} round {round}: {resent:?}"
                );
                now += Duration::from_micros(20);
                s.on_ack(&ack(s.next_seq(), 0, dsack), now, &mut freed)
                    .unwrap();
                dsack = Some(first);
            }
            now += Duration::from_micros(100);
            s.on_ack(&ack(s.next_seq(), 0, dsack), now, &mut freed)
                .unwrap();
            assert_eq!(s.stats().spurious, 4, "{model:?}: {:?}", s.stats());
            if model == Model::Rate {
                continue; // (its window is below what follows)
            }
            // One episode resends more than it tracks, all reordered.
            let first = s.next_seq();
            let n = UNDO_MAX as u64 + 8;
            for _ in 0..2 * n {
                s.send(sent, now).unwrap();
                sent += 1;
            }
            now += Duration::from_micros(100);
            // The second half arrived, the first half is late (bit i of the
            // bitmaps: packet first + 1 + i).
            let (mut sack, mut more) = (0u64, [0u64; SACK_MORE]);
            for i in n - 1..2 * n - 1 {
                match i {
                    0..64 => sack |= 1 << i,
                    _ => more[(i / 64 - 1) as usize] |= 1 << (i % 64),
                }
            }
            s.on_wide_ack(&ack(first, sack, None), Some(&more), now, &mut freed)
                .unwrap();
            resent.clear();
            for _ in 0..200 {
                now += Duration::from_micros(20);
                s.poll_retransmit(now, |q, _| resent.push(q));
            }
            assert!(
                resent.len() as u64 > UNDO_MAX as u64,
                "{model:?}: {}",
                resent.len()
            );
            now += Duration::from_micros(20);
            s.on_ack(&ack(s.next_seq(), 0, None), now, &mut freed)
                .unwrap();
            for &q in &resent {
                now += Duration::from_micros(1);
                s.on_ack(&ack(s.next_seq(), 0, Some(q)), now, &mut freed)
                    .unwrap();
            }
            let st = s.stats();
            // Every resend but the tail probes' was needless, and seen so.
            assert!(
                st.fast_retransmits > 4 + UNDO_MAX as u64,
                "{model:?}: {st:?}"
            );
            assert_eq!(
                st.spurious,
                st.fast_retransmits + st.timeouts,
                "{model:?}: {st:?}"
            );
            assert!(st.reorder_widened >= 1, "{model:?}: {st:?}");
        }
    }

    /// Reordering deeper than the window makes RACK resend needlessly; the
    /// D-SACK of that resend widens the window, so the same reordering
    /// again resends nothing.
    #[test]
    fn a_dsack_widens_the_reordering_window() {
        let t = t0();
        let cfg = Config::default();
        let mut s: Sender<u32> = Sender::new(cfg, t);
        let ack = |next, sack, dsack| Ack {
            next,
            sack,
            window: 512,
            dsack,
        };
        let mut freed = Vec::new();
        // A 100 µs round trip: the window starts at 25 µs.
        s.send(0, t).unwrap();
        let mut now = t + Duration::from_micros(100);
        s.on_ack(&ack(1, 0, None), now, &mut freed).unwrap();
        // 1 and 2 sent together; 2 arrives, 1 is 40 µs late.
        s.send(1, now).unwrap();
        s.send(2, now).unwrap();
        now += Duration::from_micros(100);
        s.on_ack(&ack(1, 1, None), now, &mut freed).unwrap();
        let mut re = Vec::new();
        s.poll_retransmit(now + Duration::from_micros(30), |q, _| re.push(q));
        assert_eq!(re, vec![1], "25 µs passed: resent");
        now += Duration::from_micros(40);
        s.on_ack(&ack(3, 0, None), now, &mut freed).unwrap();
        // ...and the resend arrives too: a D-SACK.
        now += Duration::from_micros(100);
        s.on_ack(&ack(3, 0, Some(1)), now, &mut freed).unwrap();
        assert_eq!(s.stats().spurious, 1);
        assert_eq!(s.stats().reorder_widened, 1);
        // The same again: 4 arrives, 3 is 40 µs late. The window is now 50 µs.
        s.send(3, now).unwrap();
        s.send(4, now).unwrap();
        now += Duration::from_micros(100);
        s.on_ack(&ack(3, 1, None), now, &mut freed).unwrap();
        re.clear();
        s.poll_retransmit(now + Duration::from_micros(40), |q, _| re.push(q));
        assert!(re.is_empty(), "{re:?}");
        s.on_ack(
            &ack(5, 0, None),
            now + Duration::from_micros(40),
            &mut freed,
        )
        .unwrap();
        assert_eq!(s.stats().retransmits, 1);
    }

    #[test]
    fn credits_close_the_window() {
        let now = t0();
        let cfg = Config {
            window: 4,
            ..Config::default()
        };
        let mut s = Sender::new(cfg, now);
        let mut r = Receiver::new(cfg);
        for i in 0..4 {
            let seq = s.send(i, now).unwrap();
            r.on_packet(seq, i, now);
        }
        assert_eq!(s.send(99, now), Err(99), "window full");
        // The consumer reads nothing: the ack frees the sender's slots but
        // offers no credit.
        let ack = r.make_ack();
        assert_eq!(ack.window, 0);
        let mut freed = Vec::new();
        s.on_ack(&ack, now, &mut freed).unwrap();
        assert_eq!(s.in_flight(), 0);
        assert!(!s.can_send(now), "no credit");
        // A packet beyond the offered window is refused by the receiver.
        assert_eq!(r.on_packet(4, 4, now), Verdict::OutOfWindow);
        // The consumer reads: the window reopens and says so at once.
        while r.pop().is_some() {}
        assert!(r.ack_due(now));
        let ack = r.make_ack();
        assert_eq!(ack.window, 4);
        s.on_ack(&ack, now, &mut freed).unwrap();
        assert!(s.can_send(now));
    }

    /// A window held shut is probed one timeout after it closed, then at
    /// doubling intervals up to `rto_max`; an ack that opens it resets that.
    #[test]
    fn window_probes_back_off_while_the_window_stays_shut() {
        let t = t0();
        let cfg = Config {
            window: 4,
            ..Config::default()
        };
        let mut s = Sender::new(cfg, t);
        let mut r = Receiver::new(cfg);
        let mut freed = Vec::new();
        for i in 0..4 {
            let seq = s.send(i, t).unwrap();
            r.on_packet(seq, i, t);
        }
        s.on_ack(&r.make_ack(), t, &mut freed).unwrap();
        assert!(!s.can_send(t), "the consumer read nothing: window 0");
        let mut probes = Vec::new();
        let mut now = t;
        while now < t + Duration::from_secs(3) {
            now += Duration::from_millis(1);
            if s.probe_due(now) {
                s.probed(now);
                probes.push(now - t);
                // The receiver still has no room: its answer keeps the window shut.
                r.on_probe();
                s.on_ack(&r.make_ack(), now, &mut freed).unwrap();
            }
        }
        let gaps: Vec<Duration> = probes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(gaps
            .iter()
            .all(|g| *g <= cfg.rto_max + Duration::from_millis(1)));
        assert!(
            (5..=12).contains(&probes.len()),
            "{} probes in 3 s: {probes:?}",
            probes.len()
        );
        // The consumer reads: the window opens, and closing again probes afresh.
        while r.pop().is_some() {}
        s.on_ack(&r.make_ack(), now, &mut freed).unwrap();
        assert!(s.can_send(now));
        for i in 4..8 {
            let seq = s.send(i, now).unwrap();
            r.on_packet(seq, i, now);
        }
        s.on_ack(&r.make_ack(), now, &mut freed).unwrap();
        assert!(!s.can_send(now));
        assert!(
            s.probe_due(now + s.rto()),
            "first probe one timeout after closing"
        );
    }

    #[test]
    fn bogus_and_stale_acks_change_nothing() {
        let now = t0();
        let mut s = Sender::new(Config::default(), now);
        for i in 0..3 {
            s.send(i, now).unwrap();
        }
        let mut freed = Vec::new();
        let e = s.on_ack(
            &Ack {
                next: 10,
                sack: 0,
                window: 5,
                dsack: None,
            },
            now,
            &mut freed,
        );
        assert!(matches!(e, Err(AckError::Unsent { acked: 10, sent: 3 })));
        assert!(freed.is_empty());
        s.on_ack(
            &Ack {
                next: 2,
                sack: u64::MAX,
                window: 5,
                dsack: None,
            },
            now,
            &mut freed,
        )
        .unwrap();
        freed.sort();
        assert_eq!(
            freed,
            vec![0, 1],
            "sack bits past what was sent are ignored"
        );
        // An older ack arriving late is ignored.
        s.on_ack(&Ack::default(), now, &mut freed).unwrap();
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.stats().bad_acks, 2);
    }

    #[test]
    fn a_wide_ack_shows_what_arrived_more_than_64_packets_past_a_hole() {
        let now = t0();
        let cfg = Config {
            window: 512,
            cwnd_initial: 300,
            congestion: false,
            ..Config::datagram()
        };
        let mut s: Sender<u32> = Sender::new(cfg, now);
        let mut r: Receiver<u32> = Receiver::new(cfg);
        for i in 0..300 {
            s.send(i, now).unwrap();
        }
        // Packet 0 lost; 1..300 arrive.
        for seq in 1..300 {
            r.on_packet(seq, seq as u32, now);
        }
        let (ack, more) = r.make_wide_ack();
        assert_eq!((ack.next, ack.sack), (0, u64::MAX));
        let more = more.expect("packets past 64 arrived");
        // 65..=256 past the cumulative point: all three words full.
        assert_eq!(more, [u64::MAX; SACK_MORE]);
        // Narrow, the sender frees 64 of them; wide, 256.
        let mut narrow: Sender<u32> = Sender::new(cfg, now);
        for i in 0..300 {
            narrow.send(i, now).unwrap();
        }
        let later = now + Duration::from_micros(100);
        let mut freed = Vec::new();
        narrow.on_ack(&ack, later, &mut freed).unwrap();
        assert_eq!(freed.len(), 64);
        freed.clear();
        s.on_wide_ack(&ack, Some(&more), later, &mut freed).unwrap();
        assert_eq!(freed.len(), 256);
        assert!(freed.iter().all(|&p| (1..=256).contains(&p)), "{freed:?}");
        assert_eq!(s.in_flight(), 300 - 256);
        // A receiver with nothing past 64 says nothing more.
        let mut r: Receiver<u32> = Receiver::new(cfg);
        r.on_packet(3, 3, now);
        assert_eq!(r.make_wide_ack().1, None);
    }

    #[test]
    fn duplicates_are_dropped() {
        let now = t0();
        let mut r = Receiver::new(Config::default());
        assert_eq!(r.on_packet(1, 'b', now), Verdict::Accepted);
        assert_eq!(r.on_packet(1, 'b', now), Verdict::Duplicate);
        assert_eq!(r.on_packet(0, 'a', now), Verdict::Accepted);
        assert_eq!(r.on_packet(0, 'a', now), Verdict::Duplicate);
        assert_eq!(r.pop(), Some('a'));
        assert_eq!(r.pop(), Some('b'));
        assert_eq!(r.pop(), None);
        assert_eq!(r.stats().duplicates, 2);
    }

    /// A tiny deterministic generator for the simulated link.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    enum Pkt {
        Data(u64, u32),
        Ack(Ack, Option<SackMore>),
        Probe,
    }

    /// Run `n` packets through a link with the given impairments; return
    /// what the receiver delivered, in order, and the sender's stats.
    fn simulate(
        seed: u64,
        n: u32,
        loss: u64,
        reorder: u64,
        dup: u64,
        window: u32,
    ) -> (Vec<u32>, SenderStats) {
        let r = simulate_with(seed, n, loss, reorder, dup, window, None, None);
        (r.got, r.stats)
    }

    struct SimResult {
        got: Vec<u32>,
        stats: SenderStats,
        /// Virtual time the transfer took.
        took: Duration,
        /// The mean congestion window over the steps the receiver ran, after
        /// the first stall.
        mean_cwnd_late: f64,
    }

    /// [`simulate`], with the receiving side stalled (not running: packets
    /// wait for it, it acks nothing) for `stall.1` out of every `stall.0`
    /// of virtual time, as a process preempted on a busy host is; and
    /// taking at most `rx_per_step` data packets per 10 µs step (in arrival
    /// order), as a receiver with a finite packet rate does.
    #[allow(clippy::too_many_arguments)]
    fn simulate_with(
        seed: u64,
        n: u32,
        loss: u64,
        reorder: u64,
        dup: u64,
        window: u32,
        stall: Option<(Duration, Duration)>,
        rx_per_step: Option<usize>,
    ) -> SimResult {
        let cfg = Config {
            window,
            ..Config::default()
        };
        let (mut cwnd_sum, mut cwnd_steps) = (0u64, 0u64);
        let start = t0();
        let mut now = start;
        let mut rng = Lcg(seed);
        let mut s = Sender::new(cfg, now);
        let mut r = Receiver::new(cfg);
        // In flight: (deliver_at, packet, towards receiver?)
        let mut wire: Vec<(Instant, Pkt, bool)> = Vec::new();
        let mut fed = 0u32;
        let mut got = Vec::new();
        let mut freed = Vec::new();
        let lat = Duration::from_micros(50);
        let push = |wire: &mut Vec<(Instant, Pkt, bool)>,
                    rng: &mut Lcg,
                    now: Instant,
                    p: Pkt,
                    fwd: bool| {
            if rng.chance(loss) {
                return;
            }
            let extra = if rng.chance(reorder) {
                Duration::from_micros(rng.next() % 400)
            } else {
                Duration::ZERO
            };
            if rng.chance(dup) {
                let copy = match &p {
                    Pkt::Data(s, v) => Pkt::Data(*s, *v),
                    Pkt::Ack(a, m) => Pkt::Ack(*a, *m),
                    Pkt::Probe => Pkt::Probe,
                };
                wire.push((now + lat + extra + Duration::from_micros(7), copy, fwd));
            }
            wire.push((now + lat + extra, p, fwd));
        };
        for _step in 0..2_000_000 {
            if got.len() == n as usize && s.in_flight() == 0 {
                break;
            }
            // Sender side: new data while the window allows.
            while fed < n && s.can_send(now) {
                let seq = s.send(fed, now).unwrap();
                push(&mut wire, &mut rng, now, Pkt::Data(seq, fed), true);
                fed += 1;
            }
            let mut re = Vec::new();
            s.poll_retransmit(now, |seq, v| re.push((seq, *v)));
            for (seq, v) in re {
                push(&mut wire, &mut rng, now, Pkt::Data(seq, v), true);
            }
            if fed < n && s.probe_due(now) {
                s.probed(now);
                push(&mut wire, &mut rng, now, Pkt::Probe, true);
            }
            // Deliver what is due (nothing to a stalled receiver).
            let since = (now - start).as_nanos();
            let stalled =
                stall.is_some_and(|(every, len)| since % every.as_nanos() < len.as_nanos());
            if !stalled && stall.is_some_and(|(every, _)| since > every.as_nanos()) {
                cwnd_sum += u64::from(s.cwnd());
                cwnd_steps += 1;
            }
            let mut budget = rx_per_step.unwrap_or(usize::MAX);
            if rx_per_step.is_some() {
                // First come, first served.
                wire.sort_by_key(|w| w.0);
            }
            let mut i = 0;
            while i < wire.len() {
                let fwd = wire[i].2;
                if wire[i].0 <= now && !(fwd && (stalled || budget == 0)) {
                    if fwd {
                        budget -= 1;
                    }
                    let (_, p, _) = if rx_per_step.is_some() {
                        wire.remove(i)
                    } else {
                        wire.swap_remove(i)
                    };
                    match p {
                        Pkt::Data(seq, v) => {
                            r.on_packet(seq, v, now);
                        }
                        Pkt::Ack(a, m) => {
                            s.on_wide_ack(&a, m.as_ref(), now, &mut freed).unwrap();
                        }
                        Pkt::Probe => r.on_probe(),
                    }
                } else {
                    i += 1;
                }
            }
            if stalled {
                now += Duration::from_micros(10);
                continue;
            }
            // The consumer reads everything (sometimes late).
            if !rng.chance(20) {
                while let Some(v) = r.pop() {
                    got.push(v);
                }
            }
            if r.ack_due(now) {
                let (a, m) = r.make_wide_ack();
                push(&mut wire, &mut rng, now, Pkt::Ack(a, m), false);
            }
            now += Duration::from_micros(10);
        }
        while let Some(v) = r.pop() {
            got.push(v);
        }
        if got.len() != n as usize {
            eprintln!(
                "stuck after {:?}: srtt {:?} base {:?} sender in flight {} next {} cwnd {} rto {:?} limit {} deadline {:?} stats {:?}; receiver next {} ready {} window {}",
                now - start, s.srtt, s.base_rto,
                s.in_flight(),
                s.next_seq(),
                s.cwnd(),
                s.rto(),
                s.limit,
                s.next_deadline().map(|d| d.saturating_duration_since(now)),
                s.stats(),
                r.next_expected(),
                r.ready_len(),
                r.window()
            );
        }
        SimResult {
            got,
            stats: s.stats(),
            took: now - start,
            mean_cwnd_late: cwnd_sum as f64 / cwnd_steps.max(1) as f64,
        }
    }

    /// A receiver that stalls for longer than the retransmission timeout
    /// every few round trips (its agent preempted on a loaded host: here 10
    /// ms of every 15, taking 400 000 packets/s while it runs) loses
    /// nothing: the timeouts it causes are spurious. The D-SACKs of the
    /// needless retransmissions undo each reduction, so the congestion
    /// window does not stay pinned near its minimum, as it did on the dpdk
    /// transport under load (64 MiB moving at ~200 packets/s, the sender
    /// timing out; here the mean window was 15 packets without the undo).
    #[test]
    fn spurious_timeouts_from_a_stalling_receiver_are_undone() {
        let n = 20_000;
        let stall = (Duration::from_millis(15), Duration::from_millis(10));
        let r = simulate_with(7, n, 0, 0, 0, 512, Some(stall), Some(4));
        assert_eq!(r.got, (0..n).collect::<Vec<_>>());
        let st = r.stats;
        eprintln!(
            "took {:?} (virtual), mean cwnd after the first stall {:.1}, {st:?}",
            r.took, r.mean_cwnd_late
        );
        assert!(st.timeouts > 0, "the stalls outlast the timeout: {st:?}");
        // Nothing was lost: the receiver saw retransmissions twice and said so.
        assert!(st.spurious > 0 && st.undone > 0, "{st:?}");
        assert!(
            r.mean_cwnd_late >= 128.0,
            "the window stays open across stalls: mean {:.1}, {st:?}",
            r.mean_cwnd_late
        );
    }

    /// A timeout whose retransmission proves needless restores the window and
    /// threshold from before it.
    #[test]
    fn a_dsack_undoes_a_spurious_timeout() {
        let t = t0();
        let cfg = Config::default();
        let mut s = Sender::new(cfg, t);
        let mut r = Receiver::new(cfg);
        let mut freed = Vec::new();
        // Open the window with a few clean round trips of 100 µs.
        let mut now = t;
        let mut v = 0u32;
        for _ in 0..6 {
            while s.can_send(now) {
                let seq = s.send(v, now).unwrap();
                r.on_packet(seq, v, now);
                v += 1;
            }
            while r.pop().is_some() {}
            now += Duration::from_micros(100);
            s.on_ack(&r.make_ack(), now, &mut freed).unwrap();
        }
        let (cwnd, ssthresh) = (s.cwnd(), s.ssthresh());
        assert!(cwnd > 16, "{cwnd}");
        // One more packet arrives, but the receiver answers only after 30 ms.
        let seq = s.send(v, now).unwrap();
        assert_eq!(r.on_packet(seq, v, now), Verdict::Accepted);
        let sent = now;
        let mut resent = Vec::new();
        while s.stats().timeouts == 0 {
            now += Duration::from_micros(100);
            s.poll_retransmit(now, |q, _| resent.push(q));
            assert!(now < sent + Duration::from_millis(30));
        }
        // Two tail loss probes first (they change no window), then the timeout.
        assert_eq!(resent, vec![seq, seq, seq]);
        assert_eq!(s.stats().tail_probes, 2);
        assert_eq!(s.cwnd(), 4, "a timeout restarts slow start");
        now = sent + Duration::from_millis(30);
        s.on_ack(&r.make_ack(), now, &mut freed).unwrap();
        assert_eq!(s.in_flight(), 0);
        // The retransmission arrives too: a duplicate, reported alone.
        assert_eq!(r.on_packet(seq, v, now), Verdict::Duplicate);
        assert!(r.ack_due(now));
        assert_eq!(r.make_piggyback_ack().dsack, None, "no room on data");
        assert!(r.ack_due(now), "the D-SACK is still due");
        let ack = r.make_ack();
        assert_eq!(ack.dsack, Some(seq));
        assert_eq!(r.make_ack().dsack, None, "reported once");
        s.on_ack(&ack, now + Duration::from_micros(50), &mut freed)
            .unwrap();
        assert_eq!((s.cwnd(), s.ssthresh()), (cwnd, ssthresh), "undone");
        assert_eq!((s.stats().spurious, s.stats().undone), (1, 1));
        // A D-SACK for a packet never resent changes nothing.
        s.on_ack(
            &Ack {
                dsack: Some(0),
                ..ack
            },
            now,
            &mut freed,
        )
        .unwrap();
        assert_eq!(s.stats().spurious, 1);
    }

    #[test]
    fn clean_link_needs_no_retransmission() {
        let (got, st) = simulate(1, 5000, 0, 0, 0, 64);
        assert_eq!(got, (0..5000).collect::<Vec<_>>());
        assert_eq!(st.retransmits, 0);
    }

    #[test]
    fn impaired_link_delivers_everything_once_in_order() {
        // The issue's impairment: 5 % loss, 25 % reordering, 2 % duplicates
        // (corruption is the transport's checksum's business: a corrupt
        // packet is a lost one here).
        let (got, st) = simulate(42, 20_000, 6, 25, 2, 128);
        assert_eq!(got.len(), 20_000);
        assert!(got.iter().enumerate().all(|(i, v)| *v == i as u32));
        assert!(st.retransmits > 0);
    }

    /// A seeded, virtual-time network simulator in the manner of smoltcp's
    /// `tests/netsim.rs`: a link of a given rate and delay, with a finite
    /// queue in front of it (tail drop: real congestion), and impairments on
    /// the way out of it (loss, corruption as loss, duplication, and
    /// reordering that holds a packet back behind 1-3 later ones for at most
    /// 2 ms), in both directions. Time jumps from event to event.
    mod netsim {
        use super::*;

        /// Percentages of packets impaired (per direction).
        #[derive(Clone, Copy, Debug)]
        pub struct Impair {
            pub loss: u64,
            pub reorder: u64,
            pub dup: u64,
            pub corrupt: u64,
        }

        /// How long a reordered packet is held back at most.
        const HOLD_MAX: Duration = Duration::from_millis(2);

        /// One direction of the link.
        struct Pipe<P> {
            /// Time on the wire per packet (the link's rate).
            ser: Duration,
            delay: Duration,
            /// Packets the queue in front of the wire holds at most.
            queue: u32,
            imp: Impair,
            rng: Lcg,
            /// When the wire is free again.
            busy_until: Instant,
            /// On the wire, in arrival order (FIFO).
            flying: VecDeque<(Instant, P)>,
            /// Held back: (released at the latest, later packets still to
            /// pass, packet).
            held: Vec<(Instant, u32, P)>,
            /// Arrived, for the far end.
            out: VecDeque<P>,
            tail_drops: u64,
            impaired: u64,
        }

        impl<P: Clone> Pipe<P> {
            fn new(
                ser: Duration,
                delay: Duration,
                queue: u32,
                imp: Impair,
                seed: u64,
                now: Instant,
            ) -> Self {
                Pipe {
                    ser,
                    delay,
                    queue,
                    imp,
                    rng: Lcg(seed),
                    busy_until: now,
                    flying: VecDeque::new(),
                    held: Vec::new(),
                    out: VecDeque::new(),
                    tail_drops: 0,
                    impaired: 0,
                }
            }

            fn send(&mut self, now: Instant, p: P) {
                let start = self.busy_until.max(now);
                if start.saturating_duration_since(now) >= self.ser * self.queue {
                    self.tail_drops += 1;
                    return;
                }
                self.busy_until = start + self.ser;
                self.flying.push_back((self.busy_until + self.delay, p));
            }

            fn arrive(&mut self, now: Instant, p: P) {
                // A packet that passes releases those held behind it.
                let mut i = 0;
                while i < self.held.len() {
                    self.held[i].1 -= 1;
                    if self.held[i].1 == 0 {
                        let (_, _, h) = self.held.swap_remove(i);
                        self.out.push_back(h);
                    } else {
                        i += 1;
                    }
                }
                let _ = now;
                self.out.push_back(p);
            }

            fn step(&mut self, now: Instant) {
                while self.flying.front().is_some_and(|f| f.0 <= now) {
                    let Some((_, p)) = self.flying.pop_front() else {
                        break;
                    };
                    let imp = self.imp;
                    if self.rng.chance(imp.loss) || self.rng.chance(imp.corrupt) {
                        self.impaired += 1;
                        continue;
                    }
                    if self.rng.chance(imp.dup) {
                        self.impaired += 1;
                        self.out.push_back(p.clone());
                    }
                    if self.rng.chance(imp.reorder) {
                        self.impaired += 1;
                        let behind = 1 + (self.rng.next() % 3) as u32;
                        self.held.push((now + HOLD_MAX, behind, p));
                        continue;
                    }
                    self.arrive(now, p);
                }
                let mut i = 0;
                while i < self.held.len() {
                    if self.held[i].0 <= now {
                        let (_, _, h) = self.held.swap_remove(i);
                        self.out.push_back(h);
                    } else {
                        i += 1;
                    }
                }
            }

            /// Packets waiting in the queue in front of the wire now.
            fn backlog(&self, now: Instant) -> u32 {
                (self.busy_until.saturating_duration_since(now).as_nanos()
                    / self.ser.as_nanos().max(1)) as u32
            }

            fn next_event(&self) -> Option<Instant> {
                let f = self.flying.front().map(|f| f.0);
                let h = self.held.iter().map(|h| h.0).min();
                f.into_iter().chain(h).min()
            }
        }

        #[derive(Clone)]
        enum Pkt {
            Data(u64, u32),
            Ack(Ack, Option<SackMore>),
            Probe,
        }

        /// A link and a transfer over it.
        #[derive(Clone, Copy, Debug)]
        pub struct Run {
            pub seed: u64,
            /// Packets to move.
            pub n: u32,
            /// Data packets per second the link carries.
            pub rate: u32,
            /// One way.
            pub delay: Duration,
            /// The queue in front of the link, packets.
            pub queue: u32,
            pub imp: Impair,
            pub model: Model,
            /// Each end descheduled now and then, as an agent on a shared
            /// core is: for up to the first (uniform), every up to the
            /// second (uniform) in between. While descheduled it neither
            /// sends nor takes in packets (they wait for it).
            pub stalls: Option<(Duration, Duration)>,
        }

        /// When one end is descheduled.
        struct Stalls {
            rng: Lcg,
            len: Duration,
            gap: Duration,
            /// Descheduled until...
            until: Instant,
            /// ...and next from.
            next: Instant,
        }

        impl Stalls {
            fn new(seed: u64, len: Duration, gap: Duration, now: Instant) -> Self {
                let mut s = Stalls {
                    rng: Lcg(seed),
                    len,
                    gap,
                    until: now,
                    next: now,
                };
                s.next = now + s.pick(gap);
                s
            }

            fn pick(&mut self, d: Duration) -> Duration {
                Duration::from_nanos(self.rng.next() % (d.as_nanos() as u64).max(1))
            }

            /// Whether the end is descheduled at `now`.
            fn off(&mut self, now: Instant) -> bool {
                if now >= self.next {
                    self.until = now + self.pick(self.len);
                    self.next = self.until + self.pick(self.gap);
                }
                now < self.until
            }

            fn next_event(&self, now: Instant) -> Instant {
                if now < self.until {
                    self.until
                } else {
                    self.next
                }
            }
        }

        pub struct Outcome {
            pub got: Vec<u32>,
            pub stats: SenderStats,
            pub took: Duration,
            /// Goodput over the link's capacity.
            pub share: f64,
            pub tail_drops: u64,
            /// Data packets that went onto the link.
            pub wire_packets: u64,
            /// Data packets the receiver already had.
            pub rx_duplicates: u64,
            pub impaired: u64,
            /// The mean of the data queue's length, in packets, sampled at
            /// every step.
            pub mean_queue: f64,
        }

        pub fn run(r: Run) -> Outcome {
            let cfg = Config {
                model: r.model,
                ..Config::datagram()
            };
            let start = t0();
            let mut now = start;
            let ser = Duration::from_secs(1) / r.rate;
            // Acks are small: a twentieth of a data packet's time on the wire.
            let mut fwd: Pipe<Pkt> = Pipe::new(ser, r.delay, r.queue, r.imp, r.seed, now);
            let mut rev: Pipe<Pkt> =
                Pipe::new(ser / 20, r.delay, r.queue, r.imp, r.seed ^ 0x5eed, now);
            let mut s: Sender<u32> = Sender::new(cfg, now);
            let mut rx: Receiver<u32> = Receiver::new(cfg);
            let mut stalls = r.stalls.map(|(len, gap)| {
                (
                    Stalls::new(r.seed ^ 0x57a1, len, gap, now),
                    Stalls::new(r.seed ^ 0x57a2, len, gap, now),
                )
            });
            // Arrived, waiting for a descheduled end.
            let (mut at_rx, mut at_tx) = (VecDeque::new(), VecDeque::new());
            let (mut fed, mut got, mut freed) = (0u32, Vec::new(), Vec::new());
            let mut last_rx = now;
            let trace = std::env::var_os("NETSIM_TRACE").is_some();
            let mut next_trace = now;
            // (Queue length × time, time.)
            let (mut q_sum, mut q_n, mut wire_packets) = (0f64, 0f64, 0u64);
            for _ in 0..5_000_000 {
                if got.len() == r.n as usize && s.in_flight() == 0 {
                    break;
                }
                let (tx_off, rx_off) = match stalls.as_mut() {
                    Some((a, b)) => (a.off(now), b.off(now)),
                    None => (false, false),
                };
                // Sender: due resends, then new data while the window allows.
                if !tx_off && s.next_deadline().is_some_and(|d| d <= now) {
                    let mut re = Vec::new();
                    s.poll_retransmit(now, |seq, v| re.push((seq, *v)));
                    for (seq, v) in re {
                        fwd.send(now, Pkt::Data(seq, v));
                        wire_packets += 1;
                    }
                }
                while !tx_off && fed < r.n && s.can_send(now) {
                    let seq = s.send(fed, now).unwrap();
                    fwd.send(now, Pkt::Data(seq, fed));
                    wire_packets += 1;
                    fed += 1;
                }
                s.account(now, fed < r.n);
                if trace && now >= next_trace {
                    next_trace = now
                        + Duration::from_micros(
                            std::env::var("TRACE_US").map_or(5000, |v| v.parse().unwrap()),
                        );
                    eprintln!(
                        "t {:?} inflight {} cwnd {} q {} {} {:?}",
                        now - start,
                        s.in_flight(),
                        s.cwnd(),
                        fwd.backlog(now),
                        s.rate.as_ref().map(|m| m.describe()).unwrap_or_default(),
                        s.stats()
                    );
                }
                if !tx_off && fed < r.n && s.probe_due(now) {
                    s.probed(now);
                    fwd.send(now, Pkt::Probe);
                }
                fwd.step(now);
                rev.step(now);
                at_rx.extend(fwd.out.drain(..));
                at_tx.extend(rev.out.drain(..));
                while let Some(p) = (!rx_off).then(|| at_rx.pop_front()).flatten() {
                    match p {
                        Pkt::Data(seq, v) => {
                            rx.on_packet(seq, v, now);
                        }
                        Pkt::Probe => rx.on_probe(),
                        Pkt::Ack(..) => unreachable!(),
                    }
                }
                while let Some(v) = rx.pop() {
                    got.push(v);
                    last_rx = now;
                }
                if !rx_off && rx.ack_due(now) {
                    let (a, m) = rx.make_wide_ack();
                    rev.send(now, Pkt::Ack(a, m));
                }
                while let Some(p) = (!tx_off).then(|| at_tx.pop_front()).flatten() {
                    if let Pkt::Ack(a, m) = p {
                        s.on_wide_ack(&a, m.as_ref(), now, &mut freed).unwrap();
                    }
                }
                if !tx_off && fed < r.n && s.can_send(now) {
                    continue; // more to send at this instant
                }
                let mut next = now + Duration::from_millis(1);
                let ends = stalls
                    .as_ref()
                    .map(|(a, b)| (a.next_event(now), b.next_event(now)));
                for t in [
                    fwd.next_event(),
                    rev.next_event(),
                    s.next_deadline(),
                    rx.ack_deadline(now),
                    ends.map(|e| e.0),
                    ends.map(|e| e.1),
                ]
                .into_iter()
                .flatten()
                {
                    next = next.min(t);
                }
                let next = next.max(now + Duration::from_micros(1));
                let dt = (next - now).as_secs_f64();
                q_sum += f64::from(fwd.backlog(now)) * dt;
                q_n += dt;
                now = next;
            }
            let took = last_rx - start;
            let ideal = ser * r.n;
            Outcome {
                got,
                stats: s.stats(),
                took,
                share: ideal.as_secs_f64() / took.as_secs_f64().max(1e-9),
                tail_drops: fwd.tail_drops + rev.tail_drops,
                wire_packets,
                rx_duplicates: rx.stats().duplicates,
                impaired: fwd.impaired + rev.impaired,
                mean_queue: q_sum / q_n.max(1e-9),
            }
        }
    }

    /// One netsim transfer: everything delivered once and in order (else
    /// the test fails), the outcome printed.
    fn netsim_cell(name: &str, r: netsim::Run) -> netsim::Outcome {
        let o = netsim::run(r);
        let (n, seed, model) = (r.n, r.seed, r.model);
        assert_eq!(
            o.got.len(),
            n as usize,
            "{name} {model:?} seed {seed}: delivered"
        );
        assert!(
            o.got.iter().enumerate().all(|(i, v)| *v == i as u32),
            "{name} {model:?} seed {seed}: once and in order"
        );
        let st = o.stats;
        eprintln!(
            "netsim {name:>14} {:>4} seed {seed}: goodput {:5.1} % of the link in {:?}; \
             tail drops {} ({:.2} % of {} sent on the link), mean queue {:.1}, impaired {}, \
             duplicates at the receiver {}; \
             resent {} (fast {}, timeouts {}) spurious {} undone {} probes {} widened {} \
             random {} cuts {}",
            format!("{model:?}"),
            o.share * 100.0,
            o.took,
            o.tail_drops,
            o.tail_drops as f64 * 100.0 / o.wire_packets.max(1) as f64,
            o.wire_packets,
            o.mean_queue,
            o.impaired,
            o.rx_duplicates,
            st.retransmits,
            st.fast_retransmits,
            st.timeouts,
            st.spurious,
            st.undone,
            st.tail_probes,
            st.reorder_widened,
            st.random_losses,
            st.congestion_cuts,
        );
        o
    }

    fn imp(loss: u64, reorder: u64, dup: u64, corrupt: u64) -> netsim::Impair {
        netsim::Impair {
            loss,
            reorder,
            dup,
            corrupt,
        }
    }

    /// The issue's settings (loss / reorder / dup / corrupt, %, both ways)
    /// and clean, over a 100 000 packets/s link with 25 µs each way and a
    /// queue of 100 packets in front of it, for both congestion models:
    /// every packet delivered once and in order, and a goodput share of the
    /// link's capacity at least the model's bound. Before RACK and the loss
    /// test (duplicate acks, every loss halving the window) it moved 12-35 %
    /// at the impaired settings and 5-98 % at pure reordering; with RACK by
    /// time alone and an ack every 16 packets 77-98 %; with the count rule,
    /// the measured reordering window and an ack every second packet 72-97 %
    /// (AIMD; the rate model's figures and the history are in
    /// bench/RESULTS.md).
    #[test]
    fn netsim_matrix_delivers_all_in_order_at_a_goodput_floor() {
        // (name, impairment, AIMD's floor, the rate model's floor)
        let cells: [(&str, netsim::Impair, f64, f64); 5] = [
            ("clean", imp(0, 0, 0, 0), 0.90, 0.97),
            ("1/25/2/1", imp(1, 25, 2, 1), 0.85, 0.90),
            ("5/25/2/1", imp(5, 25, 2, 1), 0.70, 0.60),
            ("0/50/0/0", imp(0, 50, 0, 0), 0.85, 0.95),
            ("5/0/0/0", imp(5, 0, 0, 0), 0.85, 0.90),
        ];
        let mut failed = Vec::new();
        for (name, imp, aimd, rate) in cells {
            for (model, floor) in [(Model::Aimd, aimd), (Model::Rate, rate)] {
                for seed in [1u64, 2, 3] {
                    let o = netsim_cell(
                        name,
                        netsim::Run {
                            seed,
                            n: 20_000,
                            rate: 100_000,
                            delay: Duration::from_micros(25),
                            queue: 100,
                            imp,
                            model,
                            stalls: None,
                        },
                    );
                    if o.share < floor {
                        failed.push(format!(
                            "{name} {model:?} seed {seed}: {:.1} %",
                            o.share * 100.0
                        ));
                    }
                }
            }
        }
        assert!(failed.is_empty(), "below the goodput floor: {failed:?}");
    }

    /// A real bottleneck with random loss on top: 100 000 packets/s, 250 µs
    /// each way (the path holds 50 packets: less than the ack bitmap's 64,
    /// past which the sender is blind to what arrived behind a hole), 1 % or
    /// 5 % of the packets lost at random both ways, and a queue in front of
    /// the link that is shallow (10 packets: a sender that pushes twice the
    /// path, as the rate model's window would without its loss bound,
    /// overflows it every round) or deep (1000 packets: one that never
    /// backs off fills it). The rate model must move a floor of the link
    /// AND keep the queue's overflow (tail drops, under 5 %) and its mean
    /// length (under 4 paths) bounded. With its loss bound switched off it
    /// moved 22-26 % at the 5 % shallow cell with 6.5-8.6 % tail drops and
    /// fails here (at 1 % the bound hardly acts); one that read every random
    /// loss as congestion would move a fraction of the link. AIMD is run
    /// too, for the record, at a goodput floor only: its Veno test sees no
    /// queue in a 10-packet buffer and never cuts (22-34 %).
    #[test]
    fn netsim_bottleneck_with_random_loss_bounds_the_queue() {
        let mut failed = Vec::new();
        for (name, queue, loss) in [
            ("shallow 1 %", 10, 1),
            ("shallow 5 %", 10, 5),
            ("deep 1 %", 1000, 1),
        ] {
            for model in [Model::Aimd, Model::Rate] {
                for seed in [1u64, 2, 3] {
                    let o = netsim_cell(
                        name,
                        netsim::Run {
                            seed,
                            n: 30_000,
                            rate: 100_000,
                            delay: Duration::from_micros(250),
                            queue,
                            imp: imp(loss, 0, 0, 0),
                            model,
                            stalls: None,
                        },
                    );
                    let drops = o.tail_drops as f64 / o.wire_packets.max(1) as f64;
                    let floor = match (model, queue) {
                        (Model::Aimd, _) => 0.2,
                        (Model::Rate, 10) => 0.4,
                        (Model::Rate, _) => 0.85,
                    };
                    if o.share < floor {
                        failed.push(format!(
                            "{name} {model:?} seed {seed}: goodput {:.3}",
                            o.share
                        ));
                    }
                    if model == Model::Rate && drops > 0.05 {
                        failed.push(format!(
                            "{name} {model:?} seed {seed}: tail drops {drops:.3}"
                        ));
                    }
                    if model == Model::Rate && o.mean_queue > 200.0 {
                        failed.push(format!(
                            "{name} {model:?} seed {seed}: mean queue {:.1}",
                            o.mean_queue
                        ));
                    }
                }
            }
        }
        assert!(failed.is_empty(), "{failed:?}");
    }

    /// One netsim transfer with a state line every `TRACE_US` µs (virtual),
    /// for tuning: `NETSIM_TRACE=1 TRACE_US=1000 TL=5 TR=25 cargo test --lib
    /// netsim_trace_one -- --ignored --nocapture` (T*: seed, count, delay
    /// µs, queue, loss/reorder/dup/corrupt %, TAIMD=1 for the old model).
    #[test]
    #[ignore]
    fn netsim_trace_one() {
        let var = |k: &str, d: u64| std::env::var(k).map_or(d, |v| v.parse().unwrap());
        let model = if std::env::var_os("TAIMD").is_some() {
            Model::Aimd
        } else {
            Model::Rate
        };
        netsim_cell(
            "trace",
            netsim::Run {
                seed: var("TSEED", 1),
                n: var("TN", 30000) as u32,
                rate: 100_000,
                delay: Duration::from_micros(var("TD", 500)),
                queue: var("TQ", 20) as u32,
                imp: imp(var("TL", 1), var("TR", 0), var("TDUP", 0), var("TC", 0)),
                model,
                stalls: (var("TSTALL_US", 0) > 0).then(|| {
                    (
                        Duration::from_micros(var("TSTALL_US", 0)),
                        Duration::from_micros(var("TGAP_US", 600)),
                    )
                }),
            },
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_impairment_delivers_everything_once_in_order(
            seed in any::<u64>(),
            n in 1u32..1500,
            loss in 0u64..30,
            reorder in 0u64..50,
            dup in 0u64..20,
            window in 1u32..200,
        ) {
            let (got, _) = simulate(seed, n, loss, reorder, dup, window);
            prop_assert_eq!(got, (0..n).collect::<Vec<_>>());
        }

        /// Packets in any order, repeated, far out of window: the receiver
        /// never panics, hands out each sequence number once and in order,
        /// acks only what arrived, offers no more than its window and
        /// reports as duplicates only packets it had.
        #[test]
        fn receiver_invariants_hold_for_any_arrivals(
            arrivals in proptest::collection::vec((0u64..300, any::<bool>(), any::<bool>()), 0..400),
            window in 1u32..128,
        ) {
            let cfg = Config { window, ..Config::default() };
            let mut r = Receiver::new(cfg);
            let now = t0();
            let mut seen = std::collections::BTreeSet::new();
            let mut popped = 0u64;
            for (seq, read, ack) in arrivals {
                let v = r.on_packet(seq, seq, now);
                match v {
                    Verdict::Accepted => prop_assert!(seen.insert(seq), "{seq} accepted twice"),
                    Verdict::Duplicate => prop_assert!(seen.contains(&seq) || seq < r.next_expected()),
                    Verdict::OutOfWindow => prop_assert!(seq >= r.next_expected()),
                }
                if read {
                    while let Some(x) = r.pop() {
                        prop_assert_eq!(x, popped, "out of order or repeated");
                        popped += 1;
                    }
                }
                prop_assert!(r.window() <= window);
                prop_assert_eq!(popped + r.ready_len() as u64, r.next_expected());
                if ack {
                    let a = if seq % 2 == 0 { r.make_ack() } else { r.make_piggyback_ack() };
                    prop_assert_eq!(a.next, r.next_expected());
                    prop_assert!(a.window <= window);
                    for i in 0..64 {
                        if a.sack & (1 << i) != 0 {
                            prop_assert!(seen.contains(&(a.next + 1 + i)), "sacked {} never came", a.next + 1 + i);
                        }
                    }
                    if let Some(d) = a.dsack {
                        prop_assert!(seen.contains(&d), "D-SACK of {d}, never received");
                    }
                }
            }
        }

        /// Acks (with any sack bits, windows and D-SACKs, stale or bogus),
        /// sends, and retransmission timers in any interleaving: the sender
        /// never panics, frees each item at most once, keeps in flight what
        /// it did not free, keeps its window and timeout in bounds, and has a
        /// deadline exactly while something is outstanding.
        #[test]
        fn sender_invariants_hold_for_any_acks(
            steps in proptest::collection::vec(
                (0u8..4, any::<u64>(), any::<u64>(), any::<u32>(), proptest::option::of(any::<u64>()), 0u64..50_000),
                0..200,
            ),
            window in 1u32..64,
        ) {
            let cfg = Config { window, ..Config::default() };
            let start = t0();
            let mut now = start;
            let mut s = Sender::new(cfg, now);
            let mut next_item = 0u64;
            let mut freed = Vec::new();
            for (op, a, b, w, d, dt) in steps {
                now += Duration::from_micros(dt);
                match op {
                    0 => {
                        while s.can_send(now) && next_item < 1000 {
                            s.send(next_item, now).unwrap();
                            next_item += 1;
                        }
                    }
                    1 => {
                        // Plausible acks: within what was sent.
                        let sent = s.next_seq();
                        let next = if sent == 0 { 0 } else { a % (sent + 1) };
                        let dsack = d.map(|x| if sent == 0 { x } else { x % sent });
                        let _ = s.on_ack(&Ack { next, sack: b, window: w % (2 * window), dsack }, now, &mut freed);
                    }
                    2 => {
                        let _ = s.on_ack(&Ack { next: a, sack: b, window: w, dsack: d }, now, &mut freed);
                    }
                    _ => s.poll_retransmit(now, |seq, item| assert_eq!(seq, *item)),
                }
                let mut f = freed.clone();
                f.sort();
                f.dedup();
                prop_assert_eq!(f.len(), freed.len(), "an item was freed twice");
                prop_assert_eq!(freed.len() + s.in_flight(), next_item as usize);
                prop_assert!(s.cwnd() >= 1 && s.cwnd() <= window, "cwnd {}", s.cwnd());
                prop_assert!(s.rto() >= cfg.rto_min && s.rto() <= cfg.rto_max, "rto {:?}", s.rto());
                prop_assert_eq!(s.next_deadline().is_some(), s.in_flight() > 0);
                prop_assert_eq!(s.stats().acked as usize, freed.len());
            }
        }

        #[test]
        fn arbitrary_acks_never_panic(acks in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u32>()), 0..50)) {
            let now = t0();
            let mut s = Sender::new(Config::default(), now);
            let mut sent = 0;
            let mut freed = Vec::new();
            for (next, sack, window) in acks {
                while sent < 100 && s.send(sent, now).is_ok() {
                    sent += 1;
                }
                let _ = s.on_ack(&Ack { next: next % 200, sack, window, dsack: None }, now, &mut freed);
                s.poll_retransmit(now + Duration::from_secs(1), |_, _| {});
            }
            let n = freed.len();
            freed.sort();
            freed.dedup();
            prop_assert_eq!(n, freed.len(), "an item was freed twice");
            prop_assert_eq!(freed.len() + s.in_flight(), s.stats().sent as usize);
        }
    }
}
