//! Fuzzing on stable Rust: a seeded, structure-aware mutation fuzzer over a
//! corpus kept in the repository (`fuzz/corpus/<target>/`), one test per
//! target. Coverage-guided fuzzers (cargo-fuzz/libFuzzer) need a nightly
//! toolchain, which the build machines here cannot install, so this harness
//! has no coverage feedback; it makes up for part of that by mutating valid
//! inputs (built by the real encoders) and by repairing length fields and
//! checksums after a mutation, so most inputs get past the first check.
//!
//! Every target runs for `WYVERN_FUZZ_SECS` seconds (default 2; CI: 20) or
//! `WYVERN_FUZZ_ITERS` inputs, whichever ends first, from seed
//! `WYVERN_FUZZ_SEED` (default: the clock, printed). An input that panics is
//! written to `target/fuzz-crashes/` and printed in hex; to keep it as a
//! regression, put it in `fuzz/regressions/<target>/`: every file there is
//! run before fuzzing starts, so it stays a test. `WYVERN_FUZZ_WRITE_SEEDS=1`
//! (re)writes the seed corpus from the encoders.
//!
//! Targets: the frame decoder (frames, records, Hello, Resume, Ack, the
//! job view's StatQuery and StatReply, the stream reader), the datagram packet decoder and the reliability layer it
//! feeds, the control-line reader and request parser, the ring record
//! parsers (a ring in a real pool whose memory the input overwrites, and the
//! submission/completion/delivery records), the TOML configuration, and
//! the verbs transport's bootstrap messages and stream SENDs.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wyvern::wire::{self, packet, reliable, FrameKind, FrameReader, RecordHeader, RecordKind};

// ------------------------------------------------------------------ engine

/// xorshift64*: small, fast, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    7,
    8,
    40,
    0x7f,
    0x80,
    0xff,
    0xffff,
    u32::MAX as u64,
    u64::MAX,
];

/// One to four random edits of `input`: bit flips, interesting values
/// written as 1/2/4/8-byte integers, inserted / deleted / duplicated ranges,
/// a splice with another corpus entry, truncation.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 if !v.is_empty() => {
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let i = rng.below(v.len());
                let mut val = INTERESTING[rng.below(INTERESTING.len())];
                if rng.below(4) == 0 {
                    val = val.wrapping_add(rng.below(3) as u64).wrapping_sub(1);
                }
                let bytes = val.to_le_bytes();
                let n = width.min(v.len() - i);
                v[i..i + n].copy_from_slice(&bytes[..n]);
            }
            3 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, ins);
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(64));
                v.drain(i..i + n);
            }
            5 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(64));
                let dup = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, dup);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 if !v.is_empty() => {
                v.truncate(rng.below(v.len()));
            }
            _ => {}
        }
    }
    if v.len() > 1 << 20 {
        v.truncate(1 << 20);
    }
    v
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_dir_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A target: seeds built by the encoders, an optional repair applied to
/// most mutated inputs (lengths, checksums), and the check, which must not
/// panic on any input.
struct Target {
    name: &'static str,
    seeds: fn() -> Vec<Vec<u8>>,
    fixup: Option<fn(&mut Vec<u8>)>,
    check: fn(&[u8]),
}

