//! Unit tests of the datagram transport's packet size (`datagram.rs`): two
//! transports on a simulated network ([`SimNet`]) whose devices take
//! packets of different sizes, and hand-made `Hello`s that say too little
//! or too much.

use super::*;
use crate::clock::VirtualClock;
use crate::shm::PoolParams;
use crate::transport::sim::{Impair, SimIo, SimNet};
use crate::transport::LinkRx;
use crate::wire::{control_frame, FrameKind};

const JOB: u64 = 0x5eed;

fn hello(node: u32) -> Hello {
    Hello {
        node,
        nodes: 2,
        incarnation: 1 + u64::from(node),
        job: JOB,
        caps: caps::UDP,
        fabric: 0,
    }
}

fn pool(node: u32) -> Arc<Pool> {
    let p = PoolParams {
        max_clients: 2,
        endpoints_per_client: 2,
        sub_slots: 64,
        comp_slots: 16,
        recv_slots: 64,
        block_bytes: 1 << 20,
    };
    Arc::new(Pool::create(p, node, false).unwrap())
}

fn poller() -> Poller {
    use nix::sys::epoll::{Epoll, EpollCreateFlags};
    Poller::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap(), 0)
}

/// One end: its transport, its streams, its poller.
struct End {
    t: DatagramTransport<SimIo>,
    rx: Vec<LinkRx>,
    poller: Poller,
}

/// Two transports (nodes 0 and 1) on a clean simulated network, devices of
/// `sizes[i]` bytes; `key` for both.
fn pair(sizes: [usize; 2], key: Option<[u8; 32]>) -> (SimNet, VirtualClock, Vec<End>) {
    let clock = VirtualClock::new();
    let net = SimNet::new(2, clock.clone(), Impair::clean(), 1);
    let ends = (0..2u32)
        .map(|i| {
            let poller = poller();
            let t = DatagramTransport::new(
                hello(i),
                net.io(i, sizes[i as usize]),
                pool(i),
                &poller,
                Duration::from_secs(3),
                key.map(JobKey::from_bytes),
            )
            .unwrap();
            End {
                t,
                rx: (0..2).map(|_| LinkRx::default()).collect(),
                poller,
            }
        })
        .collect();
    (net, clock, ends)
}

/// `rounds` rounds of both ends (tick, poll, flush to the peer), the network
/// delivering between them, 50 µs apart.
fn run(net: &SimNet, clock: &VirtualClock, ends: &mut [End], rounds: usize) {
    let mut freed = Vec::new();
    for _ in 0..rounds {
        let now = clock.now();
        for (i, e) in ends.iter_mut().enumerate() {
            let mut events = Vec::new();
            e.t.tick(&e.poller, now, &mut e.rx, &mut events);
            e.t.poll(now, &mut e.rx, &mut events);
            let pool = Arc::clone(&e.t.pool);
            e.t.flush(1 - i as u32, &pool, &mut freed, &mut events);
        }
        clock.advance(Duration::from_micros(50));
        net.deliver_due();
    }
}

#[test]
fn a_link_sends_packets_of_the_smaller_ends_size_and_loses_nothing() {
    let (net, clock, mut ends) = pair([9000, 1500], None);
    run(&net, &clock, &mut ends, 20);
    assert!(ends[0].t.links.up(1) && ends[1].t.links.up(0));
    assert_eq!(ends[0].t.link(1).packet, 1500);
    assert_eq!(ends[1].t.link(0).packet, 1500);
    // 200 KB from the node whose device takes 9000 to the one that takes 1500
    // (the network drops what is longer than the receiver's device): all of it
    // arrives, intact, and nothing was too long.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let frame = control_frame(FrameKind::Data, 0, &body);
    ends[0].t.push(
        1,
        Out::Bytes {
            buf: Arc::new(frame),
            pos: 0,
        },
    );
    run(&net, &clock, &mut ends, 2000);
    assert_eq!(net.stats().oversize, 0, "{:?}", net.stats());
    let (h, got) = ends[1].rx[0]
        .reader
        .next_frame()
        .unwrap()
        .expect("the frame");
    assert_eq!(h.kind, FrameKind::Data);
    assert!(got == body, "the frame arrived damaged");
    assert_eq!(ends[0].t.link(1).queued, 0);
    assert!(ends[0].t.dgram_stats().packets_tx > 200_000 / 1500);
}

