//! The job-wide view (`wyvern stat --job`): an agent asks every peer for a
//! summary of itself over their authenticated links, gathers the answers for
//! a bounded time and replies to the client with one row per node.
//!
//! What a peer or a client can make the agent hold or send is bounded:
//! - one query in flight per agent; a client asking meanwhile joins it (at
//!   most [`MAX_WAITERS`] connections wait for its reply);
//! - queries start at most [`BURST`] at once and one per [`REFILL`] after
//!   (a local loop of `wyvern stat --job` cannot make the agent flood the
//!   job); the time a query waits is clamped to [`MIN_WAIT`]..[`MAX_WAIT`];
//! - a peer's queries are answered at the same rate per asking peer, and
//!   at most [`ALL_BURST`] at once and one per [`ALL_REFILL`] to all peers
//!   together, the rest dropped (counted, logged at debug): hostile peers
//!   cannot make an agent send a reply storm or spend its time summarising
//!   itself; every answer is [`NodeSummary::LEN`] bytes;
//! - both frames are acted on only from a peer whose session is up (after
//!   the authenticated handshake and the `Resume`; before it they are
//!   ignored); a malformed body, or an answer that names another node,
//!   drops the link as malformed; an answer to no query of ours is dropped.
//!
//! Neither frame is retained: a query or answer lost with its link shows as
//! "no answer". The answer time the asking agent measures (query sent →
//! answer handled) crosses both agents' poll loops and the link both ways.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::CtlReply;
use crate::transport::Out;
use crate::wire::jobstat::{parse_query, NodeSummary, NO_NODE};
use crate::wire::{control_frame, FrameKind};

use super::jobview::{total, JobRow, JobView};
use super::peers::PeerState;
use super::Agent;

/// Queries that may start (or be answered for one peer) at once.
pub const BURST: u32 = 4;
/// One more query per this long.
pub const REFILL: Duration = Duration::from_millis(250);
/// Shortest time a query waits for answers.
pub const MIN_WAIT: Duration = Duration::from_millis(50);
/// Longest time a query waits for answers (well below a client's 30 s
/// control timeout).
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Control connections that may wait for one query's reply.
pub const MAX_WAITERS: usize = 64;
/// Answers to all peers together: at most this many at once...
pub const ALL_BURST: u32 = 64;
/// ... and one more per this long (250 a second: a job's worth of askers
/// cannot make the agent spend its time summarising itself).
pub const ALL_REFILL: Duration = Duration::from_millis(4);

/// A token bucket: `burst` at once, one more per `refill`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    since: Instant,
    burst: u32,
    refill: Duration,
}

impl Bucket {
    /// [`BURST`] at once, one more per [`REFILL`].
    fn full(now: Instant) -> Bucket {
        Bucket::new(now, BURST, REFILL)
    }

    fn new(now: Instant, burst: u32, refill: Duration) -> Bucket {
        Bucket {
            tokens: burst,
            since: now,
            burst,
            refill,
        }
    }

    /// Take a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let gained = now.saturating_duration_since(self.since).as_nanos() / self.refill.as_nanos();
        if gained > 0 {
            self.tokens = (self.tokens as u128 + gained).min(self.burst as u128) as u32;
            self.since = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Whether it is full again (it can be forgotten).
    fn refilled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.refill * self.burst
    }
}

/// Where one node's row of the query in flight stands.
#[derive(Clone, Debug)]
enum Slot {
    /// This agent.
    Local,
    /// No link up to ask over yet (asked once it is up).
    Waiting,
    /// Asked at this time.
    Asked(Instant),
    /// Answered after this long.
    Answered(NodeSummary, Duration),
}

/// The query in flight.
#[derive(Debug)]
struct Query {
    id: u64,
    started: Instant,
    deadline: Instant,
    /// Control connections waiting for the reply.
    waiters: Vec<usize>,
    slots: Vec<Slot>,
    /// Rows not answered yet.
    pending: usize,
}

