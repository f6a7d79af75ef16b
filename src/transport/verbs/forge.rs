//! A raw verbs peer for tests: it speaks the agent's bootstrap and stream formats by
//! hand, so that a test can hand a real agent what no agent would send (a rendezvous
//! descriptor outside the region the peer advertised, say). Not part of the API: only
//! in a build with the `testing` feature (every `cargo test` build has it).
//!
//! It plays node `hello.node`, dials the agent's bootstrap address, waits for the
//! agent's challenge, sends its Hello (with a MAC under the job key it is given, zeros
//! without one) and Info, checks the agent's answer (its MAC too, with a key), connects
//! its own RC QP (with its own small SRQ, so the agent's SENDs find a receive buffer)
//! and says Ready. Everything is blocking with timeouts; errors are strings (a test
//! prints them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::transport::MSG;
use super::{Access, Context, Cq, Pd, Qp, QpCaps, RecvWr, RegBuf, SendOp, SendWr, Sge, Srq, Wc};
use crate::wire::auth::{self, JobKey, NONCE_LEN};
use crate::wire::verbs::{
    boot_hello, boot_msg, parse_challenge, take_boot_msg, BootHello, BootKind, BootMsg, Info,
    QpAddr, Rdv, StreamWriter,
};
use crate::wire::Hello;

/// Receive buffers the raw peer posts (and credits it grants the agent).
const RECVS: u32 = 8;
const RECV_BIT: u64 = 1 << 63;

/// What the agent advertised in its Info: where rendezvous descriptors must point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertised {
    /// The pool's address in the agent's process.
    pub base: u64,
    /// The block region, as pool offsets.
    pub region_off: u64,
    /// Its length.
    pub region_len: u64,
    /// The pool's remote key.
    pub rkey: u32,
}

/// A hand-driven peer of one agent (see the module docs).
pub struct RawPeer {
    // Drop order: the QP before its SRQ, CQ and buffers.
    qp: Qp,
    _srq: Arc<Srq>,
    cq: Arc<Cq>,
    /// The agent's SENDs land here (never looked at).
    _recv: RegBuf,
    send: RegBuf,
    _pd: Arc<Pd>,
    _ctx: Arc<Context>,
    ctl: TcpStream,
    remote: Info,
    credits: u32,
    seq: u64,
    received: u64,
}

