//! The receive side of one link, the same for every transport: the bytes a
//! peer sent, in order, as complete frames for the agent, and where the rest
//! of a large chunk goes instead (*steering*: straight into its pool block).
//!
//! The agent owns one [`LinkRx`] per peer and lends the whole set to the
//! transport while it reads ([`super::Transport::on_ready`], `poll`, `tick`):
//! bytes flow one way, transport → `LinkRx` → agent, and nothing is handed
//! back. A transport starts a fresh stream ([`LinkRx::reset`]) when a link
//! comes up; the agent reads frames and asks for steering on its own.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::shm::Pool;
use crate::wire::FrameReader;

/// Stop moving a link's bytes into its frame reader beyond this much unread
/// (the agent is not reading: a full ring holds it back), at most: the agent
/// lowers it when many links are up ([`LinkRx::set_high_water`]).
pub const RX_HIGH_WATER: usize = 8 << 20;
/// What all links' frame readers may hold unread together: each link's high
/// water is this divided among the links up, between [`RX_HIGH_WATER_MIN`]
/// and [`RX_HIGH_WATER`]. (With 8 MiB per link, an incast from 4,096 nodes
/// could make the agent hold 32 GiB.)
pub const RX_BUFFERS_MAX: usize = 256 << 20;
/// The lowest high water of a link: room for a few of the largest frames.
pub const RX_HIGH_WATER_MIN: usize = 256 << 10;

/// The first read of a link that holds no buffer offers this much; a read
/// that fills what it was offered doubles the next one, up to
/// [`READ_MAX`]. An idle link shrinks its buffer back to this
/// ([`LinkRx::release_idle`]): a busy link reads 256 KiB at a time, an idle
/// one holds 16 KiB, one never heard from none.
const READ_MIN: usize = 16 * 1024;
/// The largest read offered (see [`READ_MIN`]).
const READ_MAX: usize = 256 * 1024;
/// A fill of more than this keeps a link's read buffer from shrinking
/// ([`LinkRx::release_idle`]): more than the heartbeats and acks an idle
/// link hears.
const BUSY_FILL: usize = 1024;

/// The most steers a stream keeps at once ([`LinkRx::set_steer_depth`]).
pub const STEER_DEPTH_MAX: usize = 16;

/// The rest of a large chunk, going straight into its pool block, then its
/// padding (skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steer {
    /// Pool offset of the next byte.
    pub off: u64,
    /// Bytes still to land there.
    pub left: u64,
    /// Padding to skip after them.
    pub skip: usize,
    /// Moves into the target the transport has under way (verbs: RDMA READs
    /// posted and not yet completed); the steer ends only when they are done
    /// too ([`LinkRx::read_landed`]).
    pub reads: u32,
    /// Its number on this stream (for [`LinkRx::read_landed`]).
    pub id: u64,
}

impl Steer {
    /// Whether every byte was taken (or is being moved: `reads`) and the
    /// padding was skipped.
    pub fn done(&self) -> bool {
        self.left == 0 && self.skip == 0
    }

    /// Whether it is over: done, and nothing is still moving into it.
    pub fn landed(&self) -> bool {
        self.done() && self.reads == 0
    }
}

/// Which steer a chunk went to: the stream (unique in the process: the
/// hybrid transport swaps streams, and a link's stream is started afresh
/// when its connection is made again) and the steer's number on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteerTicket {
    stream: u64,
    id: u64,
}

/// What became of a steer ([`LinkRx::steer_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteerState {
    /// Its bytes are still coming.
    UnderWay,
    /// Every byte landed in its target.
    Landed,
    /// Not all did: the stream it was on was started afresh or replaced.
    /// Its chunk comes again (the agents' session resumes).
    Lost,
}

/// Stream numbers, unique in the process (0: none yet).
static STREAMS: AtomicU64 = AtomicU64::new(1);

/// The agent's incoming streams, one per peer, lent to a transport while it
/// reads (see the module documentation).
pub trait Inflow {
    /// Peer `node`'s stream.
    fn link(&mut self, node: u32) -> &mut LinkRx;
}

