//! Counters the agent keeps, and the snapshot `wyvern stat` prints.

use serde::{Deserialize, Serialize};

/// Counters of one peer link.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerCounters {
    /// Messages sent (whole messages, not chunks).
    pub msgs_tx: u64,
    /// Payload bytes sent.
    pub bytes_tx: u64,
    /// Frames written.
    pub frames_tx: u64,
    /// Messages received.
    pub msgs_rx: u64,
    /// Payload bytes received.
    pub bytes_rx: u64,
    /// Of those, bytes the transport read straight into their pool block
    /// (large chunks: no copy through the frame buffer).
    pub bytes_rx_direct: u64,
    /// Frames read.
    pub frames_rx: u64,
    /// Malformed frames or records (the connection was closed for each).
    pub malformed: u64,
    /// Sends that failed (peer lost, unknown endpoint at the peer, ...).
    pub errors: u64,
    /// Times the link was lost.
    pub losses: u64,
    /// Times this peer's frames began to wait for a full receive ring or a
    /// full pool (backpressure towards the peer).
    pub rx_stalls: u64,
    /// Broken connections resumed without loss.
    pub resumes: u64,
    /// Frames sent again on resumed connections.
    pub frames_resent: u64,
    /// Acks and Nacks from this peer that matched no send made to it, or
    /// found the sender's completion backlog full: dropped.
    #[serde(default)]
    pub replies_dropped: u64,
    /// Times the link was closed for idleness (`link_idle_ms`; made again
    /// by the next message).
    #[serde(default)]
    pub idle_closes: u64,
}

/// One peer as `wyvern stat` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerSnapshot {
    /// Node id.
    pub node: u32,
    /// Address.
    pub addr: String,
    /// Transport in use.
    pub transport: String,
    /// Link state.
    pub state: String,
    /// Counters.
    pub counters: PeerCounters,
    /// Messages per frame sent.
    pub aggregation: f64,
    /// Bytes queued to go out.
    pub queued_bytes: u64,
    /// Bytes of frames sent and not yet acknowledged by the peer (kept to
    /// be sent again if the connection breaks).
    pub unacked_bytes: u64,
    /// Bytes of the buffer the link's incoming stream is read into (256 KiB
    /// on a busy link, 16 KiB on an idle one, 0 on one never heard from).
    #[serde(default)]
    pub rx_buffer_bytes: u64,
    /// Pool block bytes reserved for this peer's large messages being
    /// reassembled (with `rx_delivery_bytes`, at most `peer_rx_bytes`; see
    /// docs/security.md).
    #[serde(default)]
    pub rx_reassembly_bytes: u64,
    /// Pool block bytes of this peer's finished messages waiting for a
    /// receiver's ring or for their endpoint to open (with
    /// `rx_reassembly_bytes`, at most `peer_rx_bytes`).
    #[serde(default)]
    pub rx_delivery_bytes: u64,
    /// The largest packet the link sends, where it is made of packets (udp,
    /// dpdk: the smaller of this node's and the peer's); 0 otherwise.
    #[serde(default)]
    pub packet_bytes: u64,
}

/// One client as `wyvern stat` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientSnapshot {
    /// Pool slot.
    pub slot: u32,
    /// Process id.
    pub pid: u32,
    /// Name the client gave.
    pub name: String,
    /// Open endpoint ids.
    pub endpoints: Vec<u32>,
    /// Messages submitted.
    pub submitted: u64,
    /// Messages deposited into its receive rings.
    pub delivered: u64,
    /// Bad requests seen from it.
    pub errors: u64,
    /// Slots in use in its submission ring.
    pub sub_ring_used: u64,
    /// Blocks it holds.
    pub blocks: u64,
}

/// One degraded path, as `wyvern stat` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degradation {
    /// What runs degraded, a short stable name (`hugepages`, `spin`,
    /// `peer_auth`, `hybrid_fallback`, `pool_guard`, `cores`).
    pub what: String,
    /// Why, as found.
    pub why: String,
    /// What would mend it.
    pub fix: String,
}

