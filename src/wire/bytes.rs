//! Integers in fixed byte layouts: the one place the wire formats (frames,
//! records, packets, the verbs SEND and bootstrap) and the ring records of
//! `proto` turn bytes into integers and back. Little-endian everywhere except
//! the Ethernet header's EtherType (big-endian, network order).
//!
//! [`Fields`] is a view of a layout of `N` bytes, made once from a slice whose
//! length it checks ([`Fields::new`] is `None` for fewer than `N` bytes, so a
//! parser turns a short input into its own error there). Each field names its
//! offset as a constant (`f.u32::<8>()`) and an offset past the layout's end
//! does not compile (a `const` assertion, checked when the read is
//! instantiated), so no field read can panic on any input. [`FieldsMut`]
//! writes the same way into an encoder's buffer. A layout at a run-time offset
//! (an item inside a verbs SEND) is a view of the slice from that offset.

/// A read-only view of the first `N` bytes of a slice (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields<'a, const N: usize>(&'a [u8; N]);

impl<'a, const N: usize> Fields<'a, N> {
    /// The first `N` bytes of `b`; `None` when `b` is shorter.
    pub(crate) fn new(b: &'a [u8]) -> Option<Self> {
        b.first_chunk::<N>().map(Fields)
    }

    /// The byte at `AT`.
    pub(crate) fn u8<const AT: usize>(&self) -> u8 {
        const { assert!(AT < N, "field past the end of its layout") };
        self.0[AT]
    }

    /// The little-endian `u16` at `AT`.
    pub(crate) fn u16<const AT: usize>(&self) -> u16 {
        u16::from_le_bytes(self.array::<AT, 2>())
    }

    /// The big-endian (network order) `u16` at `AT` (the EtherType: dpdk only).
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn be_u16<const AT: usize>(&self) -> u16 {
        u16::from_be_bytes(self.array::<AT, 2>())
    }

    /// The little-endian `u32` at `AT`.
    pub(crate) fn u32<const AT: usize>(&self) -> u32 {
        u32::from_le_bytes(self.array::<AT, 4>())
    }

    /// The little-endian `u64` at `AT`.
    pub(crate) fn u64<const AT: usize>(&self) -> u64 {
        u64::from_le_bytes(self.array::<AT, 8>())
    }

    /// The `LEN` bytes at `AT`.
    pub(crate) fn array<const AT: usize, const LEN: usize>(&self) -> [u8; LEN] {
        const { assert!(AT + LEN <= N, "field past the end of its layout") };
        let mut a = [0u8; LEN];
        a.copy_from_slice(&self.0[AT..AT + LEN]);
        a
    }
}

/// A writable view of the first `N` bytes of a buffer (see the module docs).
#[derive(Debug)]
pub(crate) struct FieldsMut<'a, const N: usize>(&'a mut [u8; N]);

impl<'a, const N: usize> FieldsMut<'a, N> {
    /// The first `N` bytes of `b`; `None` when `b` is shorter.
    pub(crate) fn new(b: &'a mut [u8]) -> Option<Self> {
        b.first_chunk_mut::<N>().map(FieldsMut)
    }

    /// A whole array (an encoder's own header).
    pub(crate) fn of(b: &'a mut [u8; N]) -> Self {
        FieldsMut(b)
    }

    /// Set the byte at `AT`.
    pub(crate) fn put_u8<const AT: usize>(&mut self, v: u8) {
        const { assert!(AT < N, "field past the end of its layout") };
        self.0[AT] = v;
    }

    /// Write `v` little-endian at `AT`.
    pub(crate) fn put_u16<const AT: usize>(&mut self, v: u16) {
        self.put::<AT, 2>(v.to_le_bytes());
    }

    /// Write `v` big-endian (network order) at `AT` (the EtherType: dpdk only).
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn put_be_u16<const AT: usize>(&mut self, v: u16) {
        self.put::<AT, 2>(v.to_be_bytes());
    }

