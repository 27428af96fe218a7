//! The values of a row that are read one row at a time, never by a scan, compressed in blocks:
//! its event id, the anonymous person it was sent under, and the same person's row before it.
//!
//! Exports, timelines, a user's rows, ties broken by event id and the dedupe keys of deleted
//! rows read them; no funnel, metric or retention does. Stored as plain columns they were a
//! third of the bytes per event. Here every `BLOCK_ROWS` rows are one lz4 block (per row: the
//! id's length, the anonymous person and how far back the previous row is, as varints; then
//! the ids' bytes), appended to a byte column with the blocks' ends beside it. The rows since
//! the last full block (the tail) are plain, in memory, and a checkpoint writes them to a small
//! file of their own. A read of a sealed row decodes its block once per thread and keeps it
//! for the next read of the same block.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::core::leb128;
use crate::core::store::column::{Column, ColumnSpace};
use crate::core::store::source::run_parts;
use crate::core::store::table::NONE;

/// Rows per compressed block. A random read decodes a whole block, so blocks are small (about
/// 1.5 KB of ids at the generator's lengths, well under a microsecond): an export in time order
/// of events that arrived person by person reads each id from another block. Larger blocks
/// compress little better (the generator's ids: 4.42 bytes each at 128 rows, 4.25 at 1,024).
pub const BLOCK_ROWS: usize = 128;

/// A process-wide unique id per `ColdRows`, so a thread's decoded block is never taken for
/// another one's.
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last block this thread decoded: (columns, block) → its rows.
    static DECODED: RefCell<Option<(u64, usize, PlainRows)>> = const { RefCell::new(None) };
}

/// Rows' cold values in plain form: the tail, and a block once decoded.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlainRows {
    /// Row i's event id is `bytes[ends[i - 1]..ends[i]]`.
    bytes: Vec<u8>,
    ends: Vec<u32>,
    /// Per row: the anonymous person it was sent under, or `NONE`.
    anonymous: Vec<u32>,
    /// Per row: the same person's row before it (a table row), or `NONE`.
    previous: Vec<u32>,
}

impl PlainRows {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn push(&mut self, id: &str, anonymous: u32, previous: u32) {
        self.bytes.extend_from_slice(id.as_bytes());
        self.ends.push(u32::try_from(self.bytes.len()).expect("a block's ids are far below 4 GiB"));
        self.anonymous.push(anonymous);
        self.previous.push(previous);
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.anonymous.clear();
        self.previous.clear();
    }

    fn id(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        // Checked to hold whole `&str`s when loaded or decoded; pushed from `&str`s.
        std::str::from_utf8(&self.bytes[start..self.ends[i] as usize]).unwrap_or_default()
    }

    /// Whether these are whole rows starting at table row `first`: ends in order inside the
    /// bytes, UTF-8 ids, and every previous row before its own.
    fn check(&self, first: usize) -> bool {
        let n = self.len();
        self.anonymous.len() == n
            && self.previous.len() == n
            && self.ends.is_sorted()
            && self.ends.last().is_none_or(|&end| end as usize <= self.bytes.len())
            && std::str::from_utf8(&self.bytes)
                .is_ok_and(|all| self.ends.iter().all(|&end| all.is_char_boundary(end as usize)))
            && self.previous.iter().enumerate().all(|(i, &p)| p == NONE || (p as usize) < first + i)
    }

    /// The block of these rows (the first being table row `first`): per row the id's length,
    /// the anonymous person plus one (0: none) and the distance back to the previous row (0:
    /// none), as LEB128 varints, then the ids' bytes; lz4-compressed.
    fn encode(&self, first: usize) -> Vec<u8> {
        let mut plain = Vec::with_capacity(4 * self.len() + self.bytes.len());
        let mut start = 0;
        for &end in &self.ends {
            leb128::put(&mut plain, u64::from(end - start));
            start = end;
        }
        for &anonymous in &self.anonymous {
            leb128::put(&mut plain, u64::from(anonymous.wrapping_add(1)));
        }
        for (i, &previous) in self.previous.iter().enumerate() {
            let back = if previous == NONE { 0 } else { (first + i - previous as usize) as u64 };
            leb128::put(&mut plain, back);
        }
        plain.extend_from_slice(&self.bytes);
        lz4_flex::compress_prepend_size(&plain)
    }