#[test]
fn without_the_peers_size_the_big_end_would_black_hole_the_small_one() {
    // The same network with the big end's packets forced to its own size (as
    // before a Hello said the peer's): they are dropped when they come. The
    // simulated network stands for the interface that drops them.
    let (net, clock, mut ends) = pair([9000, 1500], None);
    run(&net, &clock, &mut ends, 20);
    ends[0].t.links[1].packet = 9000;
    let frame = control_frame(FrameKind::Data, 0, &vec![7u8; 50_000]);
    ends[0].t.push(
        1,
        Out::Bytes {
            buf: Arc::new(frame),
            pos: 0,
        },
    );
    run(&net, &clock, &mut ends, 200);
    assert!(net.stats().oversize > 0, "{:?}", net.stats());
    assert!(ends[1].rx[0].reader.next_frame().unwrap().is_none());
}

/// A `Hello` packet from node 1 to node 0 saying `max_packet`, with a MAC by
/// `key` (zeros without one), naming node 0's epoch `dst_epoch`.
fn hello_from_1(max_packet: u32, key: Option<&JobKey>, dst_epoch: u64) -> Vec<u8> {
    let h = PacketHeader {
        kind: PktKind::Hello,
        flags: FLAG_NOT_UP,
        src_node: 1,
        dst_node: 0,
        src_epoch: 0xabcd,
        dst_epoch,
        seq: 0,
        ack: Ack::default(),
    };
    let mut body = hello(1).to_bytes().to_vec();
    body.extend_from_slice(&PacketLimits { max_packet }.to_bytes());
    let mac = key.map_or([0; MAC_LEN], |k| hello_mac(k, &h, &body));
    body.extend_from_slice(&mac);
    let mut p = Vec::new();
    packet::encode(&h, &body, &mut p);
    p
}

/// Node 0's transport alone (`key`), device of 1500 bytes, and a device on
/// node 1 to play the peer by hand.
fn lone(key: Option<[u8; 32]>) -> (SimNet, VirtualClock, End, SimIo) {
    let (net, clock, mut ends) = pair([1500, 1500], key);
    ends.truncate(1);
    let fake = net.io(1, 65535);
    (net, clock, ends.pop().unwrap(), fake)
}

/// Node 0 takes what came (and answers).
fn settle(net: &SimNet, clock: &VirtualClock, e: &mut End) {
    for _ in 0..4 {
        clock.advance(Duration::from_micros(50));
        net.deliver_due();
        let mut events = Vec::new();
        e.t.poll(clock.now(), &mut e.rx, &mut events);
    }
}

/// Node 0's epoch, from its own `Hello` to node 1 (read off the fake's device).
fn epoch_of_0(net: &SimNet, clock: &VirtualClock, e: &mut End, fake: &mut SimIo) -> u64 {
    let mut events = Vec::new();
    e.t.tick(&e.poller, clock.now(), &mut e.rx, &mut events);
    clock.advance(Duration::from_micros(50));
    net.deliver_due();
    let mut epoch = None;
    while let Some(p) = fake.recv().unwrap() {
        if let Ok((h, _)) = packet::decode(&p) {
            epoch = Some(h.src_epoch);
        }
    }
    epoch.expect("node 0 said Hello")
}

