//! A forged peer agent on tcp: a test plays node `me` by hand against a real
//! agent (started with [`super::Cluster::start_partial`], that node absent),
//! speaking just enough of the protocol (Hello, Resume, Data frames of
//! records) to attack it.

use std::io::{Read, Write};
use std::net::TcpStream;
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
}

impl FakePeer {
    /// Connect to agent `to` of `c` as node `me` (of `nodes`) of its job and
    /// start a fresh session.
    pub fn connect(c: &super::Cluster, to: usize, me: u32, nodes: u32) -> FakePeer {
        let mut s = TcpStream::connect(c.nodes[to]).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello = Hello {
            node: me,
            nodes,
            incarnation: 4242,
            job: wyvern::wire::job_hash(Some(&c.job())),
            caps: wyvern::wire::caps::TCP,
            fabric: 0,
        };
        s.write_all(&control_frame(FrameKind::Hello, me, &hello.to_bytes()))
            .unwrap();
        let r = Resume {
            incarnation: 4242,
            known: 0,
            received: 0,
        };
        s.write_all(&control_frame(FrameKind::Resume, me, &r.to_bytes()))
            .unwrap();
        FakePeer {
            stream: s,
            me,
            frames: 0,
        }
    }

    /// Read and discard what the agent sent, in a thread of its own (so
    /// that the agent's frames never back up).
    pub fn drain_in_background(&self) {
        let mut r = self.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        });
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

/// VmRSS of process `pid`, in bytes.
pub fn rss(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}
