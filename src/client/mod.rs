//! The client library: what an application links to talk to its node's agent.
//!
//! ```no_run
//! use std::time::Duration;
//! use wyvern::client::{Client, Mode};
//! let client = Client::attach("/tmp/wyvern-agent-0.sock", "example")?;
//! let ep = client.open_endpoint(Some(7))?;
//! ep.send(1, 7, b"hello", Mode::Buffered, Duration::from_secs(1))?;
//! let msg = ep.recv(Duration::from_secs(1))?;
//! println!("{} bytes from node {} endpoint {}", msg.data().len(), msg.src_node, msg.src_ep);
//! client.detach()?;
//! # Ok::<(), wyvern::client::Error>(())
//! ```
//!
//! Attaching and opening endpoints go through the agent's control socket;
//! after that, `send` and `recv` only touch shared memory: no system call,
//! except ringing the agent's bell (one byte sent on a datagram socket the
//! agent made for this client) when the agent said it sleeps, and a `poll`
//! on that bell when this client itself waits long enough to sleep.
//!
//! A [`Client`] and its [`Endpoint`]s belong to one thread (they are not
//! `Send`); a multi-threaded process attaches once per thread.
//! Dropping the client (or the process dying) detaches it: the agent reclaims
//! its rings, endpoints and blocks.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::idle::{Backoff, Step};
use crate::proto::{CompKind, Completion, CtlReply, CtlRequest, Delivery, Op, Submit, SUB_HEADER};
pub use crate::proto::{Mode, Status};
use crate::shm::handoff::{send_line, LineReader, MAX_REPLY_LINE};
use crate::shm::{
    announce_awake, announce_sleep, announce_sleep_for_room, needs_wake, Pool, RingRx, RingTx,
    ShmError,
};

