//! Unsigned LEB128 varints: 7 bits a byte, low bits first, the high bit set on every byte but
//! the last. ClickHouse's RowBinary lengths, the event id blocks' lengths and properties
//! (`store::props`) use them.

/// Appends `value`.
pub fn put(out: &mut impl Extend<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.extend([byte]);
            return;
        }
        out.extend([byte | 0x80]);
    }
}

/// Takes a value from the front of `bytes`; `None` when they end inside it or it does not fit
/// in 64 bits.
pub fn take(bytes: &mut &[u8]) -> Option<u64> {
    let (mut value, mut shift) = (0u64, 0u32);
    loop {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_round_trip_and_truncated_ones_are_refused() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            super::put(&mut out, value);
            let mut bytes = &out[..];
            assert_eq!((super::take(&mut bytes), bytes.len()), (Some(value), 0), "{value}");
        }
        let mut out = Vec::new();
        super::put(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(super::take(&mut &out[..1]), None);
        assert_eq!(super::take(&mut &[0xff; 11][..]), None);
    }
}
