//! The control socket's connections: binding the socket safely, the
//! connections served, and their replies, which never make the agent wait.
//!
//! What the requests mean is [`super::control`]'s business; this room only
//! moves lines (and descriptors) in and out, within bounds.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::epoll::{EpollEvent, EpollFlags};

use crate::proto::CtlReply;
use crate::shm::handoff::LineReader;
use crate::transport::Poller;

use super::config::AgentConfig;
use super::AgentError;

pub(super) const T_CTL_LISTEN: u64 = 1;
pub(super) const T_CTL_CONN: u64 = 2;
pub(super) const T_DOORBELL: u64 = 3;
/// A client's bell (index: its slot).
pub(super) const T_BELL: u64 = 4;
/// The transport's kinds: this and the next [`crate::transport::MAX_SUB`]
/// (one per back end), so it comes after every kind of the agent's own. (It
/// was 4 with the bells at 5: every bell's event went to the transport as
/// back end 1, which took it for its listener, and the bell was never
/// drained: readable for ever, an adaptive agent whose client had rung once
/// never slept again.)
pub(super) const T_TRANSPORT: u64 = 5;
const _: () = assert!(
    T_CTL_LISTEN < T_TRANSPORT
        && T_CTL_CONN < T_TRANSPORT
        && T_DOORBELL < T_TRANSPORT
        && T_BELL < T_TRANSPORT
);

/// The epoll token of a descriptor of the agent's own.
pub(super) fn token(kind: u64, idx: usize) -> u64 {
    (kind << 32) | idx as u64
}

/// One control connection.
pub(super) struct CtlConn {
    pub(super) stream: UnixStream,
    pub(super) reader: LineReader,
    /// The client attached over it.
    pub(super) client: Option<u32>,
    /// Replies not yet taken by the connection (bounded).
    pub(super) out: Outbox,
    /// Whether it comes from another uid than the agent's own or root (an
    /// allowed group's member): those share part of the connection cap.
    pub(super) guest: bool,
    /// The process at the other end as the kernel saw it connect
    /// (SO_PEERCRED, in the agent's PID namespace; 0 if unknown). A client in
    /// a container's PID namespace knows itself by another number.
    pub(super) pid: u32,
}

/// The listener and the connections served.
pub(super) struct Conns {
    pub(super) listener: UnixListener,
    /// When accepting failed for want of descriptors: the listener is not
    /// watched until then (so a full fd table does not make the agent spin).
    paused: Option<Instant>,
    list: Vec<Option<CtlConn>>,
}

impl Conns {
    pub(super) fn new(listener: UnixListener) -> Conns {
        Conns {
            listener,
            paused: None,
            list: Vec::new(),
        }
    }

    pub(super) fn get(&self, idx: usize) -> Option<&CtlConn> {
        self.list.get(idx)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, idx: usize) -> Option<&mut CtlConn> {
        self.list.get_mut(idx)?.as_mut()
    }

    /// Connections open, and how many of them are guests'.
    pub(super) fn counts(&self) -> (usize, usize) {
        let live = self.list.iter().flatten().count();
        let guests = self.list.iter().flatten().filter(|c| c.guest).count();
        (live, guests)
    }

