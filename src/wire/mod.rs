//! Bytes between agents: frames and the message records inside them.
//!
//! Pure functions and plain data; no I/O, no clock. Every parser takes
//! untrusted bytes and returns a validated value or a [`WireError`]; none can
//! panic on any input (fuzzed by proptest below).
//!
//! ## Frame (little-endian)
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `"WYVF"` |
//! | 4 | protocol version ([`VERSION`]) |
//! | 5 | kind ([`FrameKind`]) |
//! | 6..8 | reserved, zero |
//! | 8..12 | source node id |
//! | 12..16 | body length (at most [`MAX_BODY`]) |
//!
//! A `Hello` body is [`Hello`]; a `Data` body is a sequence of records, each a
//! [`RecordHeader`] followed by its payload padded to 8 bytes; `StatQuery`
//! and `StatReply` bodies are [`jobstat`]'s.
//!
//! ## Records
//! A message of up to the eager limit travels in one `Msg` record; a larger
//! one as several `Msg` records (chunks) carrying `offset` and `total`,
//! sent back to back by the sending agent, reassembled by the receiver.
//! `Ack`/`Nack` records answer a message sent in *delivered* mode (or a
//! message that could not be delivered), naming the sender's cookie.

pub mod auth;
pub(crate) mod bytes;
pub mod jobstat;
pub mod packet;
pub mod reliable;
pub mod verbs;

use bytes::{Fields, FieldsMut};

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"WYVF";
/// Protocol version (4: the authenticated handshake, [`FrameKind::Challenge`]
/// and the nonce and MAC after a `Hello`; 5: [`FrameKind::StatQuery`] and
/// [`FrameKind::StatReply`], which a version 4 agent would take for a broken
/// stream and drop the link: agents of different versions never link, and
/// each says why in its log).
pub const VERSION: u8 = 5;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 16;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 40;
/// Largest frame body accepted.
pub const MAX_BODY: usize = 4 << 20;
/// Largest message (total bytes) accepted from the network.
pub const MAX_MESSAGE: u64 = 1 << 36;

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not our magic.
    #[error("bad frame magic {0:02x?}")]
    Magic([u8; 4]),
    /// Other protocol version.
    #[error("peer speaks protocol version {0}, this agent speaks {VERSION}")]
    Version(u8),
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Body too large.
    #[error("frame body of {0} bytes exceeds the limit of {MAX_BODY}")]
    BodyTooLarge(u32),
    /// Fewer bytes than a field needs.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A record field is out of range.
    #[error("malformed record: {0}")]
    Record(&'static str),
}

/// Kinds of frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Connection greeting.
    Hello = 1,
    /// Records.
    Data = 2,
    /// Keep-alive.
    Heartbeat = 3,
    /// Orderly goodbye: the peer is shutting down.
    Bye = 4,
    /// First frame on every new connection: where the sender's session with
    /// the receiver stands ([`Resume`]).
    Resume = 5,
    /// How many `Data` frames of the current session the sender has handled
    /// (a little-endian `u64` body), so the receiver may forget them.
    Ack = 6,
    /// First frame of the accepting side of a TCP connection: its nonce
    /// ([`auth::NONCE_LEN`] bytes), which the dialer's `Hello` MAC covers.
    Challenge = 7,
    /// The job-wide view: "summarise yourself" ([`jobstat::parse_query`]: a
    /// query id). Only on an authenticated link whose session is up.
    StatQuery = 8,
    /// The answer to a `StatQuery`: a [`jobstat::NodeSummary`], fixed size.
    StatReply = 9,
}

impl FrameKind {
    fn from_u8(v: u8) -> Result<FrameKind, WireError> {
        Ok(match v {
            1 => FrameKind::Hello,
            2 => FrameKind::Data,
            3 => FrameKind::Heartbeat,
            4 => FrameKind::Bye,
            5 => FrameKind::Resume,
            6 => FrameKind::Ack,
            7 => FrameKind::Challenge,
            8 => FrameKind::StatQuery,
            9 => FrameKind::StatReply,
            _ => return Err(WireError::Kind(v)),
        })
    }
}

/// A validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Kind.
    pub kind: FrameKind,
    /// Sending node.
    pub src_node: u32,
    /// Body length.
    pub body_len: u32,
}