/// The agent's job-view state (a room: no I/O, time passed in).
#[derive(Debug, Default)]
pub(super) struct JobStat {
    query: Option<Query>,
    next_id: u64,
    /// Query starts (none before the first query).
    starts: Option<Bucket>,
    /// Per asking peer: its answers' budget (only peers that asked lately).
    answers: HashMap<u32, Bucket>,
    /// Answers to all peers together (none before the first).
    all_answers: Option<Bucket>,
    /// Peers' queries not answered (over their rate).
    dropped: u64,
}

impl JobStat {
    /// Control connection `idx` closed: no reply goes to it (its index may
    /// be given to a new connection).
    pub(super) fn forget(&mut self, idx: usize) {
        if let Some(q) = &mut self.query {
            q.waiters.retain(|&w| w != idx);
        }
    }

    /// Whether peer `node`'s query may be answered now.
    fn may_answer(&mut self, node: u32, now: Instant) -> bool {
        if self.answers.len() > 256 {
            self.answers.retain(|_, b| !b.refilled(now));
        }
        let ok = self
            .answers
            .entry(node)
            .or_insert_with(|| Bucket::full(now))
            .take(now)
            && self
                .all_answers
                .get_or_insert_with(|| Bucket::new(now, ALL_BURST, ALL_REFILL))
                .take(now);
        if !ok {
            self.dropped += 1;
        }
        ok
    }
}

impl Agent {
    /// A client asks for the job view (`wyvern stat --job`): join the query
    /// in flight or start one that waits at most `timeout_ms`.
    pub(super) fn job_query(&mut self, idx: usize, timeout_ms: u64) {
        let now = self.now;
        if let Some(q) = &mut self.jobstat.query {
            if !q.waiters.contains(&idx) {
                if q.waiters.len() >= MAX_WAITERS {
                    self.conns.reply_error(
                        &self.poller,
                        idx,
                        format!("{MAX_WAITERS} requests already wait for the job view; try again"),
                        now,
                    );
                    return;
                }
                q.waiters.push(idx);
            }
            return;
        }
        let js = &mut self.jobstat;
        if !js.starts.get_or_insert_with(|| Bucket::full(now)).take(now) {
            let msg = format!(
                "the agent starts at most {BURST} job views at once and one per {REFILL:?} after; try again"
            );
            self.conns.reply_error(&self.poller, idx, msg, now);
            return;
        }
        js.next_id += 1;
        let wait = Duration::from_millis(timeout_ms).clamp(MIN_WAIT, MAX_WAIT);
        let me = self.cfg.node_id as usize;
        let slots = (0..self.peers.len())
            .map(|j| if j == me { Slot::Local } else { Slot::Waiting })
            .collect();
        js.query = Some(Query {
            id: js.next_id,
            started: now,
            deadline: now + wait,
            waiters: vec![idx],
            slots,
            pending: self.peers.len().saturating_sub(1),
        });
        for j in 0..self.peers.len() {
            if j != me && self.peers[j].state() != &PeerState::Up {
                // On-demand links: every peer gets one, as `wyvern connect` does.
                self.want_peer(j);
            }
        }
        self.job_tick(now);
    }

    /// Every tick (and when a query starts): ask peers whose link came up;
    /// reply once every node answered or the time is up.
    pub(super) fn job_tick(&mut self, now: Instant) {
        let Some(q) = &mut self.jobstat.query else {
            return;
        };
        let me = self.cfg.node_id;
        for (j, slot) in q.slots.iter_mut().enumerate() {
            if matches!(slot, Slot::Waiting) && self.peers[j].state() == &PeerState::Up {
                let f = control_frame(FrameKind::StatQuery, me, &q.id.to_le_bytes());
                self.transport.push(j as u32, Out::bytes(f));
                *slot = Slot::Asked(now);
            }
        }
        // Peers declared lost cannot answer until they link again: once
        // only they are left, the view need not wait for them.
        let only_lost = q.slots.iter().enumerate().all(|(j, s)| {
            matches!(s, Slot::Local | Slot::Answered(..))
                || matches!(self.peers[j].state(), PeerState::Lost(_))
        });
        if only_lost || now >= q.deadline {
            self.job_reply(now);
        }
    }