fn run(t: Target) {
    let corpus_dir = repo().join("fuzz/corpus").join(t.name);
    if std::env::var("WYVERN_FUZZ_WRITE_SEEDS").as_deref() == Ok("1") {
        std::fs::create_dir_all(&corpus_dir).expect("corpus dir");
        for (i, s) in (t.seeds)().iter().enumerate() {
            std::fs::write(corpus_dir.join(format!("seed-{i:03}")), s).expect("write seed");
        }
    }
    let mut corpus: Vec<Vec<u8>> = read_dir_files(&corpus_dir)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert!(
        !corpus.is_empty(),
        "fuzz target {}: no corpus in {} (WYVERN_FUZZ_WRITE_SEEDS=1 writes it)",
        t.name,
        corpus_dir.display()
    );
    corpus.extend((t.seeds)());

    // Kept crashes first: each is a regression test.
    let regressions = read_dir_files(&repo().join("fuzz/regressions").join(t.name));
    for (path, input) in &regressions {
        if catch_unwind(AssertUnwindSafe(|| (t.check)(input))).is_err() {
            panic!(
                "fuzz target {}: regression input {} panics again",
                t.name,
                path.display()
            );
        }
    }
    // Every corpus entry as it is.
    for input in &corpus {
        (t.check)(input);
    }

    let secs = env_u64("WYVERN_FUZZ_SECS").unwrap_or(2);
    let max_iters = env_u64("WYVERN_FUZZ_ITERS").unwrap_or(u64::MAX);
    let seed = env_u64("WYVERN_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }) | 1;
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut iters = 0u64;
    // Silence the default hook's backtrace spam while probing; the input
    // that panicked is reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut crash = None;
    while iters < max_iters && (iters % 256 != 0 || Instant::now() < deadline) {
        iters += 1;
        let base = &corpus[rng.below(corpus.len())];
        let mut input = mutate(&mut rng, base, &corpus);
        if let Some(fix) = t.fixup {
            if rng.below(4) != 0 {
                fix(&mut input);
            }
        }
        if catch_unwind(AssertUnwindSafe(|| (t.check)(&input))).is_err() {
            crash = Some(input);
            break;
        }
    }
    std::panic::set_hook(hook);
    println!(
        "fuzz target {}: {iters} inputs in {secs} s at most, seed {seed}, corpus {} + {} regression(s)",
        t.name,
        corpus.len(),
        regressions.len()
    );
    if let Some(input) = crash {
        let dir = repo().join("target/fuzz-crashes");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{}-{seed}", t.name));
        let _ = std::fs::File::create(&file).and_then(|mut f| f.write_all(&input));
        // Run it once more with the normal hook, for the message and backtrace.
        eprintln!(
            "fuzz target {}: input of {} bytes panics (seed {seed}; saved to {}; keep it in fuzz/regressions/{}/): {}",
            t.name,
            input.len(),
            file.display(),
            t.name,
            hex(&input)
        );
        (t.check)(&input);
        panic!("fuzz target {}: the input above panicked once", t.name);
    }
}

// ------------------------------------------------------------------ frames

fn record(kind: RecordKind, flags: u8, chunk: &[u8], total: u64, offset: u64) -> Vec<u8> {
    let h = RecordHeader {
        kind,
        flags,
        status: if kind == RecordKind::Nack { 3 } else { 0 },
        src_ep: 7,
        dst_ep: 9,
        chunk_len: chunk.len() as u32,
        total,
        offset,
        cookie: 0x1234,
    };
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(chunk);
    v.resize(v.len() + wire::padded(chunk.len()) - chunk.len(), 0);
    v
}

fn frame_seeds() -> Vec<Vec<u8>> {
    let hello = wire::Hello {
        node: 1,
        nodes: 4,
        incarnation: 99,
        job: wire::job_hash(Some("job")),
        caps: wire::caps::TCP,
        fabric: 0,
    };
    let resume = wire::Resume {
        incarnation: 5,
        known: 6,
        received: 7,
    };
    let mut data = Vec::new();
    data.extend(record(RecordKind::Msg, 0, b"hello", 5, 0));
    data.extend(record(RecordKind::Msg, wire::FLAG_ACK, &[], 0, 0));
    data.extend(record(RecordKind::Msg, 0, &[0xab; 100], 300, 100));
    data.extend(record(RecordKind::Ack, 0, &[], 0, 0));
    data.extend(record(RecordKind::Nack, 0, &[], 0, 0));
    let mut stream = Vec::new();
    stream.extend(wire::control_frame(FrameKind::Hello, 1, &hello.to_bytes()));
    stream.extend(wire::control_frame(
        FrameKind::Resume,
        1,
        &resume.to_bytes(),
    ));
    stream.extend(wire::control_frame(FrameKind::Data, 1, &data));
    stream.extend(wire::control_frame(FrameKind::Ack, 1, &42u64.to_le_bytes()));
    stream.extend(wire::control_frame(FrameKind::Heartbeat, 1, &[]));
    stream.extend(wire::control_frame(FrameKind::Bye, 1, &[]));
    stream.extend(wire::control_frame(FrameKind::Challenge, 0, &[7; 32]));
    stream.extend(wire::control_frame(
        FrameKind::StatQuery,
        1,
        &9u64.to_le_bytes(),
    ));
    let summary = wire::jobstat::NodeSummary {
        query: 9,
        node: 1,
        nodes: 4,
        msgs_tx: 1000,
        slow_node: 3,
        slow_backlog: 4096,
        ..Default::default()
    };
    stream.extend(wire::control_frame(
        FrameKind::StatReply,
        1,
        &summary.to_bytes(),
    ));
    vec![
        wire::control_frame(FrameKind::Hello, 1, &hello.to_bytes()),
        wire::control_frame(FrameKind::Data, 2, &data),
        stream,
    ]
}

#[allow(clippy::ptr_arg)] // one signature for every target's repair
/// Make the frames' `body_len` fields agree with what follows, as a sender
/// would, so the mutation reaches the record parser.
fn frame_fixup(v: &mut Vec<u8>) {
    let mut pos = 0;
    while pos + wire::FRAME_HEADER <= v.len() {
        let left = v.len() - pos - wire::FRAME_HEADER;
        let want = u32::from_le_bytes(v[pos + 12..pos + 16].try_into().unwrap()) as usize;
        if want > left {
            let fixed = left & !7;
            v[pos + 12..pos + 16].copy_from_slice(&(fixed as u32).to_le_bytes());
        }
        match wire::FrameHeader::parse(&v[pos..pos + wire::FRAME_HEADER]) {
            Ok(h) => pos += wire::FRAME_HEADER + h.body_len as usize,
            Err(_) => break,
        }
    }
}

fn frame_check(input: &[u8]) {
    // The pieces on their own.
    let _ = wire::FrameHeader::parse(input);
    let _ = wire::Hello::parse(input);
    let _ = wire::Resume::parse(input);
    let _ = wire::parse_ack(input);
    let _ = wire::jobstat::parse_query(input);
    check_summary(input);
    check_records(input);
    // The stream reader, fed in pieces of input-chosen sizes.
    let mut r = FrameReader::new();
    let mut pos = 0;
    let mut step = 1 + input.first().copied().unwrap_or(0) as usize;
    while pos < input.len() {
        let n = step.min(input.len() - pos);
        let s = r.spare(n);
        let offered = s.len();
        s[..n].copy_from_slice(&input[pos..pos + n]);
        r.filled(offered, n);
        pos += n;
        step = step * 7 % 1500 + 1;
        let _ = r.peek_partial();
        while let Ok(Some((h, body))) = r.peek_frame() {
            assert_eq!(body.len(), h.body_len as usize);
            match h.kind {
                FrameKind::Data => check_records(body),
                FrameKind::StatQuery => {
                    let _ = wire::jobstat::parse_query(body);
                }
                FrameKind::StatReply => check_summary(body),
                _ => {}
            }
            r.consume();
        }
        assert!(r.buffered() <= input.len());
    }
}

/// A `StatReply` body parses only at its exact size, and what parses
/// encodes back to the same bytes.
fn check_summary(body: &[u8]) {
    if let Ok(s) = wire::jobstat::NodeSummary::parse(body) {
        assert_eq!(body.len(), wire::jobstat::NodeSummary::LEN);
        assert_eq!(&s.to_bytes()[..], body);
        assert!(s.slow_node == wire::jobstat::NO_NODE || s.slow_node < s.nodes);
    }
}

fn check_records(body: &[u8]) {
    let mut end = 0;
    for rec in wire::records(body) {
        let Ok((h, payload)) = rec else { break };
        assert_eq!(payload.len(), h.chunk_len as usize);
        if h.kind == RecordKind::Msg {
            assert!(h.offset + h.chunk_len as u64 <= h.total);
        }
        end += h.wire_len();
        assert!(end <= body.len(), "a record beyond its body");
    }
}

#[test]
fn fuzz_frame_decoder() {
    run(Target {
        name: "frame",
        seeds: frame_seeds,
        fixup: Some(frame_fixup),
        check: frame_check,
    });
}

// ----------------------------------------------------------------- packets

fn packet_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for kind in [
        packet::PktKind::Data,
        packet::PktKind::Ack,
        packet::PktKind::Probe,
        packet::PktKind::Hello,
    ] {
        let alone = matches!(kind, packet::PktKind::Ack | packet::PktKind::Probe);
        let h = packet::PacketHeader {
            kind,
            flags: 0,
            src_node: 1,
            dst_node: 0,
            src_epoch: 11,
            dst_epoch: 22,
            seq: if alone { 0 } else { 3 },
            ack: reliable::Ack {
                next: 2,
                sack: 0b101,
                window: 64,
                dsack: alone.then_some(1),
            },
        };
        let payload: &[u8] = if alone { &[] } else { b"some frame bytes" };
        let mut v = Vec::new();
        packet::encode(&h, payload, &mut v);
        out.push(v);
    }
    out
}

