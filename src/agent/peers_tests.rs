//! Unit tests of the peers room (`peers.rs`): the state machine and the
//! session, driven with made-up time and a link that only records.

use super::*;
use crate::transport::{Close, Inflow, LinkEvent, LinkRx, LinkView, Poller};

/// A link that only records what is queued on it.
#[derive(Default)]
struct Recorder {
    pushed: Vec<Vec<u8>>,
}

impl Transport for Recorder {
    fn name(&self, _: Option<u32>) -> &'static str {
        "recorder"
    }
    fn local_addr(&self) -> String {
        String::new()
    }
    fn on_ready(
        &mut self,
        _: u32,
        _: &Poller,
        _: u32,
        _: Instant,
        _: &mut dyn Inflow,
        _: &mut Vec<LinkEvent>,
    ) {
    }
    fn tick(&mut self, _: &Poller, _: Instant, _: &mut dyn Inflow, _: &mut Vec<LinkEvent>) {}
    fn push(&mut self, _: u32, item: Out) {
        if let Out::Bytes { buf, .. } = item {
            self.pushed.push(buf.to_vec());
        }
    }
    fn flush(&mut self, _: u32, _: &crate::shm::Pool, _: &mut Vec<u64>, _: &mut Vec<LinkEvent>) {}
    fn link(&self, _: u32) -> LinkView {
        LinkView::default()
    }
    fn close(&mut self, _: &Poller, _: u32, _: Close) -> Vec<u64> {
        Vec::new()
    }
}

const ME: u64 = 0xA;
const THEM: u64 = 0xB;

fn peer(now: Instant) -> Peer {
    Peer::new(1, "127.0.0.1:1".parse().unwrap(), 0, 4096, now)
}

fn resume(incarnation: u64, known: u64, received: u64) -> wire::Resume {
    wire::Resume {
        incarnation,
        known,
        received,
    }
}

/// A peer brought up: connected, and the peer's Resume taken.
fn up(p: &mut Peer, t: &mut Recorder, now: Instant) {
    let _ = p.connected(0, ME, now);
    let mut freed = Vec::new();
    // (Again on a peer up before: the peer knows no session, the same
    // instance: the half-open case, begun again with nothing to resend.)
    let r = p.resumed(&resume(THEM, 0, 0), ME, t, now, &mut freed);
    assert!(
        matches!(r, Ok(Resumed::Fresh) | Ok(Resumed::Carried { resent: 0 })),
        "{r:?}"
    );
}

#[test]
fn a_session_survives_a_broken_connection_and_resends_what_was_not_acked() {
    let now = Instant::now();
    let (mut p, mut t, mut freed) = (peer(now), Recorder::default(), Vec::new());
    assert_eq!(p.state(), &PeerState::Connecting);
    up(&mut p, &mut t, now);
    assert_eq!(p.state(), &PeerState::Up);
    for i in 0..3u8 {
        p.send_frame(
            &mut t,
            Retained::Bytes(Arc::new(vec![i; 10])),
            now,
            &mut freed,
        );
    }
    assert_eq!(p.unacked_bytes(), 30);
    p.acked(1, now, &mut freed).unwrap();
    assert_eq!(p.unacked_bytes(), 20);
    assert!(p.disconnected("test".into(), now, now, &mut freed));
    assert!(matches!(p.state(), PeerState::Disconnected(..)));
    // A second report of the same break changes nothing.
    assert!(!p.disconnected("again".into(), now, now, &mut freed));
    t.pushed.clear();
    let _ = p.connected(0, ME, now);
    assert_eq!(p.state(), &PeerState::Resuming);
    // The peer got our first two frames.
    let r = p.resumed(&resume(THEM, ME, 2), ME, &mut t, now, &mut freed);
    assert_eq!(r, Ok(Resumed::Carried { resent: 1 }));
    assert_eq!(t.pushed, vec![vec![2u8; 10]]);
    assert_eq!(p.unacked_bytes(), 10);
    assert_eq!(p.counters.resumes, 1);
    assert!(freed.is_empty());
}

