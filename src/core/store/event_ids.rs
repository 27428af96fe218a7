//! Event ids, compressed in blocks.
//!
//! A row's event id is read only to answer for that row (an export, a user's timeline, ties
//! broken by id, the dedupe keys of deleted rows), never by a scan, so it need not be a slice
//! a query walks. Stored plainly, ids and their offsets were a fifth of the bytes per event.
//! Here every `BLOCK_ROWS` rows are one lz4 block (the ids' lengths as varints, then their
//! bytes), appended to a byte column with the blocks' ends beside it; the rows since the last
//! full block (the tail) are plain, in memory, and a checkpoint writes them to a small file
//! of their own. A read of a sealed row decodes its block once per thread and keeps it for
//! the next read of the same block.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::core::store::column::{Column, ColumnSpace};

/// Rows per compressed block. A random read decodes a whole block, so blocks are small (about
/// 1.5 KB of ids at the generator's lengths, well under a microsecond): an export in time order
/// of events that arrived person by person reads each id from another block. Larger blocks
/// compress little better (the generator's ids: 4.42 bytes each at 128 rows, 4.25 at 1,024).
pub const BLOCK_ROWS: usize = 128;

/// A process-wide unique id per `EventIds`, so a thread's decoded block is never taken for
/// another column's.
static NEXT_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last block this thread decoded: (column, block) → the ids' ends and bytes.
    static DECODED: RefCell<Option<(u64, usize, Block)>> = const { RefCell::new(None) };
}

#[derive(Debug, Default)]
struct Block {
    ends: Vec<u32>,
    bytes: Vec<u8>,
}

impl Block {
    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        // Blocks are made from `&str`s only (and checked when decoded).
        std::str::from_utf8(&self.bytes[start..self.ends[i] as usize]).unwrap_or_default()
    }
}

/// The rows after the last full block, as a checkpoint writes them.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdsTail {
    pub bytes: Vec<u8>,
    pub ends: Vec<u32>,
}

#[derive(Debug)]
pub struct EventIds {
    uid: u64,
    /// Compressed blocks, back to back; block b ends at `block_ends[b]`.
    pub(in crate::core::store) blocks: Column<u8>,
    pub(in crate::core::store) block_ends: Column<u64>,
    tail: IdsTail,
}

impl Default for EventIds {
    fn default() -> Self {
        EventIds::in_space(None)
    }
}

impl EventIds {
    /// Empty, its blocks in files of `space` (in memory without one).
    pub fn in_space(space: Option<&Arc<ColumnSpace>>) -> EventIds {
        EventIds {
            uid: NEXT_IDS.fetch_add(1, Ordering::Relaxed),
            blocks: Column::in_space(space),
            block_ends: Column::in_space(space),
            tail: IdsTail::default(),
        }
    }

    /// Ids as a checkpoint saved them: the blocks' columns and the tail's file.
    pub fn from_parts(blocks: Column<u8>, block_ends: Column<u64>, tail: IdsTail) -> Result<EventIds, String> {
        let ids = EventIds { uid: NEXT_IDS.fetch_add(1, Ordering::Relaxed), blocks, block_ends, tail };
        ids.check()?;
        Ok(ids)
    }

    /// An empty column of the same kind (same space), for a rewrite.
    pub fn fresh(&self) -> EventIds {
        EventIds {
            uid: NEXT_IDS.fetch_add(1, Ordering::Relaxed),
            blocks: self.blocks.fresh(),
            block_ends: self.block_ends.fresh(),
            tail: IdsTail::default(),
        }
    }

    pub fn tail(&self) -> &IdsTail {
        &self.tail
    }

    pub fn len(&self) -> usize {
        self.block_ends.len() * BLOCK_ROWS + self.tail.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks what can be checked without decoding: block ends in order and inside the
    /// blocks' bytes, the tail's ends in order and inside its bytes.
    fn check(&self) -> Result<(), String> {
        let mut start = 0u64;
        for (b, &end) in self.block_ends.iter().enumerate() {
            if end < start || end > self.blocks.len() as u64 {
                return Err(format!("event id block {b} ends at {end}, outside {start}..{}", self.blocks.len()));
            }
            start = end;
        }
        let mut start = 0u32;
        for &end in &self.tail.ends {
            if end < start || end as usize > self.tail.bytes.len() {
                return Err("the event ids' tail has an end outside its bytes".into());
            }
            start = end;
        }
        if !whole_strings(&self.tail.bytes, &self.tail.ends) || self.tail.ends.len() >= BLOCK_ROWS {
            return Err("the event ids' tail is not UTF-8 or longer than a block".into());
        }
        Ok(())
    }

    pub fn push(&mut self, id: &str) {
        self.tail.bytes.extend_from_slice(id.as_bytes());
        self.tail.ends.push(u32::try_from(self.tail.bytes.len()).expect("a block's ids are far below 4 GiB"));
        if self.tail.ends.len() == BLOCK_ROWS {
            self.seal();
        }
    }

    /// Compresses the tail (a full block) onto the blocks.
    fn seal(&mut self) {
        let tail = std::mem::take(&mut self.tail);
        self.blocks.extend_from_slice(&encode(&tail));
        self.block_ends.push(self.blocks.len() as u64);
        // Keep the tail's allocations for the next block.
        self.tail = IdsTail { bytes: tail.bytes, ends: tail.ends };
        self.tail.bytes.clear();
        self.tail.ends.clear();
    }

    /// Row `row`'s id (rows past the end have the empty id).
    pub fn get(&self, row: usize) -> Cow<'_, str> {
        let block = row / BLOCK_ROWS;
        if block >= self.block_ends.len() {
            let i = row - self.block_ends.len() * BLOCK_ROWS;
            return Cow::Borrowed(tail_get(&self.tail, i));
        }
        DECODED.with_borrow_mut(|decoded| {
            let cached = matches!(decoded, Some((uid, b, _)) if *uid == self.uid && *b == block);
            if !cached {
                *decoded = Some((self.uid, block, self.decode(block)));
            }
            let (_, _, ids) = decoded.as_ref().expect("decoded above");
            Cow::Owned(ids.get(row % BLOCK_ROWS).to_owned())
        })
    }