    /// Peer `j` asks for our summary (a `StatQuery` body). Err: the frame is
    /// malformed (the link is dropped).
    pub(super) fn job_asked(&mut self, j: usize, body: &[u8]) -> Result<(), String> {
        let id = parse_query(body).map_err(|e| e.to_string())?;
        if self.peers[j].state() != &PeerState::Up {
            // (Not from an honest peer, whose Resume comes first; not acted on.)
            log::debug!("peer node {j}: a stat query before its Resume, ignored");
            return Ok(());
        }
        if !self.jobstat.may_answer(j as u32, self.now) {
            log::debug!(
                "peer node {j}: stat query over its rate, not answered ({} so far)",
                self.jobstat.dropped
            );
            return Ok(());
        }
        let mut s = self.job_summary();
        s.query = id;
        let f = control_frame(FrameKind::StatReply, self.cfg.node_id, &s.to_bytes());
        self.transport.push(j as u32, Out::bytes(f));
        Ok(())
    }

    /// Peer `j` answered (a `StatReply` body). Err: the frame is malformed
    /// (the link is dropped).
    pub(super) fn job_answered(&mut self, j: usize, body: &[u8]) -> Result<(), String> {
        let s = NodeSummary::parse(body).map_err(|e| e.to_string())?;
        if self.peers[j].state() != &PeerState::Up {
            log::debug!("peer node {j}: a stat reply before its Resume, ignored");
            return Ok(());
        }
        if s.node as usize != j || s.nodes as usize != self.peers.len() {
            return Err(format!(
                "stat reply for node {} of {} from node {j}",
                s.node, s.nodes
            ));
        }
        let now = self.now;
        let Some(q) = self.jobstat.query.as_mut().filter(|q| q.id == s.query) else {
            log::debug!("peer node {j}: a stat reply to no query in flight, dropped");
            return Ok(());
        };
        if let Slot::Asked(at) = q.slots[j] {
            q.slots[j] = Slot::Answered(s, now.saturating_duration_since(at));
            q.pending -= 1;
            if q.pending == 0 {
                self.job_reply(now);
            }
        }
        Ok(())
    }

    /// This agent's summary of itself (query id 0).
    fn job_summary(&mut self) -> NodeSummary {
        let mut s = NodeSummary {
            node: self.cfg.node_id,
            nodes: self.peers.len() as u32,
            uptime_ms: self.now.saturating_duration_since(self.start).as_millis() as u64,
            rounds: self.counters.rounds,
            cpu_ms: cpu_ms(),
            clients: self.clients.iter_mut().count() as u32,
            local_msgs: self.counters.local_msgs,
            parked_msgs: self.inbox.held_count() as u64,
            slow_node: NO_NODE,
            ..NodeSummary::default()
        };
        for p in &self.peers {
            match p.state() {
                PeerState::Local => continue,
                PeerState::Idle => s.links_idle += 1,
                PeerState::Connecting | PeerState::Resuming => s.links_connecting += 1,
                PeerState::Up => s.links_up += 1,
                PeerState::Disconnected(..) => s.links_disconnected += 1,
                PeerState::Lost(_) => s.links_lost += 1,
            }
            let c = &p.counters;
            s.msgs_tx += c.msgs_tx;
            s.bytes_tx += c.bytes_tx;
            s.msgs_rx += c.msgs_rx;
            s.bytes_rx += c.bytes_rx;
            s.errors += c.errors;
            s.losses += c.losses;
            s.malformed += c.malformed;
            s.resumes += c.resumes;
            s.frames_resent += c.frames_resent;
            s.rx_stalls += c.rx_stalls;
            let backlog = (self.transport.link(p.node).queued + p.unacked_bytes()) as u64;
            if backlog > s.slow_backlog {
                s.slow_backlog = backlog;
                s.slow_node = p.node;
            }
        }
        s.packets_resent = self
            .transport
            .stats()
            .counters
            .iter()
            .find(|(k, _)| *k == "packets_resent")
            .map_or(0, |&(_, v)| v);
        s
    }

