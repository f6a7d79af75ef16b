//! A forged peer agent on tcp: a test plays node `me` by hand against a real
//! agent (started with [`super::Cluster::start_partial`], that node absent),
//! speaking just enough of the protocol (Hello, Resume, Data frames of
//! records) to attack it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wyvern::wire::{
    control_frame, FrameBuilder, FrameKind, Hello, RecordHeader, RecordKind, Resume,
};

/// A connection to a real agent, past the handshake.
pub struct FakePeer {
    pub stream: TcpStream,
    pub me: u32,
    /// Data frames sent (what an Ack of ours would count).
    pub frames: u64,
    /// What the background reader saw.
    pub rx: Arc<RxCount>,
}

/// Counts of what the agent sent a [`FakePeer`].
#[derive(Default)]
pub struct RxCount {
    pub frames: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub unknown_ep: AtomicU64,
}

impl FakePeer {
    /// Connect to agent `to` of `c` as node `me` (of `nodes`) of its job and
    /// start a fresh session.
    pub fn connect(c: &super::Cluster, to: usize, me: u32, nodes: u32) -> FakePeer {
        let mut s = TcpStream::connect(c.nodes[to]).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        // The accepting agent speaks first: a Challenge with its nonce. The
        // cluster runs without a job key, so the MACs are zeros, unchecked
        // (with a key this peer could not get in: tests/hostile_peer.rs).
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut h = [0u8; wyvern::wire::FRAME_HEADER];
        s.read_exact(&mut h).expect("the agent's Challenge");
        let fh = wyvern::wire::FrameHeader::parse(&h).unwrap();
        assert_eq!(fh.kind, FrameKind::Challenge, "the agent speaks first");
        let mut challenge = vec![0u8; fh.body_len as usize];
        s.read_exact(&mut challenge).unwrap();
        s.set_read_timeout(None).unwrap();
        let hello = Hello {
            node: me,
            nodes,
            incarnation: 4242,
            job: wyvern::wire::job_hash(Some(&c.job())),
            caps: wyvern::wire::caps::TCP,
            fabric: 0,
        };
        let mut body = hello.to_bytes().to_vec();
        body.extend_from_slice(&[0x42; wyvern::wire::auth::NONCE_LEN]);
        body.extend_from_slice(&[0; wyvern::wire::auth::MAC_LEN]);
        s.write_all(&control_frame(FrameKind::Hello, me, &body))
            .unwrap();
        let r = Resume {
            incarnation: 4242,
            known: 0,
            received: 0,
        };
        s.write_all(&control_frame(FrameKind::Resume, me, &r.to_bytes()))
            .unwrap();
        // Past the handshake for real: the agent shows this node up (a fake
        // peer that never got in would make every attack test pass vacuously).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let st = c.stat(to);
            let up = st["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["node"] == me && p["state"] == "up");
            if up {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the fake node {me} did not get up at agent {to}: {st}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        FakePeer {
            stream: s,
            me,
            frames: 0,
            rx: Arc::default(),
        }
    }

    /// Read what the agent sends, in a thread of its own (so that its frames
    /// never back up), counting Data frames and reply records in `rx`.
    pub fn drain_in_background(&self) {
        let mut r = self.stream.try_clone().unwrap();
        let rx = self.rx.clone();
        std::thread::spawn(move || {
            let mut hdr = [0u8; wyvern::wire::FRAME_HEADER];
            let mut body = Vec::new();
            loop {
                if r.read_exact(&mut hdr).is_err() {
                    break;
                }
                let Ok(h) = wyvern::wire::FrameHeader::parse(&hdr) else {
                    // Not a frame boundary (cannot happen): just drain.
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                    }
                    break;
                };
                body.resize(h.body_len as usize, 0);
                if r.read_exact(&mut body).is_err() {
                    break;
                }
                if h.kind != FrameKind::Data {
                    continue;
                }
                rx.frames.fetch_add(1, Ordering::Relaxed);
                for (rh, _) in wyvern::wire::records(&body).flatten() {
                    match rh.kind {
                        RecordKind::Nack => {
                            rx.nacks.fetch_add(1, Ordering::Relaxed);
                            if rh.status == wyvern::proto::Status::UnknownEndpoint as u16 {
                                rx.unknown_ep.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        RecordKind::Ack => {
                            rx.acks.fetch_add(1, Ordering::Relaxed);
                        }
                        RecordKind::Msg => {}
                    }
                }
            }
        });
    }

    /// Acknowledge the Data frames received so far (as a peer agent does),
    /// so that the agent does not keep them for us.
    pub fn ack(&mut self) -> std::io::Result<()> {
        let n = self.rx.frames.load(Ordering::Relaxed);
        self.stream
            .write_all(&control_frame(FrameKind::Ack, self.me, &n.to_le_bytes()))
    }

    /// Send `records` (header, payload) packed into Data frames of at most
    /// `frame` bytes.
    pub fn send_records<'a>(
        &mut self,
        frame: usize,
        records: impl IntoIterator<Item = (RecordHeader, &'a [u8])>,
    ) -> std::io::Result<()> {
        let mut b = FrameBuilder::new(self.me, frame);
        let mut out = Vec::with_capacity(1 << 20);
        for (h, p) in records {
            if !b.fits(p.len()) {
                out.extend_from_slice(&b.finish());
                self.frames += 1;
                if out.len() >= 1 << 20 {
                    self.stream.write_all(&out)?;
                    out.clear();
                }
            }
            b.push(&h, p);
        }
        if !b.is_empty() {
            out.extend_from_slice(&b.finish());
            self.frames += 1;
        }
        self.stream.write_all(&out)
    }

    /// A heartbeat (keeps the agent from declaring us silent).
    pub fn heartbeat(&mut self) -> std::io::Result<()> {
        self.stream
            .write_all(&control_frame(FrameKind::Heartbeat, self.me, &[]))
    }
}

/// A reply record (Ack or Nack) as a peer sends it.
pub fn reply(kind: RecordKind, status: u16, src_ep: u32, dst_ep: u32, cookie: u64) -> RecordHeader {
    RecordHeader {
        kind,
        flags: 0,
        status,
        src_ep,
        dst_ep,
        chunk_len: 0,
        total: 0,
        offset: 0,
        cookie,
    }
}

/// A whole small message record.
pub fn msg(flags: u8, src_ep: u32, dst_ep: u32, len: usize, cookie: u64) -> RecordHeader {
    RecordHeader {
        kind: RecordKind::Msg,
        flags,
        status: 0,
        src_ep,
        dst_ep,
        chunk_len: len as u32,
        total: len as u64,
        offset: 0,
        cookie,
    }
}
