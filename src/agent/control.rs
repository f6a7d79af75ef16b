//! The agent's control requests (attach, endpoints, stat, the job view,
//! break-link) and its statistics. The connections themselves are
//! [`super::conns`]'s; the job view is [`super::jobstat`]'s.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{EpollEvent, EpollFlags};

use crate::proto::{CtlReply, CtlRequest};
use crate::shm::announce_awake;
use crate::shm::blocks::Owner;
use crate::shm::handoff::{LineReader, ReadOutcome};
use crate::transport::Close;

use super::clients::ClientState;
use super::conns::token;
use super::conns::{
    clean_name, send_once, CtlConn, Outbox, BELL_DRAIN, CTL_PAUSE, CTL_READS_PER_EVENT,
    MAX_CTL_CONNS, T_BELL,
};
use super::peers::PeerState;
use super::stats::{ClientSnapshot, PeerSnapshot, Snapshot};
use super::Agent;

/// The longest `wyvern break-link --hold-ms` (an hour).
const MAX_HOLD_MS: u64 = 3_600_000;

impl Agent {
    pub(super) fn accept_control(&mut self) {
        loop {
            let stream = match self.conns.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or memory: the
                    // listener stays readable, so stop watching it a while
                    // instead of spinning on it.
                    log::warn!(
                        "cannot accept control connections ({e}): not accepting for {CTL_PAUSE:?}"
                    );
                    self.conns.pause(&self.poller, self.now);
                    return;
                }
            };
            // Nothing the other side does may block the polling thread.
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let cred =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
            let allowed = match &cred {
                Ok(c) => {
                    c.uid() == self.uid
                        || c.uid() == 0
                        || self
                            .cfg
                            .allow_gid
                            .is_some_and(|g| c.gid() == g || in_group(c.pid(), g))
                }
                Err(_) => false,
            };
            if !allowed {
                let who = cred
                    .map(|c| format!("uid {} gid {}", c.uid(), c.gid()))
                    .unwrap_or_default();
                log::warn!("refusing a control connection from {who}");
                let owner = if self.uid == 0 {
                    "root".to_string()
                } else {
                    format!("uid {} and root", self.uid)
                };
                let may = match self.cfg.allow_gid {
                    Some(g) => format!("{owner} and members of group {g}"),
                    None => owner,
                };
                send_once(
                    &stream,
                    &CtlReply::Error {
                        message: format!(
                            "permission denied: {who} may not use this agent (only {may} may attach)"
                        ),
                    },
                );
                continue;
            }
            let guest = cred
                .as_ref()
                .is_ok_and(|c| c.uid() != self.uid && c.uid() != 0);
            let (live, guests) = self.conns.counts();
            // Room for every client slot whatever the pool's size; other
            // users of the allowed group share 3/4 of it, so they cannot
            // lock the agent's own user out.
            let cap = MAX_CTL_CONNS.max(self.cfg.pool.max_clients as usize + 64);
            let guest_cap = cap * 3 / 4;
            if guest && guests >= guest_cap {
                log::warn!(
                    "refusing a control connection from uid {}: other users hold {guests}, their share",
                    cred.as_ref().map(|c| c.uid()).unwrap_or(0)
                );
                send_once(
                    &stream,
                    &CtlReply::Error {
                        message: format!(
                            "users other than the agent's own hold {guest_cap} control connections, their share; try again later"
                        ),
                    },
                );
                continue;
            }
            if live >= cap {
                log::warn!(
                    "refusing a control connection: {live} are open, the most the agent serves at once"
                );
                send_once(
                    &stream,
                    &CtlReply::Error {
                        message: format!(
                            "the agent serves at most {cap} control connections at once; try again later"
                        ),
                    },
                );
                continue;
            }
            self.conns.add(
                &self.poller,
                CtlConn {
                    stream,
                    reader: LineReader::new(),
                    client: None,
                    out: Outbox::default(),
                    guest,
                    pid: cred.as_ref().map_or(0, |c| c.pid().max(0) as u32),
                },
            );
        }
    }

    /// Close control connection `idx`; the client attached over it leaves.
    fn close_conn(&mut self, idx: usize) {
        self.jobstat.forget(idx);
        if let Some(slot) = self.conns.close(&self.poller, idx) {
            self.start_closing(slot);
        }
    }

    /// Drop control connections that leave replies unread too long; resume
    /// accepting after a pause. Called every tick.
    pub(super) fn expire_conns(&mut self, now: Instant) {
        for idx in self.conns.expired(&self.poller, now) {
            self.close_conn(idx);
        }
        self.job_tick(now);
    }

    /// A client rang: take what it sent (the rings are polled every round;
    /// the byte only wakes a sleeping agent). Bounded per event; the bell is
    /// level-triggered, so what is left shows up again.
    pub(super) fn drain_bell(&mut self, slot: usize) {
        if let Some(c) = self.clients.get(slot as u32) {
            let mut b = [0u8; 16];
            for _ in 0..BELL_DRAIN {
                if c.bell.recv(&mut b).is_err() {
                    break;
                }
            }
        }
    }

    pub(super) fn serve_control(&mut self, idx: usize) {
        // Reads per event: what is left waits for the next round (the
        // socket stays readable), so one busy connection cannot hold the
        // polling thread.
        let mut reads = 0;
        loop {
            let Some(conn) = self.conns.get_mut(idx) else {
                return;
            };
            if !conn.out.is_empty() {
                match conn.out.flush(&conn.stream) {
                    Ok(true) => {}
                    Ok(false) => {
                        // Backpressure: nothing more is read from it until
                        // it has taken its replies.
                        self.conns.interest(&self.poller, idx);
                        return;
                    }
                    Err(e) => {
                        log::debug!("control connection: {e}");
                        self.close_conn(idx);
                        return;
                    }
                }
                self.conns.interest(&self.poller, idx);
                continue;
            }
            if conn.out.overflow {
                self.close_conn(idx);
                return;
            }
            let line = conn.reader.next_line();
            let Some((line, fds)) = line else {
                if reads == CTL_READS_PER_EVENT {
                    return;
                }
                reads += 1;
                match conn.reader.read_from(&conn.stream) {
                    Ok(ReadOutcome::Data) => continue,
                    Ok(ReadOutcome::WouldBlock) => return,
                    Ok(ReadOutcome::Closed) => {}
                    Err(e) => log::warn!("control connection: {e}"),
                }
                self.close_conn(idx);
                return;
            };
            let req: CtlRequest = match serde_json::from_str(&line) {
                Ok(r) => r,
                Err(e) => {
                    self.reply_error(idx, format!("malformed control request: {e}"));
                    self.close_conn(idx);
                    return;
                }
            };
            if !self.handle_ctl(idx, req, fds) {
                self.close_conn(idx);
                return;
            }
        }
    }

    fn reply_error(&mut self, idx: usize, message: impl Into<String>) {
        self.conns.reply_error(&self.poller, idx, message, self.now);
    }

    fn reply(&mut self, idx: usize, rep: &CtlReply, fds: Vec<OwnedFd>) {
        self.conns.reply(&self.poller, idx, rep, fds, self.now);
    }

    /// Returns false when the connection must be closed.
    fn handle_ctl(&mut self, idx: usize, req: CtlRequest, fds: Vec<OwnedFd>) -> bool {
        let attached = self.conns.get(idx).and_then(|c| c.client);
        match req {
            CtlRequest::Stat => {
                let s = self.snapshot();
                self.reply(idx, &CtlReply::Stat(Box::new(s)), Vec::new());
                true
            }
            CtlRequest::JobStat { timeout_ms } => {
                self.job_query(idx, timeout_ms);
                true
            }
            CtlRequest::Connect { node } => {
                let n = self.peers.len();
                let which: Vec<usize> = match node {
                    Some(j) if (j as usize) < n => vec![j as usize],
                    Some(j) => {
                        self.reply_error(idx, format!("no node {j}: the job has {n}"));
                        return true;
                    }
                    None => (0..n).collect(),
                };
                for j in which {
                    if self.peers[j].state() != &PeerState::Local {
                        self.want_peer(j);
                    }
                }
                self.reply(idx, &CtlReply::Ok, Vec::new());
                true
            }
            CtlRequest::Attach { version, pid, name } => {
                if attached.is_some() {
                    self.reply_error(idx, "already attached");
                    return true;
                }
                if version != crate::shm::LAYOUT_VERSION {
                    self.reply_error(idx, format!(
                                "client speaks layout version {version}, this agent speaks {}; use a matching client library",
                                crate::shm::LAYOUT_VERSION
                            ));
                    return false;
                }
                // Descriptors sent along (an old client's eventfd) are not
                // used: the agent makes the bell itself.
                drop(fds);
                let Some(slot) = self
                    .clients
                    .free_slot()
                    .or_else(|| self.reclaim_oldest_departed())
                else {
                    let retired = self.clients.retired();
                    let why = if retired > 0 {
                        format!(
                            "all {} client slots are in use ({retired} retired: a client punched holes in the pool there)",
                            self.clients.len()
                        )
                    } else {
                        format!("all {} client slots are in use", self.clients.len())
                    };
                    self.reply_error(idx, why);
                    return false;
                };
                let slot32 = slot as u32;
                let bell = std::os::unix::net::UnixDatagram::pair().and_then(|(mine, theirs)| {
                    mine.set_nonblocking(true)?;
                    let pool_fd = self.pool.fd().try_clone()?;
                    self.poller
                        .epoll()
                        .add(
                            mine.as_fd(),
                            EpollEvent::new(EpollFlags::EPOLLIN, token(T_BELL, slot)),
                        )
                        .map_err(io::Error::from)?;
                    Ok((mine, theirs, pool_fd))
                });
                let (bell, client_bell, pool_fd) = match bell {
                    Ok(b) => b,
                    Err(e) => {
                        log::warn!("cannot attach a client: {e}");
                        self.reply_error(idx, format!("the agent cannot attach a client: {e}"));
                        return false;
                    }
                };
                let name = clean_name(&name);
                // The kernel's pid, not the one the client claims: in a
                // container's PID namespace the client's own is another
                // number (1 for a container's first process), useless here.
                let pid = match self.conns.get(idx).map_or(0, |c| c.pid) {
                    0 => pid,
                    seen => {
                        if seen != pid {
                            log::info!(
                                "client {name:?} says pid {pid} (its own PID namespace): pid {seen} here"
                            );
                        }
                        seen
                    }
                };
                let eps = self.cfg.pool.endpoints_per_client as usize;
                announce_awake(self.pool.client_sleeping(slot32));
                let (pool, peers) = (&self.pool, self.peers.len());
                let client_name = name.clone();
                self.clients.attach(slot, |gen| ClientState {
                    gen,
                    pid,
                    name: client_name,
                    conn: idx,
                    sub: pool.sub_consumer(slot32, true),
                    comp: pool.comp_producer(slot32, true),
                    comp_backlog: VecDeque::new(),
                    recv: (0..eps).map(|_| None).collect(),
                    bell,
                    stalled: None,
                    waiting_large: false,
                    closing: None,
                    sent_to: vec![false; peers],
                    submitted: 0,
                    delivered: 0,
                    errors: 0,
                });
                if let Some(c) = self.conns.get_mut(idx) {
                    c.client = Some(slot32);
                }
                let rep = CtlReply::Attached {
                    slot: slot32,
                    node: self.cfg.node_id,
                    nodes: self.cfg.nodes.len() as u32,
                    eager_max: self.cfg.eager_max as u64,
                    pool: self.pool.layout().params,
                    backing: self.pool.backing(),
                };
                self.reply(idx, &rep, vec![pool_fd, OwnedFd::from(client_bell)]);
                log::info!("client pid {pid} ({name}) attached in slot {slot}");
                true
            }
            CtlRequest::OpenEndpoint { id } => {
                let Some(slot) = attached else {
                    self.reply_error(idx, "attach first");
                    return true;
                };
                let id = match self.clients.new_ep_id(id) {
                    Ok(id) => id,
                    Err(why) => {
                        self.reply_error(idx, why);
                        return true;
                    }
                };
                if let Err(n) = self.clients.free_ep_slot(slot) {
                    self.reply_error(
                        idx,
                        format!("all {n} endpoint slots of this client are in use"),
                    );
                    return true;
                }
                let pool = self.pool.clone();
                // What arrived before the endpoint opened goes first.
                let waiting = self.inbox.adopt(id);
                let ring = |e| pool.recv_producer(slot, e, true);
                let e = self.clients.open_ep(slot, id, ring, waiting);
                self.reply(idx, &CtlReply::Endpoint { id, slot: e }, Vec::new());
                true
            }
            CtlRequest::CloseEndpoint { id } => {
                let Some(slot) = attached else {
                    self.reply_error(idx, "attach first");
                    return true;
                };
                match self.clients.close_ep(slot, id) {
                    Some(parked) => {
                        self.drop_parked(parked);
                        self.reply(idx, &CtlReply::Ok, Vec::new());
                    }
                    None => self.reply_error(idx, format!("endpoint {id} is not yours")),
                }
                true
            }
            CtlRequest::Detach => {
                self.reply(idx, &CtlReply::Ok, Vec::new());
                false
            }
            CtlRequest::BreakLink { node, hold_ms } => {
                let uid = self
                    .conns
                    .get(idx)
                    .and_then(|c| {
                        nix::sys::socket::getsockopt(
                            &c.stream,
                            nix::sys::socket::sockopt::PeerCredentials,
                        )
                        .ok()
                    })
                    .map(|c| c.uid());
                if !matches!(uid, Some(u) if u == self.uid || u == 0) {
                    log::warn!("refusing to break link {node} for uid {uid:?}");
                    self.reply_error(
                        idx,
                        format!(
                            "permission denied: breaking a link (fault injection) is for the agent's uid {} and root only",
                            self.uid
                        ),
                    );
                    return true;
                }
                let j = node as usize;
                let connected = self.peers.get(j).is_some_and(|p| p.state().connected());
                if !connected {
                    self.reply_error(idx, format!("node {node} is not a connected peer"));
                    return true;
                }
                let how = if hold_ms == 0 {
                    Close::Fault
                } else if hold_ms > MAX_HOLD_MS {
                    self.reply_error(
                        idx,
                        format!("--hold-ms {hold_ms}: at most {MAX_HOLD_MS} (an hour)"),
                    );
                    return true;
                } else if !matches!(self.transport.name(Some(node)), "udp" | "dpdk") {
                    self.reply_error(
                        idx,
                        format!(
                            "node {node}'s link is on {}: only udp and dpdk links can be held down",
                            self.transport.name(Some(node))
                        ),
                    );
                    return true;
                } else {
                    Close::Hold(Duration::from_millis(hold_ms))
                };
                log::warn!(
                    "breaking the connection to node {node} on request (held down {hold_ms} ms)"
                );
                for b in self.transport.close(&self.poller, node, how) {
                    self.blocks.free(b, Owner::Agent);
                }
                if self.transport.link(node).last_tx.is_some() {
                    // A fault from below (verbs): the transport reports the
                    // link down once it finds it.
                    self.reply(idx, &CtlReply::Ok, Vec::new());
                    return true;
                }
                self.peer_disconnected(j, "broken on request".into());
                self.reply(idx, &CtlReply::Ok, Vec::new());
                true
            }
        }
    }

    /// Current statistics.
    pub fn snapshot(&mut self) -> Snapshot {
        let stats = self.transport.stats();
        let count = |name: &str| {
            stats
                .counters
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(0, |&(_, v)| v)
        };
        match count("hybrid_fallen_back_peers") {
            0 => self.degraded.clear("hybrid_fallback"),
            n => self.degraded.note(
                "hybrid_fallback",
                format!(
                    "{n} peer(s) fell back from the transport both ends run to a slower one \
                     ({} fallbacks so far; hybrid_retry_ms tries it again)",
                    count("hybrid_fallbacks")
                ),
                "the agent log names each peer and why; wyvern doctor on both nodes",
            ),
        }
        let peers: Vec<PeerSnapshot> = self
            .peers
            .iter()
            .filter(|p| p.state() != &PeerState::Local)
            .map(|p| PeerSnapshot {
                node: p.node,
                addr: p.addr.to_string(),
                transport: self.transport.name(Some(p.node)).into(),
                state: p.state_name(),
                aggregation: if p.counters.frames_tx == 0 {
                    0.0
                } else {
                    p.counters.msgs_tx as f64 / p.counters.frames_tx as f64
                },
                queued_bytes: self.transport.link(p.node).queued as u64,
                unacked_bytes: p.unacked_bytes() as u64,
                rx_buffer_bytes: self.inflow[p.node as usize].reader.capacity() as u64,
                rx_reassembly_bytes: self.rx_reassembly_bytes(p.node as usize),
                rx_delivery_bytes: self.rx_delivery_bytes(p.node as usize),
                packet_bytes: self.transport.link(p.node).packet as u64,
                counters: p.counters.clone(),
            })
            .collect();
        let mut clients = Vec::new();
        for (slot, c) in self.clients.iter_mut() {
            let owner = c.owner(slot);
            clients.push(ClientSnapshot {
                slot,
                pid: c.pid,
                name: c.name.clone(),
                endpoints: c.recv.iter().flatten().map(|e| e.id).collect(),
                submitted: c.submitted,
                delivered: c.delivered,
                errors: c.errors,
                sub_ring_used: c.sub.pending().unwrap_or(0),
                blocks: self.blocks.count_of(owner) as u64,
            });
        }
        Snapshot {
            node: self.cfg.node_id,
            nodes: self.cfg.nodes.len() as u32,
            backing: self.pool.backing().to_string(),
            pool_bytes: self.pool.len() as u64,
            blocks_free: self.blocks.free_bytes(),
            blocks_total: self.blocks.total_bytes(),
            idle: if self.counters.spin_shared {
                "spin, yielding (core shared)".to_string()
            } else {
                format!("{:?}", self.cfg.idle).to_lowercase()
            },
            uptime_s: self.start.elapsed().as_secs_f64(),
            rounds: self.counters.rounds,
            transport: stats
                .counters
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            transport_info: stats
                .info
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            sleeps: self.counters.sleeps,
            preempted: self.counters.preempted,
            links: {
                let mut m = std::collections::BTreeMap::new();
                for p in peers.iter() {
                    let k = p.state.split(' ').next().unwrap_or("").to_string();
                    *m.entry(k).or_insert(0) += 1;
                }
                m
            },
            busy_rounds: super::BUSY_SOURCES
                .iter()
                .zip(self.counters.busy)
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            local_msgs: self.counters.local_msgs,
            clients_evicted: self.clients.evicted,
            clients_departed_reclaimed: self.clients.departed_reclaimed,
            pool_pages_damaged: self.counters.pool_pages_damaged,
            parked_msgs: self.inbox.held_count() as u64,
            parked_bytes: self.inbox.msg_bytes() as u64,
            peers,
            clients,
            degraded: self.degraded.list().to_vec(),
        }
    }
}

/// Whether process `pid` has `gid` among its supplementary groups (a user is
/// usually a member of the allowed group that way, not by primary group).
fn in_group(pid: i32, gid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|st| {
        st.lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
    })
}
