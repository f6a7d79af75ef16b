//! The control socket's framing: one JSON object per line, with file
//! descriptors riding along as SCM_RIGHTS on the line that needs them.
//! Shared by the agent and the client library. It lives in `shm` because
//! taking ownership of received descriptors is `unsafe`.

use std::io;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Longest control line the agent accepts (a request).
pub const MAX_LINE: usize = 16 * 1024;
/// Longest line a client accepts from its agent (a reply: `wyvern stat` of
/// an agent with thousands of peers is megabytes).
pub const MAX_REPLY_LINE: usize = 64 << 20;
/// Most fds accepted with one line.
pub const MAX_FDS: usize = 4;

/// Send `line` (a newline is added) with `fds` attached.
pub fn send_line(sock: &UnixStream, line: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(b'\n');
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut sent = 0;
    while sent < bytes.len() {
        let iov = [IoSlice::new(&bytes[sent..])];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if sent == 0 && !raw.is_empty() {
            &cmsg
        } else {
            &[]
        };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                // A non-blocking socket whose buffer is full: wait for room.
                let mut pfd = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(sock),
                    nix::poll::PollFlags::POLLOUT,
                )];
                nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(1000u16))
                    .map_err(io::Error::from)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Accumulates bytes and fds from a control socket and splits lines.
pub struct LineReader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// Longest line accepted.
    max: usize,
}

impl Default for LineReader {
    fn default() -> LineReader {
        LineReader::with_limit(MAX_LINE)
    }
}

/// What one read produced.
pub enum ReadOutcome {
    /// Some bytes arrived (maybe no complete line yet).
    Data,
    /// Nothing to read now (non-blocking socket).
    WouldBlock,
    /// The peer closed the socket.
    Closed,
}

impl LineReader {
    /// A new reader of lines up to [`MAX_LINE`] (the agent's, of requests).
    pub fn new() -> LineReader {
        LineReader::default()
    }

    /// A reader of lines up to `max` bytes (a client's, of replies:
    /// [`MAX_REPLY_LINE`]).
    pub fn with_limit(max: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            fds: Vec::new(),
            max,
        }
    }

    /// Read once from `sock`.
    pub fn read_from(&mut self, sock: &UnixStream) -> io::Result<ReadOutcome> {
        let mut chunk = [0u8; 4096];
        let mut cspace = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [io::IoSliceMut::new(&mut chunk)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cspace),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return Ok(ReadOutcome::WouldBlock),
            Err(nix::errno::Errno::EINTR) => return Ok(ReadOutcome::WouldBlock),
            Err(e) => return Err(e.into()),
        };
        let n = msg.bytes;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel installed this fd in our table for
                    // us; nothing else owns it.
                    self.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if n == 0 {
            return Ok(ReadOutcome::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        if self.buf.len() > self.max && !self.buf.contains(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control line too long",
            ));
        }
        if self.fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many file descriptors",
            ));
        }
        Ok(ReadOutcome::Data)
    }

    /// The next complete line and every fd received so far.
    pub fn next_line(&mut self) -> Option<(String, Vec<OwnedFd>)> {
        let pos = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=pos).collect();
        let s = String::from_utf8_lossy(&line[..pos]).into_owned();
        Some((s, std::mem::take(&mut self.fds)))
    }

    /// Read (blocking socket) until one line is complete. A read timeout
    /// set on the socket (`SO_RCVTIMEO`) ends the wait with `TimedOut`.
    pub fn read_line_blocking(&mut self, sock: &UnixStream) -> io::Result<(String, Vec<OwnedFd>)> {
        let start = std::time::Instant::now();
        let limit = sock.read_timeout()?;
        loop {
            if let Some(l) = self.next_line() {
                return Ok(l);
            }
            match self.read_from(sock)? {
                ReadOutcome::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "agent closed the control socket",
                    ))
                }
                // EAGAIN after the socket's read timeout, or EINTR.
                ReadOutcome::WouldBlock => {
                    if limit.is_some_and(|t| start.elapsed() >= t) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the agent did not answer in time",
                        ));
                    }
                }
                ReadOutcome::Data => {}
            }
        }
    }
}