/// Everything `wyvern stat` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// This node.
    pub node: u32,
    /// Nodes in the job.
    pub nodes: u32,
    /// Pool backing.
    pub backing: String,
    /// Pool bytes.
    pub pool_bytes: u64,
    /// Block region bytes free.
    pub blocks_free: u64,
    /// Block region bytes in all.
    pub blocks_total: u64,
    /// Idle policy.
    pub idle: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Poll rounds since start.
    pub rounds: u64,
    /// Times the agent went to sleep (adaptive).
    pub sleeps: u64,
    /// Times the spinning polling thread was preempted (another thread wanted
    /// its core; the spin policy only).
    #[serde(default)]
    pub preempted: u64,
    /// Rounds that found work, by where they found it (`clients`: client
    /// submissions; `links_tx`: frames or chunks written to peers;
    /// `transport`: the transport's own polling; `events`: a peer link's
    /// descriptor ready; `parked`: held messages delivered; `rx`: received
    /// frames processed; `control`: the control socket, a client's bell or
    /// the agent's doorbell ready). An adaptive agent sleeps only after rounds without work:
    /// these say what kept it awake.
    #[serde(default)]
    pub busy_rounds: std::collections::BTreeMap<String, u64>,
    /// The peers by the state of their link (`up`: open; `idle`: never
    /// linked and `closed`: closed for idleness, on-demand links;
    /// `connecting`, `resuming`, `disconnected`, `lost`).
    #[serde(default)]
    pub links: std::collections::BTreeMap<String, u64>,
    /// Messages delivered node-locally.
    pub local_msgs: u64,
    /// Clients detached for misbehaving.
    pub clients_evicted: u64,
    /// Departed clients whose unsent sends were dropped early because every
    /// client slot was taken and a live client asked to attach.
    #[serde(default)]
    pub clients_departed_reclaimed: u64,
    /// Pool pages a client punched out (fallocate PUNCH_HOLE) that could not
    /// be faulted back in: the agent holds a private copy and no longer
    /// shares them (their client slots are retired, their blocks quarantined).
    #[serde(default)]
    pub pool_pages_damaged: u64,
    /// Peers' messages held for full receive rings or endpoints not open yet.
    pub parked_msgs: u64,
    /// Bytes they take (of `overflow_bytes`).
    pub parked_bytes: u64,
    /// Peers.
    pub peers: Vec<PeerSnapshot>,
    /// The transport's own counters (datagram transports: packets damaged,
    /// foreign, stale, sent again, duplicates dropped).
    #[serde(default)]
    pub transport: std::collections::BTreeMap<String, u64>,
    /// The transport's facts that are not counts (the dpdk transport:
    /// `dpdk_tx_path`, "copy" or "extbuf").
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub transport_info: std::collections::BTreeMap<String, String>,
    /// Attached clients.
    pub clients: Vec<ClientSnapshot>,
    /// What runs degraded (normal pages for hugepages, a spinning thread on
    /// a shared core, peers not authenticated, links moved to tcp ...), with
    /// why and the fix; empty when the agent got everything it asked for.
    #[serde(default)]
    pub degraded: Vec<Degradation>,
}

impl Snapshot {
    /// A human table of the totals since the agent started.
    pub fn render(&self) -> String {
        self.render_since(None)
    }

