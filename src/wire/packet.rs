//! Packets of the datagram transports (UDP, DPDK): the unit a lossy network
//! moves. A peer's frame stream is cut into packets, numbered and
//! acknowledged by [`super::reliable`], and put back together in order.
//!
//! ## Header (64 bytes, little-endian)
//! | bytes | field |
//! | --- | --- |
//! | 0..2 | magic `"WY"` |
//! | 2 | packet version ([`PKT_VERSION`]) |
//! | 3 | kind ([`PktKind`]) |
//! | 4..8 | source node |
//! | 8..12 | destination node |
//! | 12..14 | payload length |
//! | 14 | flags ([`FLAG_NOT_UP`], [`FLAG_DSACK`]) |
//! | 15 | reserved, zero |
//! | 16..24 | source link epoch (unique per link instance of the sender) |
//! | 24..32 | destination link epoch as the sender knows it (0: unknown) |
//! | 32..40 | sequence number (`Data`); on an `Ack` or `Probe` with [`FLAG_DSACK`], the number of a packet that arrived twice ([`Ack::dsack`]), else 0 |
//! | 40..48 | ack: every sequence number below this arrived |
//! | 48..56 | ack: selective bitmap after it |
//! | 56..60 | ack: window offered |
//! | 60..64 | CRC-32C of header bytes 0..60 and the payload |
//!
//! The payload of an `Ack` or `Probe` is empty, or the selective bitmap
//! beyond the header's 64 packets ([`SackMore`], 3 x 8 bytes,
//! little-endian): sent when anything beyond them arrived.
//!
//! The checksum covers the payload end to end because veth pairs and some
//! NICs do not: a corrupted packet is counted and dropped, and the sender's
//! retransmission repairs it like a lost one.

use super::bytes::{Fields, FieldsMut};
use super::reliable::{Ack, SackMore, SACK_MORE};

/// Packet magic.
pub const PKT_MAGIC: [u8; 2] = *b"WY";
/// Packet format version (2: acks sent alone may carry a D-SACK; 3: a `Hello`
/// says the largest packet its sender receives, [`crate::wire::PacketLimits`];
/// 4: acks sent alone may carry the selective bitmap beyond 64 packets).
pub const PKT_VERSION: u8 = 4;

/// Bytes of an ack's payload that carries [`SackMore`].
pub const SACK_MORE_BYTES: usize = 8 * SACK_MORE;

/// The payload of an ack sent alone that carries `more`.
pub fn sack_more_bytes(more: &SackMore) -> [u8; SACK_MORE_BYTES] {
    let mut b = [0u8; SACK_MORE_BYTES];
    for (w, c) in more.iter().zip(b.chunks_exact_mut(8)) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    b
}

/// The bitmap beyond 64 packets an ack's payload carries, if it does (the
/// payload of a packet [`decode`] accepted as an `Ack` or `Probe`).
pub fn sack_more(payload: &[u8]) -> Option<SackMore> {
    (payload.len() == SACK_MORE_BYTES).then(|| {
        let mut m = [0u64; SACK_MORE];
        for (w, c) in m.iter_mut().zip(payload.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            *w = u64::from_le_bytes(a);
        }
        m
    })
}
/// Bytes of a packet header.
pub const PKT_HEADER: usize = 64;
/// The smallest packet, header included, a datagram link runs on: a device
/// (`packet_bytes`, `dpdk_mtu`, an interface's MTU) or a peer's `Hello` that
/// says less is refused. Every device must receive a whole `Hello` packet
/// (132 B with its MAC; checked where it is built), whatever its links' size.
pub const PACKET_MIN: usize = PKT_HEADER + 192;
/// Flag: the sender is not up yet and wants a `Hello` back.
pub const FLAG_NOT_UP: u8 = 1;
/// Flag (`Ack` and `Probe` only): the sequence number field holds a D-SACK,
/// a packet the sender of this ack received twice ([`Ack::dsack`]). Set and
/// read by [`encode`] and [`decode`] from [`Ack::dsack`]; `PacketHeader::flags`
/// never shows it.
pub const FLAG_DSACK: u8 = 2;

/// Kinds of packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PktKind {
    /// A numbered piece of the frame stream (carries an ack too).
    Data = 1,
    /// An acknowledgement alone.
    Ack = 2,
    /// An acknowledgement alone that asks for one back (window probe).
    Probe = 3,
    /// Link set-up: "this is my link epoch; I know yours as ...".
    Hello = 4,
}

