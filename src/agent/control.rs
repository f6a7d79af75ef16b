//! The agent's control socket (attach, endpoints, stat) and its statistics.

use super::*;
use std::os::fd::AsRawFd;

impl Agent {
    pub(super) fn accept_control(&mut self) {
        loop {
            let stream = match self.ctl.accept() {
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
                    let _ = self.poller.epoll().delete(self.ctl.as_fd());
                    self.ctl_paused = Some(Instant::now());
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
            let live = self.conns.iter().flatten().count();
            let guests = self.conns.iter().flatten().filter(|c| c.guest).count();
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
                out: Outbox::default(),
                guest,
            });
        }
    }

    pub(super) fn close_conn(&mut self, idx: usize) {
        if let Some(mut c) = self.conns.get_mut(idx).and_then(|c| c.take()) {
            // A last reply (an eviction notice) goes out if it fits now.
            let _ = c.out.flush(&c.stream);
            let _ = self.poller.epoll().delete(c.stream.as_fd());
            if let Some(slot) = c.client {
                self.start_closing(slot);
            }
        }
        self.resume_accepting();
    }

    /// Watch the listener again after accepting was paused.
    fn resume_accepting(&mut self) {
        if self.ctl_paused.take().is_some() {
            let _ = self.poller.epoll().add(
                self.ctl.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, token(T_CTL_LISTEN, 0)),
            );
        }
    }

    /// Drop control connections that leave replies unread too long; resume
    /// accepting after a pause. Called every tick.
    pub(super) fn expire_conns(&mut self, now: Instant) {
        if self
            .ctl_paused
            .is_some_and(|t| now.saturating_duration_since(t) >= CTL_PAUSE)
        {
            self.resume_accepting();
        }
        for idx in 0..self.conns.len() {
            let Some(c) = self.conns[idx].as_ref() else {
                continue;
            };
            if let Some(since) = c.out.since {
                if now.saturating_duration_since(since) > CTL_OUT_TIMEOUT {
                    log::warn!(
                        "dropping a control connection that left {} bytes of replies unread for {CTL_OUT_TIMEOUT:?}",
                        c.out.bytes
                    );
                    self.close_conn(idx);
                }
            }
        }
    }

    /// Watch connection `idx` for what it needs next: readable when its
    /// replies are all out, writable while some wait (it is not read then:
    /// a connection that does not take its replies is not served more).
    fn conn_interest(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        let want_out = !c.out.is_empty();
        if want_out == c.out.watching_out {
            return;
        }
        c.out.watching_out = want_out;
        let flags = if want_out {
            EpollFlags::EPOLLOUT
        } else {
            EpollFlags::EPOLLIN
        };
        let mut ev = EpollEvent::new(flags, token(T_CTL_CONN, idx));
        let _ = self.poller.epoll().modify(c.stream.as_fd(), &mut ev);
    }

    /// A client rang: take what it sent (the rings are polled every round;
    /// the byte only wakes a sleeping agent). Bounded per event; the bell is
    /// level-triggered, so what is left shows up again.
    pub(super) fn drain_bell(&mut self, slot: usize) {
        if let Some(c) = self.clients.get(slot).and_then(|c| c.as_ref()) {
            let mut b = [0u8; 16];
            for _ in 0..BELL_DRAIN {
                if c.bell.recv(&mut b).is_err() {
                    break;
                }
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

    /// Every slot is taken: a client that already left but whose published
    /// sends still wait (for a peer, for ring room: up to [`CLOSING_GRACE`])
    /// gives its slot up to a live client now, the one that left first.
    /// Without this, clients that publish sends nobody can take and die,
    /// a few a second, would hold every slot.
    fn reclaim_oldest_departed(&mut self) -> Option<usize> {
        let slot = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((c.as_ref()?.closing?, i)))
            .min()
            .map(|(_, i)| i)?;
        log::warn!(
            "client slot {slot}: every slot is taken; dropping what its departed client left unsent to make room"
        );
        self.departed_reclaimed += 1;
        self.reclaim(slot as u32);
        self.clients[slot].is_none().then_some(slot)
    }

    pub(super) fn serve_control(&mut self, idx: usize) {
        // Reads per event: what is left waits for the next round (the
        // socket stays readable), so one busy connection cannot hold the
        // polling thread.
        let mut reads = 0;
        loop {
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                return;
            };
            if !conn.out.is_empty() {
                match conn.out.flush(&conn.stream) {
                    Ok(true) => {}
                    Ok(false) => {
                        // Backpressure: nothing more is read from it until
                        // it has taken its replies.
                        self.conn_interest(idx);
                        return;
                    }
                    Err(e) => {
                        log::debug!("control connection: {e}");
                        self.close_conn(idx);
                        return;
                    }
                }
                self.conn_interest(idx);
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

    /// Refuse a control request with a message for the client.
    pub(super) fn reply_error(&mut self, idx: usize, message: impl Into<String>) {
        let rep = CtlReply::Error {
            message: message.into(),
        };
        self.reply(idx, &rep, Vec::new());
    }

    /// Queue a reply (with `fds` riding on its first byte) and send what the
    /// connection takes now, never waiting for it.
    pub(super) fn reply(&mut self, idx: usize, rep: &CtlReply, fds: Vec<OwnedFd>) {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        let mut line = serde_json::to_vec(rep).unwrap_or_default();
        line.push(b'\n');
        if c.out.bytes + line.len() > CTL_OUT_MAX {
            if !c.out.overflow {
                log::warn!(
                    "a control connection leaves more than {CTL_OUT_MAX} bytes of replies unread: dropping it"
                );
            }
            c.out.overflow = true;
            return;
        }
        c.out.push(line, fds);
        if let Err(e) = c.out.flush(&c.stream) {
            log::debug!("control reply failed: {e}");
            c.out.overflow = true;
        }
        self.conn_interest(idx);
    }

    /// Returns false when the connection must be closed.
    pub(super) fn handle_ctl(&mut self, idx: usize, req: CtlRequest, fds: Vec<OwnedFd>) -> bool {
        let attached = self.conns[idx].as_ref().and_then(|c| c.client);
        match req {
            CtlRequest::Stat => {
                let s = self.snapshot();
                self.reply(idx, &CtlReply::Stat(Box::new(s)), Vec::new());
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
                    .iter()
                    .zip(&self.retired)
                    .position(|(c, &retired)| c.is_none() && !retired)
                    .or_else(|| self.reclaim_oldest_departed())
                else {
                    let retired = self.retired.iter().filter(|&&r| r).count();
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
                self.gens[slot] = self.gens[slot].wrapping_add(1);
                let eps = self.cfg.pool.endpoints_per_client as usize;
                announce_awake(self.pool.client_sleeping(slot32));
                self.clients[slot] = Some(ClientState {
                    gen: self.gens[slot],
                    pid,
                    name: name.clone(),
                    conn: idx,
                    sub: self.pool.sub_consumer(slot32, true),
                    comp: self.pool.comp_producer(slot32, true),
                    comp_backlog: VecDeque::new(),
                    recv: (0..eps).map(|_| None).collect(),
                    bell,
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
                self.reply(idx, &CtlReply::Endpoint { id, slot: e as u32 }, Vec::new());
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
                        self.reply(idx, &CtlReply::Ok, Vec::new());
                    }
                    _ => self.reply_error(idx, format!("endpoint {id} is not yours")),
                }
                true
            }
            CtlRequest::Detach => {
                self.reply(idx, &CtlReply::Ok, Vec::new());
                false
            }
            CtlRequest::BreakLink { node } => {
                let uid = self.conns[idx]
                    .as_ref()
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
                    self.reply(idx, &CtlReply::Ok, Vec::new());
                    return true;
                }
                log::warn!("breaking the connection to node {node} on request");
                for b in self.transport.close(&self.poller, node) {
                    self.blocks.free(b, Owner::Agent);
                }
                self.peer_disconnected(j, "broken on request".into());
                self.reply(idx, &CtlReply::Ok, Vec::new());
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
            clients_departed_reclaimed: self.departed_reclaimed,
            pool_pages_damaged: self.pool_pages_damaged,
            parked_msgs: self.parked_count as u64,
            parked_bytes: self.parked_bytes as u64,
            peers,
            clients,
        }
    }
}

pub(super) fn bind_control(cfg: &AgentConfig) -> Result<UnixListener, AgentError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
    let path = &cfg.socket;
    let uid = nix::unistd::geteuid().as_raw();
    let unsafe_ = |why: String| AgentError::SocketUnsafe {
        path: path.clone(),
        why,
    };
    let sock_err = |source: io::Error| AgentError::Socket {
        path: path.clone(),
        source,
    };
    // The directory: made private when the agent creates it; refused when
    // another uid owns it, or anybody else may write in it (without the
    // sticky bit, which keeps others from replacing our socket).
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.exists() {
        if let Some(up) = dir.parent() {
            let _ = std::fs::create_dir_all(up);
        }
        let mode = if cfg.allow_gid.is_some() {
            0o750
        } else {
            0o700
        };
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {
                // The umask may have narrowed it; set it exactly.
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
                if let Some(gid) = cfg.allow_gid {
                    let _ = nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(sock_err(e)),
        }
    }
    let md = std::fs::metadata(dir).map_err(sock_err)?;
    if md.uid() != uid && md.uid() != 0 {
        return Err(unsafe_(format!(
            "its directory {} belongs to uid {}, not to this agent's uid {uid}",
            dir.display(),
            md.uid()
        )));
    }
    let mode = md.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_(format!(
            "its directory {} is writable by others (mode {:o}) without the sticky bit",
            dir.display(),
            mode & 0o7777
        )));
    }
    // A file already there: only our own stale socket is replaced.
    if let Ok(old) = std::fs::symlink_metadata(path) {
        if !old.file_type().is_socket() {
            return Err(unsafe_("a file that is not a socket is in the way".into()));
        }
        if old.uid() != uid {
            return Err(unsafe_(format!(
                "the socket there belongs to uid {}, not to this agent's uid {uid}",
                old.uid()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(AgentError::SocketBusy(path.clone()));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(sock_err)?;
    let mode = if cfg.allow_gid.is_some() {
        0o770
    } else {
        0o700
    };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if let Some(gid) = cfg.allow_gid {
        let _ = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)));
    }
    l.set_nonblocking(true).map_err(sock_err)?;
    Ok(l)
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

/// Control connections served at once (or the client slots plus 64, if
/// more); more are refused with an error line.
pub(super) const MAX_CTL_CONNS: usize = 256;
/// Bytes of replies a control connection may leave unread; past it the
/// connection is dropped.
pub(super) const CTL_OUT_MAX: usize = 1 << 20;
/// How long replies may stay unread before the connection is dropped.
pub(super) const CTL_OUT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long accepting pauses when the agent runs out of descriptors.
const CTL_PAUSE: Duration = Duration::from_millis(100);
/// Reads (of up to 4 KiB) from one control connection per event.
const CTL_READS_PER_EVENT: usize = 8;
/// Datagrams taken from one client's bell per event.
const BELL_DRAIN: usize = 64;

/// A client's name as shown in logs and stats: at most 32 characters, no
/// control characters (a name cannot forge log lines or escape sequences).
pub(super) fn clean_name(name: &str) -> String {
    name.chars()
        .take(32)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One try to send a short reply on a fresh connection that is then
/// dropped (a refusal): never waits.
fn send_once(stream: &UnixStream, rep: &CtlReply) {
    let mut line = serde_json::to_vec(rep).unwrap_or_default();
    line.push(b'\n');
    let _ = nix::sys::socket::send(
        stream.as_raw_fd(),
        &line,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
    );
}

/// Replies queued for one control connection, sent without ever waiting.
#[derive(Default)]
pub(super) struct Outbox {
    lines: VecDeque<OutLine>,
    /// Bytes queued.
    bytes: usize,
    /// Since when something has been waiting.
    since: Option<Instant>,
    /// Whether the connection is watched for room (not for requests).
    watching_out: bool,
    /// The bound was passed: the connection is dropped.
    overflow: bool,
}

struct OutLine {
    bytes: Vec<u8>,
    sent: usize,
    /// Travel with the line's first byte.
    fds: Vec<OwnedFd>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn push(&mut self, bytes: Vec<u8>, fds: Vec<OwnedFd>) {
        if self.lines.is_empty() {
            self.since = Some(Instant::now());
        }
        self.bytes += bytes.len();
        self.lines.push_back(OutLine {
            bytes,
            sent: 0,
            fds,
        });
    }

    /// Send what the socket takes now. `Ok(true)`: all sent.
    fn flush(&mut self, sock: &UnixStream) -> io::Result<bool> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        while let Some(l) = self.lines.front_mut() {
            let raw: Vec<std::os::fd::RawFd> = l.fds.iter().map(|f| f.as_raw_fd()).collect();
            let iov = [std::io::IoSlice::new(&l.bytes[l.sent..])];
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
            match sendmsg::<()>(
                sock.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => {
                    // The descriptors went with the first byte sent.
                    l.fds.clear();
                    l.sent += n;
                    self.bytes -= n;
                    if l.sent == l.bytes.len() {
                        self.lines.pop_front();
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        self.since = None;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_never_waits_and_delivers_lines_in_order_with_their_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut out = Outbox::default();
        let line = |i: usize| format!("{i:08} {}\n", "x".repeat(1000)).into_bytes();
        let n = 2000;
        let mut all_sent = true;
        for i in 0..n {
            let fds = if i == 1500 {
                vec![std::fs::File::open("/dev/null").unwrap().into()]
            } else {
                Vec::new()
            };
            out.push(line(i), fds);
            all_sent = out.flush(&a).unwrap();
        }
        // ~2 MB cannot fit a socket buffer: the outbox kept the rest
        // instead of waiting.
        assert!(!all_sent && out.since.is_some() && out.bytes > 0);
        let mut r = LineReader::new();
        b.set_nonblocking(true).unwrap();
        let (mut got, mut fds) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while got < n {
            assert!(Instant::now() < deadline, "only {got} lines arrived");
            let _ = out.flush(&a).unwrap();
            let _ = r.read_from(&b).unwrap();
            while let Some((l, f)) = r.next_line() {
                assert_eq!(l.as_bytes(), &line(got)[..line(got).len() - 1]);
                fds += f.len();
                got += 1;
            }
        }
        assert!(out.flush(&a).unwrap());
        assert!(out.is_empty() && out.since.is_none() && out.bytes == 0);
        assert_eq!(fds, 1);
    }

    #[test]
    fn client_names_are_cut_and_cleaned() {
        assert_eq!(clean_name("a\nb\x1b"), "a?b?");
        assert_eq!(clean_name(&"é".repeat(100)).chars().count(), 32);
    }
}