    /// The query in flight is over: every waiting connection gets the view.
    fn job_reply(&mut self, now: Instant) {
        let Some(q) = self.jobstat.query.take() else {
            return;
        };
        let mine = self.job_summary();
        let rows: Vec<JobRow> = q
            .slots
            .iter()
            .enumerate()
            .map(|(j, slot)| {
                let (answer, why, ms, summary) = match slot {
                    Slot::Local => ("local", None, None, Some(mine)),
                    Slot::Answered(s, d) => {
                        ("answered", None, Some(d.as_secs_f64() * 1e3), Some(*s))
                    }
                    Slot::Waiting => ("none", Some(no_link(self.peers[j].state())), None, None),
                    Slot::Asked(_) => {
                        let why = match self.peers[j].state() {
                            PeerState::Up => format!(
                                "asked, no answer within {} ms",
                                (q.deadline - q.started).as_millis()
                            ),
                            st => format!("asked, then the link went {}", st.name()),
                        };
                        ("none", Some(why), None, None)
                    }
                };
                JobRow {
                    node: j as u32,
                    answer: answer.into(),
                    why,
                    answer_ms: ms,
                    summary,
                }
            })
            .collect();
        let view = JobView {
            asked_by: self.cfg.node_id,
            nodes: self.peers.len() as u32,
            answered: rows.iter().filter(|r| r.summary.is_some()).count() as u32,
            timeout_ms: (q.deadline - q.started).as_millis() as u64,
            elapsed_ms: now.saturating_duration_since(q.started).as_secs_f64() * 1e3,
            total: total(&rows),
            rows,
        };
        let rep = CtlReply::JobStat(Box::new(view));
        for idx in q.waiters {
            self.conns.reply(&self.poller, idx, &rep, Vec::new(), now);
        }
    }
}

/// Why a peer whose link never came up during the query did not answer.
fn no_link(st: &PeerState) -> String {
    match st {
        PeerState::Lost(why) => format!("link lost ({why})"),
        PeerState::Disconnected(_, why) => format!("link down ({why})"),
        st => format!("no link ({})", st.name()),
    }
}

/// CPU time of this process (user + system), ms.
fn cpu_ms() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| {
        let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1000 + t.tv_usec() as u64 / 1000;
        ms(u.user_time()) + ms(u.system_time())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::full(t0);
        for _ in 0..BURST {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0 + REFILL / 2));
        assert!(b.take(t0 + REFILL));
        assert!(!b.take(t0 + REFILL));
        // A long pause refills to the burst, no more.
        let later = t0 + REFILL * 100;
        for _ in 0..BURST {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
    }

    #[test]
    fn a_peer_past_its_rate_is_not_answered_and_others_still_are() {
        let t0 = Instant::now();
        let mut js = JobStat::default();
        let answered = (0..100).filter(|_| js.may_answer(5, t0)).count();
        assert_eq!(answered, BURST as usize);
        assert_eq!(js.dropped, 100 - BURST as u64);
        assert!(js.may_answer(6, t0), "another peer has its own budget");
        // All peers together: at most the global burst at once.
        let mut js = JobStat::default();
        let all = (0..1000u32).filter(|&n| js.may_answer(n, t0)).count();
        assert_eq!(all, ALL_BURST as usize);
        assert!(js.may_answer(2000, t0 + ALL_REFILL));
        // The map of askers stays bounded by the peers that asked lately.
        for n in 0..1000 {
            js.may_answer(n, t0 + REFILL * (BURST * 2 + n));
        }
        assert!(
            js.answers.len() <= 257 + BURST as usize * 2,
            "{}",
            js.answers.len()
        );
    }

    #[test]
    fn a_closed_connection_gets_no_reply() {
        let now = Instant::now();
        let mut js = JobStat {
            query: Some(Query {
                id: 1,
                started: now,
                deadline: now,
                waiters: vec![3, 4],
                slots: vec![],
                pending: 0,
            }),
            ..JobStat::default()
        };
        js.forget(3);
        assert_eq!(js.query.unwrap().waiters, vec![4]);
    }
}