/// Why a packet was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than a header, or than its header says.
    #[error("truncated packet ({0} bytes)")]
    Truncated(usize),
    /// Not ours.
    #[error("not a wyvern packet")]
    Magic,
    /// Another format version.
    #[error("packet version {0}, this agent speaks {PKT_VERSION}")]
    Version(u8),
    /// Unknown kind.
    #[error("unknown packet kind {0}")]
    Kind(u8),
    /// The checksum does not match: damaged on the way.
    #[error("checksum mismatch (damaged packet)")]
    Checksum,
    /// A field is out of range.
    #[error("malformed packet: {0}")]
    Field(&'static str),
}

/// A validated packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    /// Kind.
    pub kind: PktKind,
    /// Flags.
    pub flags: u8,
    /// Sending node.
    pub src_node: u32,
    /// Receiving node.
    pub dst_node: u32,
    /// The sender's link epoch.
    pub src_epoch: u64,
    /// The receiver's link epoch as the sender knows it.
    pub dst_epoch: u64,
    /// Sequence number (`Data` only; 0 on other kinds).
    pub seq: u64,
    /// Acknowledgement of the reverse direction.
    pub ack: Ack,
}

/// Append one packet (header and payload) to `out`. A D-SACK in `h.ack` is
/// sent only on `Ack` and `Probe` packets (in the sequence number field);
/// other kinds have no room for it and drop it.
pub fn encode(h: &PacketHeader, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + PKT_HEADER + payload.len(), 0);
    encode_into(h, payload, &mut out[start..]);
}

/// Write one packet (header and payload) into `out`, which must be exactly
/// [`PKT_HEADER`] + `payload.len()` bytes: a device's own buffer (an mbuf's
/// data room), so that the packet is built where it is sent from. As
/// [`encode`] otherwise.
///
/// # Panics
/// If `out` has another length, or the payload does not fit a packet.
pub fn encode_into(h: &PacketHeader, payload: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), PKT_HEADER + payload.len(), "packet buffer size");
    let (hdr, body) = out.split_at_mut(PKT_HEADER);
    body.copy_from_slice(payload);
    encode_header(
        h,
        body,
        hdr.try_into().expect("split at the header's length"),
    );
}

/// Write only the header of a packet whose payload is `payload` (its length and
/// CRC-32C are in the header): for a device that sends the payload from where it
/// is, in a segment of its own after the header. The header and `payload` side
/// by side are exactly what [`encode_into`] writes.
///
/// # Panics
/// If the payload does not fit a packet.
pub fn encode_header(h: &PacketHeader, payload: &[u8], hdr: &mut [u8; PKT_HEADER]) {
    let len = u16::try_from(payload.len()).expect("payload fits a packet");
    let dsack = h
        .ack
        .dsack
        .filter(|_| matches!(h.kind, PktKind::Ack | PktKind::Probe));
    debug_assert!(
        dsack.is_some() == h.ack.dsack.is_some(),
        "a D-SACK on a {:?} packet",
        h.kind
    );
    let flags = (h.flags & !FLAG_DSACK) | if dsack.is_some() { FLAG_DSACK } else { 0 };
    let seq = dsack.unwrap_or(h.seq);
    let mut w = FieldsMut::<PKT_HEADER>::new(hdr).expect("a header's length");
    w.put::<0, 2>(PKT_MAGIC);
    w.put_u8::<2>(PKT_VERSION);
    w.put_u8::<3>(h.kind as u8);
    w.put_u32::<4>(h.src_node);
    w.put_u32::<8>(h.dst_node);
    w.put_u16::<12>(len);
    w.put_u8::<14>(flags);
    w.put_u8::<15>(0);
    w.put_u64::<16>(h.src_epoch);
    w.put_u64::<24>(h.dst_epoch);
    w.put_u64::<32>(seq);
    w.put_u64::<40>(h.ack.next);
    w.put_u64::<48>(h.ack.sack);
    w.put_u32::<56>(h.ack.window);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr[..60]), payload);
    FieldsMut::<PKT_HEADER>::new(hdr)
        .expect("a header's length")
        .put_u32::<60>(crc);
}

fn checksum(pkt: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&pkt[..60]), &pkt[64..])
}