/// Longest wait for a control reply.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a waiting client polls before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// What can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No agent at that socket.
    #[error("cannot reach the agent at {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Connecting to the socket was not permitted.
    #[error("permission denied: {who} may not attach to the agent at {path}: {may}")]
    PermissionDenied {
        /// Socket path.
        path: PathBuf,
        /// This process: its uid (and user name).
        who: String,
        /// Who may attach, as the socket's (or its directory's) owner,
        /// group and mode tell: the agent's user, root, and the members of
        /// its `allow_gid` group if it set one.
        may: String,
    },
    /// The listener is not the expected agent: another uid listens there.
    #[error("the listener at {path} runs as uid {uid}, not as {expected} (set WYVERN_AGENT_UID to the agent's uid if it runs as another user)")]
    WrongAgent {
        /// Socket path.
        path: PathBuf,
        /// The listener's uid (SO_PEERCRED).
        uid: u32,
        /// Who was expected.
        expected: String,
    },
    /// The agent refused the request.
    #[error("agent refused: {0}")]
    Refused(String),
    /// The control conversation went wrong.
    #[error("control protocol: {0}")]
    Protocol(String),
    /// The pool handed over could not be used.
    #[error("cannot map the agent's pool")]
    Pool(#[from] ShmError),
    /// An I/O error on the control socket or the bell.
    #[error("control socket I/O")]
    Io(#[from] io::Error),
    /// The submission ring stayed full for the whole timeout.
    #[error("would block: the submission ring stayed full")]
    WouldBlock,
    /// Nothing arrived (recv), or no completion came (delivered send, alloc),
    /// within the timeout.
    #[error("timed out")]
    Timeout,
    /// A send failed.
    #[error("send failed: {}", .0.describe())]
    Send(Status),
    /// The agent went away (its control socket closed).
    #[error("the agent is gone")]
    AgentGone,
    /// The message is larger than the pool can ever hold.
    #[error("message of {len} bytes exceeds the pool's limit of {max}")]
    TooLarge {
        /// Size asked for.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The endpoint or the client was closed.
    #[error("endpoint closed")]
    Closed,
}

/// A failure reported after a buffered send returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncError {
    /// The send's cookie (see [`Endpoint::send`]'s return), or
    /// [`crate::proto::LOSS_COOKIE`] for a node lost with buffered
    /// messages of ours possibly in flight to it (see `node`).
    pub cookie: u64,
    /// What went wrong.
    pub status: Status,
    /// For a lost-node report: the node. Buffered sends to it since the
    /// previous report may not have arrived.
    pub node: Option<u32>,
}

/// A deadline whose clock is read only when something has to wait.
struct Deadline {
    timeout: Duration,
    at: Cell<Option<Instant>>,
}

impl Deadline {
    fn new(timeout: Duration) -> Deadline {
        Deadline {
            timeout,
            at: Cell::new(None),
        }
    }

    fn at(&self) -> Instant {
        if let Some(a) = self.at.get() {
            return a;
        }
        let now = Instant::now();
        let a = now
            .checked_add(self.timeout)
            .unwrap_or(now + Duration::from_secs(86400 * 365));
        self.at.set(Some(a));
        a
    }
}

struct Inner {
    pool: Arc<Pool>,
    slot: u32,
    node: u32,
    nodes: u32,
    eager_max: usize,
    ctl: UnixStream,
    reader: RefCell<LineReader>,
    sub: RefCell<RingTx>,
    comp: RefCell<RingRx>,
    /// This client's end of its bell: bytes sent ring the agent, bytes
    /// received wake this client. Non-blocking.
    bell: UnixDatagram,
    cookie: Cell<u64>,
    awaited: RefCell<HashSet<u64>>,
    done: RefCell<HashMap<u64, Completion>>,
    errors: RefCell<VecDeque<AsyncError>>,
    deferred_free: RefCell<Vec<u64>>,
    gone: Cell<bool>,
    scratch: RefCell<Vec<u8>>,
    recv_scratch: RefCell<Vec<u8>>,
}

impl Inner {
    fn next_cookie(&self) -> u64 {
        let c = self.cookie.get();
        self.cookie.set(c.wrapping_add(1));
        c
    }

    fn ring_doorbell(&self) {
        if needs_wake(self.pool.agent_sleeping()) {
            // A full bell (EAGAIN) already holds wake-ups for the agent.
            let _ = self.bell.send(&[1]);
        }
    }

    /// Try to submit one record now.
    fn try_submit(&self, parts: &[&[u8]]) -> Result<bool, Error> {
        self.flush_deferred();
        let ok = self
            .sub
            .borrow_mut()
            .try_push(parts)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if ok {
            self.ring_doorbell();
        }
        Ok(ok)
    }

    /// Submit, waiting up to the deadline for room.
    fn submit(&self, parts: &[&[u8]], deadline: &Deadline) -> Result<(), Error> {
        self.wait_as(deadline, true, || Ok(self.try_submit(parts)?.then_some(())))
            .map_err(|e| {
                if matches!(e, Error::Timeout) {
                    Error::WouldBlock
                } else {
                    e
                }
            })
    }

    fn flush_deferred(&self) {
        let mut d = self.deferred_free.borrow_mut();
        while let Some(&off) = d.last() {
            let s = Submit {
                op: Op::Free,
                mode: Mode::Buffered,
                src_slot: 0,
                dst_node: 0,
                dst_ep: 0,
                cookie: 0,
                off,
                len: 0,
            };
            match self.sub.borrow_mut().try_push(&[&s.to_bytes()]) {
                Ok(true) => {
                    d.pop();
                }
                _ => break,
            }
        }
    }

    fn free_block(&self, off: u64) {
        self.deferred_free.borrow_mut().push(off);
        self.flush_deferred();
        self.ring_doorbell();
    }

    /// Move completions from the ring into `done` / `errors`.
    fn drain_completions(&self) -> Result<(), Error> {
        let mut buf = self.scratch.borrow_mut();
        let mut comp = self.comp.borrow_mut();
        while comp
            .try_pop(&mut buf)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            let Some(c) = Completion::parse(&buf) else {
                return Err(Error::Protocol("malformed completion".into()));
            };
            if self.awaited.borrow_mut().remove(&c.cookie) {
                self.done.borrow_mut().insert(c.cookie, c);
            } else if c.kind == CompKind::Alloc && c.status == crate::proto::Status::Ok {
                // An allocation nobody waits for any more (timed out): return it.
                self.deferred_free.borrow_mut().push(c.off);
            } else if c.status != Status::Ok {
                let node = (c.cookie == crate::proto::LOSS_COOKIE).then_some(c.off as u32);
                self.errors.borrow_mut().push_back(AsyncError {
                    cookie: c.cookie,
                    status: c.status,
                    node,
                });
            }
        }
        Ok(())
    }

    fn await_completion(&self, cookie: u64, deadline: &Deadline) -> Result<Completion, Error> {
        let r = self.wait(deadline, || {
            self.drain_completions()?;
            Ok(self.done.borrow_mut().remove(&cookie))
        });
        if r.is_err() {
            self.awaited.borrow_mut().remove(&cookie);
        }
        r
    }

    /// Poll `f` until it yields, spinning briefly and then sleeping on the
    /// bell, until the deadline. The clock is not read when `f`
    /// yields at once (the common case on the data path).
    fn wait<T>(
        &self,
        dl: &Deadline,
        f: impl FnMut() -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        self.wait_as(dl, false, f)
    }

    /// [`Inner::wait`]; `room`: what is awaited is only room in the
    /// submission ring, so the agent may let this client sleep until half
    /// the ring is free ([`announce_sleep_for_room`]).
    fn wait_as<T>(
        &self,
        dl: &Deadline,
        room: bool,
        mut f: impl FnMut() -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        if let Some(v) = f()? {
            return Ok(v);
        }
        let deadline = dl.at();
        let mut now = Instant::now();
        // Spin 64 polls, then yield between polls (an agent sharing this
        // core gets to run), then sleep on the bell once SPIN passed.
        let mut backoff = Backoff::new(SPIN, 64, now);
        loop {
            if self.gone.get() {
                return Err(Error::AgentGone);
            }
            if now >= deadline {
                return Err(Error::Timeout);
            }
            let step = backoff.idle(now);
            if step != Step::Sleep {
                if step == Step::Spin {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                if let Some(v) = f()? {
                    return Ok(v);
                }
                // The clock is read every 16 spins, and after every yield.
                if step == Step::Yield || backoff.polls() % 16 == 0 {
                    now = Instant::now();
                }
                continue;
            }
            let word = self.pool.client_sleeping(self.slot);
            if room {
                announce_sleep_for_room(word);
            } else {
                announce_sleep(word);
            }
            if let Some(v) = f()? {
                announce_awake(word);
                return Ok(v);
            }
            let left = deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(100));
            let ms =
                PollTimeout::try_from(left.as_millis().max(1) as u64).unwrap_or(PollTimeout::MAX);
            let mut fds = [
                PollFd::new(self.bell.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.ctl.as_fd(), PollFlags::POLLIN),
            ];
            let _ = poll(&mut fds, ms);
            let ctl_ev = fds[1].revents().unwrap_or(PollFlags::empty());
            announce_awake(word);
            self.drain_bell();
            if ctl_ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLIN) {
                self.check_agent()?;
            }
            if let Some(v) = f()? {
                return Ok(v);
            }
            now = Instant::now();
        }
    }

    /// Take the wake-ups the agent sent (bounded: what is left wakes the
    /// next poll at once, which is harmless).
    fn drain_bell(&self) {
        let mut b = [0u8; 16];
        for _ in 0..64 {
            if self.bell.recv(&mut b).is_err() {
                break;
            }
        }
    }

    /// The control socket became readable or hung up: an eviction notice or
    /// the agent's death.
    fn check_agent(&self) -> Result<(), Error> {
        self.ctl.set_nonblocking(true)?;
        let mut r = self.reader.borrow_mut();
        let res = r.read_from(&self.ctl);
        self.ctl.set_nonblocking(false)?;
        match res {
            Ok(crate::shm::handoff::ReadOutcome::Closed) | Err(_) => {
                self.gone.set(true);
                Err(Error::AgentGone)
            }
            _ => {
                if let Some((line, _)) = r.next_line() {
                    if let Ok(CtlReply::Error { message }) = serde_json::from_str(&line) {
                        self.gone.set(true);
                        return Err(Error::Refused(message));
                    }
                }
                Ok(())
            }
        }
    }

    fn request(&self, req: &CtlRequest) -> Result<(CtlReply, Vec<OwnedFd>), Error> {
        if self.gone.get() {
            return Err(Error::AgentGone);
        }
        let line = serde_json::to_string(req).map_err(|e| Error::Protocol(e.to_string()))?;
        send_line(&self.ctl, &line, &[]).map_err(|_| Error::AgentGone)?;
        let (line, fds) = self
            .reader
            .borrow_mut()
            .read_line_blocking(&self.ctl)
            .map_err(|_| Error::AgentGone)?;
        let rep: CtlReply =
            serde_json::from_str(&line).map_err(|e| Error::Protocol(e.to_string()))?;
        if let CtlReply::Error { message } = rep {
            return Err(Error::Refused(message));
        }
        Ok((rep, fds))
    }
}