/// Two connections made at once: this side took the peer's `Resume` on the
/// first (up, frames sent), the peer replaced that connection before reading
/// ours, so its `Resume` on the second knows no session with us. Nothing is
/// lost: a new session, our frames sent again from its start.
#[test]
fn a_session_the_peer_never_took_up_begins_again_with_its_frames() {
    let now = Instant::now();
    let (mut p, mut t, mut freed) = (peer(now), Recorder::default(), Vec::new());
    up(&mut p, &mut t, now);
    for i in 0..2u8 {
        p.send_frame(
            &mut t,
            Retained::Bytes(Arc::new(vec![i; 4])),
            now,
            &mut freed,
        );
    }
    assert!(p.disconnected("replaced".into(), now, now, &mut freed));
    t.pushed.clear();
    let _ = p.connected(0, ME, now);
    let r = resume(THEM, 0, 0);
    assert!(!p.resumable(&r, ME) && p.half_open(&r));
    assert_eq!(
        p.resumed(&r, ME, &mut t, now, &mut freed),
        Ok(Resumed::Carried { resent: 2 })
    );
    assert_eq!(t.pushed, vec![vec![0u8; 4], vec![1u8; 4]]);
    assert_eq!(p.unacked_bytes(), 8);
    assert_eq!(p.state(), &PeerState::Up);
    // The peer acknowledges them in the new session's numbering.
    p.acked(2, now, &mut freed).unwrap();
    assert_eq!(p.unacked_bytes(), 0);
    // A peer that handled frames of ours, or another instance, is not that.
    assert!(!p.half_open(&resume(THEM, 0, 1)));
    assert!(!p.half_open(&resume(THEM + 1, 0, 0)));
}

#[test]
fn a_restarted_peer_gets_a_fresh_session() {
    let now = Instant::now();
    let (mut p, mut t, mut freed) = (peer(now), Recorder::default(), Vec::new());
    up(&mut p, &mut t, now);
    assert!(p.disconnected("x".into(), now, now, &mut freed));
    let _ = p.connected(0, ME, now);
    let r = resume(THEM + 1, 0, 0);
    assert!(!p.resumable(&r, ME));
    assert_eq!(
        p.resumed(&r, ME, &mut t, now, &mut freed),
        Ok(Resumed::Fresh)
    );
    assert_eq!(p.session.as_ref().unwrap().peer_inc, THEM + 1);
}

#[test]
fn an_ack_beyond_what_was_sent_is_refused_and_counted() {
    let now = Instant::now();
    let (mut p, mut t, mut freed) = (peer(now), Recorder::default(), Vec::new());
    up(&mut p, &mut t, now);
    p.send_frame(
        &mut t,
        Retained::Bytes(Arc::new(vec![1; 4])),
        now,
        &mut freed,
    );
    assert!(p.acked(5, now, &mut freed).is_err());
    assert_eq!(p.counters.malformed, 1);
}

#[test]
fn a_loss_returns_every_block_once_and_fails_waiting_sends() {
    let now = Instant::now();
    let (mut p, mut t, mut freed) = (peer(now), Recorder::default(), Vec::new());
    up(&mut p, &mut t, now);
    let client = Owner::Client { slot: 3, gen: 1 };
    let chunk = |free_after| Retained::Chunk {
        hdr: vec![0; 8],
        off: 4096,
        len: 100,
        pad: 4,
        free_after,
    };
    p.send_frame(&mut t, chunk(Some(4096)), now, &mut freed);
    let wire = p.acks.insert(client, 7, 99);
    assert_ne!(wire, 99);
    p.large.push_back(LargeSend {
        block: 8192,
        total: 10,
        sent: 0,
        src_ep: 7,
        dst_ep: 8,
        cookie: 5,
        flags: 0,
        client,
    });
    // The link gave back block 4096 already when it was closed.
    let loss = p.lose("test", vec![4096], now).unwrap();
    assert_eq!(loss.blocks, vec![4096, 8192]);
    let mut cookies: Vec<u64> = loss.failed.iter().map(|f| f.cookie).collect();
    cookies.sort();
    assert_eq!(cookies, vec![5, 99]);
    assert_eq!(loss.unblocked, vec![client]);
    assert_eq!(p.counters.losses, 1);
    assert!(matches!(p.state(), PeerState::Lost(_)));
    assert_eq!(p.lose("again", vec![8], now).err(), Some(vec![8]));
    assert!(freed.is_empty());
}

