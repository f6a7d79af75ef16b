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
//! - a peer's queries are answered at the same rate per asking peer, the
//!   rest dropped (counted, logged at debug): a hostile peer cannot make an
//!   agent send a reply storm; every answer is [`NodeSummary::LEN`] bytes;
//! - both frames are acted on only from a peer whose session is up (after
//!   the authenticated handshake and the `Resume`), else the link is dropped
//!   as malformed; an answer to no query of ours is dropped.
//!
//! Neither frame is retained: a query or answer lost with its link shows as
//! "no answer". The answer time the asking agent measures (query sent →
//! answer handled) crosses both agents' poll loops and the link both ways.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::proto::CtlReply;
use crate::transport::Out;
use crate::wire::jobstat::{parse_query, NodeSummary, NO_NODE};
use crate::wire::{control_frame, FrameKind};

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
/// Resends a node must have (and twice the median) to be named: a
/// datagram transport resends a few tail-loss probes on a clean link.
const RESENT_FLOOR: u64 = 8;
/// Control connections that may wait for one query's reply.
pub const MAX_WAITERS: usize = 64;

/// A token bucket: [`BURST`] at once, one more per [`REFILL`].
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    since: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: BURST,
            since: now,
        }
    }

    /// Take a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let gained = now.saturating_duration_since(self.since).as_nanos() / REFILL.as_nanos();
        if gained > 0 {
            self.tokens = (self.tokens as u128 + gained).min(BURST as u128) as u32;
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
        now.saturating_duration_since(self.since) >= REFILL * BURST
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
            .take(now);
        if !ok {
            self.dropped += 1;
        }
        ok
    }
}

/// One node's row of the job view.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRow {
    /// Node id.
    pub node: u32,
    /// `local` (the agent asked), `answered`, or `none`.
    pub answer: String,
    /// Why there is no answer (`none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Query sent → answer handled, ms (`answered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_ms: Option<f64>,
    /// What the node said of itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<NodeSummary>,
}

/// What `wyvern stat --job` prints: every node of the job, as the agent
/// asked saw it within the query's time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobView {
    /// The node whose agent asked.
    pub asked_by: u32,
    /// Nodes in the job.
    pub nodes: u32,
    /// Nodes that answered (the asking one included).
    pub answered: u32,
    /// How long the agent waited at most, ms.
    pub timeout_ms: u64,
    /// How long it waited, ms.
    pub elapsed_ms: f64,
    /// One row per node, in node order.
    pub rows: Vec<JobRow>,
    /// Sums over the rows that answered (`node`: [`NO_NODE`]; `nodes`: the
    /// rows summed; `uptime_ms`: the shortest; `slow_node`/`slow_backlog`:
    /// the largest backlog of any node towards any peer).
    pub total: NodeSummary,
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
            return Err("stat query before Resume".into());
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
            return Err("stat reply before Resume".into());
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
            let backlog = (self.transport.queued(p.node) + p.unacked_bytes()) as u64;
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

/// The job total of the rows that answered.
fn total(rows: &[JobRow]) -> NodeSummary {
    let mut t = NodeSummary {
        node: NO_NODE,
        slow_node: NO_NODE,
        uptime_ms: u64::MAX,
        ..NodeSummary::default()
    };
    for s in rows.iter().filter_map(|r| r.summary.as_ref()) {
        t.nodes += 1;
        t.uptime_ms = t.uptime_ms.min(s.uptime_ms);
        t.rounds += s.rounds;
        t.cpu_ms += s.cpu_ms;
        t.links_up += s.links_up;
        t.links_connecting += s.links_connecting;
        t.links_disconnected += s.links_disconnected;
        t.links_lost += s.links_lost;
        t.links_idle += s.links_idle;
        t.clients += s.clients;
        t.msgs_tx += s.msgs_tx;
        t.bytes_tx += s.bytes_tx;
        t.msgs_rx += s.msgs_rx;
        t.bytes_rx += s.bytes_rx;
        t.local_msgs += s.local_msgs;
        t.errors += s.errors;
        t.losses += s.losses;
        t.malformed += s.malformed;
        t.resumes += s.resumes;
        t.frames_resent += s.frames_resent;
        t.packets_resent += s.packets_resent;
        t.rx_stalls += s.rx_stalls;
        t.parked_msgs += s.parked_msgs;
        if s.slow_backlog > t.slow_backlog {
            t.slow_backlog = s.slow_backlog;
            t.slow_node = s.slow_node;
        }
    }
    if t.nodes == 0 {
        t.uptime_ms = 0;
    }
    t
}