/// An attached client.
pub struct Client {
    inner: Rc<Inner>,
}

/// Ask an agent for its statistics (no attach needed).
pub fn stat(path: impl AsRef<Path>) -> Result<crate::agent::stats::Snapshot, Error> {
    match request(path.as_ref(), &CtlRequest::Stat)? {
        CtlReply::Stat(s) => Ok(*s),
        other => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
    }
}

/// Ask an agent for the job-wide view (no attach needed): it asks every peer
/// over its link and answers once all did or after `timeout` (the agent
/// clamps it to 50 ms .. 20 s); a node that did not answer has a row that
/// says why.
pub fn job_stat(
    path: impl AsRef<Path>,
    timeout: std::time::Duration,
) -> Result<crate::agent::jobview::JobView, Error> {
    let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
    match request(path.as_ref(), &CtlRequest::JobStat { timeout_ms })? {
        CtlReply::JobStat(v) => Ok(*v),
        other => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
    }
}

/// Have an agent break its connection to peer `node`, as a network fault
/// would (no attach needed); the two agents then resume over a new one.
pub fn break_link(path: impl AsRef<Path>, node: u32) -> Result<(), Error> {
    hold_link_down(path, node, Duration::ZERO)
}

/// Break an agent's link to peer `node` and keep it down for `hold` (an
/// outage drill; the udp and dpdk transports hold, others refuse): nothing
/// to or from that peer is taken meanwhile, then the link is made again
/// and the session resumes. Only the agent's uid and root may.
pub fn hold_link_down(path: impl AsRef<Path>, node: u32, hold: Duration) -> Result<(), Error> {
    let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
    match request(path.as_ref(), &CtlRequest::BreakLink { node, hold_ms })? {
        CtlReply::Ok => Ok(()),
        other => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
    }
}

/// Have an agent make its links to peer `node` (or to every peer) now
/// rather than on their first message (no attach needed).
pub fn connect_peers(path: impl AsRef<Path>, node: Option<u32>) -> Result<(), Error> {
    match request(path.as_ref(), &CtlRequest::Connect { node })? {
        CtlReply::Ok => Ok(()),
        other => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
    }
}

/// Connect to the agent's control socket and check who listens there:
/// this process's own uid, root, or the uid in `WYVERN_AGENT_UID`. Another
/// user's listener (a squatter) is refused.
fn connect(path: &Path) -> Result<UnixStream, Error> {
    let s = UnixStream::connect(path).map_err(|source| {
        if source.kind() == io::ErrorKind::PermissionDenied {
            let me = nix::unistd::geteuid().as_raw();
            let who = match outside_uid(me) {
                Some(out) => format!(
                    "{} in a user namespace (uid {out} outside it, which is who the agent sees)",
                    user_name(me)
                ),
                None => user_name(me),
            };
            Error::PermissionDenied {
                path: path.into(),
                who,
                may: who_may_attach(path),
            }
        } else {
            Error::Connect {
                path: path.into(),
                source,
            }
        }
    })?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| Error::Connect {
            path: path.into(),
            source: e.into(),
        })?;
    let me = nix::unistd::geteuid().as_raw();
    let want: Option<u32> = std::env::var("WYVERN_AGENT_UID")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let uid = cred.uid();
    if uid != me && uid != 0 && Some(uid) != want {
        let mut expected = match want {
            Some(w) => format!("this user's uid {me}, root or WYVERN_AGENT_UID={w}"),
            None => format!("this user's uid {me} or root"),
        };
        if uid == overflow_uid() && outside_uid(me).is_some() {
            // A container's user namespace that does not map the agent's
            // user: who listens cannot be told from here.
            expected.push_str(&format!(
                "; uid {uid} is the overflow uid: the listener's user is not mapped into this \
                 user namespace (a container's), so WYVERN_AGENT_UID={uid} accepts it if the \
                 socket directory was mounted in by whoever runs the agent"
            ));
        }
        return Err(Error::WrongAgent {
            path: path.into(),
            uid,
            expected,
        });
    }
    // A reply that never comes ends the wait (a wedged agent must not hang
    // `wyvern stat` or an application for ever).
    s.set_read_timeout(Some(CTL_TIMEOUT))?;
    Ok(s)
}