impl Inflow for Vec<LinkRx> {
    fn link(&mut self, node: u32) -> &mut LinkRx {
        &mut self[node as usize]
    }
}

/// One link's incoming stream.
#[derive(Default)]
pub struct LinkRx {
    /// Bytes read and not yet consumed, as frames.
    pub reader: FrameReader,
    /// Steers not over yet, in stream order: at most one is being fed (the
    /// first not [`Steer::done`]), those before it wait for their moves.
    steers: VecDeque<Steer>,
    /// The id the next steer gets.
    next_steer: u64,
    /// This stream's number (0: not given one yet; see [`SteerTicket`]).
    stream: u64,
    /// Steers ended with every byte in, in order, up to this id (exclusive).
    landed_below: u64,
    /// Steers kept at most (0: 1; see [`LinkRx::set_steer_depth`]).
    depth: usize,
    /// When the peer last sent anything on this link (`None`: not yet).
    last_rx: Option<Instant>,
    /// When a fill last took more than a heartbeat's or an ack's worth
    /// ([`BUSY_FILL`]): what keeps the read buffer large.
    last_busy: Option<Instant>,
    /// What the next read offers (0: [`READ_MIN`]).
    read_size: usize,
    /// Unread bytes past which reading stops (0: [`RX_HIGH_WATER`]).
    high: usize,
}

impl LinkRx {
    /// A fresh stream for a link that just came up, starting with what its
    /// handshake left buffered.
    pub fn reset(&mut self, reader: FrameReader, now: Instant) {
        *self = LinkRx {
            reader,
            steers: VecDeque::new(),
            next_steer: 0,
            stream: STREAMS.fetch_add(1, Ordering::Relaxed),
            landed_below: 0,
            depth: self.depth,
            last_rx: Some(now),
            last_busy: Some(now),
            read_size: 0,
            high: self.high,
        };
    }

    /// Stop reading past `bytes` unread (the agent's share of
    /// [`RX_BUFFERS_MAX`] for this link).
    pub fn set_high_water(&mut self, bytes: usize) {
        self.high = bytes.clamp(RX_HIGH_WATER_MIN, RX_HIGH_WATER);
    }

    fn high_water(&self) -> usize {
        if self.high == 0 {
            RX_HIGH_WATER
        } else {
            self.high
        }
    }

    /// Shrink the read buffer to [`READ_MIN`] if the peer sent no more than
    /// heartbeats and acks for `idle` and nothing is buffered; returns the
    /// bytes released. (A busy link keeps its buffer; an idle one, hearing
    /// only heartbeats, keeps a small one.)
    pub fn release_idle(&mut self, now: Instant, idle: std::time::Duration) -> usize {
        if !self.steers.is_empty()
            || self.reader.capacity() <= READ_MIN
            || self
                .last_busy
                .is_some_and(|t| now.saturating_duration_since(t) < idle)
        {
            return 0;
        }
        self.read_size = 0;
        self.reader.shrink_if_empty(READ_MIN)
    }

    /// Whether too much is buffered to take more.
    pub fn full(&self) -> bool {
        self.reader.buffered() >= self.high_water()
    }

    /// Whether the agent read enough of it for a paused reading to resume.
    pub fn drained(&self) -> bool {
        self.reader.buffered() < self.high_water() / 2
    }

    /// The peer sent something now (or: count it as alive, the agent is
    /// the one not reading).
    pub fn heard(&mut self, now: Instant) {
        self.last_rx = Some(now);
    }

    /// When the peer last sent anything.
    pub fn last_rx(&self) -> Option<Instant> {
        self.last_rx
    }

    /// How many steers the stream keeps at once (between 1 and
    /// [`STEER_DEPTH_MAX`]; kept across [`LinkRx::reset`]). A transport
    /// whose stream carries the chunks' bytes has one steer at a time (the
    /// bytes after a steered chunk arrive only once it was fed); one that
    /// moves them itself (verbs: the stream carries descriptors, the bytes
    /// are READ) lets the agent steer the next chunks while the moves into
    /// the earlier ones are under way.
    pub fn set_steer_depth(&mut self, depth: usize) {
        self.depth = depth.clamp(1, STEER_DEPTH_MAX);
    }