impl FrameHeader {
    /// Parse and check a frame header.
    pub fn parse(b: &[u8]) -> Result<FrameHeader, WireError> {
        let f = Fields::<FRAME_HEADER>::new(b).ok_or(WireError::Truncated("frame header"))?;
        let magic = f.array::<0, 4>();
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        let version = f.u8::<4>();
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let kind = FrameKind::from_u8(f.u8::<5>())?;
        let body_len = f.u32::<12>();
        if body_len as usize > MAX_BODY {
            return Err(WireError::BodyTooLarge(body_len));
        }
        Ok(FrameHeader {
            kind,
            src_node: f.u32::<8>(),
            body_len,
        })
    }

    /// Write the header into `out[..16]`.
    ///
    /// # Panics
    /// If `out` is shorter than [`FRAME_HEADER`].
    pub fn emit(&self, out: &mut [u8]) {
        let mut w = FieldsMut::<FRAME_HEADER>::new(out).expect("room for a frame header");
        w.put::<0, 4>(MAGIC);
        w.put_u8::<4>(VERSION);
        w.put_u8::<5>(self.kind as u8);
        w.zero::<6, 2>();
        w.put_u32::<8>(self.src_node);
        w.put_u32::<12>(self.body_len);
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; FRAME_HEADER] {
        let mut b = [0u8; FRAME_HEADER];
        self.emit(&mut b);
        b
    }
}

/// The body of a `Hello` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id (must match the frame header's).
    pub node: u32,
    /// How many nodes the sender's node list has (must match ours).
    pub nodes: u32,
    /// A value unique to this run of the sending agent (its start time), so a
    /// restarted peer can be told apart from the old one.
    pub incarnation: u64,
    /// The job the sender belongs to ([`job_hash`] of its `job` setting; 0:
    /// none). Agents of different jobs on the same hosts (ports reused,
    /// addresses learned from packets) must never take each other for peers.
    pub job: u64,
    /// The transports the sender runs ([`caps`] bits), so that a hybrid
    /// agent and its peer pick the same one for their link.
    pub caps: u32,
    /// The RDMA fabric the sender's verbs device is on ([`fabric_id`] of its
    /// name; 0: no RDMA device): verbs only between equal fabrics.
    pub fabric: u32,
}

/// Bytes of a TCP `Hello` frame's body: the [`Hello`], the sender's nonce and
/// the MAC (all zero without a job key).
pub const HELLO_BODY: usize = Hello::LEN + auth::NONCE_LEN + auth::MAC_LEN;
/// Largest body of a frame a TCP connection may send before its handshake is
/// done (`Challenge`, `Hello`): what an unauthenticated connection may make
/// the agent buffer.
pub const HANDSHAKE_BODY_MAX: usize = HELLO_BODY;

/// Bits of [`Hello::caps`]: the transports an agent runs.
pub mod caps {
    /// TCP (every agent of a hybrid job runs it: the control connection).
    pub const TCP: u32 = 1;
    /// UDP with wyvern's reliability.
    pub const UDP: u32 = 2;
    /// DPDK raw Ethernet.
    pub const DPDK: u32 = 4;
    /// RDMA verbs.
    pub const VERBS: u32 = 8;
}

/// The `fabric` value of a [`Hello`] for a fabric name (never 0).
pub fn fabric_id(name: &str) -> u32 {
    let h = job_hash(Some(name));
    ((h >> 32) as u32 ^ h as u32).max(1)
}

/// The `job` value of a [`Hello`] for a job name (FNV-1a; 0 means no name).
pub fn job_hash(name: Option<&str>) -> u64 {
    let Some(name) = name else { return 0 };
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h.max(1)
}

impl Hello {
    /// Encoded size.
    pub const LEN: usize = 32;

    /// Parse.
    pub fn parse(b: &[u8]) -> Result<Hello, WireError> {
        let f = Fields::<{ Self::LEN }>::new(b).ok_or(WireError::Truncated("hello"))?;
        Ok(Hello {
            node: f.u32::<0>(),
            nodes: f.u32::<4>(),
            incarnation: f.u64::<8>(),
            job: f.u64::<16>(),
            caps: f.u32::<24>(),
            fabric: f.u32::<28>(),
        })
    }

    /// Encode.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let mut w = FieldsMut::of(&mut b);
        w.put_u32::<0>(self.node);
        w.put_u32::<4>(self.nodes);
        w.put_u64::<8>(self.incarnation);
        w.put_u64::<16>(self.job);
        w.put_u32::<24>(self.caps);
        w.put_u32::<28>(self.fabric);
        b
    }
}

/// What a datagram `Hello` packet carries after its [`Hello`] (its MAC covers
/// both): the largest packet the sender's device receives. Each end of a
/// datagram link says it, and packets on the link are cut to the smaller of
/// the two ends' sizes, so peers with different MTUs (a node at 9000, one at
/// 1500) send each other nothing the receiver's interface would drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketLimits {
    /// The largest packet, header included, the sender receives.
    pub max_packet: u32,
}