/// The uid that `uid` of this process's user namespace is outside it, when
/// the namespace maps ids (a container's); `None` in the initial namespace.
fn outside_uid(uid: u32) -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let lines: Vec<Vec<u64>> = map
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .collect();
    if lines.len() == 1 && lines[0] == [0, 0, u64::from(u32::MAX)] {
        return None; // the identity: the initial user namespace
    }
    lines.iter().find_map(|l| match l[..] {
        [inside, outside, count] if (inside..inside + count).contains(&u64::from(uid)) => {
            u32::try_from(outside + (u64::from(uid) - inside)).ok()
        }
        _ => None,
    })
}

/// The kernel's overflow uid: what a file's owner shows as in a user
/// namespace that does not map it.
fn overflow_uid() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/overflowuid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

/// `uid N (name)`, or `root`.
fn user_name(uid: u32) -> String {
    if uid == 0 {
        return "root".into();
    }
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// `group N (name)`.
fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => format!("group {gid} ({})", g.name),
        _ => format!("group {gid}"),
    }
}

/// Who may attach to the agent whose socket is `path`, as far as its
/// owner, group and mode show (the agent makes the socket 0700, its
/// directory 0700, or 0770 and 0750 with the group `allow_gid`).
fn who_may_attach(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The socket needs write permission; its directory search permission.
    let (md, what, group_bit) = match std::fs::metadata(path) {
        Ok(m) => (m, "socket", 0o020),
        Err(_) => match std::fs::metadata(dir) {
            Ok(m) => (m, "directory", 0o010),
            Err(e) => {
                return format!(
                    "only the agent's user, root and members of its allow_gid group may \
                     ({} is not visible: {e})",
                    dir.display()
                )
            }
        },
    };
    let mode = md.mode() & 0o7777;
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() == overflow_uid() && outside_uid(me).is_some() {
        // In a container's user namespace the agent's user is not mapped:
        // the owner shown is the overflow uid, not who runs the agent.
        return format!(
            "the {what}'s owner is not mapped into this user namespace (it shows as uid {}, the \
             overflow uid), so this process cannot be the agent's user here; run the container \
             as (mapped to) the agent's user, or as a member of its allow_gid group with the \
             socket directory mounted in",
            md.uid()
        );
    }
    let users = if md.uid() == 0 {
        "root".to_string()
    } else {
        format!("{} and root", user_name(md.uid()))
    };
    if mode & group_bit != 0 && md.gid() != 0 {
        let mine: Vec<String> = nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .chain([nix::unistd::getegid()])
            .map(|g| g.as_raw().to_string())
            .collect();
        format!(
            "only {users} and members of {} (the agent's allow_gid) may (its {what} is mode \
             {mode:o}); this process's groups are {}",
            group_name(md.gid()),
            mine.join(",")
        )
    } else {
        format!(
            "only {users} may: the agent sets no allow_gid (its {what} is mode {mode:o}); \
             start it with --allow-gid GID (allow_gid in its configuration) to let that group's \
             members attach"
        )
    }
}

/// One request on a fresh control connection; an error reply is an `Err`.
fn request(path: &Path, req: &CtlRequest) -> Result<CtlReply, Error> {
    let s = connect(path)?;
    // The agent may refuse us before reading the request (wrong uid): its
    // answer is still there to read even when our write fails.
    let sent = send_line(&s, &serde_json::to_string(req).expect("serialisable"), &[]);
    let (line, _) = match LineReader::with_limit(MAX_REPLY_LINE).read_line_blocking(&s) {
        Ok(l) => l,
        Err(e) => return Err(Error::Io(sent.err().unwrap_or(e))),
    };
    match serde_json::from_str(&line).map_err(|e| Error::Protocol(e.to_string()))? {
        CtlReply::Error { message } => Err(Error::Refused(message)),
        rep => Ok(rep),
    }
}

impl Client {
    /// Attach to the agent listening on `path`. `name` shows in `wyvern stat`.
    pub fn attach(path: impl AsRef<Path>, name: &str) -> Result<Client, Error> {
        let path = path.as_ref();
        let ctl = connect(path)?;
        let req = CtlRequest::Attach {
            version: crate::shm::LAYOUT_VERSION,
            pid: std::process::id(),
            name: name.to_string(),
        };
        // A refusal (wrong uid) may close the socket before our write lands:
        // read the agent's answer even then.
        let sent = send_line(
            &ctl,
            &serde_json::to_string(&req).map_err(|e| Error::Protocol(e.to_string()))?,
            &[],
        );
        let mut reader = LineReader::with_limit(MAX_REPLY_LINE);
        let (line, fds) = reader
            .read_line_blocking(&ctl)
            .map_err(|e| Error::Connect {
                path: path.into(),
                source: sent.err().unwrap_or(e),
            })?;
        let rep: CtlReply =
            serde_json::from_str(&line).map_err(|e| Error::Protocol(e.to_string()))?;
        let (slot, node, nodes, eager_max, params, backing) = match rep {
            CtlReply::Attached {
                slot,
                node,
                nodes,
                eager_max,
                pool,
                backing,
            } => (slot, node, nodes, eager_max, pool, backing),
            CtlReply::Error { message } => return Err(Error::Refused(message)),
            other => return Err(Error::Protocol(format!("unexpected reply {other:?}"))),
        };
        let mut fds = fds.into_iter();
        let (Some(pool_fd), Some(bell)) = (fds.next(), fds.next()) else {
            return Err(Error::Protocol(
                "attach reply without the pool and bell fds".into(),
            ));
        };
        let bell = UnixDatagram::from(bell);
        bell.set_nonblocking(true)?;
        // The geometry the agent sent, never the pool's header (which any
        // client may have overwritten).
        let pool = Arc::new(Pool::open_with(pool_fd, params, node, backing)?);
        if slot >= pool.layout().params.max_clients {
            return Err(Error::Protocol(format!("slot {slot} outside the pool")));
        }
        let inner = Inner {
            sub: RefCell::new(pool.sub_producer(slot)),
            comp: RefCell::new(pool.comp_consumer(slot)),
            pool,
            slot,
            node,
            nodes,
            eager_max: eager_max as usize,
            ctl,
            reader: RefCell::new(reader),
            bell,
            cookie: Cell::new(1),
            awaited: RefCell::default(),
            done: RefCell::default(),
            errors: RefCell::default(),
            deferred_free: RefCell::default(),
            gone: Cell::new(false),
            scratch: RefCell::new(Vec::with_capacity(256)),
            recv_scratch: RefCell::new(Vec::with_capacity(8192)),
        };
        Ok(Client {
            inner: Rc::new(inner),
        })
    }

