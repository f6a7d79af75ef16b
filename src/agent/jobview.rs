//! What `wyvern stat --job` shows: the rows an agent gathered
//! ([`super::jobstat`]), their total, the nodes that stand out, and the table.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::wire::jobstat::{NodeSummary, NO_NODE};

/// Resends a node must have (and twice the median) to be named: a
/// datagram transport resends a few tail-loss probes on a clean link.
const RESENT_FLOOR: u64 = 8;

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

/// The job total of the rows that answered.
pub(super) fn total(rows: &[JobRow]) -> NodeSummary {
    let mut t = NodeSummary {
        node: NO_NODE,
        slow_node: NO_NODE,
        uptime_ms: u64::MAX,
        ..NodeSummary::default()
    };
    for s in rows.iter().filter_map(|r| r.summary.as_ref()) {
        t.nodes += 1;
        t.uptime_ms = t.uptime_ms.min(s.uptime_ms);
        t.rounds = t.rounds.saturating_add(s.rounds);
        t.cpu_ms = t.cpu_ms.saturating_add(s.cpu_ms);
        t.links_up = t.links_up.saturating_add(s.links_up);
        t.links_connecting = t.links_connecting.saturating_add(s.links_connecting);
        t.links_disconnected = t.links_disconnected.saturating_add(s.links_disconnected);
        t.links_lost = t.links_lost.saturating_add(s.links_lost);
        t.links_idle = t.links_idle.saturating_add(s.links_idle);
        t.clients = t.clients.saturating_add(s.clients);
        t.msgs_tx = t.msgs_tx.saturating_add(s.msgs_tx);
        t.bytes_tx = t.bytes_tx.saturating_add(s.bytes_tx);
        t.msgs_rx = t.msgs_rx.saturating_add(s.msgs_rx);
        t.bytes_rx = t.bytes_rx.saturating_add(s.bytes_rx);
        t.local_msgs = t.local_msgs.saturating_add(s.local_msgs);
        t.errors = t.errors.saturating_add(s.errors);
        t.losses = t.losses.saturating_add(s.losses);
        t.malformed = t.malformed.saturating_add(s.malformed);
        t.resumes = t.resumes.saturating_add(s.resumes);
        t.frames_resent = t.frames_resent.saturating_add(s.frames_resent);
        t.packets_resent = t.packets_resent.saturating_add(s.packets_resent);
        t.rx_stalls = t.rx_stalls.saturating_add(s.rx_stalls);
        t.parked_msgs = t.parked_msgs.saturating_add(s.parked_msgs);
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
            if t > 0 && t >= trouble_median.saturating_mul(2) {
                notes[i].push((
                    "trouble",
                    format!(
                        "trouble: {} failed sends, {} links lost, {} malformed (median of all: {trouble_median})",
                        s.errors, s.losses, s.malformed,
                    ),
                ));
            }
            let r = s.resent();
            if r >= resent_median.max(RESENT_FLOOR).saturating_mul(2) {
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
            let not_up = s.links_not_up();
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
                format!("{}/{}", s.links_up, s.peers()),
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

    /// Whatever a peer claims (every count at its largest), the total and
    /// the table are made without overflow.
    #[test]
    fn the_largest_counts_do_not_overflow() {
        let mut big = NodeSummary {
            node: 1,
            nodes: 3,
            slow_node: 2,
            ..NodeSummary::default()
        };
        let b = big.to_bytes();
        let mut raw = b;
        for at in (16..NodeSummary::LEN).step_by(8) {
            if at != 168 {
                raw[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            }
        }
        big = NodeSummary::parse(&raw).unwrap();
        assert_eq!(big.links_up, u32::MAX);
        let rows = vec![
            row(0, None, Some(big)),
            row(1, Some(1.0), Some(big)),
            row(2, None, None),
        ];
        let t = total(&rows);
        assert_eq!((t.msgs_tx, t.links_up), (u64::MAX, u32::MAX));
        let v = JobView {
            asked_by: 0,
            nodes: 3,
            answered: 2,
            timeout_ms: 1,
            elapsed_ms: 1.0,
            rows,
            total: t,
        };
        assert!(v.render().contains("total"));
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