impl PacketLimits {
    /// Encoded size.
    pub const LEN: usize = 4;

    /// Parse (the first [`PacketLimits::LEN`] bytes of `b`).
    pub fn parse(b: &[u8]) -> Result<PacketLimits, WireError> {
        let f = Fields::<{ Self::LEN }>::new(b).ok_or(WireError::Truncated("packet limits"))?;
        Ok(PacketLimits {
            max_packet: f.u32::<0>(),
        })
    }

    /// Encode.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        FieldsMut::of(&mut b).put_u32::<0>(self.max_packet);
        b
    }
}

/// The body of a `Resume` frame: sent first on every new connection, it
/// lets two agents that both lived through a broken connection carry on
/// where they were. Each side keeps the `Data` frames it sent until the
/// other acknowledges them ([`FrameKind::Ack`]); a resumed session sends
/// again those the other side had not handled, in order, and the receiver
/// goes on from where it stopped. When either side restarted or gave the
/// other up, the session starts afresh and what was in flight is reported
/// lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The sender's incarnation (as in its `Hello`).
    pub incarnation: u64,
    /// The receiver's incarnation as the sender's session knows it; 0 when
    /// the sender has no session with the receiver.
    pub known: u64,
    /// `Data` frames of that session the sender has handled.
    pub received: u64,
}

impl Resume {
    /// Encoded size.
    pub const LEN: usize = 32;

    /// Parse.
    pub fn parse(b: &[u8]) -> Result<Resume, WireError> {
        let f = Fields::<{ Self::LEN }>::new(b)
            .filter(|_| b.len() == Self::LEN)
            .ok_or(WireError::Truncated("resume"))?;
        Ok(Resume {
            incarnation: f.u64::<0>(),
            known: f.u64::<8>(),
            received: f.u64::<16>(),
        })
    }

    /// Encode.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        let mut w = FieldsMut::of(&mut b);
        w.put_u64::<0>(self.incarnation);
        w.put_u64::<8>(self.known);
        w.put_u64::<16>(self.received);
        b
    }
}

/// Parse the body of an `Ack` frame.
pub fn parse_ack(b: &[u8]) -> Result<u64, WireError> {
    let b: [u8; 8] = b.try_into().map_err(|_| WireError::Truncated("ack"))?;
    Ok(u64::from_le_bytes(b))
}

/// Kinds of record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A message or a chunk of one.
    Msg = 1,
    /// The message with `cookie` was deposited.
    Ack = 2,
    /// The message with `cookie` could not be deposited; `status` says why.
    Nack = 3,
}

/// Record flag: the sender wants an `Ack` once the message is deposited.
pub const FLAG_ACK: u8 = 1;

/// A validated record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Kind.
    pub kind: RecordKind,
    /// [`FLAG_ACK`] or 0.
    pub flags: u8,
    /// For `Nack`: the error code (see `proto::Status`).
    pub status: u16,
    /// Sending endpoint.
    pub src_ep: u32,
    /// Receiving endpoint.
    pub dst_ep: u32,
    /// Payload bytes in this record.
    pub chunk_len: u32,
    /// Total bytes of the message.
    pub total: u64,
    /// Where this chunk starts within the message.
    pub offset: u64,
    /// The sender's cookie (echoed in `Ack`/`Nack`).
    pub cookie: u64,
}

impl RecordHeader {
    /// Parse and check a record header.
    pub fn parse(b: &[u8]) -> Result<RecordHeader, WireError> {
        let f = Fields::<RECORD_HEADER>::new(b).ok_or(WireError::Truncated("record header"))?;
        let kind = match f.u8::<0>() {
            1 => RecordKind::Msg,
            2 => RecordKind::Ack,
            3 => RecordKind::Nack,
            _ => return Err(WireError::Record("unknown record kind")),
        };
        let h = RecordHeader {
            kind,
            flags: f.u8::<1>(),
            status: f.u16::<2>(),
            src_ep: f.u32::<4>(),
            dst_ep: f.u32::<8>(),
            chunk_len: f.u32::<12>(),
            total: f.u64::<16>(),
            offset: f.u64::<24>(),
            cookie: f.u64::<32>(),
        };
        if h.flags & !FLAG_ACK != 0 {
            return Err(WireError::Record("unknown flags"));
        }
        match kind {
            RecordKind::Msg => {
                if h.total > MAX_MESSAGE {
                    return Err(WireError::Record("message larger than the limit"));
                }
                let end = h.offset.checked_add(h.chunk_len as u64);
                if end.is_none_or(|e| e > h.total) {
                    return Err(WireError::Record("chunk outside its message"));
                }
                if h.chunk_len == 0 && h.total != 0 {
                    return Err(WireError::Record("empty chunk of a non-empty message"));
                }
            }
            RecordKind::Ack | RecordKind::Nack => {
                if h.chunk_len != 0 {
                    return Err(WireError::Record("ack with payload"));
                }
            }
        }
        Ok(h)
    }