    /// This node's id.
    pub fn node(&self) -> u32 {
        self.inner.node
    }

    /// Nodes in the job.
    pub fn nodes(&self) -> u32 {
        self.inner.nodes
    }

    /// The largest message sent inline through the rings; larger ones go
    /// through a pool block.
    pub fn eager_max(&self) -> usize {
        self.inner.eager_max
    }

    /// Whether the pool sits in hugepages.
    pub fn backing(&self) -> crate::shm::Backing {
        self.inner.pool.backing()
    }

    /// Open an endpoint with the given id, or one the agent picks.
    pub fn open_endpoint(&self, id: Option<u32>) -> Result<Endpoint, Error> {
        match self.inner.request(&CtlRequest::OpenEndpoint { id })? {
            (CtlReply::Endpoint { id, slot }, _) => {
                if slot >= self.inner.pool.layout().params.endpoints_per_client {
                    return Err(Error::Protocol(format!(
                        "endpoint slot {slot} outside the pool"
                    )));
                }
                Ok(Endpoint {
                    id,
                    slot,
                    rx: RefCell::new(self.inner.pool.recv_consumer(self.inner.slot, slot)),
                    inner: self.inner.clone(),
                    open: Cell::new(true),
                })
            }
            (other, _) => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Allocate a pool block to fill and send without a further copy
    /// ([`Endpoint::send_buf`]).
    pub fn alloc(&self, len: usize, timeout: Duration) -> Result<SendBuf, Error> {
        alloc_block(&self.inner, len, timeout)
    }

    /// Push an arbitrary record into this client's submission ring, as a
    /// buggy or hostile client could. For tests of the agent's defences only
    /// (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn submit_raw(&self, rec: &[u8]) -> Result<bool, Error> {
        self.inner.try_submit(&[rec])
    }

    /// Write arbitrary bytes anywhere in the pool. For tests of the agent's
    /// defences only (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn scribble(&self, off: usize, bytes: &[u8]) {
        self.inner.pool.scribble(off, bytes)
    }

    /// The pool memfd this client maps (every client holds it read-write).
    /// For tests that play a hostile client (e.g. punching holes in it;
    /// feature `testing`).
    #[cfg(feature = "testing")]
    pub fn pool_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inner.pool.fd().as_fd()
    }

    /// The pool's layout and this client's slot. For tests (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn layout(&self) -> (crate::shm::Layout, u32) {
        (*self.inner.pool.layout(), self.inner.slot)
    }

    /// Failures of buffered sends reported since the last call.
    pub fn take_errors(&self) -> Vec<AsyncError> {
        let _ = self.inner.drain_completions();
        self.inner.errors.borrow_mut().drain(..).collect()
    }

    /// Leave the agent. (Dropping the client does the same without waiting
    /// for the agent's answer.)
    pub fn detach(self) -> Result<(), Error> {
        self.inner.flush_deferred();
        match self.inner.request(&CtlRequest::Detach) {
            Ok(_) | Err(Error::AgentGone) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Ask the agent for a pool block of `len` bytes, waiting up to `timeout`
/// while the pool (or this client's share of it) is full.
fn alloc_block(inner: &Rc<Inner>, len: usize, timeout: Duration) -> Result<SendBuf, Error> {
    let i = inner;
    let deadline = Deadline::new(timeout);
    let max = i.pool.layout().params.block_bytes;
    if len as u64 > max {
        return Err(Error::TooLarge {
            len: len as u64,
            max,
        });
    }
    let mut saw_no_room = false;
    loop {
        let cookie = i.next_cookie();
        let s = Submit {
            op: Op::Alloc,
            mode: Mode::Buffered,
            src_slot: 0,
            dst_node: 0,
            dst_ep: 0,
            cookie,
            off: 0,
            len: len as u64,
        };
        i.awaited.borrow_mut().insert(cookie);
        // After a "no room" answer, running out of time means the pool
        // stayed full: that is `WouldBlock`, not a silent agent.
        let retried = |e: Error| match e {
            Error::Timeout if saw_no_room => Error::WouldBlock,
            e => e,
        };
        i.submit(&[&s.to_bytes()], &deadline).map_err(retried)?;
        let c = i.await_completion(cookie, &deadline).map_err(retried)?;
        match c.status {
            Status::Ok => {
                if i.pool.block_slice(c.off, len as u64).is_none() {
                    return Err(Error::Protocol(
                        "allocation outside the block region".into(),
                    ));
                }
                return Ok(SendBuf {
                    off: c.off,
                    len,
                    inner: i.clone(),
                    sent: false,
                });
            }
            Status::NoMemory if Instant::now() < deadline.at() => {
                // The pool is full for now: wait a little and ask again.
                saw_no_room = true;
                std::thread::sleep(Duration::from_micros(200));
            }
            Status::NoMemory => return Err(Error::WouldBlock),
            s => return Err(Error::Send(s)),
        }
    }
}

/// A block of the pool owned by this client, to fill and send.
pub struct SendBuf {
    off: u64,
    len: usize,
    inner: Rc<Inner>,
    sent: bool,
}

impl std::ops::Deref for SendBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.inner
            .pool
            .block_slice(self.off, self.len as u64)
            .expect("checked at alloc")
    }
}

