//! The agent's control socket (attach, endpoints, stat) and its statistics.

use super::*;

impl Agent {
    pub(super) fn accept_control(&mut self) {
        while let Ok((stream, _)) = self.ctl.accept() {
            let cred =
                nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
            let allowed = match &cred {
                Ok(c) => c.uid() == self.uid || c.uid() == 0 || self.cfg.allow_gid == Some(c.gid()),
                Err(_) => false,
            };
            if !allowed {
                let who = cred
                    .map(|c| format!("uid {} gid {}", c.uid(), c.gid()))
                    .unwrap_or_default();
                log::warn!("refusing a control connection from {who}");
                let _ = send_line(
                    &stream,
                    &serde_json::to_string(&CtlReply::Error {
                        message: format!(
                            "permission denied: {who} is neither the agent's uid {} nor in its allowed group",
                            self.uid
                        ),
                    })
                    .unwrap_or_default(),
                    &[],
                );
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let idx = crate::slab::vacant(&mut self.conns);
            if self
                .poller
                .epoll()
                .add(
                    stream.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, token(T_CTL_CONN, idx)),
                )
                .is_err()
            {
                continue;
            }
            self.conns[idx] = Some(CtlConn {
                stream,
                reader: LineReader::new(),
                client: None,
            });
        }
    }