#[test]
fn acks_are_owed_every_32_frames_and_on_the_tick() {
    let now = Instant::now();
    let (mut p, mut t) = (peer(now), Recorder::default());
    up(&mut p, &mut t, now);
    let due: Vec<u64> = (0..70).filter_map(|_| p.frame_handled()).collect();
    assert_eq!(due, vec![32, 64]);
    assert_eq!(p.ack_due(), Some(70));
    assert_eq!(p.ack_due(), None);
}

#[test]
fn waiting_states_time_out() {
    let now = Instant::now();
    let timing = Timing {
        heartbeat: Duration::from_millis(100),
        peer_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(5),
    };
    let (mut p, mut t, mut freed) = (peer(now), Recorder::default(), Vec::new());
    assert_eq!(
        p.tick(&timing, now + Duration::from_secs(4)),
        TickOutcome::default()
    );
    assert!(p.tick(&timing, now + Duration::from_secs(6)).lose.is_some());
    up(&mut p, &mut t, now);
    assert!(p
        .silent(&timing, now, now + Duration::from_millis(500))
        .is_none());
    assert!(p
        .silent(&timing, now, now + Duration::from_secs(2))
        .is_some());
    assert!(p.disconnected("x".into(), now, now, &mut freed));
    assert_eq!(
        p.tick(&timing, now + Duration::from_millis(900)),
        TickOutcome::default()
    );
    let lost = p.tick(&timing, now + Duration::from_secs(2)).lose.unwrap();
    assert!(lost.contains("not restored"), "{lost}");
    // A link that broke after the peer had been silent a while: the wait
    // counts from the peer's last word, not from the break.
    let later = now + Duration::from_secs(10);
    up(&mut p, &mut t, later);
    let heard = later - Duration::from_millis(900);
    assert!(p.disconnected("timed out".into(), heard, later, &mut freed));
    assert!(p
        .tick(&timing, later + Duration::from_millis(200))
        .lose
        .is_some());
}

/// The agent's own state for a peer it never talked to (the peer, the
/// pointer to its incoming stream): inline fields only; the session, the
/// link state and the stream come with the first link. With the
/// transport's share (tcp: about 100 bytes, udp: a pointer) and the node
/// table's entry it stays far under the 1 KiB per idle peer that
/// docs/scaling.md promises (4,096 simulated agents in one process hold
/// 16.7 M of these); a big field added inline fails here first.
#[test]
fn a_peer_never_talked_to_costs_little() {
    let inline = std::mem::size_of::<Peer>() + std::mem::size_of::<Option<Box<LinkRx>>>();
    println!(
        "Peer {} B, PeerLink {} B",
        std::mem::size_of::<Peer>(),
        std::mem::size_of::<PeerLink>()
    );
    assert!(
        inline <= 136,
        "Peer + its stream's pointer = {inline} bytes"
    );
    let mut p = peer(Instant::now());
    assert!(p.session.is_none());
    // Reading makes nothing; the first write makes the link state.
    assert_eq!(p.batch.records(), 0);
    assert!(p.batch_since.is_none() && p.large.is_empty() && p.counters.msgs_tx == 0);
    assert!(!p.has_link_state(), "reading a peer made its link state");
    p.counters.msgs_tx += 1;
    assert!(p.has_link_state());
    assert_eq!(p.counters.msgs_tx, 1);
    assert_eq!(
        peer(Instant::now()).counters.msgs_tx,
        0,
        "the empty link state was written"
    );
}