/// Parse and check one packet; returns its header and payload.
pub fn decode(b: &[u8]) -> Result<(PacketHeader, &[u8]), PacketError> {
    let f = Fields::<PKT_HEADER>::new(b).ok_or(PacketError::Truncated(b.len()))?;
    if f.array::<0, 2>() != PKT_MAGIC {
        return Err(PacketError::Magic);
    }
    let version = f.u8::<2>();
    if version != PKT_VERSION {
        return Err(PacketError::Version(version));
    }
    let kind = match f.u8::<3>() {
        1 => PktKind::Data,
        2 => PktKind::Ack,
        3 => PktKind::Probe,
        4 => PktKind::Hello,
        k => return Err(PacketError::Kind(k)),
    };
    let len = f.u16::<12>() as usize;
    // Ethernet pads short frames: more bytes than the header says is fine.
    if b.len() < PKT_HEADER + len {
        return Err(PacketError::Truncated(b.len()));
    }
    let pkt = &b[..PKT_HEADER + len];
    if checksum(pkt) != f.u32::<60>() {
        return Err(PacketError::Checksum);
    }
    let flags = f.u8::<14>();
    if flags & !(FLAG_NOT_UP | FLAG_DSACK) != 0 || f.u8::<15>() != 0 {
        return Err(PacketError::Field("unknown flags"));
    }
    let ack_alone = matches!(kind, PktKind::Ack | PktKind::Probe);
    if ack_alone && len != 0 && len != SACK_MORE_BYTES {
        return Err(PacketError::Field("payload on an ack"));
    }
    let dsack = flags & FLAG_DSACK != 0;
    if dsack && !ack_alone {
        return Err(PacketError::Field("D-SACK on a packet that is not an ack"));
    }
    let seq = f.u64::<32>();
    let h = PacketHeader {
        kind,
        flags: flags & !FLAG_DSACK,
        src_node: f.u32::<4>(),
        dst_node: f.u32::<8>(),
        src_epoch: f.u64::<16>(),
        dst_epoch: f.u64::<24>(),
        seq: if dsack { 0 } else { seq },
        ack: Ack {
            next: f.u64::<40>(),
            sack: f.u64::<48>(),
            window: f.u32::<56>(),
            dsack: dsack.then_some(seq),
        },
    };
    Ok((h, &pkt[PKT_HEADER..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> PacketHeader {
        PacketHeader {
            kind: PktKind::Data,
            flags: 0,
            src_node: 3,
            dst_node: 1,
            src_epoch: 77,
            dst_epoch: 99,
            seq: 12345,
            ack: Ack {
                next: 5,
                sack: 0b1010,
                window: 64,
                dsack: None,
            },
        }
    }

    #[test]
    fn round_trip_and_padding() {
        let mut out = Vec::new();
        encode(&header(), b"payload", &mut out);
        assert_eq!(out.len(), PKT_HEADER + 7);
        let (h, p) = decode(&out).unwrap();
        assert_eq!(h, header());
        assert_eq!(p, b"payload");
        // Ethernet minimum-size padding after the packet is ignored.
        out.extend_from_slice(&[0; 20]);
        assert_eq!(decode(&out).unwrap().1, b"payload");
    }

    #[test]
    fn encode_into_a_buffer_matches_encode() {
        let mut v = vec![0xee; 3];
        encode(&header(), b"payload", &mut v);
        let mut b = vec![0xcc; PKT_HEADER + 7];
        encode_into(&header(), b"payload", &mut b);
        assert_eq!(&v[..3], &[0xee; 3]);
        assert_eq!(&v[3..], &b[..]);
    }

    #[test]
    fn a_header_written_apart_from_its_payload_matches_encode_into() {
        let payload: Vec<u8> = (0..1500u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut whole = vec![0xcc; PKT_HEADER + payload.len()];
        encode_into(&header(), &payload, &mut whole);
        // A header buffer first filled with a poison byte: a field never written shows.
        let mut hdr = [0x5a; PKT_HEADER];
        encode_header(&header(), &payload, &mut hdr);
        assert_eq!(&whole[..PKT_HEADER], &hdr[..]);
        let mut joined = hdr.to_vec();
        joined.extend_from_slice(&payload);
        let (h, p) = decode(&joined).unwrap();
        assert_eq!((h, p), (header(), &payload[..]));
    }

    #[test]
    fn a_dsack_travels_on_acks_alone() {
        for kind in [PktKind::Ack, PktKind::Probe] {
            let h = PacketHeader {
                kind,
                seq: 0,
                ack: Ack {
                    dsack: Some(41),
                    ..header().ack
                },
                ..header()
            };
            let mut out = Vec::new();
            encode(&h, &[], &mut out);
            assert_eq!(out[14], FLAG_DSACK);
            assert_eq!(Fields::<PKT_HEADER>::new(&out).unwrap().u64::<32>(), 41);
            assert_eq!(decode(&out).unwrap().0, h);
        }
        // A data packet claiming one is malformed (its field is its own number).
        let mut out = Vec::new();
        encode(&header(), b"x", &mut out);
        out[14] = FLAG_DSACK;
        let crc = checksum(&out);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&out), Err(PacketError::Field(_))));
    }

    #[test]
    fn an_ack_alone_carries_the_bitmap_beyond_64_packets_or_nothing() {
        let more = [1u64, 1 << 63, 0x00ff_00ff_00ff_00ff];
        let h = PacketHeader {
            kind: PktKind::Ack,
            seq: 0,
            ..header()
        };
        let mut out = Vec::new();
        encode(&h, &sack_more_bytes(&more), &mut out);
        let (got, payload) = decode(&out).unwrap();
        assert_eq!(got, h);
        assert_eq!(sack_more(payload), Some(more));
        let mut out = Vec::new();
        encode(&h, &[], &mut out);
        assert_eq!(sack_more(decode(&out).unwrap().1), None);
        // Any other payload on an ack is malformed.
        for n in [1, SACK_MORE_BYTES - 1, SACK_MORE_BYTES + 8] {
            let mut out = Vec::new();
            encode(&h, &vec![0; n], &mut out);
            assert!(
                matches!(decode(&out), Err(PacketError::Field(_))),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let mut out = Vec::new();
        encode(&header(), &[0x5a; 100], &mut out);
        for bit in 0..out.len() * 8 {
            let mut b = out.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&b).is_err(), "bit {bit} flipped went unnoticed");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        /// Every kind, flag and field, a D-SACK on the kinds that carry one:
        /// what is encoded decodes to the same header and payload.
        #[test]
        fn every_kind_round_trips(kind in 1u8..=4, not_up in any::<bool>(), src in any::<u32>(), dst in any::<u32>(),
                                  src_epoch in any::<u64>(), dst_epoch in any::<u64>(), seq in any::<u64>(),
                                  next in any::<u64>(), sack in any::<u64>(), window in any::<u32>(),
                                  dsack in proptest::option::of(any::<u64>()),
                                  payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let kind = match kind { 1 => PktKind::Data, 2 => PktKind::Ack, 3 => PktKind::Probe, _ => PktKind::Hello };
            let alone = matches!(kind, PktKind::Ack | PktKind::Probe);
            let h = PacketHeader {
                kind,
                flags: if not_up { FLAG_NOT_UP } else { 0 },
                src_node: src,
                dst_node: dst,
                src_epoch,
                dst_epoch,
                seq: if alone { 0 } else { seq },
                ack: Ack { next, sack, window, dsack: dsack.filter(|_| alone) },
            };
            let payload = if alone { &[][..] } else { &payload[..] };
            let mut out = Vec::new();
            encode(&h, payload, &mut out);
            let (g, p) = decode(&out).unwrap();
            prop_assert_eq!(g, h);
            prop_assert_eq!(p, payload);
        }

        /// One byte changed anywhere: refused, never read as another packet.
        #[test]
        fn any_changed_byte_is_refused(payload in proptest::collection::vec(any::<u8>(), 0..200),
                                       at in any::<usize>(), to in 1u8..=255) {
            let mut out = Vec::new();
            encode(&header(), &payload, &mut out);
            let at = at % out.len();
            out[at] ^= to;
            prop_assert!(decode(&out).is_err());
        }

        #[test]
        fn any_packet_round_trips(src in any::<u32>(), seq in any::<u64>(), next in any::<u64>(),
                                  sack in any::<u64>(), window in any::<u32>(),
                                  payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let h = PacketHeader { src_node: src, seq, ack: Ack { next, sack, window, dsack: None }, ..header() };
            let mut out = Vec::new();
            encode(&h, &payload, &mut out);
            let (g, p) = decode(&out).unwrap();
            prop_assert_eq!(g, h);
            prop_assert_eq!(p, &payload[..]);
        }
    }
}