    /// Whether [`LinkRx::steer`] would take a new steer now: every steer
    /// was fed (the stream's next bytes are not any steer's), and fewer than
    /// the depth are under way.
    pub fn can_steer(&self) -> bool {
        self.steers.len() < self.depth.max(1) && self.steers.iter().all(Steer::done)
    }

    /// Send the next `len` bytes of the stream to the pool at `off`, then
    /// skip `skip` bytes. False when it cannot take one now
    /// ([`LinkRx::can_steer`]) or the range is not the pool's (the agent
    /// then copies).
    pub fn steer(&mut self, pool: &Pool, off: u64, len: u64, skip: usize) -> bool {
        if !self.can_steer() || pool.block_slice(off, len).is_none() {
            return false;
        }
        if self.stream == 0 {
            self.stream = STREAMS.fetch_add(1, Ordering::Relaxed);
        }
        self.steers.push_back(Steer {
            off,
            left: len,
            skip,
            reads: 0,
            id: self.next_steer,
        });
        self.next_steer += 1;
        self.settle();
        true
    }

    /// Whether a steer is under way (the agent handles nothing after a
    /// steered chunk before it ended).
    pub fn steering(&self) -> bool {
        !self.steers.is_empty()
    }

    /// How many steers are under way (not over yet).
    pub fn steers(&self) -> usize {
        self.steers.len()
    }

    /// The ticket of the steer made last (to ask [`LinkRx::steer_state`]).
    pub fn steer_ticket(&self) -> SteerTicket {
        SteerTicket {
            stream: self.stream,
            id: self.next_steer.wrapping_sub(1),
        }
    }

    /// What became of the steer `t`: under way, landed, or lost with the
    /// stream it was on (a steer no longer under way is not always
    /// finished: issue 14's message with wrong bytes).
    pub fn steer_state(&self, t: SteerTicket) -> SteerState {
        if t.stream != self.stream || self.stream == 0 {
            SteerState::Lost
        } else if t.id < self.landed_below {
            SteerState::Landed
        } else if self.steers.iter().any(|s| s.id == t.id) {
            SteerState::UnderWay
        } else {
            SteerState::Lost
        }
    }

    /// The steer being fed (the first not [`Steer::done`]), for a transport
    /// that moves its bytes itself (verbs: RDMA READs into the block; it
    /// counts them in [`Steer::reads`]).
    pub fn steer_mut(&mut self) -> Option<&mut Steer> {
        self.steers.iter_mut().find(|s| !s.done())
    }

    /// One move into steer `id` counted in its [`Steer::reads`] is done.
    pub fn read_landed(&mut self, id: u64) {
        if let Some(st) = self.steers.iter_mut().find(|s| s.id == id) {
            st.reads = st.reads.saturating_sub(1);
        }
        self.settle();
    }

    /// Forget the steers that are over, from the oldest on (in order: a
    /// later one over before an earlier one waits for it).
    fn settle(&mut self) {
        while self.steers.front().is_some_and(Steer::landed) {
            if let Some(st) = self.steers.pop_front() {
                self.landed_below = st.id + 1;
            }
        }
    }