    /// A block `encode` made of `BLOCK_ROWS` rows from table row `first`.
    fn decode(compressed: &[u8], first: usize) -> Result<PlainRows, String> {
        let plain = lz4_flex::decompress_size_prepended(compressed).map_err(|e| e.to_string())?;
        let mut rest = &plain[..];
        let mut next = || leb128::take(&mut rest).ok_or("the rows' values run past the block");
        let mut rows = PlainRows::default();
        let mut end = 0u32;
        for _ in 0..BLOCK_ROWS {
            end = u32::try_from(next()?).ok().and_then(|len| end.checked_add(len)).ok_or("the ids are too long")?;
            rows.ends.push(end);
        }
        for _ in 0..BLOCK_ROWS {
            rows.anonymous
                .push((u32::try_from(next()?).map_err(|_| "an anonymous person is too large")?).wrapping_sub(1));
        }
        for i in 0..BLOCK_ROWS {
            let row = (first + i) as u64;
            let previous = match next()? {
                0 => NONE,
                back if back <= row => (row - back) as u32,
                _ => return Err("a previous row is before the first".into()),
            };
            rows.previous.push(previous);
        }
        rows.bytes = rest.to_vec();
        if !rows.check(first) || end as usize != rows.bytes.len() {
            return Err("the ids' lengths and bytes disagree, or an id is not UTF-8".into());
        }
        Ok(rows)
    }
}

/// One row's cold values.
#[derive(Debug, Clone, PartialEq)]
pub struct ColdRow<'a> {
    pub event_id: Cow<'a, str>,
    pub anonymous: u32,
    pub previous: u32,
}

#[derive(Debug)]
pub struct ColdRows {
    uid: u64,
    /// Compressed blocks, back to back; block b ends at `block_ends[b]`.
    pub(in crate::core::store) blocks: Column<u8>,
    pub(in crate::core::store) block_ends: Column<u64>,
    tail: PlainRows,
}

impl Default for ColdRows {
    fn default() -> Self {
        ColdRows::in_space(None)
    }
}

impl ColdRows {
    /// Empty, its blocks in files of `space` (in memory without one).
    pub fn in_space(space: Option<&Arc<ColumnSpace>>) -> ColdRows {
        ColdRows {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            blocks: Column::in_space(space),
            block_ends: Column::in_space(space),
            tail: PlainRows::default(),
        }
    }

    /// Rows as a checkpoint saved them: the blocks' columns and the tail's file.
    pub fn from_parts(blocks: Column<u8>, block_ends: Column<u64>, tail: PlainRows) -> Result<ColdRows, String> {
        let mut start = 0u64;
        for (b, &end) in block_ends.iter().enumerate() {
            if end < start || end > blocks.len() as u64 {
                return Err(format!("block {b} ends at {end}, outside {start}..{}", blocks.len()));
            }
            start = end;
        }
        if tail.len() >= BLOCK_ROWS || !tail.check(block_ends.len() * BLOCK_ROWS) {
            return Err("the rows after the last block do not fit together".into());
        }
        Ok(ColdRows { uid: NEXT_UID.fetch_add(1, Ordering::Relaxed), blocks, block_ends, tail })
    }

    /// The same rows, sharing the files (see `Column::fork`); the blocks are the same, so the
    /// decoded block cached for one serves the other.
    pub fn fork(&self) -> ColdRows {
        ColdRows {
            uid: self.uid,
            blocks: self.blocks.fork(),
            block_ends: self.block_ends.fork(),
            tail: self.tail.clone(),
        }
    }

    /// Empty, in the same space, for a rewrite.
    pub fn fresh(&self) -> ColdRows {
        ColdRows {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            blocks: self.blocks.fresh(),
            block_ends: self.block_ends.fresh(),
            tail: PlainRows::default(),
        }
    }