    /// Serve a new connection (watched for requests).
    pub(super) fn add(&mut self, poller: &Poller, conn: CtlConn) {
        let idx = crate::slab::vacant(&mut self.list);
        if poller
            .epoll()
            .add(
                conn.stream.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, token(T_CTL_CONN, idx)),
            )
            .is_ok()
        {
            self.list[idx] = Some(conn);
        }
    }

    /// Stop watching the listener for a while (out of descriptors).
    pub(super) fn pause(&mut self, poller: &Poller, now: Instant) {
        let _ = poller.epoll().delete(self.listener.as_fd());
        self.paused = Some(now);
    }

    /// Watch the listener again after accepting was paused.
    fn resume_accepting(&mut self, poller: &Poller) {
        if self.paused.take().is_some() {
            let _ = poller.epoll().add(
                self.listener.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, token(T_CTL_LISTEN, 0)),
            );
        }
    }

    /// Close connection `idx`; returns the client that was attached over it.
    pub(super) fn close(&mut self, poller: &Poller, idx: usize) -> Option<u32> {
        let mut client = None;
        if let Some(mut c) = self.list.get_mut(idx).and_then(|c| c.take()) {
            // A last reply (an eviction notice) goes out if it fits now.
            let _ = c.out.flush(&c.stream);
            let _ = poller.epoll().delete(c.stream.as_fd());
            client = c.client;
        }
        self.resume_accepting(poller);
        client
    }

    /// Resume accepting after a pause; the connections that left replies
    /// unread too long (to close). Called every tick.
    pub(super) fn expired(&mut self, poller: &Poller, now: Instant) -> Vec<usize> {
        if self
            .paused
            .is_some_and(|t| now.saturating_duration_since(t) >= CTL_PAUSE)
        {
            self.resume_accepting(poller);
        }
        let mut gone = Vec::new();
        for (idx, c) in self.list.iter().enumerate() {
            let Some(c) = c.as_ref() else { continue };
            if let Some(since) = c.out.since {
                if now.saturating_duration_since(since) > CTL_OUT_TIMEOUT {
                    log::warn!(
                        "dropping a control connection that left {} bytes of replies unread for {CTL_OUT_TIMEOUT:?}",
                        c.out.bytes
                    );
                    gone.push(idx);
                }
            }
        }
        gone
    }

    /// Watch connection `idx` for what it needs next: readable when its
    /// replies are all out, writable while some wait (it is not read then:
    /// a connection that does not take its replies is not served more).
    pub(super) fn interest(&mut self, poller: &Poller, idx: usize) {
        let Some(c) = self.get_mut(idx) else {
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
        let _ = poller.epoll().modify(c.stream.as_fd(), &mut ev);
    }

    /// Queue a reply (with `fds` riding on its first byte) and send what the
    /// connection takes now, never waiting for it.
    pub(super) fn reply(
        &mut self,
        poller: &Poller,
        idx: usize,
        rep: &CtlReply,
        fds: Vec<OwnedFd>,
        now: Instant,
    ) {
        let Some(c) = self.get_mut(idx) else {
            return;
        };
        let mut line = serde_json::to_vec(rep).unwrap_or_default();
        line.push(b'\n');
        // One reply is always taken, whatever its size (`stat` of an agent with
        // thousands of peers is megabytes; its size is the agent's own state,
        // and no request is read while a reply waits): the bound is on what
        // piles up unread.
        if c.out.bytes > 0 && c.out.bytes + line.len() > CTL_OUT_MAX {
            if !c.out.overflow {
                log::warn!(
                    "a control connection leaves more than {CTL_OUT_MAX} bytes of replies unread: dropping it"
                );
            }
            c.out.overflow = true;
            return;
        }
        c.out.push(line, fds, now);
        if let Err(e) = c.out.flush(&c.stream) {
            log::debug!("control reply failed: {e}");
            c.out.overflow = true;
        }
        self.interest(poller, idx);
    }

    /// Refuse a control request with a message for the client.
    pub(super) fn reply_error(
        &mut self,
        poller: &Poller,
        idx: usize,
        message: impl Into<String>,
        now: Instant,
    ) {
        let rep = CtlReply::Error {
            message: message.into(),
        };
        self.reply(poller, idx, &rep, Vec::new(), now);
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

/// Control connections served at once (or the client slots plus 64, if
/// more); more are refused with an error line.
pub(super) const MAX_CTL_CONNS: usize = 256;
/// Bytes of replies a control connection may leave unread (one reply is
/// always taken whole); past it the connection is dropped.
pub(super) const CTL_OUT_MAX: usize = 1 << 20;
/// How long replies may stay unread before the connection is dropped.
pub(super) const CTL_OUT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long accepting pauses when the agent runs out of descriptors.
pub(super) const CTL_PAUSE: Duration = Duration::from_millis(100);
/// Reads (of up to 4 KiB) from one control connection per event.
pub(super) const CTL_READS_PER_EVENT: usize = 8;
/// Datagrams taken from one client's bell per event.
pub(super) const BELL_DRAIN: usize = 64;

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
pub(super) fn send_once(stream: &UnixStream, rep: &CtlReply) {
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
    pub(super) bytes: usize,
    /// Since when something has been waiting.
    since: Option<Instant>,
    /// Whether the connection is watched for room (not for requests).
    watching_out: bool,
    /// The bound was passed: the connection is dropped.
    pub(super) overflow: bool,
}

struct OutLine {
    bytes: Vec<u8>,
    sent: usize,
    /// Travel with the line's first byte.
    fds: Vec<OwnedFd>,
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn push(&mut self, bytes: Vec<u8>, fds: Vec<OwnedFd>, now: Instant) {
        if self.lines.is_empty() {
            self.since = Some(now);
        }
        self.bytes += bytes.len();
        self.lines.push_back(OutLine {
            bytes,
            sent: 0,
            fds,
        });
    }

    /// Send what the socket takes now. `Ok(true)`: all sent.
    pub(super) fn flush(&mut self, sock: &UnixStream) -> io::Result<bool> {
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
            out.push(line(i), fds, Instant::now());
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