    /// A human table: the totals since the agent started and, given an
    /// earlier snapshot of the same agent, the rates per second between the
    /// two (over the agent's own clock: the difference of `uptime_s`). A
    /// counter that went down (another agent at the same socket) shows `-`.
    /// Columns are as wide as their widest cell; no trailing blanks, no
    /// escape codes.
    pub fn render_since(&self, prev: Option<&Snapshot>) -> String {
        use std::fmt::Write;
        let dt = prev
            .map(|p| self.uptime_s - p.uptime_s)
            .filter(|d| *d > 0.0 && d.is_finite());
        let prev = prev.filter(|_| dt.is_some());
        let rate = |cur: u64, old: Option<u64>| -> Option<f64> {
            let (old, dt) = (old?, dt?);
            Some(cur.checked_sub(old)? as f64 / dt)
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "node {} of {} | up {} | pool {} MiB on {} | blocks {} / {} MiB free | idle {}",
            self.node,
            self.nodes,
            human_duration(self.uptime_s),
            self.pool_bytes >> 20,
            self.backing,
            self.blocks_free >> 20,
            self.blocks_total >> 20,
            self.idle,
        );
        for d in &self.degraded {
            let _ = writeln!(s, "DEGRADED {}: {}; fix: {}", d.what, d.why, d.fix);
        }
        let with_rate = |v: u64, old: Option<u64>| match (dt, rate(v, old)) {
            (Some(_), Some(r)) => format!("{v} ({}/s)", si(r)),
            (Some(_), None) => format!("{v} (-/s)"),
            (None, _) => v.to_string(),
        };
        let mut line = vec![
            format!("rounds {}", with_rate(self.rounds, prev.map(|p| p.rounds))),
            format!("sleeps {}", with_rate(self.sleeps, prev.map(|p| p.sleeps))),
            format!(
                "local msgs {}",
                with_rate(self.local_msgs, prev.map(|p| p.local_msgs))
            ),
            format!(
                "parked {} ({})",
                self.parked_msgs,
                iec(self.parked_bytes as f64)
            ),
            format!("evicted {}", self.clients_evicted),
        ];
        if self.clients_departed_reclaimed > 0 {
            line.push(format!(
                "departed reclaimed {}",
                self.clients_departed_reclaimed
            ));
        }
        if self.pool_pages_damaged > 0 {
            line.push(format!("pool pages damaged {}", self.pool_pages_damaged));
        }
        let _ = writeln!(s, "{}", line.join(" | "));
        if !self.links.is_empty() {
            let l: Vec<String> = self.links.iter().map(|(k, v)| format!("{v} {k}")).collect();
            let closes: u64 = self.peers.iter().map(|p| p.counters.idle_closes).sum();
            let _ = writeln!(
                s,
                "links: {} | closed for idleness {closes} times",
                l.join(", ")
            );
        }
        match dt {
            Some(d) => {
                let _ = writeln!(s, "rates: per second over the last {d:.1} s");
            }
            None => {
                let _ = writeln!(s, "totals since start (no rates: one sample)");
            }
        }
        if !self.transport.is_empty() {
            let t: Vec<String> = self
                .transport
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "transport: {}", t.join(" | "));
        }
        if !self.transport_info.is_empty() {
            let t: Vec<String> = self
                .transport_info
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "transport info: {}", t.join(" | "));
        }

        let rates = dt.is_some();
        let mut peers = Table::new(&[
            ("peer", L),
            ("addr", L),
            ("via", L),
            ("state", L),
            ("msgs_tx", R),
            ("tx_msg/s", R | RATE),
            ("bytes_tx", R),
            ("tx_rate", R | RATE),
            ("msgs_rx", R),
            ("rx_msg/s", R | RATE),
            ("bytes_rx", R),
            ("rx_rate", R | RATE),
            ("frames_tx", R),
            ("frames_rx", R),
            ("agg", R),
            ("queued", R),
            ("unacked", R),
            ("errors", R),
            ("malf", R),
            ("resumes", R),
        ]);
        for p in &self.peers {
            let c = &p.counters;
            let old = prev.and_then(|o| o.peers.iter().find(|q| q.node == p.node));
            let oc = |f: fn(&PeerCounters) -> u64| old.map(|o| f(&o.counters));
            let msg_rate =
                |cur: u64, f: fn(&PeerCounters) -> u64| rate(cur, oc(f)).map_or("-".into(), si);
            let byte_rate = |cur: u64, f: fn(&PeerCounters) -> u64| {
                rate(cur, oc(f)).map_or("-".into(), |r| format!("{}/s", iec(r)))
            };
            peers.row(vec![
                p.node.to_string(),
                p.addr.clone(),
                // A link made of packets shows its packet size ("dpdk/1500").
                match p.packet_bytes {
                    0 => p.transport.clone(),
                    n => format!("{}/{n}", p.transport),
                },
                p.state.clone(),
                c.msgs_tx.to_string(),
                msg_rate(c.msgs_tx, |c| c.msgs_tx),
                iec(c.bytes_tx as f64),
                byte_rate(c.bytes_tx, |c| c.bytes_tx),
                c.msgs_rx.to_string(),
                msg_rate(c.msgs_rx, |c| c.msgs_rx),
                iec(c.bytes_rx as f64),
                byte_rate(c.bytes_rx, |c| c.bytes_rx),
                c.frames_tx.to_string(),
                c.frames_rx.to_string(),
                format!("{:.1}", p.aggregation),
                iec(p.queued_bytes as f64),
                iec(p.unacked_bytes as f64),
                c.errors.to_string(),
                c.malformed.to_string(),
                c.resumes.to_string(),
            ]);
        }
        s.push('\n');
        s.push_str(&peers.render(rates));

        let mut clients = Table::new(&[
            ("slot", L),
            ("pid", R),
            ("name", L),
            ("endpoints", L),
            ("submitted", R),
            ("sub/s", R | RATE),
            ("delivered", R),
            ("dlv/s", R | RATE),
            ("errors", R),
            ("sub_used", R),
            ("blocks", R),
        ]);
        for c in &self.clients {
            let old = prev.and_then(|o| {
                o.clients
                    .iter()
                    .find(|q| q.slot == c.slot && q.pid == c.pid)
            });
            let eps: Vec<String> = c.endpoints.iter().map(|e| e.to_string()).collect();
            clients.row(vec![
                c.slot.to_string(),
                c.pid.to_string(),
                c.name.clone(),
                if eps.is_empty() {
                    "-".into()
                } else {
                    eps.join(",")
                },
                c.submitted.to_string(),
                rate(c.submitted, old.map(|o| o.submitted)).map_or("-".into(), si),
                c.delivered.to_string(),
                rate(c.delivered, old.map(|o| o.delivered)).map_or("-".into(), si),
                c.errors.to_string(),
                c.sub_ring_used.to_string(),
                c.blocks.to_string(),
            ]);
        }
        s.push('\n');
        s.push_str(&clients.render(rates));
        s
    }
}

