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
}

impl Snapshot {
    /// A human table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "node {} of {} | pool {} MiB on {} | blocks {} / {} MiB free | idle {} | up {:.1} s | rounds {} | sleeps {} | local msgs {} | parked {} ({} KiB) | evicted {}",
            self.node,
            self.nodes,
            self.pool_bytes >> 20,
            self.backing,
            self.blocks_free >> 20,
            self.blocks_total >> 20,
            self.idle,
            self.uptime_s,
            self.rounds,
            self.sleeps,
            self.local_msgs,
            self.parked_msgs,
            self.parked_bytes >> 10,
            self.clients_evicted
        );
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
        let _ = writeln!(
            s,
            "\n{:<5} {:<22} {:<5} {:<12} {:>10} {:>12} {:>9} {:>10} {:>12} {:>9} {:>6} {:>10} {:>10} {:>6} {:>6} {:>7}",
            "peer", "addr", "via", "state", "msgs_tx", "bytes_tx", "frames_tx", "msgs_rx", "bytes_rx", "frames_rx", "agg", "queued", "unacked", "errors", "malf", "resumes"
        );
        for p in &self.peers {
            let c = &p.counters;
            let _ = writeln!(
                s,
                "{:<5} {:<22} {:<5} {:<12} {:>10} {:>12} {:>9} {:>10} {:>12} {:>9} {:>6.1} {:>10} {:>10} {:>6} {:>6} {:>7}",
                p.node,
                p.addr,
                p.transport,
                p.state,
                c.msgs_tx,
                c.bytes_tx,
                c.frames_tx,
                c.msgs_rx,
                c.bytes_rx,
                c.frames_rx,
                p.aggregation,
                p.queued_bytes,
                p.unacked_bytes,
                c.errors,
                c.malformed,
                c.resumes
            );
        }
        let _ = writeln!(
            s,
            "\n{:<5} {:<8} {:<16} {:<20} {:>10} {:>10} {:>7} {:>9} {:>7}",
            "slot",
            "pid",
            "name",
            "endpoints",
            "submitted",
            "delivered",
            "errors",
            "sub_used",
            "blocks"
        );
        for c in &self.clients {
            let eps: Vec<String> = c.endpoints.iter().map(|e| e.to_string()).collect();
            let _ = writeln!(
                s,
                "{:<5} {:<8} {:<16} {:<20} {:>10} {:>10} {:>7} {:>9} {:>7}",
                c.slot,
                c.pid,
                c.name,
                eps.join(","),
                c.submitted,
                c.delivered,
                c.errors,
                c.sub_ring_used,
                c.blocks
            );
        }
        s
    }
}