/// `1234567` as `1.2M` (counts) or, with `bytes`, `1.2 MiB`.
fn short(v: u64, bytes: bool) -> String {
    let (k, units) = if bytes {
        (1024.0, [" B", " KiB", " MiB", " GiB", " TiB"])
    } else {
        (1000.0, ["", "k", "M", "G", "T"])
    };
    let mut x = v as f64;
    let mut u = 0;
    while x >= k && u + 1 < units.len() {
        x /= k;
        u += 1;
    }
    if u == 0 {
        format!("{v}{}", units[0])
    } else {
        format!("{x:.1}{}", units[u])
    }
}

impl JobView {
    /// The nodes to look at first: no answer; the slowest answer (at least
    /// 1 ms and twice the median); failed sends, lost links and malformed
    /// frames, and resends (at least 16), where a node has at least twice
    /// the median (so
    /// the one lost link every node counts when one node died is no
    /// outlier); the largest backlog; links not up. Per row: its notes, each
    /// a short tag (the table's note column) and the detail.
    pub fn notes(&self) -> Vec<Vec<(&'static str, String)>> {
        let mut notes = vec![Vec::new(); self.rows.len()];
        let answered = || {
            self.rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| Some((i, r.summary?)))
        };
        let mut times: Vec<(usize, f64)> = (self.rows.iter().enumerate())
            .filter_map(|(i, r)| Some((i, r.answer_ms?)))
            .collect();
        times.sort_by(|a, b| a.1.total_cmp(&b.1));
        if times.len() >= 2 {
            let (i, slowest) = times[times.len() - 1];
            let median = times[(times.len() - 1) / 2].1;
            if slowest >= 1.0 && slowest >= 2.0 * median {
                notes[i].push((
                    "slowest",
                    format!("slowest answer ({slowest:.1} ms, median {median:.1})"),
                ));
            }
        }
        let trouble: Vec<u64> = answered().map(|(_, s)| s.trouble()).collect();
        let resent: Vec<u64> = answered().map(|(_, s)| s.resent()).collect();
        let (trouble_median, resent_median) = (lower_median(trouble), lower_median(resent));
        for (i, s) in answered() {
            let t = s.trouble();
            if t > 0 && t >= 2 * trouble_median {
                notes[i].push((
                    "trouble",
                    format!(
                        "trouble: {} failed sends, {} links lost, {} malformed (median of all: {trouble_median})",
                        s.errors, s.losses, s.malformed,
                    ),
                ));
            }
            let r = s.resent();
            if r >= 2 * resent_median.max(RESENT_FLOOR) {
                notes[i].push(("resent", format!("resends: {r} (median {resent_median})")));
            }
        }
        if let Some((i, s)) = answered()
            .max_by_key(|(_, s)| s.slow_backlog)
            .filter(|(_, s)| s.slow_backlog > 0)
        {
            notes[i].push((
                "backlog",
                format!(
                    "largest backlog ({} towards node {})",
                    short(s.slow_backlog, true),
                    s.slow_node
                ),
            ));
        }
        for (i, s) in answered() {
            let not_up = s.links_connecting + s.links_disconnected + s.links_lost;
            if not_up > 0 {
                notes[i].push(("links", format!("links not up: {not_up}")));
            }
        }
        for (i, r) in self.rows.iter().enumerate() {
            if let Some(why) = &r.why {
                notes[i].insert(0, ("NO ANSWER", format!("no answer: {why}")));
            }
        }
        notes
    }

    /// A human table: one row per node, the job total, and the nodes to
    /// look at first. Columns as wide as their widest cell; no escape codes.
    pub fn render(&self) -> String {
        let notes = self.notes();
        let head = [
            "node", "answer", "uptime", "links", "msgs tx", "msgs rx", "bytes tx", "bytes rx",
            "errors", "losses", "bad", "resent", "backlog", "cpu s", "note",
        ];
        let cells = |s: &NodeSummary| -> Vec<String> {
            vec![
                format!(
                    "{}/{}",
                    s.links_up,
                    s.links_up
                        + s.links_connecting
                        + s.links_disconnected
                        + s.links_lost
                        + s.links_idle
                ),
                short(s.msgs_tx, false),
                short(s.msgs_rx, false),
                short(s.bytes_tx, true),
                short(s.bytes_rx, true),
                s.errors.to_string(),
                s.losses.to_string(),
                s.malformed.to_string(),
                s.resent().to_string(),
                short(s.slow_backlog, true),
                format!("{:.1}", s.cpu_ms as f64 / 1e3),
            ]
        };
        let mut table: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
        for (r, n) in self.rows.iter().zip(&notes) {
            let mut row = vec![r.node.to_string()];
            row.push(match (r.answer.as_str(), r.answer_ms) {
                (_, Some(ms)) => format!("{ms:.1} ms"),
                (a, None) => a.to_string(),
            });
            match &r.summary {
                Some(s) => {
                    row.push(human_ms(s.uptime_ms));
                    row.extend(cells(s));
                }
                None => row.extend(std::iter::repeat_n("-".to_string(), 12)),
            }
            row.push(n.iter().map(|x| x.0).collect::<Vec<_>>().join(","));
            table.push(row);
        }
        let t = &self.total;
        let mut total = vec![
            "total".to_string(),
            format!("{}/{}", self.answered, self.nodes),
            String::new(),
        ];
        total.extend(cells(t));
        total.push(String::new());
        table.push(total);
        let mut widths = vec![0; head.len()];
        for row in &table {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "job of {} nodes, asked by node {}: {} answered in {:.1} ms (waiting at most {} ms)",
            self.nodes, self.asked_by, self.answered, self.elapsed_ms, self.timeout_ms
        );
        for row in &table {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c);
                } else {
                    let _ = write!(line, "{c:<w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let look: Vec<String> = (self.rows.iter().zip(&notes))
            .filter(|(_, n)| !n.is_empty())
            .map(|(r, n)| {
                let d: Vec<&str> = n.iter().map(|x| x.1.as_str()).collect();
                format!("  node {}: {}", r.node, d.join("; "))
            })
            .collect();
        if look.is_empty() {
            out.push_str(
                "nothing stands out: every node answered, no link down or lost, no failed \
                 sends or malformed frames\n",
            );
        } else {
            out.push_str("look first at:\n");
            for l in look {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }
}

/// The lower median (0 of nothing).
fn lower_median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

/// `93784000` ms as `1d2h`, `3h26m`, `26m40s`, `12.3s`.
fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{:.1}s", ms as f64 / 1e3),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
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

    fn summary(node: u32) -> NodeSummary {
        NodeSummary {
            node,
            nodes: 4,
            uptime_ms: 1000 + node as u64,
            links_up: 3,
            msgs_tx: 10,
            msgs_rx: 10,
            slow_node: NO_NODE,
            ..NodeSummary::default()
        }
    }

    fn row(node: u32, ms: Option<f64>, s: Option<NodeSummary>) -> JobRow {
        JobRow {
            node,
            answer: if s.is_none() { "none" } else { "answered" }.into(),
            why: s
                .is_none()
                .then(|| "link lost (peer timed out)".to_string()),
            answer_ms: ms,
            summary: s,
        }
    }

    /// Four nodes: 1 slow to answer and with a backlog, 2 with errors, 3
    /// silent. Each outlier is named once, on its own row, and the total
    /// adds up the nodes that answered.
    #[test]
    fn the_outliers_stand_out_and_the_total_adds_up() {
        let mut slow = summary(1);
        slow.slow_node = 2;
        slow.slow_backlog = 3 << 20;
        let mut bad = summary(2);
        bad.errors = 7;
        bad.links_up = 2;
        bad.links_lost = 1;
        let rows = vec![
            JobRow {
                answer: "local".into(),
                ..row(0, None, Some(summary(0)))
            },
            row(1, Some(40.0), Some(slow)),
            row(2, Some(0.3), Some(bad)),
            row(3, None, None),
        ];
        let t = total(&rows);
        assert_eq!(
            (t.nodes, t.msgs_tx, t.errors, t.links_up, t.links_lost),
            (3, 30, 7, 8, 1)
        );
        assert_eq!(
            (t.uptime_ms, t.slow_node, t.slow_backlog),
            (1000, 2, 3 << 20)
        );
        let v = JobView {
            asked_by: 0,
            nodes: 4,
            answered: 3,
            timeout_ms: 2000,
            elapsed_ms: 2000.0,
            rows,
            total: t,
        };
        let notes = v.notes();
        let tags = |i: usize| notes[i].iter().map(|n| n.0).collect::<Vec<_>>();
        assert_eq!(tags(0), Vec::<&str>::new());
        assert_eq!(tags(1), vec!["slowest", "backlog"]);
        assert_eq!(tags(2), vec!["trouble", "links"]);
        assert_eq!(tags(3), vec!["NO ANSWER"]);
        let text = v.render();
        assert!(
            text.starts_with("job of 4 nodes, asked by node 0: 3 answered"),
            "{text}"
        );
        assert!(
            text.contains("node 3: no answer: link lost (peer timed out)"),
            "{text}"
        );
        assert!(
            text.contains("node 1: slowest answer (40.0 ms, median 0.3)"),
            "{text}"
        );
        assert!(
            text.contains("largest backlog (3.0 MiB towards node 2)"),
            "{text}"
        );
        assert!(text.contains("node 2: trouble: 7 failed sends"), "{text}");
        let total_line = text.lines().find(|l| l.starts_with("total")).unwrap();
        assert!(total_line.contains("3/4"), "{text}");
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "no trailing blanks"
        );
        // Every row has as many columns as the header up to the notes.
        let row3 = text.lines().find(|l| l.starts_with("3 ")).unwrap();
        assert!(
            row3.contains("none") && row3.ends_with("NO ANSWER"),
            "{row3}"
        );
    }
}
