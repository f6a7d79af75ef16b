//! The TCP transport: one non-blocking connection per peer pair.
//!
//! Frames of aggregated messages are written with one `write(2)` each; the
//! chunks of large messages are written straight from their pool block (no
//! copy into a user-space buffer). Reading fills a [`FrameReader`]; the agent
//! takes frames from it as its receive rings have room, and stops reading
//! the socket while too much is buffered, so TCP's own window pushes back on
//! the sending agent.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::shm::Pool;
use crate::wire::FrameReader;

/// Stop reading a socket while this much is buffered but not yet consumed.
pub const RX_HIGH_WATER: usize = 8 << 20;
/// Read at most this much from one socket per poll round (fairness).
const RX_PER_ROUND: usize = 1 << 20;

/// Something queued to go out on a link.
pub enum Out {
    /// Bytes the link owns.
    Bytes {
        /// The bytes.
        buf: Vec<u8>,
        /// How far written.
        pos: usize,
    },
    /// A range of a pool block, written without copying.
    Block {
        /// Pool offset of the range.
        off: u64,
        /// Its length.
        len: u64,
        /// How far written.
        pos: u64,
        /// Once written, free this block (the last chunk of a message).
        free_after: Option<u64>,
    },
}

impl Out {
    fn remaining(&self) -> usize {
        match self {
            Out::Bytes { buf, pos } => buf.len() - pos,
            Out::Block { len, pos, .. } => (len - pos) as usize,
        }
    }
}

/// One established TCP connection to a peer agent.
pub struct Link {
    stream: TcpStream,
    /// Frames read and not yet consumed.
    pub reader: FrameReader,
    out: VecDeque<Out>,
    queued: usize,
    /// When something was last written.
    pub last_tx: Instant,
    /// When something was last read.
    pub last_rx: Instant,
}

impl Link {
    /// Wrap a connected stream (made non-blocking, Nagle off).
    pub fn new(stream: TcpStream) -> io::Result<Link> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let now = Instant::now();
        Ok(Link {
            stream,
            reader: FrameReader::new(),
            out: VecDeque::new(),
            queued: 0,
            last_tx: now,
            last_rx: now,
        })
    }

    /// The socket, for the poller.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.stream)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queue an item.
    pub fn push(&mut self, item: Out) {
        self.queued += item.remaining();
        self.out.push_back(item);
    }

    /// Write as much as the socket takes. Blocks whose last byte went out are
    /// appended to `freed`. Returns `Ok(true)` when everything was written.
    pub fn flush(&mut self, pool: &Pool, freed: &mut Vec<u64>) -> io::Result<bool> {
        while let Some(front) = self.out.front_mut() {
            let r = match front {
                Out::Bytes { buf, pos } => self.stream.write(&buf[*pos..]),
                Out::Block { off, len, pos, .. } => {
                    pool.write_block_to(self.stream.as_raw_fd(), *off + *pos, *len - *pos)
                }
            };
            let n = match r {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped reading",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.last_tx = Instant::now();
            self.queued -= n;
            let done = match front {
                Out::Bytes { buf, pos } => {
                    *pos += n;
                    *pos == buf.len()
                }
                Out::Block { len, pos, .. } => {
                    *pos += n as u64;
                    *pos == *len
                }
            };
            if done {
                if let Some(Out::Block {
                    free_after: Some(b),
                    ..
                }) = self.out.pop_front()
                {
                    freed.push(b);
                }
            }
        }
        Ok(true)
    }

    /// Blocks still referenced by queued items (to free when the link dies).
    pub fn drain_blocks(&mut self) -> Vec<u64> {
        let v = self
            .out
            .iter()
            .filter_map(|o| match o {
                Out::Block { free_after, .. } => *free_after,
                _ => None,
            })
            .collect();
        self.out.clear();
        self.queued = 0;
        v
    }

    /// Read what the socket has, up to the per-round limit. `Ok(false)`:
    /// the peer closed the connection.
    pub fn fill(&mut self) -> io::Result<bool> {
        let mut got = 0;
        while got < RX_PER_ROUND && self.reader.buffered() < RX_HIGH_WATER {
            let spare = self.reader.spare(256 * 1024);
            let offered = spare.len();
            match self.stream.read(spare) {
                Ok(0) => {
                    self.reader.filled(offered, 0);
                    return Ok(false);
                }
                Ok(n) => {
                    self.reader.filled(offered, n);
                    got += n;
                    self.last_rx = Instant::now();
                }
                Err(e) => {
                    self.reader.filled(offered, 0);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(true)
    }

    /// Whether reading is paused because too much is buffered.
    pub fn rx_full(&self) -> bool {
        self.reader.buffered() >= RX_HIGH_WATER
    }

    /// Shut the connection down both ways.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Result of a dial attempt made off the poll thread.
pub struct Dialed {
    /// The node dialed.
    pub node: u32,
    /// The connection, or why not.
    pub result: io::Result<TcpStream>,
}

/// Dials peers on helper threads so that `connect(2)` never blocks the poll
/// loop.
pub struct Dialer {
    tx: mpsc::Sender<Dialed>,
    rx: mpsc::Receiver<Dialed>,
}

impl Default for Dialer {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel();
        Dialer { tx, rx }
    }
}

impl Dialer {
    /// Start dialing `addr` for `node`; `wake` is called when done.
    pub fn dial(&self, node: u32, addr: SocketAddr, wake: impl FnOnce() + Send + 'static) {
        let tx = self.tx.clone();
        std::thread::Builder::new()
            .name(format!("wyvern-dial-{node}"))
            .spawn(move || {
                let result = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
                let _ = tx.send(Dialed { node, result });
                wake();
            })
            .map(drop)
            .unwrap_or_else(|e| log::error!("cannot spawn a dialer thread: {e}"));
    }

    /// A finished attempt, if any.
    pub fn poll(&self) -> Option<Dialed> {
        self.rx.try_recv().ok()
    }
}