    fn decode(&self, block: usize) -> Block {
        let start = if block == 0 { 0 } else { self.block_ends[block - 1] as usize };
        let end = self.block_ends[block] as usize;
        // A block that does not decode is a bug or a file changed under a valid checksum: its
        // rows read as empty ids rather than stopping the process.
        decode(&self.blocks[start..end]).unwrap_or_else(|err| {
            tracing::error!(block, %err, "an event id block does not decode");
            Block { ends: vec![0; BLOCK_ROWS], bytes: Vec::new() }
        })
    }

    /// Visits every row's id in order, decoding each block once.
    pub fn for_each(&self, mut visit: impl FnMut(usize, &str)) {
        for block in 0..self.block_ends.len() {
            let ids = self.decode(block);
            for i in 0..BLOCK_ROWS {
                visit(block * BLOCK_ROWS + i, ids.get(i));
            }
        }
        let base = self.block_ends.len() * BLOCK_ROWS;
        for i in 0..self.tail.ends.len() {
            visit(base + i, tail_get(&self.tail, i));
        }
    }

    /// The ids of a table written before they were compressed: `ends[i]` is where row i's
    /// id ends in `bytes`. Blocks are compressed on all cores.
    pub fn from_plain(space: Option<&Arc<ColumnSpace>>, ends: &[u64], bytes: &[u8]) -> Result<EventIds, String> {
        let rows = ends.len();
        let full = rows / BLOCK_ROWS;
        let span = |row: usize| -> Result<&[u8], String> {
            let start = if row == 0 { 0 } else { ends[row - 1] };
            let end = ends[row];
            if start > end || end > bytes.len() as u64 {
                return Err(format!("event id {row} ends at {end}, outside {start}..{}", bytes.len()));
            }
            Ok(&bytes[start as usize..end as usize])
        };
        let block_of = |block: usize| -> Result<Vec<u8>, String> {
            let mut tail = IdsTail::default();
            for row in block * BLOCK_ROWS..(block + 1) * BLOCK_ROWS {
                tail.bytes.extend_from_slice(span(row)?);
                tail.ends.push(tail.bytes.len() as u32);
            }
            if !whole_strings(&tail.bytes, &tail.ends) {
                return Err(format!("event ids of rows {}.. are not UTF-8", block * BLOCK_ROWS));
            }
            Ok(encode(&tail))
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(full.max(1));
        let per = full.div_ceil(threads).max(1);
        let encoded: Vec<Result<Vec<Vec<u8>>, String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let block_of = &block_of;
                    scope.spawn(move || (t * per..((t + 1) * per).min(full)).map(block_of).collect())
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        let mut ids = EventIds::in_space(space);
        for blocks in encoded {
            for block in blocks? {
                ids.blocks.extend_from_slice(&block);
                ids.block_ends.push(ids.blocks.len() as u64);
            }
        }
        for row in full * BLOCK_ROWS..rows {
            let id = std::str::from_utf8(span(row)?).map_err(|_| format!("event ids of rows {row}.. are not UTF-8"))?;
            ids.push(id);
        }
        Ok(ids)
    }
}

/// Whether `bytes` cut at `ends` (in order, inside `bytes`) are UTF-8 strings: one pass over
/// the bytes and a character-boundary check per end.
fn whole_strings(bytes: &[u8], ends: &[u32]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|all| ends.iter().all(|&end| all.is_char_boundary(end as usize)))
}

fn tail_get(tail: &IdsTail, i: usize) -> &str {
    let Some(&end) = tail.ends.get(i) else { return "" };
    let start = if i == 0 { 0 } else { tail.ends[i - 1] as usize };
    // The tail holds whole `&str`s (checked when loaded).
    std::str::from_utf8(&tail.bytes[start..end as usize]).unwrap_or_default()
}

