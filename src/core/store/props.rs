//! A row's properties as bytes, each property as short as its value allows.
//!
//! Per property: a header byte (the value's kind in the high four bits; the key in the low
//! four when it is below 15, else 15 and the key minus 15 as a LEB128 varint after the header),
//! then the value: nothing for null and the booleans, a string's id as a varint, a time's 8
//! bytes, and a number as its sign and places in the kind and its magnitude as a varint when
//! it has at most 4 decimal places and reads back to the same bits (`price: 90.67` is 9067 at
//! 2 places: 3 bytes in all), else its 8 bytes. Versions up to 4 of the checkpoint kept 12 bytes a property (`Prop`)
//! whatever its value.

use crate::core::leb128;
use crate::core::store::table::{Cell, MAX_PROPERTY_KEYS, Prop};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const STR: u8 = 3;
const TIME: u8 = 4;
/// A number no varint holds exactly: its 8 bytes.
const FLOAT: u8 = 5;
/// A number of 0 to `MAX_PLACES` decimal places: `POSITIVE + places` (or `NEGATIVE + places`),
/// then its magnitude times 10^places as a varint.
const POSITIVE: u8 = 6;
const NEGATIVE: u8 = POSITIVE + MAX_PLACES as u8 + 1;
const MAX_PLACES: usize = 4;

/// Keys below this fit in the header.
const INLINE_KEYS: u32 = 15;

/// The most bytes one property takes: the header, a key's varint (keys are below 2²⁹) and a
/// value's 8 bytes (a varint of a magnitude below 2⁵³ takes 8 too).
pub const MAX_BYTES: usize = 1 + 5 + 8;

/// Powers of ten a decimal's places scale by (exact in an f64).
const SCALE: [f64; MAX_PLACES + 1] = [1.0, 1e1, 1e2, 1e3, 1e4];

/// Whole numbers up to this magnitude are exact in an f64.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// One property's bytes, at most `MAX_BYTES`.
pub struct Encoded {
    bytes: [u8; MAX_BYTES],
    len: usize,
}

impl Encoded {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn fixed(&mut self, bits: u64) {
        self.bytes[self.len..self.len + 8].copy_from_slice(&bits.to_le_bytes());
        self.len += 8;
    }
}

/// For `leb128::put`.
impl Extend<u8> for Encoded {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        for byte in bytes {
            self.bytes[self.len] = byte;
            self.len += 1;
        }
    }
}

/// The number's kind and magnitude when a varint holds it exactly: a magnitude below 2⁵³ of
/// up to `MAX_PLACES` places whose decoding gives back the same bits (so NaN, infinities and
/// values like 0.1 + 0.2 keep their 8 bytes).
fn as_decimal(n: f64) -> Option<(u8, u64)> {
    let base = if n.is_sign_negative() { NEGATIVE } else { POSITIVE };
    (0..=MAX_PLACES).find_map(|places| {
        let scaled = (n.abs() * SCALE[places]).round();
        // NaN fails this too.
        if !scaled.is_finite() || scaled >= EXACT {
            return None;
        }
        let magnitude = scaled as u64;
        let kind = base + places as u8;
        (decimal(kind, magnitude).to_bits() == n.to_bits()).then_some((kind, magnitude))
    })
}

/// The number a decimal kind and magnitude stand for.
fn decimal(kind: u8, magnitude: u64) -> f64 {
    let (negative, places) = if kind >= NEGATIVE { (true, kind - NEGATIVE) } else { (false, kind - POSITIVE) };
    let value = magnitude as f64 / SCALE[usize::from(places)];
    if negative { -value } else { value }
}