    /// Write the header into `out[..40]`.
    ///
    /// # Panics
    /// If `out` is shorter than [`RECORD_HEADER`].
    pub fn emit(&self, out: &mut [u8]) {
        let mut w = FieldsMut::<RECORD_HEADER>::new(out).expect("room for a record header");
        w.put_u8::<0>(self.kind as u8);
        w.put_u8::<1>(self.flags);
        w.put_u16::<2>(self.status);
        w.put_u32::<4>(self.src_ep);
        w.put_u32::<8>(self.dst_ep);
        w.put_u32::<12>(self.chunk_len);
        w.put_u64::<16>(self.total);
        w.put_u64::<24>(self.offset);
        w.put_u64::<32>(self.cookie);
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; RECORD_HEADER] {
        let mut b = [0u8; RECORD_HEADER];
        self.emit(&mut b);
        b
    }

    /// Bytes this record occupies in a body (header, payload, padding).
    pub fn wire_len(&self) -> usize {
        RECORD_HEADER + padded(self.chunk_len as usize)
    }
}

/// `n` rounded up to 8.
pub fn padded(n: usize) -> usize {
    n.next_multiple_of(8)
}

/// Iterate over the records of a `Data` body. Yields `Err` once and then
/// stops when the body is malformed.
pub fn records(body: &[u8]) -> Records<'_> {
    Records { body, pos: 0 }
}

/// Iterator returned by [`records`].
pub struct Records<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(RecordHeader, &'a [u8]), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.body.len() {
            return None;
        }
        let rest = &self.body[self.pos..];
        let h = match RecordHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                self.pos = self.body.len();
                return Some(Err(e));
            }
        };
        let need = h.wire_len();
        if rest.len() < need {
            self.pos = self.body.len();
            return Some(Err(WireError::Truncated("record payload")));
        }
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + h.chunk_len as usize];
        self.pos += need;
        Some(Ok((h, payload)))
    }
}

/// Builds one `Data` frame. Its buffer is allocated by the first record (a
/// peer never sent to costs no buffer) and handed out by
/// [`FrameBuilder::finish`].
pub struct FrameBuilder {
    buf: Vec<u8>,
    limit: usize,
    records: u32,
    src_node: u32,
}

impl FrameBuilder {
    /// A builder whose frames hold at most `limit` bytes (header included).
    pub fn new(src_node: u32, limit: usize) -> FrameBuilder {
        let limit = limit.clamp(FRAME_HEADER + RECORD_HEADER + 8, MAX_BODY + FRAME_HEADER);
        FrameBuilder {
            buf: Vec::new(),
            limit,
            records: 0,
            src_node,
        }
    }

    /// Records in the frame so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes still free.
    pub fn room(&self) -> usize {
        self.limit - self.buf.len().max(FRAME_HEADER)
    }

    /// Whether a record with `payload` bytes fits.
    pub fn fits(&self, payload: usize) -> bool {
        RECORD_HEADER + padded(payload) <= self.room()
    }

    /// Append a record; the caller checked [`FrameBuilder::fits`].
    pub fn push(&mut self, h: &RecordHeader, payload: &[u8]) {
        debug_assert_eq!(h.chunk_len as usize, payload.len());
        debug_assert!(self.fits(payload.len()));
        if self.buf.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf = spare_frame(self.limit);
            }
            self.buf.reserve_exact(self.limit);
            self.buf.resize(FRAME_HEADER, 0);
        }
        self.buf.extend_from_slice(&h.to_bytes());
        self.buf.extend_from_slice(payload);
        let pad = padded(payload.len()) - payload.len();
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self.records += 1;
    }

    /// Finish the frame: returns its bytes and resets the builder. A frame
    /// of at most a quarter of the limit leaves as an exact-size copy and the
    /// builder keeps its buffer for the next one: a round's frame is often a
    /// few hundred bytes, and handing out the full-limit buffer for each (kept
    /// until acknowledged, thousands of them in flight on a busy link) grew
    /// the heap by a fresh, page-faulted buffer per frame (clear_page and
    /// brk were 6 % of the agents' CPU time in the node-level exchange).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.buf.is_empty() {
            self.buf.resize(FRAME_HEADER, 0);
        }
        let body = (self.buf.len() - FRAME_HEADER) as u32;
        FrameHeader {
            kind: FrameKind::Data,
            src_node: self.src_node,
            body_len: body,
        }
        .emit(&mut self.buf[..FRAME_HEADER]);
        self.records = 0;
        if self.buf.len() <= self.limit / 4 {
            let out = self.buf.clone();
            self.buf.clear();
            return out;
        }
        std::mem::take(&mut self.buf)
    }
}