/// Column flags of a [`Table`]: right-aligned (numbers), a rate column
/// (shown only when there are rates).
const L: u8 = 0;
const R: u8 = 1;
const RATE: u8 = 2;

/// A text table whose columns are as wide as their widest cell.
struct Table {
    cols: Vec<(&'static str, u8)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(cols: &[(&'static str, u8)]) -> Table {
        Table {
            cols: cols.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.cols.len());
        self.rows.push(cells);
    }

    /// Header and rows, two blanks between columns, no trailing blanks.
    fn render(&self, rates: bool) -> String {
        let shown: Vec<usize> = (0..self.cols.len())
            .filter(|&i| rates || self.cols[i].1 & RATE == 0)
            .collect();
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.cols[i].0.len()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.cols.len()).map(width).collect();
        let line = |cells: &mut dyn Iterator<Item = (usize, &str)>| {
            let mut l = String::new();
            for (n, (i, cell)) in cells.enumerate() {
                if n > 0 {
                    l.push_str("  ");
                }
                let pad = widths[i].saturating_sub(cell.chars().count());
                if self.cols[i].1 & R != 0 {
                    l.extend(std::iter::repeat_n(' ', pad));
                    l.push_str(cell);
                } else {
                    l.push_str(cell);
                    l.extend(std::iter::repeat_n(' ', pad));
                }
            }
            let mut l = l.trim_end().to_string();
            l.push('\n');
            l
        };
        let mut out = line(&mut shown.iter().map(|&i| (i, self.cols[i].0)));
        for r in &self.rows {
            out.push_str(&line(&mut shown.iter().map(|&i| (i, r[i].as_str()))));
        }
        out
    }
}

/// A count per second with an SI prefix: `0.5`, `12`, `4.56k`, `12.3M`.
fn si(x: f64) -> String {
    let (v, p) = scale(x, 1000.0, &["", "k", "M", "G", "T"]);
    if p.is_empty() {
        if v < 10.0 && v.fract() != 0.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    } else {
        format!("{}{p}", three_digits(v))
    }
}