    /// Write `v` little-endian at `AT`.
    pub(crate) fn put_u32<const AT: usize>(&mut self, v: u32) {
        self.put::<AT, 4>(v.to_le_bytes());
    }

    /// Write `v` little-endian at `AT`.
    pub(crate) fn put_u64<const AT: usize>(&mut self, v: u64) {
        self.put::<AT, 8>(v.to_le_bytes());
    }

    /// Write `LEN` bytes at `AT`.
    pub(crate) fn put<const AT: usize, const LEN: usize>(&mut self, v: [u8; LEN]) {
        const { assert!(AT + LEN <= N, "field past the end of its layout") };
        self.0[AT..AT + LEN].copy_from_slice(&v);
    }

    /// Zero `LEN` bytes at `AT` (reserved fields).
    pub(crate) fn zero<const AT: usize, const LEN: usize>(&mut self) {
        self.put::<AT, LEN>([0; LEN]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_view_needs_its_whole_layout() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert!(Fields::<10>::new(&b).is_none());
        assert!(Fields::<9>::new(&b).is_some());
        // A longer slice: the view is its first N bytes.
        let f = Fields::<4>::new(&b).unwrap();
        assert_eq!(f.u32::<0>(), 0x0403_0201);
        let f = Fields::<9>::new(&b).unwrap();
        assert_eq!(f.u8::<8>(), 9);
        assert_eq!(f.u16::<7>(), 0x0908);
        assert_eq!(f.be_u16::<7>(), 0x0809);
        assert_eq!(f.u64::<1>(), 0x0908_0706_0504_0302);
        assert_eq!(f.array::<2, 3>(), [3, 4, 5]);
    }

    #[test]
    fn writes_touch_their_field_and_nothing_else() {
        let mut b = [0xa5u8; 24];
        let mut w = FieldsMut::<24>::new(&mut b).unwrap();
        w.put_u8::<0>(7);
        w.put_u16::<1>(0x0102);
        w.put_be_u16::<3>(0x0102);
        w.put_u32::<5>(0xdead_beef);
        w.put_u64::<9>(u64::MAX - 1);
        w.zero::<17, 2>();
        w.put::<19, 2>([9, 9]);
        assert_eq!(&b[..5], &[7, 2, 1, 1, 2]);
        assert_eq!(&b[5..9], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(&b[17..21], &[0, 0, 9, 9]);
        assert_eq!(&b[21..], &[0xa5; 3], "bytes past the last field untouched");
        assert!(FieldsMut::<25>::new(&mut b).is_none());
        let mut short = [0u8; 3];
        assert!(FieldsMut::<4>::new(&mut short).is_none());
    }

    proptest! {
        /// What is written at any offset reads back the same, both ways.
        #[test]
        fn values_round_trip(a in any::<u16>(), b in any::<u32>(), c in any::<u64>()) {
            let mut buf = [0u8; 16];
            let mut w = FieldsMut::of(&mut buf);
            w.put_u16::<0>(a);
            w.put_u32::<2>(b);
            w.put_u64::<6>(c);
            w.put_be_u16::<14>(a);
            let f = Fields::<16>::new(&buf).unwrap();
            prop_assert_eq!((f.u16::<0>(), f.u32::<2>(), f.u64::<6>(), f.be_u16::<14>()), (a, b, c, a));
        }

        /// A view of any slice is there exactly when the slice is long enough, and
        /// reads the slice's own first bytes.
        #[test]
        fn views_of_any_slice(b in proptest::collection::vec(any::<u8>(), 0..24)) {
            let f = Fields::<12>::new(&b);
            prop_assert_eq!(f.is_some(), b.len() >= 12);
            if let Some(f) = f {
                prop_assert_eq!(f.array::<0, 12>(), <[u8; 12]>::try_from(&b[..12]).unwrap());
                prop_assert_eq!(f.u32::<8>().to_le_bytes(), [b[8], b[9], b[10], b[11]]);
            }
        }
    }
}