impl std::ops::DerefMut for SendBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.inner
            .pool
            .block_slice_mut(self.off, self.len as u64)
            .expect("checked at alloc")
    }
}

impl Drop for SendBuf {
    fn drop(&mut self) {
        if !self.sent {
            self.inner.free_block(self.off);
        }
    }
}

/// The message a delivery record (copied out of a receive ring) names: its
/// bytes inline in the record, or a view of its pool block.
fn message_ref<'a>(i: &'a Inner, rec: &'a [u8]) -> Result<MessageRef<'a>, Error> {
    let Some((d, payload)) = Delivery::parse(rec) else {
        return Err(Error::Protocol("malformed delivery".into()));
    };
    let (data, block) = if d.off == Delivery::INLINE {
        (payload, None)
    } else {
        let Some(data) = i.pool.block_slice(d.off, d.len) else {
            return Err(Error::Protocol("delivery outside the block region".into()));
        };
        (data, Some((d.off, d.len)))
    };
    Ok(MessageRef {
        src_node: d.src_node,
        src_ep: d.src_ep,
        data,
        block,
        keep_block: Cell::new(false),
    })
}

/// One message of a batch for [`Endpoint::send_many`].
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// Destination node.
    pub dst_node: u32,
    /// Destination endpoint.
    pub dst_ep: u32,
    /// The bytes.
    pub data: &'a [u8],
}

/// A received message.
pub struct Message {
    /// Sending node.
    pub src_node: u32,
    /// Sending endpoint.
    pub src_ep: u32,
    payload: Payload,
}

enum Payload {
    Inline(Vec<u8>),
    Block {
        off: u64,
        len: u64,
        inner: Rc<Inner>,
    },
}

impl Message {
    /// The bytes. For a large message this is a view into the pool (no copy);
    /// the block returns to the agent when the message is dropped.
    pub fn data(&self) -> &[u8] {
        match &self.payload {
            Payload::Inline(v) => v,
            Payload::Block { off, len, inner } => inner.pool.block_slice(*off, *len).unwrap_or(&[]),
        }
    }

    /// Whether the payload is a zero-copy view of a pool block.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.payload, Payload::Block { .. })
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if let Payload::Block { off, inner, .. } = &self.payload {
            inner.free_block(*off);
        }
    }
}

/// A received message lent to a closure ([`Endpoint::recv_with`]).
pub struct MessageRef<'a> {
    /// Sending node.
    pub src_node: u32,
    /// Sending endpoint.
    pub src_ep: u32,
    /// The bytes.
    pub data: &'a [u8],
    block: Option<(u64, u64)>,
    keep_block: Cell<bool>,
}

impl MessageRef<'_> {
    /// Whether `data` is a view of a pool block (no copy was made).
    pub fn is_zero_copy(&self) -> bool {
        self.block.is_some()
    }
}

/// An open endpoint: a mailbox with address (node, id).
pub struct Endpoint {
    id: u32,
    slot: u32,
    rx: RefCell<RingRx>,
    inner: Rc<Inner>,
    open: Cell<bool>,
}

impl Endpoint {
    /// This endpoint's id (unique on its node).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Send `data` to endpoint `dst_ep` on node `dst_node`. Returns the
    /// send's cookie, which names it in [`Client::take_errors`].
    ///
    /// `Buffered` returns once the message is in the submission ring (large
    /// messages: once copied into a pool block and submitted); `Delivered`
    /// returns once the destination agent deposited it in the endpoint's
    /// receive ring. Either waits up to `timeout` for ring room
    /// ([`Error::WouldBlock`] when there is none).
    pub fn send(
        &self,
        dst_node: u32,
        dst_ep: u32,
        data: &[u8],
        mode: Mode,
        timeout: Duration,
    ) -> Result<u64, Error> {
        let i = &self.inner;
        if !self.open.get() {
            return Err(Error::Closed);
        }
        if data.len() > i.eager_max {
            let deadline = Instant::now() + timeout;
            let mut buf = alloc_block(i, data.len(), timeout)?;
            buf.copy_from_slice(data);
            let left = deadline.saturating_duration_since(Instant::now());
            return self.send_buf(dst_node, dst_ep, buf, mode, left);
        }
        let cookie = i.next_cookie();
        let s = Submit {
            op: Op::Send,
            mode,
            src_slot: self.slot,
            dst_node,
            dst_ep,
            cookie,
            off: 0,
            len: data.len() as u64,
        };
        self.finish_send(&s, data, timeout)
    }