/// `key`'s property with `value`; `key` must be below `MAX_PROPERTY_KEYS`.
pub fn encode(key: u32, value: Cell) -> Encoded {
    debug_assert!((key as usize) < MAX_PROPERTY_KEYS, "property key {key} past the key space");
    enum Payload {
        Nothing,
        Varint(u64),
        Fixed(u64),
    }
    let (kind, payload) = match value {
        Cell::Null => (NULL, Payload::Nothing),
        Cell::Bool(false) => (FALSE, Payload::Nothing),
        Cell::Bool(true) => (TRUE, Payload::Nothing),
        Cell::Str(id) => (STR, Payload::Varint(u64::from(id))),
        Cell::Time(t) => (TIME, Payload::Fixed(t as u64)),
        Cell::Number(n) => as_decimal(n)
            .map_or((FLOAT, Payload::Fixed(n.to_bits())), |(kind, magnitude)| (kind, Payload::Varint(magnitude))),
    };
    let mut out = Encoded { bytes: [0; MAX_BYTES], len: 1 };
    out.bytes[0] = (kind << 4) | key.min(INLINE_KEYS) as u8;
    if key >= INLINE_KEYS {
        leb128::put(&mut out, u64::from(key - INLINE_KEYS));
    }
    match payload {
        Payload::Nothing => {}
        Payload::Varint(value) => leb128::put(&mut out, value),
        Payload::Fixed(bits) => out.fixed(bits),
    }
    out
}

/// One row's properties, decoded as they are read. Bytes that do not decode (only a corrupt
/// file holds such, and checksums catch those first) end the row.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowProps<'a> {
    bytes: &'a [u8],
}

impl<'a> RowProps<'a> {
    pub fn new(bytes: &'a [u8]) -> RowProps<'a> {
        RowProps { bytes }
    }

    /// The value of the row's property `key`, if it has one.
    pub fn value_of(self, key: u32) -> Option<Cell> {
        self.into_iter().find(|p| p.key() == key).map(|p| p.value())
    }

    fn decode(bytes: &mut &'a [u8]) -> Option<Prop> {
        let (&header, rest) = bytes.split_first()?;
        *bytes = rest;
        let mut key = u32::from(header & 0x0f);
        if key == INLINE_KEYS {
            key = u32::try_from(leb128::take(bytes)?).ok()?.checked_add(INLINE_KEYS)?;
        }
        if key as usize >= MAX_PROPERTY_KEYS {
            return None;
        }
        let fixed = |bytes: &mut &'a [u8]| {
            let (value, rest) = bytes.split_first_chunk::<8>()?;
            *bytes = rest;
            Some(u64::from_le_bytes(*value))
        };
        let value = match header >> 4 {
            NULL => Cell::Null,
            FALSE => Cell::Bool(false),
            TRUE => Cell::Bool(true),
            STR => Cell::Str(u32::try_from(leb128::take(bytes)?).ok()?),
            TIME => Cell::Time(fixed(bytes)? as i64),
            FLOAT => Cell::Number(f64::from_bits(fixed(bytes)?)),
            kind => Cell::Number(decimal(kind, leb128::take(bytes)?)),
        };
        Some(Prop::new(key, value))
    }
}