    pub(super) fn close_conn(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx).and_then(|c| c.take()) {
            let _ = self.poller.epoll().delete(c.stream.as_fd());
            if let Some(slot) = c.client {
                self.start_closing(slot);
            }
        }
    }

    /// The client left (detached, exited or died): its endpoints stop
    /// receiving at once, but what it already published in its submission
    /// ring is still sent; then its slot is reclaimed.
    pub(super) fn start_closing(&mut self, slot: u32) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        if c.closing.is_some() {
            return;
        }
        c.closing = Some(Instant::now());
        for ep in c.recv.iter().flatten() {
            self.endpoints.remove(&ep.id);
        }
        self.maybe_reclaim(slot);
    }

    pub(super) fn maybe_reclaim(&mut self, slot: u32) {
        let Some(c) = self.clients[slot as usize].as_mut() else {
            return;
        };
        let Some(since) = c.closing else {
            return;
        };
        let drained = c.stalled.is_none()
            && !c.waiting_large
            && matches!(c.sub.is_empty(), Ok(true) | Err(_));
        if drained || since.elapsed() > CLOSING_GRACE {
            if !drained {
                log::warn!(
                    "client slot {slot}: dropping what it left unsent after {CLOSING_GRACE:?}"
                );
            }
            self.reclaim(slot);
        }
    }

    pub(super) fn serve_control(&mut self, idx: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                return;
            };
            let line = conn.reader.next_line();
            let Some((line, fds)) = line else {
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

    /// Refuse a control request with a message for the client.
    pub(super) fn reply_error(&mut self, idx: usize, message: impl Into<String>) {
        let rep = CtlReply::Error {
            message: message.into(),
        };
        self.reply(idx, &rep, &[]);
    }

    pub(super) fn reply(&mut self, idx: usize, rep: &CtlReply, fds: &[BorrowedFd<'_>]) {
        if let Some(c) = self.conns.get(idx).and_then(|c| c.as_ref()) {
            let line = serde_json::to_string(rep).unwrap_or_default();
            if let Err(e) = send_line(&c.stream, &line, fds) {
                log::debug!("control reply failed: {e}");
            }
        }
    }

    /// Returns false when the connection must be closed.
    pub(super) fn handle_ctl(&mut self, idx: usize, req: CtlRequest, fds: Vec<OwnedFd>) -> bool {
        let attached = self.conns[idx].as_ref().and_then(|c| c.client);
        match req {
            CtlRequest::Stat => {
                let s = self.snapshot();
                self.reply(idx, &CtlReply::Stat(Box::new(s)), &[]);
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
                let Some(wake) = fds.into_iter().next() else {
                    self.reply_error(idx, "attach needs the client's eventfd");
                    return false;
                };
                let Some(slot) = self.clients.iter().position(|c| c.is_none()) else {
                    self.reply_error(
                        idx,
                        format!("all {} client slots are in use", self.clients.len()),
                    );
                    return false;
                };
                let slot32 = slot as u32;
                self.gens[slot] = self.gens[slot].wrapping_add(1);
                let eps = self.cfg.pool.endpoints_per_client as usize;
                announce_awake(self.pool.client_sleeping(slot32));
                self.clients[slot] = Some(ClientState {
                    gen: self.gens[slot],
                    pid,
                    name: name.chars().take(32).collect(),
                    conn: idx,
                    sub: self.pool.sub_consumer(slot32, true),
                    comp: self.pool.comp_producer(slot32, true),
                    comp_backlog: VecDeque::new(),
                    recv: (0..eps).map(|_| None).collect(),
                    wake: File::from(wake),
                    stalled: None,
                    waiting_large: false,
                    closing: None,
                    sent_to: vec![false; self.peers.len()],
                    submitted: 0,
                    delivered: 0,
                    errors: 0,
                });
                if let Some(c) = self.conns[idx].as_mut() {
                    c.client = Some(slot32);
                }
                let rep = CtlReply::Attached {
                    slot: slot32,
                    node: self.cfg.node_id,
                    nodes: self.cfg.nodes.len() as u32,
                    eager_max: self.cfg.eager_max as u64,
                };
                let pool_fd = self.pool.clone();
                let db = self.doorbell.clone();
                self.reply(idx, &rep, &[pool_fd.fd().as_fd(), db.as_fd()]);
                log::info!("client pid {pid} ({name}) attached in slot {slot}");
                true
            }
            CtlRequest::OpenEndpoint { id } => {
                let Some(slot) = attached else {
                    self.reply_error(idx, "attach first");
                    return true;
                };
                let id = match id {
                    Some(id) if id == u32::MAX => {
                        self.reply_error(idx, "endpoint id 4294967295 is reserved");
                        return true;
                    }
                    Some(id) if self.endpoints.contains_key(&id) => {
                        self.reply_error(
                            idx,
                            format!("endpoint {id} is already open on this node"),
                        );
                        return true;
                    }
                    Some(id) => id,
                    None => {
                        while self.endpoints.contains_key(&self.next_ep) || self.next_ep == u32::MAX
                        {
                            self.next_ep = self.next_ep.wrapping_add(1).max(1 << 16);
                        }
                        // Not handed out again before the counter wraps: a
                        // late message for a closed endpoint must not reach
                        // its successor.
                        let id = self.next_ep;
                        self.next_ep = self.next_ep.wrapping_add(1).max(1 << 16);
                        id
                    }
                };
                let pool = self.pool.clone();
                let c = self.clients[slot as usize]
                    .as_mut()
                    .expect("attached client");
                let Some(e) = c.recv.iter().position(|r| r.is_none()) else {
                    let n = c.recv.len();
                    self.reply_error(
                        idx,
                        format!("all {n} endpoint slots of this client are in use"),
                    );
                    return true;
                };
                c.recv[e] = Some(RecvEp {
                    id,
                    ring: pool.recv_producer(slot, e as u32, true),
                    // What arrived before the endpoint opened goes first.
                    parked: self
                        .orphans
                        .remove(&id)
                        .map(|q| q.into_iter().map(|o| o.parked).collect())
                        .unwrap_or_default(),
                });
                self.endpoints.insert(id, (slot, e as u32));
                self.reply(idx, &CtlReply::Endpoint { id, slot: e as u32 }, &[]);
                true
            }
            CtlRequest::CloseEndpoint { id } => {
                let Some(slot) = attached else {
                    self.reply_error(idx, "attach first");
                    return true;
                };
                match self.endpoints.get(&id) {
                    Some(&(s, e)) if s == slot => {
                        self.endpoints.remove(&id);
                        let gone = self.clients[slot as usize]
                            .as_mut()
                            .and_then(|c| c.recv[e as usize].take());
                        if let Some(r) = gone {
                            self.drop_parked(r.parked);
                        }
                        self.reply(idx, &CtlReply::Ok, &[]);
                    }
                    _ => self.reply_error(idx, format!("endpoint {id} is not yours")),
                }
                true
            }
            CtlRequest::Detach => {
                self.reply(idx, &CtlReply::Ok, &[]);
                false
            }
            CtlRequest::BreakLink { node } => {
                let j = node as usize;
                let connected = self
                    .peers
                    .get(j)
                    .is_some_and(|p| matches!(p.state, PeerState::Up | PeerState::Resuming));
                if !connected {
                    self.reply_error(idx, format!("node {node} is not a connected peer"));
                    return true;
                }
                if self.transport.inject_fault(node) {
                    // The transport reports the link down once it finds the fault.
                    self.reply(idx, &CtlReply::Ok, &[]);
                    return true;
                }
                log::warn!("breaking the connection to node {node} on request");
                for b in self.transport.close(&self.poller, node) {
                    self.blocks.free(b, Owner::Agent);
                }
                self.peer_disconnected(j, "broken on request".into());
                self.reply(idx, &CtlReply::Ok, &[]);
                true
            }
        }
    }

    /// Current statistics.
    pub fn snapshot(&mut self) -> Snapshot {
        let peers = self
            .peers
            .iter()
            .filter(|p| p.state != PeerState::Local)
            .map(|p| PeerSnapshot {
                node: p.node,
                addr: p.addr.to_string(),
                transport: self.transport.link_name(p.node).into(),
                state: p.state.name(),
                aggregation: if p.counters.frames_tx == 0 {
                    0.0
                } else {
                    p.counters.msgs_tx as f64 / p.counters.frames_tx as f64
                },
                queued_bytes: self.transport.queued(p.node) as u64,
                unacked_bytes: p.unacked_bytes() as u64,
                counters: p.counters.clone(),
            })
            .collect();
        let mut clients = Vec::new();
        for (slot, c) in self.clients.iter_mut().enumerate() {
            let Some(c) = c.as_mut() else { continue };
            let owner = c.owner(slot as u32);
            clients.push(ClientSnapshot {
                slot: slot as u32,
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
            idle: format!("{:?}", self.cfg.idle).to_lowercase(),
            uptime_s: self.start.elapsed().as_secs_f64(),
            rounds: self.rounds,
            transport: self
                .transport
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            transport_info: self
                .transport
                .info()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            sleeps: self.sleeps,
            local_msgs: self.local_msgs,
            clients_evicted: self.evicted,
            parked_msgs: self.parked_count as u64,
            parked_bytes: self.parked_bytes as u64,
            peers,
            clients,
        }
    }
}

pub(super) fn bind_control(cfg: &AgentConfig) -> Result<UnixListener, AgentError> {
    let path = &cfg.socket;
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(AgentError::SocketBusy(path.clone()));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let l = UnixListener::bind(path).map_err(|source| AgentError::Socket {
        path: path.clone(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    let mode = if cfg.allow_gid.is_some() {
        0o770
    } else {
        0o700
    };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if let Some(gid) = cfg.allow_gid {
        let _ = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)));
    }
    l.set_nonblocking(true)
        .map_err(|source| AgentError::Socket {
            path: path.clone(),
            source,
        })?;
    Ok(l)
}