fn err(what: &str) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl RawPeer {
    /// Connect to the agent whose bootstrap listens at `agent`, from `device` (none:
    /// the first active port), as the node of `hello`, proving it holds `key` (none: no
    /// MAC, as an agent without a job key).
    pub fn connect(
        device: Option<&str>,
        gid_index: Option<u32>,
        hello: Hello,
        key: Option<&JobKey>,
        agent: SocketAddr,
        timeout: Duration,
    ) -> Result<RawPeer, String> {
        let s = |e: super::Error| e.to_string();
        let ctx = Context::open(device).map_err(s)?;
        let port = ctx.query_port().map_err(s)?;
        let gid = ctx.choose_gid(gid_index, None).map_err(s)?.map(|(e, _)| e);
        let pd = Pd::new(&ctx).map_err(s)?;
        let cq = Cq::new(&ctx, 64, None).map_err(s)?;
        let srq = Srq::new(&pd, RECVS).map_err(s)?;
        let qp = Qp::new_rc(
            &pd,
            &cq,
            Some(&srq),
            QpCaps {
                max_send_wr: 16,
                max_recv_wr: 0,
                max_inline: 0,
            },
        )
        .map_err(s)?;
        qp.to_init(ctx.port(), Access::LOCAL_WRITE.with(Access::REMOTE_READ))
            .map_err(s)?;
        let recv = RegBuf::new(&pd, RECVS as usize * MSG, Access::LOCAL_WRITE).map_err(s)?;
        let send =
            RegBuf::new(&pd, MSG, Access::LOCAL_WRITE.with(Access::REMOTE_READ)).map_err(s)?;
        let list: Vec<RecvWr> = (0..RECVS)
            .map(|i| RecvWr {
                wr_id: RECV_BIT | i as u64,
                buf: Sge {
                    addr: recv.addr(i as usize * MSG),
                    len: MSG as u32,
                    lkey: recv.mr().lkey(),
                },
            })
            .collect();
        // SAFETY: the buffers lie in `recv` (registered with local write), which the
        // peer owns and drops after its QP; nothing reads them before a completion.
        unsafe { srq.post_recv(&list) }.map_err(s)?;
        let psn = 0x1234;
        let mine = Info {
            qp: QpAddr {
                qpn: qp.qpn(),
                psn,
                lid: port.lid,
                gid: gid.map(|e| e.gid.0),
            },
            mtu: port.active_mtu as u8,
            base: send.addr(0),
            region_off: 0,
            region_len: MSG as u64,
            rkey: send.mr().rkey(),
            credits: RECVS,
        };
        let mut ctl = TcpStream::connect_timeout(&agent, timeout).map_err(err("dial"))?;
        ctl.set_read_timeout(Some(timeout)).map_err(err("socket"))?;
        let mut buf = Vec::new();
        let mut next = |ctl: &mut TcpStream| -> Result<(BootKind, Vec<u8>), String> {
            loop {
                if let Some(BootMsg { kind, body }) =
                    take_boot_msg(&mut buf).map_err(|e| e.to_string())?
                {
                    return Ok((kind, body));
                }
                let mut tmp = [0u8; 512];
                let n = ctl.read(&mut tmp).map_err(err("bootstrap read"))?;
                if n == 0 {
                    return Err("the agent closed the bootstrap connection".into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
        };
        // The agent's challenge first.
        let challenge: [u8; NONCE_LEN] = match next(&mut ctl)? {
            (BootKind::Challenge, b) => parse_challenge(&b).map_err(|e| e.to_string())?,
            (k, _) => return Err(format!("bootstrap message {k:?} instead of a challenge")),
        };
        let ours = auth::random_bytes::<NONCE_LEN>();
        let info = mine.to_bytes();
        let mut out = boot_hello(
            key,
            auth::label::VERBS_BOOT_DIALER,
            &challenge,
            &ours,
            &hello,
            &info,
        );
        out.extend(boot_msg(BootKind::Info, &info));
        ctl.write_all(&out).map_err(err("bootstrap write"))?;
        // The agent's Hello, then its Info.
        let theirs = match next(&mut ctl)? {
            (BootKind::Hello, b) => BootHello::parse(&b).map_err(|e| e.to_string())?,
            (k, _) => return Err(format!("bootstrap message {k:?} instead of Hello")),
        };
        let remote = match next(&mut ctl)? {
            (BootKind::Info, b) => {
                if !theirs.verify(key, auth::label::VERBS_BOOT_ACCEPTOR, &challenge, &ours, &b) {
                    return Err("the agent's Hello and Info failed their MAC".into());
                }
                Info::parse(&b).map_err(|e| e.to_string())?
            }
            (k, _) => return Err(format!("bootstrap message {k:?} instead of Info")),
        };
        let mtu = (remote.mtu as u32).min(port.active_mtu).max(1);
        qp.to_rtr(ctx.port(), &remote.qp.into(), mtu, gid.map(|e| e.index), 1)
            .map_err(s)?;
        qp.to_rts(psn, 1).map_err(s)?;
        ctl.write_all(&boot_msg(BootKind::Ready, &[]))
            .map_err(err("bootstrap write"))?;
        Ok(RawPeer {
            qp,
            _srq: srq,
            cq,
            _recv: recv,
            send,
            _pd: pd,
            _ctx: ctx,
            ctl,
            credits: remote.credits,
            remote,
            seq: 0,
            received: 0,
        })
    }

    /// What the agent advertised.
    pub fn advertised(&self) -> Advertised {
        Advertised {
            base: self.remote.base,
            region_off: self.remote.region_off,
            region_len: self.remote.region_len,
            rkey: self.remote.rkey,
        }
    }

    /// SENDs of the agent received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Wait until the agent has sent something: it has the link up then (it sends
    /// only on links it reported up to itself).
    pub fn wait_for_a_send(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let before = self.received;
        while self.received == before {
            if Instant::now() > deadline {
                return Err(format!("no SEND from the agent within {timeout:?}"));
            }
            self.poll()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Vec<Wc>, String> {
        let mut wcs = Vec::new();
        self.cq.poll(&mut wcs, 16).map_err(|e| e.to_string())?;
        for wc in &wcs {
            if wc.wr_id & RECV_BIT != 0 && wc.is_ok() {
                self.received += 1;
            }
        }
        Ok(wcs)
    }

    /// Send the agent one stream message holding a rendezvous descriptor of
    /// `len` bytes at pool offset `off` under `rkey`, whatever they are; waits for
    /// the SEND's completion (the agent's device took it).
    pub fn send_descriptor(
        &mut self,
        off: u64,
        len: u64,
        rkey: u32,
        timeout: Duration,
    ) -> Result<(), String> {
        if self.credits == 0 {
            return Err("no credits left".into());
        }
        let mut w = StreamWriter::new(self.send.slice_mut(0, MSG));
        w.rdv(&Rdv { off, len, rkey });
        let n = w.len();
        self.credits -= 1;
        let id = self.seq;
        self.seq += 1;
        let wr = SendWr {
            wr_id: id,
            op: SendOp::Send { inline: false },
            local: Sge {
                addr: self.send.addr(0),
                len: n as u32,
                lkey: self.send.mr().lkey(),
            },
            signaled: true,
        };
        // SAFETY: the buffer lies in `send` (registered, owned by the peer, dropped
        // after its QP) and is not written again before the completion awaited below.
        unsafe { self.qp.post_send(&[wr]) }.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        loop {
            for wc in self.poll()? {
                if wc.wr_id == id {
                    return if wc.is_ok() {
                        Ok(())
                    } else {
                        Err(format!("the SEND failed: {}", wc.status_str()))
                    };
                }
            }
            if Instant::now() > deadline {
                return Err(format!("the SEND did not complete within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until the agent closes the bootstrap connection (it dropped the link);
    /// `false` when it is still open after `timeout`.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut tmp = [0u8; 512];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = self
                .ctl
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.ctl.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}