    /// Put stream bytes where they go: the steer being fed, then its
    /// padding, then the frame reader. A steer whose moves are still under
    /// way ([`Steer::reads`]) stays until they are done. Returns how many of
    /// `bytes` were taken: all, unless the steer still wants more than they
    /// hold.
    pub fn absorb(&mut self, pool: &Pool, bytes: &[u8]) -> usize {
        if bytes.len() > BUSY_FILL {
            // The packet's arrival time (the transport called `heard` for it;
            // at worst an earlier packet's: good enough at `idle`'s scale).
            self.last_busy = self.last_rx;
        }
        let mut at = 0;
        if let Some(st) = self.steer_mut() {
            if st.left > 0 {
                let n = (st.left as usize).min(bytes.len());
                if pool.write_block(st.off, &bytes[..n]).is_none() {
                    // Cannot happen: `steer` checked the range.
                    log::error!("steered bytes outside the pool at {}", st.off);
                }
                st.off += n as u64;
                st.left -= n as u64;
                at += n;
            }
            if st.left == 0 && st.skip > 0 {
                let n = st.skip.min(bytes.len() - at);
                st.skip -= n;
                at += n;
            }
            let fed = st.done();
            self.settle();
            if !fed {
                return at;
            }
        }
        let rest = &bytes[at..];
        if !rest.is_empty() {
            let spare = self.reader.spare(rest.len());
            let offered = spare.len();
            spare[..rest.len()].copy_from_slice(rest);
            self.reader.filled(offered, rest.len());
        }
        bytes.len()
    }

    /// Read what the descriptor has, up to `limit` bytes: a steer's bytes
    /// straight into the pool, then into the frame reader (not beyond
    /// [`RX_HIGH_WATER`]). `Ok(false)`: the peer closed the connection.
    pub fn fill_from(
        &mut self,
        fd: RawFd,
        pool: &Pool,
        limit: usize,
        now: Instant,
    ) -> io::Result<bool> {
        let mut got = 0;
        while got < limit {
            let r = if let Some(st) = self.steer_mut() {
                let r = if st.left > 0 {
                    pool.read_block_from(fd, st.off, st.left).inspect(|&n| {
                        st.off += n as u64;
                        st.left -= n as u64;
                    })
                } else {
                    let mut pad = [0u8; 8];
                    let k = st.skip.min(8);
                    read_fd(fd, &mut pad[..k]).inspect(|&n| st.skip -= n)
                };
                self.settle();
                r
            } else {
                if self.full() {
                    break;
                }
                // The room there is if it is worth a read; else room to
                // read `want` bytes.
                let want = self.read_size.max(READ_MIN);
                let spare = self.reader.spare_grow(READ_MIN / 4, want);
                let offered = spare.len();
                let r = read_fd(fd, spare);
                let n = *r.as_ref().unwrap_or(&0);
                self.reader.filled(offered, n);
                if n == offered {
                    // More may be waiting: offer more next time.
                    self.read_size = (want * 2).min(READ_MAX);
                }
                r
            };
            match r {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    got += n;
                    self.last_rx = Some(now);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                },
            }
        }
        self.settle();
        if got > BUSY_FILL {
            self.last_busy = Some(now);
        }
        Ok(true)
    }
}