/// The poll round walks only the peers ever written: a peer leaves idle only
/// by being written, so every peer not idle is on the list, each once; peers
/// connecting from the start (every link wanted) are on it from the start.
#[test]
fn the_peers_walked_are_those_written_each_once() {
    let now = Instant::now();
    let addr = "127.0.0.1:1".parse().unwrap();
    let make = |on_demand: bool| {
        Peers::new(
            (0..200u32)
                .map(|j| {
                    let mut p = Peer::new(j, addr, 0, 4096, now);
                    if on_demand && j != 0 {
                        p.idle(now);
                    }
                    p
                })
                .collect(),
        )
    };
    let mut ps = make(true);
    assert_eq!(ps.touched(), 0);
    // Reading walks nothing new.
    assert!(ps
        .iter()
        .all(|p| !p.state().connected() && p.batch_since.is_none()));
    assert_eq!(ps.touched(), 0);
    assert!(ps[130].wanted(now));
    ps[130].counters.msgs_tx += 1;
    ps[7].wanted(now);
    assert_eq!(ps.touched(), 2);
    assert_eq!((ps.touched_at(0), ps.touched_at(1)), (130, 7));
    assert_eq!(ps.active().map(|p| p.node).collect::<Vec<_>>(), [130, 7]);
    assert!(ps
        .iter()
        .filter(|p| *p.state() != PeerState::Idle && *p.state() != PeerState::Local)
        .all(|p| ps.active().any(|a| a.node == p.node)));
    // Every link wanted from the start: all but this node's own.
    assert_eq!(make(false).touched(), 199);
}

/// The idle watch of an up link: traffic (a `Data` frame either way) starts
/// the idle time again, heartbeats do not count (nothing here counts them),
/// anything in flight keeps the link open, and a `Bye` unanswered for the
/// wait closes it.
#[test]
fn an_idle_link_says_bye_after_the_idle_time_and_only_when_quiet() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let (idle, wait) = (ms(300), ms(400));
    let (mut p, mut t, mut freed) = (peer(t0), Recorder::default(), Vec::new());
    // Not up: never idle.
    assert_eq!(p.idle_tick(idle, wait, true, t0 + ms(1000)), IdleStep::Keep);
    up(&mut p, &mut t, t0);
    // 0: never.
    assert_eq!(
        p.idle_tick(ms(0), wait, true, t0 + ms(5000)),
        IdleStep::Keep
    );
    let t1 = t0 + ms(5000);
    assert_eq!(p.idle_tick(idle, wait, true, t1), IdleStep::Keep);
    // A frame sent and not acknowledged: not quiet however long it waits.
    p.send_frame(
        &mut t,
        Retained::Bytes(Arc::new(vec![0; 64])),
        t1,
        &mut freed,
    );
    assert_eq!(p.idle_tick(idle, wait, true, t1 + ms(10)), IdleStep::Keep);
    assert_eq!(p.idle_tick(idle, wait, true, t1 + ms(900)), IdleStep::Keep);
    // Acknowledged at +900: the idle time runs from the last frame seen
    // (+10), so it is over already.
    p.acked(1, t1 + ms(900), &mut freed).unwrap();
    assert!(p.quiet());
    // Something queued on the link or unread in its stream: not yet.
    assert_eq!(p.idle_tick(idle, wait, false, t1 + ms(905)), IdleStep::Keep);
    // A frame received and not acknowledged yet: not quiet.
    let t2 = t1 + ms(1000);
    let _ = p.frame_handled();
    assert!(!p.quiet());
    assert_eq!(p.idle_tick(idle, wait, true, t2), IdleStep::Keep);
    assert_eq!(p.ack_due(), Some(1));
    assert!(p.quiet());
    // The frame received at t2 started the idle time again.
    assert_eq!(p.idle_tick(idle, wait, true, t2 + ms(299)), IdleStep::Keep);
    assert_eq!(p.idle_tick(idle, wait, true, t2 + ms(300)), IdleStep::Bye);
    assert_eq!(p.idle.bye_sent, Some(t2 + ms(300)));
    // Once said: closed when the wait is over (or earlier, by the peer's Bye).
    assert_eq!(p.idle_tick(idle, wait, true, t2 + ms(699)), IdleStep::Keep);
    assert_eq!(p.idle_tick(idle, wait, true, t2 + ms(700)), IdleStep::Close);
    // Closed: idle, not lost; the session kept; nothing waits for a link.
    assert!(!p.closed_idle(t2 + ms(700), &mut freed));
    assert_eq!(p.state(), &PeerState::Idle);
    assert_eq!(p.state_name(), "closed");
    assert!(p.session.is_some());
    assert_eq!(p.counters.idle_closes, 1);
    assert_eq!(p.counters.losses, 0);
    assert!(freed.is_empty());
    // A closed peer is wanted again by the next message, and its session
    // carries on (the peer's Resume knows it).
    assert!(p.wanted(t2 + ms(800)));
    let _ = p.connected(0, ME, t2 + ms(810));
    let r = p.resumed(&resume(THEM, ME, 1), ME, &mut t, t2 + ms(811), &mut freed);
    assert_eq!(r, Ok(Resumed::Carried { resent: 0 }));
    assert_eq!(p.idle.bye_sent, None);
    assert_eq!(p.idle_tick(idle, wait, true, t2 + ms(812)), IdleStep::Keep);
}