    /// Send a batch of messages in [`Mode::Buffered`], in order, paying one
    /// publication of the submission ring and at most one wake-up of the
    /// agent for every run of small messages that fits the ring at once
    /// (instead of one each, as [`Endpoint::send`] does). Messages above
    /// [`Client::eager_max`] go as [`Endpoint::send`] sends them (a block),
    /// in their place in the order. Waits up to `timeout` in all for room;
    /// returns how many of `msgs` were submitted, from the first: all, or
    /// fewer when the time ran out (the rest are the caller's to send again;
    /// none: [`Error::WouldBlock`]). Failures come from
    /// [`Client::take_errors`].
    pub fn send_many(&self, msgs: &[Outgoing<'_>], timeout: Duration) -> Result<usize, Error> {
        let i = &self.inner;
        if !self.open.get() {
            return Err(Error::Closed);
        }
        let deadline = Deadline::new(timeout);
        let mut sent = 0;
        while sent < msgs.len() {
            let m = &msgs[sent];
            if m.data.len() > i.eager_max {
                let left = deadline.at().saturating_duration_since(Instant::now());
                match self.send(m.dst_node, m.dst_ep, m.data, Mode::Buffered, left) {
                    Ok(_) => sent += 1,
                    Err(Error::WouldBlock) | Err(Error::Timeout) if sent > 0 => break,
                    Err(e) => return Err(e),
                }
                continue;
            }
            // As many small ones as the ring takes now, shown to the agent
            // at once; wait for room only when not even one fits.
            let staged = i.wait(&deadline, || {
                i.flush_deferred();
                let mut sub = i.sub.borrow_mut();
                let mut n = 0;
                for m in msgs[sent..]
                    .iter()
                    .take_while(|m| m.data.len() <= i.eager_max)
                {
                    let s = Submit {
                        op: Op::Send,
                        mode: Mode::Buffered,
                        src_slot: self.slot,
                        dst_node: m.dst_node,
                        dst_ep: m.dst_ep,
                        cookie: i.next_cookie(),
                        off: 0,
                        len: m.data.len() as u64,
                    };
                    let staged = sub
                        .try_stage(&[&s.to_bytes(), m.data])
                        .map_err(|e| Error::Protocol(e.to_string()))?;
                    if !staged {
                        // That cookie was not used: give it back.
                        i.cookie.set(s.cookie);
                        break;
                    }
                    n += 1;
                }
                if n == 0 {
                    return Ok(None);
                }
                sub.publish();
                drop(sub);
                i.ring_doorbell();
                Ok(Some(n))
            });
            match staged {
                Ok(n) => sent += n,
                Err(Error::Timeout) if sent > 0 => break,
                Err(Error::Timeout) => return Err(Error::WouldBlock),
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// Send a block filled in place (no copy on this side). The block is
    /// the agent's from then on, also when the send fails (except
    /// [`Error::WouldBlock`]: see [`Endpoint::try_send_buf`] to keep it).
    pub fn send_buf(
        &self,
        dst_node: u32,
        dst_ep: u32,
        buf: SendBuf,
        mode: Mode,
        timeout: Duration,
    ) -> Result<u64, Error> {
        self.try_send_buf(dst_node, dst_ep, buf, mode, timeout)
            .map_err(|(e, _)| e)
    }

    /// [`Endpoint::send_buf`], giving the block back when it was not
    /// submitted: no room in the ring within the timeout
    /// ([`Error::WouldBlock`]), a closed endpoint, or a block of another
    /// client. Any other failure comes after the agent took the block.
    pub fn try_send_buf(
        &self,
        dst_node: u32,
        dst_ep: u32,
        mut buf: SendBuf,
        mode: Mode,
        timeout: Duration,
    ) -> Result<u64, (Error, Option<SendBuf>)> {
        if !self.open.get() {
            return Err((Error::Closed, Some(buf)));
        }
        if !Rc::ptr_eq(&buf.inner, &self.inner) {
            return Err((
                Error::Refused("the block was allocated by another client".into()),
                Some(buf),
            ));
        }
        let cookie = self.inner.next_cookie();
        let s = Submit {
            op: Op::SendBlock,
            mode,
            src_slot: self.slot,
            dst_node,
            dst_ep,
            cookie,
            off: buf.off,
            len: buf.len as u64,
        };
        // From the moment it is submitted the block is the agent's.
        match self.finish_send(&s, &[], timeout) {
            Err(Error::WouldBlock) => Err((Error::WouldBlock, Some(buf))),
            r => {
                buf.sent = true;
                r.map_err(|e| (e, None))
            }
        }
    }

    fn finish_send(&self, s: &Submit, payload: &[u8], timeout: Duration) -> Result<u64, Error> {
        let i = &self.inner;
        let deadline = Deadline::new(timeout);
        if s.mode == Mode::Delivered {
            i.awaited.borrow_mut().insert(s.cookie);
        }
        let hdr = s.to_bytes();
        debug_assert_eq!(hdr.len(), SUB_HEADER);
        if let Err(e) = i.submit(&[&hdr, payload], &deadline) {
            i.awaited.borrow_mut().remove(&s.cookie);
            return Err(e);
        }
        if s.mode == Mode::Delivered {
            let c = i.await_completion(s.cookie, &deadline)?;
            if c.status != Status::Ok {
                return Err(Error::Send(c.status));
            }
        }
        Ok(s.cookie)
    }

    /// The next message, if one is waiting.
    pub fn try_recv(&self) -> Result<Option<Message>, Error> {
        self.try_recv_with(|m| match m.block {
            None => Message {
                src_node: m.src_node,
                src_ep: m.src_ep,
                payload: Payload::Inline(m.data.to_vec()),
            },
            Some((off, len)) => {
                // Ownership of the block passes to the `Message`.
                m.keep_block.set(true);
                Message {
                    src_node: m.src_node,
                    src_ep: m.src_ep,
                    payload: Payload::Block {
                        off,
                        len,
                        inner: self.inner.clone(),
                    },
                }
            }
        })
    }

    /// The next message, if one is waiting, handed to `f` without any
    /// allocation: small messages are read in place of a reused buffer, large
    /// ones in their pool block, which returns to the agent when `f` is done.
    pub fn try_recv_with<R>(
        &self,
        f: impl FnOnce(&MessageRef<'_>) -> R,
    ) -> Result<Option<R>, Error> {
        let i = &self.inner;
        let mut rx = self.rx.borrow_mut();
        let mut buf = i.recv_scratch.borrow_mut();
        if !rx
            .try_pop(&mut buf)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            return Ok(None);
        }
        drop(rx);
        let m = message_ref(i, &buf)?;
        let r = f(&m);
        if let (Some((off, _)), false) = (m.block, m.keep_block.get()) {
            i.free_block(off);
        }
        Ok(Some(r))
    }

    /// Hand up to `max` waiting messages to `f`, in order, as
    /// [`Endpoint::try_recv_with`] does, giving their ring slots back to the
    /// agent once for the batch; returns how many (0: none waiting). A large
    /// message's block returns to the agent when `f` is done with it.
    pub fn try_recv_many(
        &self,
        max: usize,
        mut f: impl FnMut(&MessageRef<'_>),
    ) -> Result<usize, Error> {
        let i = &self.inner;
        let mut rx = self.rx.borrow_mut();
        let mut buf = i.recv_scratch.borrow_mut();
        let mut n = 0;
        let mut freed = false;
        // Every record taken is released below, also when one fails.
        let mut take = || -> Result<(), Error> {
            while n < max
                && rx
                    .try_take(&mut buf)
                    .map_err(|e| Error::Protocol(e.to_string()))?
            {
                n += 1;
                let m = message_ref(i, &buf)?;
                f(&m);
                if let Some((off, _)) = m.block {
                    i.deferred_free.borrow_mut().push(off);
                    freed = true;
                }
            }
            Ok(())
        };
        let r = take();
        rx.release();
        drop(rx);
        if freed {
            i.flush_deferred();
            i.ring_doorbell();
        }
        r.map(|()| n)
    }

    /// Wait up to `timeout` for at least one message, then hand up to `max`
    /// waiting ones to `f` (see [`Endpoint::try_recv_many`]); returns how
    /// many ([`Error::Timeout`] when none came).
    pub fn recv_many(
        &self,
        max: usize,
        timeout: Duration,
        mut f: impl FnMut(&MessageRef<'_>),
    ) -> Result<usize, Error> {
        if !self.open.get() {
            return Err(Error::Closed);
        }
        let deadline = Deadline::new(timeout);
        self.inner.wait(&deadline, || {
            let n = self.try_recv_many(max, &mut f)?;
            Ok((n > 0).then_some(n))
        })
    }

    /// Wait up to `timeout` for the next message and hand it to `f` (see
    /// [`Endpoint::try_recv_with`]).
    pub fn recv_with<R>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&MessageRef<'_>) -> R,
    ) -> Result<R, Error> {
        if !self.open.get() {
            return Err(Error::Closed);
        }
        let deadline = Deadline::new(timeout);
        let mut f = Some(f);
        self.inner.wait(&deadline, || {
            let Some(g) = f.take() else { return Ok(None) };
            let mut g = Some(g);
            let r = self.try_recv_with(|m| (g.take().expect("called once"))(m))?;
            if r.is_none() {
                f = g;
            }
            Ok(r)
        })
    }

    /// Wait up to `timeout` for the next message.
    pub fn recv(&self, timeout: Duration) -> Result<Message, Error> {
        if !self.open.get() {
            return Err(Error::Closed);
        }
        let deadline = Deadline::new(timeout);
        self.inner.wait(&deadline, || self.try_recv())
    }

    /// A descriptor to wait on in an event loop (poll, epoll, asyncio's
    /// `add_reader`) for this endpoint's next message, with [`Endpoint::arm`]
    /// and [`Endpoint::disarm`] around the wait: it becomes readable when the
    /// agent gives the client something after `arm` (it is the client's bell,
    /// shared by its endpoints, so a wake-up may be for another of them:
    /// receive with `try_recv*` and arm again when it gave nothing).
    pub fn wait_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.bell.as_fd()
    }

    /// Before waiting on [`Endpoint::wait_fd`]: tells the agent to ring it
    /// for anything new. `Ok(false)`: a message is already waiting (nothing
    /// was armed: receive now); `Ok(true)`: wait for the descriptor, then
    /// [`Endpoint::disarm`].
    pub fn arm(&self) -> Result<bool, Error> {
        if !self.open.get() {
            return Err(Error::Closed);
        }
        if self.inner.gone.get() {
            return Err(Error::AgentGone);
        }
        // Wake-ups left from earlier waits would make the descriptor
        // readable at once.
        self.inner.drain_bell();
        let word = self.inner.pool.client_sleeping(self.inner.slot);
        announce_sleep(word);
        // Looked at after the announcement: a message deposited before it
        // is seen here, one after it rings the bell.
        let empty = self
            .rx
            .borrow_mut()
            .is_empty()
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if !empty {
            announce_awake(word);
        }
        Ok(empty)
    }

    /// After waiting (the descriptor was readable, or the wait ended): the
    /// agent need not ring any more, and the wake-ups it sent are taken.
    pub fn disarm(&self) {
        announce_awake(self.inner.pool.client_sleeping(self.inner.slot));
        self.inner.drain_bell();
    }

    /// Close the endpoint; messages still in its ring are dropped.
    pub fn close(self) -> Result<(), Error> {
        self.open.set(false);
        self.inner
            .request(&CtlRequest::CloseEndpoint { id: self.id })
            .map(drop)
    }
}