/// Bytes with a binary prefix: `512 B`, `1.50 KiB`, `12.3 MiB`, `192 GiB`.
fn iec(x: f64) -> String {
    let (v, p) = scale(x, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB"]);
    if p == "B" {
        format!("{v:.0} B")
    } else {
        format!("{} {p}", three_digits(v))
    }
}

fn scale(mut x: f64, step: f64, units: &[&'static str]) -> (f64, &'static str) {
    let mut i = 0;
    while x >= step && i + 1 < units.len() {
        x /= step;
        i += 1;
    }
    (x, units[i])
}

fn three_digits(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// `7.3s`, `5m06s`, `3h04m`, `2d03h`.
fn human_duration(s: f64) -> String {
    let t = s.max(0.0) as u64;
    if s < 60.0 {
        format!("{s:.1}s")
    } else if t < 3600 {
        format!("{}m{:02}s", t / 60, t % 60)
    } else if t < 86400 {
        format!("{}h{:02}m", t / 3600, t % 3600 / 60)
    } else {
        format!("{}d{:02}h", t / 86400, t % 86400 / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(uptime_s: f64, msgs: u64, bytes: u64) -> Snapshot {
        Snapshot {
            node: 0,
            nodes: 2,
            backing: "hugepages (2 MiB)".into(),
            pool_bytes: 236 << 20,
            blocks_free: 192 << 20,
            blocks_total: 192 << 20,
            idle: "adaptive".into(),
            uptime_s,
            rounds: 1000,
            sleeps: 10,
            preempted: 0,
            busy_rounds: Default::default(),
            links: Default::default(),
            local_msgs: 0,
            clients_evicted: 0,
            clients_departed_reclaimed: 0,
            pool_pages_damaged: 0,
            parked_msgs: 0,
            parked_bytes: 0,
            peers: vec![PeerSnapshot {
                node: 1,
                addr: "127.0.0.1:7471".into(),
                transport: "tcp".into(),
                state: "up".into(),
                counters: PeerCounters {
                    msgs_tx: msgs,
                    bytes_tx: bytes,
                    ..Default::default()
                },
                aggregation: 1.0,
                queued_bytes: 0,
                unacked_bytes: 0,
                rx_buffer_bytes: 0,
                rx_reassembly_bytes: 0,
                rx_delivery_bytes: 0,
                packet_bytes: 0,
            }],
            transport: Default::default(),
            transport_info: Default::default(),
            clients: vec![ClientSnapshot {
                slot: 0,
                pid: 4242,
                name: "a-rather-long-client-name".into(),
                endpoints: vec![1, 2],
                submitted: msgs,
                delivered: 0,
                errors: 0,
                sub_ring_used: 0,
                blocks: 0,
            }],
            degraded: Vec::new(),
        }
    }

    #[test]
    fn units_and_prefixes() {
        assert_eq!(si(0.5), "0.5");
        assert_eq!(si(12.0), "12");
        assert_eq!(si(4560.0), "4.56k");
        assert_eq!(si(12_300_000.0), "12.3M");
        assert_eq!(iec(512.0), "512 B");
        assert_eq!(iec(1536.0), "1.50 KiB");
        assert_eq!(iec((192u64 << 30) as f64), "192 GiB");
        assert_eq!(human_duration(7.34), "7.3s");
        assert_eq!(human_duration(306.0), "5m06s");
        assert_eq!(human_duration(11040.0), "3h04m");
    }

    #[test]
    fn rates_between_two_snapshots_and_aligned_columns() {
        let a = snap(10.0, 1000, 1 << 20);
        let b = snap(12.0, 201_000, 1 + (201 << 20));
        let t = b.render_since(Some(&a));
        assert!(t.contains("over the last 2.0 s"), "{t}");
        assert!(t.contains("100k"), "{t}"); // 200000 messages in 2 s
        assert!(t.contains("100 MiB/s"), "{t}"); // 200 MiB in 2 s
        assert!(t.contains("tx_rate") && t.contains("sub/s"), "{t}");
        // Header and rows of each table line up: every column ends where its header ends.
        for table in t.split("\n\n").skip(1) {
            let lines: Vec<&str> = table.lines().collect();
            assert!(lines.len() >= 2, "{t}");
            let head = lines[0];
            for w in ["msgs_tx", "tx_rate", "resumes", "submitted", "blocks"] {
                if let Some(i) = head.find(w) {
                    let end = i + w.len();
                    for l in &lines[1..] {
                        assert!(l.len() >= end, "{t}");
                        assert_ne!(&l[end - 1..end], " ", "column {w} not aligned:\n{t}");
                    }
                }
            }
            assert!(lines.iter().all(|l| !l.ends_with(' ')), "{t}");
        }
        // One snapshot: totals only, no rate columns.
        let t = b.render();
        assert!(t.contains("no rates") && !t.contains("tx_rate"), "{t}");
        assert!(t.contains("201 MiB"), "{t}");
        // A counter that went down (another agent): no rate, not a huge one.
        let t = a.render_since(Some(&snap(5.0, 5000, 0)));
        assert!(t.lines().any(|l| l.contains(" - ")), "{t}");
    }
}