#[test]
fn a_peer_saying_too_small_a_packet_is_refused_and_too_large_a_one_clamped() {
    let key = [9u8; 32];
    let (net, clock, mut e, mut fake) = lone(Some(key));
    let k = JobKey::from_bytes(key);
    let epoch = epoch_of_0(&net, &clock, &mut e, &mut fake);
    // 64 bytes (and 0, and one byte short of the least), authenticated: refused,
    // counted, no link.
    for size in [0, 64, PACKET_MIN as u32 - 1] {
        fake.send(0, &hello_from_1(size, Some(&k), epoch)).unwrap();
    }
    settle(&net, &clock, &mut e);
    assert_eq!(e.t.dgram_stats().refused_packet, 3);
    assert!(!e.t.links.up(1));
    assert_eq!(e.t.links[1].packet, 0);
    // Without a valid MAC a size is not even looked at: unauthenticated.
    fake.send(0, &hello_from_1(64, None, epoch)).unwrap();
    fake.send(
        0,
        &hello_from_1(9000, Some(&JobKey::from_bytes([1; 32])), epoch),
    )
    .unwrap();
    settle(&net, &clock, &mut e);
    assert_eq!(e.t.dgram_stats().refused_packet, 3);
    assert_eq!(e.t.dgram_stats().unauthenticated, 2);
    assert!(!e.t.links.up(1));
    // A Hello cut short before its packet limits: foreign.
    let mut short = hello_from_1(9000, Some(&k), epoch);
    let (h, body) = packet::decode(&short)
        .map(|(h, b)| (h, b.to_vec()))
        .unwrap();
    short.clear();
    packet::encode(&h, &body[..Hello::LEN + 2], &mut short);
    let foreign = e.t.dgram_stats().foreign;
    fake.send(0, &short).unwrap();
    settle(&net, &clock, &mut e);
    assert_eq!(e.t.dgram_stats().foreign, foreign + 1);
    // 4 GB (u32::MAX): the link comes up at this side's own size.
    fake.send(0, &hello_from_1(u32::MAX, Some(&k), epoch))
        .unwrap();
    settle(&net, &clock, &mut e);
    assert!(e.t.links.up(1));
    assert_eq!(e.t.link(1).packet, 1500);
}

#[test]
fn the_least_packet_a_peer_may_say_makes_a_link_that_carries_frames() {
    let (net, clock, mut e, mut fake) = lone(None);
    let epoch = epoch_of_0(&net, &clock, &mut e, &mut fake);
    fake.send(0, &hello_from_1(PACKET_MIN as u32, None, epoch))
        .unwrap();
    settle(&net, &clock, &mut e);
    assert!(e.t.links.up(1));
    assert_eq!(e.t.link(1).packet, PACKET_MIN);
    // A frame to node 1 goes out in packets of at most PACKET_MIN bytes.
    let frame = control_frame(FrameKind::Data, 0, &[5u8; 1000]);
    e.t.push(
        1,
        Out::Bytes {
            buf: Arc::new(frame),
            pos: 0,
        },
    );
    let mut freed = Vec::new();
    let mut events = Vec::new();
    let pool = Arc::clone(&e.t.pool);
    e.t.flush(1, &pool, &mut freed, &mut events);
    clock.advance(Duration::from_micros(50));
    net.deliver_due();
    let mut data = 0;
    while let Some(p) = fake.recv().unwrap() {
        assert!(p.len() <= PACKET_MIN, "a packet of {} B", p.len());
        if packet::decode(&p).is_ok_and(|(h, _)| h.kind == PktKind::Data) {
            data += 1;
        }
    }
    assert!(data > 0, "no data packet sent");
}

#[test]
fn a_peer_restarted_with_a_smaller_size_gets_a_new_link_of_that_size() {
    let (net, clock, mut ends) = pair([9000, 9000], None);
    run(&net, &clock, &mut ends, 20);
    assert_eq!(ends[0].t.link(1).packet, 9000);
    // Node 1 restarts with a device of 1500 (a new transport: new epochs, its
    // Hellos name no epoch of node 0's until node 0 answers one).
    let poller = poller();
    let t = DatagramTransport::new(
        Hello {
            incarnation: 99,
            ..hello(1)
        },
        net.io(1, 1500),
        pool(1),
        &poller,
        Duration::from_secs(3),
        None,
    )
    .unwrap();
    ends[1] = End {
        t,
        rx: (0..2).map(|_| LinkRx::default()).collect(),
        poller,
    };
    // (Node 1 says Hello every 100 ms while its link is not up.)
    run(&net, &clock, &mut ends, 4000);
    assert!(ends[0].t.links.up(1) && ends[1].t.links.up(0));
    assert_eq!(ends[0].t.link(1).packet, 1500);
    assert_eq!(ends[1].t.link(0).packet, 1500);
    let body = vec![3u8; 30_000];
    ends[0].t.push(
        1,
        Out::Bytes {
            buf: Arc::new(control_frame(FrameKind::Data, 0, &body)),
            pos: 0,
        },
    );
    run(&net, &clock, &mut ends, 500);
    assert_eq!(net.stats().oversize, 0, "{:?}", net.stats());
    let (_, got) = ends[1].rx[0]
        .reader
        .next_frame()
        .unwrap()
        .expect("the frame");
    assert!(got == body);
}