    /// The rows after the last full block (what a checkpoint writes beside the columns).
    pub fn tail(&self) -> &PlainRows {
        &self.tail
    }

    pub fn len(&self) -> usize {
        self.block_ends.len() * BLOCK_ROWS + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, event_id: &str, anonymous: u32, previous: u32) {
        self.tail.push(event_id, anonymous, previous);
        if self.tail.len() == BLOCK_ROWS {
            let first = self.block_ends.len() * BLOCK_ROWS;
            self.blocks.extend_from_slice(&self.tail.encode(first));
            self.block_ends.push(self.blocks.len() as u64);
            self.tail.clear();
        }
    }

    /// Row `row`'s values (`None` past the end).
    pub fn get(&self, row: usize) -> Option<ColdRow<'_>> {
        let block = row / BLOCK_ROWS;
        if block >= self.block_ends.len() {
            let i = row - self.block_ends.len() * BLOCK_ROWS;
            return (i < self.tail.len()).then(|| ColdRow {
                event_id: Cow::Borrowed(self.tail.id(i)),
                anonymous: self.tail.anonymous[i],
                previous: self.tail.previous[i],
            });
        }
        DECODED.with_borrow_mut(|decoded| {
            let cached = matches!(decoded, Some((uid, b, _)) if *uid == self.uid && *b == block);
            if !cached {
                *decoded = Some((self.uid, block, self.decode(block)));
            }
            let (_, _, rows) = decoded.as_ref()?;
            let i = row % BLOCK_ROWS;
            Some(ColdRow {
                event_id: Cow::Owned(rows.id(i).to_owned()),
                anonymous: rows.anonymous[i],
                previous: rows.previous[i],
            })
        })
    }

    fn decode(&self, block: usize) -> PlainRows {
        let start = if block == 0 { 0 } else { self.block_ends[block - 1] as usize };
        let end = self.block_ends[block] as usize;
        // A block that does not decode is a bug or a file changed under a valid checksum: its
        // rows read as empty ids of no anonymous person with no previous row, rather than
        // stopping the process.
        PlainRows::decode(&self.blocks[start..end], block * BLOCK_ROWS).unwrap_or_else(|err| {
            tracing::error!(block, %err, "a block of event ids does not decode");
            PlainRows {
                bytes: Vec::new(),
                ends: vec![0; BLOCK_ROWS],
                anonymous: vec![NONE; BLOCK_ROWS],
                previous: vec![NONE; BLOCK_ROWS],
            }
        })
    }

    /// Visits every row's values in order, decoding each block once.
    pub fn for_each(&self, mut visit: impl FnMut(usize, ColdRow<'_>)) {
        let mut visit_all = |first: usize, rows: &PlainRows| {
            for i in 0..rows.len() {
                let row = ColdRow {
                    event_id: Cow::Borrowed(rows.id(i)),
                    anonymous: rows.anonymous[i],
                    previous: rows.previous[i],
                };
                visit(first + i, row);
            }
        };
        for block in 0..self.block_ends.len() {
            visit_all(block * BLOCK_ROWS, &self.decode(block));
        }
        visit_all(self.block_ends.len() * BLOCK_ROWS, &self.tail);
    }

    /// The rows of a table written before they were compressed (manifest version 2), from its
    /// plain columns: `id_ends[i]` is where row i's id ends in `id_bytes`. Blocks are
    /// compressed on all cores.
    pub fn from_plain(
        space: Option<&Arc<ColumnSpace>>,
        id_ends: &[u64],
        id_bytes: &[u8],
        anonymous: &[u32],
        previous: &[u32],
    ) -> Result<ColdRows, String> {
        let rows = id_ends.len();
        if anonymous.len() != rows || previous.len() != rows {
            return Err(format!(
                "{rows} event ids, {} anonymous people, {} previous rows",
                anonymous.len(),
                previous.len()
            ));
        }
        let plain = |from: usize, to: usize| -> Result<PlainRows, String> {
            let mut plain = PlainRows::default();
            for row in from..to {
                let start = if row == 0 { 0 } else { id_ends[row - 1] };
                let end = id_ends[row];
                if start > end || end > id_bytes.len() as u64 {
                    return Err(format!("event id {row} ends at {end}, outside {start}..{}", id_bytes.len()));
                }
                let id = &id_bytes[start as usize..end as usize];
                plain.bytes.extend_from_slice(id);
                plain.ends.push(u32::try_from(plain.bytes.len()).map_err(|_| "event ids too long")?);
                plain.anonymous.push(anonymous[row]);
                plain.previous.push(previous[row]);
            }
            if !plain.check(from) {
                return Err(format!(
                    "rows {from}..{to}: an event id is not UTF-8 or a previous row is not before its own"
                ));
            }
            Ok(plain)
        };
        let full = rows / BLOCK_ROWS;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(full.max(1));
        let per = full.div_ceil(threads).max(1);
        let encoded: Vec<Result<Vec<Vec<u8>>, String>> = run_parts(threads, |t| {
            (t * per..((t + 1) * per).min(full))
                .map(|b| Ok(plain(b * BLOCK_ROWS, (b + 1) * BLOCK_ROWS)?.encode(b * BLOCK_ROWS)))
                .collect()
        });
        let mut cold = ColdRows::in_space(space);
        for blocks in encoded {
            for block in blocks? {
                cold.blocks.extend_from_slice(&block);
                cold.block_ends.push(cold.blocks.len() as u64);
            }
        }
        cold.tail = plain(full * BLOCK_ROWS, rows)?;
        Ok(cold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of ids 0 to 200 bytes long (two-byte varints past 127, multi-byte characters), of
    /// some anonymous people, each row's previous one a few rows back or none.
    fn rows(n: usize) -> Vec<(String, u32, u32)> {
        (0..n)
            .map(|i| {
                let id = if i % 97 == 0 { "é".repeat(i % 101) } else { format!("e{i}") };
                let anonymous = if i % 3 == 0 { NONE } else { (i % 50) as u32 };
                let previous = if i % 5 == 0 || i < 4 { NONE } else { (i - 1 - i % 4) as u32 };
                (id, anonymous, previous)
            })
            .collect()
    }

    fn push_all(cold: &mut ColdRows, all: &[(String, u32, u32)]) {
        for (id, anonymous, previous) in all {
            cold.push(id, *anonymous, *previous);
        }
    }

    fn expect(row: &(String, u32, u32)) -> Option<ColdRow<'_>> {
        Some(ColdRow { event_id: Cow::Borrowed(row.0.as_str()), anonymous: row.1, previous: row.2 })
    }

    #[test]
    fn every_row_reads_back_across_blocks_and_in_order() {
        let all = rows(3 * BLOCK_ROWS + 17);
        let mut cold = ColdRows::default();
        push_all(&mut cold, &all);
        assert_eq!((cold.len(), cold.block_ends.len(), cold.tail.len()), (all.len(), 3, 17));
        // Random reads, hopping between blocks and the tail.
        for row in (0..all.len()).rev().step_by(7).chain((0..all.len()).step_by(5)) {
            assert_eq!(cold.get(row), expect(&all[row]), "row {row}");
        }
        assert_eq!(cold.get(all.len()), None);
        let mut visited = Vec::new();
        cold.for_each(|row, values| {
            visited.push((row, values.event_id.into_owned(), values.anonymous, values.previous))
        });
        let expected: Vec<_> = all.iter().enumerate().map(|(i, (id, a, p))| (i, id.clone(), *a, *p)).collect();
        assert_eq!(visited, expected);
        // Smaller than the plain ids with u64 ends and two u32 columns.
        let plain: usize = all.iter().map(|(id, ..)| id.len() + 16).sum();
        assert!(cold.blocks.len() + 8 * cold.block_ends.len() < plain / 2, "{} bytes", cold.blocks.len());
    }

    #[test]
    fn two_columns_never_share_a_decoded_block() {
        let (mut a, mut b) = (ColdRows::default(), ColdRows::default());
        for i in 0..BLOCK_ROWS {
            a.push(&format!("a{i}"), NONE, NONE);
            b.push(&format!("b{i}"), 7, NONE);
        }
        let id = |cold: &ColdRows, row| cold.get(row).unwrap().event_id.into_owned();
        assert_eq!((id(&a, 3), id(&b, 3), id(&a, 4)), ("a3".into(), "b3".into(), "a4".into()));
        assert_eq!((a.get(3).unwrap().anonymous, b.get(3).unwrap().anonymous), (NONE, 7));
    }

    #[test]
    fn plain_columns_convert_and_bad_ones_are_refused() {
        let all = rows(2 * BLOCK_ROWS + 3);
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for (id, ..) in &all {
            bytes.extend_from_slice(id.as_bytes());
            ends.push(bytes.len() as u64);
        }
        let anonymous: Vec<u32> = all.iter().map(|r| r.1).collect();
        let previous: Vec<u32> = all.iter().map(|r| r.2).collect();
        let cold = ColdRows::from_plain(None, &ends, &bytes, &anonymous, &previous).unwrap();
        assert_eq!(cold.len(), all.len());
        for (row, expected) in all.iter().enumerate() {
            assert_eq!(cold.get(row), expect(expected));
        }
        let mut past = ends.clone();
        past[5] = bytes.len() as u64 + 1;
        let err = ColdRows::from_plain(None, &past, &bytes, &anonymous, &previous).unwrap_err();
        assert!(err.starts_with("event id 5 ends at"), "{err}");
        let mut broken = bytes.clone();
        // Row 97 is "é" × 97: break its first byte.
        broken[all[..97].iter().map(|r| r.0.len()).sum::<usize>()] = 0xff;
        assert!(ColdRows::from_plain(None, &ends, &broken, &anonymous, &previous).unwrap_err().contains("not UTF-8"));
        let mut forward = previous.clone();
        forward[9] = 9;
        assert!(
            ColdRows::from_plain(None, &ends, &bytes, &anonymous, &forward).is_err(),
            "a row cannot precede itself"
        );
        assert!(ColdRows::from_plain(None, &ends, &bytes, &anonymous[1..], &previous).is_err());
    }

    #[test]
    fn saved_parts_load_back_and_bad_ones_are_refused() {
        let all = rows(BLOCK_ROWS + 2);
        let mut cold = ColdRows::default();
        push_all(&mut cold, &all);
        let (blocks, ends): (Vec<u8>, Vec<u64>) = (cold.blocks.to_vec(), cold.block_ends.to_vec());
        let loaded = ColdRows::from_parts(blocks.clone().into(), ends.clone().into(), cold.tail.clone()).unwrap();
        assert_eq!((loaded.get(5), loaded.get(BLOCK_ROWS + 1)), (expect(&all[5]), expect(&all[BLOCK_ROWS + 1])));
        let past = vec![blocks.len() as u64 + 1];
        let err = ColdRows::from_parts(blocks.clone().into(), past.into(), PlainRows::default()).unwrap_err();
        assert!(err.starts_with("block 0 ends at"), "{err}");
        let mut bad_tail = PlainRows::default();
        bad_tail.push("ab", NONE, NONE);
        bad_tail.ends[0] = 3;
        assert!(ColdRows::from_parts(blocks.clone().into(), ends.clone().into(), bad_tail).is_err());
        let mut forward = PlainRows::default();
        forward.push("a", NONE, BLOCK_ROWS as u32);
        assert!(ColdRows::from_parts(blocks.into(), ends.into(), forward).is_err(), "the tail's first row is 128");
        // A block that is not what `encode` wrote is refused by `decode`, not a panic.
        assert!(PlainRows::decode(&[4, 0, 0, 0, 1], 0).is_err());
        let mut one = PlainRows::default();
        for i in 0..BLOCK_ROWS {
            one.push("x", NONE, if i == 0 { NONE } else { 0 });
        }
        assert_eq!(PlainRows::decode(&one.encode(0), 0).unwrap(), one);
        assert!(PlainRows::decode(&one.encode(1000), 0).is_err(), "previous rows before the table's first");
    }
}