/// A close that crossed a frame (sent after our `Bye`, or not acknowledged
/// before the link went): the peer goes idle, and the caller is told to
/// make the link again at once; the frame is kept and sent again on the
/// next link, which the peer's `Resume` count tells whether it needs.
#[test]
fn a_frame_crossing_an_idle_close_waits_for_the_next_link_and_goes_once() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let (mut p, mut t, mut freed) = (peer(t0), Recorder::default(), Vec::new());
    up(&mut p, &mut t, t0);
    assert_eq!(
        p.idle_tick(ms(300), ms(400), true, t0 + ms(300)),
        IdleStep::Bye
    );
    // A message after our Bye.
    p.send_frame(
        &mut t,
        Retained::Bytes(Arc::new(vec![7; 64])),
        t0 + ms(301),
        &mut freed,
    );
    assert!(
        p.closed_idle(t0 + ms(302), &mut freed),
        "a frame waits: link again"
    );
    assert_eq!(p.state(), &PeerState::Idle);
    assert_eq!(p.unacked_bytes(), 64);
    t.pushed.clear();
    assert!(p.wanted(t0 + ms(303)));
    // The peer never read it (it closed on our Bye): sent again once.
    let _ = p.connected(0, ME, t0 + ms(304));
    let r = p.resumed(&resume(THEM, ME, 0), ME, &mut t, t0 + ms(305), &mut freed);
    assert_eq!(r, Ok(Resumed::Carried { resent: 1 }));
    assert_eq!(t.pushed, vec![vec![7; 64]]);
    // Had the peer read it (its Resume says so), it would not go again.
    p.acked(1, t0 + ms(306), &mut freed).unwrap();
    assert_eq!(p.unacked_bytes(), 0);
    assert!(p.quiet());
}

#[test]
fn a_broken_connection_forgets_the_chunks_steered_ahead_and_the_messages_they_began() {
    let now = Instant::now();
    let (mut p, mut t, mut freed) = (peer(now), Recorder::default(), Vec::new());
    up(&mut p, &mut t, now);
    let large = |total: u64, got: u64, next: u64, block: u64| RxLarge {
        src_ep: 1,
        dst_ep: 2,
        cookie: 3,
        total,
        got,
        next,
        block: Some(block),
        flags: 0,
    };
    let chunk = |offset: u64| crate::wire::RecordHeader {
        kind: crate::wire::RecordKind::Msg,
        flags: 0,
        status: 0,
        src_ep: 1,
        dst_ep: 2,
        chunk_len: 256 << 10,
        total: 1 << 20,
        offset,
        cookie: 3,
    };
    // A message with one chunk handled and its next three steered (the last
    // placed), and the next message begun by a steered chunk.
    p.rx_large
        .push_back(large(1 << 20, 256 << 10, 1 << 20, 4096));
    p.rx_large.push_back(large(1 << 20, 0, 256 << 10, 1 << 22));
    let ticket = crate::transport::LinkRx::default().steer_ticket();
    p.rx_steered.extend(
        [
            chunk(256 << 10),
            chunk(512 << 10),
            chunk(768 << 10),
            chunk(0),
        ]
        .map(|h| (h, ticket)),
    );
    assert!(p.disconnected("broken".into(), now, now, &mut freed));
    assert!(p.rx_steered.is_empty());
    assert_eq!(
        freed,
        vec![1 << 22],
        "the message begun ahead goes with its block"
    );
    assert_eq!(p.rx_large.len(), 1);
    let r = &p.rx_large[0];
    assert_eq!(
        (r.got, r.next, r.block),
        (256 << 10, 256 << 10, Some(4096)),
        "the message in progress continues after its handled chunk"
    );
}