/// Frame buffers kept for reuse per thread (see [`recycle_frame`]).
const SPARE_FRAMES: usize = 64;

thread_local! {
    /// Buffers of frames the peer acknowledged, cleared, for the next frames
    /// built on this thread.
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The limit of the last frame buffer asked for on this thread: smaller
    /// buffers (small frames' exact copies) are not worth keeping.
    static SPARE_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A buffer for a frame of up to `limit` bytes: a recycled one when this
/// thread has one that large, else a new one. A batch frame is allocated at
/// its full limit (64 KiB by default) and kept until the peer acknowledges
/// it: allocating and freeing one per frame made the allocator hand memory
/// back to the kernel and fault it in again (brk and page faults were 15 % of
/// a small-message stream's CPU time).
fn spare_frame(limit: usize) -> Vec<u8> {
    let _ = SPARE_LIMIT.try_with(|l| l.set(limit));
    SPARE
        .try_with(|s| {
            let mut s = s.borrow_mut();
            // Smaller ones (another builder's limit) are dropped.
            std::iter::from_fn(|| s.pop()).find(|v| v.capacity() >= limit)
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(limit))
}

/// Give a frame's buffer back for reuse by [`FrameBuilder`] on this thread
/// (at most [`SPARE_FRAMES`] are kept: 4 MiB of 64 KiB frames).
pub fn recycle_frame(mut v: Vec<u8>) {
    let min = SPARE_LIMIT.try_with(|l| l.get()).unwrap_or(0);
    if v.capacity() < min.max(FRAME_HEADER + RECORD_HEADER + 8) {
        return;
    }
    v.clear();
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARE_FRAMES {
            s.push(v);
        }
    });
}