/// `read(2)` on a descriptor the caller keeps open while it reads.
fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    nix::unistd::read(fd, buf).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{Pool, PoolParams};

    fn pool() -> Pool {
        let params = PoolParams {
            max_clients: 1,
            endpoints_per_client: 1,
            sub_slots: 64,
            comp_slots: 16,
            recv_slots: 64,
            block_bytes: 1 << 20,
        };
        Pool::create(params, 0, false).unwrap()
    }

    #[test]
    fn absorbed_bytes_go_to_the_steer_target_then_past_its_padding_then_to_the_reader() {
        let pool = pool();
        let (off, _) = pool.block_region();
        let mut rx = LinkRx::default();
        assert!(rx.steer(&pool, off, 5, 3));
        assert!(!rx.steer(&pool, off, 5, 3), "one steer at a time");
        assert_eq!(rx.absorb(&pool, b"abc"), 3);
        assert!(rx.steering());
        assert_eq!(rx.absorb(&pool, b"de__"), 4, "two bytes of padding skipped");
        assert_eq!(rx.absorb(&pool, b"_XYZ"), 4);
        assert!(!rx.steering());
        assert_eq!(pool.block_slice(off, 5).unwrap(), b"abcde");
        assert_eq!(rx.reader.buffered(), 3);
    }

    #[test]
    fn a_read_buffer_shrinks_after_a_second_of_heartbeats_only() {
        let pool = pool();
        let idle = std::time::Duration::from_secs(1);
        let ms = |n| std::time::Duration::from_millis(n);
        let t0 = Instant::now();
        let mut rx = LinkRx::default();
        rx.heard(t0);
        rx.absorb(&pool, &vec![7u8; 64 << 10]);
        rx.reader.discard_partial();
        assert!(rx.reader.capacity() >= 64 << 10);
        // Quiet for a moment (a loaded host): the buffer stays.
        assert_eq!(rx.release_idle(t0 + ms(500), idle), 0);
        // Heartbeats keep coming, but they are not traffic.
        for k in 1..=6 {
            rx.heard(t0 + ms(200 * k));
            rx.absorb(&pool, &[0u8; 40]);
            rx.reader.discard_partial();
        }
        assert!(rx.release_idle(t0 + ms(1200), idle) > 0);
        assert!(rx.reader.capacity() <= READ_MIN);
        // Traffic again: it grows, and stays while busy.
        rx.heard(t0 + ms(1300));
        rx.absorb(&pool, &vec![7u8; 64 << 10]);
        rx.reader.discard_partial();
        assert_eq!(rx.release_idle(t0 + ms(2200), idle), 0);
        assert!(rx.release_idle(t0 + ms(2400), idle) > 0);
    }

    #[test]
    fn a_steer_landed_only_when_its_bytes_did_on_the_same_stream() {
        let pool = pool();
        let (off, _) = pool.block_region();
        let now = Instant::now();
        // Every byte in: landed.
        let mut rx = LinkRx::default();
        assert!(rx.steer(&pool, off, 4, 0));
        let first = rx.steer_ticket();
        assert_eq!(rx.steer_state(first), SteerState::UnderWay);
        rx.absorb(&pool, b"abcd");
        assert!(!rx.steering());
        assert_eq!(rx.steer_state(first), SteerState::Landed);
        // One whose moves land later (verbs), with the next steered meanwhile.
        rx.set_steer_depth(4);
        assert!(rx.steer(&pool, off, 2, 0));
        let moved = rx.steer_ticket();
        rx.steer_mut().unwrap().reads = 1;
        rx.absorb(&pool, b"ef");
        assert!(rx.steer(&pool, off + 8, 2, 0));
        let next = rx.steer_ticket();
        assert_ne!(moved, next);
        rx.absorb(&pool, b"gh");
        assert_eq!(rx.steer_state(moved), SteerState::UnderWay);
        assert_eq!(
            rx.steer_state(next),
            SteerState::UnderWay,
            "ends after the first"
        );
        rx.read_landed(moved.id);
        assert_eq!(rx.steer_state(moved), SteerState::Landed);
        assert_eq!(rx.steer_state(next), SteerState::Landed);
        // The stream started afresh under a steer (a new connection): no
        // longer steering, and lost, not landed (issue 14).
        assert!(rx.steer(&pool, off, 4, 0));
        let cut = rx.steer_ticket();
        rx.absorb(&pool, b"ij");
        rx.reset(FrameReader::new(), now);
        assert!(!rx.steering());
        assert_eq!(rx.steer_state(cut), SteerState::Lost);
        assert_eq!(rx.steer_state(first), SteerState::Lost, "another stream's");
        // Another stream put in its place (the hybrid transport's swap),
        // even one whose own steers landed further.
        let mut a = LinkRx::default();
        assert!(a.steer(&pool, off, 4, 0));
        let ta = a.steer_ticket();
        let mut b = LinkRx::default();
        for _ in 0..3 {
            assert!(b.steer(&pool, off, 1, 0));
            b.absorb(&pool, b"k");
        }
        std::mem::swap(&mut a, &mut b);
        assert!(!a.steering());
        assert_eq!(a.steer_state(ta), SteerState::Lost);
        assert_eq!(b.steer_state(ta), SteerState::UnderWay);
    }

    #[test]
    fn a_steer_outside_the_pool_is_refused() {
        let pool = pool();
        let mut rx = LinkRx::default();
        assert!(!rx.steer(&pool, u64::MAX - 4, 4, 0));
        assert!(!rx.steering());
    }

    #[test]
    fn a_steer_with_moves_under_way_ends_when_they_landed() {
        let pool = pool();
        let (off, _) = pool.block_region();
        let mut rx = LinkRx::default();
        assert!(rx.steer(&pool, off, 2, 0));
        // The transport moves the bytes itself (one READ).
        let st = rx.steer_mut().unwrap();
        st.left = 0;
        st.reads = 1;
        let id = st.id;
        assert_eq!(rx.absorb(&pool, b"!"), 1, "the next bytes go to the reader");
        assert!(rx.steering() && rx.steer_mut().is_none());
        assert!(!rx.can_steer(), "depth 1: the next waits for this one");
        rx.read_landed(id);
        assert!(!rx.steering() && rx.can_steer());
        assert_eq!(rx.reader.buffered(), 1);
    }

    #[test]
    fn steers_up_to_the_depth_end_in_order_whatever_order_their_moves_land() {
        let pool = pool();
        let (off, _) = pool.block_region();
        let mut rx = LinkRx::default();
        rx.set_steer_depth(3);
        let mut ids = Vec::new();
        for k in 0..3u64 {
            assert!(rx.can_steer());
            assert!(rx.steer(&pool, off + k * 8, 8, 0));
            assert!(!rx.can_steer(), "the new steer is being fed");
            let st = rx.steer_mut().unwrap();
            st.left = 0;
            st.reads = 2;
            ids.push(st.id);
        }
        assert_eq!(rx.steers(), 3);
        assert!(!rx.can_steer(), "at the depth");
        assert!(!rx.steer(&pool, off + 64, 8, 0));
        // The last two land first: nothing ends before the first did.
        for id in [ids[2], ids[2], ids[1], ids[1], ids[0]] {
            rx.read_landed(id);
        }
        assert_eq!(rx.steers(), 3);
        rx.read_landed(ids[0]);
        assert_eq!(rx.steers(), 0, "all three end at once");
        rx.set_steer_depth(1000);
        assert_eq!(rx.depth, STEER_DEPTH_MAX);
        rx.reset(FrameReader::new(), Instant::now());
        assert_eq!(rx.depth, STEER_DEPTH_MAX, "a new link keeps the depth");
    }

    #[test]
    fn reading_a_socket_honours_the_steer_and_the_high_water_mark() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let pool = pool();
        let (off, _) = pool.block_region();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        a.write_all(b"0123456789..tail").unwrap();
        let mut rx = LinkRx::default();
        assert!(rx.steer(&pool, off, 10, 2));
        let now = Instant::now();
        assert!(rx.fill_from(b.as_raw_fd(), &pool, 1 << 20, now).unwrap());
        assert_eq!(pool.block_slice(off, 10).unwrap(), b"0123456789");
        assert!(!rx.steering());
        assert_eq!(rx.reader.buffered(), 4);
        assert_eq!(rx.last_rx(), Some(now));
        drop(a);
        assert!(
            !rx.fill_from(b.as_raw_fd(), &pool, 1 << 20, now).unwrap(),
            "closed"
        );
    }

    #[test]
    fn the_high_water_is_the_agents_share_within_bounds() {
        let mut rx = LinkRx::default();
        assert!(!rx.full());
        rx.set_high_water(1);
        assert_eq!(rx.high_water(), RX_HIGH_WATER_MIN);
        rx.set_high_water(usize::MAX);
        assert_eq!(rx.high_water(), RX_HIGH_WATER);
        rx.set_high_water(300 << 10);
        let spare = rx.reader.spare(300 << 10);
        let n = spare.len();
        rx.reader.filled(n, 300 << 10);
        assert!(rx.full() && !rx.drained());
        // A new link keeps the share.
        rx.reset(FrameReader::new(), Instant::now());
        assert_eq!(rx.high_water(), 300 << 10);
    }
}