/// A block: the ids' lengths as LEB128 varints, then their bytes, lz4-compressed.
fn encode(ids: &IdsTail) -> Vec<u8> {
    let mut plain = Vec::with_capacity(ids.ends.len() + ids.bytes.len());
    let mut start = 0;
    for &end in &ids.ends {
        crate::core::leb128::put(&mut plain, u64::from(end - start));
        start = end;
    }
    plain.extend_from_slice(&ids.bytes);
    lz4_flex::compress_prepend_size(&plain)
}

fn decode(compressed: &[u8]) -> Result<Block, String> {
    let plain = lz4_flex::decompress_size_prepended(compressed).map_err(|e| e.to_string())?;
    let mut ends = Vec::with_capacity(BLOCK_ROWS);
    let (mut rest, mut end) = (&plain[..], 0u32);
    while ends.len() < BLOCK_ROWS {
        let len = crate::core::leb128::take(&mut rest).ok_or("the lengths run past the block")?;
        end = u32::try_from(len).ok().and_then(|len| end.checked_add(len)).ok_or("the ids are too long")?;
        ends.push(end);
    }
    let bytes = rest.to_vec();
    if end as usize != bytes.len() {
        return Err(format!("the ids' lengths add up to {end}, the block holds {}", bytes.len()));
    }
    if !whole_strings(&bytes, &ends) {
        return Err("the ids are not UTF-8".into());
    }
    Ok(Block { ends, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        // Lengths 0 to 200 (two-byte varints past 127) and multi-byte characters.
        (0..n).map(|i| if i % 97 == 0 { "é".repeat(i % 101) } else { format!("e{i}") }).collect()
    }

    #[test]
    fn every_row_reads_back_across_blocks_and_in_order() {
        let all = ids(3 * BLOCK_ROWS + 17);
        let mut column = EventIds::default();
        for id in &all {
            column.push(id);
        }
        assert_eq!((column.len(), column.block_ends.len(), column.tail.ends.len()), (all.len(), 3, 17));
        // Random reads, hopping between blocks and the tail.
        for row in (0..all.len()).rev().step_by(7).chain((0..all.len()).step_by(5)) {
            assert_eq!(column.get(row), all[row].as_str(), "row {row}");
        }
        assert_eq!(column.get(all.len()), "");
        let mut visited = Vec::new();
        column.for_each(|row, id| visited.push((row, id.to_owned())));
        assert_eq!(visited, all.iter().cloned().enumerate().collect::<Vec<_>>());
        // Smaller than the plain ids and their u64 ends.
        let plain: usize = all.iter().map(|id| id.len() + 8).sum();
        assert!(column.blocks.len() + 8 * column.block_ends.len() < plain / 2, "{} bytes", column.blocks.len());
    }

    #[test]
    fn two_columns_never_share_a_decoded_block() {
        let (mut a, mut b) = (EventIds::default(), EventIds::default());
        for i in 0..BLOCK_ROWS {
            a.push(&format!("a{i}"));
            b.push(&format!("b{i}"));
        }
        assert_eq!((a.get(3), b.get(3), a.get(4)), ("a3".into(), "b3".into(), "a4".into()));
    }

    #[test]
    fn plain_ids_convert_and_bad_ones_are_refused() {
        let all = ids(2 * BLOCK_ROWS + 3);
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for id in &all {
            bytes.extend_from_slice(id.as_bytes());
            ends.push(bytes.len() as u64);
        }
        let column = EventIds::from_plain(None, &ends, &bytes).unwrap();
        assert_eq!(column.len(), all.len());
        for (row, id) in all.iter().enumerate() {
            assert_eq!(column.get(row), id.as_str());
        }
        let mut past = ends.clone();
        past[5] = bytes.len() as u64 + 1;
        assert!(EventIds::from_plain(None, &past, &bytes).unwrap_err().starts_with("event id 5 ends at"));
        let mut broken = bytes.clone();
        let at = all[..97].iter().map(String::len).sum::<usize>();
        broken[at] = 0xff; // the first byte of row 97's "é"s... row 97 is "é" × 97
        assert!(EventIds::from_plain(None, &ends, &broken).unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn saved_parts_load_back_and_bad_ends_are_refused() {
        let mut column = EventIds::default();
        for id in ids(BLOCK_ROWS + 2) {
            column.push(&id);
        }
        let blocks: Vec<u8> = column.blocks.to_vec();
        let ends: Vec<u64> = column.block_ends.to_vec();
        let loaded = EventIds::from_parts(blocks.clone().into(), ends.clone().into(), column.tail.clone()).unwrap();
        assert_eq!((loaded.get(5), loaded.get(BLOCK_ROWS + 1)), (column.get(5), column.get(BLOCK_ROWS + 1)));
        let err = EventIds::from_parts(blocks.clone().into(), vec![blocks.len() as u64 + 1].into(), IdsTail::default());
        assert!(err.unwrap_err().starts_with("event id block 0 ends at"));
        let bad_tail = IdsTail { bytes: b"ab".to_vec(), ends: vec![3] };
        assert!(EventIds::from_parts(blocks.into(), ends.into(), bad_tail).is_err());
        // A block whose bytes are not what was encoded reads as empty ids, without a panic.
        assert!(decode(&[4, 0, 0, 0, 1]).is_err());
    }
}