/// A control frame (Hello, Heartbeat, Bye) as bytes.
pub fn control_frame(kind: FrameKind, src_node: u32, body: &[u8]) -> Vec<u8> {
    let mut v = FrameHeader {
        kind,
        src_node,
        body_len: body.len() as u32,
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(body);
    v
}

/// Splits a byte stream into frames.
#[derive(Default)]
pub struct FrameReader {
    /// Initialised storage; bytes `start..end` are buffered.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Space to read into (at least `at_least` bytes): the caller fills some
    /// prefix of the returned slice and reports how much with
    /// [`FrameReader::filled`]. The storage is reused, never re-zeroed.
    pub fn spare(&mut self, at_least: usize) -> &mut [u8] {
        self.spare_grow(at_least, at_least)
    }

    /// Like [`FrameReader::spare`], but the room already there is offered
    /// when it is at least `at_least` bytes, and storage that must grow grows
    /// to `grow` bytes of room (so a small read after a few buffered bytes
    /// does not double the buffer).
    pub fn spare_grow(&mut self, at_least: usize, grow: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < at_least && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < at_least {
            self.buf.resize(self.end + grow.max(at_least), 0);
        }
        &mut self.buf[self.end..]
    }

    /// When nothing is buffered, keep at most `keep` bytes of storage (an
    /// idle link keeps a small buffer, not its busiest); returns the bytes
    /// released.
    pub fn shrink_if_empty(&mut self, keep: usize) -> usize {
        let had = self.buf.capacity();
        if self.start != self.end || had <= keep {
            return 0;
        }
        self.start = 0;
        self.end = 0;
        self.buf.truncate(keep);
        self.buf.shrink_to_fit();
        had - self.buf.capacity()
    }

    /// The storage held (bytes).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// After [`FrameReader::spare`]: `n` bytes were filled. (`offered` is
    /// the length of the slice `spare` returned.)
    pub fn filled(&mut self, offered: usize, n: usize) {
        debug_assert!(n <= offered && self.end + n <= self.buf.len());
        self.end += n.min(self.buf.len() - self.end);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The header of the next frame once its 16 bytes are buffered (the body
    /// may not be), so that a reader can refuse a frame by its header before
    /// buffering its body.
    pub fn peek_header(&self) -> Result<Option<FrameHeader>, WireError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER {
            return Ok(None);
        }
        FrameHeader::parse(avail).map(Some)
    }

    /// The next complete frame, if any: its header and body. It stays
    /// buffered until [`FrameReader::consume`]. An error means the stream is
    /// broken and must be closed.
    pub fn peek_frame(&self) -> Result<Option<(FrameHeader, &[u8])>, WireError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER {
            return Ok(None);
        }
        let h = FrameHeader::parse(avail)?;
        let total = FRAME_HEADER + h.body_len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        Ok(Some((h, &avail[FRAME_HEADER..total])))
    }

    /// The header of a frame not yet complete, with the part of its body
    /// buffered so far.
    pub fn peek_partial(&self) -> Option<(FrameHeader, &[u8])> {
        let avail = &self.buf[self.start..self.end];
        let h = FrameHeader::parse(avail).ok()?;
        let total = FRAME_HEADER + h.body_len as usize;
        if avail.len() >= total {
            return None;
        }
        Some((h, &avail[FRAME_HEADER..]))
    }

    /// Drop everything buffered: the caller took over the incomplete frame
    /// [`FrameReader::peek_partial`] showed (its remaining bytes are read
    /// elsewhere).
    pub fn discard_partial(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Drop the frame [`FrameReader::peek_frame`] returned.
    pub fn consume(&mut self) {
        if let Ok(Some((h, _))) = self.peek_frame() {
            self.start += FRAME_HEADER + h.body_len as usize;
        }
    }

    /// [`FrameReader::peek_frame`] and [`FrameReader::consume`] in one, copying the body.
    pub fn next_frame(&mut self) -> Result<Option<(FrameHeader, Vec<u8>)>, WireError> {
        let out = self.peek_frame()?.map(|(h, b)| (h, b.to_vec()));
        self.consume();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(len: u32) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Msg,
            flags: FLAG_ACK,
            status: 0,
            src_ep: 3,
            dst_ep: 9,
            chunk_len: len,
            total: len as u64,
            offset: 0,
            cookie: 0xDEAD_BEEF,
        }
    }

    #[test]
    fn a_recycled_frame_buffer_is_reused_and_comes_back_clean() {
        // Each test runs on its own thread: the spare list is this test's.
        // Frames over a quarter of the limit leave in the builder's buffer.
        let mut fb = FrameBuilder::new(5, 4096);
        fb.push(&msg(1500), &[1; 1500]);
        let first = fb.finish();
        let (ptr, cap) = (first.as_ptr(), first.capacity());
        assert!(cap >= 4096);
        recycle_frame(first);
        fb.push(&msg(1200), &[9; 1200]);
        let second = fb.finish();
        assert_eq!(second.as_ptr(), ptr, "the recycled buffer was not reused");
        // Only the new frame's bytes: nothing of the old one left behind.
        let body: Vec<_> = records(&second[FRAME_HEADER..])
            .map(|r| r.unwrap().1.to_vec())
            .collect();
        assert_eq!(body, vec![vec![9; 1200]]);
        // A buffer too small for the builder's frames is not handed out.
        recycle_frame(Vec::with_capacity(100));
        fb.push(&msg(1100), &[7; 1100]);
        assert!(fb.finish().capacity() >= 4096);
        // Nor kept: a small frame's exact copy.
        let kept = SPARE.with(|s| s.borrow().len());
        recycle_frame(vec![0; 200]);
        assert_eq!(SPARE.with(|s| s.borrow().len()), kept);
        // At most SPARE_FRAMES are kept.
        for _ in 0..SPARE_FRAMES + 10 {
            recycle_frame(Vec::with_capacity(4096));
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARE_FRAMES);
    }

    #[test]
    fn a_small_frame_leaves_as_an_exact_copy_and_the_builder_keeps_its_buffer() {
        let mut fb = FrameBuilder::new(5, 4096);
        fb.push(&msg(3), &[1, 2, 3]);
        let first = fb.finish();
        assert_eq!(first.len(), FRAME_HEADER + RECORD_HEADER + 8);
        assert!(first.capacity() < 4096 / 4, "{}", first.capacity());
        // The next frame is built in the same buffer, and the first one is
        // untouched by it.
        let kept = fb.buf.as_ptr();
        assert!(fb.buf.capacity() >= 4096 && fb.buf.is_empty());
        fb.push(&msg(2), &[9, 9]);
        assert_eq!(fb.buf.as_ptr(), kept);
        let second = fb.finish();
        let body = |f: &[u8]| -> Vec<Vec<u8>> {
            records(&f[FRAME_HEADER..])
                .map(|r| r.unwrap().1.to_vec())
                .collect()
        };
        assert_eq!(body(&first), vec![vec![1, 2, 3]]);
        assert_eq!(body(&second), vec![vec![9, 9]]);
        assert_eq!(
            FrameHeader::parse(&second).unwrap().body_len as usize,
            second.len() - FRAME_HEADER
        );
    }

    #[test]
    fn frame_round_trip_through_reader() {
        let mut fb = FrameBuilder::new(5, 4096);
        for i in 0..10u32 {
            let p = vec![i as u8; i as usize * 3];
            assert!(fb.fits(p.len()));
            fb.push(&msg(p.len() as u32), &p);
        }
        let frame = fb.finish();
        assert!(fb.is_empty());
        let mut r = FrameReader::new();
        // Feed byte by byte: a frame appears only when complete.
        let mut got = 0;
        for (i, b) in frame.iter().enumerate() {
            let s = r.spare(1);
            s[0] = *b;
            r.filled(1, 1);
            match r.next_frame().unwrap() {
                None => assert!(i + 1 < frame.len()),
                Some((h, body)) => {
                    assert_eq!(h.kind, FrameKind::Data);
                    assert_eq!(h.src_node, 5);
                    for (j, rec) in records(&body).enumerate() {
                        let (rh, p) = rec.unwrap();
                        assert_eq!(rh, msg(j as u32 * 3));
                        assert!(p.iter().all(|&x| x == j as u8));
                        got += 1;
                    }
                }
            }
        }
        assert_eq!(got, 10);
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut h = FrameHeader {
            kind: FrameKind::Data,
            src_node: 1,
            body_len: 8,
        }
        .to_bytes();
        h[0] = b'X';
        assert!(matches!(FrameHeader::parse(&h), Err(WireError::Magic(_))));
        h[0] = b'W';
        h[4] = 9;
        assert_eq!(FrameHeader::parse(&h), Err(WireError::Version(9)));
        h[4] = VERSION;
        h[5] = 77;
        assert_eq!(FrameHeader::parse(&h), Err(WireError::Kind(77)));
        h[5] = 2;
        h[12..16].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
        assert!(matches!(
            FrameHeader::parse(&h),
            Err(WireError::BodyTooLarge(_))
        ));
    }

    #[test]
    fn chunk_outside_message_is_refused() {
        let mut h = msg(10);
        h.total = 5;
        assert!(RecordHeader::parse(&h.to_bytes()).is_err());
        h.total = 100;
        h.offset = u64::MAX - 2;
        assert!(RecordHeader::parse(&h.to_bytes()).is_err());
    }

    #[test]
    fn poisoned_buffer_shows_every_field_written() {
        let h = msg(0);
        let mut buf = [0xA5u8; RECORD_HEADER];
        h.emit(&mut buf);
        assert_eq!(RecordHeader::parse(&buf).unwrap(), h);
        let mut fb = [0xA5u8; FRAME_HEADER];
        let f = FrameHeader {
            kind: FrameKind::Heartbeat,
            src_node: 0,
            body_len: 0,
        };
        f.emit(&mut fb);
        assert_eq!(&fb[6..8], &[0, 0]);
        assert_eq!(FrameHeader::parse(&fb).unwrap(), f);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = FrameHeader::parse(&bytes);
            let _ = RecordHeader::parse(&bytes);
            let _ = Hello::parse(&bytes);
            let _ = PacketLimits::parse(&bytes);
            let _ = Resume::parse(&bytes);
            let _ = parse_ack(&bytes);
            for (h, p) in records(&bytes).flatten() {
                prop_assert_eq!(p.len(), h.chunk_len as usize);
            }
            let mut r = FrameReader::new();
            let s = r.spare(bytes.len());
            s[..bytes.len()].copy_from_slice(&bytes);
            r.filled(bytes.len(), bytes.len());
            while let Ok(Some(_)) = r.next_frame() {}
        }

        #[test]
        fn hello_round_trips(node in any::<u32>(), nodes in any::<u32>(), incarnation in any::<u64>(),
                             job in any::<u64>(), caps in any::<u32>(), fabric in any::<u32>(),
                             cut in 0usize..Hello::LEN) {
            let h = Hello { node, nodes, incarnation, job, caps, fabric };
            prop_assert_eq!(Hello::parse(&h.to_bytes()).unwrap(), h);
            prop_assert!(Hello::parse(&h.to_bytes()[..cut]).is_err());
        }

        #[test]
        fn packet_limits_round_trip(max_packet in any::<u32>(), cut in 0usize..PacketLimits::LEN) {
            let l = PacketLimits { max_packet };
            prop_assert_eq!(PacketLimits::parse(&l.to_bytes()).unwrap(), l);
            prop_assert!(PacketLimits::parse(&l.to_bytes()[..cut]).is_err());
        }

        #[test]
        fn ack_frames_round_trip(n in any::<u64>(), src in any::<u32>()) {
            let f = control_frame(FrameKind::Ack, src, &n.to_le_bytes());
            let mut r = FrameReader::new();
            let s = r.spare(f.len());
            s[..f.len()].copy_from_slice(&f);
            r.filled(f.len(), f.len());
            let (h, body) = r.next_frame().unwrap().unwrap();
            prop_assert_eq!((h.kind, h.src_node), (FrameKind::Ack, src));
            prop_assert_eq!(parse_ack(&body).unwrap(), n);
            prop_assert_eq!(r.buffered(), 0);
        }

        /// Frames of every kind, fed in pieces of any size (so `spare`
        /// compacts and grows at any point), come out whole, in order, and
        /// nothing else does.
        #[test]
        fn frames_split_anywhere_come_out_whole_and_in_order(
            frames in proptest::collection::vec((1u8..=6, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..600)), 1..12),
            cuts in proptest::collection::vec(1usize..700, 1..40),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (k, src, body) in &frames {
                let kind = FrameKind::from_u8(*k).unwrap();
                stream.extend(control_frame(kind, *src, body));
                want.push((kind, *src, body.clone()));
            }
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            let (mut pos, mut i) = (0, 0);
            while pos < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - pos);
                i += 1;
                let s = r.spare(n);
                let offered = s.len();
                s[..n].copy_from_slice(&stream[pos..pos + n]);
                r.filled(offered, n);
                pos += n;
                while let Some((h, body)) = r.next_frame().unwrap() {
                    got.push((h.kind, h.src_node, body));
                }
            }
            prop_assert_eq!(got, want);
            prop_assert_eq!(r.buffered(), 0);
        }

        /// Garbage fed in pieces never panics the reader, and a refused
        /// header stays refused (the stream is closed, never resynchronised).
        #[test]
        fn garbage_in_pieces_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(1usize..300, 1..20),
        ) {
            let mut r = FrameReader::new();
            let (mut pos, mut i) = (0, 0);
            'feed: while pos < bytes.len() {
                let n = cuts[i % cuts.len()].min(bytes.len() - pos);
                i += 1;
                let s = r.spare(n);
                let offered = s.len();
                s[..n].copy_from_slice(&bytes[pos..pos + n]);
                r.filled(offered, n);
                pos += n;
                loop {
                    match r.next_frame() {
                        Ok(Some((h, body))) => {
                            prop_assert_eq!(body.len(), h.body_len as usize);
                            for (rh, p) in records(&body).flatten() {
                                prop_assert_eq!(p.len(), rh.chunk_len as usize);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            prop_assert!(r.peek_frame().is_err());
                            break 'feed;
                        }
                    }
                }
                let _ = r.peek_partial();
            }
        }

        #[test]
        fn replies_round_trip(kind in 2u8..=3, status in any::<u16>(), src in any::<u32>(), dst in any::<u32>(), cookie in any::<u64>()) {
            let h = RecordHeader {
                kind: if kind == 2 { RecordKind::Ack } else { RecordKind::Nack },
                flags: 0, status, src_ep: src, dst_ep: dst, chunk_len: 0, total: 0, offset: 0, cookie,
            };
            prop_assert_eq!(RecordHeader::parse(&h.to_bytes()).unwrap(), h);
        }

        #[test]
        fn resume_round_trips(incarnation in any::<u64>(), known in any::<u64>(), received in any::<u64>()) {
            let r = Resume { incarnation, known, received };
            prop_assert_eq!(Resume::parse(&r.to_bytes()).unwrap(), r);
            prop_assert!(Resume::parse(&r.to_bytes()[..23]).is_err());
        }

        #[test]
        fn any_valid_record_round_trips(src in any::<u32>(), dst in any::<u32>(), len in 1u32..300, cookie in any::<u64>(), extra in 0u64..1000) {
            let h = RecordHeader { kind: RecordKind::Msg, flags: 0, status: 0, src_ep: src, dst_ep: dst,
                chunk_len: len, total: len as u64 + extra, offset: extra, cookie };
            prop_assert_eq!(RecordHeader::parse(&h.to_bytes()).unwrap(), h);
        }
    }
}