/// Set the payload length and checksum right, so a mutated packet gets past
/// the checksum to the field checks (an attacker computes CRCs too).
fn packet_fixup(v: &mut Vec<u8>) {
    if v.len() < packet::PKT_HEADER {
        return;
    }
    let len = (v.len() - packet::PKT_HEADER).min(u16::MAX as usize);
    v.truncate(packet::PKT_HEADER + len);
    v[12..14].copy_from_slice(&(len as u16).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&v[..60]), &v[64..]);
    v[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Decode, and drive a reliable sender/receiver pair with what decoded:
/// hostile acks and sequence numbers must be refused or absorbed, never
/// panic, and the sender never holds more than it sent.
fn packet_check(input: &[u8]) {
    let Ok((h, payload)) = packet::decode(input) else {
        return;
    };
    assert!(payload.len() <= input.len());
    let t0 = Instant::now();
    let cfg = reliable::Config::default();
    let mut tx = reliable::Sender::<u32>::new(cfg, t0);
    let mut rx = reliable::Receiver::<u32>::new(cfg);
    let mut freed = Vec::new();
    let sent = (h.seq % 64) as u32;
    for i in 0..sent {
        let _ = tx.send(i, t0);
    }
    let now = t0 + Duration::from_micros(h.ack.window as u64 % 1_000_000);
    let _ = tx.on_ack(&h.ack, now, &mut freed);
    assert!(tx.in_flight() <= sent as usize);
    tx.poll_retransmit(now + Duration::from_secs(1), |_, _| {});
    let _ = rx.on_packet(h.seq, 0, now);
    let _ = rx.on_packet(h.ack.next, 1, now);
    let _ = rx.on_packet(h.ack.sack, 2, now);
    while rx.pop().is_some() {}
    let _ = rx.make_ack();
    assert!(rx.ready_len() <= cfg.window as usize);
}

#[test]
fn fuzz_packet_decoder_and_reliability() {
    run(Target {
        name: "packet",
        seeds: packet_seeds,
        fixup: Some(packet_fixup),
        check: packet_check,
    });
}

// ----------------------------------------------------------- control lines

fn control_seeds() -> Vec<Vec<u8>> {
    use wyvern::proto::CtlRequest;
    let reqs = [
        CtlRequest::Attach {
            version: 1,
            pid: 42,
            name: "fuzz".into(),
        },
        CtlRequest::OpenEndpoint { id: Some(7) },
        CtlRequest::OpenEndpoint { id: None },
        CtlRequest::CloseEndpoint { id: 7 },
        CtlRequest::Detach,
        CtlRequest::Stat,
        CtlRequest::BreakLink {
            node: 1,
            hold_ms: 0,
        },
        CtlRequest::BreakLink {
            node: 2,
            hold_ms: 5000,
        },
        CtlRequest::JobStat { timeout_ms: 2000 },
    ];
    let all: String = reqs
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let mut v: Vec<Vec<u8>> = reqs
        .iter()
        .map(|r| (serde_json::to_string(r).unwrap() + "\n").into_bytes())
        .collect();
    v.push(all.into_bytes());
    v
}

/// Bytes through a real socket pair into the agent's line reader, in pieces;
/// every complete line through the request parser. The reader must refuse
/// an over-long line rather than buffer it.
fn control_check(input: &[u8]) {
    use std::os::unix::net::UnixStream;
    use wyvern::shm::handoff::{LineReader, ReadOutcome, MAX_LINE};
    let (a, b) = UnixStream::pair().expect("socketpair");
    b.set_nonblocking(true).expect("nonblocking");
    let mut r = LineReader::new();
    let mut a = a;
    for piece in input.chunks(1 + input.len() / 3) {
        a.write_all(piece).expect("write to the pair");
        while let Ok(ReadOutcome::Data) = r.read_from(&b) {}
        while let Some((line, fds)) = r.next_line() {
            assert!(fds.is_empty());
            assert!(line.len() <= MAX_LINE + 4096, "a line past the limit");
            let _ = serde_json::from_str::<wyvern::proto::CtlRequest>(&line);
        }
    }
}

#[test]
fn fuzz_control_line_parser() {
    run(Target {
        name: "control",
        seeds: control_seeds,
        fixup: None,
        check: control_check,
    });
}

// ------------------------------------------------------------ ring records

fn ring_seeds() -> Vec<Vec<u8>> {
    use wyvern::proto::{CompKind, Completion, Delivery, Mode, Op, Status, Submit};
    let s = Submit {
        op: Op::Send,
        mode: Mode::Delivered,
        src_slot: 0,
        dst_node: 1,
        dst_ep: 7,
        cookie: 5,
        off: 0,
        len: 5,
    };
    let mut sub = s.to_bytes().to_vec();
    sub.extend_from_slice(b"hello");
    let c = Completion {
        kind: CompKind::Send,
        status: Status::Ok,
        cookie: 5,
        off: 0,
        len: 0,
    };
    let d = Delivery {
        src_node: 1,
        src_ep: 2,
        len: 3,
        off: Delivery::INLINE,
    };
    let mut del = d.to_bytes().to_vec();
    del.extend_from_slice(b"abc");
    // A ring image: the header's tail index (8 bytes at 0) and head (at 128),
    // then a record's framing word (length) and bytes.
    let mut ring = vec![0u8; 256 + 64 * 4];
    ring[0..8].copy_from_slice(&2u64.to_le_bytes());
    ring[256..260].copy_from_slice(&(sub.len() as u32).to_le_bytes());
    ring[264..264 + sub.len()].copy_from_slice(&sub);
    vec![sub, c.to_bytes().to_vec(), del, ring]
}

thread_local! {
    /// One small real pool per fuzzing thread (normal pages): the ring
    /// target writes the input over a client's submission ring in it.
    static POOL: std::sync::Arc<wyvern::shm::Pool> = std::sync::Arc::new(
        wyvern::shm::Pool::create(
            wyvern::shm::PoolParams {
                max_clients: 1,
                endpoints_per_client: 1,
                sub_slots: 16,
                comp_slots: 16,
                recv_slots: 16,
                block_bytes: 1 << 20,
            },
            0,
            false,
        )
        .expect("a small pool"),
    );
}

/// The input as record bytes for each parser, then written over a real
/// submission ring (indices, framing words, records) that the agent's
/// consumer then reads: every record it yields must fit the ring's limit
/// and a corrupt ring must be reported, not read past.
fn ring_check(input: &[u8]) {
    use wyvern::proto::{Completion, Delivery, Submit};
    if let Ok((_, payload)) = Submit::parse(input) {
        assert!(payload.len() <= input.len());
    }
    let _ = Completion::parse(input);
    if let Some((_, payload)) = Delivery::parse(input) {
        assert!(payload.len() <= input.len());
    }
    POOL.with(|pool| {
        let l = *pool.layout();
        let off = l.sub_off(0);
        let bytes = l.sub.bytes();
        let mut image = vec![0u8; bytes];
        let n = input.len().min(bytes);
        image[..n].copy_from_slice(&input[..n]);
        pool.scribble(off, &image);
        let mut rx = pool.sub_consumer(0, false);
        let mut rec = Vec::new();
        for _ in 0..64 {
            match rx.try_pop(&mut rec) {
                Ok(true) => {
                    assert!(rec.len() <= l.sub.max_record());
                    let _ = Submit::parse(&rec);
                }
                Ok(false) | Err(_) => break,
            }
        }
    });
}

#[test]
fn fuzz_ring_record_parsers() {
    run(Target {
        name: "ring",
        seeds: ring_seeds,
        fixup: None,
        check: ring_check,
    });
}

// ------------------------------------------------------------------ config

fn config_seeds() -> Vec<Vec<u8>> {
    let full = r#"node_id = 0
nodes = ["127.0.0.1:7000", "127.0.0.1:7001"]
socket = "/tmp/wyvern-fuzz.sock"
transport = "tcp"
idle = "adaptive"
spin_us = 50
eager_max = 4096
frame_bytes = 65536
heartbeat_ms = 100
peer_timeout_ms = 3000
job = "fuzz"

[pool]
max_clients = 4
endpoints_per_client = 2
sub_slots = 64
comp_slots = 64
recv_slots = 64
block_bytes = 1048576
"#;
    vec![
        full.as_bytes().to_vec(),
        b"node_id = 1\nnodes = [\"a:1\", \"b:2\"]\n".to_vec(),
        b"transports = [\"verbs\", \"tcp\"]\npeer_transports = [\"\", \"tcp\"]\n".to_vec(),
    ]
}

/// Any TOML text: parsed, then validated; a bad value is an error, never a
/// panic (validation must not trust numbers such as sizes and counts).
fn config_check(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(mut cfg) = toml::from_str::<wyvern::agent::AgentConfig>(text) {
        // Never resolve names (no network from a test): only literal addresses.
        if cfg
            .nodes
            .iter()
            .all(|n| n.parse::<std::net::SocketAddr>().is_ok())
        {
            let _ = cfg.validate();
        }
    }
}

#[test]
fn fuzz_toml_config() {
    run(Target {
        name: "config",
        seeds: config_seeds,
        fixup: None,
        check: config_check,
    });
}

// ------------------------------------------------------------------- verbs

fn verbs_seeds() -> Vec<Vec<u8>> {
    use wyvern::wire::auth::{label, JobKey};
    use wyvern::wire::verbs::{boot_hello, boot_msg, BootKind, Info, QpAddr, Rdv, StreamWriter};
    let info = Info {
        qp: QpAddr {
            qpn: 17,
            psn: 0xabcdef,
            lid: 3,
            gid: Some([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 0, 1]),
        },
        mtu: 3,
        base: 0x7f00_0000_0000,
        region_off: 4096,
        region_len: 1 << 20,
        rkey: 0x1234,
        credits: 32,
    }
    .to_bytes();
    let hello = wire::Hello {
        node: 1,
        nodes: 2,
        incarnation: 9,
        job: 0xfeed,
        caps: 8,
        fabric: 5,
    };
    let key = JobKey::from_bytes([5; 32]);
    let mut handshake = boot_msg(BootKind::Challenge, &[1; 32]);
    handshake.extend(boot_hello(
        Some(&key),
        label::VERBS_BOOT_DIALER,
        &[1; 32],
        &[2; 32],
        &hello,
        &info,
    ));
    handshake.extend(boot_msg(BootKind::Info, &info));
    handshake.extend(boot_msg(BootKind::Ready, &[]));
    let mut send = vec![0u8; 256];
    let mut w = StreamWriter::new(&mut send);
    w.set_header(3, 1);
    w.data(11).copy_from_slice(b"frame bytes");
    w.rdv(&Rdv {
        off: 8192,
        len: 70_000,
        rkey: 0x1234,
    });
    let n = w.len();
    send.truncate(n);
    vec![handshake, boot_msg(BootKind::Info, &info), send]
}

/// Bootstrap messages: the stream split into messages, each body parsed by its
/// kind, a `Hello` verified against the `Info` after it; and the same bytes as
/// a stream SEND, its descriptors checked against an advertised region. Refused
/// or parsed, never a panic, and what parses stays inside the input.
fn verbs_check(input: &[u8]) {
    use wyvern::wire::auth::{label, JobKey};
    use wyvern::wire::verbs::{
        parse_challenge, take_boot_msg, BootHello, BootKind, Info, Item, StreamMsg, BOOT_BODY_MAX,
    };
    let key = JobKey::from_bytes([5; 32]);
    let mut buf = input.to_vec();
    let mut hello = None;
    while let Ok(Some(m)) = take_boot_msg(&mut buf) {
        assert!(m.body.len() <= BOOT_BODY_MAX);
        match m.kind {
            BootKind::Challenge => {
                let _ = parse_challenge(&m.body);
            }
            BootKind::Hello => hello = BootHello::parse(&m.body).ok(),
            BootKind::Info => {
                if let Some(h) = hello {
                    let _ = h.verify(
                        Some(&key),
                        label::VERBS_BOOT_DIALER,
                        &[1; 32],
                        &h.nonce,
                        &m.body,
                    );
                }
                if let Ok(i) = Info::parse(&m.body) {
                    assert!(i.qp.psn < 1 << 24);
                    assert!(i.base.checked_add(i.region_off + i.region_len).is_some());
                }
            }
            BootKind::Ready => {}
        }
    }
    if let Ok(msg) = StreamMsg::parse(input) {
        // The region the seed's descriptor points into.
        let advertised = Info::parse(&verbs_seeds()[1][8..]).ok();
        assert!(advertised.is_some());
        for it in msg.items() {
            match it {
                Item::Data(r) => assert!(!r.is_empty() && r.end <= input.len()),
                Item::Rdv(d) => {
                    if let Some(a) = advertised.filter(|a| d.check(a).is_ok()) {
                        assert!(d.off >= a.region_off);
                        assert!(d.off + d.len <= a.region_off + a.region_len);
                    }
                }
            }
        }
    }
}

#[test]
fn fuzz_verbs_bootstrap_and_stream_parsers() {
    run(Target {
        name: "verbs",
        seeds: verbs_seeds,
        fixup: None,
        check: verbs_check,
    });
}