impl Iterator for RowProps<'_> {
    type Item = Prop;

    fn next(&mut self) -> Option<Prop> {
        let decoded = Self::decode(&mut self.bytes);
        if decoded.is_none() {
            self.bytes = &[];
        }
        decoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(props: &[(u32, Cell)]) -> (Vec<(u32, Cell)>, usize) {
        let mut bytes = Vec::new();
        for &(key, value) in props {
            bytes.extend_from_slice(encode(key, value).as_bytes());
        }
        (RowProps::new(&bytes).map(|p| (p.key(), p.value())).collect(), bytes.len())
    }

    fn same_bits(a: &[(u32, Cell)], b: &[(u32, Cell)]) -> bool {
        let bits = |c: &Cell| match c {
            Cell::Number(n) => Cell::Time(n.to_bits() as i64),
            other => *other,
        };
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && bits(&x.1) == bits(&y.1))
    }

    #[test]
    fn each_kind_reads_back_in_as_few_bytes_as_its_value_needs() {
        let cases: &[(u32, Cell, usize)] = &[
            (0, Cell::Null, 1),
            (3, Cell::Bool(false), 1),
            (14, Cell::Bool(true), 1),
            // A key of 15 or more follows the header.
            (15, Cell::Bool(true), 2),
            (15 + 128, Cell::Null, 3),
            ((MAX_PROPERTY_KEYS - 1) as u32, Cell::Null, 6),
            (1, Cell::Str(0), 2),
            (1, Cell::Str(300), 3),
            (1, Cell::Str(u32::MAX), 6),
            (2, Cell::Time(1_773_384_665_813_000), 9),
            (2, Cell::Time(-1), 9),
            (4, Cell::Number(0.0), 2),
            (4, Cell::Number(-0.0), 2),
            (4, Cell::Number(-3.0), 2),
            (4, Cell::Number(90.67), 3),
            (4, Cell::Number(-1234.5), 3),
            (4, Cell::Number(0.0001), 2),
            (4, Cell::Number(EXACT - 1.0), 9),
            // No varint holds these exactly: 8 bytes.
            (4, Cell::Number(0.00001), 9),
            (4, Cell::Number(EXACT), 9),
            (4, Cell::Number(0.1 + 0.2), 9),
            (4, Cell::Number(1e300), 9),
            (4, Cell::Number(f64::NAN), 9),
            (4, Cell::Number(f64::NEG_INFINITY), 9),
            (4, Cell::Number(1.0 / 3.0), 9),
        ];
        for &(key, value, len) in cases {
            let (read, bytes) = round_trip(&[(key, value)]);
            assert!(same_bits(&read, &[(key, value)]), "{key} {value:?}: read {read:?}");
            assert_eq!(bytes, len, "{key} {value:?}");
        }
    }

    #[test]
    fn a_row_finds_its_values_by_key_and_bad_bytes_end_it() {
        let row = [(7, Cell::Str(5)), (20, Cell::Number(19.99)), (1, Cell::Bool(true))];
        let mut bytes = Vec::new();
        row.iter().for_each(|&(k, v)| bytes.extend_from_slice(encode(k, v).as_bytes()));
        let props = RowProps::new(&bytes);
        assert_eq!(props.value_of(20), Some(Cell::Number(19.99)));
        assert_eq!(props.value_of(1), Some(Cell::Bool(true)));
        assert_eq!(props.value_of(2), None);
        assert_eq!(props.count(), 3);
        // Cut inside the number: the first property reads, then the row ends.
        assert_eq!(RowProps::new(&bytes[..3]).map(|p| p.key()).collect::<Vec<_>>(), [7]);
        // So does a key past the key space.
        assert_eq!(RowProps::new(&[0x0f, 0xff, 0xff, 0xff, 0xff, 0x0f]).count(), 0);
        assert_eq!(RowProps::default().count(), 0);
    }

    fn cell() -> impl Strategy<Value = Cell> {
        prop_oneof![
            Just(Cell::Null),
            any::<bool>().prop_map(Cell::Bool),
            any::<u32>().prop_map(Cell::Str),
            any::<i64>().prop_map(Cell::Time),
            any::<f64>().prop_map(Cell::Number),
            // Prices and counts, the common case.
            (-10_000_000i64..10_000_000, 0usize..=6).prop_map(|(m, p)| Cell::Number(m as f64 / 10f64.powi(p as i32))),
        ]
    }

    proptest! {
        #[test]
        fn any_row_reads_back_bit_for_bit(
            row in proptest::collection::vec((0u32..MAX_PROPERTY_KEYS as u32, cell()), 0..20)
        ) {
            let (read, bytes) = round_trip(&row);
            prop_assert!(same_bits(&read, &row), "{row:?} read {read:?}");
            prop_assert!(bytes <= row.len() * MAX_BYTES);
        }
    }
}
